//! The webhook outbox ([`Outbox`]): per app, the events not yet delivered.
//!
//! It is *state-compacted*: every entry has a key, and appending an entry whose key is
//! already waiting replaces it and moves it to the back. Presence events are keyed by PUID,
//! so an outbox grows with the number of distinct PUIDs that changed, never with the
//! number of flaps; notification outcomes have unique keys, so every one is delivered.
//!
//! Every version of an entry has a serial, increasing and never reused: a batch is
//! acknowledged by (key, serial), so an acknowledgement of an entry replaced while its
//! batch was in flight leaves the newer content waiting.
//!
//! ## Appends are told, not awaited
//!
//! [`append`](Outbox::append) is on the hot path (every status change of every app) and
//! returns nothing: its events take their place at once, and the outbox tells its
//! [`CommitListener`] (the fan-out) once per group commit what became durable, per app.
//! A future per append, which the fan-out would have to await one by one, cost more than
//! the append itself (an allocation, a channel, a task hop per status change).
//!
//! ## Why boxed futures
//!
//! The daemon holds `Arc<dyn Outbox>` (the implementation is chosen at start-up), and a
//! trait with `async fn` is not dyn-compatible. So the asynchronous methods (flush, batch,
//! acknowledgement: a few per delivered batch) return a [`StoreFuture`]: boxed, `Send` and
//! `'static`. The box costs one allocation per call, next to an fsync per group commit.

use std::future::Future;
use std::pin::Pin;
use std::sync::Weak;

use super::StoreError;

/// What the asynchronous storage methods return: see the [module docs](self) for why it
/// is boxed.
pub(crate) type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'static>>;

/// One event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// The compaction key: `p:<puid>` for presence, `a:<puid>` for grant/revoke,
    /// `n:<notification id>:<puid>` for notification outcomes, `r` for a reset.
    pub key: String,
    /// Orders the events of one key: a waiting event is replaced only by one whose version
    /// is at least its own. Presence events carry their `seq`, because the table hands its
    /// events over after releasing its locks, so two changes of one PUID may be appended in
    /// the other order; the higher `seq` is the newer state and must win. Events that are
    /// not state (grant, revoke, outcomes, reset) carry 0 and always replace.
    pub version: u64,
    /// The event's `at`, Unix milliseconds: kept beside the JSON so that the delivery
    /// latency is measured without parsing it again.
    pub at_ms: u64,
    /// The event, serialized JSON (one element of the webhook body's `events` array).
    pub json: Vec<u8>,
}

/// One undelivered event, as a batch hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The compaction key (see [`OutboxEvent::key`]).
    pub key: String,
    /// This version's position in the app's outbox, increasing; a replacement gets a new one.
    pub serial: u64,
    /// The event's `at`, Unix milliseconds; 0 when unknown (entries stored by a daemon
    /// older than this field).
    pub at_ms: u64,
    /// The event, serialized JSON.
    pub event: Vec<u8>,
}

/// What one group commit made durable for one app, as its [`CommitListener`] is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit<'a> {
    /// The app the events were appended for.
    pub app_id: &'a str,
    /// False when no app has that id: nothing was stored.
    pub registered: bool,
    /// Events appended (before compaction) that this commit made durable.
    pub events: usize,
    /// Their JSON bytes, before compaction.
    pub bytes: usize,
    /// The smallest [`OutboxEvent::at_ms`] among them: when the oldest became news, so a
    /// batch window is counted from the change, not from the fsync.
    pub oldest_at_ms: u64,
    /// Entries waiting in the app's outbox after this commit.
    pub depth: u64,
}

/// What an outbox holds and what it costs on disk, across every app.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Entries waiting.
    pub entries: u64,
    /// Their event bytes.
    pub live_bytes: u64,
    /// Bytes its files take (0 for an outbox that keeps nothing on disk).
    pub disk_bytes: u64,
    /// Compactions run since it was opened.
    pub compactions: u64,
}

/// Told of every group commit, once per commit, after it is durable; see the
/// [module docs](self). Called from whatever thread commits (a blocking-pool thread for
/// redb, the appending thread for the in-memory outbox): keep it short and never block.
pub trait CommitListener: Send + Sync {
    /// `commits` has one entry per app that had appends in the commit.
    fn committed(&self, commits: &[Commit<'_>]);
}

/// The webhook outbox. Implementations are internally synchronized and cheap to call from
/// many tasks.
///
/// The contract (checked for every implementation by the contract suite):
///
/// - **Compaction.** One live entry per (app, key); a newer event for a waiting key
///   replaces it and takes a new serial at the back, unless its
///   [`version`](OutboxEvent::version) is below the waiting one's (then it is dropped).
///   Within one append the last event of a key wins, under the same rule.
/// - **Order.** [`append`](Self::append) takes its place when it is *called*, not when its
///   future is polled: appends from one task land in call order.
/// - **Durability.** Appends become durable in call order, by group commits; each commit
///   is reported to the [listener](Self::listen) once durable (a crash after that does not
///   lose it), and [`flush`](Self::flush) waits for every earlier append.
/// - **Registered apps only.** An append for an app that is not registered stores nothing
///   and is reported with `registered: false`; removing an app ([`AppStore::delete_app`](super::AppStore))
///   removes its outbox.
/// - **Batches** are the oldest entries, at most `max_events` and `max_bytes` of event
///   data, but always at least one entry when any is waiting (a single event larger than
///   the byte limit goes alone).
/// - **Acknowledgement** removes an entry only if its serial still matches. It may become
///   durable lazily: after a crash, entries acknowledged just before may be back and are
///   delivered again (webhooks are at-least-once).
/// - **Depth** is kept in memory: reading it never touches the disk.
pub trait Outbox: Send + Sync + std::fmt::Debug + 'static {
    /// Appends events to an app's outbox and returns at once (see the ordering and
    /// durability rules above); the listener hears when they are durable. Storage failures
    /// are the implementation's to retry. Called on a tokio runtime (redb commits on its
    /// blocking pool); elsewhere the events are dropped with an error log.
    fn append(&self, app_id: &str, events: Vec<OutboxEvent>);
    /// Resolves once every append called before is durable (or refused); an error means
    /// the outbox gave up (its committer is gone) and what was pending is lost.
    fn flush(&self) -> StoreFuture<()>;
    /// Sets who is told of commits (replacing any earlier listener). Held weakly, so a
    /// listener that owns the outbox makes no cycle; commits after it is dropped go untold.
    fn listen(&self, listener: Weak<dyn CommitListener>);
    /// The oldest waiting entries of an app whose serial is above `after` (0: from the
    /// front), within the limits. The fan-out passes the last serial of its batches in
    /// flight, so the next batch holds only what they do not.
    fn next_batch(
        &self,
        app_id: &str,
        after: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> StoreFuture<Vec<OutboxEntry>>;
    /// Removes delivered entries whose serial still matches; resolves to how many went.
    fn ack(&self, app_id: &str, delivered: Vec<(String, u64)>) -> StoreFuture<usize>;
    /// Entries waiting in an app's outbox, from memory.
    fn depth(&self, app_id: &str) -> u64;
    /// The `at` of the oldest entry waiting for an app, if any: how late its deliveries
    /// run. From memory.
    fn oldest_at_ms(&self, app_id: &str) -> Option<u64>;
    /// What the outbox holds and costs, for `/metrics`. From memory.
    fn stats(&self) -> OutboxStats;
    /// False while its writes fail (a full disk, an I/O error): appends wait in memory,
    /// compacted, and are retried; what is stored keeps being delivered once the store
    /// reads again. From memory.
    fn writable(&self) -> bool;
}

/// Where an outbox keeps its [`CommitListener`]: set rarely (at start-up), read once per
/// commit.
#[derive(Default)]
pub(crate) struct ListenerSlot(std::sync::Mutex<Option<Weak<dyn CommitListener>>>);

impl ListenerSlot {
    pub(crate) fn set(&self, listener: Weak<dyn CommitListener>) {
        *self.lock() = Some(listener);
    }

    /// The listener, if one was set and is still alive.
    pub(crate) fn get(&self) -> Option<std::sync::Arc<dyn CommitListener>> {
        self.lock().as_ref().and_then(Weak::upgrade)
    }

    /// Tells the listener, if any, of one commit.
    pub(crate) fn tell(&self, commits: &[Commit<'_>]) {
        if let Some(listener) = self.get() {
            listener.committed(commits);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Weak<dyn CommitListener>>> {
        // Holds a pointer and nothing else: a panic elsewhere cannot leave it half-written.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl std::fmt::Debug for ListenerSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerSlot").field("set", &self.lock().is_some()).finish()
    }
}
