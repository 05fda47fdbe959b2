//! `presenced apps ...`: the admin commands, talking to a running daemon's admin API.
//!
//! With `--data-dir` (the default `./presenced-data`) the address, CA and admin token come
//! from the dev daemon's `dev.json`; `--api`, `--ca` and `--admin-token` override them.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::credentials::{DevInfo, https_client};

/// The `--data-dir` of the commands that talk to a dev daemon (`apps`, `token`): one
/// declaration, global so it may follow a subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct DevDataDir {
    /// Data directory of a `serve --dev` daemon: its dev.json names the API address, the CA
    /// and the admin token, and it holds the dev token-signing key.
    #[arg(long, global = true, env = "PRESENCED_DATA_DIR", default_value = crate::settings::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

/// How to reach the admin API. Every flag is global, as in kubectl and gh: it may come
/// before or after the app command (`apps --data-dir D add ...` or `apps add --data-dir D ...`).
#[derive(Debug, Clone, clap::Args)]
pub struct AdminTarget {
    /// Where a dev daemon's dev.json is.
    #[command(flatten)]
    pub dev: DevDataDir,
    /// Base URL of the daemon's HTTPS API, e.g. https://127.0.0.1:8443.
    #[arg(long, global = true, env = "PRESENCED_API")]
    pub api: Option<String>,
    /// PEM file of the CA that signed the daemon's certificate.
    #[arg(long, global = true, env = "PRESENCED_CA")]
    pub ca: Option<PathBuf>,
    /// The admin token.
    #[arg(long, global = true, env = "PRESENCED_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
}

/// The app commands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AppsCommand {
    /// Register an app; prints its id, API key and webhook secret (the key only this once).
    Add {
        /// Display name.
        #[arg(long)]
        name: String,
        /// Webhook endpoint (https; any address with a --dev daemon).
        #[arg(long)]
        webhook: String,
        /// Print one JSON object with app_id, api_key and webhook_secret.
        #[arg(long)]
        json: bool,
    },
    /// List the apps.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one app.
    Show {
        /// The app id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replace an app's webhook secret; prints the new one.
    RotateSecret {
        /// The app id.
        id: String,
        /// Keep signing with the old secret beside the new one for this long (`90s`, `30m`,
        /// `24h`, `7d`; at most 7 days), so receivers can switch without a gap. Default: none.
        #[arg(long, value_parser = parse_duration)]
        overlap: Option<std::time::Duration>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replace an app's API key (the old one stops at once); prints the new one, this once.
    /// The app keeps its id, so its users' PUIDs do not change.
    RotateKey {
        /// The app id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Turn deliveries back on after the endpoint answered 410.
    Enable {
        /// The app id.
        id: String,
    },
    /// Remove an app and its undelivered events.
    Remove {
        /// The app id.
        id: String,
    },
}

struct Admin {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Admin {
    fn new(target: &AdminTarget) -> Result<Admin> {
        let dev = DevInfo::load(&target.dev.data_dir).ok();
        let base = match (&target.api, &dev) {
            (Some(api), _) => api.trim_end_matches('/').to_owned(),
            (None, Some(dev)) => dev.https.clone(),
            (None, None) => bail!("no --api given and no dev.json in {}", target.dev.data_dir.display()),
        };
        let ca = target.ca.clone().or_else(|| dev.as_ref().map(|d| d.ca_cert.clone()));
        let token = target
            .admin_token
            .clone()
            .or_else(|| dev.as_ref().map(|d| d.admin_token.clone()))
            .context("no --admin-token given and no dev.json to read it from")?;
        let ca = ca.context("no --ca given and no dev.json to find the CA certificate in")?;
        let http = https_client(&ca)?;
        Ok(Admin { http, base, token })
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Option<Value>> {
        let url = format!("{}/v1/admin/apps{path}", self.base);
        let mut request = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| format!("cannot reach {url}"))?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| {
                    Some(format!("{} ({})", v["error"]["message"].as_str()?, v["error"]["code"].as_str()?))
                })
                .unwrap_or(text);
            bail!("{status}: {message}");
        }
        Ok(if text.is_empty() { None } else { Some(serde_json::from_str(&text)?) })
    }
}

/// Runs one app command.
pub async fn run(target: &AdminTarget, command: AppsCommand) -> Result<()> {
    let admin = Admin::new(target)?;
    use reqwest::Method;
    match command {
        AppsCommand::Add { name, webhook, json } => {
            let body = serde_json::json!({"name": name, "webhook_url": webhook});
            let created = admin.call(Method::POST, "", Some(body)).await?.context("empty answer")?;
            if json {
                println!("{created}");
            } else {
                println!("app_id:         {}", created["app_id"].as_str().unwrap_or_default());
                println!("api_key:        {}", created["api_key"].as_str().unwrap_or_default());
                println!("webhook_secret: {}", created["webhook_secret"].as_str().unwrap_or_default());
                println!("(the API key is shown only now; store it)");
            }
        }
        AppsCommand::List { json } => {
            let list = admin.call(Method::GET, "", None).await?.context("empty answer")?;
            if json {
                println!("{list}");
            } else {
                for app in list["apps"].as_array().into_iter().flatten() {
                    print_app(app);
                }
            }
        }
        AppsCommand::Show { id, json } => {
            let app = admin.call(Method::GET, &format!("/{id}"), None).await?.context("empty answer")?;
            if json { println!("{app}") } else { print_app(&app) }
        }
        AppsCommand::RotateSecret { id, overlap, json } => {
            let query =
                overlap.map_or_else(String::new, |overlap| format!("?overlap_secs={}", overlap.as_secs()));
            let rotated = admin
                .call(Method::POST, &format!("/{id}/rotate-secret{query}"), None)
                .await?
                .context("empty")?;
            if json {
                println!("{rotated}");
            } else {
                println!("webhook_secret: {}", rotated["webhook_secret"].as_str().unwrap_or_default());
                if let Some(expires) = rotated["previous_secret_expires_at_ms"].as_u64() {
                    println!("the previous secret also signs until {expires} (Unix ms)");
                }
            }
        }
        AppsCommand::RotateKey { id, json } => {
            let rotated =
                admin.call(Method::POST, &format!("/{id}/rotate-key"), None).await?.context("empty")?;
            if json {
                println!("{rotated}");
            } else {
                println!("api_key: {}", rotated["api_key"].as_str().unwrap_or_default());
            }
        }
        AppsCommand::Enable { id } => {
            admin.call(Method::POST, &format!("/{id}/enable"), None).await?;
            println!("{id} enabled");
        }
        AppsCommand::Remove { id } => {
            admin.call(Method::DELETE, &format!("/{id}"), None).await?;
            println!("{id} removed");
        }
    }
    Ok(())
}

/// A duration flag (`--overlap`, `token --ttl`): whole seconds, minutes, hours or days
/// (`90s`, `30m`, `24h`, `7d`; a bare number is seconds). Bounds are the caller's (the
/// daemon enforces the overlap's 7 days); this only reads the text.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 =
        number.parse().map_err(|_| format!("{text:?} is not a duration like 90s, 30m, 24h or 7d"))?;
    let unit_secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit {unit:?} in {text:?}: use s, m, h or d")),
    };
    number
        .checked_mul(unit_secs)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

fn print_app(app: &Value) {
    println!(
        "{}  {}  {}{}  outbox {}",
        app["app_id"].as_str().unwrap_or_default(),
        app["name"].as_str().unwrap_or_default(),
        app["webhook_url"].as_str().unwrap_or_default(),
        if app["disabled"].as_bool() == Some(true) { "  DISABLED" } else { "" },
        app["outbox_depth"],
    );
    if let Some(expires) = app["previous_secret_expires_at_ms"].as_u64() {
        println!("  previous webhook secret signs until {expires} (Unix ms)");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::parse_duration;

    #[test]
    fn overlaps_read_seconds_minutes_hours_and_days() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("-1h").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}
