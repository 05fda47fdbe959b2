//! `presence`: a device on the command line. Connects, prints what happens as lines (JSON
//! with `--json`), and reads commands from standard input.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use presence_client::{AdaptCause, AdaptiveHeartbeat, Client, ClientOptions, Event, IdlePolicy, transport};
use presence_protocol::Status;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Debug, Parser)]
#[command(name = "presence", version, about = "A Presence device on the command line")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Keep a session and print what happens. Commands on stdin: `status STATUS [MESSAGE]`,
    /// `allow APP_ID`, `authorize APP_ID STATE`, `revoke APP_ID`, `accept ID`, `dismiss ID`,
    /// `active` (resets the idle timers), `quit`.
    Connect(ConnectArgs),
}

#[derive(Debug, clap::Args)]
struct ConnectArgs {
    /// The daemon's QUIC address, `HOST:PORT`; repeat for the nodes of a cluster. A name
    /// may resolve to several addresses: each is a server. The session goes to one at a
    /// time and fails over to the next when it goes down or stops being acknowledged.
    #[arg(long = "server", required = true)]
    servers: Vec<String>,
    /// PEM file with the CA certificate to trust (the dev daemon's tls/cert.pem).
    #[arg(long)]
    ca: PathBuf,
    /// Device token (a JWT); `presenced token` prints a dev one.
    #[arg(long, env = "PRESENCE_TOKEN")]
    token: String,
    /// Name the server certificate must carry.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Initial status: online, away, unavailable or offline.
    #[arg(long, default_value = "online")]
    status: Status,
    /// Initial status message.
    #[arg(long, default_value = "")]
    message: String,
    /// An app allowed to see this device's presence; repeat for several.
    #[arg(long = "allow")]
    allow: Vec<String>,
    /// Heartbeat interval in seconds (with `--adaptive-heartbeat`: unused).
    #[arg(long, default_value_t = 25)]
    heartbeat: u64,
    /// Learn the longest heartbeat interval the path's NAT allows, between
    /// `--heartbeat-min` and `--heartbeat-max`, with delayed echoes from the daemon.
    #[arg(long)]
    adaptive_heartbeat: bool,
    /// Adaptive heartbeat: the shortest interval in seconds, used without proof.
    #[arg(long, default_value_t = AdaptiveHeartbeat::DEFAULT_MIN.as_secs(), requires = "adaptive_heartbeat")]
    heartbeat_min: u64,
    /// Adaptive heartbeat: the longest interval in seconds, asked for in the Hello.
    #[arg(long, default_value_t = AdaptiveHeartbeat::DEFAULT_MAX.as_secs(), requires = "adaptive_heartbeat")]
    heartbeat_max: u64,
    /// Adaptive heartbeat: seconds a learned interval is kept before probing again.
    #[arg(long, default_value_t = AdaptiveHeartbeat::DEFAULT_REPROBE_AFTER.as_secs(), requires = "adaptive_heartbeat")]
    heartbeat_reprobe: u64,
    /// Turn away after this many idle seconds (no `active` command).
    #[arg(long)]
    away_after: Option<u64>,
    /// Appear offline after this many idle seconds.
    #[arg(long)]
    offline_after: Option<u64>,
    /// Print one JSON object per line.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let Command::Connect(args) = cli.command;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("PRESENCE_LOG"))
        .with_writer(std::io::stderr)
        .init();
    match connect(args).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("presence: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn connect(args: ConnectArgs) -> Result<ExitCode> {
    let roots = transport::read_roots(&args.ca)?;
    let servers = resolve(&args.servers).await?;
    let mut options = ClientOptions::new(servers[0], roots, args.token);
    options.servers = servers;
    options.server_name = args.server_name;
    options.status = args.status;
    options.message = args.message;
    options.visibility = args.allow;
    options.heartbeat = Duration::from_secs(args.heartbeat);
    if args.adaptive_heartbeat {
        if args.heartbeat_min == 0 || args.heartbeat_min > args.heartbeat_max {
            bail!("--heartbeat-min must be at least 1 and at most --heartbeat-max");
        }
        options.adaptive_heartbeat(AdaptiveHeartbeat {
            min: Duration::from_secs(args.heartbeat_min),
            max: Duration::from_secs(args.heartbeat_max),
            reprobe_after: Duration::from_secs(args.heartbeat_reprobe),
            ..AdaptiveHeartbeat::default()
        });
    }
    options.idle = IdlePolicy {
        away_after: args.away_after.map(Duration::from_secs),
        offline_after: args.offline_after.map(Duration::from_secs),
    };
    let mut client = Client::start(options)?;
    let out = Printer { json: args.json };
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            event = client.next_event() => match event {
                Some(event) => {
                    let stop = matches!(event, Event::Down { retry_in: None, .. });
                    out.event(&event);
                    if stop {
                        return Ok(ExitCode::FAILURE);
                    }
                }
                None => return Ok(ExitCode::FAILURE),
            },
            line = lines.next_line(), if stdin_open => match line {
                Ok(Some(line)) => match run_command(&client, &line).await {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(error) => out.error(&format!("{error:#}")),
                },
                // End of input is not a quit: a device keeps its session until told.
                Ok(None) | Err(_) => stdin_open = false,
            },
        }
    }
    client.close().await;
    out.line("closed", json!({}), "session closed");
    Ok(ExitCode::SUCCESS)
}

/// Runs one stdin command; true on `quit`.
async fn run_command(client: &Client, line: &str) -> Result<bool> {
    let mut words = line.split_whitespace();
    let Some(command) = words.next() else { return Ok(false) };
    let mut arg = |name: &str| words.next().map(str::to_owned).with_context(|| format!("missing {name}"));
    match command {
        "status" => {
            let status: Status = arg("STATUS")?.parse()?;
            let rest: Vec<&str> = line.split_whitespace().skip(2).collect();
            let message = (!rest.is_empty()).then(|| rest.join(" "));
            client.set_status(status, message).await?;
        }
        "allow" => client.allow(arg("APP_ID")?).await?,
        "authorize" => {
            let app = arg("APP_ID")?;
            let state = arg("STATE")?;
            client.authorize(app, state).await?;
        }
        "revoke" => client.revoke(arg("APP_ID")?).await?,
        "accept" => client.accept(arg("ID")?.parse().context("ID must be a number")?).await?,
        "dismiss" => client.dismiss(arg("ID")?.parse().context("ID must be a number")?).await?,
        "active" => client.activity().await?,
        "quit" | "exit" => return Ok(true),
        other => bail!(
            "unknown command {other:?}: status, allow, authorize, revoke, accept, dismiss, active, quit"
        ),
    }
    Ok(false)
}

struct Printer {
    json: bool,
}

impl Printer {
    fn line(&self, kind: &str, mut fields: serde_json::Value, text: &str) {
        if self.json {
            fields["event"] = json!(kind);
            println!("{fields}");
        } else {
            println!("{text}");
        }
    }

    fn error(&self, message: &str) {
        self.line("error", json!({"message": message}), &format!("error: {message}"));
    }

    fn event(&self, event: &Event) {
        match event {
            Event::Up { server, session_id, zero_rtt, heartbeat } => self.line(
                "up",
                json!({"server": server.to_string(), "session_id": session_id, "zero_rtt": zero_rtt, "heartbeat_ms": heartbeat.as_millis() as u64}),
                &format!("session up with {server}: id {session_id}, heartbeat {heartbeat:?}, 0-RTT {zero_rtt}"),
            ),
            Event::Down { reason, code, retry_in } => self.line(
                "down",
                json!({"reason": reason, "code": code.map(|c| c.name()), "retry_in_ms": retry_in.map(|d| d.as_millis() as u64)}),
                &match retry_in {
                    Some(delay) => format!("session down: {reason}; retrying in {delay:.1?}"),
                    None => format!("session down: {reason}; giving up"),
                },
            ),
            Event::Notification { id, app_id, title, body, data, expires_in } => self.line(
                "notification",
                json!({"id": id, "app_id": app_id, "title": title, "body": body, "data": data, "expires_in_ms": expires_in.as_millis() as u64}),
                &format!("notification {id} from {app_id}: {title} — {body} (expires in {expires_in:?}; `accept {id}` or `dismiss {id}`)"),
            ),
            Event::Cancelled { id, reason } => {
                self.line("cancelled", json!({"id": id, "reason": format!("{reason:?}").to_lowercase()}), &format!("notification {id} cancelled ({reason:?})"))
            }
            Event::Expired { id } => self.line("expired", json!({"id": id}), &format!("notification {id} expired")),
            Event::Authorized { app_id, puid } => {
                self.line("authorized", json!({"app_id": app_id, "puid": puid}), &format!("authorized {app_id}: PUID {puid}"))
            }
            Event::Revoked { app_id } => self.line("revoked", json!({"app_id": app_id}), &format!("revoked {app_id}")),
            Event::Denied { app_id, code, message } => self.line(
                "denied",
                json!({"app_id": app_id, "code": code.name(), "message": message}),
                &format!("{app_id} denied: {message} ({code})"),
            ),
            Event::StatusAcked { seq } => self.line("status_acked", json!({"seq": seq}), &format!("status change {seq} acknowledged")),
            Event::GoAway { reason, retry_after } => self.line(
                "go_away",
                json!({"reason": reason, "retry_after_ms": retry_after.as_millis() as u64}),
                &format!("server going away: {reason}; back in {retry_after:?}"),
            ),
            Event::StatusChanged { status, idle } => self.line(
                "status",
                json!({"status": status.as_str(), "idle": idle}),
                &format!("status now {status}{}", if *idle { " (idle)" } else { "" }),
            ),
            Event::HeartbeatAdapted { interval, proven, cause } => {
                let (what, delay) = match cause {
                    AdaptCause::Echoed { delay } => ("echoed", Some(*delay)),
                    AdaptCause::Missed { delay } => ("missed", Some(*delay)),
                    AdaptCause::PathChanged => ("path_changed", None),
                    AdaptCause::Settled => ("settled", None),
                };
                self.line(
                    "heartbeat",
                    json!({"interval_ms": interval.as_millis() as u64, "proven_ms": proven.as_millis() as u64,
                        "cause": what, "delay_ms": delay.map(|d| d.as_millis() as u64)}),
                    &format!("heartbeat every {interval:.1?} (proven {proven:?}; {what}{})",
                        delay.map(|d| format!(" after {d:?}")).unwrap_or_default()),
                )
            }
            other => self.line("other", json!({"debug": format!("{other:?}")}), &format!("{other:?}")),
        }
    }
}

/// Every address the `--server` arguments name, in order, without repeats: an address as
/// given, a name as the resolver answers (all of its addresses).
async fn resolve(servers: &[String]) -> Result<Vec<SocketAddr>> {
    let mut addresses = Vec::new();
    for server in servers {
        let resolved: Vec<SocketAddr> = match server.parse::<SocketAddr>() {
            Ok(address) => vec![address],
            Err(_) => tokio::net::lookup_host(server.as_str())
                .await
                .with_context(|| format!("--server {server}: cannot resolve it (HOST:PORT)"))?
                .collect(),
        };
        for address in resolved {
            if !addresses.contains(&address) {
                addresses.push(address);
            }
        }
    }
    if addresses.is_empty() {
        bail!("--server: no address");
    }
    Ok(addresses)
}
