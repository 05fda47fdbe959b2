//! `presence-fanout`: webhook fan-out throughput on this machine.
//!
//! Publishes presence changes into the daemon's real fan-out (the durable outbox in a
//! fresh data directory, batching, Standard Webhooks signing, HTTPS) and counts them at a
//! verifying HTTPS receiver on loopback. See the `presence_bench::fanout` module docs for
//! what one run does, and BENCHMARKS.md for the published figures.
//!
//! ```sh
//! presence-fanout --events 200000 --puids 100000 --apps 4 --json
//! ```

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use presence_bench::fanout::{self, FanoutRun, StoreKind};

/// Measures webhook fan-out throughput into a loopback receiver.
#[derive(Debug, Parser)]
#[command(name = "presence-fanout", version)]
struct Args {
    /// Presence changes to publish.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Distinct PUIDs per app (fewer than events / apps makes the outbox coalesce).
    #[arg(long, default_value_t = 100_000)]
    puids: u64,
    /// Registered apps, each with its own outbox and delivery task.
    #[arg(long, default_value_t = 4)]
    apps: u64,
    /// Changes per second to publish at [default: as fast as publish returns].
    #[arg(long)]
    rate: Option<f64>,
    /// Batch window, milliseconds (the daemon's --webhook-window).
    #[arg(long, default_value_t = 250)]
    window_ms: u64,
    /// Most events per POST (the daemon's --webhook-max-events).
    #[arg(long, default_value_t = 1_000)]
    max_events: usize,
    /// Most batches of one app in flight (the daemon's --webhook-in-flight).
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    /// Seconds to wait for deliveries before giving up.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Worker threads of the fan-out's runtime.
    #[arg(long, default_value_t = 2)]
    fanout_threads: usize,
    /// Worker threads of the receiver's runtime.
    #[arg(long, default_value_t = 2)]
    receiver_threads: usize,
    /// Data directory for the store and the dev certificate [default: a fresh temporary
    /// directory, removed afterwards].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where the outbox lives: `embedded` (the daemon's: its log beside the redb file;
    /// `redb` is an older name for it) or `memory` (a diagnostic without the durable
    /// outbox).
    #[arg(long, value_enum, default_value = "embedded")]
    store: Store,
    /// Seconds between samples of the store's size on disk (the report's `disk_curve`).
    #[arg(long, default_value_t = 1.0)]
    sample_secs: f64,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

/// `--store`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Store {
    #[value(alias = "redb")]
    Embedded,
    Memory,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let config = FanoutRun {
        events: args.events,
        puids: args.puids,
        apps: args.apps,
        rate: args.rate,
        batch_window: Duration::from_millis(args.window_ms),
        max_events: args.max_events,
        max_in_flight: args.in_flight,
        timeout: Duration::from_secs(args.timeout),
        fanout_threads: args.fanout_threads,
        receiver_threads: args.receiver_threads,
        sample_every: Duration::from_secs_f64(args.sample_secs.max(0.01)),
        store: match args.store {
            Store::Embedded => StoreKind::Embedded,
            Store::Memory => StoreKind::Memory,
        },
    };
    let temp = tempfile::tempdir().context("cannot create a temporary data directory")?;
    let dir = args.data_dir.unwrap_or_else(|| temp.path().to_path_buf());
    let report = fanout::run(&config, &dir)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
