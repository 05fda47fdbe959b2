//! `fjall`: a minimal outbox on the fjall LSM (3.x, where the 2.x "keyspace" is a
//! `Database` and a "partition" a `Keyspace`).
//!
//! - `items`: app/key → serial, version, at, JSON (compaction: one live entry per key);
//! - `order`: app/serial → key (batches are a range scan of it).
//!
//! A round is one write batch (a read of each key's live entry first, for the version rule
//! and to remove its old `order` element), committed, then `persist(SyncData)` (fdatasync of
//! the journal) before the round counts as stored. Acknowledgements are a write batch of
//! deletes each, committed without a persist (fjall writes them to the OS buffers; the next
//! round's fdatasync makes them durable), as the log does.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::store::{Candidate, Committer, Durable, Entry, Event, Round, be_u64, encode_value};

struct Inner {
    db: Database,
    items: Keyspace,
    order: Keyspace,
    /// Each app's key prefix.
    prefixes: Vec<Vec<u8>>,
    /// Serializes the read-modify-writes: a round's write against an acknowledgement.
    writes: Mutex<()>,
    /// Entries up to this serial are durable: batches hand out nothing above it.
    durable_serial: AtomicU64,
    durable: Durable,
}

pub struct Fjall {
    inner: Arc<Inner>,
    committer: Committer,
}

fn order_key(prefix: &[u8], serial: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 8);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&serial.to_be_bytes());
    key
}

fn item_key(prefix: &[u8], key: &str) -> Vec<u8> {
    let mut item = Vec::with_capacity(prefix.len() + key.len());
    item.extend_from_slice(prefix);
    item.extend_from_slice(key.as_bytes());
    item
}

impl Fjall {
    pub fn open(dir: &Path, apps: usize) -> Fjall {
        let db = Database::builder(dir.join("fjall")).open().expect("open fjall");
        let items = db.keyspace("items", KeyspaceCreateOptions::default).expect("items");
        let order = db.keyspace("order", KeyspaceCreateOptions::default).expect("order");
        let prefixes = (0..apps).map(|app| format!("app_fanout{app:04}/").into_bytes()).collect();
        let inner = Arc::new(Inner {
            db,
            items,
            order,
            prefixes,
            writes: Mutex::new(()),
            durable_serial: AtomicU64::new(0),
            durable: Durable::default(),
        });
        let committer = {
            let inner = inner.clone();
            Committer::spawn("fjall-committer", move |rounds| commit_rounds(&inner, rounds))
        };
        Fjall { inner, committer }
    }
}

fn commit_rounds(inner: &Inner, rounds: Receiver<Round>) {
    while let Ok((number, round)) = rounds.recv() {
        if let Err(error) = inner.write_round(&round) {
            inner.durable.fail(error.to_string());
            return;
        }
        let last = round.iter().flatten().map(|(serial, _)| *serial).max().unwrap_or(0);
        inner.durable_serial.fetch_max(last, Ordering::Release);
        inner.durable.mark(number);
    }
}

impl Inner {
    fn write_round(&self, round: &[Vec<(u64, Event)>]) -> fjall::Result<()> {
        {
            let _writes = self.writes.lock().unwrap();
            let mut batch = self.db.batch();
            let mut value = Vec::new();
            for (app, events) in round.iter().enumerate() {
                let prefix = &self.prefixes[app];
                for (serial, event) in events {
                    let item = item_key(prefix, &event.key);
                    if let Some(old) = self.items.get(&item)? {
                        if be_u64(&old, 8) > event.version {
                            continue;
                        }
                        batch.remove(&self.order, order_key(prefix, be_u64(&old, 0)));
                    }
                    encode_value(&mut value, Some(*serial), event);
                    batch.insert(&self.items, item, value.as_slice());
                    batch.insert(&self.order, order_key(prefix, *serial), event.key.as_bytes());
                }
            }
            batch.commit()?;
        }
        // The fsync is outside the lock: acknowledgements go on meanwhile.
        self.db.persist(PersistMode::SyncData)
    }

    fn ack(&self, app: usize, delivered: &[(String, u64)]) -> fjall::Result<()> {
        let prefix = &self.prefixes[app];
        let _writes = self.writes.lock().unwrap();
        let mut batch = self.db.batch();
        for (key, serial) in delivered {
            let item = item_key(prefix, key);
            if self.items.get(&item)?.is_some_and(|live| be_u64(&live, 0) == *serial) {
                batch.remove(&self.items, item);
                batch.remove(&self.order, order_key(prefix, *serial));
            }
        }
        // Written to the OS buffers, not synced.
        batch.commit()
    }

    fn next_batch(&self, app: usize, after: u64, max: usize) -> fjall::Result<Vec<Entry>> {
        let prefix = &self.prefixes[app];
        let limit = self.durable_serial.load(Ordering::Acquire);
        let mut entries = Vec::new();
        if after >= limit {
            return Ok(entries);
        }
        let range = order_key(prefix, after + 1)..=order_key(prefix, limit);
        for guard in self.order.range(range) {
            if entries.len() >= max {
                break;
            }
            let (position, key) = guard.into_inner()?;
            let serial = be_u64(&position, prefix.len());
            let key = String::from_utf8_lossy(&key).into_owned();
            // Replaced meanwhile: its new serial is further on.
            let Some(live) = self.items.get(item_key(prefix, &key))? else { continue };
            if be_u64(&live, 0) != serial {
                continue;
            }
            entries.push(Entry { key, serial, json: live[24..].to_vec() });
        }
        Ok(entries)
    }
}

impl Candidate for Fjall {
    fn append(&self, round: Vec<Vec<Event>>) {
        self.committer.append(round);
    }

    fn wait_durable(&self, rounds: u64) {
        self.inner.durable.wait(rounds, Duration::from_secs(120));
    }

    fn next_batch(&self, app: usize, after: u64, max: usize) -> Vec<Entry> {
        self.inner.next_batch(app, after, max).expect("batch")
    }

    fn ack(&self, app: usize, delivered: Vec<(String, u64)>) {
        self.inner.ack(app, &delivered).expect("ack");
    }

    fn close(&self) {
        self.committer.close();
        self.inner.db.persist(PersistMode::SyncData).expect("persist");
    }
}
