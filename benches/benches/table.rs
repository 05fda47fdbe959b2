//! Presence-table updates under contention, against the alternatives measured in the same
//! run.
//!
//! - `table_update/presence_table`: `PresenceTable::update` (dashmap underneath) flipping a
//!   device between online and away, so every call re-aggregates, takes a sequence number
//!   and emits an event: the whole per-change cost of the daemon's table.
//! - `table_update/presence_table_outbox`: the same with a sink that does what the daemon's
//!   outbox path does per event (encode the webhook JSON, push it into one shared
//!   `Mutex<Vec>`): shows what publishing under, or after, the user's shard lock costs.
//! - `table_update/{dashmap,papaya,scc,sharded_rwlock,mutex}`: the map alone, the same
//!   operation (find the user's entry, flip its status, bump a counter) in the table's
//!   `DashMap`, in the lock-free `papaya::HashMap` (copy-on-write values; its `update` takes
//!   the key by value, so a `String` clone per update) and `scc::HashMap` (per-bucket locks),
//!   in a hand-sharded `RwLock<HashMap>` with as many shards as dashmap's default, and in
//!   one `Mutex<HashMap>` (the unsharded floor).
//! - `table_read/{dashmap,papaya,scc}`: API reads (`GET /v1/presence`): two threads read
//!   random users' entries while a third updates, the reads counted.
//!
//! Each is run by 1 and by 2 threads over 10,000 users picked at random (spread: two
//! threads rarely meet on a shard lock at the same instant), and by 2 threads over 16 users
//! (hot: they keep meeting). Throughput is updates per second summed over the threads;
//! every thread does the same number of updates and the time is until both are done.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::hint::black_box;
use std::sync::{Arc, Barrier, Mutex, RwLock};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dashmap::DashMap;
use presence_protocol::{AppId, Status};
use presenced::clock::Clock;
use presenced::testing::handle::SessionHandle;
use presenced::testing::metrics::Metrics;
use presenced::testing::puid::PuidKey;
use presenced::testing::table::{DeviceState, PresenceEvent, PresenceSink, PresenceTable};

const DEVICE: &str = "phone";

/// One user's entry in the map-only variants: what a table update touches.
#[derive(Debug, Clone, Default)]
struct Entry {
    status: u8,
    changes: u64,
}

impl Entry {
    fn flip(&mut self) {
        self.status ^= 1;
        self.changes += 1;
    }
}

/// The operation every variant performs for user `i`.
trait Update: Sync {
    fn update(&self, i: usize);
}

struct Table {
    table: PresenceTable,
    users: Vec<String>,
}

/// What the daemon's outbox path does with each event, in one shared buffer as the
/// fan-out's `Mutex<Buffer>` is: encode it, keep it (bounded here by clearing).
#[derive(Debug, Default)]
struct OutboxLike {
    buffer: Mutex<Vec<(String, Vec<u8>)>>,
}

impl PresenceSink for OutboxLike {
    fn publish(&self, event: &PresenceEvent) {
        let Some(encoded) =
            presenced::testing::outbound::encode(&presenced::testing::outbound::presence_event(event))
        else {
            return;
        };
        let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        if buffer.len() >= 4_096 {
            buffer.clear();
        }
        buffer.push((encoded.key, encoded.json));
    }
}

impl Table {
    fn new(users: usize, sink: Option<Arc<dyn PresenceSink>>) -> Table {
        let key = PuidKey::new(&[7; 32]).expect("32-byte secret");
        let table = PresenceTable::new(key, Arc::new(Metrics::default()), Clock::system(), sink);
        let app = AppId::new("app_benchmark000").expect("app id");
        let users = user_names(users);
        for (i, user) in users.iter().enumerate() {
            let (handle, _commands) = SessionHandle::new(i as u64);
            let state = DeviceState {
                status: Status::Online,
                idle: false,
                message: String::new(),
                visibility: vec![app.clone()],
            };
            table.connect(user, DEVICE, handle, state).expect("one device per user");
        }
        Table { table, users }
    }
}

impl Update for Table {
    fn update(&self, i: usize) {
        self.table.update(&self.users[i], DEVICE, i as u64, |state| {
            state.status = if state.status == Status::Online { Status::Away } else { Status::Online };
        });
    }
}

struct Dash {
    map: DashMap<String, Entry>,
    users: Vec<String>,
}

impl Update for Dash {
    fn update(&self, i: usize) {
        if let Some(mut entry) = self.map.get_mut(&self.users[i]) {
            entry.flip();
        }
    }
}

struct Papaya {
    map: papaya::HashMap<String, Entry>,
    users: Vec<String>,
}

impl Update for Papaya {
    fn update(&self, i: usize) {
        self.map.pin().update(self.users[i].clone(), |entry| {
            let mut entry = entry.clone();
            entry.flip();
            entry
        });
    }
}

struct Scc {
    map: scc::HashMap<String, Entry>,
    users: Vec<String>,
}

impl Update for Scc {
    fn update(&self, i: usize) {
        self.map.update_sync(self.users[i].as_str(), |_, entry| entry.flip());
    }
}

/// A read of one user's entry, as `GET /v1/presence/{puid}` does.
trait Read: Update {
    fn read(&self, i: usize) -> u64;
}

impl Read for Dash {
    fn read(&self, i: usize) -> u64 {
        self.map.get(&self.users[i]).map_or(0, |entry| entry.changes)
    }
}

impl Read for Papaya {
    fn read(&self, i: usize) -> u64 {
        self.map.pin().get(&self.users[i]).map_or(0, |entry| entry.changes)
    }
}

impl Read for Scc {
    fn read(&self, i: usize) -> u64 {
        self.map.read_sync(self.users[i].as_str(), |_, entry| entry.changes).unwrap_or(0)
    }
}

/// A `RwLock<HashMap>` per shard, the shard picked by the key's hash (as dashmap does).
struct ShardedRwLock {
    shards: Vec<RwLock<HashMap<String, Entry>>>,
    hasher: RandomState,
    users: Vec<String>,
}

impl ShardedRwLock {
    fn shard(&self, key: &str) -> &RwLock<HashMap<String, Entry>> {
        let hash = self.hasher.hash_one(key) as usize;
        &self.shards[hash % self.shards.len()]
    }
}

impl Update for ShardedRwLock {
    fn update(&self, i: usize) {
        let key = &self.users[i];
        let mut shard = self.shard(key).write().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = shard.get_mut(key) {
            entry.flip();
        }
    }
}

struct Single {
    map: Mutex<HashMap<String, Entry>>,
    users: Vec<String>,
}

impl Update for Single {
    fn update(&self, i: usize) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = map.get_mut(&self.users[i]) {
            entry.flip();
        }
    }
}

fn user_names(users: usize) -> Vec<String> {
    (0..users).map(|i| format!("user-{i:08}")).collect()
}

/// dashmap's default shard count: four per core, rounded up to a power of two.
fn default_shards() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores * 4).next_power_of_two()
}

fn dash(names: &[String]) -> Dash {
    Dash { map: names.iter().map(|u| (u.clone(), Entry::default())).collect(), users: names.to_vec() }
}

fn papaya(names: &[String]) -> Papaya {
    let map = papaya::HashMap::new();
    for name in names {
        map.pin().insert(name.clone(), Entry::default());
    }
    Papaya { map, users: names.to_vec() }
}

fn scc(names: &[String]) -> Scc {
    let map = scc::HashMap::new();
    for name in names {
        let _ = map.insert_sync(name.clone(), Entry::default());
    }
    Scc { map, users: names.to_vec() }
}

fn variants(users: usize) -> Vec<(&'static str, Box<dyn Update>)> {
    let names = user_names(users);
    let dash = dash(&names);
    let hasher = RandomState::new();
    let mut shards: Vec<HashMap<String, Entry>> = (0..default_shards()).map(|_| HashMap::new()).collect();
    for name in &names {
        let index = hasher.hash_one(name.as_str()) as usize % shards.len();
        shards[index].insert(name.clone(), Entry::default());
    }
    let sharded =
        ShardedRwLock { shards: shards.into_iter().map(RwLock::new).collect(), hasher, users: names.clone() };
    let single = Single {
        map: Mutex::new(names.iter().map(|u| (u.clone(), Entry::default())).collect()),
        users: names,
    };
    let outbox: Arc<dyn PresenceSink> = Arc::new(OutboxLike::default());
    vec![
        ("presence_table", Box::new(Table::new(users, None))),
        ("presence_table_outbox", Box::new(Table::new(users, Some(outbox)))),
        ("dashmap", Box::new(dash)),
        ("papaya", Box::new(papaya(&user_names(users)))),
        ("scc", Box::new(scc(&user_names(users)))),
        ("sharded_rwlock", Box::new(sharded)),
        ("mutex", Box::new(single)),
    ]
}

/// `threads` threads each doing `iters` updates of random users; the wall time until all
/// are done.
fn run(variant: &dyn Update, users: usize, threads: usize, iters: u64) -> Duration {
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let barrier = &barrier;
            scope.spawn(move || {
                let mut rng = fastrand::Rng::with_seed(t as u64 + 1);
                barrier.wait();
                for _ in 0..iters {
                    variant.update(black_box(rng.usize(..users)));
                }
                barrier.wait();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        start.elapsed()
    })
}

fn table_update(c: &mut Criterion) {
    let mut group = c.benchmark_group("table_update");
    for (users, threads) in [(10_000, 1), (10_000, 2), (16, 2)] {
        group.throughput(Throughput::Elements(threads as u64));
        for (name, variant) in variants(users) {
            let id = BenchmarkId::new(name, format!("{users}_users_{threads}_threads"));
            group.bench_function(id, |b| b.iter_custom(|iters| run(variant.as_ref(), users, threads, iters)));
        }
    }
    group.finish();
}

/// Two threads each doing `iters` reads of random users while a third keeps updating; the
/// wall time until both readers are done.
fn run_reads(variant: &dyn Read, users: usize, iters: u64) -> Duration {
    let readers = 2;
    let barrier = Barrier::new(readers + 1);
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut rng = fastrand::Rng::with_seed(99);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                variant.update(rng.usize(..users));
            }
        });
        for t in 0..readers {
            let barrier = &barrier;
            scope.spawn(move || {
                let mut rng = fastrand::Rng::with_seed(t as u64 + 1);
                barrier.wait();
                for _ in 0..iters {
                    black_box(variant.read(black_box(rng.usize(..users))));
                }
                barrier.wait();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        let elapsed = start.elapsed();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        elapsed
    })
}

fn table_read(c: &mut Criterion) {
    let mut group = c.benchmark_group("table_read");
    let users = 10_000;
    group.throughput(Throughput::Elements(2));
    let names = user_names(users);
    let variants: Vec<(&str, Box<dyn Read>)> = vec![
        ("dashmap", Box::new(dash(&names))),
        ("papaya", Box::new(papaya(&names))),
        ("scc", Box::new(scc(&names))),
    ];
    for (name, variant) in variants {
        let id = BenchmarkId::new(name, format!("{users}_users_2_readers_1_writer"));
        group.bench_function(id, |b| b.iter_custom(|iters| run_reads(variant.as_ref(), users, iters)));
    }
    group.finish();
}

criterion_group!(benches, table_update, table_read);
criterion_main!(benches);
