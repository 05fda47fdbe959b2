//! # presenced
//!
//! The Presence daemon. Devices keep one QUIC session each; the daemon tracks their status
//! in a sharded presence table and tells the apps each user allowed.
//!
//! ## Layout
//!
//! - [`settings`]: one declaration per setting (TOML, `PRESENCED_*` environment, flags),
//!   resolved into one config struct per component.
//! - [`credentials`]: TLS certificate, token keys, PUID secret, admin token; `--dev` creates
//!   them on first run.
//! - [`auth`]: device tokens (EdDSA JWTs against a JWKS); [`puid`]: PUID derivation.
//! - [`session`]: the driver-agnostic device session service: a sans-IO
//!   [`presence_protocol::ServerSession`] plus what it means to the daemon (authentication,
//!   the 0-RTT gate, the table, authorize, revoke, reauth, notification answers), with
//!   inputs and `now` in and effects out.
//! - [`quic`]: the QUIC driver, the only module that knows quinn; one task per connection
//!   moves bytes between quinn and a [`session::DeviceSession`].
//! - [`table`]: the presence table, its incremental aggregation and its per-(app, PUID)
//!   events, handed to a sink after its locks are released.
//! - [`clock`]: the one place that reads the time; every component is handed a clock.
//! - [`handle`]: how the rest of the daemon reaches a session (close, notify, cancel).
//! - [`apps`]: the registered AppServices; [`store`]: storage by concern (apps, the
//!   outbox, notifications, TLS tickets, the run journal), one small trait each, kept in a
//!   redb file (or in memory, for tests and benches).
//! - [`outbound`]: every webhook event, typed by the `presence-webhook` crate (shared with
//!   receivers), and its outbox compaction key; [`webhook`]: signing, the SSRF guard and
//!   the batched, retried, durable fan-out.
//! - [`notify`]: live notifications and their outcomes.
//! - [`api`]: the HTTPS APIs (AppService, admin, health, metrics, OpenAPI); [`console`]:
//!   the web console beside them, assets compiled in; [`http`]: the TLS listener in front of
//!   both; [`metrics`]: metric names.
//! - [`limit`]: the token buckets behind every rate limit (per app, per source address, per
//!   recipient), bounded in memory whatever the peers send.
//! - [`testing`]: what tests, benches and fuzz targets reach inside the daemon (a named
//!   re-export of each item they use) and what they watch it with (an event recorder).
//!
//! ## Visibility
//!
//! The public API is [`Daemon`], [`settings`], [`credentials`], [`clock`] and
//! [`admin_cli`]; every other module is `pub(crate)`, and the workspace's other crates
//! reach internals only through [`testing`].
//!
//! ARCHITECTURE.md in the repository root draws the layers and the seams.
//!
//! [`Daemon::start`] binds everything and returns at once, so tests run a whole daemon
//! in-process on loopback ports; [`Daemon::shutdown`] drains it as SIGTERM does.
//!
//! The library is the binary's body: start-up code uses `anyhow` for its reports, the
//! reusable parts (`auth`, `puid`, `table`, `settings`) have typed errors.

#![forbid(unsafe_code)]
// These docs are written for the people who work on the daemon, and link its crate-private
// modules: `cargo doc -p presenced --document-private-items` renders them (CI checks every
// link that way too).
#![allow(rustdoc::private_intra_doc_links)]

pub mod admin_cli;
pub(crate) mod api;
pub(crate) mod apps;
pub(crate) mod auth;
pub mod clock;
pub(crate) mod console;
pub mod credentials;
pub(crate) mod handle;
pub(crate) mod http;
pub(crate) mod limit;
pub(crate) mod metrics;
pub(crate) mod notify;
pub(crate) mod outbound;
pub(crate) mod puid;
pub(crate) mod quic;
pub(crate) mod revocations;
pub(crate) mod session;
pub mod settings;
pub(crate) mod store;
pub(crate) mod table;
pub mod testing;
pub(crate) mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use crate::apps::Apps;
use crate::credentials::{DevInfo, crypto_provider};
use crate::metrics::Metrics;
use crate::notify::Notifications;
use crate::outbound::Outbound;
use crate::quic::QuicServer;
use crate::revocations::Revocations;
use crate::settings::Settings;
use crate::store::embedded::EmbeddedStore;
use crate::store::{RunJournal, blocking};
use crate::table::PresenceTable;
use crate::webhook::fanout::{Fanout, FanoutConfig};

/// The database file in the data directory.
pub const STORE_FILE: &str = "presenced.redb";

/// How often the highest presence `seq` handed out is recorded in the store.
const SEQ_RECORD_INTERVAL: Duration = Duration::from_secs(1);
/// How far above the last recorded `seq` a daemon starts after a crash: a minute of
/// microseconds, far more than one interval's worth of seqs (they follow the clock to its
/// slot, or step at most [`table::MAX_STEP`] past the last when the clock is behind: tens of
/// thousands of new views within the last interval before the crash).
const SEQ_CRASH_MARGIN_MICROS: u64 = 60_000_000;

/// Records the table's highest `seq` whenever it changed, once per interval, off the
/// event path, until shutdown (which records the last one itself).
async fn record_seq_floor(
    table: Arc<PresenceTable>,
    journal: Arc<dyn RunJournal>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut recorded = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SEQ_RECORD_INTERVAL) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let high = table.seq_high();
        if high == recorded {
            continue;
        }
        let writer = journal.clone();
        match blocking(move || writer.set_seq_floor(high)).await {
            Ok(()) => recorded = high,
            Err(error) => tracing::warn!(%error, "cannot record the presence seq floor"),
        }
    }
}

/// Tells apps `offline` for the previous run's departed users as their deadlines pass
/// (`table`, departures), starting with the one at `next` (Unix ms), until none is left or
/// the daemon shuts down (which records the rest again).
async fn expire_departures(
    table: Arc<PresenceTable>,
    mut next: u64,
    clock: clock::Clock,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let wait = Duration::from_millis(next.saturating_sub(clock.unix_ms()));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        match table.expire_departures(clock.unix_ms()) {
            Some(deadline) => next = deadline,
            None => return,
        }
    }
}

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    quic: Arc<QuicServer>,
    /// The QUIC address bound.
    pub quic_addr: SocketAddr,
    /// The HTTPS address bound.
    pub https_addr: SocketAddr,
    /// `dev.json`'s content, in `--dev` mode.
    pub dev_info: Option<DevInfo>,
    table: Arc<PresenceTable>,
    metrics: Arc<Metrics>,
    apps: Arc<Apps>,
    notifications: Arc<Notifications>,
    fanout: Arc<Fanout>,
    journal: Arc<dyn RunJournal>,
    /// Revocation tombstones, and the task writing them (it ends at shutdown).
    revocations: Arc<Revocations>,
    revocation_writer: JoinHandle<()>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    drain: Duration,
    api: axum::Router,
    recorder: std::sync::OnceLock<Arc<testing::EventRecorder>>,
    clock: clock::Clock,
}

impl Daemon {
    /// Loads secrets, binds both listeners and starts serving.
    pub async fn start(settings: Settings) -> Result<Daemon> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // Each component gets its own part of the settings, and only that.
        let Settings {
            data_dir,
            dev,
            log: _,
            credentials: secrets,
            quic: quic_config,
            https,
            api,
            fanout: webhooks,
            notify,
            table: table_config,
        } = settings;
        let credentials::Secrets { cert_chain, key, verifier, puid_key, admin_token } =
            credentials::load(&secrets, &data_dir)?;
        let metrics = Arc::new(Metrics::default());
        let clock = clock::Clock::system();
        let store_path = data_dir.join(STORE_FILE);
        // One redb file holds every concern; each component sees only its trait.
        let store = Arc::new(EmbeddedStore::open(&store_path)?);
        let journal: Arc<dyn RunJournal> = store.clone();
        // It holds the webhook secrets: owner-only.
        #[cfg(unix)]
        std::fs::set_permissions(&store_path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let apps = Arc::new(Apps::load(store.clone(), clock)?);
        let url_policy = webhooks.url_policy.clone();
        let fanout_config = FanoutConfig {
            // The dev certificate signs test receivers too.
            extra_roots: if dev { cert_chain.clone() } else { Vec::new() },
            ..webhooks
        };
        let fanout =
            Arc::new(Fanout::start(store.clone(), apps.clone(), fanout_config, metrics.clone(), clock)?);
        let outbound = Arc::new(Outbound::new(apps.clone(), fanout.clone(), clock));
        let api_outbound = outbound.clone();
        let endpoint_secret = puid_key.derive_secret(quic::restart::SECRET_LABEL);
        let sink: Arc<dyn table::PresenceSink> = outbound.clone();
        let (revocations, revocation_writer) = Revocations::load(store.clone(), clock)?;
        let revocations = Arc::new(revocations);
        let table = Arc::new(
            PresenceTable::new(puid_key, metrics.clone(), clock, Some(sink))
                .with_config(table_config)
                .with_revocations(revocations.clone()),
        );
        let notifications = Arc::new(Notifications::new(
            table.clone(),
            outbound.clone(),
            store.clone(),
            metrics.clone(),
            notify,
            clock,
        ));
        let restored = notifications.restore()?;
        let crashed = journal.begin_run()?;
        if crashed {
            tracing::warn!("the previous run ended without a clean shutdown; telling apps to reset presence");
            outbound.reset_all(apps.list().into_iter().map(|app| app.id));
        }
        // Seqs handed out after the last record of a crashed run lie above it by at most the
        // margin; a clean run recorded its last one exactly.
        let floor = journal.seq_floor()?;
        table.raise_seq_floor(if crashed { floor.saturating_add(SEQ_CRASH_MARGIN_MICROS) } else { floor });
        // Users the previous run's drain sent away: a crash's `reset` already told apps they
        // are offline; after a clean run they are held until they come back or expire.
        let departures = journal.take_departures()?;
        let next_deadline = if crashed { None } else { table.restore_departures(departures) };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let identity = quic::TlsIdentity { cert_chain: cert_chain.clone(), key: key.clone_key() };
        let services = Arc::new(session::SessionServices {
            verifier: verifier.with_leeway(quic_config.token_leeway),
            table: table.clone(),
            metrics: metrics.clone(),
            apps: apps.clone(),
            outbound,
            notifications: notifications.clone(),
            protocol: Arc::new(quic_config.protocol()),
            drain: quic_config.drain,
            clock,
        });
        let durable = quic::Durable { store: store.clone(), endpoint_secret };
        let quic =
            Arc::new(QuicServer::bind(&quic_config, identity, services, durable, shutdown_rx.clone())?);
        let quic_addr = quic.local_addr()?;
        let mut tls = rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(cert_chain, key)?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let listener = tokio::net::TcpListener::bind(https.listen)
            .await
            .with_context(|| format!("cannot bind HTTPS on {}", https.listen))?;
        let https_addr = listener.local_addr()?;
        let router = api::service(api::ApiState {
            metrics: metrics.clone(),
            table: table.clone(),
            apps: apps.clone(),
            notifications: notifications.clone(),
            limiter: Arc::new(api::RateLimiter::new(api.rate.rate, api.rate.burst)),
            refusals: Arc::new(limit::HashedLimiter::new(api.rate, api::REFUSAL_SLOTS, clock.now())),
            fanout: fanout.clone(),
            outbound: api_outbound,
            url_policy,
            admin_token: admin_token.as_deref().map(Arc::from),
            admin_remote: api.admin_remote,
            metrics_remote: api.metrics_remote,
            clock,
        });
        let mut tasks = Vec::new();
        let revocation_writer = tokio::spawn(revocation_writer);
        tasks.push(tokio::spawn(http::serve(
            listener,
            Arc::new(tls),
            router.clone(),
            https,
            metrics.clone(),
            clock,
            shutdown_rx.clone(),
        )));
        let serving = quic.clone();
        tasks.push(tokio::spawn(async move { serving.serve().await }));
        tasks.push(tokio::spawn(record_seq_floor(table.clone(), journal.clone(), shutdown_rx.clone())));
        if let Some(deadline) = next_deadline {
            tasks.push(tokio::spawn(expire_departures(table.clone(), deadline, clock, shutdown_rx)));
        }
        let dev_info = match (dev, &admin_token) {
            (true, Some(admin)) => {
                Some(credentials::write_dev_info(&data_dir, quic_addr, https_addr, admin)?)
            }
            _ => None,
        };
        info!(%quic_addr, %https_addr, dev, restored_notifications = restored, "presenced listening");
        Ok(Daemon {
            quic,
            quic_addr,
            https_addr,
            dev_info,
            table,
            metrics,
            apps,
            notifications,
            fanout,
            journal,
            revocations,
            revocation_writer,
            shutdown,
            tasks,
            drain: quic_config.drain,
            api: router,
            recorder: std::sync::OnceLock::new(),
            clock,
        })
    }

    /// The presence table.
    pub fn table(&self) -> &Arc<PresenceTable> {
        &self.table
    }

    /// Every presence event from now on, as the outbox sees them (tests and tools). The
    /// first call attaches an [`EventRecorder`](testing::EventRecorder) to the table.
    pub fn events(&self) -> testing::EventCursor {
        let recorder = self.recorder.get_or_init(|| {
            let recorder = Arc::new(testing::EventRecorder::default());
            self.table.tap(recorder.clone());
            recorder
        });
        recorder.cursor()
    }

    /// The registered apps.
    pub fn apps(&self) -> &Arc<Apps> {
        &self.apps
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The HTTPS API as a tower service, the same one the listener serves, without TLS or a
    /// socket: the `api_request` fuzz target drives it with `oneshot`, many thousand
    /// requests a second. A request reaches the admin routes only with an
    /// [`api::Peer`] extension on a loopback address, as the listener attaches.
    pub fn api_router(&self) -> axum::Router {
        self.api.clone()
    }

    /// Sessions currently open.
    pub fn open_sessions(&self) -> usize {
        self.quic.open_connections()
    }

    /// Graceful drain: stop accepting, send `GoAway` to every device, wait until they have
    /// left or the drain bound passes, then close what remains (each session with its
    /// `Error` frame, PROTOCOL.md §9.10). With a drain grace (`drain_grace_secs`, the
    /// default) the users sent away are not reported `offline`: what each app was last told
    /// is recorded in the run journal with a deadline, for the next start to hold until
    /// they come back or tell apps `offline` then (`table`, departures). With none, their
    /// `offline` events are POSTed before returning, bounded by the drain bound again;
    /// either way whatever a receiver did not take stays in the outbox for the next start.
    pub async fn shutdown(self) {
        // Before the first GoAway: the users it sends away depart instead of going offline.
        let holding = self.table.begin_drain();
        let _ = self.shutdown.send(true);
        let deadline = self.clock.tokio_now() + self.drain;
        while self.quic.open_connections() > 0 && self.clock.tokio_now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        info!(remaining = self.quic.open_connections(), "drain finished");
        self.quic.close(Duration::from_secs(1)).await;
        if !holding {
            // No grace now: users still held from the previous run are told offline too.
            self.table.expire_departures(u64::MAX);
        } else {
            let (journal, departures) = (self.journal.clone(), self.table.departures());
            let count = departures.len();
            match blocking(move || journal.set_departures(&departures)).await {
                Ok(()) => info!(departed = count, "departed users recorded for the next run"),
                Err(error) => {
                    // Nobody would tell apps later: tell them now, as without a grace.
                    tracing::warn!(%error, "cannot record the departed users; telling apps they are offline");
                    self.table.expire_departures(u64::MAX);
                }
            }
        }
        // Events published during the drain (devices going offline) reach the outbox.
        self.notifications.shutdown().await;
        // Tombstones of revokes made during the run are durable before the run ends, and
        // the writer lets go of the store, so the same data dir can be opened again at once.
        self.revocations.stop();
        if let Err(error) = self.revocation_writer.await {
            tracing::warn!(%error, "the revocation writer failed");
        }
        self.fanout.shutdown(self.drain).await;
        let (journal, high) = (self.journal.clone(), self.table.seq_high());
        if let Err(error) = blocking(move || journal.set_seq_floor(high)).await {
            tracing::warn!(%error, "cannot record the last presence seq");
        }
        let journal = self.journal.clone();
        if let Err(error) = blocking(move || journal.end_run()).await {
            tracing::warn!(%error, "cannot record the clean shutdown; apps will be told to reset");
        }
        for task in self.tasks {
            task.abort();
        }
    }
}
