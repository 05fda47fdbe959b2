//! What an app's webhooks did: `GET /v1/deliveries` (the app, by its API key),
//! `GET /v1/admin/apps/{id}/deliveries` (the operator), and `POST /v1/webhooks/ping`, a
//! test event the app's owner sends through the real path (outbox, signing, POST, log).

use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use super::extract::{AdminAuth, ApiPath, AppAuth};
use super::{ApiError, ApiState};
use crate::store::AppRecord;
use crate::webhook::log::Attempt;

/// An app's delivery log with its outbox figures, so one poll tells the whole story.
#[derive(Debug, Serialize)]
pub(super) struct Deliveries {
    app_id: String,
    /// Deliveries are off (the endpoint answered 410) until the operator enables them.
    disabled: bool,
    outbox_depth: u64,
    /// The oldest waiting event's `at`, Unix ms; `None` when nothing waits.
    oldest_waiting_at: Option<u64>,
    /// Newest first, at most `delivery_log_size`.
    deliveries: Vec<Attempt>,
}

fn deliveries(state: &ApiState, app: &AppRecord) -> Deliveries {
    Deliveries {
        app_id: app.id.clone(),
        disabled: app.disabled,
        outbox_depth: state.fanout.depth(&app.id),
        oldest_waiting_at: state.fanout.oldest_waiting_ms(&app.id),
        deliveries: state.fanout.deliveries(&app.id),
    }
}

pub(super) async fn own(State(state): State<ApiState>, AppAuth(app): AppAuth) -> axum::Json<Deliveries> {
    axum::Json(deliveries(&state, &app))
}

pub(super) async fn of_app(
    State(state): State<ApiState>,
    _: AdminAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<axum::Json<Deliveries>, ApiError> {
    let app = state.apps.get(&id).ok_or_else(|| ApiError::not_found("no such app"))?;
    Ok(axum::Json(deliveries(&state, &app)))
}

/// What `POST /v1/webhooks/ping` answers: the event is in the outbox's hands.
#[derive(Debug, Serialize)]
pub(super) struct PingQueued {
    /// The `at` of the `ping` event, Unix ms: find it in the receiver's log by this.
    at: u64,
}

pub(super) async fn ping(
    State(state): State<ApiState>,
    AppAuth(app): AppAuth,
) -> Result<(StatusCode, axum::Json<PingQueued>), ApiError> {
    // Removed between authentication and now: the key no longer names an app.
    let at = state.outbound.ping(&app.id).ok_or_else(|| ApiError::not_found("no such app"))?;
    Ok((StatusCode::ACCEPTED, axum::Json(PingQueued { at })))
}
