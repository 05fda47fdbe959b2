//! The delivery engine: events handed to the [`Outbox`] (which owns their durability and
//! group commit), then one delivery task per app that batches, signs, POSTs and retries.
//! See the [module docs](super) for the design.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use rustls::pki_types::CertificateDer;
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::guard::{GuardedResolver, UrlPolicy};
use super::log::{Attempt, AttemptResult, DEFAULT_DELIVERY_LOG_SIZE, DeliveryLog};
use super::secret::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, Signer, WebhookSecret};
use crate::apps::Apps;
use crate::clock::Clock;
use crate::metrics::{AppLabel, Metrics, ResultLabel};
use crate::outbound::OutboxKey;
use crate::store::{Commit, CommitListener, Outbox, OutboxEntry, OutboxEvent};

/// How long the first waiting event of an app waits for company before its batch goes.
pub(crate) const DEFAULT_BATCH_WINDOW: Duration = Duration::from_millis(250);
/// Most events in one POST.
pub(crate) const DEFAULT_MAX_EVENTS: usize = 1_000;
/// Most bytes in one POST body (256 KiB).
pub(crate) const DEFAULT_MAX_BYTES: usize = 256 * 1024;
/// Most batches of one app in flight at once (where order allows, see [`Flights`]).
pub(crate) const DEFAULT_MAX_IN_FLIGHT: usize = 4;
/// Bound on one POST, connecting included; a receiver slower than this is a failure.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// First retry delay; it doubles per consecutive failure.
pub(crate) const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub(crate) const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(5 * 60);
/// Longest `Retry-After` obeyed; a larger one (or a date far ahead) is cut to this, so a
/// misconfigured receiver cannot park its app for days.
pub(crate) const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(60 * 60);
/// How long an idle pooled connection to a receiver is kept.
pub(crate) const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// The `User-Agent` of webhook requests.
pub(crate) const USER_AGENT: &str = concat!("presenced/", env!("CARGO_PKG_VERSION"), " (webhooks)");
/// Response bytes read (and discarded) so an HTTP/1.1 connection can go back to the pool.
const MAX_RESPONSE_DRAIN: usize = 64 * 1024;

/// The fan-out's settings. Every field has a documented default ([`FanoutConfig::default`]).
#[derive(Debug, Clone)]
pub struct FanoutConfig {
    /// How long the first waiting event waits for others before its batch goes
    /// [default: [`DEFAULT_BATCH_WINDOW`]]. A full batch goes at once.
    pub batch_window: Duration,
    /// Most events per POST [default: [`DEFAULT_MAX_EVENTS`]].
    pub max_events: usize,
    /// Most bytes per POST body [default: [`DEFAULT_MAX_BYTES`]]; a single event larger
    /// than this still goes, alone.
    pub max_bytes: usize,
    /// Most batches of one app in flight at once [default: [`DEFAULT_MAX_IN_FLIGHT`]]; 1
    /// sends one batch at a time, in order.
    pub max_in_flight: usize,
    /// Bound on one POST [default: [`DEFAULT_REQUEST_TIMEOUT`]].
    pub request_timeout: Duration,
    /// First retry delay [default: [`DEFAULT_BACKOFF_INITIAL`]].
    pub backoff_initial: Duration,
    /// Longest retry delay [default: [`DEFAULT_BACKOFF_MAX`]].
    pub backoff_max: Duration,
    /// Longest `Retry-After` obeyed [default: [`DEFAULT_MAX_RETRY_AFTER`]].
    pub max_retry_after: Duration,
    /// Where webhooks may go [default: https to public addresses only].
    pub url_policy: Arc<UrlPolicy>,
    /// Certificates trusted as roots besides the public ones: the dev CA, a test receiver's
    /// self-signed certificate, an operator's private CA [default: none].
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Trust Mozilla's public roots (compiled in from `webpki-roots`, so the daemon behaves
    /// the same in a minimal container without a CA bundle) [default: true].
    pub public_roots: bool,
    /// How long an idle pooled connection is kept [default: [`DEFAULT_POOL_IDLE_TIMEOUT`]].
    pub pool_idle_timeout: Duration,
    /// Attempts kept per app in the delivery log ([`super::log`]) [default:
    /// [`DEFAULT_DELIVERY_LOG_SIZE`]]; 0 keeps none.
    pub delivery_log_size: usize,
}

impl Default for FanoutConfig {
    fn default() -> FanoutConfig {
        FanoutConfig {
            batch_window: DEFAULT_BATCH_WINDOW,
            max_events: DEFAULT_MAX_EVENTS,
            max_bytes: DEFAULT_MAX_BYTES,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            backoff_initial: DEFAULT_BACKOFF_INITIAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            url_policy: Arc::new(UrlPolicy::default()),
            extra_roots: Vec::new(),
            public_roots: true,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            delivery_log_size: DEFAULT_DELIVERY_LOG_SIZE,
        }
    }
}

/// Why the fan-out could not start.
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    /// A setting is out of range.
    #[error("invalid fan-out setting: {0}")]
    Config(&'static str),
    /// A certificate in `extra_roots` is not a usable trust anchor.
    #[error("invalid webhook root certificate")]
    InvalidRoot(#[source] rustls::Error),
    /// No root is trusted at all (`public_roots` off and no `extra_roots`), so no delivery
    /// could ever succeed.
    #[error("no webhook root certificates: enable public_roots or give extra_roots")]
    NoRoots,
    /// The TLS configuration could not be built (no protocol version the provider offers).
    #[error("cannot configure webhook TLS")]
    Tls(#[source] rustls::Error),
    /// The HTTP client could not be built.
    #[error("cannot build the webhook client")]
    Client(#[source] reqwest::Error),
}

/// The webhook fan-out. Cheap to share behind an `Arc`; see the [module docs](super).
pub struct Fanout {
    inner: Arc<Inner>,
}

impl fmt::Debug for Fanout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fanout").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

struct Inner {
    /// Itself, for the outbox's commit reports ([`CommitListener`]), which wake tasks.
    me: Weak<Inner>,
    outbox: Arc<dyn Outbox>,
    /// The registered apps: a delivery task reads its app from here, and a 410 disables it
    /// through here, so the cache stays what is stored.
    apps: Arc<Apps>,
    config: FanoutConfig,
    metrics: Arc<Metrics>,
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
    clock: Clock,
    /// One delivery task per app that has been seen.
    tasks: Mutex<HashMap<String, AppTask>>,
    /// The last attempts of each app, recorded by its delivery task.
    log: DeliveryLog,
    /// How far `shutdown` has gone.
    phase: watch::Sender<Phase>,
}

/// How far a shutdown has gone; each phase follows the one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Delivering as usual.
    Running,
    /// Nothing more is published; what was is being made durable.
    Closing,
    /// Everything published is in the outbox: each delivery task sends what its outbox
    /// holds at once (no batch window, failures retried) and ends when it is empty.
    Draining,
    /// The shutdown bound passed: tasks end at their next wait.
    Stopped,
}

struct AppTask {
    shared: Arc<AppShared>,
    handle: JoinHandle<()>,
}

/// What a stored append tells a delivery task: events are waiting since `since`.
#[derive(Default)]
struct AppShared {
    pending: Mutex<Pending>,
    notify: Notify,
}

#[derive(Default, Clone, Copy)]
struct Pending {
    /// When the oldest event not yet in a batch was published.
    since: Option<Instant>,
    /// Events and bytes published since the last batch was formed (before compaction):
    /// enough of either fills a batch, which then goes without waiting for the window.
    count: usize,
    bytes: usize,
}

impl AppShared {
    /// Records events stored for the task, waking it only when that changes what it waits
    /// for: a first event (its window starts), an earlier start, or a batch just filled.
    /// Under load most commits wake nobody: the task is already timing its window.
    fn note(&self, since: Instant, count: usize, bytes: usize, config: &FanoutConfig) {
        let full = |p: &Pending| p.count >= config.max_events || p.bytes >= config.max_bytes;
        let wake = {
            let mut pending = lock(&self.pending);
            let was = *pending;
            pending.since = Some(was.since.map_or(since, |s| s.min(since)));
            pending.count += count;
            pending.bytes += bytes;
            was.since.is_none_or(|s| since < s) || (!full(&was) && full(&pending))
        };
        if wake {
            self.notify.notify_one();
        }
    }

    fn snapshot(&self) -> Pending {
        *lock(&self.pending)
    }

    fn take(&self) -> Pending {
        std::mem::take(&mut *lock(&self.pending))
    }
}

/// A poisoned lock means a panic elsewhere already; the data (buffers, task handles) is
/// still consistent at every await-free critical section, so carry on with it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How one POST ended.
#[derive(Debug)]
enum Outcome {
    /// 2xx: acknowledge the batch.
    Delivered,
    /// 410: disable the app.
    Gone,
    /// 429, 502, 503, 504: the receiver asks for time; `Retry-After` if it said.
    Throttled(Option<Duration>),
    /// Anything else; `Retry-After` if a 5xx carried one.
    Failed(Option<Duration>),
}

impl Fanout {
    /// Starts the fan-out on the current tokio runtime: a delivery task for every
    /// registered app (apps with undelivered events start delivering at once, which is how
    /// the outbox of a killed daemon drains after a restart).
    ///
    /// Fails only on a configuration that could never deliver (bad roots, zero limits) or
    /// when called outside a tokio runtime.
    pub fn start(
        outbox: Arc<dyn Outbox>,
        apps: Arc<Apps>,
        config: FanoutConfig,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> Result<Fanout, FanoutError> {
        if config.max_events == 0 || config.max_bytes == 0 || config.max_in_flight == 0 {
            return Err(FanoutError::Config(
                "max_events, max_bytes and max_in_flight must be greater than zero",
            ));
        }
        if config.backoff_initial.is_zero() || config.backoff_max < config.backoff_initial {
            return Err(FanoutError::Config("backoff_initial must be positive and at most backoff_max"));
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| FanoutError::Config("Fanout::start must be called inside a tokio runtime"))?;
        let client = build_client(&config)?;
        let (phase, _) = watch::channel(Phase::Running);
        let log = DeliveryLog::new(config.delivery_log_size);
        let inner = Arc::new_cyclic(|me| Inner {
            me: me.clone(),
            outbox,
            apps,
            config,
            metrics,
            clock,
            client,
            runtime,
            tasks: Mutex::new(HashMap::new()),
            log,
            phase,
        });
        // Read before anything is published, so whatever is waiting was left by a previous
        // run (a crash, a restart): it has waited long enough.
        for app in inner.apps.list() {
            let shared = inner.ensure_task(&app.id);
            if inner.outbox.depth(&app.id) > 0 {
                shared.note(inner.long_ago(), 0, 0, &inner.config);
            }
        }
        let listener: Weak<dyn CommitListener> = Arc::downgrade(&inner) as Weak<Inner>;
        inner.outbox.listen(listener);
        Ok(Fanout { inner })
    }

    /// Hands events to an app's outbox and returns at once.
    ///
    /// Their place in the outbox is taken now (the outbox orders appends by call); the
    /// outbox makes them durable with its next group commit, typically a few milliseconds
    /// later, and its report of the commit wakes the app's delivery task. [`flush`](Self::flush) waits for
    /// that. An app that is not registered gets nothing stored. Events published after
    /// [`shutdown`](Self::shutdown) are dropped.
    pub fn publish(&self, app_id: &str, events: Vec<OutboxEvent>) {
        if events.is_empty() || *self.inner.phase.borrow() >= Phase::Closing {
            return;
        }
        // Publishers need not be on the runtime (the bench's is a plain thread); the outbox
        // may need it to start a commit.
        let _runtime = self.inner.runtime.enter();
        self.inner.outbox.append(app_id, events);
    }

    /// Waits until everything published before the call is durable in the outbox. Waits
    /// forever while the store fails; bound it with a timeout.
    pub async fn flush(&self) {
        if let Err(error) = self.inner.outbox.flush().await {
            warn!(%error, "cannot wait for the outbox");
        }
    }

    /// Restarts an app's delivery task after its record changed (added, secret rotated,
    /// URL changed, re-enabled, removed). The new task reads the record afresh; a removed
    /// or disabled app gets no task. An in-flight POST of the old task is abandoned, and
    /// its batch, not yet acknowledged, goes again (at-least-once).
    pub fn app_changed(&self, app_id: &str) {
        self.inner.restart_task(app_id);
    }

    /// Whether the outbox can write (false while a full disk refuses it; from memory).
    pub(crate) fn outbox_writable(&self) -> bool {
        self.inner.outbox.writable()
    }

    /// Brings the outbox's figures in `/metrics` up to date: whether it can write, what it
    /// holds and costs, and per app its depth and how long its oldest event has waited. Read when `/metrics` is
    /// scraped (all from memory), so the figures are current without a cost per event.
    pub(crate) fn refresh_metrics(&self) {
        let inner = &self.inner;
        let stats = inner.outbox.stats();
        let metrics = &inner.metrics;
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        metrics.outbox_entries.set(gauge(stats.entries));
        metrics.outbox_live_bytes.set(gauge(stats.live_bytes));
        metrics.outbox_disk_bytes.set(gauge(stats.disk_bytes));
        let counted = metrics.outbox_compactions.get();
        metrics.outbox_compactions.inc_by(stats.compactions.saturating_sub(counted));
        metrics.outbox_writable.set(i64::from(inner.outbox.writable()));
        let now_ms = inner.clock.unix_ms();
        for app in inner.apps.list() {
            let oldest = self.oldest_waiting_ms(&app.id);
            let age = oldest.map_or(0.0, |at_ms| now_ms.saturating_sub(at_ms) as f64 / 1000.0);
            let label = AppLabel { app: app.id.clone() };
            metrics.outbox_oldest_age.get_or_create(&label).set(age);
            set_depth(metrics, &app.id, inner.outbox.depth(&app.id));
        }
    }

    /// Events waiting in an app's outbox (from memory: cheap).
    pub fn depth(&self, app_id: &str) -> u64 {
        self.inner.outbox.depth(app_id)
    }

    /// The `at` (Unix ms) of the oldest event waiting in an app's outbox, `None` when
    /// nothing waits (or its `at` is unknown: an entry from a daemon older than `at`).
    /// From memory.
    pub(crate) fn oldest_waiting_ms(&self, app_id: &str) -> Option<u64> {
        self.inner.outbox.oldest_at_ms(app_id).filter(|at| *at > 0)
    }

    /// The app's last delivery attempts, newest first (the delivery log, from memory).
    pub(crate) fn deliveries(&self, app_id: &str) -> Vec<Attempt> {
        self.inner.log.recent(app_id)
    }

    /// Stops within `bound`, delivering what it owes first: makes what was published
    /// durable, then every app's task POSTs what its outbox holds at once (no batch window,
    /// failures retried with the usual backoff) and ends when the outbox is empty. At the
    /// bound every task still working ends; what it did not deliver stays in the outbox for
    /// the next start (delivery is at-least-once either way).
    pub async fn shutdown(&self, bound: Duration) {
        let deadline = self.inner.clock.tokio_now() + bound;
        let _ = self.inner.phase.send(Phase::Closing);
        if tokio::time::timeout_at(deadline, self.flush()).await.is_err() {
            warn!("webhook outbox writes did not finish within the shutdown bound");
        }
        // Only now: a task that found its outbox empty before the last write would end
        // without sending it.
        let _ = self.inner.phase.send(Phase::Draining);
        let tasks: Vec<(String, AppTask)> = lock(&self.inner.tasks).drain().collect();
        for (app, mut task) in tasks {
            if tokio::time::timeout_at(deadline, &mut task.handle).await.is_err() {
                let _ = self.inner.phase.send(Phase::Stopped);
                warn!(app, "webhook delivery unfinished at the shutdown bound; the rest waits in the outbox");
                task.handle.abort();
            }
        }
        let _ = self.inner.phase.send(Phase::Stopped);
    }
}

impl Drop for Fanout {
    /// Dropping without [`shutdown`](Fanout::shutdown) is a crash stop for delivery:
    /// tasks are aborted at once and nothing more is published. What the outbox was
    /// already handed is its to write or lose, as with `kill -9`.
    fn drop(&mut self) {
        self.inner.phase.send_replace(Phase::Stopped);
        for (_, task) in lock(&self.inner.tasks).drain() {
            task.handle.abort();
        }
    }
}

/// The rustls client configuration: ring, the configured roots, ALPN offering h2.
fn tls_config(config: &FanoutConfig) -> Result<rustls::ClientConfig, FanoutError> {
    let mut roots = rustls::RootCertStore::empty();
    if config.public_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    for cert in &config.extra_roots {
        roots.add(cert.clone()).map_err(FanoutError::InvalidRoot)?;
    }
    if roots.is_empty() {
        return Err(FanoutError::NoRoots);
    }
    let mut tls =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(FanoutError::Tls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
    // A preconfigured rustls config is used as given, so ALPN is ours to set: HTTP/2 when
    // the receiver speaks it (many batches over one connection), HTTP/1.1 otherwise.
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tls)
}

fn build_client(config: &FanoutConfig) -> Result<reqwest::Client, FanoutError> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config(config)?)
        .dns_resolver(GuardedResolver::new(config.url_policy.clone()))
        // A proxy would resolve names itself, out of the guard's sight.
        .no_proxy()
        // 3xx is a failure: following it could lead anywhere, including past the guard.
        .redirect(reqwest::redirect::Policy::none())
        .https_only(!config.url_policy.allow_http)
        .timeout(config.request_timeout)
        .connect_timeout(config.request_timeout)
        .pool_idle_timeout(config.pool_idle_timeout)
        .user_agent(USER_AGENT)
        .build()
        .map_err(FanoutError::Client)
}

fn set_depth(metrics: &Metrics, app_id: &str, depth: u64) {
    metrics
        .outbox_depth
        .get_or_create(&AppLabel { app: app_id.to_owned() })
        .set(depth.min(i64::MAX as u64) as i64);
}

impl Inner {
    /// Wakes an app's task (starting one if the app has none yet).
    fn wake(self: &Arc<Self>, app_id: &str, since: Instant, count: usize, bytes: usize) {
        let shared = self.ensure_task(app_id);
        shared.note(since, count, bytes, &self.config);
    }

    /// The app's task state, spawning the task if there is none. A finished task (a
    /// disabled app) stays registered, so events for it do not respawn anything. Once the
    /// fan-out stops, nothing is spawned.
    fn ensure_task(self: &Arc<Self>, app_id: &str) -> Arc<AppShared> {
        let mut apps = lock(&self.tasks);
        if let Some(task) = apps.get(app_id) {
            return task.shared.clone();
        }
        if *self.phase.borrow() >= Phase::Closing {
            return Arc::default();
        }
        let task = self.spawn_task(app_id, false);
        let shared = task.shared.clone();
        apps.insert(app_id.to_owned(), task);
        shared
    }

    fn restart_task(self: &Arc<Self>, app_id: &str) {
        if *self.phase.borrow() >= Phase::Closing {
            return;
        }
        let mut apps = lock(&self.tasks);
        if let Some(old) = apps.remove(app_id) {
            old.handle.abort();
        }
        let task = self.spawn_task(app_id, true);
        apps.insert(app_id.to_owned(), task);
    }

    /// Spawns an app's delivery task. With `catch_up`, whatever its outbox holds when the
    /// task starts goes at once (a re-enabled app); otherwise the stored appends' wake-ups
    /// alone decide when batches are due.
    fn spawn_task(self: &Arc<Self>, app_id: &str, catch_up: bool) -> AppTask {
        let shared = Arc::new(AppShared::default());
        let task = deliver_loop(self.clone(), app_id.to_owned(), shared.clone(), catch_up);
        let handle = self.runtime.spawn(task);
        AppTask { shared, handle }
    }

    /// Drops the task entry and the delivery log of an app that no longer exists, if the
    /// entry is still `shared`'s.
    fn forget(&self, app_id: &str, shared: &Arc<AppShared>) {
        let mut apps = lock(&self.tasks);
        if apps.get(app_id).is_some_and(|task| Arc::ptr_eq(&task.shared, shared)) {
            apps.remove(app_id);
            self.log.forget(app_id);
        }
    }

    /// A publish time that makes a batch due at once (one window ago).
    /// The instant of a wall-clock time a moment ago (an event's `at`), for a batch window
    /// counted from the change itself; never further back than one window (a clock step
    /// or an old event only makes its batch due now).
    fn published_at(&self, at_ms: u64) -> Instant {
        let age = Duration::from_millis(self.clock.unix_ms().saturating_sub(at_ms));
        let now = self.clock.tokio_now();
        now.checked_sub(age.min(self.config.batch_window)).unwrap_or(now)
    }

    fn long_ago(&self) -> Instant {
        let now = self.clock.tokio_now();
        now.checked_sub(self.config.batch_window).unwrap_or(now)
    }

    /// Exponential backoff with equal jitter: a delay in `[d/2, d]` where `d` doubles per
    /// attempt up to the maximum, so receivers recovering from an outage are not hit by
    /// every app at the same instant.
    fn backoff(&self, attempt: u32) -> Duration {
        let doubled = self.config.backoff_initial.saturating_mul(1u32 << attempt.min(24));
        let full = doubled.min(self.config.backoff_max);
        let half = full / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// The delay before retrying after `outcome`.
    fn retry_delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            // No earlier than asked; the jittered backoff floor keeps `Retry-After: 0`
            // from turning into a busy loop.
            Some(asked) => asked.min(self.config.max_retry_after).max(self.backoff(0)),
            None => self.backoff(attempt),
        }
    }

    /// The byte budget for events in one body: the limit minus the envelope and commas.
    fn event_budget(&self, app_id: &str) -> usize {
        let envelope = envelope_prefix(app_id).len() + ENVELOPE_SUFFIX.len();
        self.config.max_bytes.saturating_sub(envelope + self.config.max_events)
    }

    /// POSTs one batch; what came of it, for the delivery loop and the delivery log.
    async fn send(&self, app_id: &str, url: &Url, signer: &Signer, batch: &[OutboxEntry]) -> Sent {
        let id = message_id(app_id, batch);
        let mut sent = Sent {
            outcome: Outcome::Failed(None),
            at_ms: self.clock.unix_ms(),
            id,
            status: None,
            error: None,
            latency: Duration::ZERO,
        };
        let started = self.clock.tokio_now();
        let outcome = self.post(app_id, url, signer, batch, &mut sent).await;
        sent.outcome = outcome;
        sent.latency = self.clock.tokio_now().saturating_duration_since(started);
        sent
    }

    /// The POST itself: sets the status or the error in `sent`, returns the outcome.
    async fn post(
        &self,
        app_id: &str,
        url: &Url,
        signer: &Signer,
        batch: &[OutboxEntry],
        sent: &mut Sent,
    ) -> Outcome {
        if let Err(error) = self.config.url_policy.check_target(url) {
            warn!(app = app_id, endpoint = %super::guard::origin(url), %error, "webhook URL refused");
            sent.error = Some(format!("the webhook URL was refused: {}", error_chain(&error)));
            return Outcome::Failed(None);
        }
        let body = batch_body(app_id, batch);
        let id = sent.id.as_str();
        let timestamp = self.clock.unix_secs();
        // Checked per attempt: a previous secret whose overlap ended is never sent.
        let signature = signer.header(id, timestamp, &body, self.clock.unix_ms());
        let request = self
            .client
            .post(url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(HEADER_ID, id)
            .header(HEADER_TIMESTAMP, timestamp.to_string())
            .header(HEADER_SIGNATURE, signature)
            .body(body);
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                // The app's own URL may carry a token (userinfo, path, query): neither log
                // shows more of it than scheme, host and port.
                let reason = error_chain(&error.without_url());
                warn!(app = app_id, endpoint = %super::guard::origin(url), error = %reason, "webhook delivery failed");
                sent.error = Some(reason);
                return Outcome::Failed(None);
            }
        };
        let status = response.status();
        sent.status = Some(status.as_u16());
        let retry_after = parse_retry_after(response.headers(), self.clock.system_time());
        // Read a little of the answer so the connection can be reused, then let go.
        let mut drained = 0;
        while drained < MAX_RESPONSE_DRAIN {
            match response.chunk().await {
                Ok(Some(chunk)) => drained += chunk.len(),
                _ => break,
            }
        }
        let outcome = classify(status, retry_after);
        if !matches!(outcome, Outcome::Delivered) {
            warn!(app = app_id, %status, id, "webhook not accepted");
        }
        outcome
    }
}

/// One POST as [`Inner::send`] saw it.
struct Sent {
    outcome: Outcome,
    /// When it started, Unix ms.
    at_ms: u64,
    /// Its `webhook-id`.
    id: String,
    status: Option<u16>,
    error: Option<String>,
    latency: Duration,
}

/// Maps a status to what the fan-out does about it.
fn classify(status: StatusCode, retry_after: Option<Duration>) -> Outcome {
    match status.as_u16() {
        200..=299 => Outcome::Delivered,
        410 => Outcome::Gone,
        429 | 502 | 503 | 504 => Outcome::Throttled(retry_after),
        500..=599 => Outcome::Failed(retry_after),
        _ => Outcome::Failed(None),
    }
}

/// `Retry-After` as delta-seconds or an HTTP-date (a date in the past means now).
fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `error` and its causes, so a refused address or a TLS failure shows in one line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

const ENVELOPE_SUFFIX: &[u8] = b"]}";

fn envelope_prefix(app_id: &str) -> Vec<u8> {
    // A JSON string of a &str always serializes.
    let quoted = serde_json::to_string(app_id).unwrap_or_else(|_| String::from("\"\""));
    format!("{{\"app_id\":{quoted},\"events\":[").into_bytes()
}

/// `{"app_id": ..., "events": [ <stored event JSON>, ... ]}`, events spliced in as stored.
pub fn batch_body(app_id: &str, batch: &[OutboxEntry]) -> Vec<u8> {
    let mut body = envelope_prefix(app_id);
    body.reserve(batch.iter().map(|e| e.event.len() + 1).sum::<usize>() + ENVELOPE_SUFFIX.len());
    for (i, entry) in batch.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&entry.event);
    }
    body.extend_from_slice(ENVELOPE_SUFFIX);
    body
}

/// The `webhook-id` of a batch: `msg_` + base64url of 18 bytes of SHA-256 over the app id
/// and the batch's (key, serial) pairs. A retry of the same content has the same id, so a
/// receiver can deduplicate; a retry whose content changed (an entry was replaced while
/// waiting) gets a new one, since its body differs.
pub fn message_id(app_id: &str, batch: &[OutboxEntry]) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(b"presence webhook-id v1\0");
    context.update(app_id.as_bytes());
    for entry in batch {
        context.update(b"\0");
        context.update(entry.key.as_bytes());
        context.update(b"\0");
        context.update(&entry.serial.to_be_bytes());
    }
    let digest = context.finish();
    format!("msg_{}", B64URL.encode(&digest.as_ref()[..18]))
}

/// Waits until a batch is due: the oldest pending event is `batch_window` old, or enough
/// has been published to fill a batch, or the fan-out is draining and the app's outbox
/// holds something. Returns false when the task should end: stopped, or draining with
/// nothing left.
async fn wait_due(
    inner: &Inner,
    app_id: &str,
    shared: &AppShared,
    phase: &mut watch::Receiver<Phase>,
) -> bool {
    loop {
        let now = *phase.borrow_and_update();
        if now >= Phase::Stopped {
            return false;
        }
        if now == Phase::Draining {
            return inner.outbox.depth(app_id) > 0;
        }
        let pending = shared.snapshot();
        match pending.since {
            None => {
                tokio::select! {
                    _ = shared.notify.notified() => {}
                    changed = phase.changed() => if changed.is_err() { return false },
                }
            }
            Some(since) => {
                let full =
                    pending.count >= inner.config.max_events || pending.bytes >= inner.config.max_bytes;
                let due = since + inner.config.batch_window;
                if full || inner.clock.tokio_now() >= due {
                    return true;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => return true,
                    _ = shared.notify.notified() => {}
                    changed = phase.changed() => if changed.is_err() { return false },
                }
            }
        }
    }
}

/// The outbox's report of a group commit wakes each app's delivery task once for all its
/// appends in the commit (and sets its depth gauge): under load, one wake per app per group
/// commit, not one per publish.
impl CommitListener for Inner {
    fn committed(&self, commits: &[Commit<'_>]) {
        let Some(inner) = self.me.upgrade() else { return };
        for commit in commits {
            if !commit.registered {
                debug!(app = commit.app_id, "events for an unregistered app dropped");
                continue;
            }
            set_depth(&inner.metrics, commit.app_id, commit.depth);
            inner.wake(commit.app_id, inner.published_at(commit.oldest_at_ms), commit.events, commit.bytes);
        }
    }
}

/// Sleeps `delay` unless the fan-out stops first (then returns false). A draining
/// fan-out still waits: its retries go on until the shutdown bound.
async fn pause(delay: Duration, phase: &mut watch::Receiver<Phase>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = phase.wait_for(|p| *p >= Phase::Stopped) => false,
    }
}

/// One app's delivery task: batches up to [`FanoutConfig::max_in_flight`] at once where
/// order allows ([`Flights`]), retries after a failure read the outbox again from the front.
async fn deliver_loop(inner: Arc<Inner>, app_id: String, shared: Arc<AppShared>, catch_up: bool) {
    let mut phase = inner.phase.subscribe();
    let Some(app) = inner.apps.get(&app_id) else {
        inner.metrics.outbox_depth.remove(&AppLabel { app: app_id.clone() });
        inner.metrics.outbox_oldest_age.remove(&AppLabel { app: app_id.clone() });
        inner.forget(&app_id, &shared);
        return;
    };
    let depth = inner.outbox.depth(&app_id);
    set_depth(&inner.metrics, &app_id, depth);
    if app.disabled {
        debug!(app = app_id, "webhooks disabled; events accumulate in the outbox");
        return;
    }
    let url = match Url::parse(&app.webhook_url) {
        Ok(url) => url,
        Err(error) => {
            warn!(app = app_id, %error, "invalid webhook URL; no deliveries");
            return;
        }
    };
    let secret = match WebhookSecret::parse(&app.webhook_secret) {
        Ok(secret) => secret,
        Err(error) => {
            warn!(app = app_id, %error, "invalid webhook secret; no deliveries");
            return;
        }
    };
    // A previous secret that does not parse only costs the receivers still on it; the
    // current one goes on signing.
    let previous = app.live_previous_secret(inner.clock.unix_ms()).and_then(|previous| {
        match WebhookSecret::parse(&previous.secret) {
            Ok(secret) => Some((secret, previous.expires_ms)),
            Err(error) => {
                warn!(app = app_id, %error, "invalid previous webhook secret; signing with the new one only");
                None
            }
        }
    });
    let target = Arc::new(Target { app_id: app_id.clone(), url, signer: Signer::new(secret, previous) });
    if catch_up && depth > 0 {
        // Waiting while the app was disabled or misconfigured: it has waited long enough.
        shared.note(inner.long_ago(), 0, 0, &inner.config);
    }
    let mut flights = Flights::new(inner.event_budget(&app_id));
    // Consecutive failed rounds, for the backoff and the delivery log.
    let mut attempt: u32 = 0;
    // Set by a failure: the delay before the outbox is read again from the front, which
    // starts once every batch in flight has landed.
    let mut retry: Option<Duration> = None;
    loop {
        if flights.is_empty() {
            if let Some(delay) = retry.take() {
                debug!(app = app_id, attempt, ?delay, "webhook retry scheduled");
                if !pause(delay, &mut phase).await {
                    return;
                }
                // Retry: read again, so whatever changed meanwhile is coalesced into it.
                inner.metrics.webhook_retries.inc();
                shared.note(inner.long_ago(), 0, 0, &inner.config);
            }
        }
        let landed = if retry.is_none() && flights.can_start(&inner.config) {
            tokio::select! {
                landed = flights.next(), if !flights.is_empty() => landed,
                due = wait_due(&inner, &app_id, &shared, &mut phase) => {
                    if !due {
                        if flights.is_empty() || *phase.borrow() >= Phase::Stopped {
                            return;
                        }
                        // Draining and nothing to start: what is in flight lands first.
                        flights.caught_up = true;
                    } else if let Err(error) = flights.start(&inner, &target, &shared, attempt).await {
                        warn!(app = app_id, %error, "cannot read the outbox");
                        retry = Some(inner.backoff(attempt));
                        attempt = attempt.saturating_add(1);
                    }
                    continue;
                }
            }
        } else {
            tokio::select! {
                landed = flights.next() => landed,
                _ = phase.wait_for(|p| *p >= Phase::Stopped) => return,
            }
        };
        let settled = match landed {
            Some(Landing::Sent(landed)) => settle(&inner, &app_id, landed).await,
            Some(Landing::Lost) => {
                warn!(app = app_id, "a webhook POST ended without an outcome; its batch goes again");
                Settled::Retry(inner.backoff(attempt))
            }
            None => continue,
        };
        match settled {
            Settled::Gone => {
                disable(&inner, &app_id).await;
                return;
            }
            // The first failure of a round counts the attempt; the others only lengthen it.
            Settled::Retry(delay) => {
                if retry.is_none() {
                    attempt = attempt.saturating_add(1);
                }
                retry = Some(retry.map_or(delay, |other| other.max(delay)));
            }
            Settled::Delivered { full } if retry.is_none() => {
                attempt = 0;
                flights.after_delivery(&inner, &app_id, &shared, full);
            }
            Settled::Delivered { .. } => {}
        }
    }
}

/// Who a delivery task POSTs to, and how it signs; shared with its POST tasks.
struct Target {
    app_id: String,
    url: Url,
    signer: Signer,
}

/// One app's batches in flight.
///
/// Presence events carry `seq` and receivers keep the latest, and every outcome and ping is
/// its own event, so batches of those may overlap: a batch starts while others are in
/// flight, with the entries after theirs (`cursor`), at most
/// [`FanoutConfig::max_in_flight`] at a time. An event that must keep its order
/// ([`OutboxKey::keeps_order`]: grant, revoke, reset) never overlaps anything: a batch
/// is cut before it while others fly, it goes once they landed, and nothing starts while
/// it flies. When nothing is in flight the next batch starts at the front, where whatever
/// a failed batch held still waits.
struct Flights {
    tasks: JoinSet<Landed>,
    /// Per POST task: its entries and whether it holds an event that keeps its order.
    meta: HashMap<tokio::task::Id, (usize, bool)>,
    /// The last serial handed to a batch in flight.
    cursor: u64,
    /// The next entry keeps its order: nothing starts until the flights have landed.
    barrier: bool,
    /// The flights a barrier waited for have landed: the ordered entry goes at once.
    released: bool,
    /// The outbox had nothing after `cursor`: nothing starts until a flight lands (a
    /// draining task would otherwise read empty batches in a loop).
    caught_up: bool,
    /// Event bytes one body may carry ([`Inner::event_budget`]).
    budget: usize,
}

/// What a POST task hands back.
struct Landed {
    batch: Vec<OutboxEntry>,
    sent: Sent,
    /// Unix ms of the oldest publish of its round, for events without `at`.
    enqueued_ms: u64,
    /// The attempt number it went as.
    attempt: u32,
    /// It was cut by a limit ([`is_full`]): more may wait behind it.
    full: bool,
}

/// A POST task's end.
enum Landing {
    Sent(Landed),
    /// The task panicked: the batch stays in the outbox.
    Lost,
}

/// What became of a landed batch.
enum Settled {
    Delivered { full: bool },
    Retry(Duration),
    Gone,
}

impl Flights {
    fn new(budget: usize) -> Flights {
        Flights {
            tasks: JoinSet::new(),
            meta: HashMap::new(),
            cursor: 0,
            barrier: false,
            released: false,
            caught_up: false,
            budget,
        }
    }

    fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    fn entries(&self) -> usize {
        self.meta.values().map(|(entries, _)| entries).sum()
    }

    fn can_start(&self, config: &FanoutConfig) -> bool {
        self.is_empty()
            || (self.tasks.len() < config.max_in_flight
                && !self.barrier
                && !self.caught_up
                && !self.meta.values().any(|(_, ordered)| *ordered))
    }

    /// Starts batches while order and the limit allow, each as its own POST task. Consumes
    /// the task's pending events: whatever they were is in these batches or after them.
    async fn start(
        &mut self,
        inner: &Arc<Inner>,
        target: &Arc<Target>,
        shared: &AppShared,
        attempt: u32,
    ) -> Result<(), crate::store::StoreError> {
        let pending = shared.take();
        self.released = false;
        // The wall-clock time of the oldest publish, for latency of events without `at`.
        let waited =
            pending.since.map_or(Duration::ZERO, |s| inner.clock.tokio_now().saturating_duration_since(s));
        let enqueued_ms = inner.clock.unix_ms().saturating_sub(waited.as_millis() as u64);
        let max_events = inner.config.max_events;
        while self.can_start(&inner.config) {
            let mut batch =
                inner.outbox.next_batch(&target.app_id, self.cursor, max_events, self.budget).await?;
            if batch.is_empty() {
                self.caught_up = !self.is_empty();
                return Ok(());
            }
            let ordered = if self.is_empty() {
                batch.iter().any(|entry| OutboxKey::keeps_order(&entry.key))
            } else {
                if let Some(cut) = batch.iter().position(|entry| OutboxKey::keeps_order(&entry.key)) {
                    batch.truncate(cut);
                    self.barrier = true;
                }
                false
            };
            let Some(last) = batch.last() else { return Ok(()) };
            self.cursor = last.serial;
            let full = is_full(&batch, max_events, self.budget);
            let (task, target) = (Arc::clone(inner), Arc::clone(target));
            let entries = batch.len();
            let attempt = attempt.saturating_add(1);
            let handle = self.tasks.spawn(async move {
                let sent = task.send(&target.app_id, &target.url, &target.signer, &batch).await;
                Landed { batch, sent, enqueued_ms, attempt, full }
            });
            self.meta.insert(handle.id(), (entries, ordered));
            if !full {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The next POST task to end; `None` when none is in flight.
    async fn next(&mut self) -> Option<Landing> {
        let ended = self.tasks.join_next_with_id().await?;
        let (id, landing) = match ended {
            Ok((id, landed)) => (id, Landing::Sent(landed)),
            Err(error) => (error.id(), Landing::Lost),
        };
        self.meta.remove(&id);
        self.caught_up = false;
        if self.is_empty() {
            self.cursor = 0;
            self.released = std::mem::take(&mut self.barrier);
        }
        Some(landing)
    }

    /// After a delivered batch (and no failure pending): makes the task due again when
    /// entries wait that no pending event will wake it for. A batch cut before an ordered
    /// event, or a full one, leaves entries that go at once; anything else waits one window
    /// like a new event (it may be an event stored a moment ago whose wake has not reached
    /// this task, and it too must wait its window).
    fn after_delivery(&mut self, inner: &Inner, app_id: &str, shared: &AppShared, full: bool) {
        let depth = inner.outbox.depth(app_id);
        let waiting = depth.saturating_sub(self.entries() as u64);
        let released = std::mem::take(&mut self.released);
        if waiting == 0 {
            return;
        }
        if released || full || waiting >= inner.config.max_events as u64 {
            shared.note(inner.long_ago(), 0, 0, &inner.config);
        } else if shared.snapshot().since.is_none() {
            shared.note(inner.clock.tokio_now(), 0, 0, &inner.config);
        }
    }
}

/// Whether a batch was cut by a limit, so that more may wait behind it: it has the most
/// events a POST takes, or one more of its largest would not have fitted.
fn is_full(batch: &[OutboxEntry], max_events: usize, budget: usize) -> bool {
    let (bytes, largest) = batch
        .iter()
        .fold((0, 0), |(bytes, largest), entry| (bytes + entry.event.len(), largest.max(entry.event.len())));
    batch.len() >= max_events || bytes + largest > budget
}

/// Records a landed POST in the delivery log and acknowledges it if delivered.
async fn settle(inner: &Inner, app_id: &str, landed: Landed) -> Settled {
    let Landed { batch, sent, enqueued_ms, attempt, full } = landed;
    // Failures before this one in a row.
    let failures = attempt.saturating_sub(1);
    let (result, retry) = match sent.outcome {
        Outcome::Delivered => (AttemptResult::Delivered, None),
        Outcome::Gone => (AttemptResult::Gone, None),
        Outcome::Throttled(after) => (AttemptResult::Throttled, Some(inner.retry_delay(failures, after))),
        Outcome::Failed(after) => (AttemptResult::Failed, Some(inner.retry_delay(failures, after))),
    };
    let next_retry_at = retry.map(|delay| inner.clock.unix_ms().saturating_add(delay.as_millis() as u64));
    inner.log.record(
        app_id,
        Attempt {
            at: sent.at_ms,
            webhook_id: sent.id,
            events: batch.len(),
            result,
            status: sent.status,
            error: sent.error,
            latency_ms: sent.latency.as_millis() as u64,
            attempt,
            next_retry_at,
        },
    );
    if result == AttemptResult::Delivered {
        // Counted by `delivered`, once the acknowledgement is done.
        delivered(inner, app_id, batch, enqueued_ms).await;
        return Settled::Delivered { full };
    }
    inner.metrics.webhook_batches.get_or_create(&ResultLabel { result: result.as_str() }).inc();
    match retry {
        Some(delay) => Settled::Retry(delay),
        None => Settled::Gone,
    }
}

/// Acknowledges a delivered batch and records it.
async fn delivered(inner: &Inner, app_id: &str, batch: Vec<OutboxEntry>, enqueued_ms: u64) {
    let now_ms = inner.clock.unix_ms();
    let metrics = &inner.metrics;
    let latencies: Vec<f64> = batch
        .iter()
        // 0: stored by a daemon that did not keep `at` beside the event.
        .map(|entry| if entry.at_ms == 0 { enqueued_ms } else { entry.at_ms })
        .map(|created| now_ms.saturating_sub(created) as f64 / 1000.0)
        .collect();
    let delivered: Vec<(String, u64)> = batch.into_iter().map(|e| (e.key, e.serial)).collect();
    let acknowledged = inner.outbox.ack(app_id, delivered).await;
    // Counted once the acknowledgement is done, so that a delivered batch in the metrics
    // is one that has also left the outbox (or failed to: then it goes again).
    metrics.webhook_batches.get_or_create(&ResultLabel { result: AttemptResult::Delivered.as_str() }).inc();
    metrics.webhook_events.inc_by(latencies.len() as u64);
    for latency in latencies {
        metrics.webhook_delivery_seconds.observe(latency);
    }
    match acknowledged {
        Ok(_) => set_depth(metrics, app_id, inner.outbox.depth(app_id)),
        // The batch goes again (same id): at-least-once.
        Err(error) => warn!(app = app_id, %error, "cannot acknowledge a delivered batch"),
    }
}

/// Marks an app disabled after its endpoint answered 410 Gone, through [`Apps`] so that
/// its cache says so too.
async fn disable(inner: &Inner, app_id: &str) {
    match inner.apps.disable(app_id).await {
        Ok(_) => info!(app = app_id, "webhook endpoint answered 410 Gone; deliveries disabled"),
        Err(error) => warn!(app = app_id, %error, "410 Gone, but the app could not be marked disabled"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, serial: u64, event: &str) -> OutboxEntry {
        OutboxEntry { key: key.to_owned(), serial, at_ms: 0, event: event.as_bytes().to_vec() }
    }

    #[test]
    fn body_is_the_envelope_around_stored_events() {
        let batch = [entry("p:1", 1, r#"{"a":1}"#), entry("p:2", 2, r#"{"b":2}"#)];
        let body = batch_body("app_\"x", &batch);
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(json, serde_json::json!({"app_id": "app_\"x", "events": [{"a": 1}, {"b": 2}]}));
        assert_eq!(batch_body("a", &[]), br#"{"app_id":"a","events":[]}"#);
    }

    #[test]
    fn message_id_is_stable_for_the_same_content_only() {
        let batch = [entry("p:1", 1, "{}"), entry("p:2", 2, "{}")];
        let id = message_id("app_a", &batch);
        assert!(id.starts_with("msg_") && id.len() == 4 + 24, "{id}");
        assert_eq!(id, message_id("app_a", &batch));
        assert_ne!(id, message_id("app_b", &batch));
        assert_ne!(id, message_id("app_a", &[entry("p:1", 1, "{}"), entry("p:2", 3, "{}")]));
        assert_ne!(id, message_id("app_a", &batch[..1]));
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut headers = HeaderMap::new();
        assert_eq!(parse_retry_after(&headers, now), None);
        headers.insert(RETRY_AFTER, "7".parse().expect("value"));
        assert_eq!(parse_retry_after(&headers, now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(120));
        headers.insert(RETRY_AFTER, later.parse().expect("value"));
        assert_eq!(parse_retry_after(&headers, now), Some(Duration::from_secs(120)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(120));
        headers.insert(RETRY_AFTER, earlier.parse().expect("value"));
        assert_eq!(parse_retry_after(&headers, now), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, "soon".parse().expect("value"));
        assert_eq!(parse_retry_after(&headers, now), None);
    }

    #[test]
    fn statuses_map_to_outcomes() {
        let code = |c: u16| StatusCode::from_u16(c).expect("status");
        assert!(matches!(classify(code(200), None), Outcome::Delivered));
        assert!(matches!(classify(code(204), None), Outcome::Delivered));
        assert!(matches!(classify(code(301), Some(Duration::ZERO)), Outcome::Failed(None)));
        assert!(matches!(classify(code(400), None), Outcome::Failed(None)));
        assert!(matches!(classify(code(410), None), Outcome::Gone));
        assert!(matches!(classify(code(429), Some(Duration::from_secs(3))), Outcome::Throttled(Some(_))));
        for c in [502, 503, 504] {
            assert!(matches!(classify(code(c), None), Outcome::Throttled(None)));
        }
        assert!(matches!(classify(code(500), Some(Duration::from_secs(1))), Outcome::Failed(Some(_))));
    }
}
