//! The redb [`Outbox`]: group commit in front, the outbox tables behind.
//!
//! ```text
//! append ──> pending (a CompactingQueue per app) ──(committer: one transaction per round)──> redb
//!                                                                  │
//!                      the appends' futures and `flush` resolve <──┘ after the fsync
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
use std::time::Duration;

use redb::{Durability, ReadableTable};
use tokio::sync::oneshot;

use super::{APPS, AT, DEPTH, EmbeddedStore, META, ORDER, OUTBOX, SERIAL, Shared, lock};
use crate::store::queue::CompactingQueue;
use crate::store::{Outbox, OutboxEntry, OutboxEvent, StoreError, StoreFuture, blocking};

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

#[derive(Debug, Default)]
struct PendingApp {
    queue: CompactingQueue,
    /// Told, after the write, whether the app was registered.
    waiters: Vec<oneshot::Sender<bool>>,
}

impl Outbox for EmbeddedStore {
    fn append(&self, app_id: &str, events: Vec<OutboxEvent>) -> StoreFuture<bool> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Box::pin(std::future::ready(Err(StoreError::NoRuntime)));
        };
        let (told, outcome) = oneshot::channel();
        {
            let mut pending = lock(&self.shared.pending);
            pending.published += 1;
            let mut next = pending.next;
            let app = pending.apps.entry(app_id.to_owned()).or_default();
            for event in events {
                next += 1;
                app.queue.push(next, event);
            }
            app.waiters.push(told);
            pending.next = next;
            if !pending.writing {
                pending.writing = true;
                let shared = self.shared.clone();
                runtime.spawn_blocking(move || commit_rounds(&shared));
            }
        }
        // The committer answers every waiter it takes; a dropped sender means it panicked.
        Box::pin(async move { outcome.await.map_err(|_| StoreError::CommitterGone) })
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

    fn depth(&self, app_id: &str) -> u64 {
        lock(&self.shared.depths).get(app_id).copied().unwrap_or(0)
    }
}

/// The committer: writes pending appends, a round at a time, until none are left.
fn commit_rounds(shared: &Shared) {
    loop {
        let (apps, generation) = {
            let mut pending = lock(&shared.pending);
            if pending.apps.is_empty() {
                pending.writing = false;
                // Everything appended so far was written (or refused) by earlier rounds.
                shared.mark_committed(pending.published);
                return;
            }
            (std::mem::take(&mut pending.apps), pending.published)
        };
        match shared.write_round(&apps) {
            Ok(known) => {
                for (app_id, app) in apps {
                    let registered = known.get(&app_id).copied().unwrap_or(false);
                    if !registered {
                        tracing::debug!(app = app_id, "webhook events for an unregistered app dropped");
                    }
                    for waiter in app.waiters {
                        // A caller that stopped waiting does not need the answer.
                        let _ = waiter.send(registered);
                    }
                }
                shared.mark_committed(generation);
            }
            Err(error) => {
                tracing::warn!(%error, "cannot write webhook events; retrying");
                std::thread::sleep(STORE_RETRY);
                let mut pending = lock(&shared.pending);
                for (app_id, mut failed) in apps {
                    if let Some(newer) = pending.apps.remove(&app_id) {
                        failed.queue.extend(newer.queue);
                        failed.waiters.extend(newer.waiters);
                    }
                    pending.apps.insert(app_id, failed);
                }
            }
        }
    }
}

impl Shared {
    /// Raises the committed generation to `generation`, never lowering it: two committers
    /// (one finishing as the next starts) may report out of order.
    fn mark_committed(&self, generation: u64) {
        self.committed.send_if_modified(|done| {
            let raised = generation > *done;
            *done = (*done).max(generation);
            raised
        });
    }

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
            let mut at = txn.open_table(AT)?;
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
                for (key, _, at_ms, event) in app.queue.entries() {
                    serial += 1;
                    let replaced = outbox.insert((app_id, key), (serial, event))?.map(|old| old.value().0);
                    match replaced {
                        Some(old_serial) => {
                            order.remove((app_id, old_serial))?;
                            at.remove((app_id, old_serial))?;
                        }
                        None => added += 1,
                    }
                    order.insert((app_id, serial), key)?;
                    at.insert((app_id, serial), at_ms)?;
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
        let txn = self.db.begin_read()?;
        let order = txn.open_table(ORDER)?;
        let outbox = txn.open_table(OUTBOX)?;
        let at = txn.open_table(AT)?;
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
            let (stored_serial, event) = value.value();
            if stored_serial != serial {
                return Err(corrupt(Some(stored_serial)));
            }
            if !entries.is_empty() && bytes + event.len() > max_bytes {
                break;
            }
            bytes += event.len();
            let at_ms = at.get((app_id, serial))?.map_or(0, |v| v.value());
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
            let mut at = txn.open_table(AT)?;
            let mut removed = 0usize;
            for (key, serial) in delivered {
                let current = outbox.get((app_id, key.as_str()))?.map(|v| v.value().0);
                if current == Some(*serial) {
                    outbox.remove((app_id, key.as_str()))?;
                    order.remove((app_id, *serial))?;
                    at.remove((app_id, *serial))?;
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
