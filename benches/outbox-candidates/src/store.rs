//! What the workload needs of an outbox, and what the three candidates share.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One event to append, as the daemon's `OutboxEvent`.
#[derive(Debug, Clone)]
pub struct Event {
    /// The compaction key (`p:<puid>`).
    pub key: String,
    /// A waiting event is replaced only by one whose version is at least its own.
    pub version: u64,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// The event's JSON.
    pub json: Vec<u8>,
}

/// One entry of a batch.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub serial: u64,
    pub json: Vec<u8>,
}

/// An outbox as the workload drives it: rounds of appends (one group commit each), batches
/// and acknowledgements. Apps are indexes `0..apps`.
pub trait Candidate: Send + Sync {
    /// Hands one round (per app, its events in call order) to the store. May block while
    /// the store's committer is busy with an earlier round, never for this one's fsync.
    fn append(&self, round: Vec<Vec<Event>>);
    /// Blocks until the first `rounds` rounds appended are durable.
    fn wait_durable(&self, rounds: u64);
    /// The oldest durable entries of `app` whose serial is above `after`, at most `max`.
    fn next_batch(&self, app: usize, after: u64, max: usize) -> Vec<Entry>;
    /// Removes delivered entries whose serial still matches (durable lazily).
    fn ack(&self, app: usize, delivered: Vec<(String, u64)>);
    /// Writes what is left and closes.
    fn close(&self);
}

/// The last event of each key wins, unless a waiting one has a higher version: the
/// daemon's compaction rule within one round. Keeps first-appearance order of the winners
/// by serial (each kept event keeps the serial it was handed in call order).
pub fn compact_round(events: Vec<Event>, next_serial: &mut u64) -> Vec<(u64, Event)> {
    let mut index: HashMap<String, usize> = HashMap::with_capacity(events.len());
    let mut kept: Vec<Option<(u64, Event)>> = Vec::with_capacity(events.len());
    for event in events {
        *next_serial += 1;
        let serial = *next_serial;
        match index.get(&event.key) {
            Some(&at) if kept[at].as_ref().is_some_and(|(_, old)| old.version > event.version) => {}
            Some(&at) => {
                kept[at] = None;
                index.insert(event.key.clone(), kept.len());
                kept.push(Some((serial, event)));
            }
            None => {
                index.insert(event.key.clone(), kept.len());
                kept.push(Some((serial, event)));
            }
        }
    }
    kept.into_iter().flatten().collect()
}

/// Counts durable rounds, for `wait_durable`.
#[derive(Default)]
pub struct Durable {
    rounds: Mutex<u64>,
    changed: Condvar,
    failed: Mutex<Option<String>>,
}

impl Durable {
    pub fn mark(&self, rounds: u64) {
        let mut done = self.rounds.lock().unwrap();
        *done = (*done).max(rounds);
        self.changed.notify_all();
    }

    pub fn fail(&self, error: String) {
        *self.failed.lock().unwrap() = Some(error);
        self.changed.notify_all();
    }

    /// Waits for `rounds`, at most `limit` (a bounded wait: a stuck store ends the run).
    pub fn wait(&self, rounds: u64, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        let mut done = self.rounds.lock().unwrap();
        while *done < rounds {
            if let Some(error) = self.failed.lock().unwrap().as_ref() {
                panic!("store failed: {error}");
            }
            let now = std::time::Instant::now();
            assert!(now < deadline, "round {rounds} not durable within {limit:?}");
            done = self.changed.wait_timeout(done, deadline - now).unwrap().0;
        }
    }
}

/// The stored form of an event beside its serial: version and `at` (8 bytes each,
/// big-endian), then the JSON.
pub fn encode_value(buffer: &mut Vec<u8>, serial: Option<u64>, event: &Event) {
    buffer.clear();
    if let Some(serial) = serial {
        buffer.extend_from_slice(&serial.to_be_bytes());
    }
    buffer.extend_from_slice(&event.version.to_be_bytes());
    buffer.extend_from_slice(&event.at_ms.to_be_bytes());
    buffer.extend_from_slice(&event.json);
}

/// Reads 8 big-endian bytes at `at`.
pub fn be_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// One round for a committer thread: its number and, per app, its compacted events under
/// their serials.
pub type Round = (u64, Vec<Vec<(u64, Event)>>);

/// The front the fjall and redb candidates share: serials handed out in call order, each
/// round compacted ([`compact_round`]) and handed to one committer thread. One round may
/// wait while the previous one is written: the pipeline is two deep.
pub struct Committer {
    /// The last serial handed out, and the last round's number.
    next: Mutex<(u64, u64)>,
    sender: Mutex<Option<SyncSender<Round>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Committer {
    /// Starts the thread `name`, which runs `commit` over the rounds until they end.
    pub fn spawn(name: &str, commit: impl FnOnce(Receiver<Round>) + Send + 'static) -> Committer {
        let (sender, receiver) = sync_channel(1);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || commit(receiver))
            .expect("committer thread");
        Committer {
            next: Mutex::new((0, 0)),
            sender: Mutex::new(Some(sender)),
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Compacts a round under fresh serials and queues it ([`Candidate::append`]).
    pub fn append(&self, round: Vec<Vec<Event>>) {
        let (round, number) = {
            let mut next = self.next.lock().unwrap();
            let round: Vec<Vec<(u64, Event)>> =
                round.into_iter().map(|events| compact_round(events, &mut next.0)).collect();
            next.1 += 1;
            (round, next.1)
        };
        let sender = self.sender.lock().unwrap();
        sender.as_ref().expect("open").send((number, round)).expect("committer alive");
    }

    /// Ends the rounds and waits for the thread to write what it holds.
    pub fn close(&self) {
        self.sender.lock().unwrap().take();
        if let Some(thread) = self.thread.lock().unwrap().take() {
            thread.join().expect("committer");
        }
    }
}
