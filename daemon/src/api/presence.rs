//! `GET /v1/presence/{puid}` and `POST /v1/presence/query`.
//!
//! A PUID that is unknown, revoked, or belongs to a user who is offline all read the same:
//! `offline`, no message, no `since`, no `seq`. The API is no oracle for whether a user
//! exists or has ever used the app.

use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::extract::{ApiJson, ApiPath, AppAuth};
use super::{ApiError, ApiState};
use crate::notify::MAX_RECIPIENTS;

/// Most PUIDs in one query.
pub(super) const MAX_QUERY: usize = MAX_RECIPIENTS;

/// One user's presence as an app sees it.
#[derive(Debug, Serialize)]
pub(super) struct PresenceView {
    puid: String,
    status: &'static str,
    message: String,
    since: Option<u64>,
    seq: Option<u64>,
}

fn view(state: &ApiState, app_id: &str, puid: String) -> PresenceView {
    match state.table.lookup(app_id, &puid).filter(|v| v.status != presence_protocol::Status::Offline) {
        Some(v) => PresenceView {
            puid,
            status: v.status.as_str(),
            message: v.message,
            since: Some(v.since_ms),
            seq: Some(v.seq),
        },
        None => PresenceView { puid, status: "offline", message: String::new(), since: None, seq: None },
    }
}

pub(super) async fn get_one(
    State(state): State<ApiState>,
    AppAuth(app): AppAuth,
    ApiPath(puid): ApiPath<String>,
) -> axum::Json<PresenceView> {
    axum::Json(view(&state, &app.id, puid))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Query {
    puids: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct QueryAnswer {
    presence: Vec<PresenceView>,
}

pub(super) async fn query(
    State(state): State<ApiState>,
    AppAuth(app): AppAuth,
    ApiJson(query): ApiJson<Query>,
) -> Result<axum::Json<QueryAnswer>, ApiError> {
    if query.puids.len() > MAX_QUERY {
        return Err(ApiError::invalid(format!("at most {MAX_QUERY} puids per query")));
    }
    // No PUID is empty, and `GET /v1/presence/{puid}` cannot name one.
    if query.puids.iter().any(String::is_empty) {
        return Err(ApiError::invalid("`puids` must not hold an empty PUID"));
    }
    let presence = query.puids.into_iter().map(|puid| view(&state, &app.id, puid)).collect();
    Ok(axum::Json(QueryAnswer { presence }))
}
