//! The embedded [`Store`]: one redb file in the data directory (`<data-dir>/presenced.redb`).
//!
//! redb gives ACID transactions with copy-on-write B-trees and a checksummed commit, so a
//! daemon killed with `kill -9` reopens the file at its last committed transaction: an
//! outbox entry is either durably there or was never acknowledged to the caller.
//!
//! ## Tables
//!
//! | table          | key                 | value                 | why                               |
//! |----------------|---------------------|-----------------------|-----------------------------------|
//! | `apps`         | app id              | [`AppRecord`] as JSON | JSON survives added fields        |
//! | `outbox`       | (app id, key)       | (serial, event)       | compaction: one entry per key     |
//! | `outbox_order` | (app id, serial)    | key                   | peek is a range scan in order     |
//! | `outbox_depth` | app id              | entries waiting       | depth without a scan              |
//! | `meta`         | name                | u64                   | serial counter, run flag, seq floor |
//! | `tls_sessions` | ticket              | (issued secs, state)  | 0-RTT resumption across restarts  |
//!
//! Serials come from one counter shared by all apps and are never reused, so a serial
//! names one version of one entry for good: an acknowledgement that carries a replaced
//! entry's old serial cannot remove the newer content.
//!
//! ## Durability
//!
//! Every write commits with an fsync except [`ack`](Store::ack), which commits without one
//! (redb's `Durability::None`) and becomes durable with the next durable commit, normally
//! the next enqueue. Losing an acknowledgement in a crash only means its batch is delivered
//! again, under the same `webhook-id`: webhooks are at-least-once anyway. In exchange the
//! delivery path pays one fsync per batch (the enqueue), not two, and acknowledgements of
//! many apps do not queue behind each other's fsyncs on redb's single writer.

use std::path::Path;

use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

use super::{AppRecord, OutboxEntry, SessionChange, Store, StoreError, StoredSession};

/// The file name the daemon uses inside its data directory.
pub const FILE_NAME: &str = "presenced.redb";

const APPS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("apps");
const OUTBOX: TableDefinition<'_, (&str, &str), (u64, &[u8])> = TableDefinition::new("outbox");
const ORDER: TableDefinition<'_, (&str, u64), &str> = TableDefinition::new("outbox_order");
const DEPTH: TableDefinition<'_, &str, u64> = TableDefinition::new("outbox_depth");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const NOTIFICATIONS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("notifications");
const SESSIONS: TableDefinition<'_, &[u8], (u64, &[u8])> = TableDefinition::new("tls_sessions");

/// The `meta` key of the last serial handed out.
const SERIAL: &str = "serial";
/// The `meta` key that is 1 while a run is in progress.
const RUNNING: &str = "running";
/// The `meta` key of the highest presence `seq` recorded.
const SEQ_FLOOR: &str = "seq_floor";

/// A [`Store`] in a single redb file.
///
/// redb serializes write transactions internally and lets reads run beside them, so one
/// `EmbeddedStore` is shared by every task (behind an `Arc`) without a lock of its own.
/// Methods block on disk I/O (a write commits with an fsync); async callers should run
/// them on a blocking thread.
#[derive(Debug)]
pub struct EmbeddedStore {
    db: Database,
}

impl EmbeddedStore {
    /// Opens (or creates) the database at `path` and makes sure every table exists, so
    /// that read transactions never meet a missing table.
    pub fn open(path: &Path) -> Result<EmbeddedStore, StoreError> {
        let db = Database::create(path).map_err(backend)?;
        let txn = db.begin_write().map_err(backend)?;
        {
            txn.open_table(APPS).map_err(backend)?;
            txn.open_table(OUTBOX).map_err(backend)?;
            txn.open_table(ORDER).map_err(backend)?;
            txn.open_table(DEPTH).map_err(backend)?;
            txn.open_table(META).map_err(backend)?;
            txn.open_table(NOTIFICATIONS).map_err(backend)?;
            txn.open_table(SESSIONS).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        Ok(EmbeddedStore { db })
    }

    fn write<T>(
        &self,
        body: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.write_with(Durability::Immediate, body)
    }

    fn write_with<T>(
        &self,
        durability: Durability,
        body: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut txn = self.db.begin_write().map_err(backend)?;
        txn.set_durability(durability);
        // On an error the transaction is dropped, which aborts it: nothing half-done lands.
        let value = body(&txn)?;
        txn.commit().map_err(backend)?;
        Ok(value)
    }
}

/// Every redb error type converts into `redb::Error`; the store reports them as text
/// because callers can only log them or give up.
fn backend(error: impl Into<redb::Error>) -> StoreError {
    StoreError::Backend(error.into().to_string())
}

fn decode_app(bytes: &[u8]) -> Result<AppRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { table: "apps", detail: e.to_string() })
}

/// Removes every outbox entry of `app_id`; returns how many there were.
fn clear_outbox(txn: &WriteTransaction, app_id: &str) -> Result<u64, StoreError> {
    let mut order = txn.open_table(ORDER).map_err(backend)?;
    let mut outbox = txn.open_table(OUTBOX).map_err(backend)?;
    let mut keys = Vec::new();
    for item in order.range((app_id, 0)..=(app_id, u64::MAX)).map_err(backend)? {
        let (serial, key) = item.map_err(backend)?;
        keys.push((serial.value().1, key.value().to_owned()));
    }
    for (serial, key) in &keys {
        order.remove((app_id, *serial)).map_err(backend)?;
        outbox.remove((app_id, key.as_str())).map_err(backend)?;
    }
    txn.open_table(DEPTH).map_err(backend)?.remove(app_id).map_err(backend)?;
    Ok(keys.len() as u64)
}

impl Store for EmbeddedStore {
    fn put_app(&self, app: &AppRecord) -> Result<(), StoreError> {
        let json = serde_json::to_vec(app).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.write(|txn| {
            txn.open_table(APPS)
                .map_err(backend)?
                .insert(app.id.as_str(), json.as_slice())
                .map_err(backend)?;
            Ok(())
        })
    }

    fn get_app(&self, id: &str) -> Result<Option<AppRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let apps = txn.open_table(APPS).map_err(backend)?;
        let found = apps.get(id).map_err(backend)?;
        found.map(|bytes| decode_app(bytes.value())).transpose()
    }

    fn update_app(
        &self,
        id: &str,
        change: &mut dyn FnMut(&mut AppRecord),
    ) -> Result<Option<AppRecord>, StoreError> {
        self.write(|txn| {
            let mut apps = txn.open_table(APPS).map_err(backend)?;
            let Some(mut app) =
                apps.get(id).map_err(backend)?.map(|bytes| decode_app(bytes.value())).transpose()?
            else {
                return Ok(None);
            };
            change(&mut app);
            let json = serde_json::to_vec(&app).map_err(|e| StoreError::Backend(e.to_string()))?;
            apps.insert(id, json.as_slice()).map_err(backend)?;
            Ok(Some(app))
        })
    }

    fn list_apps(&self) -> Result<Vec<AppRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let apps = txn.open_table(APPS).map_err(backend)?;
        let mut list = Vec::new();
        for item in apps.iter().map_err(backend)? {
            let (_, bytes) = item.map_err(backend)?;
            list.push(decode_app(bytes.value())?);
        }
        Ok(list)
    }

    fn delete_app(&self, id: &str) -> Result<bool, StoreError> {
        self.write(|txn| {
            let existed = txn.open_table(APPS).map_err(backend)?.remove(id).map_err(backend)?.is_some();
            clear_outbox(txn, id)?;
            Ok(existed)
        })
    }

    fn begin_run(&self) -> Result<bool, StoreError> {
        self.write(|txn| {
            let mut meta = txn.open_table(META).map_err(backend)?;
            let crashed = meta.get(RUNNING).map_err(backend)?.is_some_and(|v| v.value() == 1);
            meta.insert(RUNNING, 1).map_err(backend)?;
            Ok(crashed)
        })
    }

    fn end_run(&self) -> Result<(), StoreError> {
        self.write(|txn| {
            txn.open_table(META).map_err(backend)?.insert(RUNNING, 0).map_err(backend)?;
            Ok(())
        })
    }

    fn seq_floor(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let meta = txn.open_table(META).map_err(backend)?;
        Ok(meta.get(SEQ_FLOOR).map_err(backend)?.map_or(0, |v| v.value()))
    }

    fn set_seq_floor(&self, seq: u64) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut meta = txn.open_table(META).map_err(backend)?;
            let now = meta.get(SEQ_FLOOR).map_err(backend)?.map_or(0, |v| v.value());
            meta.insert(SEQ_FLOOR, now.max(seq)).map_err(backend)?;
            Ok(())
        })
    }

    fn save_sessions(&self, changes: &[SessionChange]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.write(|txn| {
            let mut sessions = txn.open_table(SESSIONS).map_err(backend)?;
            for change in changes {
                match change {
                    SessionChange::Put(session) => {
                        let value = (session.created_secs, session.value.as_slice());
                        sessions.insert(session.key.as_slice(), value).map_err(backend)?;
                    }
                    SessionChange::Remove(key) => {
                        sessions.remove(key.as_slice()).map_err(backend)?;
                    }
                }
            }
            Ok(())
        })
    }

    fn load_sessions(&self, since_secs: u64) -> Result<Vec<StoredSession>, StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(SESSIONS).map_err(backend)?;
            let mut live = Vec::new();
            let mut expired = Vec::new();
            for item in table.iter().map_err(backend)? {
                let (key, value) = item.map_err(backend)?;
                let (created_secs, state) = value.value();
                if created_secs >= since_secs {
                    live.push(StoredSession {
                        key: key.value().to_vec(),
                        created_secs,
                        value: state.to_vec(),
                    });
                } else {
                    expired.push(key.value().to_vec());
                }
            }
            for key in expired {
                table.remove(key.as_slice()).map_err(backend)?;
            }
            live.sort_by_key(|session| session.created_secs);
            Ok(live)
        })
    }

    fn put_notification(&self, id: u64, record: &[u8]) -> Result<(), StoreError> {
        self.write(|txn| {
            txn.open_table(NOTIFICATIONS).map_err(backend)?.insert(id, record).map_err(backend)?;
            Ok(())
        })
    }

    fn notifications(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(NOTIFICATIONS).map_err(backend)?;
        let mut records = Vec::new();
        for item in table.iter().map_err(backend)? {
            let (id, record) = item.map_err(backend)?;
            records.push((id.value(), record.value().to_vec()));
        }
        Ok(records)
    }

    fn delete_notification(&self, id: u64) -> Result<(), StoreError> {
        self.write(|txn| {
            txn.open_table(NOTIFICATIONS).map_err(backend)?.remove(id).map_err(backend)?;
            Ok(())
        })
    }

    fn enqueue(&self, app_id: &str, events: &[(String, Vec<u8>)]) -> Result<bool, StoreError> {
        if events.is_empty() {
            return Ok(self.get_app(app_id)?.is_some());
        }
        self.write(|txn| {
            // Checked inside the transaction so that an app removed concurrently cannot
            // be left with an orphaned outbox.
            if txn.open_table(APPS).map_err(backend)?.get(app_id).map_err(backend)?.is_none() {
                return Ok(false);
            }
            let mut meta = txn.open_table(META).map_err(backend)?;
            let mut serial = meta.get(SERIAL).map_err(backend)?.map_or(0, |v| v.value());
            let mut outbox = txn.open_table(OUTBOX).map_err(backend)?;
            let mut order = txn.open_table(ORDER).map_err(backend)?;
            let mut added = 0u64;
            for (key, event) in events {
                serial += 1;
                let replaced = outbox
                    .insert((app_id, key.as_str()), (serial, event.as_slice()))
                    .map_err(backend)?
                    .map(|old| old.value().0);
                match replaced {
                    Some(old_serial) => {
                        order.remove((app_id, old_serial)).map_err(backend)?;
                    }
                    None => added += 1,
                }
                order.insert((app_id, serial), key.as_str()).map_err(backend)?;
            }
            meta.insert(SERIAL, serial).map_err(backend)?;
            if added > 0 {
                let mut depth = txn.open_table(DEPTH).map_err(backend)?;
                let now = depth.get(app_id).map_err(backend)?.map_or(0, |v| v.value());
                depth.insert(app_id, now + added).map_err(backend)?;
            }
            Ok(true)
        })
    }

    fn peek(
        &self,
        app_id: &str,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let order = txn.open_table(ORDER).map_err(backend)?;
        let outbox = txn.open_table(OUTBOX).map_err(backend)?;
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        for item in order.range((app_id, 0)..=(app_id, u64::MAX)).map_err(backend)? {
            if entries.len() >= max_events.max(1) {
                break;
            }
            let (position, key) = item.map_err(backend)?;
            let serial = position.value().1;
            let key = key.value().to_owned();
            let value = outbox.get((app_id, key.as_str())).map_err(backend)?.ok_or_else(|| {
                StoreError::Corrupt { table: "outbox", detail: format!("order entry {serial} has no event") }
            })?;
            let (stored_serial, event) = value.value();
            if stored_serial != serial {
                return Err(StoreError::Corrupt {
                    table: "outbox",
                    detail: format!("order entry {serial} points at serial {stored_serial}"),
                });
            }
            if !entries.is_empty() && bytes + event.len() > max_bytes {
                break;
            }
            bytes += event.len();
            entries.push(OutboxEntry { key, serial, event: event.to_vec() });
        }
        Ok(entries)
    }

    fn ack(&self, app_id: &str, delivered: &[(String, u64)]) -> Result<usize, StoreError> {
        if delivered.is_empty() {
            return Ok(0);
        }
        self.write_with(Durability::None, |txn| {
            let mut outbox = txn.open_table(OUTBOX).map_err(backend)?;
            let mut order = txn.open_table(ORDER).map_err(backend)?;
            let mut removed = 0usize;
            for (key, serial) in delivered {
                let current = outbox.get((app_id, key.as_str())).map_err(backend)?.map(|v| v.value().0);
                if current == Some(*serial) {
                    outbox.remove((app_id, key.as_str())).map_err(backend)?;
                    order.remove((app_id, *serial)).map_err(backend)?;
                    removed += 1;
                }
            }
            if removed > 0 {
                let mut depth = txn.open_table(DEPTH).map_err(backend)?;
                let now = depth.get(app_id).map_err(backend)?.map_or(0, |v| v.value());
                let left = now.saturating_sub(removed as u64);
                if left == 0 {
                    depth.remove(app_id).map_err(backend)?;
                } else {
                    depth.insert(app_id, left).map_err(backend)?;
                }
            }
            Ok(removed)
        })
    }

    fn depth(&self, app_id: &str) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let depth = txn.open_table(DEPTH).map_err(backend)?;
        Ok(depth.get(app_id).map_err(backend)?.map_or(0, |v| v.value()))
    }
}

impl EmbeddedStore {
    /// Entries waiting across every app (a consistency check for tests and diagnostics:
    /// it scans the whole outbox).
    pub fn total_outbox_entries(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        txn.open_table(OUTBOX).map_err(backend)?.len().map_err(backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(id: &str) -> AppRecord {
        AppRecord {
            id: id.to_owned(),
            name: format!("{id} name"),
            webhook_url: format!("https://{id}.example/hook"),
            api_key_sha256: "00".repeat(32),
            webhook_secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned(),
            created_ms: 1_700_000_000_000,
            disabled: false,
        }
    }

    fn ev(key: &str, body: &str) -> (String, Vec<u8>) {
        (key.to_owned(), body.as_bytes().to_vec())
    }

    fn open() -> (tempfile::TempDir, EmbeddedStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(&dir.path().join(FILE_NAME)).expect("open");
        store.put_app(&app("app_a")).expect("put a");
        store.put_app(&app("app_b")).expect("put b");
        (dir, store)
    }

    fn keys(entries: &[OutboxEntry]) -> Vec<&str> {
        entries.iter().map(|e| e.key.as_str()).collect()
    }

    #[test]
    fn apps_round_trip_in_id_order() {
        let (_dir, store) = open();
        let mut changed = app("app_a");
        changed.disabled = true;
        store.put_app(&changed).expect("replace");
        assert_eq!(store.get_app("app_a").expect("get"), Some(changed));
        assert_eq!(store.get_app("app_zzz").expect("get"), None);
        let ids: Vec<String> = store.list_apps().expect("list").into_iter().map(|a| a.id).collect();
        assert_eq!(ids, ["app_a", "app_b"]);
    }

    #[test]
    fn enqueue_compacts_by_key_and_moves_the_entry_to_the_back() {
        let (_dir, store) = open();
        assert!(store.enqueue("app_a", &[ev("p:1", "1a"), ev("p:2", "2a")]).expect("enqueue"));
        for round in 0..50 {
            store.enqueue("app_a", &[ev("p:1", &format!("1-{round}"))]).expect("flap");
        }
        assert_eq!(store.depth("app_a").expect("depth"), 2);
        let batch = store.peek("app_a", 10, 1 << 20).expect("peek");
        assert_eq!(keys(&batch), ["p:2", "p:1"]);
        assert_eq!(batch[1].event, b"1-49");
        assert!(batch[0].serial < batch[1].serial);
        // Duplicates inside one call: the last one wins.
        store.enqueue("app_a", &[ev("p:3", "x"), ev("p:3", "y")]).expect("enqueue");
        let batch = store.peek("app_a", 10, 1 << 20).expect("peek");
        assert_eq!(keys(&batch), ["p:2", "p:1", "p:3"]);
        assert_eq!(batch[2].event, b"y");
        assert_eq!(store.depth("app_a").expect("depth"), 3);
        assert_eq!(store.total_outbox_entries().expect("total"), 3);
    }

    #[test]
    fn enqueue_for_an_unknown_app_is_dropped() {
        let (_dir, store) = open();
        assert!(!store.enqueue("app_nobody", &[ev("p:1", "1")]).expect("enqueue"));
        assert_eq!(store.depth("app_nobody").expect("depth"), 0);
        assert_eq!(store.total_outbox_entries().expect("total"), 0);
    }

    #[test]
    fn ack_with_a_stale_serial_keeps_the_newer_content() {
        let (_dir, store) = open();
        store.enqueue("app_a", &[ev("p:1", "old"), ev("p:2", "two")]).expect("enqueue");
        let in_flight = store.peek("app_a", 10, 1 << 20).expect("peek");
        // p:1 changes while the batch is in flight.
        store.enqueue("app_a", &[ev("p:1", "new")]).expect("enqueue");
        let delivered: Vec<(String, u64)> = in_flight.iter().map(|e| (e.key.clone(), e.serial)).collect();
        assert_eq!(store.ack("app_a", &delivered).expect("ack"), 1);
        let left = store.peek("app_a", 10, 1 << 20).expect("peek");
        assert_eq!(keys(&left), ["p:1"]);
        assert_eq!(left[0].event, b"new");
        assert_eq!(store.depth("app_a").expect("depth"), 1);
        // Acking again, or acking another app's keys, removes nothing.
        assert_eq!(store.ack("app_a", &delivered).expect("ack"), 0);
        assert_eq!(store.ack("app_b", &[("p:1".to_owned(), left[0].serial)]).expect("ack"), 0);
        assert_eq!(store.ack("app_a", &[("p:1".to_owned(), left[0].serial)]).expect("ack"), 1);
        assert_eq!(store.depth("app_a").expect("depth"), 0);
        assert!(store.peek("app_a", 10, 1 << 20).expect("peek").is_empty());
    }

    #[test]
    fn peek_honours_count_and_byte_limits_but_returns_at_least_one() {
        let (_dir, store) = open();
        let events: Vec<_> = (0..10).map(|i| ev(&format!("p:{i}"), &"x".repeat(100))).collect();
        store.enqueue("app_a", &events).expect("enqueue");
        assert_eq!(store.peek("app_a", 3, 1 << 20).expect("peek").len(), 3);
        assert_eq!(store.peek("app_a", 100, 350).expect("peek").len(), 3);
        assert_eq!(store.peek("app_a", 100, 300).expect("peek").len(), 3);
        assert_eq!(store.peek("app_a", 100, 299).expect("peek").len(), 2);
        let one = store.peek("app_a", 100, 10).expect("peek");
        assert_eq!(keys(&one), ["p:0"], "an entry larger than the limit still goes, alone");
        assert_eq!(store.peek("app_a", 0, 10).expect("peek").len(), 1);
        assert_eq!(store.peek("app_b", 100, 1 << 20).expect("peek").len(), 0, "apps are separate");
    }

    #[test]
    fn depth_counts_distinct_waiting_keys_per_app() {
        let (_dir, store) = open();
        assert_eq!(store.depth("app_a").expect("depth"), 0);
        store.enqueue("app_a", &[ev("p:1", "a"), ev("p:2", "b"), ev("p:1", "c")]).expect("enqueue");
        store.enqueue("app_b", &[ev("p:1", "a")]).expect("enqueue");
        assert_eq!(store.depth("app_a").expect("depth"), 2);
        assert_eq!(store.depth("app_b").expect("depth"), 1);
    }

    #[test]
    fn update_app_changes_one_field_in_place() {
        let (_dir, store) = open();
        assert_eq!(store.update_app("app_none", &mut |app| app.disabled = true).expect("update"), None);
        assert_eq!(store.get_app("app_none").expect("get"), None, "no app is created by an update");
        let secret = store.get_app("app_a").expect("get").expect("app").webhook_secret;
        let changed =
            store.update_app("app_a", &mut |app| app.disabled = true).expect("update").expect("app");
        assert!(changed.disabled);
        let stored = store.get_app("app_a").expect("get").expect("app");
        assert!(stored.disabled);
        assert_eq!(stored.webhook_secret, secret);
    }

    #[test]
    fn a_run_without_an_end_is_a_crash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("runs.redb");
        let store = EmbeddedStore::open(&path).expect("open");
        assert!(!store.begin_run().expect("first run"), "a new database has no crashed run");
        store.end_run().expect("clean end");
        assert!(!store.begin_run().expect("after a clean end"));
        drop(store);
        let store = EmbeddedStore::open(&path).expect("reopen");
        assert!(store.begin_run().expect("after a run that never ended"));
    }

    #[test]
    fn the_seq_floor_persists_and_never_goes_down() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE_NAME);
        {
            let store = EmbeddedStore::open(&path).expect("open");
            assert_eq!(store.seq_floor().expect("none yet"), 0);
            store.set_seq_floor(500).expect("set");
            store.set_seq_floor(300).expect("lower");
        }
        let store = EmbeddedStore::open(&path).expect("reopen");
        assert_eq!(store.seq_floor().expect("floor"), 500);
    }

    #[test]
    fn notifications_persist_until_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("n.redb");
        {
            let store = EmbeddedStore::open(&path).expect("open");
            assert!(store.notifications().expect("none yet").is_empty());
            store.put_notification(7, b"first").expect("put");
            store.put_notification(7, b"second").expect("replace");
            store.put_notification(9, b"other").expect("put");
            store.delete_notification(9).expect("delete");
        }
        let store = EmbeddedStore::open(&path).expect("reopen");
        assert_eq!(store.notifications().expect("list"), vec![(7, b"second".to_vec())]);
    }

    #[test]
    fn delete_app_removes_its_outbox_only() {
        let (_dir, store) = open();
        store.enqueue("app_a", &[ev("p:1", "a"), ev("p:2", "b")]).expect("enqueue");
        store.enqueue("app_b", &[ev("p:1", "a")]).expect("enqueue");
        assert!(store.delete_app("app_a").expect("delete"));
        assert!(!store.delete_app("app_a").expect("delete again"));
        assert_eq!(store.get_app("app_a").expect("get"), None);
        assert_eq!(store.depth("app_a").expect("depth"), 0);
        assert!(store.peek("app_a", 10, 1 << 20).expect("peek").is_empty());
        assert_eq!(store.depth("app_b").expect("depth"), 1);
        assert_eq!(store.total_outbox_entries().expect("total"), 1);
        // Re-registering the id starts from an empty outbox.
        store.put_app(&app("app_a")).expect("put");
        assert!(store.peek("app_a", 10, 1 << 20).expect("peek").is_empty());
    }

    #[test]
    fn an_ack_becomes_durable_with_the_next_enqueue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE_NAME);
        {
            let store = EmbeddedStore::open(&path).expect("open");
            store.put_app(&app("app_a")).expect("put");
            store.enqueue("app_a", &[ev("p:1", "one"), ev("p:2", "two")]).expect("enqueue");
            let first = store.peek("app_a", 1, 1 << 20).expect("peek");
            assert_eq!(store.ack("app_a", &[(first[0].key.clone(), first[0].serial)]).expect("ack"), 1);
            store.enqueue("app_a", &[ev("p:3", "three")]).expect("enqueue");
        }
        let store = EmbeddedStore::open(&path).expect("reopen");
        assert_eq!(keys(&store.peek("app_a", 10, 1 << 20).expect("peek")), ["p:2", "p:3"]);
        assert_eq!(store.depth("app_a").expect("depth"), 2);
    }

    fn session(key: u8, created_secs: u64) -> StoredSession {
        StoredSession { key: vec![key; 32], created_secs, value: vec![key, 1, 2, 3] }
    }

    #[test]
    fn tls_sessions_persist_and_expire_and_removals_stick() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE_NAME);
        {
            let store = EmbeddedStore::open(&path).expect("open");
            assert!(store.load_sessions(0).expect("empty").is_empty());
            store
                .save_sessions(&[
                    SessionChange::Put(session(1, 1_000)),
                    SessionChange::Put(session(2, 500)),
                    SessionChange::Put(session(3, 2_000)),
                    SessionChange::Put(session(4, 1_500)),
                ])
                .expect("save");
            store.save_sessions(&[SessionChange::Remove(vec![3; 32])]).expect("take");
            // A put then a remove of the same ticket in one batch leaves nothing.
            store
                .save_sessions(&[SessionChange::Put(session(5, 1_700)), SessionChange::Remove(vec![5; 32])])
                .expect("save");
        }
        let store = EmbeddedStore::open(&path).expect("reopen");
        let loaded = store.load_sessions(900).expect("load");
        assert_eq!(loaded, [session(1, 1_000), session(4, 1_500)], "oldest first, expired and taken gone");
        assert_eq!(store.load_sessions(0).expect("load"), loaded, "the expired one was deleted");
    }

    #[test]
    fn everything_survives_close_and_reopen_and_serials_keep_increasing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE_NAME);
        let last_serial = {
            let store = EmbeddedStore::open(&path).expect("open");
            store.put_app(&app("app_a")).expect("put");
            store.enqueue("app_a", &[ev("p:1", "one"), ev("p:2", "two")]).expect("enqueue");
            store.enqueue("app_a", &[ev("p:1", "uno")]).expect("enqueue");
            store.peek("app_a", 10, 1 << 20).expect("peek").last().map(|e| e.serial).expect("entry")
        };
        let store = EmbeddedStore::open(&path).expect("reopen");
        assert_eq!(store.get_app("app_a").expect("get"), Some(app("app_a")));
        let batch = store.peek("app_a", 10, 1 << 20).expect("peek");
        assert_eq!(keys(&batch), ["p:2", "p:1"]);
        assert_eq!(batch[1].event, b"uno");
        assert_eq!(store.depth("app_a").expect("depth"), 2);
        store.enqueue("app_a", &[ev("p:3", "three")]).expect("enqueue");
        let batch = store.peek("app_a", 10, 1 << 20).expect("peek");
        assert!(batch[2].serial > last_serial, "serials are never reused");
    }
}
