//! `presence-load`: a load generator for a Presence dev daemon.
//!
//! Simulates many devices against `presenced serve --dev`, times what an AppService sees,
//! and reports the daemon's memory and CPU. See the `presence_bench::load` module docs
//! for what one run does, and BENCHMARKS.md for the commands behind the published figures.
//!
//! ```sh
//! presence-load --server 127.0.0.1:4433 --data-dir ./presenced-data \
//!     --sessions 10000 --ramp 1000 --heartbeat 30 --changes 100 --duration 30 \
//!     --daemon-pid "$(pgrep -n presenced)" --baseline --json
//! presence-load flood --server 127.0.0.1:4433 --kind both --unpaced --duration 10
//! ```

#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use presence_bench::load::baseline::{BareServer, LISTENING};
use presence_bench::load::flood::{FloodConfig, FloodKind};
use presence_bench::load::{self, LoadConfig};
use tokio::io::AsyncReadExt;

/// Simulates many devices against a Presence dev daemon and reports sessions held,
/// handshake rates, status-change-to-webhook latency, notification round trips and the
/// daemon's memory and CPU.
#[derive(Debug, Parser)]
#[command(
    name = "presence-load",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Args {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// The daemon's QUIC address (loopback unless --allow-remote).
    #[arg(long, required_unless_present = "baseline_server")]
    server: Option<SocketAddr>,
    /// PEM file the devices trust [default: DATA_DIR/tls/cert.pem].
    #[arg(long)]
    ca: Option<PathBuf>,
    /// The dev daemon's data directory: dev.json, token-signing.pk8 and tls/.
    #[arg(long, required = true)]
    data_dir: Option<PathBuf>,
    /// Simulated devices, one session each.
    #[arg(long, default_value_t = 1_000)]
    sessions: usize,
    /// New sessions per second.
    #[arg(long, default_value_t = 500.0)]
    ramp: f64,
    /// Heartbeat interval the devices ask for, seconds (5 to 1800).
    #[arg(long, default_value_t = 30)]
    heartbeat: u64,
    /// Status changes per second, across all sessions.
    #[arg(long, default_value_t = 10.0)]
    changes: f64,
    /// Seconds of steady state after the ramp.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Print the report's JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
    /// The daemon's PID, for RSS and CPU from /proc [default: /metrics, if it has them].
    #[arg(long)]
    daemon_pid: Option<u32>,
    /// Client endpoints (UDP sockets) the sessions are spread over.
    #[arg(long, default_value_t = load::DEFAULT_ENDPOINTS)]
    endpoints: usize,
    /// Also measure a bare quinn server with the daemon's transport settings (in a child
    /// process), for the density ratio.
    #[arg(long)]
    baseline: bool,
    /// Most handshakes in flight.
    #[arg(long, default_value_t = load::DEFAULT_INFLIGHT)]
    inflight: usize,
    /// Reconnects per second across all sessions (resumed handshakes, 0-RTT); 0 for none.
    #[arg(long, default_value_t = load::DEFAULT_RECONNECTS)]
    reconnects: f64,
    /// Seconds between notification probes; 0 for none.
    #[arg(long, default_value_t = load::DEFAULT_NOTIFY_EVERY.as_secs_f64())]
    notify_every: f64,
    /// Allow a server that is not on loopback.
    #[arg(long)]
    allow_remote: bool,
    /// Run as the baseline's bare quinn server (used by --baseline).
    #[arg(long, hide = true)]
    baseline_server: bool,
}

/// Other modes than the load run.
#[derive(Debug, clap::Subcommand)]
enum Mode {
    /// Junk QUIC Initials and garbage datagrams at a daemon, bounded in time and packets.
    Flood(FloodArgs),
}

#[derive(Debug, clap::Args)]
struct FloodArgs {
    /// The daemon's QUIC address (loopback unless --allow-remote).
    #[arg(long)]
    server: SocketAddr,
    /// What to send.
    #[arg(long, value_enum, default_value_t = FloodKind::Both)]
    kind: FloodKind,
    /// Datagrams per second.
    #[arg(long, conflicts_with = "unpaced", required_unless_present = "unpaced")]
    rate: Option<f64>,
    /// As fast as the socket takes them.
    #[arg(long)]
    unpaced: bool,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Most datagrams to send.
    #[arg(long, default_value_t = 10_000_000)]
    max_packets: u64,
    /// Print the report's JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
    /// Allow a server that is not on loopback.
    #[arg(long)]
    allow_remote: bool,
}

fn flood(args: &FloodArgs) -> Result<()> {
    let config = FloodConfig {
        server: args.server,
        kind: args.kind,
        rate: args.rate,
        duration: Duration::from_secs(args.duration),
        max_packets: args.max_packets,
        allow_remote: args.allow_remote,
    };
    let report = load::flood::run(&config).context("flood failed")?;
    let mut stdout = std::io::stdout().lock();
    write!(stdout, "{report}")?;
    if args.json {
        writeln!(stdout, "{}", serde_json::to_string(&report)?)?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(Mode::Flood(flood_args)) = &args.mode {
        return flood(flood_args);
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
    if args.baseline_server {
        return runtime.block_on(baseline_server(args.data_dir.context("--data-dir is required")?));
    }
    let report = runtime.block_on(load::run(config(&args)?)).context("load run failed")?;
    let mut stdout = std::io::stdout().lock();
    write!(stdout, "{report}")?;
    if args.json {
        writeln!(stdout, "{}", serde_json::to_string(&report)?)?;
    }
    Ok(())
}

fn config(args: &Args) -> Result<LoadConfig> {
    let server = args.server.context("--server is required")?;
    let data_dir = args.data_dir.clone().context("--data-dir is required")?;
    let ca = args.ca.clone().unwrap_or_else(|| data_dir.join("tls/cert.pem"));
    let mut config = LoadConfig::new(server, ca, data_dir);
    config.sessions = args.sessions;
    config.ramp = args.ramp;
    config.heartbeat = Duration::from_secs(args.heartbeat);
    config.changes = args.changes;
    config.duration = Duration::from_secs(args.duration);
    config.daemon_pid = args.daemon_pid;
    config.endpoints = args.endpoints;
    config.inflight = args.inflight;
    config.reconnects = args.reconnects;
    config.notify_every = if args.notify_every > 0.0 {
        Some(
            Duration::try_from_secs_f64(args.notify_every)
                .context("--notify-every must be a number of seconds")?,
        )
    } else {
        None
    };
    config.allow_remote = args.allow_remote;
    config.progress = true;
    if args.baseline {
        config.baseline_exe =
            Some(std::env::current_exe().context("cannot find this executable for --baseline")?);
    }
    Ok(config)
}

/// The baseline's child: serve until the parent closes stdin (or the lifetime bound).
async fn baseline_server(data_dir: PathBuf) -> Result<()> {
    let server = BareServer::bind(&data_dir, SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let addr = server.local_addr()?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{LISTENING}{addr}")?;
        stdout.flush()?;
    }
    let parent_gone = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    server.serve(parent_gone).await;
    Ok(())
}
