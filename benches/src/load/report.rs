//! The end-of-run report: one serializable struct, printed as text and, with `--json`, as
//! one JSON object on the last line of stdout.
//!
//! Field names carry their unit (`_ms`, `_bytes`, `_secs`, `_per_sec`); a figure that was
//! not measured is `null`, never zero, so a script cannot mistake "unknown" for "free".

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::baseline::BaselineReport;
use super::procfs::Source;
use super::stats::Summary;

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The daemon's QUIC address.
    pub server: String,
    /// Sessions asked for.
    pub sessions_target: u64,
    /// Client endpoints (UDP sockets) the sessions were spread over.
    pub endpoints: u64,
    /// Ramp asked for, new sessions per second.
    pub ramp_per_sec: f64,
    /// Heartbeat interval asked for.
    pub heartbeat_secs: f64,
    /// Status change rate asked for, across all sessions.
    pub changes_per_sec: f64,
    /// Steady-state duration asked for.
    pub duration_secs: f64,
    /// Devices whose first session reached `Welcome`.
    pub sessions_established: u64,
    /// Devices whose first session never did.
    pub sessions_failed: u64,
    /// Sessions that ended before the run did (closed by the server, lost, failed
    /// reconnect).
    pub sessions_lost: u64,
    /// Sessions up when the daemon was measured at the end of the steady state.
    pub sessions_up_at_end: u64,
    /// Time from the first connect to the last first-handshake outcome.
    pub ramp_secs: f64,
    /// Established sessions per second of ramp.
    pub handshakes_per_sec: f64,
    /// Connect to `Welcome`, full handshakes (first sessions).
    pub handshake_full_ms: Summary,
    /// Connect to `Welcome`, resumed handshakes with the `Hello` in 0-RTT (reconnects).
    pub handshake_resumed_ms: Summary,
    /// Reconnections that came back up.
    pub reconnects: u64,
    /// Ping datagrams sent: heartbeats and status-change pings.
    pub pings_sent: u64,
    /// Status changes made.
    pub status_changes_sent: u64,
    /// Status changes the daemon acknowledged on the device channel.
    pub status_changes_acked: u64,
    /// Status changes whose own webhook event arrived.
    pub status_changes_matched: u64,
    /// Status changes superseded by a newer one before delivery (the outbox keeps the
    /// latest state per PUID, by design).
    pub status_changes_coalesced: u64,
    /// Status changes with no webhook by the end of the settle wait.
    pub status_changes_unconfirmed: u64,
    /// From the device handing a change to QUIC to the webhook's arrival at the sink.
    pub status_change_to_webhook_ms: Summary,
    /// Notification probes sent (`POST /v1/notifications`).
    pub notifications_sent: u64,
    /// From the POST to the `accepted` outcome webhook (the device accepts at once).
    pub notification_round_trip_ms: Summary,
    /// Webhook POSTs received.
    pub webhook_deliveries: u64,
    /// Webhook events in them.
    pub webhook_events: u64,
    /// The daemon's resources.
    pub daemon: DaemonReport,
    /// The load generator's own resources (`/proc/self`): it shares the machine with the
    /// daemon, and a figure taken while the generator was saturated says more about it
    /// than about the daemon.
    pub generator: DaemonReport,
    /// The whole machine's CPU (every process together).
    pub machine: MachineReport,
    /// UDP receive-buffer drops (the kernel's per-socket counters): where a handshake
    /// packet or a status ping is lost on loopback, and the usual cause of latency tails of
    /// one retransmission timeout or more.
    pub udp_drops: UdpDrops,
    /// The bare-quinn baseline, with `--baseline`.
    pub baseline: Option<BaselineReport>,
    /// Daemon bytes per session divided by bare-quinn bytes per connection, same run.
    pub density_ratio_to_quinn: Option<f64>,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
}

/// A process's memory and CPU during a run; all `null` when no source had them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DaemonReport {
    /// The PID read, with `--daemon-pid`.
    pub pid: Option<u32>,
    /// Where the figures came from.
    pub source: Option<Source>,
    /// Resident set before the first session, bytes.
    pub rss_start_bytes: Option<u64>,
    /// Resident set at the end of the steady state, bytes.
    pub rss_end_bytes: Option<u64>,
    /// Largest resident set seen (sampled once a second), bytes.
    pub rss_peak_bytes: Option<u64>,
    /// `(end - start) / sessions up at the end`.
    pub rss_per_session_bytes: Option<u64>,
    /// Average CPU during the ramp, percent of one core.
    pub cpu_percent_ramp: Option<f64>,
    /// Average CPU during the steady state, percent of one core.
    pub cpu_percent_steady: Option<f64>,
}

/// The machine the run shared.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MachineReport {
    /// Cores available to the generator.
    pub cores: u64,
    /// Average CPU use of every process during the ramp, percent of one core (so the
    /// ceiling is 100 times `cores`); minus the daemon's and the generator's, what else ran.
    pub cpu_percent_ramp: Option<f64>,
    /// The same during the steady state.
    pub cpu_percent_steady: Option<f64>,
}

/// Receive-buffer drops counted by the kernel; `null` when not readable (a daemon on
/// another host, no `/proc`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct UdpDrops {
    /// At the daemon's socket during the ramp and the steady state.
    pub daemon_socket: Option<u64>,
    /// At the daemon's socket while the sessions closed.
    pub daemon_socket_at_close: Option<u64>,
    /// At the generator's sockets over the whole run.
    pub generator_sockets: Option<u64>,
}

fn ms(summary: &Summary) -> String {
    let show = |value: Option<f64>| value.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    format!(
        "p50 {} ms, p99 {} ms, max {} ms (n={})",
        show(summary.p50_ms),
        show(summary.p99_ms),
        show(summary.max_ms),
        summary.count
    )
}

fn bytes(value: Option<u64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |b| format!("{:.1} MiB", b as f64 / 1_048_576.0))
}

fn per(value: Option<u64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |b| format!("{b} B ({:.1} KiB)", b as f64 / 1024.0))
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "presence-load against {}", self.server)?;
        writeln!(
            f,
            "  sessions     {} established, {} failed, {} lost, {} up at end (of {}, {} endpoints)",
            self.sessions_established,
            self.sessions_failed,
            self.sessions_lost,
            self.sessions_up_at_end,
            self.sessions_target,
            self.endpoints
        )?;
        writeln!(f, "  ramp         {:.1} s, {:.0} handshakes/s", self.ramp_secs, self.handshakes_per_sec)?;
        writeln!(f, "  full hs      {}", ms(&self.handshake_full_ms))?;
        writeln!(f, "  resumed hs   {} ({} reconnects)", ms(&self.handshake_resumed_ms), self.reconnects)?;
        writeln!(
            f,
            "  traffic      {} pings, {} status changes ({} acked, {} matched, {} coalesced, {} unconfirmed)",
            self.pings_sent,
            self.status_changes_sent,
            self.status_changes_acked,
            self.status_changes_matched,
            self.status_changes_coalesced,
            self.status_changes_unconfirmed
        )?;
        writeln!(f, "  change->hook  {}", ms(&self.status_change_to_webhook_ms))?;
        writeln!(
            f,
            "  notify rtt   {} ({} sent)",
            ms(&self.notification_round_trip_ms),
            self.notifications_sent
        )?;
        writeln!(f, "  webhooks     {} deliveries, {} events", self.webhook_deliveries, self.webhook_events)?;
        let d = &self.daemon;
        let pct = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1}%"));
        writeln!(
            f,
            "  daemon       rss {} -> {} (peak {}), {} per session; cpu {} ramp, {} steady",
            bytes(d.rss_start_bytes),
            bytes(d.rss_end_bytes),
            bytes(d.rss_peak_bytes),
            per(d.rss_per_session_bytes),
            pct(d.cpu_percent_ramp),
            pct(d.cpu_percent_steady)
        )?;
        let g = &self.generator;
        writeln!(
            f,
            "  generator    rss {}, cpu {} ramp, {} steady",
            bytes(g.rss_end_bytes),
            pct(g.cpu_percent_ramp),
            pct(g.cpu_percent_steady)
        )?;
        let m = &self.machine;
        writeln!(
            f,
            "  machine      {} cores, cpu {} ramp, {} steady (all processes)",
            m.cores,
            pct(m.cpu_percent_ramp),
            pct(m.cpu_percent_steady)
        )?;
        let u = &self.udp_drops;
        let count = |v: Option<u64>| v.map_or_else(|| "n/a".to_owned(), |v| v.to_string());
        writeln!(
            f,
            "  udp drops    daemon socket {} (+{} at close), generator sockets {}",
            count(u.daemon_socket),
            count(u.daemon_socket_at_close),
            count(u.generator_sockets)
        )?;
        if let Some(b) = &self.baseline {
            writeln!(
                f,
                "  bare quinn   {} of {} connections, rss {} -> {}, {} per connection",
                b.established,
                b.connections,
                bytes(Some(b.rss_start_bytes)),
                bytes(Some(b.rss_end_bytes)),
                per(b.rss_per_connection_bytes)
            )?;
        }
        if let Some(ratio) = self.density_ratio_to_quinn {
            writeln!(f, "  density      {ratio:.2}x bare quinn per session")?;
        }
        if self.errors.is_empty() {
            writeln!(f, "  errors       none")?;
        } else {
            let list: Vec<String> = self.errors.iter().map(|(kind, n)| format!("{kind}={n}")).collect();
            writeln!(f, "  errors       {}", list.join(", "))?;
        }
        Ok(())
    }
}
