//! A [`Store`] in memory, for one diagnostic only: the same fan-out run with the outbox in
//! ordered maps instead of the redb file shows how much of the fan-out's cost is the
//! durable outbox's (`presence-fanout --store memory`). It keeps the trait's semantics
//! (compaction by key, serials, acknowledgement by serial) and nothing durable: never a
//! daemon's store.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use presenced::store::{AppRecord, OutboxEntry, SessionChange, Store, StoreError, StoredSession};

/// The in-memory store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    apps: BTreeMap<String, AppRecord>,
    /// Per app: key → (serial, event), and serial → key in order.
    outboxes: HashMap<String, Outbox>,
    serial: u64,
    notifications: BTreeMap<u64, Vec<u8>>,
    running: bool,
    seq_floor: u64,
    /// TLS sessions by ticket.
    sessions: BTreeMap<Vec<u8>, StoredSession>,
}

#[derive(Debug, Default)]
struct Outbox {
    entries: HashMap<String, (u64, Vec<u8>)>,
    order: BTreeMap<u64, String>,
}

impl MemoryStore {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Store for MemoryStore {
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
        let mut inner = self.lock();
        inner.outboxes.remove(id);
        Ok(inner.apps.remove(id).is_some())
    }

    fn enqueue(&self, app_id: &str, events: &[(String, Vec<u8>)]) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        if !inner.apps.contains_key(app_id) {
            return Ok(false);
        }
        let mut serial = inner.serial;
        let outbox = inner.outboxes.entry(app_id.to_owned()).or_default();
        for (key, event) in events {
            serial += 1;
            if let Some((old, _)) = outbox.entries.insert(key.clone(), (serial, event.clone())) {
                outbox.order.remove(&old);
            }
            outbox.order.insert(serial, key.clone());
        }
        inner.serial = serial;
        Ok(true)
    }

    fn peek(
        &self,
        app_id: &str,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let inner = self.lock();
        let Some(outbox) = inner.outboxes.get(app_id) else { return Ok(Vec::new()) };
        let mut batch = Vec::new();
        let mut bytes = 0;
        for (serial, key) in &outbox.order {
            let Some((_, event)) = outbox.entries.get(key) else { continue };
            if batch.len() >= max_events.max(1) || (!batch.is_empty() && bytes + event.len() > max_bytes) {
                break;
            }
            bytes += event.len();
            batch.push(OutboxEntry { key: key.clone(), serial: *serial, event: event.clone() });
        }
        Ok(batch)
    }

    fn ack(&self, app_id: &str, delivered: &[(String, u64)]) -> Result<usize, StoreError> {
        let mut inner = self.lock();
        let Some(outbox) = inner.outboxes.get_mut(app_id) else { return Ok(0) };
        let mut removed = 0;
        for (key, serial) in delivered {
            if outbox.entries.get(key).is_some_and(|(current, _)| current == serial) {
                outbox.entries.remove(key);
                outbox.order.remove(serial);
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn depth(&self, app_id: &str) -> Result<u64, StoreError> {
        Ok(self.lock().outboxes.get(app_id).map_or(0, |outbox| outbox.entries.len() as u64))
    }

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
        self.lock().seq_floor = seq;
        Ok(())
    }

    fn save_sessions(&self, changes: &[SessionChange]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        for change in changes {
            match change {
                SessionChange::Put(session) => {
                    inner.sessions.insert(session.key.clone(), session.clone());
                }
                SessionChange::Remove(key) => {
                    inner.sessions.remove(key);
                }
            }
        }
        Ok(())
    }

    fn load_sessions(&self, since_secs: u64) -> Result<Vec<StoredSession>, StoreError> {
        let mut inner = self.lock();
        inner.sessions.retain(|_, session| session.created_secs >= since_secs);
        let mut sessions: Vec<StoredSession> = inner.sessions.values().cloned().collect();
        sessions.sort_by_key(|session| session.created_secs);
        Ok(sessions)
    }
}
