//! [`MemoryStore`]: every storage trait in memory, nothing durable.
//!
//! It keeps the same contract as the redb store (the contract suite runs against both), so
//! it stands in for it where durability is not the point: unit tests, and the fan-out
//! bench's `presence-fanout --store memory`, which shows how much of the fan-out's cost is
//! the durable outbox's. Never a daemon's store.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::outbox::ListenerSlot;
use super::queue::CompactingQueue;
use super::{
    AppRecord, AppStore, Commit, CommitListener, Departure, NotificationStore, Outbox, OutboxEntry,
    OutboxEvent, OutboxStats, RevocationStore, RunJournal, SessionChange, StoreError, StoreFuture,
    StoredSession, TicketStore, Tombstone,
};

/// Every store in one mutex-guarded state. Appends are "durable" when they return: each is
/// its own commit, told to the listener before `append` returns.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    /// The last serial handed out, shared by all apps so a serial is never reused, even
    /// by an app id registered again.
    serial: AtomicU64,
    listener: ListenerSlot,
}

#[derive(Debug, Default)]
struct State {
    apps: BTreeMap<String, AppRecord>,
    /// Each app's queue behind a lock of its own, so that appending to one app does not
    /// wait for another app's batch or acknowledgement.
    outboxes: HashMap<String, Arc<Mutex<CompactingQueue>>>,
    notifications: BTreeMap<u64, Vec<u8>>,
    running: bool,
    seq_floor: u64,
    departures: Vec<Departure>,
    sessions: BTreeMap<Vec<u8>, StoredSession>,
    /// (app, PUID) → revoked at.
    tombstones: BTreeMap<(String, String), u64>,
}

impl MemoryStore {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// An app's queue, if it has one.
    fn queue(&self, app_id: &str) -> Option<Arc<Mutex<CompactingQueue>>> {
        self.lock().outboxes.get(app_id).cloned()
    }
}

/// Every critical section leaves its data consistent; a panic elsewhere does not make the
/// store unusable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn ready<T: Send + 'static>(value: T) -> StoreFuture<T> {
    Box::pin(std::future::ready(Ok(value)))
}

impl AppStore for MemoryStore {
    fn put_app(&self, app: &AppRecord) -> Result<(), StoreError> {
        self.lock().apps.insert(app.id.clone(), app.clone());
        Ok(())
    }

    fn get_app(&self, id: &str) -> Result<Option<AppRecord>, StoreError> {
        Ok(self.lock().apps.get(id).cloned())
    }

    fn update_app(
        &self,
        id: &str,
        change: &mut dyn FnMut(&mut AppRecord),
    ) -> Result<Option<AppRecord>, StoreError> {
        Ok(self.lock().apps.get_mut(id).map(|app| {
            change(app);
            app.clone()
        }))
    }

    fn list_apps(&self) -> Result<Vec<AppRecord>, StoreError> {
        Ok(self.lock().apps.values().cloned().collect())
    }

    fn delete_app(&self, id: &str) -> Result<bool, StoreError> {
        let mut state = self.lock();
        state.outboxes.remove(id);
        state.tombstones.retain(|(app_id, _), _| app_id != id);
        Ok(state.apps.remove(id).is_some())
    }
}

impl Outbox for MemoryStore {
    fn append(&self, app_id: &str, events: Vec<OutboxEvent>) {
        let count = events.len();
        let bytes = events.iter().map(|event| event.json.len()).sum();
        let oldest_at_ms = events.iter().map(|event| event.at_ms).min().unwrap_or(u64::MAX);
        let queue = {
            let mut state = self.lock();
            if state.apps.contains_key(app_id) {
                let queue = match state.outboxes.get(app_id) {
                    Some(queue) => queue.clone(),
                    None => {
                        let queue = Arc::default();
                        state.outboxes.insert(app_id.to_owned(), Arc::clone(&queue));
                        queue
                    }
                };
                Some(queue)
            } else {
                None
            }
        };
        // Serials are taken under the app's lock, so they increase in the app's push order.
        let depth = queue.map(|queue| {
            let mut queue = lock(&queue);
            for event in events {
                queue.push(self.serial.fetch_add(1, Ordering::Relaxed) + 1, event);
            }
            queue.len() as u64
        });
        let commit = Commit {
            app_id,
            registered: depth.is_some(),
            events: count,
            bytes,
            oldest_at_ms,
            depth: depth.unwrap_or(0),
        };
        self.listener.tell(&[commit]);
    }

    fn flush(&self) -> StoreFuture<()> {
        ready(())
    }

    fn next_batch(
        &self,
        app_id: &str,
        after: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> StoreFuture<Vec<OutboxEntry>> {
        let batch = self.queue(app_id).map(|queue| lock(&queue).batch(after, max_events, max_bytes));
        ready(batch.unwrap_or_default())
    }

    fn ack(&self, app_id: &str, delivered: Vec<(String, u64)>) -> StoreFuture<usize> {
        let Some(queue) = self.queue(app_id) else { return ready(0) };
        let mut queue = lock(&queue);
        ready(delivered.iter().filter(|(key, serial)| queue.ack(key, *serial)).count())
    }

    fn listen(&self, listener: Weak<dyn CommitListener>) {
        self.listener.set(listener);
    }

    fn writable(&self) -> bool {
        true
    }

    fn depth(&self, app_id: &str) -> u64 {
        self.queue(app_id).map_or(0, |queue| lock(&queue).len() as u64)
    }

    fn oldest_at_ms(&self, app_id: &str) -> Option<u64> {
        self.queue(app_id).and_then(|queue| lock(&queue).oldest_at_ms())
    }

    fn stats(&self) -> OutboxStats {
        let queues: Vec<_> = self.lock().outboxes.values().cloned().collect();
        let mut stats = OutboxStats::default();
        for queue in queues {
            let queue = lock(&queue);
            stats.entries += queue.len() as u64;
            stats.live_bytes += queue.bytes() as u64;
        }
        stats
    }
}

impl NotificationStore for MemoryStore {
    fn put_notification(&self, id: u64, record: &[u8]) -> Result<(), StoreError> {
        self.lock().notifications.insert(id, record.to_vec());
        Ok(())
    }

    fn notifications(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        Ok(self.lock().notifications.iter().map(|(id, record)| (*id, record.clone())).collect())
    }

    fn delete_notification(&self, id: u64) -> Result<(), StoreError> {
        self.lock().notifications.remove(&id);
        Ok(())
    }
}

impl RunJournal for MemoryStore {
    fn begin_run(&self) -> Result<bool, StoreError> {
        Ok(std::mem::replace(&mut self.lock().running, true))
    }

    fn end_run(&self) -> Result<(), StoreError> {
        self.lock().running = false;
        Ok(())
    }

    fn seq_floor(&self) -> Result<u64, StoreError> {
        Ok(self.lock().seq_floor)
    }

    fn set_seq_floor(&self, seq: u64) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.seq_floor = state.seq_floor.max(seq);
        Ok(())
    }

    fn set_departures(&self, departures: &[Departure]) -> Result<(), StoreError> {
        self.lock().departures = departures.to_vec();
        Ok(())
    }

    fn take_departures(&self) -> Result<Vec<Departure>, StoreError> {
        Ok(std::mem::take(&mut self.lock().departures))
    }
}

impl TicketStore for MemoryStore {
    fn save_sessions(&self, changes: &[SessionChange]) -> Result<(), StoreError> {
        let mut state = self.lock();
        for change in changes {
            match change {
                SessionChange::Put(session) => {
                    state.sessions.insert(session.key.clone(), session.clone());
                }
                SessionChange::Remove(key) => {
                    state.sessions.remove(key);
                }
            }
        }
        Ok(())
    }

    fn load_sessions(&self, since_secs: u64) -> Result<Vec<StoredSession>, StoreError> {
        let mut state = self.lock();
        state.sessions.retain(|_, session| session.created_secs >= since_secs);
        let mut sessions: Vec<StoredSession> = state.sessions.values().cloned().collect();
        sessions.sort_by_key(|session| session.created_secs);
        Ok(sessions)
    }
}

impl RevocationStore for MemoryStore {
    fn put_tombstone(&self, tombstone: &Tombstone) -> Result<(), StoreError> {
        let key = (tombstone.app_id.clone(), tombstone.puid.clone());
        self.lock().tombstones.insert(key, tombstone.revoked_ms);
        Ok(())
    }

    fn delete_tombstone(&self, app_id: &str, puid: &str) -> Result<bool, StoreError> {
        Ok(self.lock().tombstones.remove(&(app_id.to_owned(), puid.to_owned())).is_some())
    }

    fn list_tombstones(&self) -> Result<Vec<Tombstone>, StoreError> {
        let state = self.lock();
        let tombstones = state.tombstones.iter();
        Ok(tombstones
            .map(|((app_id, puid), &revoked_ms)| Tombstone {
                app_id: app_id.clone(),
                puid: puid.clone(),
                revoked_ms,
            })
            .collect())
    }
}
