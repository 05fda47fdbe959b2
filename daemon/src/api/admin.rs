//! The admin API: register, list, show, rotate, disable, re-enable and remove apps, and the
//! daemon's figures as JSON (`stats`, what the console charts).
//!
//! Reads come from the [`Apps`](crate::apps::Apps) cache and the outbox's in-memory depth;
//! changes go through `Apps`, whose store writes run on the blocking pool.

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::extract::{AdminAuth, ApiJson, ApiPath};
use super::{ApiError, ApiErrorCode, ApiState};
use crate::store::{AppRecord, StoreError};

/// Longest app name.
const MAX_NAME: usize = 200;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Create {
    name: String,
    webhook_url: String,
}

/// What `add` returns: the only time the API key is shown.
#[derive(Debug, Serialize)]
pub(super) struct Created {
    app_id: String,
    api_key: String,
    webhook_secret: String,
    name: String,
    webhook_url: String,
}

/// An app as the admin sees it: never the API key, never the secret.
#[derive(Debug, Serialize)]
pub(super) struct AppView {
    app_id: String,
    name: String,
    webhook_url: String,
    created_at: u64,
    disabled: bool,
    outbox_depth: u64,
    /// When the secret a rotation replaced stops signing beside the current one; absent
    /// when there is none (no overlap, or it has ended).
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_secret_expires_at_ms: Option<u64>,
}

fn view(state: &ApiState, app: AppRecord) -> AppView {
    let outbox_depth = state.fanout.depth(&app.id);
    let previous_secret_expires_at_ms = previous_expiry(state, &app);
    AppView {
        previous_secret_expires_at_ms,
        app_id: app.id,
        name: app.name,
        webhook_url: app.webhook_url,
        created_at: app.created_ms,
        disabled: app.disabled,
        outbox_depth,
    }
}

/// When the app's previous secret stops signing, if it still does.
fn previous_expiry(state: &ApiState, app: &AppRecord) -> Option<u64> {
    app.live_previous_secret(state.clock.unix_ms()).map(|previous| previous.expires_ms)
}

/// A store lookup's answer: the app, 404 `not_found` if there is none, 500 on a failure.
fn found<T>(lookup: Result<Option<T>, StoreError>) -> Result<T, ApiError> {
    lookup.map_err(ApiError::internal)?.ok_or_else(no_such_app)
}

fn no_such_app() -> ApiError {
    ApiError::not_found("no such app")
}

pub(super) async fn create(
    State(state): State<ApiState>,
    _: AdminAuth,
    ApiJson(request): ApiJson<Create>,
) -> Result<(StatusCode, axum::Json<Created>), ApiError> {
    let name = request.name.trim();
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(ApiError::invalid(format!("`name` must be 1 to {MAX_NAME} bytes")));
    }
    state
        .url_policy
        .validate_async(&request.webhook_url)
        .await
        .map_err(|e| ApiError::unprocessable(ApiErrorCode::InvalidWebhookUrl, &e))?;
    let created = state.apps.create(name, &request.webhook_url).await.map_err(ApiError::internal)?;
    state.fanout.app_changed(&created.app.id);
    let app = created.app;
    Ok((
        StatusCode::CREATED,
        axum::Json(Created {
            app_id: app.id,
            api_key: created.api_key,
            webhook_secret: app.webhook_secret,
            name: app.name,
            webhook_url: app.webhook_url,
        }),
    ))
}

#[derive(Debug, Serialize)]
pub(super) struct List {
    apps: Vec<AppView>,
}

pub(super) async fn list(State(state): State<ApiState>, _: AdminAuth) -> Result<axum::Json<List>, ApiError> {
    let apps = state.apps.list();
    Ok(axum::Json(List { apps: apps.into_iter().map(|app| view(&state, app)).collect() }))
}

pub(super) async fn show(
    State(state): State<ApiState>,
    _: AdminAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<axum::Json<AppView>, ApiError> {
    let app = state.apps.get(&id).ok_or_else(no_such_app)?;
    Ok(axum::Json(view(&state, AppRecord::clone(&app))))
}

#[derive(Debug, Serialize)]
pub(super) struct Rotated {
    app_id: String,
    webhook_secret: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_secret_expires_at_ms: Option<u64>,
}

/// The longest overlap a rotation may give the old secret: long enough for a receiver's
/// deploy, short enough that a leaked secret being rotated away does not stay valid.
pub(crate) const MAX_SECRET_OVERLAP: Duration = Duration::from_secs(7 * 24 * 3600);

/// `rotate-secret`'s query: `overlap_secs`, how long the old secret keeps signing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RotateQuery {
    overlap_secs: Option<u64>,
}

pub(super) async fn rotate_secret(
    State(state): State<ApiState>,
    _: AdminAuth,
    ApiPath(id): ApiPath<String>,
    query: Result<Query<RotateQuery>, QueryRejection>,
) -> Result<axum::Json<Rotated>, ApiError> {
    let overlap_out_of_range = |detail: String| {
        let max = MAX_SECRET_OVERLAP.as_secs();
        let message = format!("`overlap_secs` must be an integer from 0 to {max} (7 days): {detail}");
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, ApiErrorCode::OverlapOutOfRange, message)
    };
    let Query(query) = query.map_err(|rejection| overlap_out_of_range(rejection.body_text()))?;
    let overlap = Duration::from_secs(query.overlap_secs.unwrap_or(0));
    if overlap > MAX_SECRET_OVERLAP {
        return Err(overlap_out_of_range(format!("{} is too long", overlap.as_secs())));
    }
    let app = found(state.apps.rotate_secret(&id, overlap).await)?;
    state.fanout.app_changed(&app.id);
    let previous_secret_expires_at_ms = previous_expiry(&state, &app);
    Ok(axum::Json(Rotated {
        app_id: app.id,
        webhook_secret: app.webhook_secret,
        previous_secret_expires_at_ms,
    }))
}

#[derive(Debug, Serialize)]
pub(super) struct KeyRotated {
    app_id: String,
    api_key: String,
}

/// A new API key; the old one is refused from now on.
pub(super) async fn rotate_key(
    State(state): State<ApiState>,
    _: AdminAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<axum::Json<KeyRotated>, ApiError> {
    let (app, api_key) = found(state.apps.rotate_key(&id).await)?;
    Ok(axum::Json(KeyRotated { app_id: app.id, api_key }))
}

pub(super) async fn enable(
    State(state): State<ApiState>,
    _: AdminAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<axum::Json<AppView>, ApiError> {
    switch(&state, found(state.apps.enable(&id).await)?)
}

/// Turns an app's deliveries off, as a 410 from its endpoint does: events wait in its
/// outbox until `enable`.
pub(super) async fn disable(
    State(state): State<ApiState>,
    _: AdminAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<axum::Json<AppView>, ApiError> {
    switch(&state, found(state.apps.disable(&id).await)?)
}

/// After `enable` or `disable`: the app's delivery task restarts with the new record.
fn switch(state: &ApiState, app: AppRecord) -> Result<axum::Json<AppView>, ApiError> {
    state.fanout.app_changed(&app.id);
    Ok(axum::Json(view(state, app)))
}

/// The numbers `/metrics` exports that the console shows, as JSON for the admin: counters
/// are totals since start (the console turns two readings into rates), gauges are now.
#[derive(Debug, Serialize)]
pub(super) struct Stats {
    /// When read, Unix ms.
    at: u64,
    users: u64,
    /// `presence_sessions{state}`.
    sessions: std::collections::BTreeMap<&'static str, i64>,
    /// `presence_handshakes_total`.
    handshakes: u64,
    /// `presence_webhook_batches_total{result}`.
    webhook_batches: std::collections::BTreeMap<&'static str, u64>,
    /// `presence_webhook_events_total`.
    webhook_events: u64,
    /// `presence_webhook_retries_total`.
    webhook_retries: u64,
    /// `presence_webhook_delivery_seconds`: count and sum.
    webhook_delivery_seconds: LatencySum,
    /// `presence_outbox_writable`.
    outbox_writable: bool,
    /// Per app: `presence_outbox_depth{app}` and the oldest waiting event.
    outboxes: Vec<OutboxFigures>,
}

#[derive(Debug, Serialize)]
pub(super) struct LatencySum {
    count: u64,
    sum: f64,
}

#[derive(Debug, Serialize)]
pub(super) struct OutboxFigures {
    app_id: String,
    depth: u64,
    /// The oldest waiting event's `at`, Unix ms; `None` when nothing waits.
    oldest_waiting_at: Option<u64>,
}

pub(super) async fn stats(
    State(state): State<ApiState>,
    _: AdminAuth,
) -> Result<axum::Json<Stats>, ApiError> {
    use crate::metrics::{ResultLabel, SESSION_STATES, StateLabel};
    use crate::webhook::log::AttemptResult;
    let metrics = &state.metrics;
    let sessions = SESSION_STATES
        .iter()
        .map(|&state| (state, metrics.sessions.get(&StateLabel { state }).map_or(0, |gauge| gauge.get())))
        .collect();
    let results =
        [AttemptResult::Delivered, AttemptResult::Failed, AttemptResult::Throttled, AttemptResult::Gone];
    let webhook_batches = results
        .iter()
        .map(|result| {
            let label = ResultLabel { result: result.as_str() };
            (result.as_str(), metrics.webhook_batches.get(&label).map_or(0, |counter| counter.get()))
        })
        .collect();
    let outboxes = state
        .apps
        .list()
        .into_iter()
        .map(|app| OutboxFigures {
            depth: state.fanout.depth(&app.id),
            oldest_waiting_at: state.fanout.oldest_waiting_ms(&app.id),
            app_id: app.id,
        })
        .collect();
    let histogram = &metrics.webhook_delivery_seconds;
    Ok(axum::Json(Stats {
        at: state.clock.unix_ms(),
        users: state.table.users() as u64,
        sessions,
        handshakes: metrics.handshakes.get(),
        webhook_batches,
        webhook_events: metrics.webhook_events.get(),
        webhook_retries: metrics.webhook_retries.get(),
        webhook_delivery_seconds: LatencySum { count: histogram.count(), sum: histogram.sum() },
        outbox_writable: state.fanout.outbox_writable(),
        outboxes,
    }))
}

pub(super) async fn remove(
    State(state): State<ApiState>,
    _: AdminAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    if !state.apps.remove(&id).await.map_err(ApiError::internal)? {
        return Err(no_such_app());
    }
    state.table.app_removed(&id);
    state.notifications.app_removed(&id);
    state.limiter.forget(&id);
    state.fanout.app_changed(&id);
    Ok(StatusCode::NO_CONTENT)
}
