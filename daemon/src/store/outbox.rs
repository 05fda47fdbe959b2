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
//! ## Why boxed futures
//!
//! The daemon holds `Arc<dyn Outbox>` (the implementation is chosen at start-up), and a
//! trait with `async fn` is not dyn-compatible. So the asynchronous methods return a
//! [`StoreFuture`]: boxed, `Send` and `'static`, so that the fan-out can hand the future
//! of an append to a task of its own and return to its (synchronous) caller at once. The
//! box costs one allocation per call, next to an fsync per group commit.

use std::future::Future;
use std::pin::Pin;

use super::StoreError;

/// What the asynchronous storage methods return: see the [module docs](self) for why it
/// is boxed.
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'static>>;

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
/// - **Durability.** The future of an append resolves once its events are durable (a crash
///   after that does not lose them), or once they were refused. Appends become durable in
///   call order, and [`flush`](Self::flush) waits for every earlier one.
/// - **Registered apps only.** An append for an app that is not registered stores nothing
///   and resolves to false; removing an app ([`AppStore::delete_app`](super::AppStore))
///   removes its outbox.
/// - **Batches** are the oldest entries, at most `max_events` and `max_bytes` of event
///   data, but always at least one entry when any is waiting (a single event larger than
///   the byte limit goes alone).
/// - **Acknowledgement** removes an entry only if its serial still matches. It may become
///   durable lazily: after a crash, entries acknowledged just before may be back and are
///   delivered again (webhooks are at-least-once).
/// - **Depth** is kept in memory: reading it never touches the disk.
pub trait Outbox: Send + Sync + std::fmt::Debug + 'static {
    /// Appends events to an app's outbox (see the ordering and durability rules above).
    /// Resolves to true once stored, false when no app has that id. Storage failures are
    /// the implementation's to retry; an error means it gave up and the events are lost.
    fn append(&self, app_id: &str, events: Vec<OutboxEvent>) -> StoreFuture<bool>;
    /// Resolves once every append called before is durable (or refused).
    fn flush(&self) -> StoreFuture<()>;
    /// The oldest waiting entries of an app, within the limits.
    fn next_batch(&self, app_id: &str, max_events: usize, max_bytes: usize) -> StoreFuture<Vec<OutboxEntry>>;
    /// Removes delivered entries whose serial still matches; resolves to how many went.
    fn ack(&self, app_id: &str, delivered: Vec<(String, u64)>) -> StoreFuture<usize>;
    /// Entries waiting in an app's outbox, from memory.
    fn depth(&self, app_id: &str) -> u64;
}
