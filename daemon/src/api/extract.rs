//! Request extractors whose failures are [`ApiError`]s, never axum's plain-text rejections.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::ApiState;
use super::error::{ApiError, ApiErrorCode};
use crate::store::AppRecord;

/// A JSON body; malformed, oversized or mistyped bodies answer with a JSON error.
#[derive(Debug)]
pub(super) struct ApiJson<T>(pub(super) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_error(rejection)),
        }
    }
}

fn json_error(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => ApiError::invalid(e.body_text()),
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::new(StatusCode::BAD_REQUEST, ApiErrorCode::InvalidJson, e.body_text())
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiErrorCode::UnsupportedMediaType,
            "send Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, ApiErrorCode::PayloadTooLarge, e.body_text())
        }
        other => ApiError::new(StatusCode::BAD_REQUEST, ApiErrorCode::InvalidBody, other.body_text()),
    }
}

/// A path parameter; undecodable ones (bad percent-encoding, invalid UTF-8) answer with a
/// JSON error like everything else.
#[derive(Debug)]
pub(super) struct ApiPath<T>(pub(super) T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => {
                Err(ApiError::new(StatusCode::BAD_REQUEST, ApiErrorCode::InvalidPath, rejection.body_text()))
            }
        }
    }
}

/// The bearer token of a request, if any.
fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

/// Refused credentials count against the client's address, at the API's rate
/// (`api_rate`, `api_burst`): without this a wrong key costs nothing, since the per-app
/// limit needs an app. The budget is checked before any credential is looked at and spent
/// only by a refusal, so an address over it is refused even the right credential (with
/// `auth_rate_limited` and `Retry-After`), and a guesser learns nothing from its guesses
/// until it slows down. The address is the TCP peer's, as for the admin check; a request
/// without one (the in-process router of tests and fuzzing) shares one bucket.
#[derive(Debug, Clone, Copy)]
struct Refusals;

impl Refusals {
    fn key(parts: &Parts) -> std::net::IpAddr {
        parts
            .extensions
            .get::<super::Peer>()
            .map_or(std::net::Ipv6Addr::UNSPECIFIED.into(), |peer| peer.0.ip().to_canonical())
    }

    /// Refuses at once if the client's address has spent its budget of refusals.
    fn gate(parts: &Parts, state: &ApiState) -> Result<(), ApiError> {
        state.refusals.peek(&Refusals::key(parts), state.clock.now()).map_err(|wait| {
            let seconds = wait.as_secs_f64().ceil().max(1.0);
            ApiError::too_many(
                ApiErrorCode::AuthRateLimited,
                format!("too many refused credentials from this address; try again in {seconds} s"),
                Some(wait),
            )
        })
    }

    /// Counts `error`, a refused credential, against the client's address; returns it.
    fn spend(parts: &Parts, state: &ApiState, error: ApiError) -> ApiError {
        // Over the budget already (a race with another refusal): the gate says so next time.
        let _ = state.refusals.check(&Refusals::key(parts), state.clock.now());
        error
    }
}

/// The app a request authenticates as (API key), after its rate limit.
#[derive(Debug)]
pub(super) struct AppAuth(pub(super) std::sync::Arc<AppRecord>);

impl FromRequestParts<ApiState> for AppAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        Refusals::gate(parts, state)?;
        let Some(key) = bearer(parts) else {
            let error = ApiError::new(
                StatusCode::UNAUTHORIZED,
                ApiErrorCode::Unauthenticated,
                "send Authorization: Bearer <api key>",
            );
            return Err(Refusals::spend(parts, state, error));
        };
        let Some(app) = state.apps.authenticate(key) else {
            let error =
                ApiError::new(StatusCode::UNAUTHORIZED, ApiErrorCode::InvalidApiKey, "unknown API key");
            return Err(Refusals::spend(parts, state, error));
        };
        state.limiter.check(&app.id, state.clock.now()).map_err(ApiError::rate_limited)?;
        Ok(AppAuth(app))
    }
}

/// An admin request: the admin token, from an allowed address. The address is the TCP
/// peer's: behind a reverse proxy on the same host every client looks local, so such a
/// proxy must not forward `/v1/admin` (or must authenticate it itself).
#[derive(Debug)]
pub(super) struct AdminAuth;

impl FromRequestParts<ApiState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let peer = parts.extensions.get::<super::Peer>();
        if !state.admin_remote && !peer.is_some_and(super::Peer::is_loopback) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                ApiErrorCode::AdminForbidden,
                "the admin API answers loopback clients only (see admin_remote)",
            ));
        }
        let Some(expected) = state.admin_token.as_deref() else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                ApiErrorCode::AdminDisabled,
                "no admin token is configured",
            ));
        };
        Refusals::gate(parts, state)?;
        // Compare digests, not the tokens, so the time taken says nothing about the token.
        let given = crate::apps::sha256_hex(bearer(parts).unwrap_or_default());
        if given != crate::apps::sha256_hex(expected) {
            let error =
                ApiError::new(StatusCode::UNAUTHORIZED, ApiErrorCode::Unauthenticated, "invalid admin token");
            return Err(Refusals::spend(parts, state, error));
        }
        Ok(AdminAuth)
    }
}
