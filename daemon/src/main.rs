//! `presenced`: the Presence daemon's command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::io::IsTerminal;

use presenced::settings::{ConfigError, LogConfig, LogFormat, SettingsLayer};
use presenced::{Daemon, credentials};
use tracing_subscriber::EnvFilter;

/// Exit code for a bad configuration (EX_CONFIG-like, as sysexits' EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(name = "presenced", version, about = "The Presence daemon: QUIC device presence for AppServices")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon.
    Serve {
        /// TOML settings file; flags and PRESENCED_* variables override it.
        #[arg(long, env = "PRESENCED_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: Box<SettingsLayer>,
    },
    /// Manage the AppServices of a running daemon (admin API).
    Apps {
        #[command(flatten)]
        target: presenced::admin_cli::AdminTarget,
        #[command(subcommand)]
        command: presenced::admin_cli::AppsCommand,
    },
    /// Print a dev device token signed with the data directory's dev key.
    Token {
        #[command(flatten)]
        dev: presenced::admin_cli::DevDataDir,
        /// The user (`sub`).
        #[arg(long)]
        user: String,
        /// The device id (`did`).
        #[arg(long)]
        device: String,
        /// Lifetime: a number with s, m, h or d (default 24h).
        #[arg(long, default_value = "24h", value_parser = presenced::admin_cli::parse_duration)]
        ttl: Duration,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let code = if error.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = error.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Serve { config, settings } => serve(config, *settings),
        Command::Apps { target, command } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let result = runtime
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(presenced::admin_cli::run(&target, command)));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("presenced apps: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Token { dev, user, device, ttl } => match token(&dev.data_dir, &user, &device, ttl) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("presenced token: {error:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn serve(config: Option<PathBuf>, flags: SettingsLayer) -> ExitCode {
    let file = match config.as_deref().map(SettingsLayer::from_file).transpose() {
        Ok(file) => file.unwrap_or_default(),
        Err(error) => return config_error(&error),
    };
    let settings = match flags.over(file).resolve() {
        Ok(settings) => settings,
        Err(error) => return config_error(&error),
    };
    init_logging(&settings.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("presenced: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("presenced: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr (stdout carries the banner and command output), in colour only when
/// stderr is a terminal: a file, a pipe or a journal gets plain text or JSON lines.
fn init_logging(log: &LogConfig) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(&log.filter))
        .with_target(false)
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

fn config_error(error: &ConfigError) -> ExitCode {
    eprintln!("presenced: {error}");
    ExitCode::from(EXIT_CONFIG)
}

async fn run(settings: presenced::settings::Settings) -> Result<()> {
    let data_dir = settings.data_dir.clone();
    // Watch the signals before anything can see the daemon up (dev.json, the banner), so an
    // early SIGTERM drains instead of killing.
    let signal = shutdown_signal()?;
    let daemon = Daemon::start(settings).await?;
    print_banner(&daemon, &data_dir);
    signal.await;
    tracing::info!("shutting down: sending GoAway and draining");
    daemon.shutdown().await;
    Ok(())
}

fn print_banner(daemon: &Daemon, data_dir: &std::path::Path) {
    println!("presenced {} listening", env!("CARGO_PKG_VERSION"));
    println!("  QUIC  (devices)        {}", daemon.quic_addr);
    println!("  HTTPS (API, console)   {}", daemon.https_addr);
    if let Some(dev) = &daemon.dev_info {
        let dir = data_dir.display();
        let ca = dev.ca_cert.display();
        println!("  dev mode: secrets and {dir}/dev.json created on first run");
        println!();
        println!("Next, in another terminal:");
        println!(
            "  TOKEN=$(cargo run -q -p presenced -- token --data-dir {dir} --user alice --device phone)"
        );
        println!(
            "  cargo run -q -p presence-client -- connect --server {} --ca {ca} --token \"$TOKEN\" --allow chat",
            dev.quic
        );
        println!("  curl --cacert {ca} {}/metrics", dev.https);
        println!();
        println!("The web console: {}/console (the admin token is in {dir}/admin-token)", dev.https);
    }
}

/// Resolves on SIGTERM or SIGINT; the handlers are installed when this is called.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}

fn token(data_dir: &std::path::Path, user: &str, device: &str, ttl: Duration) -> Result<String> {
    let signer = credentials::dev_signer(data_dir)?;
    let now = presenced::clock::Clock::system().unix_secs();
    Ok(signer.mint(user, device, now, ttl.as_secs()))
}
