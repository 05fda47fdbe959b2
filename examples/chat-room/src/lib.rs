//! # chat-room: an example Presence AppService
//!
//! A chat room whose members are Presence users. It is documentation first: everything an
//! AppService does with Presence, in one short file.
//!
//! - **Webhooks** arrive at `POST /webhook` as batches `{"app_id": ..., "events": [...]}`.
//!   Every request is verified with the [`standardwebhooks`] crate, the reference Rust
//!   implementation of the Standard Webhooks specification, before its body is even parsed.
//!   Libraries with the same API exist for Python, JavaScript, Go, Java, PHP, Ruby, C# and
//!   Elixir, so an AppService in any of those verifies the same way.
//! - **The events are typed** by the [`presence_webhook`] crate, the same types the daemon
//!   encodes them with: a batch parses into a [`WebhookBatch`], each event is a
//!   [`WebhookEvent`] told apart by its `type`, and a type added later parses as
//!   [`WebhookEvent::Unknown`], which the room ignores (as the API asks). An AppService in
//!   another language reads the same shapes from the daemon's `openapi.json`.
//! - **Presence is state, not a log.** The room keeps the latest status per PUID and drops an
//!   event whose `seq` is not above the last one it saw for that PUID: a retried batch, or a
//!   poll racing a webhook, must not roll a member's status back.
//! - **Grants link PUIDs to people.** A PUID is a pseudonym the daemon gives this app for one
//!   user. When the user authorizes the app on a device (`authorize APP_ID alice` in the
//!   `presence` CLI), a `grant` event carries the `state` string the app handed its user;
//!   here that is simply the member's name. A real app would hand out a signed token.
//! - **Live notifications.** `POST /notify?name=alice&title=Hello` sends one through the
//!   daemon's API. Its outcome (`accepted`, `dismissed`, `missed`, `undeliverable`, `taken`)
//!   arrives later as a `notification` webhook event, at least once, so the room
//!   deduplicates on (id, puid).
//! - `GET /` shows who is online, as plain text.
//!
//! The room serves plain HTTP, which a daemon started with `--dev` accepts for a loopback
//! webhook URL. In production the daemon only calls `https://` URLs on public addresses:
//! put the room behind a TLS-terminating proxy, or serve it with rustls.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use presence_webhook::{WebhookBatch, WebhookEvent};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// How to reach the daemon, and the app's credentials (from `presenced apps add`).
#[derive(Debug, Clone)]
pub struct Config {
    /// Base URL of the daemon's HTTPS API, e.g. `https://127.0.0.1:8443`.
    pub api: String,
    /// PEM file of the CA that signed the daemon's certificate (a dev daemon's
    /// `presenced-data/tls/cert.pem`); `None` trusts the usual public CAs.
    pub ca: Option<std::path::PathBuf>,
    /// The app's API key, `pk_...`.
    pub api_key: String,
    /// The app's webhook secret, `whsec_...`.
    pub webhook_secret: String,
}

/// What the room knows about one PUID.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Member {
    /// The name from the user's `grant`; `None` before a grant or after a `revoke`.
    pub name: Option<String>,
    /// `online`, `away`, `unavailable` or `offline`.
    pub status: String,
    /// The status message.
    pub message: String,
    /// The `seq` of the latest presence event applied (0: none yet).
    pub seq: u64,
}

/// A notification outcome, as a webhook reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// The notification id (a decimal string).
    pub id: String,
    /// The recipient.
    pub puid: String,
    /// `accepted`, `dismissed`, `missed`, `undeliverable` or `taken`.
    pub outcome: String,
}

#[derive(Debug, Default)]
struct Members {
    by_puid: BTreeMap<String, Member>,
    outcomes: Vec<Outcome>,
}

/// The room: its members, and what it needs to verify webhooks and call the daemon.
pub struct Room {
    webhook: standardwebhooks::Webhook,
    http: reqwest::Client,
    api: String,
    api_key: String,
    members: Mutex<Members>,
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room").field("api", &self.api).finish_non_exhaustive()
    }
}

impl Room {
    /// A room with no members yet.
    pub fn new(config: &Config) -> Result<Room> {
        let webhook = standardwebhooks::Webhook::new(&config.webhook_secret)
            .context("the webhook secret is not `whsec_` + base64")?;
        Ok(Room {
            webhook,
            http: https_client(config.ca.as_deref())?,
            api: config.api.trim_end_matches('/').to_owned(),
            api_key: config.api_key.clone(),
            members: Mutex::default(),
        })
    }

    /// Everyone the room has heard of, by PUID.
    pub fn members(&self) -> BTreeMap<String, Member> {
        self.lock().by_puid.clone()
    }

    /// The notification outcomes received so far, each once.
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.lock().outcomes.clone()
    }

    /// The PUID of the member who joined with `name`.
    pub fn puid_of(&self, name: &str) -> Option<String> {
        let members = self.lock();
        members.by_puid.iter().find(|(_, m)| m.name.as_deref() == Some(name)).map(|(puid, _)| puid.clone())
    }

    /// Sends a live notification to one PUID through the daemon's API and returns the
    /// daemon's answer (`{"id", "mode", "created_at", "expires_at", "recipients"}`).
    pub async fn notify(&self, puid: &str, title: &str, body: &str, ttl_ms: Option<u64>) -> Result<Value> {
        let mut request = json!({"to": [puid], "title": title, "body": body, "data": {"room": "chat-room"}});
        if let Some(ttl_ms) = ttl_ms {
            request["ttl_ms"] = json!(ttl_ms);
        }
        let response = self
            .http
            .post(format!("{}/v1/notifications", self.api))
            .bearer_auth(&self.api_key)
            .json(&request)
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.api))?;
        let status = response.status();
        let answer: Value = response.json().await.context("the daemon's answer is not JSON")?;
        if !status.is_success() {
            // Every API error is {"error": {"code", "message"}}: branch on the code.
            bail!("{status}: {} ({})", answer["error"]["message"], answer["error"]["code"]);
        }
        Ok(answer)
    }

    /// Applies one verified event, printing what changed.
    fn apply(&self, event: WebhookEvent<'_>) {
        let mut members = self.lock();
        match event {
            WebhookEvent::Presence { puid, status, message, seq, .. } => {
                let puid = puid.into_owned();
                let member = members.by_puid.entry(puid.clone()).or_default();
                if seq <= member.seq {
                    println!("dropped a stale presence event for {puid} (seq {seq} <= {})", member.seq);
                    return;
                }
                *member = Member {
                    status: status.into_owned(),
                    message: message.into_owned(),
                    seq,
                    ..member.clone()
                };
                println!("{} is {} {}", who(member, &puid), member.status, member.message);
            }
            WebhookEvent::Grant { puid, state, .. } => {
                println!("{state} joined the room (PUID {puid})");
                members.by_puid.entry(puid.into_owned()).or_default().name = Some(state.into_owned());
            }
            WebhookEvent::Revoke { puid, .. } => {
                let puid = puid.into_owned();
                let member = members.by_puid.entry(puid.clone()).or_default();
                println!("{} left the room", who(member, &puid));
                member.name = None;
            }
            WebhookEvent::Notification { id, puid, outcome, .. } => {
                let (id, puid, outcome) = (id.into_owned(), puid.into_owned(), outcome.into_owned());
                // At least once: a retried batch may repeat an outcome.
                if members.outcomes.iter().any(|o| o.id == id && o.puid == puid) {
                    return;
                }
                let name = members.by_puid.get(&puid).map_or_else(|| puid.clone(), |m| who(m, &puid));
                println!("notification {id} to {name}: {outcome}");
                members.outcomes.push(Outcome { id, puid, outcome });
            }
            // The daemon came back from a crash: everyone is offline until heard from again.
            WebhookEvent::Reset { .. } => {
                println!("the presence daemon restarted: everyone is offline until their devices reconnect");
                for member in members.by_puid.values_mut() {
                    // Keep each seq: the events that follow carry higher ones.
                    member.status = "offline".into();
                    member.message.clear();
                }
            }
            // A test event from the console: nothing to do but accept it.
            WebhookEvent::Ping { .. } => println!("test event received"),
            // A type added after this room was written.
            WebhookEvent::Unknown => {}
        }
    }

    fn lock(&self) -> MutexGuard<'_, Members> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.members.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn who(member: &Member, puid: &str) -> String {
    member.name.clone().unwrap_or_else(|| format!("PUID {puid}"))
}

/// The room's HTTP routes: `GET /`, `POST /webhook`, `POST /notify`.
pub fn router(room: Arc<Room>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/webhook", post(webhook))
        .route("/notify", post(notify))
        .with_state(room)
}

/// `POST /webhook`: verify, then apply. Only a 2xx tells the daemon the batch arrived; a
/// refusal makes it retry later (and `410 Gone` would switch the webhook off: never send it
/// by accident).
async fn webhook(State(room): State<Arc<Room>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    // Checks webhook-signature against HMAC-SHA256("{webhook-id}.{webhook-timestamp}.{body}")
    // and refuses timestamps more than five minutes away (replays).
    if let Err(error) = room.webhook.verify(&body, &headers) {
        eprintln!("refused a webhook: {error}");
        return StatusCode::UNAUTHORIZED;
    }
    // Unknown fields are ignored, as the API asks.
    let batch: WebhookBatch<'_> = match serde_json::from_slice(&body) {
        Ok(batch) => batch,
        Err(error) => {
            eprintln!("a signed webhook that is not a batch: {error}");
            return StatusCode::BAD_REQUEST;
        }
    };
    for event in batch.events {
        room.apply(event);
    }
    StatusCode::NO_CONTENT
}

/// `GET /`: who is here.
async fn index(State(room): State<Arc<Room>>) -> String {
    let members = room.members();
    let online: Vec<String> =
        members.iter().filter(|(_, m)| m.status != "offline").map(|(puid, m)| who(m, puid)).collect();
    let mut page = format!("chat-room: {} online\n\n", online.len());
    for (puid, member) in &members {
        let name = member.name.as_deref().unwrap_or("(no name yet)");
        page += &format!("{name:<16} {:<12} {:<24} PUID {puid}\n", member.status, member.message);
    }
    page
}

/// The query of `POST /notify`: a recipient by `puid` or by `name`, and the text.
#[derive(Debug, Deserialize)]
struct NotifyQuery {
    puid: Option<String>,
    name: Option<String>,
    title: String,
    #[serde(default)]
    body: String,
    ttl_ms: Option<u64>,
}

/// `POST /notify?name=alice&title=Hello[&body=...][&ttl_ms=60000]`.
async fn notify(State(room): State<Arc<Room>>, Query(query): Query<NotifyQuery>) -> (StatusCode, String) {
    let puid = match (query.puid, &query.name) {
        (Some(puid), _) => puid,
        (None, Some(name)) => match room.puid_of(name) {
            Some(puid) => puid,
            None => return (StatusCode::NOT_FOUND, format!("nobody called {name} has joined\n")),
        },
        (None, None) => return (StatusCode::BAD_REQUEST, "give puid=... or name=...\n".into()),
    };
    match room.notify(&puid, &query.title, &query.body, query.ttl_ms).await {
        Ok(answer) => {
            let (id, outcome) = (&answer["id"], &answer["recipients"][0]["outcome"]);
            println!(
                "sent notification {} to {puid}: {}",
                id.as_str().unwrap_or("?"),
                outcome.as_str().unwrap_or("?")
            );
            (StatusCode::OK, format!("{answer}\n"))
        }
        Err(error) => (StatusCode::BAD_GATEWAY, format!("{error:#}\n")),
    }
}

/// An HTTPS client that trusts `ca` (a PEM file), or the public web PKI without one.
fn https_client(ca: Option<&Path>) -> Result<reqwest::Client> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("cannot read {}", path.display()))?
            {
                roots.add(cert?)?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(reqwest::Client::builder().tls_backend_preconfigured(tls).build()?)
}
