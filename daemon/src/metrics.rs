//! Prometheus metrics with stable names, served at `/metrics`.
//!
//! Names are part of the operator interface: add new ones, never rename. Counters get the
//! `_total` suffix from the exposition format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A label naming a device's effective state: a status, or `silent` past its grace.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// `online`, `away`, `unavailable`, `offline` or `silent`.
    pub state: &'static str,
}

/// A label naming why something failed.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The stable error code name.
    pub reason: &'static str,
}

/// Every metric the daemon exports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// `presence_sessions{state}`: sessions up, by the device's effective state.
    pub sessions: Family<StateLabel, Gauge>,
    /// `presence_handshakes_total`: QUIC connections that reached the daemon's accept.
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
    /// `presence_zero_rtt_accepted_total`: sessions whose `Hello` arrived in 0-RTT.
    pub zero_rtt_accepted: Counter,
    /// `presence_migrations_total`: sessions that moved to a new client address.
    pub migrations: Counter,
    /// `presence_sessions_closed_total{reason}`: sessions ended, by close code.
    pub sessions_closed: Family<ReasonLabel, Counter>,
}

impl Metrics {
    /// Renders the Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        registry.register("presence_sessions", "Sessions up, by effective state", self.sessions.clone());
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
            "Sessions whose Hello arrived in 0-RTT",
            self.zero_rtt_accepted.clone(),
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
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
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
