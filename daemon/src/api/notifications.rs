//! `POST /v1/notifications` and `GET /v1/notifications/{id}`.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use presence_protocol::{AppId, Body, Data, Title};
use serde::Deserialize;

use super::extract::{ApiJson, ApiPath, AppAuth};
use super::{ApiError, ApiErrorCode, ApiState};
use crate::notify::{
    MAX_RECIPIENTS, MAX_TTL, MIN_TTL, Mode, NewNotification, NotificationView, NotifyRefused,
};
use crate::puid::is_puid;

/// Default time to live when the request names none.
const DEFAULT_TTL: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Create {
    to: Vec<String>,
    title: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    data: Option<serde_json::Value>,
    /// JSON does not tell `6000` from `6000.0` (nor does JSON Schema's `integer`), so a
    /// whole number written with a zero fraction is accepted too.
    #[serde(default, deserialize_with = "whole_number")]
    ttl_ms: Option<u64>,
    #[serde(default)]
    mode: Option<Mode>,
}

/// An optional non-negative whole number, with or without a zero fraction; larger than
/// `u64::MAX` reads as `u64::MAX` (out of every range checked later).
fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    match (number.as_u64(), number.as_f64()) {
        (Some(whole), _) => Ok(Some(whole)),
        // `as` saturates: 1e300 becomes u64::MAX.
        (None, Some(float)) if float >= 0.0 && float.fract() == 0.0 => Ok(Some(float as u64)),
        _ => Err(serde::de::Error::custom(format!("expected a whole number of milliseconds, got {number}"))),
    }
}

pub(super) async fn create(
    State(state): State<ApiState>,
    AppAuth(app): AppAuth,
    ApiJson(request): ApiJson<Create>,
) -> Result<(StatusCode, axum::Json<NotificationView>), ApiError> {
    if request.to.is_empty() || request.to.len() > MAX_RECIPIENTS {
        return Err(ApiError::invalid(format!("`to` must name 1 to {MAX_RECIPIENTS} puids")));
    }
    let ttl = request.ttl_ms.map_or(DEFAULT_TTL, Duration::from_millis);
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ApiErrorCode::TtlOutOfRange,
            format!("ttl_ms must be between {} and {}", MIN_TTL.as_millis(), MAX_TTL.as_millis()),
        ));
    }
    let too_long =
        |field: &str, max: usize| ApiError::invalid(format!("`{field}` is longer than {max} bytes"));
    let title = Title::new(request.title).map_err(|e| too_long("title", e.max))?;
    let body = Body::new(request.body).map_err(|e| too_long("body", e.max))?;
    let data = request.data.map_or_else(String::new, |value| value.to_string());
    let data = Data::new(data).map_err(|e| too_long("data (as JSON text)", e.max))?;
    if let Some(bad) = request.to.iter().find(|puid| !is_puid(puid)) {
        return Err(ApiError::invalid_puid(StatusCode::UNPROCESSABLE_ENTITY, bad));
    }
    let app_id = AppId::new(app.id.as_str()).map_err(ApiError::internal)?;
    let notification = NewNotification {
        app_id,
        to: request.to,
        title,
        body,
        data,
        ttl,
        mode: request.mode.unwrap_or(Mode::All),
    };
    match state.notifications.send(notification) {
        Ok(view) => Ok((StatusCode::CREATED, axum::Json(view))),
        Err(refused) => Err(refused_error(&refused)),
    }
}

/// The 429 for a refused notification; the codes are documented in openapi.json.
fn refused_error(refused: &NotifyRefused) -> ApiError {
    let message = refused.to_string();
    match *refused {
        NotifyRefused::AppRate { retry_after } => {
            ApiError::too_many(ApiErrorCode::NotifyRateLimited, message, Some(retry_after))
        }
        NotifyRefused::RecipientRate { retry_after } => {
            ApiError::too_many(ApiErrorCode::RecipientRateLimited, message, Some(retry_after))
        }
        // Places free up as outcomes are decided; within a TTL at the most.
        NotifyRefused::Outstanding { .. } => {
            ApiError::too_many(ApiErrorCode::TooManyOutstanding, message, Some(Duration::from_secs(1)))
        }
    }
}

pub(super) async fn get_one(
    State(state): State<ApiState>,
    AppAuth(app): AppAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<axum::Json<NotificationView>, ApiError> {
    let not_found = || ApiError::not_found("no such notification");
    let id: u64 = id.parse().map_err(|_| not_found())?;
    state.notifications.get(&app.id, id).map(axum::Json).ok_or_else(not_found)
}
