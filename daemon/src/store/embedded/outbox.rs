//! The redb [`Outbox`]: group commit in front, the outbox tables behind.
//!
//! ```text
//! append ──> pending (a CompactingQueue per app) ──(committer: one transaction per round)──> redb
//!                                                                  │
//!              the listener is told, then `flush` resolves <───────┘ after the fsync
//! ```
//!
//! - **Group commit.** `append` only queues its events (compacted, in call order) and, if
//!   no committer is running, starts one on the blocking pool. The committer writes
//!   whatever accumulated while its previous write (an fsync) ran, every app in one
//!   transaction, until nothing is pending. Under light load an event is on disk within one
//!   fsync; under heavy load the writes batch themselves, with no timer adding latency,
//!   and redb's single writer sees one transaction per round, not one per event.
//! - **Failures are retried** here: a failed round goes back in front of what was appended
//!   meanwhile (compacted again) and is retried after [`STORE_RETRY`]. An append's future
//!   resolves only once its events are stored or refused, so `flush` means durable.
//! - **Acknowledgements** commit without an fsync (`Durability::None`) and become durable
//!   with the next durable commit, normally the next append. Losing one in a crash only
//!   means its batch is delivered again, under the same `webhook-id`. In exchange delivery
//!   pays one fsync per batch (the append), not two.
//! - **Depth** is kept in memory, adjusted after each commit under the lock that orders the
//!   outbox's writes, so reading it is a map lookup.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use redb::{Durability, ReadableTable};
use tokio::sync::watch;

use super::{APPS, DEPTH, EmbeddedStore, META, ORDER, OUTBOX, SERIAL, Shared, lock};
use crate::store::queue::CompactingQueue;
use crate::store::{
    Commit, CommitListener, Outbox, OutboxEntry, OutboxEvent, StoreError, StoreFuture, blocking,
};

/// Delay before a failed group commit is tried again.
const STORE_RETRY: Duration = Duration::from_millis(200);

/// Appends not yet written.
#[derive(Debug, Default)]
pub(super) struct Pending {
    apps: HashMap<String, PendingApp>,
    /// Bumped by every append, so `flush` knows what it waits for.
    published: u64,
    /// Placeholder serials, for order inside the pending queues only: the committer hands
    /// out the stored ones.
    next: u64,
    /// Whether a committer is running.
    writing: bool,
}

#[derive(Debug)]
struct PendingApp {
    queue: CompactingQueue,
    /// Events and bytes appended before compaction, and the oldest `at_ms`: what the
    /// listener is told.
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

impl Outbox for EmbeddedStore {
    fn append(&self, app_id: &str, events: Vec<OutboxEvent>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return tracing::error!(app = app_id, "webhook events appended outside a tokio runtime: dropped");
        };
        let mut pending = lock(&self.shared.pending);
        pending.published += 1;
        let mut next = pending.next;
        if !pending.apps.contains_key(app_id) {
            pending.apps.insert(app_id.to_owned(), PendingApp::default());
        }
        if let Some(app) = pending.apps.get_mut(app_id) {
            for event in events {
                next += 1;
                app.push(next, event);
            }
        }
        pending.next = next;
        if !pending.writing {
            pending.writing = true;
            let shared = self.shared.clone();
            runtime.spawn_blocking(move || commit_rounds(shared));
        }
    }

    fn flush(&self) -> StoreFuture<()> {
        let target = lock(&self.shared.pending).published;
        let mut committed = self.shared.committed.subscribe();
        Box::pin(async move {
            // The sender lives in the store this future was made from; if the store is
            // gone, nothing more can be written either.
            committed.wait_for(|done| *done >= target).await.map_err(|_| StoreError::CommitterGone)?;
            Ok(())
        })
    }

    fn next_batch(&self, app_id: &str, max_events: usize, max_bytes: usize) -> StoreFuture<Vec<OutboxEntry>> {
        let (shared, app_id) = (self.shared.clone(), app_id.to_owned());
        Box::pin(blocking(move || shared.peek(&app_id, max_events, max_bytes)))
    }

    fn ack(&self, app_id: &str, delivered: Vec<(String, u64)>) -> StoreFuture<usize> {
        let (shared, app_id) = (self.shared.clone(), app_id.to_owned());
        Box::pin(blocking(move || shared.ack(&app_id, &delivered)))
    }

    fn listen(&self, listener: Weak<dyn CommitListener>) {
        self.shared.listener.set(listener);
    }

    fn depth(&self, app_id: &str) -> u64 {
        lock(&self.shared.depths).get(app_id).copied().unwrap_or(0)
    }

    fn writable(&self) -> bool {
        !self.shared.failing.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The committer: writes pending appends, a round at a time, until none are left.
///
/// It lets go of the store *before* it reports the last round: whoever was told "stored"
/// may drop the store and reopen the file at once (a restart), and must not find it still
/// open here.
fn commit_rounds(shared: Arc<Shared>) {
    let committed = shared.committed.clone();
    let _running = Running(Arc::downgrade(&shared));
    let mut shared = Some(shared);
    while let Some(store) = shared.take() {
        let (apps, generation) = {
            let mut pending = lock(&store.pending);
            if pending.apps.is_empty() {
                // Everything appended so far was written (or refused) by earlier rounds.
                pending.writing = false;
                mark_committed(&committed, pending.published);
                return;
            }
            (std::mem::take(&mut pending.apps), pending.published)
        };
        match store.write_round(&apps) {
            Ok(known) => {
                let depths: Vec<u64> = {
                    let depths = lock(&store.depths);
                    apps.keys().map(|app_id| depths.get(app_id).copied().unwrap_or(0)).collect()
                };
                let listener = store.listener.get();
                {
                    let mut pending = lock(&store.pending);
                    if pending.apps.is_empty() {
                        pending.writing = false;
                    } else {
                        shared = Some(store.clone());
                    }
                }
                drop(store);
                report(listener, &apps, &known, &depths);
                mark_committed(&committed, generation);
            }
            Err(error) => {
                if Arc::strong_count(&store) == 1 {
                    // Every handle is gone (the daemon stopped): nobody is left to deliver
                    // these, and retrying forever would keep the runtime from shutting down.
                    let lost: usize = apps.values().map(|app| app.events).sum();
                    tracing::error!(%error, lost, "webhook events not written: the store closed while its writes failed");
                    lock(&store.pending).writing = false;
                    return;
                }
                tracing::warn!(%error, "cannot write webhook events; retrying");
                std::thread::sleep(STORE_RETRY);
                {
                    let mut pending = lock(&store.pending);
                    for (app_id, mut failed) in apps {
                        if let Some(newer) = pending.apps.remove(&app_id) {
                            failed.extend(newer);
                        }
                        pending.apps.insert(app_id, failed);
                    }
                }
                shared = Some(store);
            }
        }
    }
}

/// Tells the listener what a round stored: per app, in the order of `apps`' keys (the
/// order `depths` was read in).
fn report(
    listener: Option<Arc<dyn CommitListener>>,
    apps: &HashMap<String, PendingApp>,
    known: &HashMap<String, bool>,
    depths: &[u64],
) {
    let commits: Vec<Commit<'_>> = apps
        .iter()
        .zip(depths)
        .map(|((app_id, app), &depth)| {
            let registered = known.get(app_id).copied().unwrap_or(false);
            if !registered {
                tracing::debug!(app = app_id, "webhook events for an unregistered app dropped");
            }
            Commit {
                app_id,
                registered,
                events: app.events,
                bytes: app.bytes,
                oldest_at_ms: app.oldest_at_ms,
                depth,
            }
        })
        .collect();
    if let Some(listener) = listener {
        listener.committed(&commits);
    }
}

/// Raises the committed generation to `generation`, never lowering it: two committers (one
/// finishing as the next starts) may report out of order.
fn mark_committed(committed: &watch::Sender<u64>, generation: u64) {
    committed.send_if_modified(|done| {
        let raised = generation > *done;
        *done = (*done).max(generation);
        raised
    });
}

/// Lets the next append start a committer if this one panics (its round's waiters see
/// [`StoreError::CommitterGone`]); on a normal return the loop has already cleared the flag.
struct Running(Weak<Shared>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade().filter(|_| std::thread::panicking()) {
            lock(&shared.pending).writing = false;
        }
    }
}

impl Shared {
    /// One group commit: every pending app's events in one durable transaction. Returns,
    /// per app, whether it is registered (an unregistered one got nothing stored: checked
    /// inside the transaction, so an app removed concurrently never keeps an outbox).
    fn write_round(&self, apps: &HashMap<String, PendingApp>) -> Result<HashMap<String, bool>, StoreError> {
        let _writes = lock(&self.outbox_writes);
        let (known, added) = self.write(Durability::Immediate, |txn| {
            let registered = txn.open_table(APPS)?;
            let mut meta = txn.open_table(META)?;
            let mut serial = meta.get(SERIAL)?.map_or(0, |v| v.value());
            let mut outbox = txn.open_table(OUTBOX)?;
            let mut order = txn.open_table(ORDER)?;
            let mut depth = txn.open_table(DEPTH)?;
            let mut known = HashMap::new();
            let mut added_per_app = Vec::new();
            for (app_id, app) in apps {
                let app_id = app_id.as_str();
                let is_known = registered.get(app_id)?.is_some();
                known.insert(app_id.to_owned(), is_known);
                if !is_known {
                    continue;
                }
                let mut added = 0u64;
                let mut stored = Vec::new();
                for (key, _, version, at_ms, event) in app.queue.entries() {
                    serial += 1;
                    encode_event(&mut stored, version, at_ms, event);
                    let replaced = outbox
                        .insert((app_id, key), (serial, stored.as_slice()))?
                        .map(|old| (old.value().0, old.value().1.to_vec()));
                    match replaced {
                        // A stored event of this key with a higher version is newer state than
                        // this one, which was appended late (see `OutboxEvent::version`): it
                        // goes back, as it was. Rare, so the common path costs one insert.
                        Some((old_serial, old)) if decode_event(&old).version > version => {
                            outbox.insert((app_id, key), (old_serial, old.as_slice()))?;
                            continue;
                        }
                        Some((old_serial, _)) => {
                            order.remove((app_id, old_serial))?;
                        }
                        None => added += 1,
                    }
                    order.insert((app_id, serial), key)?;
                }
                if added > 0 {
                    let now = depth.get(app_id)?.map_or(0, |v| v.value());
                    depth.insert(app_id, now + added)?;
                    added_per_app.push((app_id.to_owned(), added));
                }
            }
            meta.insert(SERIAL, serial)?;
            Ok((known, added_per_app))
        })?;
        for (app_id, added) in added {
            self.adjust_depth(&app_id, added, 0);
        }
        Ok(known)
    }

    fn peek(
        &self,
        app_id: &str,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let txn = self.begin_read()?;
        let order = txn.open_table(ORDER)?;
        let outbox = txn.open_table(OUTBOX)?;
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        for item in order.range((app_id, 0)..=(app_id, u64::MAX))? {
            if entries.len() >= max_events.max(1) {
                break;
            }
            let (position, key) = item?;
            let serial = position.value().1;
            let key = key.value().to_owned();
            let corrupt = |found| StoreError::OutboxOrder { app: app_id.to_owned(), serial, found };
            let value = outbox.get((app_id, key.as_str()))?.ok_or_else(|| corrupt(None))?;
            let (stored_serial, stored) = value.value();
            if stored_serial != serial {
                return Err(corrupt(Some(stored_serial)));
            }
            let Stored { at_ms, json: event, .. } = decode_event(stored);
            if !entries.is_empty() && bytes + event.len() > max_bytes {
                break;
            }
            bytes += event.len();
            entries.push(OutboxEntry { key, serial, at_ms, event: event.to_vec() });
        }
        Ok(entries)
    }

    fn ack(&self, app_id: &str, delivered: &[(String, u64)]) -> Result<usize, StoreError> {
        if delivered.is_empty() {
            return Ok(0);
        }
        let _writes = lock(&self.outbox_writes);
        let removed = self.write(Durability::None, |txn| {
            let mut outbox = txn.open_table(OUTBOX)?;
            let mut order = txn.open_table(ORDER)?;
            let mut removed = 0usize;
            for (key, serial) in delivered {
                let current = outbox.get((app_id, key.as_str()))?.map(|v| v.value().0);
                if current == Some(*serial) {
                    outbox.remove((app_id, key.as_str()))?;
                    order.remove((app_id, *serial))?;
                    removed += 1;
                }
            }
            if removed > 0 {
                let mut depth = txn.open_table(DEPTH)?;
                let now = depth.get(app_id)?.map_or(0, |v| v.value());
                let left = now.saturating_sub(removed as u64);
                if left == 0 {
                    depth.remove(app_id)?;
                } else {
                    depth.insert(app_id, left)?;
                }
            }
            Ok(removed)
        })?;
        self.adjust_depth(app_id, 0, removed as u64);
        Ok(removed)
    }
}

/// The stored form of an event: its `at` and its version (8 bytes each, big-endian), then
/// its JSON. `buffer` is reused across the events of a round.
fn encode_event(buffer: &mut Vec<u8>, version: u64, at_ms: u64, json: &[u8]) {
    buffer.clear();
    // Kept below 2^56 so that the first byte is 0 (see `decode_event`).
    buffer.extend_from_slice(&at_ms.min((1 << 56) - 1).to_be_bytes());
    buffer.extend_from_slice(&version.to_be_bytes());
    buffer.extend_from_slice(json);
}

/// A stored event, read back.
#[derive(Debug, PartialEq, Eq)]
struct Stored<'a> {
    at_ms: u64,
    version: u64,
    json: &'a [u8],
}

/// A stored event's parts. An event stored by an older daemon is JSON alone: it starts
/// with `{`, where an `at` (below 2^56 ms, the year 2,000,000) starts with 0; its `at` and
/// version read as 0 (unknown, and replaced by any newer event).
fn decode_event(stored: &[u8]) -> Stored<'_> {
    if stored.first() == Some(&0) {
        if let Some((at, rest)) = stored.split_first_chunk::<8>() {
            if let Some((version, json)) = rest.split_first_chunk::<8>() {
                return Stored {
                    at_ms: u64::from_be_bytes(*at),
                    version: u64::from_be_bytes(*version),
                    json,
                };
            }
        }
    }
    Stored { at_ms: 0, version: 0, json: stored }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_events_carry_their_at_and_version_and_older_ones_still_read() {
        let mut stored = Vec::new();
        encode_event(&mut stored, 9, 1_764_400_000_123, br#"{"a":1}"#);
        assert_eq!(
            decode_event(&stored),
            Stored { at_ms: 1_764_400_000_123, version: 9, json: br#"{"a":1}"# }
        );
        let old = br#"{"type":"presence","at":1}"#;
        assert_eq!(decode_event(old), Stored { at_ms: 0, version: 0, json: old });
        assert_eq!(decode_event(b"{}"), Stored { at_ms: 0, version: 0, json: b"{}" }, "shorter than an at");
    }
}
