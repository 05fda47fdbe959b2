//! The log outbox ([`LogOutbox`]): the daemon's durable [`Outbox`], an append-only log of
//! records on disk and every live entry in memory.
//!
//! ```text
//! append ──> pending ──(committer: one write + fdatasync per round)──> log segment
//!                                     │
//!                                     └──> applied to the app's in-memory queue ──> listener, flush
//! next_batch, depth ──> the app's in-memory queue          ack ──> queue (at once) + an Ack record
//!                                                          (written with the next round, unsynced)
//! ```
//!
//! Why this shape (BENCHMARKS.md has the measurements): the outbox's live data is small
//! (one entry per (app, key) waiting, a few MB to a few hundred MB) while its history is
//! unbounded (every status change of every app). A B-tree store writes pages per event
//! and frees them only with durable commits; an LSM rewrites the history at every level.
//! Here an event costs one sequential record write, shared with every other event of its
//! round in one `fdatasync`, and reading a batch or acknowledging one never touches the
//! disk. Disk use is bounded by compaction, not by history:
//!
//! - **Compaction is a snapshot.** When the segments written since the newest snapshot
//!   outgrow both [`COMPACT_FLOOR`] and [`COMPACT_FACTOR`] × that snapshot (about the
//!   live data), the committer writes every live entry to a new snapshot and removes the
//!   files it replaces. The outbox's files therefore stay below about
//!   `(COMPACT_FACTOR + 1) × live + COMPACT_FLOOR + SEGMENT_MAX`, however many events pass.
//! - **Recovery** (`files::recover`) reads the newest complete snapshot and replays the
//!   segments after it through the same rule the running outbox applies (`files::apply`),
//!   so it costs one read of at most that bound, not of the history.
//! - **Group commit.** As in any log: appends wait in `pending` (compacted by key) while
//!   the previous round's fsync runs; one committer at a time writes them.
//! - **Acknowledgements** take effect in memory at once and are appended with the next
//!   round without a sync of their own: `kill -9` loses none (the kernel has them), a power
//!   cut may, and then the batch is delivered again under the same `webhook-id`.
//! - **Failures.** A failed write is cut off the segment, the round goes back in front of
//!   what came meanwhile and is retried after [`STORE_RETRY`]; `writable` is false until
//!   a write succeeds. Nothing reported stored is lost: it was synced before the report.
//!
//! Which apps exist is the app store's business: the owner tells the outbox
//! ([`register`](LogOutbox::register), [`remove`](LogOutbox::remove)), and an append for
//! an app it does not know stores nothing.

pub(crate) mod files;
pub(crate) mod record;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;

use tokio::sync::watch;

use self::files::Writer;
use self::record::Record;
use super::outbox::ListenerSlot;
use super::queue::CompactingQueue;
use super::{Commit, CommitListener, Outbox, OutboxEntry, OutboxEvent, OutboxStats, StoreError, StoreFuture};

/// Delay before a failed write is tried again.
const STORE_RETRY: Duration = Duration::from_millis(200);
/// Segments since the newest snapshot below this size never start a compaction: a small
/// log is cheaper to keep than to rewrite.
pub(crate) const COMPACT_FLOOR: u64 = 32 << 20;
/// A compaction starts once the segments since the newest snapshot hold this many times
/// the snapshot's size: the files stay within a small factor of the live data, and each
/// byte of history costs at most about `1 / COMPACT_FACTOR` bytes of snapshot. 1 rather
/// than 2: through 10,000,000 events the peak fell from about 290 to about 200 MB at the
/// same throughput (BENCHMARKS.md, "Compacting sooner").
pub(crate) const COMPACT_FACTOR: u64 = 1;

/// The durable outbox; cheap to clone (the clones share it).
#[derive(Clone)]
pub(crate) struct LogOutbox {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LogOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogOutbox").finish_non_exhaustive()
    }
}

type Queue = Arc<Mutex<CompactingQueue>>;

struct Shared {
    /// Every registered app's queue of durable entries, each behind its own lock so that
    /// one app's batch or acknowledgement never waits for another's.
    queues: RwLock<HashMap<String, Queue>>,
    /// What waits for the next round.
    pending: Mutex<Pending>,
    /// The log's files; locked by the committer (one at a time) and by snapshots.
    writer: Mutex<Writer>,
    /// Set while writes fail.
    failing: AtomicBool,
    /// Snapshots written, for `/metrics`.
    compactions: AtomicU64,
    /// [`COMPACT_FLOOR`], lowered by tests to compact small logs.
    compact_floor: AtomicU64,
    /// The files' size, as of the last write, for `/metrics`.
    disk_bytes: AtomicU64,
    listener: ListenerSlot,
    /// The highest generation durably written (or refused); apart from the rest so the
    /// committer reports after letting go of the files.
    committed: Arc<watch::Sender<u64>>,
}

/// Appends, acknowledgements and removals: what waits for the next round, and what a
/// round writes.
#[derive(Debug, Default)]
struct Work {
    apps: HashMap<String, PendingApp>,
    /// Per acknowledgement call: the app and the (key, serial) pairs it removed.
    acks: Vec<(String, Vec<(String, u64)>)>,
    drops: Vec<String>,
}

impl Work {
    fn is_empty(&self) -> bool {
        self.apps.is_empty() && self.acks.is_empty() && self.drops.is_empty()
    }

    /// Takes back a failed round's work, in front of `newer` work.
    fn put_back(&mut self, failed: Work) {
        let newer = std::mem::replace(self, failed);
        for (app_id, newer) in newer.apps {
            match self.apps.get_mut(&app_id) {
                Some(failed) => failed.extend(newer),
                None => {
                    self.apps.insert(app_id, newer);
                }
            }
        }
        self.acks.extend(newer.acks);
        self.drops.extend(newer.drops);
    }
}

/// The work waiting for the next round, and the committer's state.
#[derive(Debug, Default)]
struct Pending {
    work: Work,
    /// Bumped by every append, ack and removal, so `flush` knows what it waits for.
    published: u64,
    /// The last serial handed out: serials are taken here, in call order.
    serial: u64,
    /// Whether a committer is running.
    writing: bool,
}

/// One app's appends in a round, compacted, with what its listener is told.
#[derive(Debug)]
struct PendingApp {
    queue: CompactingQueue,
    /// Events and bytes appended before compaction, and the oldest `at_ms`.
    events: usize,
    bytes: usize,
    oldest_at_ms: u64,
}

impl Default for PendingApp {
    fn default() -> PendingApp {
        PendingApp { queue: CompactingQueue::default(), events: 0, bytes: 0, oldest_at_ms: u64::MAX }
    }
}

impl PendingApp {
    fn push(&mut self, serial: u64, event: OutboxEvent) {
        self.events += 1;
        self.bytes += event.json.len();
        self.oldest_at_ms = self.oldest_at_ms.min(event.at_ms);
        self.queue.push(serial, event);
    }

    /// Takes back a failed round's appends, in front of `newer` ones.
    fn extend(&mut self, newer: PendingApp) {
        self.queue.extend(newer.queue);
        self.events += newer.events;
        self.bytes += newer.bytes;
        self.oldest_at_ms = self.oldest_at_ms.min(newer.oldest_at_ms);
    }
}

/// One round: what the committer took from `pending`, and the generation it brings
/// `flush` to.
#[derive(Debug)]
struct Round {
    work: Work,
    generation: u64,
}

/// Every critical section leaves its data consistent: a panic elsewhere does not make the
/// outbox unusable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn ready<T: Send + 'static>(value: T) -> StoreFuture<T> {
    Box::pin(std::future::ready(Ok(value)))
}

impl LogOutbox {
    /// Opens (or creates) the log in `dir` and reads it back; `registered` are the apps
    /// that exist (what the log holds for any other app is dropped).
    pub(crate) fn open(
        dir: &Path,
        registered: impl IntoIterator<Item = String>,
    ) -> Result<LogOutbox, StoreError> {
        let files::Recovered { mut queues, last_serial, writer } = files::recover(dir)?;
        let queues: HashMap<String, Queue> = registered
            .into_iter()
            .map(|app| {
                let queue = queues.remove(&app).unwrap_or_default();
                (app, Arc::new(Mutex::new(queue)))
            })
            .collect();
        let disk_bytes = writer.disk_bytes();
        let (committed, _) = watch::channel(0);
        Ok(LogOutbox {
            shared: Arc::new(Shared {
                queues: RwLock::new(queues),
                pending: Mutex::new(Pending { serial: last_serial, ..Pending::default() }),
                writer: Mutex::new(writer),
                failing: AtomicBool::new(false),
                compactions: AtomicU64::new(0),
                compact_floor: AtomicU64::new(COMPACT_FLOOR),
                disk_bytes: AtomicU64::new(disk_bytes),
                listener: ListenerSlot::default(),
                committed: Arc::new(committed),
            }),
        })
    }

    /// An app now exists: appends for it are stored.
    pub(crate) fn register(&self, app_id: &str) {
        let mut queues = self.shared.queues.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        queues.entry(app_id.to_owned()).or_default();
    }

    /// An app is gone: its entries go at once, and a record says so in the log.
    pub(crate) fn remove(&self, app_id: &str) {
        self.shared.queues.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(app_id);
        let mut pending = lock(&self.shared.pending);
        pending.work.apps.remove(app_id);
        pending.work.drops.push(app_id.to_owned());
        self.shared.kick(pending);
    }

    /// Stores entries carried over from an older store under their own serials, synced,
    /// before the outbox is used.
    pub(crate) fn import(&self, app_id: &str, entries: Vec<(u64, OutboxEvent)>) -> Result<(), StoreError> {
        let mut records = Vec::new();
        for (serial, event) in &entries {
            let OutboxEvent { key, version, at_ms, json } = event;
            Record::Append { app: app_id, key, serial: *serial, version: *version, at_ms: *at_ms, json }
                .encode(&mut records);
        }
        lock(&self.shared.writer).append(&records, true)?;
        let mut pending = lock(&self.shared.pending);
        if let Some(queue) = self.shared.queue(app_id) {
            let mut queue = lock(&queue);
            for (serial, event) in entries {
                pending.serial = pending.serial.max(serial);
                queue.push(serial, event);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
impl LogOutbox {
    /// Compacts once the log since the last snapshot passes `bytes` (and the factor).
    fn set_compact_floor(&self, bytes: u64) {
        self.shared.compact_floor.store(bytes, Ordering::Relaxed);
    }
}

impl Shared {
    fn queue(&self, app_id: &str) -> Option<Queue> {
        self.queues.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(app_id).cloned()
    }

    /// Counts a change to `pending` and makes sure a committer will write it: on the
    /// blocking pool when there is a runtime, else (a command-line tool) here and now.
    fn kick(self: &Arc<Self>, mut pending: MutexGuard<'_, Pending>) {
        pending.published += 1;
        if pending.writing {
            return;
        }
        pending.writing = true;
        drop(pending);
        let shared = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(move || commit_rounds(shared));
            }
            Err(_) => commit_rounds(shared),
        }
    }

    /// Takes what is pending, or clears `writing` (and reports everything written) when
    /// nothing is.
    fn take_round(&self) -> Option<Round> {
        let mut pending = lock(&self.pending);
        if pending.work.is_empty() {
            pending.writing = false;
            mark_committed(&self.committed, pending.published);
            return None;
        }
        Some(Round { work: std::mem::take(&mut pending.work), generation: pending.published })
    }

    /// Writes one round: removals, then acknowledgements (both already applied in memory,
    /// so replaying them first gives the same state), then appends; synced when it holds
    /// appends or removals. Returns the registered apps' queues, for applying.
    fn write_round(&self, round: &Work) -> Result<Vec<Option<Queue>>, StoreError> {
        let mut records = Vec::new();
        for app in &round.drops {
            Record::Drop { app }.encode(&mut records);
        }
        for (app, acked) in &round.acks {
            for (key, serial) in acked {
                Record::Ack { app, key, serial: *serial }.encode(&mut records);
            }
        }
        let mut targets = Vec::with_capacity(round.apps.len());
        let mut appended = false;
        for (app_id, app) in &round.apps {
            let target = self.queue(app_id);
            if target.is_some() {
                for (key, serial, version, at_ms, json) in app.queue.entries() {
                    Record::Append { app: app_id, key, serial, version, at_ms, json }.encode(&mut records);
                    appended = true;
                }
            }
            targets.push(target);
        }
        let mut writer = lock(&self.writer);
        let written = writer.append(&records, appended || !round.drops.is_empty());
        self.disk_bytes.store(writer.disk_bytes(), Ordering::Relaxed);
        written.map(|()| targets)
    }

    /// Writes a snapshot if the log has grown enough since the last (between rounds: the
    /// queues then hold exactly what the log does). A failure leaves the log as it was.
    fn compact_if_due(&self) {
        let mut writer = lock(&self.writer);
        if !writer.wants_snapshot(self.compact_floor.load(Ordering::Relaxed), COMPACT_FACTOR) {
            return;
        }
        let queues: Vec<(String, Queue)> = self
            .queues
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(app, queue)| (app.clone(), queue.clone()))
            .collect();
        let mut records = Vec::new();
        let mut entries = 0u64;
        for (app, queue) in &queues {
            let queue = lock(queue);
            for (key, serial, version, at_ms, json) in queue.entries() {
                Record::Append { app, key, serial, version, at_ms, json }.encode(&mut records);
                entries += 1;
            }
        }
        let next_serial = lock(&self.pending).serial;
        Record::End { next_serial, entries }.encode(&mut records);
        let started = std::time::Instant::now();
        match writer.snapshot(&records) {
            Ok(()) => {
                self.compactions.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    entries,
                    bytes = records.len(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "outbox compacted"
                );
            }
            Err(error) => tracing::warn!(%error, "outbox compaction failed; the log is kept as it is"),
        }
        self.disk_bytes.store(writer.disk_bytes(), Ordering::Relaxed);
    }
}

/// The committer: writes rounds until nothing is pending.
///
/// It lets go of the outbox *before* it reports the last round: whoever was told "stored"
/// may drop the store and open the directory again at once (a restart), and must not find
/// its lock still held here.
fn commit_rounds(shared: Arc<Shared>) {
    let committed = shared.committed.clone();
    let _running = Running(Arc::downgrade(&shared));
    let mut next = Some(shared);
    while let Some(log) = next.take() {
        let Some(round) = log.take_round() else { return };
        match log.write_round(&round.work) {
            Ok(targets) => {
                log.failing.store(false, Ordering::Relaxed);
                let Round { work: Work { apps, .. }, generation } = round;
                let mut told = Vec::with_capacity(apps.len());
                for ((app_id, app), target) in apps.into_iter().zip(targets) {
                    let PendingApp { queue: appended, events, bytes, oldest_at_ms } = app;
                    let depth = target.map(|queue| {
                        let mut queue = lock(&queue);
                        for (serial, event) in appended.into_events() {
                            queue.push(serial, event);
                        }
                        queue.len() as u64
                    });
                    told.push((app_id, depth, events, bytes, oldest_at_ms));
                }
                log.compact_if_due();
                let listener = log.listener.get();
                {
                    let mut pending = lock(&log.pending);
                    if pending.work.is_empty() {
                        // The next append starts a committer of its own.
                        pending.writing = false;
                    } else {
                        next = Some(log.clone());
                    }
                }
                drop(log);
                let commits: Vec<Commit<'_>> = told
                    .iter()
                    .map(|(app_id, depth, events, bytes, oldest_at_ms)| Commit {
                        app_id,
                        registered: depth.is_some(),
                        events: *events,
                        bytes: *bytes,
                        oldest_at_ms: *oldest_at_ms,
                        depth: depth.unwrap_or(0),
                    })
                    .collect();
                if let Some(listener) = listener.filter(|_| !commits.is_empty()) {
                    listener.committed(&commits);
                }
                mark_committed(&committed, generation);
            }
            Err(error) => {
                if Arc::strong_count(&log) == 1 {
                    // Every handle is gone (the daemon stopped): nobody is left to deliver
                    // these, and retrying forever would keep the runtime from shutting down.
                    let lost: usize = round.work.apps.values().map(|app| app.events).sum();
                    tracing::error!(%error, lost, "webhook events not written: the outbox closed while its writes failed");
                    lock(&log.pending).writing = false;
                    return;
                }
                log.failing.store(true, Ordering::Relaxed);
                tracing::warn!(%error, "cannot write webhook events; retrying");
                lock(&log.pending).work.put_back(round.work);
                std::thread::sleep(STORE_RETRY);
                next = Some(log);
            }
        }
    }
}

/// Raises the committed generation to `generation`, never lowering it.
fn mark_committed(committed: &watch::Sender<u64>, generation: u64) {
    committed.send_if_modified(|done| {
        let raised = generation > *done;
        *done = (*done).max(generation);
        raised
    });
}

/// Lets the next append start a committer if this one panics (its waiters see
/// [`StoreError::CommitterGone`]); on a normal return the loop has already cleared the flag.
struct Running(Weak<Shared>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade().filter(|_| std::thread::panicking()) {
            lock(&shared.pending).writing = false;
        }
    }
}

impl Outbox for LogOutbox {
    fn append(&self, app_id: &str, events: Vec<OutboxEvent>) {
        let mut pending = lock(&self.shared.pending);
        let mut serial = pending.serial;
        // A lookup first: the app is almost always waiting already, and `entry` would
        // allocate its id on every append.
        if !pending.work.apps.contains_key(app_id) {
            pending.work.apps.insert(app_id.to_owned(), PendingApp::default());
        }
        let Some(app) = pending.work.apps.get_mut(app_id) else { return };
        for event in events {
            serial += 1;
            app.push(serial, event);
        }
        pending.serial = serial;
        self.shared.kick(pending);
    }

    fn flush(&self) -> StoreFuture<()> {
        let target = lock(&self.shared.pending).published;
        let mut committed = self.shared.committed.subscribe();
        Box::pin(async move {
            committed.wait_for(|done| *done >= target).await.map_err(|_| StoreError::CommitterGone)?;
            Ok(())
        })
    }

    fn listen(&self, listener: Weak<dyn CommitListener>) {
        self.shared.listener.set(listener);
    }

    fn next_batch(
        &self,
        app_id: &str,
        after: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> StoreFuture<Vec<OutboxEntry>> {
        let batch = self
            .shared
            .queue(app_id)
            .map_or(Vec::new(), |queue| lock(&queue).batch(after, max_events, max_bytes));
        ready(batch)
    }

    fn ack(&self, app_id: &str, delivered: Vec<(String, u64)>) -> StoreFuture<usize> {
        let Some(queue) = self.shared.queue(app_id) else { return ready(0) };
        let mut acked = delivered;
        {
            let mut queue = lock(&queue);
            acked.retain(|(key, serial)| queue.ack(key, *serial));
        }
        let removed = acked.len();
        if removed > 0 {
            let mut pending = lock(&self.shared.pending);
            pending.work.acks.push((app_id.to_owned(), acked));
            self.shared.kick(pending);
        }
        ready(removed)
    }

    fn depth(&self, app_id: &str) -> u64 {
        self.shared.queue(app_id).map_or(0, |queue| lock(&queue).len() as u64)
    }

    fn oldest_at_ms(&self, app_id: &str) -> Option<u64> {
        self.shared.queue(app_id).and_then(|queue| lock(&queue).oldest_at_ms())
    }

    fn writable(&self) -> bool {
        !self.shared.failing.load(Ordering::Relaxed)
    }

    fn stats(&self) -> OutboxStats {
        let queues: Vec<Queue> = self
            .shared
            .queues
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let (mut entries, mut bytes) = (0u64, 0u64);
        for queue in queues {
            let queue = lock(&queue);
            entries += queue.len() as u64;
            bytes += queue.bytes() as u64;
        }
        OutboxStats {
            entries,
            live_bytes: bytes,
            disk_bytes: self.shared.disk_bytes.load(Ordering::Relaxed),
            compactions: self.shared.compactions.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence(key: usize, round: usize) -> OutboxEvent {
        let json = format!(
            r#"{{"type":"presence","puid":"{key:040}","status":"online","seq":{round},"pad":"{}"}}"#,
            "x".repeat(100)
        );
        OutboxEvent {
            key: format!("p:{key}"),
            version: round as u64,
            at_ms: round as u64,
            json: json.into_bytes(),
        }
    }

    async fn everything(log: &LogOutbox, app: &str) -> Vec<(String, u64, Vec<u8>)> {
        let batch = log.next_batch(app, 0, usize::MAX, usize::MAX).await.expect("batch");
        batch.into_iter().map(|entry| (entry.key, entry.serial, entry.event)).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_files_stay_within_a_factor_of_the_live_data_however_long_the_history() {
        const KEYS: usize = 200;
        const FLOOR: u64 = 256 << 10;
        let dir = tempfile::tempdir().expect("tempdir");
        let log = LogOutbox::open(dir.path(), ["app_a".to_owned(), "app_b".to_owned()]).expect("open");
        log.set_compact_floor(FLOOR);
        let mut largest = 0u64;
        let mut history = 0u64;
        for round in 0..150 {
            for app in ["app_a", "app_b"] {
                let events: Vec<OutboxEvent> = (0..KEYS).map(|key| presence(key, round)).collect();
                history += events.iter().map(|event| event.json.len() as u64).sum::<u64>();
                log.append(app, events);
            }
            log.flush().await.expect("flush");
            // app_a's receiver keeps up; app_b's is down (its outbox holds every key).
            let delivered = log.next_batch("app_a", 0, usize::MAX, usize::MAX).await.expect("batch");
            log.ack("app_a", delivered.into_iter().map(|entry| (entry.key, entry.serial)).collect())
                .await
                .expect("ack");
            largest = largest.max(log.stats().disk_bytes);
        }
        log.flush().await.expect("flush");
        let stats = log.stats();
        assert_eq!(stats.entries, KEYS as u64, "app_b holds one entry per key, app_a none");
        assert!(stats.compactions >= 3, "{stats:?}");
        let on_disk: u64 = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|entry| entry.expect("entry").metadata().expect("metadata").len())
            .sum();
        assert_eq!(on_disk, stats.disk_bytes, "the files are what the outbox says");
        // Each live entry costs its record's framing beside its JSON (about 40 bytes).
        let bound = (COMPACT_FACTOR + 1) * (stats.live_bytes + 64 * stats.entries) + FLOOR + (64 << 10);
        assert!(largest <= bound, "at most {largest} bytes on disk against a bound of {bound}");
        assert!(
            history > 20 * largest,
            "the history ({history} B) is far larger than the files ({largest} B)"
        );

        let before = (everything(&log, "app_a").await, everything(&log, "app_b").await);
        drop(log);
        let log = LogOutbox::open(dir.path(), ["app_a".to_owned(), "app_b".to_owned()]).expect("reopen");
        let after = (everything(&log, "app_a").await, everything(&log, "app_b").await);
        assert_eq!(before, after, "recovery reads back exactly the live entries");
        log.append("app_b", vec![presence(0, 1_000)]);
        log.flush().await.expect("flush");
        let latest = everything(&log, "app_b").await;
        assert!(
            latest
                .last()
                .is_some_and(|(key, serial, _)| key == "p:0" && *serial > before.1.last().map_or(0, |e| e.1))
        );
    }

    #[tokio::test]
    async fn an_app_that_is_not_registered_stores_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = LogOutbox::open(dir.path(), ["app_a".to_owned()]).expect("open");
        log.append("app_x", vec![presence(1, 1)]);
        log.flush().await.expect("flush");
        assert_eq!(log.depth("app_x"), 0);
        log.register("app_x");
        log.append("app_x", vec![presence(1, 2)]);
        log.flush().await.expect("flush");
        assert_eq!(log.depth("app_x"), 1);
        drop(log);
        let log = LogOutbox::open(dir.path(), ["app_a".to_owned()]).expect("reopen");
        assert_eq!(log.depth("app_x"), 0, "an app the app store does not know is dropped at open");
    }
}
