//! Issue 13's outbox candidates side by side, on the outbox's workload: the daemon's log
//! (`log`), a minimal outbox on fjall (`fjall`) and the old redb outbox used differently
//! (`redb-batched`).
//!
//! One run, one store, in a fresh directory: one publisher thread appends `--events`
//! presence events (round-robin over `--apps` apps and `--puids` PUIDs per app, with a
//! rising `seq`) in rounds of `--round` events, one group commit each, as fast as the store
//! takes them: round k is handed over while round k−1 is being written, and round k+1 waits
//! until round k−1 is durable. Meanwhile one consumer thread per app loops
//! `next_batch(--batch events)` → `ack` until every round is durable and its outbox is
//! empty. Prints one JSON line: events/s, bytes on disk (sampled every second; at the end
//! and the peak), the process's CPU.
//!
//! Every loop is bounded: rounds by `--events`, waits by `--timeout`.

mod fjall_store;
mod log;
mod redb_store;
mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use store::{Candidate, Event};

struct Args {
    store: String,
    events: u64,
    puids: u64,
    apps: u64,
    round: u64,
    batch: usize,
    dir: PathBuf,
    timeout: Duration,
    /// Consumers pass the last serial they delivered instead of 0 (the daemon's fan-out
    /// passes 0 once nothing is in flight, as here by default).
    cursor: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: outbox-candidates --store log|fjall|redb-batched [--events 2000000] [--puids 100000] \
         [--apps 4] [--round 10000] [--batch 1000] [--dir /tmp/outbox-candidates] [--timeout 600] [--cursor]"
    );
    std::process::exit(2)
}

fn parse() -> Args {
    let mut args = Args {
        store: String::new(),
        events: 2_000_000,
        puids: 100_000,
        apps: 4,
        round: 10_000,
        batch: 1000,
        dir: PathBuf::from("/tmp/outbox-candidates"),
        timeout: Duration::from_secs(600),
        cursor: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        let number = |v: String| v.parse::<u64>().unwrap_or_else(|_| usage());
        match flag.as_str() {
            "--store" => args.store = value(),
            "--events" => args.events = number(value()),
            "--puids" => args.puids = number(value()),
            "--apps" => args.apps = number(value()),
            "--round" => args.round = number(value()),
            "--batch" => args.batch = number(value()) as usize,
            "--dir" => args.dir = PathBuf::from(value()),
            "--timeout" => args.timeout = Duration::from_secs(number(value())),
            "--cursor" => args.cursor = true,
            _ => usage(),
        }
    }
    if !["log", "fjall", "redb-batched"].contains(&args.store.as_str())
        || args.events == 0
        || args.puids == 0
        || args.apps == 0
        || args.round == 0
        || args.batch == 0
    {
        usage();
    }
    args
}

/// Bytes of the files under `path`, recursively (their lengths, as `presence-fanout` counts).
fn bytes_on_disk(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => bytes_on_disk(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// This process's CPU ticks (user + system), ended threads included.
fn process_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    // After the command: state is field 3, utime 14 and stime 15 (1-based), so 11 and 12 here.
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    tick(11) + tick(12)
}

fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A PUID-shaped string (22 characters, as the daemon's) for (app, user).
fn puid(app: u64, user: u64) -> String {
    let mut x = (app << 40) ^ user ^ 0x9e37_79b9_7f4a_7c15;
    let mut out = String::with_capacity(22);
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for _ in 0..22 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(ALPHABET[(x & 63) as usize] as char);
    }
    out
}

fn main() {
    let args = parse();
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir).expect("create the directory");
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let app_ids: Vec<String> = (0..args.apps).map(|k| format!("app_fanout{k:04}")).collect();
    let store: Arc<dyn Candidate> = match args.store.as_str() {
        "log" => Arc::new(log::Log::open(&args.dir, &app_ids, runtime.handle().clone())),
        "fjall" => Arc::new(fjall_store::Fjall::open(&args.dir, app_ids.len())),
        _ => Arc::new(redb_store::RedbBatched::open(&args.dir, app_ids.len())),
    };
    let puids: Arc<Vec<Vec<String>>> =
        Arc::new((0..args.apps).map(|app| (0..args.puids).map(|user| puid(app, user)).collect()).collect());
    let load_before = load_average();
    let bytes_before = bytes_on_disk(&args.dir);

    let published = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let all_durable = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicBool::new(false));
    let timed_out = Arc::new(AtomicBool::new(false));
    let ticks_before = process_ticks();
    let started = Instant::now();
    let deadline = started + args.timeout;

    let sampler = {
        let (dir, finished, published, delivered) =
            (args.dir.clone(), finished.clone(), published.clone(), delivered.clone());
        std::thread::spawn(move || {
            let mut curve = Vec::new();
            let mut next = Instant::now();
            while !finished.load(Ordering::Acquire) && Instant::now() < deadline + Duration::from_secs(5) {
                if Instant::now() >= next {
                    curve.push((
                        (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                        bytes_on_disk(&dir),
                        published.load(Ordering::Relaxed),
                        delivered.load(Ordering::Relaxed),
                    ));
                    next += Duration::from_secs(1);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            curve
        })
    };

    let publisher = {
        let (store, puids, published, all_durable) =
            (store.clone(), puids.clone(), published.clone(), all_durable.clone());
        let (events, apps, per_app, round) = (args.events, args.apps, args.puids, args.round);
        std::thread::Builder::new()
            .name("publisher".into())
            .spawn(move || {
                const STATUSES: [&str; 3] = ["online", "away", "unavailable"];
                let rounds = events.div_ceil(round);
                for k in 0..rounds {
                    let mut batch: Vec<Vec<Event>> = (0..apps).map(|_| Vec::new()).collect();
                    let at_ms = unix_ms();
                    for i in k * round..((k + 1) * round).min(events) {
                        let app = i % apps;
                        let user = (i / apps) % per_app;
                        let status = STATUSES[(i / (apps * per_app)) as usize % STATUSES.len()];
                        let puid = &puids[app as usize][user as usize];
                        let seq = i + 1;
                        let json = format!(
                            r#"{{"type":"presence","puid":"{puid}","status":"{status}","message":"","seq":{seq},"at":{at_ms}}}"#
                        );
                        batch[app as usize].push(Event {
                            key: format!("p:{puid}"),
                            version: seq,
                            at_ms,
                            json: json.into_bytes(),
                        });
                    }
                    store.append(batch);
                    // At most one round written while this one waits.
                    store.wait_durable(k);
                    published.store(((k + 1) * round).min(events), Ordering::Relaxed);
                }
                store.wait_durable(rounds);
                let seconds = started.elapsed().as_secs_f64();
                all_durable.store(true, Ordering::Release);
                (seconds, rounds)
            })
            .expect("publisher thread")
    };

    let consumers: Vec<_> = (0..args.apps as usize)
        .map(|app| {
            let (store, delivered, all_durable, timed_out) =
                (store.clone(), delivered.clone(), all_durable.clone(), timed_out.clone());
            let (max, cursor) = (args.batch, args.cursor);
            std::thread::Builder::new()
                .name(format!("consumer{app}"))
                .spawn(move || {
                    let mut after = 0;
                    let mut batches = 0u64;
                    loop {
                        if Instant::now() >= deadline {
                            timed_out.store(true, Ordering::Relaxed);
                            break;
                        }
                        // Read before the batch: an empty batch after every round is durable
                        // means this app's outbox is empty.
                        let done = all_durable.load(Ordering::Acquire);
                        let batch = store.next_batch(app, if cursor { after } else { 0 }, max);
                        if batch.is_empty() {
                            if done {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(1));
                            continue;
                        }
                        batches += 1;
                        delivered.fetch_add(batch.len() as u64, Ordering::Relaxed);
                        after = batch.last().map_or(after, |entry| entry.serial);
                        let json_bytes: usize = batch.iter().map(|entry| entry.json.len()).sum();
                        std::hint::black_box(json_bytes);
                        store.ack(app, batch.into_iter().map(|entry| (entry.key, entry.serial)).collect());
                    }
                    batches
                })
                .expect("consumer thread")
        })
        .collect();

    let (publish_seconds, rounds) = publisher.join().expect("publisher");
    let batches: u64 = consumers.into_iter().map(|c| c.join().expect("consumer")).sum();
    let seconds = started.elapsed().as_secs_f64();
    let ticks = process_ticks().saturating_sub(ticks_before);
    let bytes_end = bytes_on_disk(&args.dir);
    finished.store(true, Ordering::Release);
    let curve = sampler.join().expect("sampler");
    let load_after = load_average();
    let close_started = Instant::now();
    store.close();
    let close_seconds = close_started.elapsed().as_secs_f64();
    let bytes_closed = bytes_on_disk(&args.dir);
    let peak = curve.iter().map(|s| s.1).max().unwrap_or(0).max(bytes_end);
    let delivered = delivered.load(Ordering::Relaxed);
    let ticks_per_second = 100.0; // CLK_TCK on Linux
    let report = serde_json::json!({
        "store": args.store,
        "events": args.events,
        "apps": args.apps,
        "puids_per_app": args.puids,
        "round": args.round,
        "rounds": rounds,
        "batch": args.batch,
        "cursor": args.cursor,
        "publish_seconds": (publish_seconds * 1000.0).round() / 1000.0,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "events_per_second": (args.events as f64 / seconds).round(),
        "publish_events_per_second": (args.events as f64 / publish_seconds).round(),
        "delivered": delivered,
        "batches": batches,
        "cpu_percent": (ticks as f64 / ticks_per_second / seconds * 1000.0).round() / 10.0,
        "cpu_seconds": ticks as f64 / ticks_per_second,
        "bytes_before": bytes_before,
        "bytes_end": bytes_end,
        "bytes_peak": peak,
        "bytes_after_close": bytes_closed,
        "close_seconds": (close_seconds * 1000.0).round() / 1000.0,
        "peak_rss_bytes": peak_rss_bytes(),
        "load_before": load_before,
        "load_after": load_after,
        "timed_out": timed_out.load(Ordering::Relaxed),
        "disk_curve": curve.iter().map(|(s, b, p, d)| serde_json::json!([s, b, p, d])).collect::<Vec<_>>(),
    });
    println!("{report}");
    drop(store);
    drop(runtime);
}
