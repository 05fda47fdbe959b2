//! Errors of the HTTP APIs: always a JSON body `{"error": {"code", "message"}}` with a
//! stable `code`, so clients branch on the code and show the message.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// A JSON error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<Duration>,
}

impl ApiError {
    /// An error with a stable `code` (documented in openapi.json) and a message for people.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), retry_after: None }
    }

    /// 422 `invalid_request`: the JSON was well-formed but a field is wrong.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }

    /// `invalid_puid` (400 in a path, 422 in a body): not 22 characters of base64url.
    pub fn invalid_puid(status: StatusCode, puid: &str) -> ApiError {
        let shown: String = puid.chars().take(40).collect();
        ApiError::new(status, "invalid_puid", format!("{shown:?} is not a PUID (22 characters of base64url)"))
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 500 `internal`: the daemon failed (storage); details go to the log, not the client.
    pub fn internal(error: impl std::fmt::Display) -> ApiError {
        tracing::error!(%error, "internal error answering an API request");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; try again later")
    }

    /// 429 `rate_limited` with a `Retry-After`.
    pub fn rate_limited(retry_after: Duration) -> ApiError {
        ApiError::too_many("rate_limited", "too many requests", Some(retry_after))
    }

    /// 429 with its own `code`, and a `Retry-After` when the wait is known.
    pub fn too_many(
        code: &'static str,
        message: impl Into<String>,
        retry_after: Option<Duration>,
    ) -> ApiError {
        let mut error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message);
        error.retry_after = retry_after;
        error
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(after) = self.retry_after {
            let seconds = after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
