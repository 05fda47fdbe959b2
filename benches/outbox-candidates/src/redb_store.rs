//! `redb-batched`: the old redb outbox (commit 96ada54) used differently.
//!
//! - Two tables, one per concern, and no other touched per event: `outbox` (app, key) →
//!   (serial, version + at + JSON) for compaction, `outbox_order` (app, serial) → key for
//!   order. The old design also read `apps` and wrote `outbox_depth` and `meta` in every
//!   transaction; here registration and depth are the caller's (in memory), and serials are
//!   handed out in memory.
//! - One write transaction per round, `Durability::Immediate` (one fsync).
//! - Acknowledgements are buffered in memory (hidden from batches at once) and folded into
//!   the next round's transaction, so they cost no transaction, no fsync and no page copy of
//!   their own, and the pages they free are freed by a durable commit. When no round comes
//!   within [`ACK_IDLE`], they commit alone with `Durability::Eventual`: a durable commit
//!   in redb's sense (pages are freed) without an fsync. The old design committed each
//!   acknowledgement call with `Durability::None`, whose freed pages redb only releases at a
//!   later durable commit.

use std::collections::HashSet;
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redb::{Database, Durability, ReadableTable, TableDefinition};

use crate::store::{Candidate, Committer, Durable, Entry, Event, Round, be_u64, encode_value};

const OUTBOX: TableDefinition<'_, (&str, &str), (u64, &[u8])> = TableDefinition::new("outbox");
const ORDER: TableDefinition<'_, (&str, u64), &str> = TableDefinition::new("outbox_order");

/// How long buffered acknowledgements wait for a round to ride in.
const ACK_IDLE: Duration = Duration::from_millis(10);

struct Inner {
    db: Database,
    apps: Vec<String>,
    /// Per app, the serials acknowledged and not yet committed: batches skip them. Held
    /// by a batch for its whole read, so the committer clears them only once no batch can
    /// read a snapshot from before their commit.
    hidden: Vec<Mutex<HashSet<u64>>>,
    /// Acknowledgements waiting for a transaction: (app, key, serial).
    acks: Mutex<Vec<(usize, String, u64)>>,
    durable: Durable,
}

pub struct RedbBatched {
    inner: Arc<Inner>,
    committer: Committer,
}

impl RedbBatched {
    pub fn open(dir: &Path, apps: usize) -> RedbBatched {
        let db = Database::create(dir.join("outbox.redb")).expect("open redb");
        {
            let txn = db.begin_write().expect("txn");
            txn.open_table(OUTBOX).expect("outbox");
            txn.open_table(ORDER).expect("order");
            txn.commit().expect("commit");
        }
        let inner = Arc::new(Inner {
            db,
            apps: (0..apps).map(|app| format!("app_fanout{app:04}")).collect(),
            hidden: (0..apps).map(|_| Mutex::new(HashSet::new())).collect(),
            acks: Mutex::new(Vec::new()),
            durable: Durable::default(),
        });
        let committer = {
            let inner = inner.clone();
            Committer::spawn("redb-committer", move |rounds| commit_rounds(&inner, rounds))
        };
        RedbBatched { inner, committer }
    }
}

fn commit_rounds(inner: &Inner, rounds: Receiver<Round>) {
    loop {
        let (round, durability, closing) = match rounds.recv_timeout(ACK_IDLE) {
            Ok(round) => (Some(round), Durability::Immediate, false),
            Err(RecvTimeoutError::Timeout) => (None, Durability::Eventual, false),
            // Closing: what is left goes durably.
            Err(RecvTimeoutError::Disconnected) => (None, Durability::Immediate, true),
        };
        let acks = std::mem::take(&mut *inner.acks.lock().unwrap());
        if round.is_some() || !acks.is_empty() {
            let appends = round.as_ref().map_or(&[][..], |(_, round)| round.as_slice());
            if let Err(error) = inner.write(appends, &acks, durability) {
                inner.durable.fail(error.to_string());
                return;
            }
            for (app, _, serial) in &acks {
                inner.hidden[*app].lock().unwrap().remove(serial);
            }
            if let Some((number, _)) = round {
                inner.durable.mark(number);
            }
        } else if closing {
            return;
        }
    }
}

impl Inner {
    /// One transaction: the buffered acknowledgements, then the round's appends.
    fn write(
        &self,
        round: &[Vec<(u64, Event)>],
        acks: &[(usize, String, u64)],
        durability: Durability,
    ) -> Result<(), redb::Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(durability);
        {
            let mut outbox = txn.open_table(OUTBOX)?;
            let mut order = txn.open_table(ORDER)?;
            for (app, key, serial) in acks {
                let app = self.apps[*app].as_str();
                let current = outbox.get((app, key.as_str()))?.map(|v| v.value().0);
                if current == Some(*serial) {
                    outbox.remove((app, key.as_str()))?;
                    order.remove((app, *serial))?;
                }
            }
            let mut value = Vec::new();
            for (app, events) in round.iter().enumerate() {
                let app = self.apps[app].as_str();
                for (serial, event) in events {
                    encode_value(&mut value, None, event);
                    let replaced = outbox
                        .insert((app, event.key.as_str()), (*serial, value.as_slice()))?
                        .map(|old| (old.value().0, old.value().1.to_vec()));
                    match replaced {
                        // A waiting version is higher: it goes back (rare; the common path
                        // is one insert).
                        Some((old_serial, old)) if be_u64(&old, 0) > event.version => {
                            outbox.insert((app, event.key.as_str()), (old_serial, old.as_slice()))?;
                            continue;
                        }
                        Some((old_serial, _)) => {
                            order.remove((app, old_serial))?;
                        }
                        None => {}
                    }
                    order.insert((app, *serial), event.key.as_str())?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn next_batch(&self, app: usize, after: u64, max: usize) -> Result<Vec<Entry>, redb::Error> {
        let hidden = self.hidden[app].lock().unwrap();
        let app_id = self.apps[app].as_str();
        let txn = self.db.begin_read()?;
        let order = txn.open_table(ORDER)?;
        let outbox = txn.open_table(OUTBOX)?;
        let mut entries = Vec::new();
        for item in order.range((app_id, after.saturating_add(1))..=(app_id, u64::MAX))? {
            if entries.len() >= max {
                break;
            }
            let (position, key) = item?;
            let serial = position.value().1;
            if hidden.contains(&serial) {
                continue;
            }
            let key = key.value().to_owned();
            let Some(value) = outbox.get((app_id, key.as_str()))? else { continue };
            let (stored_serial, stored) = value.value();
            if stored_serial != serial {
                continue;
            }
            entries.push(Entry { key, serial, json: stored[16..].to_vec() });
        }
        Ok(entries)
    }
}

impl Candidate for RedbBatched {
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
        let mut hidden = self.inner.hidden[app].lock().unwrap();
        let mut acks = self.inner.acks.lock().unwrap();
        for (key, serial) in delivered {
            hidden.insert(serial);
            acks.push((app, key, serial));
        }
    }

    fn close(&self) {
        self.committer.close();
    }
}
