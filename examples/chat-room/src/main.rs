//! `chat-room`: runs the example AppService (see the crate docs, and the README's
//! "An AppService in five minutes").

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use chat_room::{Config, Room};
use clap::Parser;

/// An example Presence AppService: verifies webhooks, shows who is online, sends live
/// notifications.
#[derive(Debug, Parser)]
#[command(name = "chat-room", version)]
struct Args {
    /// Address to serve the page, the webhook endpoint and /notify on (plain HTTP).
    #[arg(long, env = "CHAT_ROOM_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Base URL of the daemon's HTTPS API.
    #[arg(long, env = "CHAT_ROOM_API", default_value = "https://127.0.0.1:8443")]
    api: String,
    /// PEM file of the CA to trust for the daemon (a dev daemon's presenced-data/tls/cert.pem);
    /// without it, the public CAs.
    #[arg(long, env = "CHAT_ROOM_CA")]
    ca: Option<PathBuf>,
    /// The JSON object `presenced apps add --json` printed (app_id, api_key, webhook_secret);
    /// --api-key and --webhook-secret override its fields.
    #[arg(long, env = "CHAT_ROOM_APP")]
    app: Option<PathBuf>,
    /// The app's API key (pk_...).
    #[arg(long, env = "CHAT_ROOM_API_KEY")]
    api_key: Option<String>,
    /// The app's webhook secret (whsec_...).
    #[arg(long, env = "CHAT_ROOM_WEBHOOK_SECRET")]
    webhook_secret: Option<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let app: serde_json::Value = match &args.app {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?
        }
        None => serde_json::Value::Null,
    };
    let field = |flag: Option<String>, key: &str| {
        flag.or_else(|| app[key].as_str().map(str::to_owned))
            .with_context(|| format!("give --{} or --app", key.replace('_', "-")))
    };
    let config = Config {
        api: args.api,
        ca: args.ca,
        api_key: field(args.api_key, "api_key")?,
        webhook_secret: field(args.webhook_secret, "webhook_secret")?,
    };
    let room = Arc::new(Room::new(&config)?);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("chat-room on http://{addr}");
    println!("  webhooks      POST http://{addr}/webhook");
    println!("  who is here   curl http://{addr}/");
    println!("  notify        curl -X POST 'http://{addr}/notify?name=alice&title=Hello'");
    if let Some(app_id) = app["app_id"].as_str() {
        println!("  devices allow {app_id}");
    }
    axum::serve(listener, chat_room::router(room)).await?;
    Ok(())
}
