//! The delivery engine: durable enqueueing with group commit, then one delivery task per
//! app that batches, signs, POSTs and retries. See the [module docs](super) for the design.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use rustls::pki_types::CertificateDer;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::guard::{GuardedResolver, UrlPolicy};
use super::secret::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, WebhookSecret};
use crate::metrics::{AppLabel, Metrics, ResultLabel};
use crate::store::{OutboxEntry, Store, StoreError};

/// How long the first waiting event of an app waits for company before its batch goes.
pub const DEFAULT_BATCH_WINDOW: Duration = Duration::from_millis(250);
/// Most events in one POST.
pub const DEFAULT_MAX_EVENTS: usize = 1_000;
/// Most bytes in one POST body (256 KiB).
pub const DEFAULT_MAX_BYTES: usize = 256 * 1024;
/// Bound on one POST, connecting included; a receiver slower than this is a failure.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// First retry delay; it doubles per consecutive failure.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(5 * 60);
/// Longest `Retry-After` obeyed; a larger one (or a date far ahead) is cut to this, so a
/// misconfigured receiver cannot park its app for days.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(60 * 60);
/// How long an idle pooled connection to a receiver is kept.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// The `User-Agent` of webhook requests.
pub const USER_AGENT: &str = concat!("presenced/", env!("CARGO_PKG_VERSION"), " (webhooks)");
/// Response bytes read (and discarded) so an HTTP/1.1 connection can go back to the pool.
const MAX_RESPONSE_DRAIN: usize = 64 * 1024;
/// Delay before a failed outbox write is tried again.
const STORE_RETRY: Duration = Duration::from_millis(200);

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
}

impl Default for FanoutConfig {
    fn default() -> FanoutConfig {
        FanoutConfig {
            batch_window: DEFAULT_BATCH_WINDOW,
            max_events: DEFAULT_MAX_EVENTS,
            max_bytes: DEFAULT_MAX_BYTES,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            backoff_initial: DEFAULT_BACKOFF_INITIAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            url_policy: Arc::new(UrlPolicy::default()),
            extra_roots: Vec::new(),
            public_roots: true,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
        }
    }
}

/// Why the fan-out could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FanoutError {
    /// A setting is out of range.
    #[error("invalid fan-out setting: {0}")]
    Config(&'static str),
    /// A certificate in `extra_roots` is not a usable trust anchor.
    #[error("invalid webhook root certificate: {0}")]
    InvalidRoot(String),
    /// No root is trusted at all (`public_roots` off and no `extra_roots`), so no delivery
    /// could ever succeed.
    #[error("no webhook root certificates: enable public_roots or give extra_roots")]
    NoRoots,
    /// The TLS configuration or the HTTP client could not be built.
    #[error("cannot build the webhook client: {0}")]
    Client(String),
}

/// The webhook fan-out. Cheap to share behind an `Arc`; see the [module docs](super).
pub struct Fanout {
    inner: Arc<Inner>,
    committer: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for Fanout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fanout").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

struct Inner {
    store: Arc<dyn Store>,
    config: FanoutConfig,
    metrics: Arc<Metrics>,
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
    /// Events published and not yet written.
    buffer: Mutex<Buffer>,
    /// Wakes the committer.
    buffer_ready: Notify,
    /// The highest `Buffer::published` generation durably written.
    committed: watch::Sender<u64>,
    /// One delivery task per app that has been seen.
    apps: Mutex<HashMap<String, AppTask>>,
    /// How far `shutdown` has gone.
    phase: watch::Sender<Phase>,
}

/// How far a shutdown has gone; each phase follows the one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Delivering as usual.
    Running,
    /// The committer writes what was published, then ends.
    Closing,
    /// Everything published is in the outbox: each delivery task sends what it holds at
    /// once (no batch window, failures retried) and ends when its outbox is empty.
    Draining,
    /// The shutdown bound passed: tasks end at their next wait.
    Stopped,
}

#[derive(Default)]
struct Buffer {
    apps: HashMap<String, AppBuffer>,
    /// Bumped by every `publish`, so `flush` knows what it waits for.
    published: u64,
}

/// One app's unwritten events, compacted like the outbox (a key's newer event replaces the
/// older and moves to the back), so a store stall costs memory per key, not per flap.
struct AppBuffer {
    events: Vec<Option<(String, Vec<u8>)>>,
    index: HashMap<String, usize>,
    first: Instant,
    bytes: usize,
}

impl AppBuffer {
    fn new(first: Instant) -> AppBuffer {
        AppBuffer { events: Vec::new(), index: HashMap::new(), first, bytes: 0 }
    }

    fn push(&mut self, key: String, event: Vec<u8>) {
        if let Some(old) = self.index.remove(&key).and_then(|i| self.events[i].take()) {
            self.bytes -= old.1.len();
        }
        self.bytes += event.len();
        self.index.insert(key.clone(), self.events.len());
        self.events.push(Some((key, event)));
    }

    /// Older events (`self`) then newer (`newer`), for putting a failed write back.
    fn merge(mut self, newer: AppBuffer) -> AppBuffer {
        for (key, event) in newer.events.into_iter().flatten() {
            self.push(key, event);
        }
        self
    }

    fn into_events(self) -> Vec<(String, Vec<u8>)> {
        self.events.into_iter().flatten().collect()
    }
}

struct AppTask {
    shared: Arc<AppShared>,
    handle: JoinHandle<()>,
}

/// What the committer tells a delivery task: events are waiting since `since`.
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
    fn note(&self, since: Instant, count: usize, bytes: usize) {
        {
            let mut pending = lock(&self.pending);
            pending.since = Some(pending.since.map_or(since, |s| s.min(since)));
            pending.count += count;
            pending.bytes += bytes;
        }
        self.notify.notify_one();
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
    /// Starts the fan-out on the current tokio runtime: the committer, and a delivery task
    /// for every registered app (apps with undelivered events start delivering at once,
    /// which is how the outbox of a killed daemon drains after a restart).
    ///
    /// Fails only on a configuration that could never deliver (bad roots, zero limits) or
    /// when called outside a tokio runtime.
    pub fn start(
        store: Arc<dyn Store>,
        config: FanoutConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Fanout, FanoutError> {
        if config.max_events == 0 || config.max_bytes == 0 {
            return Err(FanoutError::Config("max_events and max_bytes must be greater than zero"));
        }
        if config.backoff_initial.is_zero() || config.backoff_max < config.backoff_initial {
            return Err(FanoutError::Config("backoff_initial must be positive and at most backoff_max"));
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| FanoutError::Config("Fanout::start must be called inside a tokio runtime"))?;
        let client = build_client(&config)?;
        let (committed, _) = watch::channel(0);
        let (phase, _) = watch::channel(Phase::Running);
        let inner = Arc::new(Inner {
            store,
            config,
            metrics,
            client,
            runtime,
            buffer: Mutex::new(Buffer::default()),
            buffer_ready: Notify::new(),
            committed,
            apps: Mutex::new(HashMap::new()),
            phase,
        });
        let committer = inner.runtime.spawn(commit_loop(inner.clone()));
        Ok(Fanout { inner, committer: Mutex::new(Some(committer)) })
    }

    /// Hands events to an app's outbox and returns at once.
    ///
    /// Each event is `(compaction key, event JSON)`. The events are written by the
    /// committer within one store transaction per app per flush (group commit: whatever
    /// was published while the previous write ran goes in the next), typically a few
    /// milliseconds later; [`flush`](Self::flush) waits for that. An app that is not
    /// registered gets nothing stored. Events published after
    /// [`shutdown`](Self::shutdown) are dropped.
    pub fn publish(&self, app_id: &str, events: Vec<(String, Vec<u8>)>) {
        if events.is_empty() {
            return;
        }
        let now = Instant::now();
        {
            let mut buffer = lock(&self.inner.buffer);
            buffer.published += 1;
            let app = buffer.apps.entry(app_id.to_owned()).or_insert_with(|| AppBuffer::new(now));
            for (key, event) in events {
                app.push(key, event);
            }
        }
        self.inner.buffer_ready.notify_one();
    }

    /// Waits until everything published before the call is in the store. Waits forever
    /// while the store fails, or after shutdown; bound it with a timeout.
    pub async fn flush(&self) {
        let target = lock(&self.inner.buffer).published;
        let mut committed = self.inner.committed.subscribe();
        let _ = committed.wait_for(|done| *done >= target).await;
    }

    /// Restarts an app's delivery task after its record changed (added, secret rotated,
    /// URL changed, re-enabled, removed). The new task reads the record afresh; a removed
    /// or disabled app gets no task. An in-flight POST of the old task is abandoned, and
    /// its batch, not yet acknowledged, goes again (at-least-once).
    pub fn app_changed(&self, app_id: &str) {
        self.inner.restart_task(app_id);
    }

    /// Events waiting in an app's outbox (0 if the store cannot say; the error is logged).
    pub fn depth(&self, app_id: &str) -> u64 {
        self.inner.store.depth(app_id).unwrap_or_else(|error| {
            warn!(app = app_id, %error, "cannot read outbox depth");
            0
        })
    }

    /// Stops within `bound`, delivering what it owes first: writes what was published,
    /// then every app's task POSTs what its outbox holds at once (no batch window,
    /// failures retried with the usual backoff) and ends when the outbox is empty. At the
    /// bound every task still working ends; what it did not deliver stays in the outbox for
    /// the next start (delivery is at-least-once either way).
    pub async fn shutdown(&self, bound: Duration) {
        let deadline = Instant::now() + bound;
        let _ = self.inner.phase.send(Phase::Closing);
        let committer = lock(&self.committer).take();
        if let Some(mut handle) = committer {
            if tokio::time::timeout_at(deadline, &mut handle).await.is_err() {
                warn!("webhook outbox writes did not finish within the shutdown bound");
                handle.abort();
            }
        }
        // Only now: a task that found nothing pending before the committer's last write
        // would end without sending it.
        let _ = self.inner.phase.send(Phase::Draining);
        let tasks: Vec<(String, AppTask)> = lock(&self.inner.apps).drain().collect();
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
    /// Dropping without [`shutdown`](Fanout::shutdown) is a crash stop: tasks are aborted
    /// at once and unwritten events are lost, exactly as with `kill -9`.
    fn drop(&mut self) {
        if let Some(handle) = lock(&self.committer).take() {
            handle.abort();
        }
        for (_, task) in lock(&self.inner.apps).drain() {
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
        roots.add(cert.clone()).map_err(|e| FanoutError::InvalidRoot(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(FanoutError::NoRoots);
    }
    let mut tls =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| FanoutError::Client(e.to_string()))?
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
        .map_err(|e| FanoutError::Client(e.to_string()))
}

/// Runs `work` on the blocking pool: store calls fsync and must not stall the runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(StoreError::Backend(format!("store task failed: {e}"))))
}

/// The committer: writes buffered events, one transaction per app per round, and wakes
/// the apps' delivery tasks. Also starts a task per registered app first.
async fn commit_loop(inner: Arc<Inner>) {
    let mut stopping = inner.phase.subscribe();
    loop {
        let store = inner.store.clone();
        let listed = blocking(move || {
            let apps = store.list_apps()?;
            apps.into_iter().map(|app| Ok((store.depth(&app.id)?, app.id))).collect::<Result<Vec<_>, _>>()
        });
        match listed.await {
            Ok(apps) => {
                // Read before this committer writes anything, so whatever is waiting was
                // left by a previous run (a crash, a restart): it has waited long enough.
                for (depth, app_id) in apps {
                    let shared = inner.ensure_task(&app_id);
                    if depth > 0 {
                        shared.note(inner.long_ago(), 0, 0);
                    }
                }
                break;
            }
            Err(error) => {
                warn!(%error, "cannot list apps; webhook delivery waits for the store");
                tokio::select! {
                    _ = tokio::time::sleep(STORE_RETRY) => {}
                    _ = stopping.wait_for(|p| *p >= Phase::Closing) => break,
                }
            }
        }
    }
    loop {
        let (apps, generation) = {
            let mut buffer = lock(&inner.buffer);
            (std::mem::take(&mut buffer.apps), buffer.published)
        };
        if apps.is_empty() {
            if *stopping.borrow() >= Phase::Closing {
                let _ = inner.committed.send(generation);
                return;
            }
            tokio::select! {
                _ = inner.buffer_ready.notified() => {}
                _ = stopping.wait_for(|p| *p >= Phase::Closing) => {}
            }
            continue;
        }
        let store = inner.store.clone();
        let written = tokio::task::spawn_blocking(move || {
            apps.into_iter()
                .map(|(app_id, buffered)| {
                    let first = buffered.first;
                    let count = buffered.index.len();
                    let bytes = buffered.bytes;
                    let events = buffered.into_events();
                    let result = store
                        .enqueue(&app_id, &events)
                        .and_then(|known| if known { store.depth(&app_id).map(Some) } else { Ok(None) });
                    let unwritten = result.is_err().then_some(events);
                    (app_id, first, count, bytes, result, unwritten)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let written = match written {
            Ok(written) => written,
            Err(error) => {
                // Only a panic in the store gets here; the events of that round are gone.
                warn!(%error, "outbox write task failed");
                continue;
            }
        };
        let mut all_ok = true;
        for (app_id, first, count, bytes, result, unwritten) in written {
            match result {
                Ok(Some(depth)) => {
                    set_depth(&inner.metrics, &app_id, depth);
                    inner.wake(&app_id, first, count, bytes);
                }
                Ok(None) => debug!(app = app_id, "events for an unregistered app dropped"),
                Err(error) => {
                    warn!(app = app_id, %error, "cannot write webhook events; retrying");
                    all_ok = false;
                    let mut failed = AppBuffer::new(first);
                    for (key, event) in unwritten.unwrap_or_default() {
                        failed.push(key, event);
                    }
                    let mut buffer = lock(&inner.buffer);
                    let merged = match buffer.apps.remove(&app_id) {
                        Some(newer) => failed.merge(newer),
                        None => failed,
                    };
                    buffer.apps.insert(app_id, merged);
                }
            }
        }
        if all_ok {
            let _ = inner.committed.send(generation);
        } else {
            tokio::time::sleep(STORE_RETRY).await;
        }
    }
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
        shared.note(since, count, bytes);
    }

    /// The app's task state, spawning the task if there is none. A finished task (a
    /// disabled app) stays registered, so events for it do not respawn anything.
    fn ensure_task(self: &Arc<Self>, app_id: &str) -> Arc<AppShared> {
        let mut apps = lock(&self.apps);
        if let Some(task) = apps.get(app_id) {
            return task.shared.clone();
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
        let mut apps = lock(&self.apps);
        if let Some(old) = apps.remove(app_id) {
            old.handle.abort();
        }
        let task = self.spawn_task(app_id, true);
        apps.insert(app_id.to_owned(), task);
    }

    /// Spawns an app's delivery task. With `catch_up`, whatever its outbox holds when the
    /// task starts goes at once (a re-enabled app); otherwise the committer's wake-ups
    /// alone decide when batches are due.
    fn spawn_task(self: &Arc<Self>, app_id: &str, catch_up: bool) -> AppTask {
        let shared = Arc::new(AppShared::default());
        let task = deliver_loop(self.clone(), app_id.to_owned(), shared.clone(), catch_up);
        let handle = self.runtime.spawn(task);
        AppTask { shared, handle }
    }

    /// Drops the task entry of an app that no longer exists, if it is still `shared`'s.
    fn forget(&self, app_id: &str, shared: &Arc<AppShared>) {
        let mut apps = lock(&self.apps);
        if apps.get(app_id).is_some_and(|task| Arc::ptr_eq(&task.shared, shared)) {
            apps.remove(app_id);
        }
    }

    /// A publish time that makes a batch due at once (one window ago).
    fn long_ago(&self) -> Instant {
        let now = Instant::now();
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

    async fn send(&self, app_id: &str, url: &Url, secret: &WebhookSecret, batch: &[OutboxEntry]) -> Outcome {
        if let Err(error) = self.config.url_policy.check_target(url) {
            warn!(app = app_id, %error, "webhook URL refused");
            return Outcome::Failed(None);
        }
        let body = batch_body(app_id, batch);
        let id = message_id(app_id, batch);
        let timestamp = unix_secs();
        let signature = secret.sign(&id, timestamp, &body);
        let request = self
            .client
            .post(url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(HEADER_ID, id.as_str())
            .header(HEADER_TIMESTAMP, timestamp.to_string())
            .header(HEADER_SIGNATURE, signature)
            .body(body);
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                warn!(app = app_id, error = %error_chain(&error), "webhook delivery failed");
                return Outcome::Failed(None);
            }
        };
        let status = response.status();
        let retry_after = parse_retry_after(response.headers(), SystemTime::now());
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

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
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

/// The `at` field (Unix ms) of an event, if it has a numeric one.
fn event_at_ms(event: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct At {
        at: Option<u64>,
    }
    serde_json::from_slice::<At>(event).ok()?.at
}

/// Waits until a batch is due: the oldest pending event is `batch_window` old, or enough
/// has been published to fill a batch, or the fan-out is draining and something is
/// pending. Returns false when the task should end: stopped, or draining with nothing
/// left.
async fn wait_due(inner: &Inner, shared: &AppShared, phase: &mut watch::Receiver<Phase>) -> bool {
    loop {
        let now = *phase.borrow_and_update();
        if now >= Phase::Stopped {
            return false;
        }
        let draining = now == Phase::Draining;
        let pending = shared.snapshot();
        match pending.since {
            None if draining => return false,
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
                if full || draining || Instant::now() >= due {
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

/// Sleeps `delay` unless the fan-out stops first (then returns false). A draining
/// fan-out still waits: its retries go on until the shutdown bound.
async fn pause(delay: Duration, phase: &mut watch::Receiver<Phase>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = phase.wait_for(|p| *p >= Phase::Stopped) => false,
    }
}

/// One app's delivery task: exactly one batch in flight, so events reach the receiver in
/// outbox order.
async fn deliver_loop(inner: Arc<Inner>, app_id: String, shared: Arc<AppShared>, catch_up: bool) {
    let mut stopping = inner.phase.subscribe();
    let mut attempt: u32 = 0;
    let (app, depth) = loop {
        let (store, id) = (inner.store.clone(), app_id.clone());
        match blocking(move || Ok((store.get_app(&id)?, store.depth(&id)?))).await {
            Ok((Some(app), depth)) => break (app, depth),
            Ok((None, _)) => {
                inner.metrics.outbox_depth.remove(&AppLabel { app: app_id.clone() });
                inner.forget(&app_id, &shared);
                return;
            }
            Err(error) => {
                warn!(app = app_id, %error, "cannot load app; retrying");
                if !pause(inner.backoff(attempt), &mut stopping).await {
                    return;
                }
                attempt = attempt.saturating_add(1);
            }
        }
    };
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
    if catch_up && depth > 0 {
        // Waiting while the app was disabled or misconfigured: it has waited long enough.
        shared.note(inner.long_ago(), 0, 0);
    }
    let budget = inner.event_budget(&app_id);
    attempt = 0;
    loop {
        if !wait_due(&inner, &shared, &mut stopping).await {
            return;
        }
        let pending = shared.take();
        // The wall-clock time of the oldest publish, for latency of events without `at`.
        let enqueued_ms =
            unix_ms().saturating_sub(pending.since.map_or(0, |s| s.elapsed().as_millis() as u64));
        loop {
            let (store, id) = (inner.store.clone(), app_id.clone());
            let max_events = inner.config.max_events;
            let batch = match blocking(move || store.peek(&id, max_events, budget)).await {
                Ok(batch) => batch,
                Err(error) => {
                    warn!(app = app_id, %error, "cannot read the outbox");
                    if !pause(inner.backoff(attempt), &mut stopping).await {
                        return;
                    }
                    attempt = attempt.saturating_add(1);
                    continue;
                }
            };
            if batch.is_empty() {
                break;
            }
            let delay = match inner.send(&app_id, &url, &secret, &batch).await {
                Outcome::Delivered => {
                    delivered(&inner, &app_id, &shared, batch, enqueued_ms).await;
                    attempt = 0;
                    break;
                }
                Outcome::Gone => {
                    inner.metrics.webhook_batches.get_or_create(&ResultLabel { result: "gone" }).inc();
                    disable(&inner, &app_id).await;
                    return;
                }
                Outcome::Throttled(retry_after) => {
                    inner.metrics.webhook_batches.get_or_create(&ResultLabel { result: "throttled" }).inc();
                    inner.retry_delay(attempt, retry_after)
                }
                Outcome::Failed(retry_after) => {
                    inner.metrics.webhook_batches.get_or_create(&ResultLabel { result: "failed" }).inc();
                    inner.retry_delay(attempt, retry_after)
                }
            };
            attempt = attempt.saturating_add(1);
            debug!(app = app_id, attempt, ?delay, "webhook retry scheduled");
            if !pause(delay, &mut stopping).await {
                return;
            }
            // Retry: re-peek, so whatever changed meanwhile is coalesced into the batch.
            inner.metrics.webhook_retries.inc();
        }
    }
}

/// Acknowledges a delivered batch and records it.
async fn delivered(
    inner: &Inner,
    app_id: &str,
    shared: &AppShared,
    batch: Vec<OutboxEntry>,
    enqueued_ms: u64,
) {
    let now_ms = unix_ms();
    let metrics = &inner.metrics;
    metrics.webhook_batches.get_or_create(&ResultLabel { result: "delivered" }).inc();
    metrics.webhook_events.inc_by(batch.len() as u64);
    for entry in &batch {
        let created = event_at_ms(&entry.event).unwrap_or(enqueued_ms);
        metrics.webhook_delivery_seconds.0.observe(now_ms.saturating_sub(created) as f64 / 1000.0);
    }
    let full = batch.len() >= inner.config.max_events;
    let delivered: Vec<(String, u64)> = batch.into_iter().map(|e| (e.key, e.serial)).collect();
    let (store, id) = (inner.store.clone(), app_id.to_owned());
    match blocking(move || {
        store.ack(&id, &delivered)?;
        store.depth(&id)
    })
    .await
    {
        Ok(depth) => {
            set_depth(metrics, app_id, depth);
            // Entries left behind by a size-limited batch have no wake of their own: after
            // a full batch (or with a full one waiting) the next goes at once; otherwise
            // they wait one window like any new event. Not "at once" in that case: the
            // entries may be an event the committer wrote a moment ago and has not yet
            // woken this task for, and it too must wait its window.
            let pending = shared.snapshot();
            if depth > 0 && (full || depth >= inner.config.max_events as u64) {
                shared.note(inner.long_ago(), 0, 0);
            } else if depth > 0 && pending.since.is_none() {
                shared.note(Instant::now(), 0, 0);
            }
        }
        // The batch goes again (same id): at-least-once.
        Err(error) => warn!(app = app_id, %error, "cannot acknowledge a delivered batch"),
    }
}

/// Marks an app disabled after its endpoint answered 410 Gone.
async fn disable(inner: &Inner, app_id: &str) {
    let (store, id) = (inner.store.clone(), app_id.to_owned());
    let result = blocking(move || store.update_app(&id, &mut |app| app.disabled = true).map(drop)).await;
    match result {
        Ok(()) => info!(app = app_id, "webhook endpoint answered 410 Gone; deliveries disabled"),
        Err(error) => warn!(app = app_id, %error, "410 Gone, but the app could not be marked disabled"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, serial: u64, event: &str) -> OutboxEntry {
        OutboxEntry { key: key.to_owned(), serial, event: event.as_bytes().to_vec() }
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
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
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

    #[test]
    fn event_at_is_read_when_numeric() {
        assert_eq!(event_at_ms(br#"{"type":"presence","at":1700000000123}"#), Some(1_700_000_000_123));
        assert_eq!(event_at_ms(br#"{"type":"presence"}"#), None);
        assert_eq!(event_at_ms(br#"{"at":"yesterday"}"#), None);
    }

    #[test]
    fn the_buffer_compacts_like_the_outbox() {
        let mut buffer = AppBuffer::new(Instant::now());
        buffer.push("p:1".into(), b"a".to_vec());
        buffer.push("p:2".into(), b"bb".to_vec());
        buffer.push("p:1".into(), b"ccc".to_vec());
        assert_eq!(buffer.bytes, 5);
        let mut newer = AppBuffer::new(Instant::now());
        newer.push("p:2".into(), b"d".to_vec());
        let merged = buffer.merge(newer);
        assert_eq!(
            merged.into_events(),
            vec![("p:1".into(), b"ccc".to_vec()), ("p:2".into(), b"d".to_vec())]
        );
    }
}
