//! Fan-out throughput: presence events through the daemon's real webhook path into a real
//! HTTPS receiver on loopback, counted and timed at the receiver.
//!
//! What one run builds, in one process (the `presence-fanout` binary):
//!
//! - a dev data directory (certificate, PUID secret) and the daemon's real store in it (the
//!   redb file holding `apps` registered AppServices whose webhooks all go to the receiver,
//!   and the outbox's log beside it);
//! - the daemon's own [`Fanout`] (group-committed durable outbox, one delivery task per
//!   app, batching, Standard Webhooks signing, the pooled HTTPS client) behind the daemon's
//!   [`Outbound`], which turns each [`PresenceEvent`] into its JSON: exactly what the
//!   presence table's sink does in `presenced serve`;
//! - the load generator's webhook [`Sink`]: HTTPS on loopback with the dev certificate,
//!   every POST's signature verified, its events counted, `200` at once.
//!
//! Then one publisher thread hands `events` presence changes, spread round-robin over the
//! apps and over `puids` PUIDs per app, to the fan-out as fast as it takes them (or at
//! `rate` per second), and the run waits until the receiver has counted every event that can
//! arrive. When `puids × apps` is smaller than `events` the outbox coalesces changes of one
//! PUID by design (presence is state), so fewer events arrive than were published; the
//! report gives both.
//!
//! The three parts run on their own threads (`publisher`, the `fanout` runtime with its
//! blocking pool, the `receiver` runtime), and their CPU time is read per thread from
//! `/proc/self/task`, so the report says what the fan-out itself cost apart from the
//! receiver and the publisher that share the machine with it. All the apps share one
//! webhook secret, so that the one receiver verifies every delivery.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use presence_protocol::{AppId, Status};
use presenced::settings::SettingsLayer;
use presenced::testing::apps::Apps;
use presenced::testing::metrics::Metrics;
use presenced::testing::outbound::Outbound;
use presenced::testing::store::embedded::EmbeddedStore;
use presenced::testing::store::memory::MemoryStore;
use presenced::testing::store::{AppRecord, AppStore, Outbox};
use presenced::testing::table::{PresenceEvent, PresenceSink};
use presenced::testing::webhook::guard::UrlPolicy;
use presenced::testing::webhook::{Fanout, FanoutConfig, WebhookSecret};
use serde::Serialize;

use crate::load::LoadError;
use crate::load::procfs::cpu_ticks;
use crate::load::sink::{Sink, SinkState};
use crate::load::stats::Errors;
use crate::load::tracker::Tracker;

/// Thread-name prefixes (and so `/proc/self/task/*/comm`) of the three parts.
const PUBLISHER: &str = "publisher";
const FANOUT: &str = "fanout";
const RECEIVER: &str = "receiver";

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FanoutBenchError {
    /// A setting is out of range.
    #[error("invalid settings: {0}")]
    Config(&'static str),
    /// Something the run needs could not be set up.
    #[error("cannot set up {what}: {detail}")]
    Setup {
        /// What failed.
        what: &'static str,
        /// The error, as text.
        detail: String,
    },
    /// The webhook receiver could not start.
    #[error(transparent)]
    Receiver(#[from] LoadError),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct FanoutRun {
    /// Presence changes published.
    pub events: u64,
    /// Distinct PUIDs per app.
    pub puids: u64,
    /// Registered apps (each with its own delivery task and outbox).
    pub apps: u64,
    /// Changes per second to publish at; `None` publishes as fast as `publish` returns.
    pub rate: Option<f64>,
    /// The fan-out's batch window (the daemon's `--webhook-window`).
    pub batch_window: Duration,
    /// Most events per POST (the daemon's `--webhook-max-events`).
    pub max_events: usize,
    /// Most batches of one app in flight (the daemon's `--webhook-in-flight`).
    pub max_in_flight: usize,
    /// Give up waiting for deliveries after this long.
    pub timeout: Duration,
    /// Worker threads of the fan-out's runtime.
    pub fanout_threads: usize,
    /// Worker threads of the receiver's runtime.
    pub receiver_threads: usize,
    /// Where the outbox lives.
    pub store: StoreKind,
    /// How often the store's size on disk is sampled (the report's `disk_curve`).
    pub sample_every: Duration,
}

/// The outbox behind the fan-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// The daemon's: the redb file in the data directory, and the outbox's log beside it.
    Embedded,
    /// The daemon's [`MemoryStore`], a diagnostic: what the fan-out does without the durable
    /// outbox's cost.
    Memory,
}

impl Default for FanoutRun {
    fn default() -> FanoutRun {
        let defaults = FanoutConfig::default();
        FanoutRun {
            events: 200_000,
            puids: 100_000,
            apps: 4,
            rate: None,
            batch_window: defaults.batch_window,
            max_events: defaults.max_events,
            max_in_flight: defaults.max_in_flight,
            timeout: Duration::from_secs(60),
            fanout_threads: 2,
            receiver_threads: 2,
            store: StoreKind::Embedded,
            sample_every: Duration::from_secs(1),
        }
    }
}

/// CPU time per part, in percent of one core over the run's wall time.
#[derive(Debug, Clone, Serialize)]
pub struct CpuReport {
    /// The thread calling `Outbound::publish` (JSON encoding and the buffer lock).
    pub publisher: f64,
    /// The fan-out's runtime and blocking pool: outbox commits, peeks and acks, batch
    /// encoding, signing, TLS and HTTP on the client side.
    pub fanout: f64,
    /// The receiver: TLS, HTTP, signature check and JSON parsing of every batch.
    pub receiver: f64,
    /// The whole process, all of the above and anything else.
    pub process: f64,
}

/// The result of one run.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    /// Where the outbox lived.
    pub store: StoreKind,
    /// Presence changes published.
    pub published: u64,
    /// Apps, and PUIDs per app.
    pub apps: u64,
    /// PUIDs per app.
    pub puids_per_app: u64,
    /// Events the receiver can get at most: `published`, or one per (app, PUID) when the
    /// outbox coalesces.
    pub expected: u64,
    /// Events the receiver counted.
    pub delivered: u64,
    /// POSTs the receiver counted.
    pub batches: u64,
    /// Seconds the publisher took.
    pub publish_seconds: f64,
    /// Seconds from the first publish to the last event counted.
    pub seconds: f64,
    /// `delivered / seconds`.
    pub events_per_second: f64,
    /// `batches / seconds`.
    pub batches_per_second: f64,
    /// `delivered / batches`.
    pub events_per_batch: f64,
    /// CPU use per part.
    pub cpu_percent: CpuReport,
    /// Bytes the store takes on disk at the end (the redb file and the outbox's files; 0
    /// with the memory store).
    pub store_bytes: u64,
    /// The most it took at any sample.
    pub peak_store_bytes: u64,
    /// Samples through the run, every `sample_every`.
    pub disk_curve: Vec<DiskSample>,
    /// Problems the receiver saw (`webhook_signature`, `webhook_body`); empty when every
    /// delivery verified and parsed.
    pub errors: std::collections::BTreeMap<String, u64>,
    /// True when the receiver counted fewer than `expected` events before the timeout.
    pub timed_out: bool,
}

/// The store's size on disk at one moment of a run.
#[derive(Debug, Clone, Serialize)]
pub struct DiskSample {
    /// Seconds since the first publish.
    pub seconds: f64,
    /// Changes published so far.
    pub published: u64,
    /// Events the receiver counted so far.
    pub delivered: u64,
    /// Bytes the store takes.
    pub bytes: u64,
    /// Entries waiting in the outbox, every app together.
    pub live_entries: u64,
    /// Their event bytes (the JSON, without the log's framing): what the files would
    /// hold if they held only the live data.
    pub live_bytes: u64,
}

/// Bytes under `path`: a file's size, or a directory's files summed (one level down, as
/// the store lays them out).
fn bytes_on_disk(path: &Path) -> u64 {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.metadata().ok())
            .filter(|meta| meta.is_file())
            .map(|meta| meta.len())
            .sum(),
        Ok(meta) => meta.len(),
        Err(_) => 0,
    }
}

/// Runs one measurement in `data_dir` (created if needed; a fresh directory gives a fresh
/// outbox). Builds its own runtimes, so call it from a plain thread, not from async code.
pub fn run(config: &FanoutRun, data_dir: &Path) -> Result<FanoutReport, FanoutBenchError> {
    let setup = |what: &'static str, e: &dyn std::fmt::Display| FanoutBenchError::Setup {
        what,
        detail: e.to_string(),
    };
    if config.events == 0 || config.puids == 0 || config.apps == 0 {
        return Err(FanoutBenchError::Config("events, puids and apps must be at least 1"));
    }
    let settings = SettingsLayer::dev_loopback(data_dir).resolve().map_err(|e| setup("dev settings", &e))?;
    let secrets = presenced::credentials::load(&settings.credentials, &settings.data_dir)
        .map_err(|e| setup("dev credentials", &e))?;
    let receiver_rt = runtime(RECEIVER, config.receiver_threads)?;
    let fanout_rt = runtime(FANOUT, config.fanout_threads)?;

    let errors = Arc::new(Errors::default());
    let state = Arc::new(SinkState::new(Arc::new(Tracker::default()), errors.clone()));
    let sink = receiver_rt.block_on(Sink::start(&data_dir.join("tls"), state.clone()))?;
    let secret = WebhookSecret::generate().to_string();
    state.set_secret(&secret)?;

    let store_path = data_dir.join(presenced::STORE_FILE);
    let (store, outbox): (Arc<dyn AppStore>, Arc<dyn Outbox>) = match config.store {
        StoreKind::Embedded => {
            let store = Arc::new(EmbeddedStore::open(&store_path).map_err(|e| setup("embedded store", &e))?);
            (store.clone(), store)
        }
        StoreKind::Memory => {
            let store = Arc::new(MemoryStore::default());
            (store.clone(), store)
        }
    };
    let app_ids: Vec<AppId> = (0..config.apps)
        .map(|k| AppId::new(format!("app_fanout{k:04}")).map_err(|e| setup("app id", &e)))
        .collect::<Result<_, _>>()?;
    for id in &app_ids {
        let record = AppRecord {
            id: id.as_str().to_owned(),
            name: format!("fan-out bench {id}"),
            webhook_url: sink.url(),
            api_key_sha256: String::new(),
            webhook_secret: secret.clone(),
            created_ms: presenced::clock::Clock::system().unix_ms(),
            disabled: false,
            previous_secret: None,
        };
        store.put_app(&record).map_err(|e| setup("register app", &e))?;
    }
    let apps = Arc::new(
        Apps::load(store.clone(), presenced::clock::Clock::system()).map_err(|e| setup("apps", &e))?,
    );
    let fanout_config = FanoutConfig {
        batch_window: config.batch_window,
        max_events: config.max_events,
        max_in_flight: config.max_in_flight,
        url_policy: Arc::new(UrlPolicy::new(true, &[]).map_err(|e| setup("url policy", &e))?),
        extra_roots: secrets.cert_chain.clone(),
        public_roots: false,
        ..FanoutConfig::default()
    };
    let metrics = Arc::new(Metrics::default());
    let fanout = {
        let _guard = fanout_rt.enter();
        Arc::new(
            Fanout::start(
                outbox.clone(),
                apps.clone(),
                fanout_config,
                metrics,
                presenced::clock::Clock::system(),
            )
            .map_err(|e| setup("fan-out", &e))?,
        )
    };
    let outbound = Arc::new(Outbound::new(apps, fanout.clone(), presenced::clock::Clock::system()));

    let puids: Vec<Vec<presence_protocol::Puid>> = app_ids
        .iter()
        .map(|app| (0..config.puids).map(|u| secrets.puid_key.derive(app, &format!("user-{u}"))).collect())
        .collect();
    let expected = config.events.min(config.apps * config.puids);

    let process_before = process_cpu()?;
    let cpu_before = cpu_by_thread()?;
    let started = Instant::now();
    let progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let publisher = {
        let (outbound, app_ids, config, progress) =
            (outbound.clone(), app_ids.clone(), config.clone(), progress.clone());
        std::thread::Builder::new()
            .name(PUBLISHER.into())
            .spawn(move || publish(&outbound, &app_ids, &puids, &config, &progress))
            .map_err(|e| setup("publisher thread", &e))?
    };
    let outbox_dir = store_path.with_extension("outbox");
    let store_size = || match config.store {
        StoreKind::Embedded => bytes_on_disk(&store_path) + bytes_on_disk(&outbox_dir),
        StoreKind::Memory => 0,
    };
    let mut disk_curve = Vec::new();
    let mut next_sample = started;
    let deadline = started + config.timeout;
    let mut last_count = 0;
    let mut last_change = Instant::now();
    loop {
        let delivered = state.events.get();
        let now = Instant::now();
        if now >= next_sample {
            let live = outbox.stats();
            disk_curve.push(DiskSample {
                seconds: (now.duration_since(started).as_secs_f64() * 100.0).round() / 100.0,
                published: progress.load(std::sync::atomic::Ordering::Relaxed),
                delivered,
                bytes: store_size(),
                live_entries: live.entries,
                live_bytes: live.live_bytes,
            });
            next_sample += config.sample_every;
        }
        if delivered != last_count {
            last_count = delivered;
            last_change = now;
        }
        let published = publisher.is_finished();
        if (published && delivered >= expected) || now >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let (publish_seconds, publisher_ticks) = publisher.join().map_err(|_| setup("publisher", &"panicked"))?;
    let seconds = last_change.duration_since(started).as_secs_f64();
    let cpu_after = cpu_by_thread()?;
    let process_after = process_cpu()?;
    let delivered = state.events.get();
    let batches = state.deliveries.get();

    fanout_rt.block_on(fanout.shutdown(Duration::from_secs(2)));
    receiver_rt.block_on(sink.stop());
    let cpu = |prefix: &str| percent(thread_ticks(&cpu_before, &cpu_after, prefix), seconds);
    let per_second = |n: u64| if seconds > 0.0 { n as f64 / seconds } else { 0.0 };
    Ok(FanoutReport {
        store: config.store,
        published: config.events,
        apps: config.apps,
        puids_per_app: config.puids,
        expected,
        delivered,
        batches,
        publish_seconds,
        seconds,
        events_per_second: per_second(delivered).round(),
        batches_per_second: (per_second(batches) * 10.0).round() / 10.0,
        events_per_batch: if batches > 0 {
            (delivered as f64 / batches as f64 * 10.0).round() / 10.0
        } else {
            0.0
        },
        cpu_percent: CpuReport {
            publisher: percent(publisher_ticks, seconds),
            fanout: cpu(FANOUT),
            receiver: cpu(RECEIVER),
            process: percent(process_after.saturating_sub(process_before), seconds),
        },
        store_bytes: store_size(),
        peak_store_bytes: disk_curve.iter().map(|sample| sample.bytes).max().unwrap_or(0).max(store_size()),
        disk_curve,
        errors: errors.snapshot(),
        timed_out: delivered < expected,
    })
}

/// Publishes the run's events; returns the seconds it took and the CPU ticks it used.
fn publish(
    outbound: &Outbound,
    apps: &[AppId],
    puids: &[Vec<presence_protocol::Puid>],
    config: &FanoutRun,
    progress: &std::sync::atomic::AtomicU64,
) -> (f64, u64) {
    let ticks_before = own_ticks();
    const STATUSES: [Status; 3] = [Status::Online, Status::Away, Status::Unavailable];
    let started = Instant::now();
    // Each event is stamped when it is made, as the table stamps a change: the fan-out
    // counts an app's batch window from its oldest event's `at`.
    let clock = presenced::clock::Clock::system();
    let per_app = apps.len() as u64;
    for i in 0..config.events {
        if let Some(rate) = config.rate {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let app = (i % per_app) as usize;
        let user = ((i / per_app) % config.puids) as usize;
        outbound.publish(&PresenceEvent {
            app_id: apps[app].clone(),
            puid: puids[app][user].clone(),
            status: STATUSES[(i / (per_app * config.puids)) as usize % STATUSES.len()],
            message: String::new(),
            seq: i + 1,
            at_ms: clock.unix_ms(),
        });
        if i % 1024 == 0 {
            progress.store(i, std::sync::atomic::Ordering::Relaxed);
        }
    }
    progress.store(config.events, std::sync::atomic::Ordering::Relaxed);
    (started.elapsed().as_secs_f64(), own_ticks().saturating_sub(ticks_before))
}

/// The calling thread's CPU ticks so far (0 if `/proc` cannot say).
fn own_ticks() -> u64 {
    std::fs::read_to_string("/proc/thread-self/stat").ok().and_then(|stat| cpu_ticks(&stat)).unwrap_or(0)
}

/// The whole process's CPU ticks so far, ended threads included.
fn process_cpu() -> Result<u64, FanoutBenchError> {
    let stat = std::fs::read_to_string("/proc/self/stat")
        .map_err(|e| FanoutBenchError::Setup { what: "/proc/self/stat", detail: e.to_string() })?;
    cpu_ticks(&stat).ok_or(FanoutBenchError::Setup { what: "/proc/self/stat", detail: "unreadable".into() })
}

fn runtime(name: &str, threads: usize) -> Result<tokio::runtime::Runtime, FanoutBenchError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(|e| FanoutBenchError::Setup { what: "tokio runtime", detail: e.to_string() })
}

/// CPU ticks (user + system) per thread of this process: (thread id, name, ticks).
fn cpu_by_thread() -> Result<Vec<(u64, String, u64)>, FanoutBenchError> {
    let io = |e: std::io::Error| FanoutBenchError::Setup { what: "/proc/self/task", detail: e.to_string() };
    let mut threads = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").map_err(io)? {
        let path = entry.map_err(io)?.path();
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else { continue };
        let Some((head, _)) = stat.rsplit_once(')') else { continue };
        let name = head.split_once('(').map_or("", |(_, n)| n).to_owned();
        let tid = head.split_whitespace().next().and_then(|t| t.parse().ok()).unwrap_or(0);
        threads.push((tid, name, cpu_ticks(&stat).unwrap_or(0)));
    }
    Ok(threads)
}

/// Ticks used between two readings by the threads whose name starts with `prefix`
/// (threads that ended in between are not counted).
fn thread_ticks(before: &[(u64, String, u64)], after: &[(u64, String, u64)], prefix: &str) -> u64 {
    after
        .iter()
        .filter(|(_, name, _)| name.starts_with(prefix))
        .map(|(tid, _, now)| {
            let then = before.iter().find(|(t, _, _)| t == tid).map_or(0, |(_, _, ticks)| *ticks);
            now.saturating_sub(then)
        })
        .sum()
}

/// `ticks` over `seconds` of wall time, in percent of one core (one decimal).
fn percent(ticks: u64, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        return 0.0;
    }
    (ticks as f64 / crate::load::procfs::USER_HZ / seconds * 1_000.0).round() / 10.0
}
