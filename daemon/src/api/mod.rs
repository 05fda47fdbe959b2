//! The HTTPS APIs: the AppService API (`/v1/presence`, `/v1/notifications`,
//! `/v1/deliveries`, `/v1/webhooks/ping`, API key), the admin API (`/v1/admin/...`, admin
//! token, loopback only by default), and the operator endpoints (`/healthz`, `/metrics`,
//! `/openapi.json`).
//!
//! `openapi.json` beside this crate's manifest documents every route and every error code;
//! a test checks that the routes served and the routes documented are the same. The web
//! console ([`crate::console`]) is served beside them by [`service`]: its pages are not API
//! and not in the document; what its scripts call is.

mod admin;
mod deliveries;
pub(crate) mod error;
mod extract;
mod notifications;
mod presence;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub(crate) use crate::limit::RateLimiter;
pub(crate) use error::{ApiError, ApiErrorCode};

use crate::apps::Apps;
use crate::metrics::Metrics;
use crate::notify::Notifications;
use crate::outbound::Outbound;
use crate::settings::Rate;
use crate::table::PresenceTable;
use crate::webhook::fanout::Fanout;
use crate::webhook::guard::UrlPolicy;

/// Buckets of the refused-credentials limiter: a fixed table (client addresses are the
/// peer's to choose), about 24 bytes each.
pub(crate) const REFUSAL_SLOTS: usize = 4_096;

/// Largest request body accepted (a query of 1,000 PUIDs is about 30 KiB).
pub(crate) const MAX_BODY: usize = 128 * 1024;

/// The OpenAPI 3.1 document, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// The client's address, attached to every request by the listener.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl Peer {
    /// Whether the client is on this host. An IPv4 client of a dual-stack `[::]` listener
    /// arrives as `::ffff:127.0.0.1`, which is loopback too.
    pub fn is_loopback(&self) -> bool {
        self.0.ip().to_canonical().is_loopback()
    }
}

/// The API's own settings: how fast each app may call it, and who beyond loopback may
/// reach the admin routes and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiConfig {
    /// Requests per app.
    pub(crate) rate: Rate,
    /// Whether the admin API answers non-loopback clients.
    pub(crate) admin_remote: bool,
    /// Whether `/metrics` answers non-loopback clients.
    pub(crate) metrics_remote: bool,
}

/// What the handlers share.
#[derive(Debug, Clone)]
pub(crate) struct ApiState {
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The presence table.
    pub table: Arc<PresenceTable>,
    /// Registered apps.
    pub apps: Arc<Apps>,
    /// Live notifications.
    pub notifications: Arc<Notifications>,
    /// Per-app request rate limit.
    pub limiter: Arc<RateLimiter>,
    /// Refused credentials (wrong API keys, wrong admin tokens) per client address, at the
    /// same rate as `limiter`: a guesser, or a console someone keeps mistyping into, meets
    /// the API's rate limit like an app does ([`extract`]).
    pub refusals: Arc<crate::limit::HashedLimiter>,
    /// Webhook delivery, told when apps change; its delivery log and outbox depths.
    pub fanout: Arc<Fanout>,
    /// Webhook events the API itself sends (the test event).
    pub outbound: Arc<Outbound>,
    /// Which webhook URLs are acceptable.
    pub url_policy: Arc<UrlPolicy>,
    /// The admin bearer token; the admin API is off without one.
    pub admin_token: Option<Arc<str>>,
    /// Whether the admin API answers non-loopback clients.
    pub admin_remote: bool,
    /// Whether `/metrics` answers non-loopback clients.
    pub metrics_remote: bool,
    /// The daemon's clock (rate limits).
    pub clock: crate::clock::Clock,
}

/// Every route [`router`] serves, as (method, path template), in the order it adds them.
/// `tests/openapi.rs` checks that this list, the `.route(...)` calls below and the `paths`
/// of openapi.json are the same set, and that a running daemon answers each one.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/v1/presence/{puid}"),
    ("POST", "/v1/presence/query"),
    ("POST", "/v1/notifications"),
    ("GET", "/v1/notifications/{id}"),
    ("GET", "/v1/deliveries"),
    ("POST", "/v1/webhooks/ping"),
    ("POST", "/v1/admin/apps"),
    ("GET", "/v1/admin/apps"),
    ("GET", "/v1/admin/apps/{id}"),
    ("DELETE", "/v1/admin/apps/{id}"),
    ("POST", "/v1/admin/apps/{id}/rotate-secret"),
    ("POST", "/v1/admin/apps/{id}/enable"),
    ("POST", "/v1/admin/apps/{id}/disable"),
    ("GET", "/v1/admin/apps/{id}/deliveries"),
    ("GET", "/v1/admin/stats"),
    ("POST", "/v1/admin/apps/{id}/rotate-key"),
];

/// The API and, beside it, the web console ([`crate::console`]): what the listener serves.
/// The console's routes come first and have no fallback of their own, so every other path
/// reaches the API's JSON 404.
pub(crate) fn service(state: ApiState) -> Router {
    let console = crate::console::router().layer(axum::middleware::from_fn_with_state(state.clone(), track));
    console.merge(router(state))
}

/// Every route.
pub(crate) fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/presence/{puid}", get(presence::get_one))
        .route("/v1/presence/query", post(presence::query))
        .route("/v1/notifications", post(notifications::create))
        .route("/v1/notifications/{id}", get(notifications::get_one))
        .route("/v1/deliveries", get(deliveries::own))
        .route("/v1/webhooks/ping", post(deliveries::ping))
        .route("/v1/admin/apps", post(admin::create).get(admin::list))
        .route("/v1/admin/apps/{id}", get(admin::show).delete(admin::remove))
        .route("/v1/admin/apps/{id}/rotate-secret", post(admin::rotate_secret))
        .route("/v1/admin/apps/{id}/rotate-key", post(admin::rotate_key))
        .route("/v1/admin/apps/{id}/enable", post(admin::enable))
        .route("/v1/admin/apps/{id}/disable", post(admin::disable))
        .route("/v1/admin/apps/{id}/deliveries", get(deliveries::of_app))
        .route("/v1/admin/stats", get(admin::stats))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ApiErrorCode::MethodNotAllowed,
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Public, so it says only that the daemon answers, and whether it is degraded: serving
/// presence while its webhook outbox cannot write (a full disk; `presence_outbox_writable`
/// on `/metrics` says which part). Still 200 then: devices are served, and a load balancer
/// that took the node out would move its devices for nothing. The number of connected
/// users is load information, kept for the loopback-only `/metrics` (`presence_users`).
async fn healthz(State(state): State<ApiState>) -> impl IntoResponse {
    let status = if state.fanout.outbox_writable() { "ok" } else { "degraded" };
    axum::Json(serde_json::json!({ "status": status }))
}

/// Metrics tell load, error rates and app ids: loopback only unless `metrics_remote`. The
/// check trusts the socket's peer address, which is the client's own unless a proxy on the
/// same host forwards to the daemon (then that proxy must do the filtering).
async fn metrics(
    State(state): State<ApiState>,
    peer: Option<axum::Extension<Peer>>,
) -> Result<impl IntoResponse, ApiError> {
    if !state.metrics_remote && !peer.is_some_and(|peer| peer.0.is_loopback()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ApiErrorCode::MetricsForbidden,
            "/metrics answers loopback clients only (see metrics_remote)",
        ));
    }
    state.metrics.users.set(i64::try_from(state.table.users()).unwrap_or(i64::MAX));
    state.fanout.refresh_metrics();
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render()))
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// Counts every answer by HTTP status.
async fn track(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    state.metrics.http_responses.get_or_create(&crate::metrics::StatusLabel { status }).inc();
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_includes_ipv4_mapped_addresses_and_nothing_else() {
        let peer = |addr: &str| Peer(addr.parse().expect("address"));
        for local in ["127.0.0.1:9", "[::1]:9", "[::ffff:127.0.0.1]:9", "127.10.0.3:9"] {
            assert!(peer(local).is_loopback(), "{local}");
        }
        for remote in ["10.0.0.1:9", "[::ffff:10.0.0.1]:9", "[2001:db8::1]:9", "[::]:9"] {
            assert!(!peer(remote).is_loopback(), "{remote}");
        }
    }
}
