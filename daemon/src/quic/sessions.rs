//! The TLS session store behind 0-RTT: rustls's [`StoresServerSessions`], kept in memory
//! and written through to the [`TicketStore`] so that resumption tickets outlive the process.
//!
//! rustls accepts 0-RTT only with stateful resumption: the server keeps each ticket's
//! session state and looks it up (and deletes it: tickets are single-use) when a client
//! resumes. With the state only in memory, every device falls back to a full handshake
//! after a restart, exactly when all of them reconnect at once. Here:
//!
//! - **The handshake path never waits for a disk.** `put` and `take` change the in-memory
//!   map under a mutex and queue the change; a writer task applies the queue in one store
//!   transaction per round (group commit: whatever queued while the previous fsync ran goes
//!   in the next). A clean shutdown writes what is queued ([`DurableSessions::flush`]).
//! - **Single use holds within a run and across a restart.** `take` removes the ticket from
//!   memory at once, and the removal reaches the disk with the next round. The residual
//!   replay window is a crash between a `take` and its round's commit (one fsync, a few
//!   milliseconds): after the restart that ticket resumes once more. That is harmless by
//!   design: only the `Hello` rides in 0-RTT, and the daemon acts on it only after the
//!   handshake completes (PROTOCOL.md §11), which a replayed flight cannot do.
//! - **Bounded.** At most `capacity` sessions (the `session_store` setting): a new one
//!   evicts the oldest. Sessions older than [`SESSION_LIFETIME`] (the ticket lifetime
//!   rustls announces for stateful tickets) are dropped: at load, as they reach the front of
//!   the queue, and when looked up.
//!
//! The stored state is the resumption secret: the database file is owner-only. Tickets
//! are time-stamped with the wall clock (it must survive a restart); a clock step changes
//! only how soon they expire.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustls::server::StoresServerSessions;
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::clock::Clock;
use crate::store::{SessionChange, StoreError, StoredSession, TicketStore};

/// How long a session may be resumed: the lifetime rustls gives stateful TLS 1.3 tickets.
pub(crate) const SESSION_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);
/// Pause before writing again after a store error.
const RETRY: Duration = Duration::from_millis(200);

/// The durable session store. Cheap to share behind an `Arc`.
pub(crate) struct DurableSessions {
    state: Mutex<State>,
    /// Wakes the writer (shared with it, so it can wait without keeping the cache alive).
    queued: Arc<Notify>,
    /// Wakes [`flush`](DurableSessions::flush) callers after each round.
    written: Notify,
    /// Taken by [`close`](DurableSessions::close), so that a stopped daemon's database is
    /// released even while rustls configurations still hold this cache.
    store: Mutex<Option<Arc<dyn TicketStore>>>,
    capacity: usize,
    clock: Clock,
    /// Counts every session taken for a resumption.
    resumed: prometheus_client::metrics::counter::Counter,
}

impl std::fmt::Debug for DurableSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableSessions").field("capacity", &self.capacity).finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    sessions: HashMap<Vec<u8>, Entry>,
    /// Issue order (a counter, not a clock), for evicting the oldest.
    order: BTreeMap<u64, Vec<u8>>,
    next: u64,
    /// Changes not yet handed to the writer, per ticket: the latest wins, and a ticket put
    /// and removed before its round needs no write at all.
    pending: HashMap<Vec<u8>, Option<StoredSession>>,
    /// Rounds started and finished, for `flush`.
    rounds_started: u64,
    rounds_done: u64,
}

struct Entry {
    order: u64,
    created_secs: u64,
    value: Vec<u8>,
}

impl State {
    fn insert(&mut self, session: StoredSession) {
        let order = self.next;
        self.next += 1;
        self.order.insert(order, session.key.clone());
        let entry = Entry { order, created_secs: session.created_secs, value: session.value };
        if let Some(old) = self.sessions.insert(session.key, entry) {
            self.order.remove(&old.order);
        }
    }

    fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        let entry = self.sessions.remove(key)?;
        self.order.remove(&entry.order);
        Some(entry)
    }

    /// Queues a removal of `key` for the disk.
    fn forget(&mut self, key: Vec<u8>) {
        match self.pending.get(&key) {
            // Never written: nothing to remove.
            Some(Some(_)) => {
                self.pending.remove(&key);
            }
            _ => {
                self.pending.insert(key, None);
            }
        }
    }

    /// Drops the oldest sessions while over `capacity` or expired.
    fn trim(&mut self, capacity: usize, oldest_live: u64) {
        while let Some((&order, key)) = self.order.first_key_value() {
            let expired = self.sessions.get(key).is_some_and(|entry| entry.created_secs < oldest_live);
            if self.sessions.len() <= capacity && !expired {
                break;
            }
            let key = key.clone();
            self.order.remove(&order);
            self.sessions.remove(&key);
            self.forget(key);
        }
    }
}

impl DurableSessions {
    /// Loads the unexpired sessions from `store` (the newest `capacity` of them) and starts
    /// the writer on the current tokio runtime.
    pub(crate) fn start(
        store: Arc<dyn TicketStore>,
        capacity: usize,
        clock: Clock,
        resumed: prometheus_client::metrics::counter::Counter,
    ) -> Result<Arc<DurableSessions>, StoreError> {
        let loaded = store.load_sessions(oldest_live(clock))?;
        let mut state = State::default();
        let skip = loaded.len().saturating_sub(capacity);
        let mut evicted = Vec::new();
        for (i, session) in loaded.into_iter().enumerate() {
            if i < skip {
                evicted.push(SessionChange::Remove(session.key));
            } else {
                state.insert(session);
            }
        }
        store.save_sessions(&evicted)?;
        debug!(sessions = state.sessions.len(), "TLS sessions loaded");
        let sessions = Arc::new(DurableSessions {
            state: Mutex::new(state),
            queued: Arc::new(Notify::new()),
            written: Notify::new(),
            store: Mutex::new(Some(store)),
            capacity,
            clock,
            resumed,
        });
        tokio::spawn(write_loop(Arc::downgrade(&sessions), sessions.queued.clone()));
        Ok(sessions)
    }

    /// Sessions held in memory.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Waits (up to `bound`) until every change made before the call is written.
    pub(crate) async fn flush(&self, bound: Duration) {
        let deadline = self.clock.tokio_now() + bound;
        let target = {
            let state = self.lock();
            // Anything pending goes in a round not started yet.
            state.rounds_started + u64::from(!state.pending.is_empty())
        };
        loop {
            let written = self.written.notified();
            if self.lock().rounds_done >= target {
                return;
            }
            self.queued.notify_one();
            if tokio::time::timeout_at(deadline, written).await.is_err() {
                warn!("TLS sessions not all written within the shutdown bound");
                return;
            }
        }
    }

    /// Writes what is queued (up to `bound`), then lets go of the store: later changes stay
    /// in memory only.
    pub(crate) async fn close(&self, bound: Duration) {
        self.flush(bound).await;
        self.store.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        self.queued.notify_one();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the maps consistent; a panic elsewhere does not
        // make them unusable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for DurableSessions {
    /// Wakes the writer so that it sees the cache gone and ends.
    fn drop(&mut self) {
        self.queued.notify_one();
    }
}

impl StoresServerSessions for DurableSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let session = StoredSession { key: key.clone(), created_secs: self.clock.unix_secs(), value };
        {
            let mut state = self.lock();
            state.insert(session.clone());
            state.pending.insert(key, Some(session));
            state.trim(self.capacity, oldest_live(self.clock));
        }
        self.queued.notify_one();
        true
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let state = self.lock();
        let entry = state.sessions.get(key)?;
        (entry.created_secs >= oldest_live(self.clock)).then(|| entry.value.clone())
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let entry = {
            let mut state = self.lock();
            let entry = state.remove(key)?;
            state.forget(key.to_vec());
            entry
        };
        self.queued.notify_one();
        let live = (entry.created_secs >= oldest_live(self.clock)).then_some(entry.value);
        if live.is_some() {
            self.resumed.inc();
        }
        live
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// The writer: one store transaction per round, on the blocking pool. Ends when the
/// sessions are dropped.
async fn write_loop(sessions: std::sync::Weak<DurableSessions>, queued: Arc<Notify>) {
    loop {
        let Some(this) = sessions.upgrade() else { return };
        let changes: Vec<SessionChange> = {
            let mut state = this.lock();
            if state.pending.is_empty() {
                None
            } else {
                state.rounds_started += 1;
                Some(
                    state
                        .pending
                        .drain()
                        .map(|(key, change)| change.map_or(SessionChange::Remove(key), SessionChange::Put))
                        .collect(),
                )
            }
        }
        .unwrap_or_default();
        if changes.is_empty() {
            // Hold no strong reference while idle, so dropping the cache ends the task.
            drop(this);
            // A wake-up sent meanwhile is kept as a permit, so none is lost.
            queued.notified().await;
            continue;
        }
        let Some(store) = this.store.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone() else {
            // Closed: the changes have nowhere to go.
            this.lock().rounds_done += 1;
            this.written.notify_waiters();
            continue;
        };
        let result = tokio::task::spawn_blocking(move || {
            let result = store.save_sessions(&changes);
            result.map_err(|error| (error, changes))
        })
        .await;
        match result {
            Ok(Ok(())) => {
                this.lock().rounds_done += 1;
                this.written.notify_waiters();
            }
            Ok(Err((error, changes))) => {
                warn!(%error, "cannot write TLS sessions; retrying");
                {
                    // Put the round back under anything newer for the same tickets.
                    let mut state = this.lock();
                    state.rounds_started -= 1;
                    for change in changes {
                        let (key, value) = match change {
                            SessionChange::Put(session) => (session.key.clone(), Some(session)),
                            SessionChange::Remove(key) => (key, None),
                        };
                        state.pending.entry(key).or_insert(value);
                    }
                }
                drop(this);
                tokio::time::sleep(RETRY).await;
            }
            Err(error) => warn!(%error, "TLS session write task failed"),
        }
    }
}

/// The issue time of the oldest session still resumable.
fn oldest_live(clock: Clock) -> u64 {
    clock.unix_secs().saturating_sub(SESSION_LIFETIME.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;

    fn open(dir: &std::path::Path) -> Arc<dyn TicketStore> {
        Arc::new(EmbeddedStore::open(&dir.join("s.redb")).expect("store"))
    }

    #[tokio::test]
    async fn tickets_survive_a_restart_and_stay_single_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let sessions = DurableSessions::start(open(dir.path()), 10, Clock::system(), Default::default())
                .expect("start");
            assert!(sessions.put(vec![1; 32], b"one".to_vec()));
            assert!(sessions.put(vec![2; 32], b"two".to_vec()));
            assert!(sessions.put(vec![3; 32], b"three".to_vec()));
            assert_eq!(sessions.take(&[2; 32]), Some(b"two".to_vec()));
            assert_eq!(sessions.take(&[2; 32]), None, "single use within a run");
            assert_eq!(sessions.get(&[1; 32]), Some(b"one".to_vec()));
            sessions.flush(Duration::from_secs(5)).await;
        }
        let resumed = prometheus_client::metrics::counter::Counter::<u64>::default();
        let sessions =
            DurableSessions::start(open(dir.path()), 10, Clock::system(), resumed.clone()).expect("restart");
        assert_eq!(sessions.len(), 2);
        assert_eq!(sessions.take(&[2; 32]), None, "single use across the restart");
        assert_eq!(resumed.get(), 0, "a take that finds nothing resumes nothing");
        assert_eq!(sessions.take(&[1; 32]), Some(b"one".to_vec()));
        assert_eq!(resumed.get(), 1, "one resumption counted");
        sessions.flush(Duration::from_secs(5)).await;
        drop(sessions);
        let sessions = DurableSessions::start(open(dir.path()), 10, Clock::system(), Default::default())
            .expect("restart again");
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions.take(&[3; 32]), Some(b"three".to_vec()));
    }

    #[tokio::test]
    async fn the_oldest_go_beyond_capacity_in_memory_and_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        {
            let sessions =
                DurableSessions::start(store.clone(), 3, Clock::system(), Default::default()).expect("start");
            for key in 1..=5u8 {
                sessions.put(vec![key; 32], vec![key]);
            }
            assert_eq!(sessions.len(), 3);
            assert_eq!(sessions.take(&[1; 32]), None, "evicted");
            assert_eq!(sessions.get(&[5; 32]), Some(vec![5]));
            sessions.flush(Duration::from_secs(5)).await;
        }
        let stored: Vec<Vec<u8>> =
            store.load_sessions(0).expect("load").into_iter().map(|s| s.value).collect();
        assert_eq!(stored.len(), 3, "the disk holds no more than memory: {stored:?}");
        // A smaller capacity at the next start keeps the newest.
        let sessions =
            DurableSessions::start(store.clone(), 2, Clock::system(), Default::default()).expect("restart");
        assert_eq!(sessions.len(), 2);
        assert_eq!(sessions.get(&[3; 32]), None);
        assert_eq!(store.load_sessions(0).expect("load").len(), 2);
    }

    #[tokio::test]
    async fn expired_sessions_are_not_resumed_or_loaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let old = Clock::system().unix_secs() - SESSION_LIFETIME.as_secs() - 10;
        store
            .save_sessions(&[
                SessionChange::Put(StoredSession { key: vec![1; 32], created_secs: old, value: vec![1] }),
                SessionChange::Put(StoredSession {
                    key: vec![2; 32],
                    created_secs: Clock::system().unix_secs(),
                    value: vec![2],
                }),
            ])
            .expect("save");
        let sessions =
            DurableSessions::start(store.clone(), 10, Clock::system(), Default::default()).expect("start");
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions.take(&[1; 32]), None);
        assert_eq!(sessions.take(&[2; 32]), Some(vec![2]));
        // An expired entry in memory is refused too, and trimmed by the next put.
        sessions.lock().insert(StoredSession { key: vec![3; 32], created_secs: old, value: vec![3] });
        assert_eq!(sessions.get(&[3; 32]), None);
        sessions.put(vec![4; 32], vec![4]);
        assert_eq!(sessions.len(), 1);
    }
}
