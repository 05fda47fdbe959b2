//! The embedded store's [`Outbox`]: the log outbox (`store/log`) in a directory beside
//! the redb file, and the migration of an outbox that an older daemon kept in redb.
//!
//! Daemons before the log kept the outbox in three redb tables (`outbox`, `outbox_order`,
//! `outbox_depth`). On open, whatever those hold is written into the log under its own
//! serials and synced, and only then are the tables emptied, in one transaction: a crash
//! in between imports the same entries again, which replaces each by itself.

use std::sync::Weak;

use redb::ReadableTable;

use super::{DEPTH, EmbeddedStore, META, ORDER, OUTBOX, SERIAL, Shared};
use crate::store::log::LogOutbox;
use crate::store::{CommitListener, Outbox, OutboxEntry, OutboxEvent, OutboxStats, StoreError, StoreFuture};

impl Outbox for EmbeddedStore {
    fn append(&self, app_id: &str, events: Vec<OutboxEvent>) {
        self.outbox.append(app_id, events);
    }

    fn flush(&self) -> StoreFuture<()> {
        self.outbox.flush()
    }

    fn listen(&self, listener: Weak<dyn CommitListener>) {
        self.outbox.listen(listener);
    }

    fn next_batch(
        &self,
        app_id: &str,
        after: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> StoreFuture<Vec<OutboxEntry>> {
        self.outbox.next_batch(app_id, after, max_events, max_bytes)
    }

    fn ack(&self, app_id: &str, delivered: Vec<(String, u64)>) -> StoreFuture<usize> {
        self.outbox.ack(app_id, delivered)
    }

    fn depth(&self, app_id: &str) -> u64 {
        self.outbox.depth(app_id)
    }

    fn oldest_at_ms(&self, app_id: &str) -> Option<u64> {
        self.outbox.oldest_at_ms(app_id)
    }

    fn stats(&self) -> OutboxStats {
        self.outbox.stats()
    }

    /// The log's writes, and the database's (an app's registration goes there).
    fn writable(&self) -> bool {
        self.outbox.writable() && !self.shared.failing.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Moves what an older daemon's redb outbox holds into the log, then empties its tables.
/// Returns how many entries moved.
pub(super) fn migrate(shared: &Shared, log: &LogOutbox) -> Result<u64, StoreError> {
    let mut apps: Vec<(String, Vec<(u64, OutboxEvent)>)> = Vec::new();
    {
        let txn = shared.begin_read()?;
        let order = txn.open_table(ORDER)?;
        let outbox = txn.open_table(OUTBOX)?;
        for item in order.iter()? {
            let (position, key) = item?;
            let (app_id, serial) = position.value();
            let key = key.value().to_owned();
            let value = outbox.get((app_id, key.as_str()))?;
            let Some(value) = value.filter(|value| value.value().0 == serial) else {
                // An order entry without its event (or for a replaced version): nothing
                // to carry over.
                continue;
            };
            let Stored { at_ms, version, json } = decode_event(value.value().1);
            let event = OutboxEvent { key, version, at_ms, json: json.to_vec() };
            match apps.last_mut() {
                Some((last, entries)) if last == app_id => entries.push((serial, event)),
                _ => apps.push((app_id.to_owned(), vec![(serial, event)])),
            }
        }
    }
    if apps.is_empty() {
        return Ok(0);
    }
    let moved = apps.iter().map(|(_, entries)| entries.len() as u64).sum();
    for (app_id, entries) in apps {
        log.import(&app_id, entries)?;
    }
    shared.write(redb::Durability::Immediate, |txn| {
        txn.open_table(OUTBOX)?.retain(|_, _| false)?;
        txn.open_table(ORDER)?.retain(|_, _| false)?;
        txn.open_table(DEPTH)?.retain(|_, _| false)?;
        txn.open_table(META)?.remove(SERIAL)?;
        Ok(())
    })?;
    Ok(moved)
}

/// An event as the redb outbox stored it.
#[derive(Debug, PartialEq, Eq)]
struct Stored<'a> {
    at_ms: u64,
    version: u64,
    json: &'a [u8],
}

/// A stored event's parts: its `at` and its version (8 bytes each, big-endian), then its
/// JSON. Daemons older still stored the JSON alone: it starts with `{`, where an `at`
/// (below 2^56 ms, the year 2,000,000) starts with 0; its `at` and version read as 0.
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
    use crate::store::AppStore;
    use crate::store::contract::app;

    fn stored(at_ms: u64, version: u64, json: &[u8]) -> Vec<u8> {
        let mut out = at_ms.to_be_bytes().to_vec();
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(json);
        out
    }

    #[test]
    fn stored_events_carry_their_at_and_version_and_older_ones_still_read() {
        let bytes = stored(1_764_400_000_123, 9, br#"{"a":1}"#);
        assert_eq!(
            decode_event(&bytes),
            Stored { at_ms: 1_764_400_000_123, version: 9, json: br#"{"a":1}"# }
        );
        let old = br#"{"type":"presence","at":1}"#;
        assert_eq!(decode_event(old), Stored { at_ms: 0, version: 0, json: old });
        assert_eq!(decode_event(b"{}"), Stored { at_ms: 0, version: 0, json: b"{}" }, "shorter than an at");
    }

    #[tokio::test]
    async fn an_outbox_an_older_daemon_kept_in_redb_moves_into_the_log_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(crate::STORE_FILE);
        {
            let store = EmbeddedStore::open(&path).expect("open");
            store.put_app(&app("app_a")).expect("put");
            // What older daemons wrote: one entry with `at` and version, one JSON alone.
            let new_format = stored(17, 3, br#"{"type":"presence"}"#);
            store
                .write(|txn| {
                    let mut outbox = txn.open_table(OUTBOX)?;
                    let mut order = txn.open_table(ORDER)?;
                    let json: &[u8] = br#"{"type":"reset","at":5}"#;
                    outbox.insert(("app_a", "r"), (41, json))?;
                    order.insert(("app_a", 41), "r")?;
                    outbox.insert(("app_a", "p:x"), (44, new_format.as_slice()))?;
                    order.insert(("app_a", 44), "p:x")?;
                    txn.open_table(DEPTH)?.insert("app_a", 2)?;
                    txn.open_table(META)?.insert(SERIAL, 44)?;
                    Ok(())
                })
                .expect("write the old format");
        }
        for open in 0..2 {
            let store = EmbeddedStore::open(&path).expect("reopen");
            assert_eq!(store.depth("app_a"), 2, "open {open}");
            let batch = store.next_batch("app_a", 0, 10, 1 << 20).await.expect("batch");
            let got: Vec<(u64, u64, &[u8])> =
                batch.iter().map(|e| (e.serial, e.at_ms, e.event.as_slice())).collect();
            assert_eq!(
                got,
                [(41, 0, &br#"{"type":"reset","at":5}"#[..]), (44, 17, &br#"{"type":"presence"}"#[..])]
            );
            let txn = store.shared.begin_read().expect("read");
            assert!(
                txn.open_table(OUTBOX).expect("table").iter().expect("iter").next().is_none(),
                "redb emptied"
            );
        }
        let store = EmbeddedStore::open(&path).expect("reopen");
        store.append(
            "app_a",
            vec![OutboxEvent { key: "r".into(), version: 0, at_ms: 6, json: b"{}".to_vec() }],
        );
        store.flush().await.expect("flush");
        let batch = store.next_batch("app_a", 0, 10, 1 << 20).await.expect("batch");
        assert_eq!(batch.len(), 2, "the new reset replaced the old one");
        assert!(batch[1].serial > 44, "serials go on above the migrated ones: {}", batch[1].serial);
    }
}
