//! The embedded store: one redb file in the data directory (`<data-dir>/presenced.redb`)
//! holding [`AppStore`], [`NotificationStore`], [`TicketStore`], [`RunJournal`] and
//! [`RevocationStore`], and beside it the log that holds the [`Outbox`](crate::store::Outbox).
//!
//! redb gives ACID transactions with copy-on-write B-trees and a checksummed commit, so a
//! daemon killed with `kill -9` reopens the file at its last committed transaction.
//!
//! ## Tables
//!
//! | table           | key                 | value                 | why                                 |
//! |-----------------|---------------------|-----------------------|-------------------------------------|
//! | `apps`          | app id              | [`AppRecord`] as JSON | JSON survives added fields          |
//! | `outbox`, `outbox_order`, `outbox_depth` | | | an older daemon's outbox, moved to the log on open |
//! | `meta`          | name                | u64                   | run flag, seq floor                 |
//! | `notifications` | notification id     | record (JSON)         | outcomes survive a restart          |
//! | `tls_sessions`  | ticket              | (issued secs, state)  | 0-RTT resumption across restarts    |
//! | `revocations`   | (app id, PUID)      | revoked at (Unix ms)  | a revoke outlives offline devices   |
//!
//! The outbox is not in redb: it is a log of its own in a directory beside the file
//! (`<data-dir>/presenced.outbox/`, see `store/log`), because a B-tree that is written on
//! every status change and emptied by every delivery grows its file by pages it cannot
//! free without a durable commit per acknowledgement (BENCHMARKS.md measured 5,391 bytes
//! per event). The three outbox tables remain only so that an older daemon's outbox is
//! carried over into the log on open (`embedded/outbox.rs`).
//!
//! ## Blocking
//!
//! The synchronous traits' methods block on disk I/O (a write commits with an fsync); the
//! daemon calls them on the blocking pool. The outbox writes on the blocking pool itself.

mod outbox;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use redb::{Database, Durability, ReadableTable, TableDefinition, WriteTransaction};

use super::log::LogOutbox;
use super::{
    AppRecord, AppStore, Departure, NotificationStore, RevocationStore, RunJournal, SessionChange,
    StoreError, StoredSession, TicketStore, Tombstone,
};

const APPS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("apps");
const OUTBOX: TableDefinition<'_, (&str, &str), (u64, &[u8])> = TableDefinition::new("outbox");
const ORDER: TableDefinition<'_, (&str, u64), &str> = TableDefinition::new("outbox_order");
const DEPTH: TableDefinition<'_, &str, u64> = TableDefinition::new("outbox_depth");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const NOTIFICATIONS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("notifications");
const SESSIONS: TableDefinition<'_, &[u8], (u64, &[u8])> = TableDefinition::new("tls_sessions");
const REVOCATIONS: TableDefinition<'_, (&str, &str), u64> = TableDefinition::new("revocations");
/// The drain's departures, by position, each a JSON [`Departure`].
const DEPARTURES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("departures");

/// The `meta` key of the last serial the redb outbox handed out (older daemons).
const SERIAL: &str = "serial";
/// The `meta` key that is 1 while a run is in progress.
const RUNNING: &str = "running";
/// The `meta` key of the highest presence `seq` recorded.
const SEQ_FLOOR: &str = "seq_floor";

/// Every store in a single redb file, and the outbox in its log beside it.
///
/// redb serializes write transactions internally and lets reads run beside them, so one
/// `EmbeddedStore` is shared by every task (behind an `Arc`). Cloning it is cheap and
/// shares the database.
#[derive(Clone)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    outbox: LogOutbox,
}

struct Shared {
    /// The database. A redb handle that saw an I/O error (a full disk, say) refuses every
    /// later operation (`PreviousIo`), so after one the handle is dropped and the file
    /// opened again ([`Shared::reopen`]): a disk that fills and is freed costs a pause,
    /// not the rest of the run. `None` between the two.
    db: RwLock<Option<Database>>,
    /// Where the file is, for reopening it.
    path: PathBuf,
    /// Set when a write fails, cleared by the next that succeeds: part of what `/healthz`
    /// and `presence_outbox_writable` report.
    failing: AtomicBool,
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

/// The outbox log's directory for the database at `path`: beside it, named after it.
pub(crate) fn outbox_dir(path: &Path) -> PathBuf {
    path.with_extension("outbox")
}

impl EmbeddedStore {
    /// Opens (or creates) the database at `path`, makes sure every table exists (so read
    /// transactions never meet a missing one), opens the outbox log beside it and moves
    /// an older daemon's outbox into it.
    pub fn open(path: &Path) -> Result<EmbeddedStore, StoreError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        let mut registered = Vec::new();
        {
            for item in txn.open_table(APPS)?.iter()? {
                registered.push(item?.0.value().to_owned());
            }
            txn.open_table(OUTBOX)?;
            txn.open_table(ORDER)?;
            txn.open_table(DEPTH)?;
            txn.open_table(META)?;
            txn.open_table(NOTIFICATIONS)?;
            txn.open_table(SESSIONS)?;
            txn.open_table(REVOCATIONS)?;
        }
        txn.commit()?;
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(db)),
            path: path.to_owned(),
            failing: AtomicBool::new(false),
        });
        let outbox = LogOutbox::open(&outbox_dir(path), registered)?;
        let moved = outbox::migrate(&shared, &outbox)?;
        if moved > 0 {
            tracing::info!(entries = moved, "the outbox moved from the database into its log");
        }
        Ok(EmbeddedStore { shared, outbox })
    }

    fn write<T>(
        &self,
        body: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.shared.write(Durability::Immediate, body)
    }
}

impl Shared {
    fn write<T>(
        &self,
        durability: Durability,
        body: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let result = self.with_db(|db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(durability);
            // On an error the transaction is dropped, which aborts it: nothing half-done lands.
            let value = body(&txn)?;
            txn.commit()?;
            Ok(value)
        });
        self.failing.store(result.is_err(), Ordering::Relaxed);
        result
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.with_db(|db| Ok(db.begin_read()?))
    }

    /// Runs `work` on the database, reopening it first if an earlier I/O error closed it,
    /// and closing it after an I/O error so that the next call opens it afresh.
    fn with_db<T>(&self, work: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let result = {
            let mut db = self.db.read().unwrap_or_else(PoisonError::into_inner);
            if db.is_none() {
                drop(db);
                self.reopen()?;
                db = self.db.read().unwrap_or_else(PoisonError::into_inner);
            }
            let Some(open) = db.as_ref() else { return Err(StoreError::Closed) };
            work(open)
        };
        if let Err(error) = &result {
            if error.is_io() {
                tracing::warn!(%error, path = %self.path.display(), "storage I/O failed; the database will be reopened");
                *self.db.write().unwrap_or_else(PoisonError::into_inner) = None;
            }
        }
        result
    }

    /// Opens the file again after an I/O error. It fails while the old handle's last
    /// transaction is still open (redb locks the file per handle) or while the disk still
    /// refuses; the next call tries again.
    fn reopen(&self) -> Result<(), StoreError> {
        let mut db = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if db.is_none() {
            *db = Some(Database::create(&self.path)?);
            tracing::info!(path = %self.path.display(), "database reopened");
        }
        Ok(())
    }
}

fn decode_app(bytes: &[u8]) -> Result<AppRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt { table: "apps", source })
}

fn encode_app(app: &AppRecord) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(app).map_err(|source| StoreError::Encode { table: "apps", source })
}

impl AppStore for EmbeddedStore {
    fn put_app(&self, app: &AppRecord) -> Result<(), StoreError> {
        let json = encode_app(app)?;
        self.write(|txn| {
            txn.open_table(APPS)?.insert(app.id.as_str(), json.as_slice())?;
            Ok(())
        })?;
        self.outbox.register(&app.id);
        Ok(())
    }

    fn get_app(&self, id: &str) -> Result<Option<AppRecord>, StoreError> {
        let txn = self.shared.begin_read()?;
        let apps = txn.open_table(APPS)?;
        let found = apps.get(id)?;
        found.map(|bytes| decode_app(bytes.value())).transpose()
    }

    fn update_app(
        &self,
        id: &str,
        change: &mut dyn FnMut(&mut AppRecord),
    ) -> Result<Option<AppRecord>, StoreError> {
        self.write(|txn| {
            let mut apps = txn.open_table(APPS)?;
            let Some(mut app) = apps.get(id)?.map(|bytes| decode_app(bytes.value())).transpose()? else {
                return Ok(None);
            };
            change(&mut app);
            apps.insert(id, encode_app(&app)?.as_slice())?;
            Ok(Some(app))
        })
    }

    fn list_apps(&self) -> Result<Vec<AppRecord>, StoreError> {
        let txn = self.shared.begin_read()?;
        let apps = txn.open_table(APPS)?;
        let mut list = Vec::new();
        for item in apps.iter()? {
            let (_, bytes) = item?;
            list.push(decode_app(bytes.value())?);
        }
        Ok(list)
    }

    /// The record goes first, then the outbox: a crash in between leaves log entries of
    /// an app that no longer exists, which the next open drops.
    fn delete_app(&self, id: &str) -> Result<bool, StoreError> {
        let existed = self.write(|txn| {
            let existed = txn.open_table(APPS)?.remove(id)?.is_some();
            // The app's revocation tombstones go with it: its id is never handed out again,
            // so nothing would ever read them.
            let mut revocations = txn.open_table(REVOCATIONS)?;
            let mut puids = Vec::new();
            for item in revocations.range((id, "")..)? {
                let (key, _) = item?;
                let (app_id, puid) = key.value();
                if app_id != id {
                    break;
                }
                puids.push(puid.to_owned());
            }
            for puid in &puids {
                revocations.remove((id, puid.as_str()))?;
            }
            Ok(existed)
        })?;
        self.outbox.remove(id);
        Ok(existed)
    }
}

impl RunJournal for EmbeddedStore {
    fn begin_run(&self) -> Result<bool, StoreError> {
        self.write(|txn| {
            let mut meta = txn.open_table(META)?;
            let crashed = meta.get(RUNNING)?.is_some_and(|v| v.value() == 1);
            meta.insert(RUNNING, 1)?;
            Ok(crashed)
        })
    }

    fn end_run(&self) -> Result<(), StoreError> {
        self.write(|txn| {
            txn.open_table(META)?.insert(RUNNING, 0)?;
            Ok(())
        })
    }

    fn seq_floor(&self) -> Result<u64, StoreError> {
        let txn = self.shared.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(SEQ_FLOOR)?.map_or(0, |v| v.value()))
    }

    fn set_seq_floor(&self, seq: u64) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut meta = txn.open_table(META)?;
            let now = meta.get(SEQ_FLOOR)?.map_or(0, |v| v.value());
            meta.insert(SEQ_FLOOR, now.max(seq))?;
            Ok(())
        })
    }

    fn set_departures(&self, departures: &[Departure]) -> Result<(), StoreError> {
        let encoded = departures
            .iter()
            .map(|d| {
                serde_json::to_vec(d).map_err(|source| StoreError::Encode { table: "departures", source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.write(|txn| {
            let mut table = txn.open_table(DEPARTURES)?;
            table.retain(|_, _| false)?;
            for (index, record) in (0u64..).zip(&encoded) {
                table.insert(index, record.as_slice())?;
            }
            Ok(())
        })
    }

    fn take_departures(&self) -> Result<Vec<Departure>, StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(DEPARTURES)?;
            let mut departures = Vec::new();
            for entry in table.iter()? {
                let (_, record) = entry?;
                let departure = serde_json::from_slice(record.value())
                    .map_err(|source| StoreError::Corrupt { table: "departures", source })?;
                departures.push(departure);
            }
            table.retain(|_, _| false)?;
            Ok(departures)
        })
    }
}

impl RevocationStore for EmbeddedStore {
    fn put_tombstone(&self, tombstone: &Tombstone) -> Result<(), StoreError> {
        self.write(|txn| {
            let key = (tombstone.app_id.as_str(), tombstone.puid.as_str());
            txn.open_table(REVOCATIONS)?.insert(key, tombstone.revoked_ms)?;
            Ok(())
        })
    }

    fn delete_tombstone(&self, app_id: &str, puid: &str) -> Result<bool, StoreError> {
        self.write(|txn| Ok(txn.open_table(REVOCATIONS)?.remove((app_id, puid))?.is_some()))
    }

    fn list_tombstones(&self) -> Result<Vec<Tombstone>, StoreError> {
        let txn = self.shared.begin_read()?;
        let mut tombstones = Vec::new();
        for item in txn.open_table(REVOCATIONS)?.iter()? {
            let (key, revoked_ms) = item?;
            let (app_id, puid) = key.value();
            tombstones.push(Tombstone {
                app_id: app_id.to_owned(),
                puid: puid.to_owned(),
                revoked_ms: revoked_ms.value(),
            });
        }
        Ok(tombstones)
    }
}

impl TicketStore for EmbeddedStore {
    fn save_sessions(&self, changes: &[SessionChange]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.write(|txn| {
            let mut sessions = txn.open_table(SESSIONS)?;
            for change in changes {
                match change {
                    SessionChange::Put(session) => {
                        let value = (session.created_secs, session.value.as_slice());
                        sessions.insert(session.key.as_slice(), value)?;
                    }
                    SessionChange::Remove(key) => {
                        sessions.remove(key.as_slice())?;
                    }
                }
            }
            Ok(())
        })
    }

    fn load_sessions(&self, since_secs: u64) -> Result<Vec<StoredSession>, StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(SESSIONS)?;
            let mut live = Vec::new();
            let mut expired = Vec::new();
            for item in table.iter()? {
                let (key, value) = item?;
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
                table.remove(key.as_slice())?;
            }
            live.sort_by_key(|session| session.created_secs);
            Ok(live)
        })
    }
}

impl NotificationStore for EmbeddedStore {
    fn put_notification(&self, id: u64, record: &[u8]) -> Result<(), StoreError> {
        self.write(|txn| {
            txn.open_table(NOTIFICATIONS)?.insert(id, record)?;
            Ok(())
        })
    }

    fn notifications(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let txn = self.shared.begin_read()?;
        let table = txn.open_table(NOTIFICATIONS)?;
        let mut records = Vec::new();
        for item in table.iter()? {
            let (id, record) = item?;
            records.push((id.value(), record.value().to_vec()));
        }
        Ok(records)
    }

    fn delete_notification(&self, id: u64) -> Result<(), StoreError> {
        self.write(|txn| {
            txn.open_table(NOTIFICATIONS)?.remove(id)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    //! What only a durable store promises: everything survives close and reopen. The
    //! behaviour shared with the memory store is in the contract suite; the log's own
    //! recovery and compaction are tested in `store/log`.

    use super::*;
    use crate::store::contract::{Recorder, app};
    use crate::store::{Outbox, OutboxEvent};

    fn ev(key: &str, body: &str, at_ms: u64) -> OutboxEvent {
        OutboxEvent { key: key.to_owned(), version: 0, at_ms, json: body.as_bytes().to_vec() }
    }

    #[tokio::test]
    async fn everything_survives_close_and_reopen_and_serials_keep_increasing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(crate::STORE_FILE);
        let last_serial = {
            let store = EmbeddedStore::open(&path).expect("open");
            store.put_app(&app("app_a")).expect("put");
            store.append("app_a", vec![ev("p:1", "one", 11), ev("p:2", "two", 12)]);
            store.flush().await.expect("flush");
            store.append("app_a", vec![ev("p:1", "uno", 13)]);
            store.flush().await.expect("flush");
            store.put_notification(7, b"record").expect("put");
            store
                .save_sessions(&[SessionChange::Put(StoredSession {
                    key: vec![1; 32],
                    created_secs: 100,
                    value: vec![9],
                })])
                .expect("save");
            assert!(!store.begin_run().expect("begin"));
            store.set_seq_floor(500).expect("floor");
            let batch = store.next_batch("app_a", 0, 10, 1 << 20).await.expect("batch");
            batch.last().map(|e| e.serial).expect("entry")
        };
        let store = EmbeddedStore::open(&path).expect("reopen");
        assert_eq!(store.get_app("app_a").expect("get"), Some(app("app_a")));
        assert_eq!(store.depth("app_a"), 2, "the depth is known at open");
        let batch = store.next_batch("app_a", 0, 10, 1 << 20).await.expect("batch");
        let stored: Vec<(&str, &[u8], u64)> =
            batch.iter().map(|e| (e.key.as_str(), e.event.as_slice(), e.at_ms)).collect();
        assert_eq!(stored, [("p:2", &b"two"[..], 12), ("p:1", &b"uno"[..], 13)]);
        assert_eq!(store.notifications().expect("list"), [(7, b"record".to_vec())]);
        assert_eq!(store.load_sessions(0).expect("load").len(), 1);
        assert!(store.begin_run().expect("begin"), "the run that never ended was a crash");
        assert_eq!(store.seq_floor().expect("floor"), 500);
        store.append("app_a", vec![ev("p:3", "three", 14)]);
        store.flush().await.expect("flush");
        let batch = store.next_batch("app_a", 0, 10, 1 << 20).await.expect("batch");
        assert!(batch[2].serial > last_serial, "serials are never reused");
        assert_eq!(store.stats().entries, 3);
        assert!(store.stats().disk_bytes > 0);
    }

    #[tokio::test]
    async fn an_acknowledgement_outlives_a_close_without_an_append_after_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(crate::STORE_FILE);
        {
            let store = EmbeddedStore::open(&path).expect("open");
            store.put_app(&app("app_a")).expect("put");
            store.append("app_a", vec![ev("p:1", "one", 1), ev("p:2", "two", 2)]);
            store.flush().await.expect("flush");
            let first = store.next_batch("app_a", 0, 1, 1 << 20).await.expect("batch");
            let delivered = vec![(first[0].key.clone(), first[0].serial)];
            assert_eq!(store.ack("app_a", delivered).await.expect("ack"), 1);
            store.flush().await.expect("the ack is written");
        }
        let store = EmbeddedStore::open(&path).expect("reopen");
        let batch = store.next_batch("app_a", 0, 10, 1 << 20).await.expect("batch");
        let keys: Vec<&str> = batch.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["p:2"]);
        assert_eq!(store.depth("app_a"), 1);
    }

    #[tokio::test]
    async fn a_removed_app_stays_removed_after_reopen_and_a_new_one_starts_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(crate::STORE_FILE);
        {
            let store = EmbeddedStore::open(&path).expect("open");
            store.put_app(&app("app_a")).expect("put");
            store.put_app(&app("app_b")).expect("put");
            store.append("app_a", vec![ev("p:1", "one", 1)]);
            store.append("app_b", vec![ev("p:1", "b", 1)]);
            store.flush().await.expect("flush");
            assert!(store.delete_app("app_a").expect("delete"));
            store.flush().await.expect("flush");
        }
        let store = EmbeddedStore::open(&path).expect("reopen");
        assert_eq!(store.depth("app_a"), 0);
        assert_eq!(store.depth("app_b"), 1);
        store.put_app(&app("app_a")).expect("put again");
        assert!(store.next_batch("app_a", 0, 10, 1 << 20).await.expect("batch").is_empty());
    }

    #[tokio::test]
    async fn concurrent_appends_share_commits_and_all_land() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(&dir.path().join(crate::STORE_FILE)).expect("open");
        store.put_app(&app("app_a")).expect("put");
        store.put_app(&app("app_b")).expect("put");
        let recorder = Recorder::on(&store);
        for i in 0..200 {
            let app_id = if i % 2 == 0 { "app_a" } else { "app_b" };
            store.append(app_id, vec![ev(&format!("p:{}", i % 50), &i.to_string(), i)]);
        }
        store.flush().await.expect("flush");
        let told = recorder.told();
        assert_eq!(told.iter().map(|t| t.events).sum::<usize>(), 200, "every append reported");
        assert!(
            recorder.commits().len() < 200,
            "appends made while a commit ran share the next one: {} commits",
            recorder.commits().len()
        );
        assert_eq!(store.depth("app_a"), 25);
        assert_eq!(store.depth("app_b"), 25);
        assert_eq!(store.stats().entries, 50);
        let batch = store.next_batch("app_a", 0, 100, 1 << 20).await.expect("batch");
        assert!(batch.iter().all(|e| e.serial <= 200), "one serial per event at most, whatever the rounds");
    }
}
