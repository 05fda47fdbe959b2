//! The tool's own AppService end: an HTTPS webhook receiver on loopback.
//!
//! It serves with the dev daemon's certificate and key (`tls/cert.pem`, `tls/key.pem` in the
//! data directory), which a dev daemon already trusts for webhooks, so no extra CA has to be
//! configured. Every delivery's Standard Webhooks signature is verified with the app's
//! secret, each event is handed to the [`Tracker`], and the answer is `200` at once, so the
//! receiver never throttles what it measures. A delivery that fails verification is counted
//! (`webhook_signature`) and still acknowledged: a load run reports a signing bug, it does not
//! stall on one.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use presence_protocol::Status;
use presence_webhook::{WebhookBatch, WebhookEvent};
use presenced::testing::webhook::secret::{DEFAULT_TOLERANCE, WebhookSecret};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use super::stats::{Counter, Errors};
use super::tracker::Tracker;
use super::{LoadError, stopped};

/// The path webhooks are posted to.
pub const HOOK_PATH: &str = "/hook";
/// Pause after a failed `accept` (out of file descriptors, say) before the next one, so the
/// accept loop cannot spin.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// What the handler shares.
#[derive(Debug)]
pub struct SinkState {
    tracker: Arc<Tracker>,
    errors: Arc<Errors>,
    secret: OnceLock<WebhookSecret>,
    /// POSTs received.
    pub deliveries: Counter,
    /// Events in them.
    pub events: Counter,
}

impl SinkState {
    /// State feeding `tracker` and counting problems in `errors`.
    pub fn new(tracker: Arc<Tracker>, errors: Arc<Errors>) -> SinkState {
        SinkState {
            tracker,
            errors,
            secret: OnceLock::new(),
            deliveries: Counter::default(),
            events: Counter::default(),
        }
    }

    /// Sets the secret deliveries are verified with (known once the app is registered,
    /// which needs the sink's URL first).
    pub fn set_secret(&self, secret: &str) -> Result<(), LoadError> {
        let secret =
            WebhookSecret::parse(secret).map_err(|e| LoadError::Admin(format!("webhook secret: {e}")))?;
        let _ = self.secret.set(secret);
        Ok(())
    }
}

/// A running sink.
#[derive(Debug)]
pub struct Sink {
    addr: SocketAddr,
    /// Its shared state (counters).
    pub state: Arc<SinkState>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Sink {
    /// Binds `127.0.0.1:0` and serves HTTPS with the certificate in `tls_dir`.
    pub async fn start(tls_dir: &Path, state: Arc<SinkState>) -> Result<Sink, LoadError> {
        let (certs, key) =
            presenced::credentials::read_tls(&tls_dir.join("cert.pem"), &tls_dir.join("key.pem"))
                .map_err(|e| LoadError::Tls(format!("sink certificate: {e:#}")))?;
        let mut tls =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| LoadError::Tls(e.to_string()))?
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .map_err(|e| LoadError::Tls(format!("sink certificate: {e}")))?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|source| LoadError::Bind { what: "webhook sink", source })?;
        let addr =
            listener.local_addr().map_err(|source| LoadError::Bind { what: "webhook sink", source })?;
        let router =
            axum::Router::new().route(HOOK_PATH, axum::routing::post(hook)).with_state(state.clone());
        let (shutdown, mut stop) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else {
                            tokio::time::sleep(ACCEPT_BACKOFF).await;
                            continue;
                        };
                        let acceptor = acceptor.clone();
                        let service = hyper_util::service::TowerToHyperService::new(router.clone());
                        connections.spawn(async move {
                            let Ok(tls) = acceptor.accept(stream).await else { return };
                            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(tls), service)
                                .await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                    _ = stopped(&mut stop) => break,
                }
            }
            connections.abort_all();
        });
        Ok(Sink { addr, state, shutdown, task })
    }

    /// The webhook URL to register.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}{HOOK_PATH}", self.addr.port())
    }

    /// Stops accepting and drops every connection.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.task).await;
    }
}

async fn hook(State(state): State<Arc<SinkState>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let received = Instant::now();
    state.deliveries.inc();
    if let Some(secret) = state.secret.get()
        && secret.verify_headers(&headers, &body, DEFAULT_TOLERANCE).is_err()
    {
        state.errors.add("webhook_signature");
    }
    let Ok(envelope) = serde_json::from_slice::<WebhookBatch<'_>>(&body) else {
        state.errors.add("webhook_body");
        return StatusCode::OK;
    };
    state.events.add(envelope.events.len() as u64);
    let tracker = &state.tracker;
    for event in envelope.events {
        match event {
            WebhookEvent::Presence { puid, status, at, .. } => match status.parse::<Status>() {
                Ok(status) => tracker.presence_seen(&puid, status, at, received),
                Err(_) => state.errors.add("webhook_status"),
            },
            WebhookEvent::Grant { .. } => tracker.grants.inc(),
            WebhookEvent::Notification { id, outcome, .. } => match id.parse::<u64>() {
                Ok(id) => tracker.outcome_seen(id, &outcome, received, &state.errors),
                Err(_) => state.errors.add("webhook_notification_id"),
            },
            // The load tool neither revokes, crashes the daemon nor asks for test events; a
            // new type is ignored, as the contract asks of every receiver.
            WebhookEvent::Revoke { .. }
            | WebhookEvent::Reset { .. }
            | WebhookEvent::Ping { .. }
            | WebhookEvent::Unknown => {}
        }
    }
    StatusCode::OK
}
