//! Errors of the HTTP APIs: always a JSON body `{"error": {"code", "message"}}` with a
//! stable `code`, so clients branch on the code and show the message.
//!
//! [`ApiErrorCode`] is the whole vocabulary of codes; openapi.json documents the same set
//! (a test checks both directions), so a code cannot be answered without being documented.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Every stable error code the HTTP APIs answer with. Clients branch on these strings, so
/// [`ApiErrorCode::as_str`] of an existing code never changes; new codes may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiErrorCode {
    /// 401: no credentials, or a wrong admin token.
    Unauthenticated,
    /// 401: a bearer token that is no app's API key.
    InvalidApiKey,
    /// 429: the app's request rate limit.
    RateLimited,
    /// 429: too many refused credentials from the client's address; every credential from
    /// it is refused until `Retry-After`.
    AuthRateLimited,
    /// 429: the app's notification rate limit.
    NotifyRateLimited,
    /// 429: the per-recipient notification rate limit.
    RecipientRateLimited,
    /// 429: the app has too many notifications waiting for an outcome.
    TooManyOutstanding,
    /// 400: the body is not JSON.
    InvalidJson,
    /// 400: the body could not be read.
    InvalidBody,
    /// 400: a path parameter does not decode.
    InvalidPath,
    /// 400 in a path, 422 in a body: not 22 characters of base64url.
    InvalidPuid,
    /// 422: well-formed JSON with a wrong field.
    InvalidRequest,
    /// 415: a JSON body without `Content-Type: application/json`.
    UnsupportedMediaType,
    /// 413: the body is over the limit.
    PayloadTooLarge,
    /// 422: a notification's `ttl_ms` outside 5,000 to 600,000.
    TtlOutOfRange,
    /// 404: no such route or resource.
    NotFound,
    /// 405: the route exists, the method does not.
    MethodNotAllowed,
    /// 403: the admin API from a non-loopback address without `admin_remote`.
    AdminForbidden,
    /// 403: `/metrics` from a non-loopback address without `metrics_remote`.
    MetricsForbidden,
    /// 403: no admin token is configured.
    AdminDisabled,
    /// 422: a webhook URL the SSRF guard refuses.
    InvalidWebhookUrl,
    /// 422: a secret rotation's `overlap_secs` that is not 0 to 7 days.
    OverlapOutOfRange,
    /// 500: the daemon failed (storage); details go to the log.
    Internal,
    /// 408: the request's body did not arrive within the body timeout, or the whole request
    /// took longer than the request timeout; on HTTP/1.1 the connection closes.
    RequestTimeout,
}

impl ApiErrorCode {
    /// Every code, in the order openapi.json lists them.
    pub const ALL: [ApiErrorCode; 24] = [
        ApiErrorCode::Unauthenticated,
        ApiErrorCode::InvalidApiKey,
        ApiErrorCode::RateLimited,
        ApiErrorCode::AuthRateLimited,
        ApiErrorCode::NotifyRateLimited,
        ApiErrorCode::RecipientRateLimited,
        ApiErrorCode::TooManyOutstanding,
        ApiErrorCode::InvalidJson,
        ApiErrorCode::InvalidBody,
        ApiErrorCode::InvalidPath,
        ApiErrorCode::InvalidPuid,
        ApiErrorCode::InvalidRequest,
        ApiErrorCode::UnsupportedMediaType,
        ApiErrorCode::PayloadTooLarge,
        ApiErrorCode::TtlOutOfRange,
        ApiErrorCode::NotFound,
        ApiErrorCode::MethodNotAllowed,
        ApiErrorCode::AdminForbidden,
        ApiErrorCode::MetricsForbidden,
        ApiErrorCode::AdminDisabled,
        ApiErrorCode::InvalidWebhookUrl,
        ApiErrorCode::OverlapOutOfRange,
        ApiErrorCode::Internal,
        ApiErrorCode::RequestTimeout,
    ];

    /// The code as clients see it in `error.code`.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiErrorCode::Unauthenticated => "unauthenticated",
            ApiErrorCode::InvalidApiKey => "invalid_api_key",
            ApiErrorCode::RateLimited => "rate_limited",
            ApiErrorCode::AuthRateLimited => "auth_rate_limited",
            ApiErrorCode::NotifyRateLimited => "notify_rate_limited",
            ApiErrorCode::RecipientRateLimited => "recipient_rate_limited",
            ApiErrorCode::TooManyOutstanding => "too_many_outstanding",
            ApiErrorCode::InvalidJson => "invalid_json",
            ApiErrorCode::InvalidBody => "invalid_body",
            ApiErrorCode::InvalidPath => "invalid_path",
            ApiErrorCode::InvalidPuid => "invalid_puid",
            ApiErrorCode::InvalidRequest => "invalid_request",
            ApiErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ApiErrorCode::PayloadTooLarge => "payload_too_large",
            ApiErrorCode::TtlOutOfRange => "ttl_out_of_range",
            ApiErrorCode::NotFound => "not_found",
            ApiErrorCode::MethodNotAllowed => "method_not_allowed",
            ApiErrorCode::AdminForbidden => "admin_forbidden",
            ApiErrorCode::MetricsForbidden => "metrics_forbidden",
            ApiErrorCode::AdminDisabled => "admin_disabled",
            ApiErrorCode::InvalidWebhookUrl => "invalid_webhook_url",
            ApiErrorCode::OverlapOutOfRange => "overlap_out_of_range",
            ApiErrorCode::Internal => "internal",
            ApiErrorCode::RequestTimeout => "request_timeout",
        }
    }
}

impl std::fmt::Display for ApiErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A JSON error answer.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: ApiErrorCode,
    message: String,
    retry_after: Option<Duration>,
}

impl ApiError {
    /// An error with a stable `code` (documented in openapi.json) and a message for people.
    pub(crate) fn new(status: StatusCode, code: ApiErrorCode, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), retry_after: None }
    }

    /// 422 `invalid_request`: the JSON was well-formed but a field is wrong.
    pub(crate) fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, ApiErrorCode::InvalidRequest, message)
    }

    /// `invalid_puid` (400 in a path, 422 in a body): not 22 characters of base64url.
    pub(crate) fn invalid_puid(status: StatusCode, puid: &str) -> ApiError {
        let shown: String = puid.chars().take(40).collect();
        let message = format!("{shown:?} is not a PUID (22 characters of base64url)");
        ApiError::new(status, ApiErrorCode::InvalidPuid, message)
    }

    /// 422 with `code`, the message being `error` and each of its causes, `: `-separated
    /// (the error types keep their causes as sources, not in their own message).
    pub(crate) fn unprocessable(code: ApiErrorCode, error: &dyn std::error::Error) -> ApiError {
        let mut message = error.to_string();
        let mut cause = error.source();
        while let Some(error) = cause {
            message = format!("{message}: {error}");
            cause = error.source();
        }
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 404 `not_found`.
    pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, ApiErrorCode::NotFound, message)
    }

    /// 500 `internal`: the daemon failed (storage); details go to the log, not the client.
    pub(crate) fn internal(error: impl std::fmt::Display) -> ApiError {
        tracing::error!(%error, "internal error answering an API request");
        let message = "internal error; try again later";
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, ApiErrorCode::Internal, message)
    }

    /// 429 `rate_limited` with a `Retry-After`.
    pub(crate) fn rate_limited(retry_after: Duration) -> ApiError {
        ApiError::too_many(ApiErrorCode::RateLimited, "too many requests", Some(retry_after))
    }

    /// 429 with its own `code`, and a `Retry-After` when the wait is known.
    pub(crate) fn too_many(
        code: ApiErrorCode,
        message: impl Into<String>,
        retry_after: Option<Duration>,
    ) -> ApiError {
        let mut error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message);
        error.retry_after = retry_after;
        error
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code.as_str(), "message": self.message}});
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn codes_are_distinct_snake_case() {
        let codes: BTreeSet<&str> = ApiErrorCode::ALL.iter().map(|code| code.as_str()).collect();
        assert_eq!(codes.len(), ApiErrorCode::ALL.len());
        assert!(codes.iter().all(|code| code.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
    }

    #[test]
    fn an_unprocessable_answer_tells_every_cause() {
        let policy = crate::webhook::guard::UrlPolicy::new(false, &[]).expect("policy");
        let refused = policy.validate("https://").expect_err("no host");
        let error = ApiError::unprocessable(ApiErrorCode::InvalidWebhookUrl, &refused);
        assert_eq!(error.code, ApiErrorCode::InvalidWebhookUrl);
        assert_eq!(error.status, StatusCode::UNPROCESSABLE_ENTITY);
        let cause = std::error::Error::source(&refused).expect("the URL parser's error").to_string();
        assert_eq!(error.message, format!("not a valid URL: {cause}"));
    }
}
