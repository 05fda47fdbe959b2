//! Prometheus metrics with stable names, served at `/metrics`.
//!
//! Names are part of the operator interface: add new ones, never rename. Counters get the
//! `_total` suffix from the exposition format.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A label naming a device's effective state: a status, or `silent` past its grace.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// `online`, `away`, `unavailable`, `offline` or `silent`.
    pub state: &'static str,
}

/// The values of the `state` label of `presence_sessions`.
pub(crate) const SESSION_STATES: [&str; 5] = ["online", "away", "unavailable", "offline", "silent"];

/// A label naming why something failed.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The stable error code name.
    pub reason: &'static str,
}

/// A label naming an HTTP status code.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// The status code, as digits.
    pub status: String,
}

/// A label naming how a webhook batch ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `delivered`, `failed`, `throttled` or `gone`.
    pub result: &'static str,
}

/// A label naming an app.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabel {
    /// The app id.
    pub app: String,
}

/// Upper bounds, in seconds, of the webhook delivery latency buckets: fine around the
/// 250 ms batch window, then coarse out to the hours an AppService outage can last.
pub(crate) const DELIVERY_BUCKETS: [f64; 16] =
    [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0];

/// A histogram with [`DELIVERY_BUCKETS`]; its own type so that [`Metrics`] keeps its
/// `Default` (prometheus-client's histograms need their buckets at construction), and so
/// that its count and sum can be read back (prometheus-client only encodes them), for the
/// console's mean latency (`GET /v1/admin/stats`).
#[derive(Debug)]
pub struct DeliveryHistogram {
    histogram: Histogram,
    count: AtomicU64,
    /// The sum in microseconds: exact enough for a mean, and an atomic integer.
    sum_micros: AtomicU64,
}

impl Default for DeliveryHistogram {
    fn default() -> DeliveryHistogram {
        DeliveryHistogram {
            histogram: Histogram::new(DELIVERY_BUCKETS),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl DeliveryHistogram {
    /// Records one latency, in seconds.
    pub fn observe(&self, seconds: f64) {
        self.histogram.observe(seconds);
        self.count.fetch_add(1, Ordering::Relaxed);
        // `as` saturates: a negative or NaN latency adds nothing.
        self.sum_micros.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// Observations so far (`presence_webhook_delivery_seconds_count`).
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Their sum in seconds (`presence_webhook_delivery_seconds_sum`, to the microsecond).
    pub fn sum(&self) -> f64 {
        self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
    }
}

/// Every metric the daemon exports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// `presence_sessions{state}`: sessions up, by the device's effective state.
    pub sessions: Family<StateLabel, Gauge>,
    /// `presence_users`: users with at least one session, set when `/metrics` is read (it
    /// left the public `/healthz`, which anyone can read).
    pub users: Gauge,
    /// `presence_outbox_writable`: 1 while the webhook outbox can write, 0 while its writes
    /// fail (a full disk); set when `/metrics` is read.
    pub outbox_writable: Gauge,
    /// `presence_handshakes_total`: QUIC connection attempts whose Initial decrypted and that
    /// passed the handshake limits (junk Initials count under `handshakes_failed{reason="initial"}`).
    pub handshakes: Counter,
    /// `presence_handshakes_failed_total{reason}`: connections that never became a session.
    pub handshakes_failed: Family<ReasonLabel, Counter>,
    /// `presence_sessions_refused_total`: connections refused at the session limit.
    pub sessions_refused: Counter,
    /// `presence_retries_total`: connections asked to validate their address (QUIC Retry).
    pub retries: Counter,
    /// `presence_pings_received_total`: ping datagrams received.
    pub pings_received: Counter,
    /// `presence_bad_datagrams_total`: datagrams dropped as undecodable.
    pub bad_datagrams: Counter,
    /// `presence_status_changes_total`: device status changes applied.
    pub status_changes: Counter,
    /// `presence_events_total`: presence events emitted per (app, PUID).
    pub events: Counter,
    /// `presence_zero_rtt_accepted_total`: sessions whose control stream was accepted
    /// while the handshake was still going on, so their `Hello` came in 0-RTT. A lower
    /// bound: quinn says whether a stream is 0-RTT by the handshake's state when the session
    /// task *accepts* it, so a 0-RTT `Hello` that a busy daemon gets to only after the
    /// handshake counts in [`tls_resumptions`](Self::tls_resumptions) alone.
    pub zero_rtt_accepted: Counter,
    /// `presence_tls_resumptions_total`: handshakes that resumed a stored TLS session (a
    /// device reconnecting; with early data, the 0-RTT ones among them). Exact: counted
    /// when rustls takes the session from the store.
    pub tls_resumptions: Counter,
    /// `presence_migrations_total`: sessions that moved to a new client address.
    pub migrations: Counter,
    /// `presence_sessions_closed_total{reason}`: sessions ended, by close code.
    pub sessions_closed: Family<ReasonLabel, Counter>,
    /// `presence_notifications_total{reason}`: notification recipients decided, by outcome.
    pub notifications: Family<ReasonLabel, Counter>,
    /// `presence_http_responses_total{status}`: HTTPS answers, by status code.
    pub http_responses: Family<StatusLabel, Counter>,
    /// `presence_webhook_batches_total{result}`: webhook POSTs by outcome: `delivered`
    /// (2xx), `failed` (other status, timeout, connection error), `throttled` (429, 502,
    /// 503, 504), `gone` (410, which disables the app).
    pub webhook_batches: Family<ResultLabel, Counter>,
    /// `presence_webhook_events_total`: events delivered (acknowledged with a 2xx).
    pub webhook_events: Counter,
    /// `presence_webhook_delivery_seconds`: from an event's creation (its `at`, else its
    /// enqueueing) to the 2xx that acknowledged it.
    pub webhook_delivery_seconds: DeliveryHistogram,
    /// `presence_webhook_retries_total`: webhook batches sent again after a failure.
    pub webhook_retries: Counter,
    /// `presence_outbox_depth{app}`: events waiting in each app's outbox.
    pub outbox_depth: Family<AppLabel, Gauge>,
    /// `presence_outbox_oldest_age_seconds{app}`: how long the oldest event waiting in each
    /// app's outbox has waited (0 when none waits); set when `/metrics` is read.
    pub outbox_oldest_age: Family<AppLabel, Gauge<f64, AtomicU64>>,
    /// `presence_outbox_entries`: events waiting across every app; set when `/metrics` is
    /// read.
    pub outbox_entries: Gauge,
    /// `presence_outbox_live_bytes`: their JSON bytes; set when `/metrics` is read.
    pub outbox_live_bytes: Gauge,
    /// `presence_outbox_disk_bytes`: what the outbox's files take on disk (bounded by
    /// compaction to a small factor of the live bytes); set when `/metrics` is read.
    pub outbox_disk_bytes: Gauge,
    /// `presence_outbox_compactions_total`: compactions the outbox ran since start.
    pub outbox_compactions: Counter,
    /// `presence_refusals_total{reason}`: work refused by a defence, by reason (see
    /// [`Refusal`]).
    pub refusals: Family<ReasonLabel, Counter>,
    /// `presence_udp_datagrams_total`: UDP datagrams the QUIC socket received, junk included.
    pub udp_datagrams: Counter,
    /// `presence_udp_initials_total`: received datagrams shaped like a QUIC Initial (long
    /// header, type 0); against `presence_handshakes_total` it shows junk Initials.
    pub udp_initials: Counter,
}

/// Why a defence refused something: the `reason` label of `presence_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A token-less Initial from a source sending them far over its handshake rate,
    /// dropped at the socket before quinn parsed it.
    InitialFlood,
    /// A handshake over its source address's rate, answered with a QUIC Retry.
    HandshakeRetry,
    /// A handshake over its (validated) source address's rate, ignored.
    HandshakeIgnored,
    /// A heartbeat ping over its session's rate, dropped.
    PingRate,
    /// A DATAGRAM quinn received but the session never read: dropped by quinn's datagram
    /// buffer when full (it drops the oldest), or still in it when the session ended.
    DatagramBuffer,
    /// A session closed with `RATE_LIMITED` (frames over the burst or a sustained ping flood).
    SessionRateLimited,
    /// A session closed because the device stopped reading its control stream.
    SlowReader,
    /// A new device of a user who has `max_devices_per_user` connected, refused with
    /// `TOO_MANY_DEVICES`.
    DevicesPerUser,
    /// A notification request over its app's rate.
    NotifyAppRate,
    /// A notification request over a recipient's rate.
    NotifyUserRate,
    /// A notification request over its app's cap on undecided notifications.
    NotifyOutstanding,
    /// An HTTPS connection over the connection cap when no connection was idle (every slot
    /// it may take has a request in flight), closed at once.
    HttpsConnections,
    /// An HTTPS client too slow with its TLS handshake.
    HttpsHandshakeTimeout,
    /// An HTTPS connection from an address that holds `https_max_per_source` already,
    /// closed at once.
    HttpsPerSource,
    /// An idle HTTPS connection (no request in flight) closed to make room for a new one
    /// while every slot was taken.
    HttpsIdleEvicted,
    /// An HTTPS connection closed after `https_idle_timeout_secs` without a request.
    HttpsIdleTimeout,
    /// An HTTPS request whose body did not arrive within `https_body_timeout_secs` (408).
    HttpsBodyTimeout,
    /// An HTTPS request not answered within `https_request_timeout_secs` (408).
    HttpsRequestTimeout,
}

impl Refusal {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::InitialFlood => "initial_flood",
            Refusal::HandshakeRetry => "handshake_retry",
            Refusal::HandshakeIgnored => "handshake_ignored",
            Refusal::PingRate => "ping_rate",
            Refusal::DatagramBuffer => "datagram_buffer",
            Refusal::SessionRateLimited => "session_rate_limited",
            Refusal::SlowReader => "slow_reader",
            Refusal::DevicesPerUser => "devices_per_user",
            Refusal::NotifyAppRate => "notify_app_rate",
            Refusal::NotifyUserRate => "notify_user_rate",
            Refusal::NotifyOutstanding => "notify_outstanding",
            Refusal::HttpsConnections => "https_connections",
            Refusal::HttpsHandshakeTimeout => "https_handshake_timeout",
            Refusal::HttpsPerSource => "https_per_source",
            Refusal::HttpsIdleEvicted => "https_idle_evicted",
            Refusal::HttpsIdleTimeout => "https_idle_timeout",
            Refusal::HttpsBodyTimeout => "https_body_timeout",
            Refusal::HttpsRequestTimeout => "https_request_timeout",
        }
    }
}

impl Metrics {
    /// Renders the Prometheus text exposition.
    pub fn render(&self) -> String {
        // Every state is exported, at zero too, so dashboards see the full set from the start.
        for state in SESSION_STATES {
            let _ = self.sessions.get_or_create(&StateLabel { state });
        }
        let mut registry = Registry::default();
        registry.register("presence_sessions", "Sessions up, by effective state", self.sessions.clone());
        registry.register("presence_users", "Users with at least one session", self.users.clone());
        registry.register(
            "presence_outbox_writable",
            "1 while the webhook outbox can write, 0 while its writes fail",
            self.outbox_writable.clone(),
        );
        registry.register("presence_handshakes", "QUIC connections accepted", self.handshakes.clone());
        registry.register(
            "presence_handshakes_failed",
            "Connections that never became a session",
            self.handshakes_failed.clone(),
        );
        registry.register(
            "presence_sessions_refused",
            "Connections refused at the session limit",
            self.sessions_refused.clone(),
        );
        registry.register("presence_retries", "Connections sent a QUIC Retry", self.retries.clone());
        registry.register("presence_pings_received", "Ping datagrams received", self.pings_received.clone());
        registry.register(
            "presence_bad_datagrams",
            "Datagrams dropped as undecodable",
            self.bad_datagrams.clone(),
        );
        registry.register(
            "presence_status_changes",
            "Device status changes applied",
            self.status_changes.clone(),
        );
        registry.register("presence_events", "Presence events emitted per app and PUID", self.events.clone());
        registry.register(
            "presence_zero_rtt_accepted",
            "Sessions whose Hello arrived in 0-RTT (a lower bound: see presence_tls_resumptions)",
            self.zero_rtt_accepted.clone(),
        );
        registry.register(
            "presence_tls_resumptions",
            "Handshakes that resumed a stored TLS session",
            self.tls_resumptions.clone(),
        );
        registry.register(
            "presence_migrations",
            "Sessions that changed client address",
            self.migrations.clone(),
        );
        registry.register(
            "presence_sessions_closed",
            "Sessions ended, by close code",
            self.sessions_closed.clone(),
        );
        registry.register(
            "presence_notifications",
            "Notification recipients decided, by outcome (label reason)",
            self.notifications.clone(),
        );
        registry.register(
            "presence_http_responses",
            "HTTPS answers, by status code",
            self.http_responses.clone(),
        );
        registry.register(
            "presence_webhook_batches",
            "Webhook batches sent, by result (delivered, failed, throttled, gone)",
            self.webhook_batches.clone(),
        );
        registry.register("presence_webhook_events", "Webhook events delivered", self.webhook_events.clone());
        registry.register(
            "presence_webhook_delivery_seconds",
            "Seconds from an event's creation to the 2xx that acknowledged it",
            self.webhook_delivery_seconds.histogram.clone(),
        );
        registry.register(
            "presence_webhook_retries",
            "Webhook batches sent again after a failure",
            self.webhook_retries.clone(),
        );
        registry.register(
            "presence_outbox_depth",
            "Events waiting in each app's outbox",
            self.outbox_depth.clone(),
        );
        registry.register(
            "presence_outbox_oldest_age_seconds",
            "Age of the oldest event waiting in each app's outbox",
            self.outbox_oldest_age.clone(),
        );
        registry.register(
            "presence_outbox_entries",
            "Events waiting across every app",
            self.outbox_entries.clone(),
        );
        registry.register(
            "presence_outbox_live_bytes",
            "JSON bytes of the events waiting across every app",
            self.outbox_live_bytes.clone(),
        );
        registry.register(
            "presence_outbox_disk_bytes",
            "Bytes the outbox's files take on disk",
            self.outbox_disk_bytes.clone(),
        );
        registry.register(
            "presence_outbox_compactions",
            "Compactions the outbox ran",
            self.outbox_compactions.clone(),
        );
        registry.register(
            "presence_refusals",
            "Work refused by a defence (rate limits, caps, slow readers), by reason",
            self.refusals.clone(),
        );
        registry.register(
            "presence_udp_datagrams",
            "UDP datagrams the QUIC socket received, junk included",
            self.udp_datagrams.clone(),
        );
        registry.register(
            "presence_udp_initials",
            "Received datagrams shaped like a QUIC Initial",
            self.udp_initials.clone(),
        );
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }

    /// Counts one refusal.
    pub fn refuse(&self, refusal: Refusal) {
        self.refusals.get_or_create(&ReasonLabel { reason: refusal.as_str() }).inc();
    }

    /// Counts `n` refusals.
    pub fn refuse_n(&self, refusal: Refusal, n: u64) {
        self.refusals.get_or_create(&ReasonLabel { reason: refusal.as_str() }).inc_by(n);
    }

    /// Moves one session between state gauges.
    pub fn move_session(&self, from: Option<&'static str>, to: Option<&'static str>) {
        if let Some(state) = from {
            self.sessions.get_or_create(&StateLabel { state }).dec();
        }
        if let Some(state) = to {
            self.sessions.get_or_create(&StateLabel { state }).inc();
        }
    }
}
