//! `presence-load`: many simulated devices against one daemon, and what it costs.
//!
//! Engineers choose a presence system by how many sessions one machine holds, what keeping
//! them costs, and how fast a change reaches the application. This module measures those
//! against a running dev daemon (`presenced serve --dev`), end to end and through the
//! daemon's public surfaces only: QUIC for the devices, the admin and AppService APIs, and
//! webhooks into a receiver of its own.
//!
//! ## One run
//!
//! 1. [`setup`]: read `dev.json` and the dev token key from the data directory, start the
//!    HTTPS webhook [`sink`], and register an app whose webhooks go to it.
//! 2. Ramp: start `sessions` simulated [`device`]s at `ramp` per second, at most
//!    `inflight` handshakes at a time, spread over `endpoints` client endpoints (one UDP
//!    socket each). Each device connects with a full handshake, authorizes the app (the
//!    answer carries its PUID) and then heartbeats at the interval asked for.
//! 3. Steady state for `duration`: random status changes at `changes` per second across
//!    all devices, matched to their webhook events by the [`tracker`]; a notification
//!    probe every `notify_every` to a random device, which accepts it; a few devices
//!    reconnect (resumed handshakes, `Hello` in 0-RTT) at `reconnects` per second.
//! 4. The daemon's RSS and CPU are read from `/proc/PID` ([`procfs`]) at the start, after
//!    the ramp and at the end of the steady state; then changes stop, the tool waits
//!    (bounded) for their webhooks, closes every session and removes its app.
//! 5. With a baseline plan, the same number of connections go to a bare quinn server in a
//!    child process ([`baseline`]), for the density ratio.
//!
//! Every phase is bounded in time and every loop in count: a run ends by itself after the
//! ramp, the duration and a few seconds of settling, whatever the daemon does. The tool
//! refuses non-loopback targets unless told otherwise: it is a load generator, and the
//! only server it should load is the one the operator meant.
//!
//! The [`Report`] is one serializable struct ([`report`]).
//!
//! `presence-load flood` ([`flood`]) is the other mode: junk QUIC Initials and garbage
//! datagrams at the daemon's port, bounded in time and packets, to show that live
//! sessions keep their presence through it (`benches/tests/flood.rs`).

pub mod baseline;
pub mod device;
pub mod flood;
pub mod procfs;
pub mod report;
pub mod setup;
pub mod sink;
pub mod stats;
pub mod tracker;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use presence_protocol::AppId;
use presence_protocol::limits::{MAX_HEARTBEAT, MIN_HEARTBEAT};
use tokio::sync::{Semaphore, watch};

pub use report::Report;

use self::baseline::BaselinePlan;
use self::device::{DeviceCounters, Fleet};
use self::procfs::{DaemonProbe, ProcSample};
use self::report::{DaemonReport, MachineReport, UdpDrops};
use self::setup::{App, ClientConfigs, DevSetup};
use self::sink::{Sink, SinkState};
use self::stats::{Errors, Latencies};
use self::tracker::Tracker;

/// Default client endpoints (UDP sockets) the sessions are spread over.
pub const DEFAULT_ENDPOINTS: usize = 4;
/// Default most handshakes in flight; below the daemon's default Retry threshold (256), so
/// a fast ramp measures handshakes rather than address validation.
pub const DEFAULT_INFLIGHT: usize = 200;
/// Default reconnects per second across all sessions (resumed-handshake samples).
pub const DEFAULT_RECONNECTS: f64 = 1.0;
/// Default interval between notification probes.
pub const DEFAULT_NOTIFY_EVERY: Duration = Duration::from_secs(2);
/// Time to live of notification probes.
pub const PROBE_TTL: Duration = Duration::from_secs(10);
/// Most sessions one run may ask for.
pub const MAX_SESSIONS: usize = 1_000_000;
/// Most client endpoints.
pub const MAX_ENDPOINTS: usize = 256;
/// Longest steady state.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3_600);
/// Highest status change rate.
pub const MAX_CHANGES: f64 = 1_000_000.0;
/// After the steady state: longest wait for the last changes' webhooks and the last
/// notification outcomes.
pub const SETTLE_BOUND: Duration = Duration::from_secs(5);
/// Sessions closed per second after the stop signal. A burst of closes overflows the
/// daemon's socket buffer (its connections then linger until the idle timeout); 2,000 per
/// second showed no drops here where 10,000 in 0.1 s lost half of them.
pub const CLOSE_RATE: f64 = 2_000.0;
/// Longest spread of the closes, whatever the session count.
pub const CLOSE_SPREAD_MAX: Duration = Duration::from_secs(60);
/// Wait for every session to close, beyond the spread of the closes.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// The ramp is given up on (remaining devices counted as `not_started`) after three times
/// its planned length plus the time this many handshakes per second would need: slower
/// than that, the run measures a broken setup, not the daemon.
pub const MIN_HANDSHAKE_RATE: f64 = 200.0;
/// Slices of the ramp and steady loops; progress is redrawn and RSS sampled once a second.
const TICK: Duration = Duration::from_millis(100);
/// Notification targets tried per probe before the probe is skipped.
const PROBE_TRIES: usize = 32;

/// What a run does. [`LoadConfig::new`] fills in the defaults; the fields are public so a
/// caller changes what it needs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LoadConfig {
    /// The daemon's QUIC address.
    pub server: SocketAddr,
    /// PEM file the devices trust for QUIC.
    pub ca: PathBuf,
    /// The dev daemon's data directory (`dev.json`, `token-signing.pk8`, `tls/`).
    pub data_dir: PathBuf,
    /// Simulated devices.
    pub sessions: usize,
    /// New sessions per second.
    pub ramp: f64,
    /// Heartbeat interval the devices ask for.
    pub heartbeat: Duration,
    /// Status changes per second across all sessions.
    pub changes: f64,
    /// Steady state after the ramp.
    pub duration: Duration,
    /// Client endpoints.
    pub endpoints: usize,
    /// Most handshakes in flight.
    pub inflight: usize,
    /// Reconnects per second across all sessions (0: none).
    pub reconnects: f64,
    /// Interval between notification probes (`None`: no probes).
    pub notify_every: Option<Duration>,
    /// The daemon's PID, for `/proc` figures.
    pub daemon_pid: Option<u32>,
    /// Run the bare-quinn baseline by starting this executable as its server.
    pub baseline_exe: Option<PathBuf>,
    /// Allow a server that is not on loopback.
    pub allow_remote: bool,
    /// Draw a progress line on stderr when it is a terminal.
    pub progress: bool,
}

impl LoadConfig {
    /// A run against `server` with the dev credentials in `data_dir`: 1,000 sessions at 500
    /// per second, 30 s heartbeats, 10 changes per second, 10 s of steady state.
    pub fn new(server: SocketAddr, ca: PathBuf, data_dir: PathBuf) -> LoadConfig {
        LoadConfig {
            server,
            ca,
            data_dir,
            sessions: 1_000,
            ramp: 500.0,
            heartbeat: Duration::from_secs(30),
            changes: 10.0,
            duration: Duration::from_secs(10),
            endpoints: DEFAULT_ENDPOINTS,
            inflight: DEFAULT_INFLIGHT,
            reconnects: DEFAULT_RECONNECTS,
            notify_every: Some(DEFAULT_NOTIFY_EVERY),
            daemon_pid: None,
            baseline_exe: None,
            allow_remote: false,
            progress: false,
        }
    }

    /// Checks every setting and reports every problem at once.
    pub fn validate(&self) -> Result<(), LoadError> {
        let mut problems = Vec::new();
        if !(1..=MAX_SESSIONS).contains(&self.sessions) {
            problems.push(format!("sessions must be 1 to {MAX_SESSIONS}"));
        }
        if !(self.ramp.is_finite() && self.ramp > 0.0) {
            problems.push("ramp must be a positive number of sessions per second".into());
        }
        if !(MIN_HEARTBEAT..=MAX_HEARTBEAT).contains(&self.heartbeat) {
            problems.push(format!(
                "heartbeat must be {} to {} s (the protocol's range)",
                MIN_HEARTBEAT.as_secs(),
                MAX_HEARTBEAT.as_secs()
            ));
        }
        if !(self.changes.is_finite() && (0.0..=MAX_CHANGES).contains(&self.changes)) {
            problems.push(format!("changes must be 0 to {MAX_CHANGES} per second"));
        }
        if !(self.reconnects.is_finite() && (0.0..=MAX_CHANGES).contains(&self.reconnects)) {
            problems.push(format!("reconnects must be 0 to {MAX_CHANGES} per second"));
        }
        if self.duration > MAX_DURATION {
            problems.push(format!("duration must be at most {} s", MAX_DURATION.as_secs()));
        }
        if !(1..=MAX_ENDPOINTS).contains(&self.endpoints) {
            problems.push(format!("endpoints must be 1 to {MAX_ENDPOINTS}"));
        }
        if !(1..=MAX_SESSIONS).contains(&self.inflight) {
            problems.push("inflight must be at least 1".into());
        }
        if self.notify_every.is_some_and(|every| every < Duration::from_millis(100)) {
            problems.push("notification probes must be at least 100 ms apart".into());
        }
        if !self.allow_remote && !self.server.ip().is_loopback() {
            problems.push(format!(
                "{} is not a loopback address; pass --allow-remote to load another host",
                self.server
            ));
        }
        if problems.is_empty() { Ok(()) } else { Err(LoadError::Config(problems)) }
    }

    /// How long the closes at the end are spread over.
    fn close_spread(&self) -> Duration {
        Duration::from_secs_f64(self.sessions as f64 / CLOSE_RATE).min(CLOSE_SPREAD_MAX)
    }

    /// The ramp's expected length.
    fn ramp_time(&self) -> Duration {
        Duration::from_secs_f64(self.sessions as f64 / self.ramp)
    }
}

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Settings out of range (every problem is listed).
    #[error("invalid settings: {}", .0.join("; "))]
    Config(Vec<String>),
    /// A target is not on loopback and `allow_remote` is off.
    #[error("{target} is not a loopback address; pass --allow-remote to load another host")]
    NotLoopback {
        /// What was refused.
        target: String,
    },
    /// The data directory lacks the dev daemon's files.
    #[error("dev credentials in {}: {detail}", dir.display())]
    Credentials {
        /// The data directory.
        dir: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A TLS configuration could not be built.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// A socket could not be bound.
    #[error("cannot bind the {what}: {source}")]
    Bind {
        /// Which socket.
        what: &'static str,
        /// The system's answer.
        #[source]
        source: std::io::Error,
    },
    /// The admin API refused or failed.
    #[error("admin API: {0}")]
    Admin(String),
    /// The bare-quinn baseline failed.
    #[error("baseline: {0}")]
    Baseline(String),
}

/// Runs one load test and returns its report. Bounded in time: at most about three times
/// the ramp, plus the duration, [`SETTLE_BOUND`], the spread of the closes and
/// [`STOP_GRACE`] (and the baseline's ramp).
pub async fn run(config: LoadConfig) -> Result<Report, LoadError> {
    config.validate()?;
    let dev = DevSetup::load(&config.data_dir, &config.ca)?;
    if !config.allow_remote && !setup::url_is_loopback(&dev.info.https) {
        return Err(LoadError::NotLoopback { target: dev.info.https.clone() });
    }
    let tracker = Arc::new(Tracker::default());
    let errors = Arc::new(Errors::default());
    let sink_state = Arc::new(SinkState::new(tracker.clone(), errors.clone()));
    let sink = Sink::start(&dev.tls_dir, sink_state.clone()).await?;
    let run_id = format!("{:08x}", fastrand::u32(..));
    let app = match setup::register_app(&dev, &format!("presence-load {run_id}"), &sink.url()).await {
        Ok(app) => app,
        Err(error) => {
            sink.stop().await;
            return Err(error);
        }
    };
    let result = match sink_state.set_secret(&app.secret) {
        Ok(()) => {
            let context =
                Context { config: &config, dev: &dev, app: &app, run_id, tracker, errors, sink: &sink_state };
            context.load().await
        }
        Err(error) => Err(error),
    };
    let removed = setup::remove_app(&dev, &app.id).await;
    sink.stop().await;
    let mut report = result?;
    if removed.is_err() {
        *report.errors.entry("remove_app".into()).or_default() += 1;
    }
    Ok(report)
}

/// What the phases of one run share.
struct Context<'a> {
    config: &'a LoadConfig,
    dev: &'a DevSetup,
    app: &'a App,
    run_id: String,
    tracker: Arc<Tracker>,
    errors: Arc<Errors>,
    sink: &'a SinkState,
}

impl Context<'_> {
    async fn load(self) -> Result<Report, LoadError> {
        let config = self.config;
        let probe = DaemonProbe::new(config.daemon_pid, self.dev.http.clone(), self.dev.url("/metrics"));
        let own = DaemonProbe::pid(std::process::id());
        let mut daemon = DaemonFigures::default();
        let mut generator = DaemonFigures::default();
        daemon.observe(probe.sample().await, Phase::Start);
        generator.observe(own.sample().await, Phase::Start);
        let tls = ClientConfigs::new(&self.dev.roots)?;
        let app_id =
            AppId::new(self.app.id.as_str()).map_err(|e| LoadError::Admin(format!("app id: {e}")))?;
        let per_session =
            |rate: f64| (rate > 0.0).then(|| Duration::from_secs_f64(config.sessions as f64 / rate));
        let (stop, stop_rx) = watch::channel(false);
        let run_secs = (config.ramp_time() + config.duration).as_secs();
        let fleet = Arc::new(Fleet {
            server: config.server,
            endpoints: setup::endpoints(config.endpoints, config.server)?,
            tls: tls.clone(),
            signer: self.dev.signer.clone(),
            app_id,
            run_id: self.run_id.clone(),
            heartbeat: config.heartbeat,
            change_every: per_session(config.changes),
            reconnect_every: per_session(config.reconnects),
            close_spread: config.close_spread(),
            token_ttl_secs: run_secs,
            changes_on: AtomicBool::new(true),
            stop: stop_rx.clone(),
            tracker: self.tracker.clone(),
            errors: self.errors.clone(),
            counters: DeviceCounters::default(),
            handshake_full: Latencies::default(),
            handshake_resumed: Latencies::default(),
            puids: std::sync::Mutex::new(vec![None; config.sessions]),
            live: AtomicUsize::new(0),
        });
        let generator_ports: Vec<u16> = fleet
            .endpoints
            .iter()
            .filter_map(|endpoint| endpoint.local_addr().ok())
            .map(|a| a.port())
            .collect();
        // The daemon's socket is only visible here when it runs on this machine.
        let daemon_ports: Vec<u16> =
            if config.server.ip().is_loopback() { vec![config.server.port()] } else { Vec::new() };
        let drops = |ports: &[u16]| if ports.is_empty() { None } else { procfs::udp_drops(ports) };
        let (daemon_drops_start, generator_drops_start) = (drops(&daemon_ports), drops(&generator_ports));
        let machine_start = procfs::read_machine_cpu().ok();
        let mut progress = Progress::new(config.progress);
        let began = Instant::now();
        let inflight = Arc::new(Semaphore::new(config.inflight));
        let ramp = tokio::spawn(ramp(fleet.clone(), inflight, config.sessions, config.ramp, stop_rx.clone()));
        let probes = config.notify_every.map(|every| {
            let notifier = Notifier {
                fleet: fleet.clone(),
                http: self.dev.http.clone(),
                url: self.dev.url("/v1/notifications"),
                api_key: self.app.api_key.clone(),
            };
            tokio::spawn(notifier.run(every, stop_rx.clone()))
        });

        // Ramp: until every device's first handshake has an outcome, bounded.
        let ramp_bound = config.ramp_time() * 3
            + Duration::from_secs_f64(config.sessions as f64 / MIN_HANDSHAKE_RATE)
            + device::HANDSHAKE_TIMEOUT * 2;
        let counters = &fleet.counters;
        while counters.established.get() + counters.failed.get() < config.sessions as u64 {
            if began.elapsed() > ramp_bound {
                self.errors.add("ramp_deadline");
                break;
            }
            tokio::time::sleep(TICK).await;
            progress.draw(began, "ramp", &fleet, self.sink);
        }
        let ramp_secs = began.elapsed().as_secs_f64();
        daemon.observe(probe.sample().await, Phase::AfterRamp);
        let machine_after_ramp = procfs::read_machine_cpu().ok();
        generator.observe(own.sample().await, Phase::AfterRamp);

        // Steady state.
        let steady_end = Instant::now() + config.duration;
        let mut next_sample = Instant::now() + Duration::from_secs(1);
        while Instant::now() < steady_end {
            tokio::time::sleep(TICK.min(steady_end.saturating_duration_since(Instant::now()))).await;
            progress.draw(began, "steady", &fleet, self.sink);
            if Instant::now() >= next_sample {
                next_sample += Duration::from_secs(1);
                daemon.observe(probe.sample().await, Phase::Peak);
                generator.observe(own.sample().await, Phase::Peak);
            }
        }
        daemon.observe(probe.sample().await, Phase::End);
        let machine_end = procfs::read_machine_cpu().ok();
        let daemon_drops_end = drops(&daemon_ports);
        generator.observe(own.sample().await, Phase::End);
        let up_at_end = u64::try_from(counters.up.load(Ordering::Relaxed)).unwrap_or(0);

        // Settle: no more changes or probes; wait for the webhooks of those in flight.
        fleet.changes_on.store(false, Ordering::Relaxed);
        let settle_end = Instant::now() + SETTLE_BOUND;
        while (self.tracker.pending() > 0 || self.tracker.probes_outstanding() > 0)
            && Instant::now() < settle_end
        {
            tokio::time::sleep(TICK).await;
            progress.draw(began, "settle", &fleet, self.sink);
        }

        // Stop: close every session, bounded.
        let _ = stop.send(true);
        ramp.abort();
        if let Some(probes) = probes {
            probes.abort();
        }
        let stop_end = Instant::now() + config.close_spread() + STOP_GRACE;
        while fleet.live.load(Ordering::Relaxed) > 0 && Instant::now() < stop_end {
            tokio::time::sleep(TICK).await;
        }
        progress.finish();
        let daemon_drops_closed = drops(&daemon_ports);
        let generator_drops_end = drops(&generator_ports);
        let idle = fleet.endpoints.iter().map(|endpoint| endpoint.wait_idle());
        let _ = tokio::time::timeout(Duration::from_secs(2), wait_all(idle)).await;

        let baseline = match &config.baseline_exe {
            Some(exe) => {
                let plan = BaselinePlan {
                    exe: exe.clone(),
                    data_dir: config.data_dir.clone(),
                    connections: config.sessions,
                    ramp: config.ramp,
                    inflight: config.inflight,
                    endpoints: config.endpoints,
                };
                Some(baseline::measure(&plan, &tls).await?)
            }
            None => None,
        };

        let established = counters.established.get();
        let failed = counters.failed.get();
        let not_started = (config.sessions as u64).saturating_sub(established + failed);
        self.errors.add_n("not_started", not_started);
        let unconfirmed = self.tracker.pending() + self.tracker.overflowed.get();
        self.errors.add_n("status_change_unconfirmed", unconfirmed);
        self.errors.add_n("notification_no_outcome", self.tracker.probes_outstanding());
        let mut daemon_report = daemon.report(config.daemon_pid, up_at_end);
        if daemon_report.source.is_none() {
            daemon_report.pid = config.daemon_pid;
        }
        let density_ratio_to_quinn = match (&daemon_report.rss_per_session_bytes, &baseline) {
            (Some(daemon), Some(b)) => b
                .rss_per_connection_bytes
                .filter(|&quinn| quinn > 0)
                .map(|quinn| ((*daemon as f64 / quinn as f64) * 100.0).round() / 100.0),
            _ => None,
        };
        Ok(Report {
            server: config.server.to_string(),
            sessions_target: config.sessions as u64,
            endpoints: config.endpoints as u64,
            ramp_per_sec: config.ramp,
            heartbeat_secs: config.heartbeat.as_secs_f64(),
            changes_per_sec: config.changes,
            duration_secs: config.duration.as_secs_f64(),
            sessions_established: established,
            sessions_failed: failed,
            sessions_lost: counters.lost.get(),
            sessions_up_at_end: up_at_end,
            ramp_secs: (ramp_secs * 1_000.0).round() / 1_000.0,
            handshakes_per_sec: if ramp_secs > 0.0 { (established as f64 / ramp_secs).round() } else { 0.0 },
            handshake_full_ms: fleet.handshake_full.summary(),
            handshake_resumed_ms: fleet.handshake_resumed.summary(),
            reconnects: counters.reconnects.get(),
            pings_sent: counters.pings_sent.get(),
            status_changes_sent: counters.changes_sent.get(),
            status_changes_acked: counters.changes_acked.get(),
            status_changes_matched: self.tracker.matched.get(),
            status_changes_coalesced: self.tracker.coalesced.get(),
            status_changes_unconfirmed: unconfirmed,
            status_change_to_webhook_ms: self.tracker.change_latency.summary(),
            notifications_sent: self.tracker.probes_sent.get(),
            notification_round_trip_ms: self.tracker.notify_rtt.summary(),
            webhook_deliveries: self.sink.deliveries.get(),
            webhook_events: self.sink.events.get(),
            daemon: daemon_report,
            generator: generator.report(Some(std::process::id()), up_at_end),
            machine: MachineReport {
                cores: std::thread::available_parallelism().map_or(0, |n| n.get() as u64),
                cpu_percent_ramp: between(&machine_start, &machine_after_ramp),
                cpu_percent_steady: between(&machine_after_ramp, &machine_end),
            },
            udp_drops: UdpDrops {
                daemon_socket: delta(daemon_drops_start, daemon_drops_end),
                daemon_socket_at_close: delta(daemon_drops_end, daemon_drops_closed),
                generator_sockets: delta(generator_drops_start, generator_drops_end),
            },
            baseline,
            density_ratio_to_quinn,
            errors: self.errors.snapshot(),
        })
    }
}

/// Machine CPU between two readings, percent of one core.
fn between(a: &Option<procfs::MachineCpu>, b: &Option<procfs::MachineCpu>) -> Option<f64> {
    a.as_ref().zip(b.as_ref()).and_then(|(a, b)| a.cpu_percent_until(b))
}

/// The growth of a counter between two readings.
fn delta(before: Option<u64>, after: Option<u64>) -> Option<u64> {
    Some(after?.saturating_sub(before?))
}

/// Resolves once the stop signal is set (or its sender is gone), holding no borrow of the
/// channel afterwards, so a `select!` over it stays `Send`.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Awaits every future in turn (the endpoints' `wait_idle`; the caller bounds the total).
async fn wait_all<F: std::future::Future<Output = ()>>(futures: impl IntoIterator<Item = F>) {
    for future in futures {
        future.await;
    }
}

/// Starts device tasks at `rate` per second, at most `inflight` handshakes at once.
async fn ramp(
    fleet: Arc<Fleet>,
    inflight: Arc<Semaphore>,
    sessions: usize,
    rate: f64,
    mut stop: watch::Receiver<bool>,
) {
    let began = tokio::time::Instant::now();
    for index in 0..sessions {
        let due = began + Duration::from_secs_f64(index as f64 / rate);
        let permit = tokio::select! {
            biased;
            _ = stopped(&mut stop) => return,
            permit = async {
                tokio::time::sleep_until(due).await;
                inflight.clone().acquire_owned().await
            } => permit,
        };
        let Ok(permit) = permit else { return };
        tokio::spawn(device::run(fleet.clone(), index, permit));
    }
}

/// Sends notification probes to random devices.
struct Notifier {
    fleet: Arc<Fleet>,
    http: reqwest::Client,
    url: String,
    api_key: String,
}

impl Notifier {
    async fn run(self, every: Duration, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tick.tick().await;
        loop {
            tokio::select! {
                biased;
                _ = stopped(&mut stop) => return,
                _ = tick.tick() => {}
            }
            if !self.fleet.changes_on.load(Ordering::Relaxed) {
                return;
            }
            if let Some(puid) = self.fleet.random_puid(PROBE_TRIES) {
                self.probe(&puid).await;
            }
        }
    }

    async fn probe(&self, puid: &str) {
        let tracker = &self.fleet.tracker;
        let errors = &self.fleet.errors;
        let body = serde_json::json!({
            "to": [puid],
            "title": "presence-load probe",
            "ttl_ms": PROBE_TTL.as_millis() as u64,
        });
        tracker.probes_sent.inc();
        let started = Instant::now();
        let response = match self.http.post(&self.url).bearer_auth(&self.api_key).json(&body).send().await {
            Ok(response) => response,
            Err(_) => return errors.add("notification_request"),
        };
        let status = response.status();
        if status != reqwest::StatusCode::CREATED {
            return errors.add(format!("notification_http_{}", status.as_u16()));
        }
        let id = response
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|view| view["id"].as_str()?.parse().ok());
        match id {
            Some(id) => tracker.probe_sent(id, started),
            None => errors.add("notification_answer"),
        }
    }
}

/// When a daemon sample was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    AfterRamp,
    Peak,
    End,
}

/// The daemon samples of a run.
#[derive(Debug, Default)]
struct DaemonFigures {
    source: Option<procfs::Source>,
    start: Option<ProcSample>,
    after_ramp: Option<ProcSample>,
    end: Option<ProcSample>,
    peak: Option<u64>,
}

impl DaemonFigures {
    fn observe(&mut self, sample: Option<(ProcSample, procfs::Source)>, phase: Phase) {
        let Some((sample, source)) = sample else { return };
        self.source = Some(source);
        self.peak = Some(self.peak.unwrap_or(0).max(sample.rss_bytes));
        match phase {
            Phase::Start => self.start = Some(sample),
            Phase::AfterRamp => self.after_ramp = Some(sample),
            Phase::Peak => {}
            Phase::End => self.end = Some(sample),
        }
    }

    fn report(&self, pid: Option<u32>, sessions_up: u64) -> DaemonReport {
        let cpu = |a: &Option<ProcSample>, b: &Option<ProcSample>| match (a, b) {
            (Some(a), Some(b)) => a.cpu_percent_until(b),
            _ => None,
        };
        let per_session = match (&self.start, &self.end) {
            (Some(start), Some(end)) if sessions_up > 0 => {
                Some(end.rss_bytes.saturating_sub(start.rss_bytes) / sessions_up)
            }
            _ => None,
        };
        DaemonReport {
            pid,
            source: self.source,
            rss_start_bytes: self.start.map(|s| s.rss_bytes),
            rss_end_bytes: self.end.map(|s| s.rss_bytes),
            rss_peak_bytes: self.peak,
            rss_per_session_bytes: per_session,
            cpu_percent_ramp: cpu(&self.start, &self.after_ramp),
            cpu_percent_steady: cpu(&self.after_ramp, &self.end),
        }
    }
}

/// The progress line: plain text on stderr, redrawn in place with `\r` once a second, only
/// when stderr is a terminal (a log file gets no progress noise, just the report).
struct Progress {
    enabled: bool,
    last: Option<Instant>,
    width: usize,
}

impl Progress {
    fn new(wanted: bool) -> Progress {
        Progress { enabled: wanted && std::io::stderr().is_terminal(), last: None, width: 0 }
    }

    fn draw(&mut self, began: Instant, phase: &str, fleet: &Fleet, sink: &SinkState) {
        if !self.enabled || self.last.is_some_and(|last| last.elapsed() < Duration::from_secs(1)) {
            return;
        }
        self.last = Some(Instant::now());
        let c = &fleet.counters;
        let latency = fleet.tracker.change_latency.summary();
        let p99 = latency.p99_ms.map_or_else(|| "-".to_owned(), |p| format!("{p:.0}"));
        let line = format!(
            "[{:>6.1}s] {phase:<6} up {} / {} (failed {}) | pings {} | changes {} -> hooks {} (p99 {p99} ms) | webhooks {} | errors {}",
            began.elapsed().as_secs_f64(),
            c.up.load(Ordering::Relaxed),
            fleet.puids.lock().map_or(0, |p| p.len()),
            c.failed.get(),
            c.pings_sent.get(),
            c.changes_sent.get(),
            fleet.tracker.matched.get(),
            sink.deliveries.get(),
            fleet.errors.total(),
        );
        let pad = self.width.saturating_sub(line.chars().count());
        self.width = line.chars().count();
        let mut stderr = std::io::stderr().lock();
        let _ = write!(stderr, "\r{line}{}", " ".repeat(pad));
        let _ = stderr.flush();
    }

    fn finish(&mut self) {
        if self.enabled && self.last.is_some() {
            let _ = writeln!(std::io::stderr());
        }
    }
}
