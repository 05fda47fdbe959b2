//! Daemon settings: one resolved [`Settings`] struct, built from three layers.
//!
//! Each layer is a [`SettingsLayer`] (every field optional): command-line flags and
//! `PRESENCED_*` environment variables (clap reads both), then the TOML file named by
//! `--config`, then the documented defaults. Flags and environment win over the file, the
//! file over the defaults. [`SettingsLayer::resolve`] checks everything and reports every
//! problem at once, so an operator fixes a config in one round.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "./presenced-data";
/// Default QUIC (device) listen address.
pub const DEFAULT_QUIC_LISTEN: &str = "0.0.0.0:4433";
/// Default HTTPS (API, health, metrics) listen address.
pub const DEFAULT_HTTPS_LISTEN: &str = "0.0.0.0:8443";
/// Default most concurrent device sessions.
pub const DEFAULT_MAX_SESSIONS: u32 = 200_000;
/// Default handshakes in flight above which new connections must prove their address
/// (QUIC Retry) first.
pub const DEFAULT_RETRY_THRESHOLD: u32 = 256;
/// Default TLS session-resumption store size (tickets held for 0-RTT).
pub const DEFAULT_SESSION_STORE: usize = 200_000;
/// Default silence past the heartbeat interval before a device counts as offline, seconds.
pub const DEFAULT_HEARTBEAT_GRACE_SECS: u64 = 15;
/// Default time for a device to send an acceptable `Hello`, seconds.
pub const DEFAULT_HANDSHAKE_TIMEOUT_SECS: u64 = 10;
/// Default QUIC idle timeout, seconds: the connection dies after this much silence. Longer
/// than the longest heartbeat interval plus grace so liveness, not QUIC, decides offline.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 1_860;
/// Default bound on the graceful drain after SIGTERM, seconds.
pub const DEFAULT_DRAIN_SECS: u64 = 10;
/// Default clock skew tolerated on a device token's `exp` and `nbf`, seconds (PROTOCOL.md §9.8).
pub const DEFAULT_TOKEN_LEEWAY_SECS: u64 = 30;
/// Largest token leeway accepted, seconds: RFC 7519 allows "a small leeway", and more than
/// a few minutes would turn skew tolerance into a longer token lifetime.
pub const MAX_TOKEN_LEEWAY_SECS: u64 = 300;
/// Default log filter.
pub const DEFAULT_LOG: &str = "info";
/// Default webhook batch window, milliseconds: how long the first waiting event waits for
/// company before its batch goes out.
pub const DEFAULT_WEBHOOK_WINDOW_MS: u64 = 250;
/// Default most events per webhook POST.
pub const DEFAULT_WEBHOOK_MAX_EVENTS: usize = 1_000;
/// Default most bytes of events per webhook POST.
pub const DEFAULT_WEBHOOK_MAX_BYTES: usize = 256 * 1024;
/// Default webhook request timeout, seconds.
pub const DEFAULT_WEBHOOK_TIMEOUT_SECS: u64 = 10;
/// Default receive and send buffer of the QUIC UDP socket, bytes. The kernel default
/// (about 208 KiB) overflows under a burst of handshakes; the kernel caps the value at
/// `net.core.rmem_max` / `wmem_max`.
pub const DEFAULT_UDP_BUFFER: usize = 8 * 1024 * 1024;
/// Default AppService API rate per app, requests per second.
pub const DEFAULT_API_RATE: u32 = 100;
/// Default AppService API burst per app.
pub const DEFAULT_API_BURST: u32 = 200;
/// Default new QUIC handshakes per second from one source address. Generous, because many
/// devices can share one address behind carrier-grade NAT; over it an unvalidated source
/// gets a QUIC Retry and a validated one is ignored.
pub const DEFAULT_HANDSHAKE_RATE: u32 = 500;
/// Default handshakes at once from one source address (a reconnect storm behind one NAT).
pub const DEFAULT_HANDSHAKE_BURST: u32 = 1_000;
/// Default control frames per second per session.
pub const DEFAULT_SESSION_FRAME_RATE: u32 = presence_protocol::server::DEFAULT_FRAME_RATE;
/// Default control-frame burst per session.
pub const DEFAULT_SESSION_FRAME_BURST: u32 = presence_protocol::server::DEFAULT_FRAME_BURST;
/// Default heartbeat pings per second per session.
pub const DEFAULT_SESSION_PING_RATE: u32 = presence_protocol::server::DEFAULT_PING_RATE;
/// Default ping burst per session.
pub const DEFAULT_SESSION_PING_BURST: u32 = presence_protocol::server::DEFAULT_PING_BURST;
/// Default seconds a write to a device's control stream may wait for the device to read
/// before the session is closed as a slow reader.
pub const DEFAULT_SLOW_READER_SECS: u64 = 30;
/// Default notifications per second per app (each request counts once).
pub const DEFAULT_NOTIFY_APP_RATE: u32 = 50;
/// Default notification burst per app.
pub const DEFAULT_NOTIFY_APP_BURST: u32 = 100;
/// Default notifications per second to one recipient (PUID) from one app.
pub const DEFAULT_NOTIFY_USER_RATE: u32 = 1;
/// Default notification burst to one recipient from one app.
pub const DEFAULT_NOTIFY_USER_BURST: u32 = 10;
/// Default most undecided notifications one app may have outstanding.
pub const DEFAULT_NOTIFY_OUTSTANDING: u32 = 10_000;
/// Default most concurrent HTTPS connections.
pub const DEFAULT_HTTPS_MAX_CONNECTIONS: u32 = 4_096;
/// Default seconds an HTTPS client has for its TLS handshake and then for each request's
/// headers (slowloris bound).
pub const DEFAULT_HTTPS_HEADER_TIMEOUT_SECS: u64 = 10;

/// One layer of settings, every field optional. The same struct reads flags, environment
/// and the TOML file, so the three can never disagree on names.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct SettingsLayer {
    /// Directory for keys, certificates and data [default: ./presenced-data].
    #[arg(long, env = "PRESENCED_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// QUIC listen address for devices [default: 0.0.0.0:4433].
    #[arg(long, env = "PRESENCED_QUIC_LISTEN")]
    pub quic_listen: Option<SocketAddr>,
    /// HTTPS listen address for the API, /healthz and /metrics [default: 0.0.0.0:8443].
    #[arg(long, env = "PRESENCED_HTTPS_LISTEN")]
    pub https_listen: Option<SocketAddr>,
    /// Development mode: create and use a self-signed certificate, a token-signing key, a
    /// PUID secret and an admin token in the data directory [default: false].
    #[arg(long, env = "PRESENCED_DEV", num_args = 0..=1, default_missing_value = "true")]
    pub dev: Option<bool>,
    /// TLS certificate chain (PEM) for QUIC and HTTPS; required without --dev.
    #[arg(long, env = "PRESENCED_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for the certificate; required without --dev.
    #[arg(long, env = "PRESENCED_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// JWKS file with the Ed25519 public keys that device tokens are verified against;
    /// required without --dev.
    #[arg(long, env = "PRESENCED_JWKS")]
    pub jwks: Option<PathBuf>,
    /// File holding the PUID secret (32+ bytes, base64); required without --dev.
    #[arg(long, env = "PRESENCED_PUID_SECRET_FILE")]
    pub puid_secret_file: Option<PathBuf>,
    /// Most concurrent device sessions [default: 200000].
    #[arg(long, env = "PRESENCED_MAX_SESSIONS")]
    pub max_sessions: Option<u32>,
    /// Handshakes in flight above which QUIC Retry validates addresses [default: 256].
    #[arg(long, env = "PRESENCED_RETRY_THRESHOLD")]
    pub retry_threshold: Option<u32>,
    /// TLS resumption tickets held for 0-RTT, kept in the data dir across restarts [default: 200000].
    #[arg(long, env = "PRESENCED_SESSION_STORE")]
    pub session_store: Option<usize>,
    /// Seconds of silence past the heartbeat interval before offline [default: 15].
    #[arg(long, env = "PRESENCED_HEARTBEAT_GRACE_SECS")]
    pub heartbeat_grace_secs: Option<u64>,
    /// Seconds a device has to complete its Hello [default: 10].
    #[arg(long, env = "PRESENCED_HANDSHAKE_TIMEOUT_SECS")]
    pub handshake_timeout_secs: Option<u64>,
    /// QUIC idle timeout in seconds [default: 1860].
    #[arg(long, env = "PRESENCED_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Bound on the graceful drain after SIGTERM, seconds [default: 10].
    #[arg(long, env = "PRESENCED_DRAIN_SECS")]
    pub drain_secs: Option<u64>,
    /// Log filter, tracing-subscriber syntax [default: info].
    #[arg(long, env = "PRESENCED_LOG")]
    pub log: Option<String>,
    /// Webhook batch window in milliseconds [default: 250].
    #[arg(long, env = "PRESENCED_WEBHOOK_WINDOW_MS")]
    pub webhook_window_ms: Option<u64>,
    /// Most events per webhook POST [default: 1000].
    #[arg(long, env = "PRESENCED_WEBHOOK_MAX_EVENTS")]
    pub webhook_max_events: Option<usize>,
    /// Most bytes of events per webhook POST [default: 262144].
    #[arg(long, env = "PRESENCED_WEBHOOK_MAX_BYTES")]
    pub webhook_max_bytes: Option<usize>,
    /// Webhook request timeout in seconds [default: 10].
    #[arg(long, env = "PRESENCED_WEBHOOK_TIMEOUT_SECS")]
    pub webhook_timeout_secs: Option<u64>,
    /// Address ranges (CIDR) webhooks may reach although they are private, for example an
    /// AppService on the operator's own network; repeat or separate with commas
    /// [default: none; `--dev` allows every address].
    #[arg(long, env = "PRESENCED_WEBHOOK_ALLOW", value_delimiter = ',')]
    pub webhook_allow: Option<Vec<String>>,
    /// Let the admin API answer clients that are not on loopback [default: false].
    #[arg(long, env = "PRESENCED_ADMIN_REMOTE", num_args = 0..=1, default_missing_value = "true")]
    pub admin_remote: Option<bool>,
    /// Receive and send buffer of the QUIC UDP socket in bytes, capped by the kernel's
    /// rmem_max/wmem_max [default: 8388608].
    #[arg(long, env = "PRESENCED_UDP_BUFFER")]
    pub udp_buffer: Option<usize>,
    /// AppService API requests per second per app [default: 100].
    #[arg(long, env = "PRESENCED_API_RATE")]
    pub api_rate: Option<u32>,
    /// AppService API burst per app [default: 200].
    #[arg(long, env = "PRESENCED_API_BURST")]
    pub api_burst: Option<u32>,
    /// New QUIC handshakes per second from one source address [default: 500].
    #[arg(long, env = "PRESENCED_HANDSHAKE_RATE")]
    pub handshake_rate: Option<u32>,
    /// QUIC handshakes at once from one source address [default: 1000].
    #[arg(long, env = "PRESENCED_HANDSHAKE_BURST")]
    pub handshake_burst: Option<u32>,
    /// Control frames per second a session may send [default: 10].
    #[arg(long, env = "PRESENCED_SESSION_FRAME_RATE")]
    pub session_frame_rate: Option<u32>,
    /// Control frames a session may send at once [default: 50].
    #[arg(long, env = "PRESENCED_SESSION_FRAME_BURST")]
    pub session_frame_burst: Option<u32>,
    /// Heartbeat pings per second a session may send [default: 5].
    #[arg(long, env = "PRESENCED_SESSION_PING_RATE")]
    pub session_ping_rate: Option<u32>,
    /// Heartbeat pings a session may send at once [default: 20].
    #[arg(long, env = "PRESENCED_SESSION_PING_BURST")]
    pub session_ping_burst: Option<u32>,
    /// Seconds a write to a device may wait for it to read before it is closed [default: 30].
    #[arg(long, env = "PRESENCED_SLOW_READER_SECS")]
    pub slow_reader_secs: Option<u64>,
    /// Clock skew tolerated on device tokens' `exp` and `nbf`, seconds, 0 to 300 [default: 30].
    #[arg(long, env = "PRESENCED_TOKEN_LEEWAY_SECS")]
    pub token_leeway_secs: Option<u64>,
    /// Notifications per second per app [default: 50].
    #[arg(long, env = "PRESENCED_NOTIFY_APP_RATE")]
    pub notify_app_rate: Option<u32>,
    /// Notification burst per app [default: 100].
    #[arg(long, env = "PRESENCED_NOTIFY_APP_BURST")]
    pub notify_app_burst: Option<u32>,
    /// Notifications per second to one recipient from one app [default: 1].
    #[arg(long, env = "PRESENCED_NOTIFY_USER_RATE")]
    pub notify_user_rate: Option<u32>,
    /// Notification burst to one recipient from one app [default: 10].
    #[arg(long, env = "PRESENCED_NOTIFY_USER_BURST")]
    pub notify_user_burst: Option<u32>,
    /// Most undecided notifications per app [default: 10000].
    #[arg(long, env = "PRESENCED_NOTIFY_OUTSTANDING")]
    pub notify_outstanding: Option<u32>,
    /// Most concurrent HTTPS connections [default: 4096].
    #[arg(long, env = "PRESENCED_HTTPS_MAX_CONNECTIONS")]
    pub https_max_connections: Option<u32>,
    /// Seconds for an HTTPS client's TLS handshake and each request's headers [default: 10].
    #[arg(long, env = "PRESENCED_HTTPS_HEADER_TIMEOUT_SECS")]
    pub https_header_timeout_secs: Option<u64>,
    /// Let /metrics answer clients that are not on loopback [default: false].
    #[arg(long, env = "PRESENCED_METRICS_REMOTE", num_args = 0..=1, default_missing_value = "true")]
    pub metrics_remote: Option<bool>,
}

/// Resolved settings; every field has its default applied.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Directory for keys, certificates and data. Default `./presenced-data`.
    pub data_dir: PathBuf,
    /// QUIC listen address. Default `0.0.0.0:4433`.
    pub quic_listen: SocketAddr,
    /// HTTPS listen address. Default `0.0.0.0:8443`.
    pub https_listen: SocketAddr,
    /// Development mode. Default false.
    pub dev: bool,
    /// Where the TLS certificate, token keys and PUID secret come from.
    pub credentials: Credentials,
    /// Most concurrent sessions. Default 200,000.
    pub max_sessions: u32,
    /// Handshakes in flight before Retry. Default 256.
    pub retry_threshold: u32,
    /// Resumption tickets held (in memory and in the store). Default 200,000.
    pub session_store: usize,
    /// Heartbeat grace. Default 15 s.
    pub heartbeat_grace: Duration,
    /// Handshake timeout. Default 10 s.
    pub handshake_timeout: Duration,
    /// QUIC idle timeout. Default 1,860 s.
    pub idle_timeout: Duration,
    /// Drain bound on SIGTERM. Default 10 s.
    pub drain: Duration,
    /// Log filter. Default `info`.
    pub log: String,
    /// Webhook batch window. Default 250 ms.
    pub webhook_window: Duration,
    /// Most events per POST. Default 1,000.
    pub webhook_max_events: usize,
    /// Most bytes per POST. Default 256 KiB.
    pub webhook_max_bytes: usize,
    /// Webhook request timeout. Default 10 s.
    pub webhook_timeout: Duration,
    /// Private ranges webhooks may reach, as given (CIDR). Default none.
    pub webhook_allow: Vec<String>,
    /// Admin API open beyond loopback. Default false.
    pub admin_remote: bool,
    /// QUIC UDP socket buffer size. Default 8 MiB (capped by the kernel).
    pub udp_buffer: usize,
    /// API requests per second per app. Default 100.
    pub api_rate: u32,
    /// API burst per app. Default 200.
    pub api_burst: u32,
    /// Per-source-address handshake limit, as (per second, at once). Default (500, 1,000).
    pub handshake_limit: Rate,
    /// Per-session control-frame limit. Default (10, 50).
    pub session_frames: Rate,
    /// Per-session heartbeat-ping limit. Default (5, 20).
    pub session_pings: Rate,
    /// How long a write may wait on a device that does not read. Default 30 s.
    pub slow_reader: Duration,
    /// Clock skew tolerated on device tokens' `exp` and `nbf`. Default 30 s, at most 300 s.
    pub token_leeway: Duration,
    /// Notifications per app. Default (50, 100).
    pub notify_app: Rate,
    /// Notifications per recipient (PUID) per app. Default (1, 10).
    pub notify_user: Rate,
    /// Most undecided notifications per app. Default 10,000.
    pub notify_outstanding: u32,
    /// Most concurrent HTTPS connections. Default 4,096.
    pub https_max_connections: u32,
    /// TLS handshake and request-header timeout on HTTPS. Default 10 s.
    pub https_header_timeout: Duration,
    /// `/metrics` open beyond loopback (it tells load, error rates and app ids). Default false.
    pub metrics_remote: bool,
}

/// A token-bucket limit: `rate` per second on average, `burst` at once; both at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Refill per second.
    pub rate: u32,
    /// Bucket size.
    pub burst: u32,
}

/// Where the secrets come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Created on first run in the data directory (`--dev`).
    Dev,
    /// Named files, all required.
    Files {
        /// Certificate chain, PEM.
        tls_cert: PathBuf,
        /// Private key, PEM.
        tls_key: PathBuf,
        /// JWKS with Ed25519 public keys.
        jwks: PathBuf,
        /// PUID secret, base64.
        puid_secret_file: PathBuf,
    },
}

/// Everything wrong with a configuration, listed together.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

impl SettingsLayer {
    /// Reads a TOML layer from a file.
    pub fn from_file(path: &Path) -> Result<SettingsLayer, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(vec![format!("cannot read config file {}: {e}", path.display())]))?;
        toml::from_str(&text).map_err(|e| ConfigError(vec![format!("config file {}: {e}", path.display())]))
    }

    /// A `--dev` daemon in `data_dir` on loopback ports the OS picks, logging warnings only:
    /// what tests, examples and load tools start in-process (read the bound addresses from
    /// [`crate::Daemon`]). Fields can be overridden with struct update syntax.
    pub fn dev_loopback(data_dir: &Path) -> SettingsLayer {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        SettingsLayer {
            dev: Some(true),
            data_dir: Some(data_dir.to_path_buf()),
            quic_listen: Some(loopback),
            https_listen: Some(loopback),
            log: Some("warn".into()),
            ..SettingsLayer::default()
        }
    }

    /// This layer with gaps filled from `lower`.
    pub fn over(self, lower: SettingsLayer) -> SettingsLayer {
        macro_rules! merge {
            ($($field:ident),*) => { SettingsLayer { $($field: self.$field.or(lower.$field)),* } };
        }
        merge!(
            data_dir,
            quic_listen,
            https_listen,
            dev,
            tls_cert,
            tls_key,
            jwks,
            puid_secret_file,
            max_sessions,
            retry_threshold,
            session_store,
            heartbeat_grace_secs,
            handshake_timeout_secs,
            idle_timeout_secs,
            drain_secs,
            log,
            webhook_window_ms,
            webhook_max_events,
            webhook_max_bytes,
            webhook_timeout_secs,
            webhook_allow,
            admin_remote,
            api_rate,
            api_burst,
            udp_buffer,
            handshake_rate,
            handshake_burst,
            session_frame_rate,
            session_frame_burst,
            session_ping_rate,
            session_ping_burst,
            slow_reader_secs,
            token_leeway_secs,
            notify_app_rate,
            notify_app_burst,
            notify_user_rate,
            notify_user_burst,
            notify_outstanding,
            https_max_connections,
            https_header_timeout_secs,
            metrics_remote
        )
    }

    /// Applies defaults and checks the result, collecting every error.
    pub fn resolve(self) -> Result<Settings, ConfigError> {
        let mut errors = Vec::new();
        let dev = self.dev.unwrap_or(false);
        let credentials = if dev {
            Credentials::Dev
        } else {
            let mut need = |value: Option<PathBuf>, flag: &str, what: &str| {
                if value.is_none() {
                    errors.push(format!("--{flag} is required without --dev ({what})"));
                }
                value.unwrap_or_default()
            };
            Credentials::Files {
                tls_cert: need(self.tls_cert, "tls-cert", "TLS certificate chain, PEM"),
                tls_key: need(self.tls_key, "tls-key", "TLS private key, PEM"),
                jwks: need(self.jwks, "jwks", "JWKS file with the token-verification keys"),
                puid_secret_file: need(self.puid_secret_file, "puid-secret-file", "PUID secret, base64"),
            }
        };
        if let Credentials::Files { tls_cert, tls_key, jwks, puid_secret_file } = &credentials {
            for path in [tls_cert, tls_key, jwks, puid_secret_file] {
                if !path.as_os_str().is_empty() && !path.is_file() {
                    errors.push(format!("{} does not exist or is not a file", path.display()));
                }
            }
        }
        let mut positive = |value: Option<u64>, default: u64, name: &str| {
            let value = value.unwrap_or(default);
            if value == 0 {
                errors.push(format!("{name} must be greater than zero"));
            }
            Duration::from_secs(value)
        };
        let heartbeat_grace =
            positive(self.heartbeat_grace_secs, DEFAULT_HEARTBEAT_GRACE_SECS, "heartbeat_grace_secs");
        let handshake_timeout =
            positive(self.handshake_timeout_secs, DEFAULT_HANDSHAKE_TIMEOUT_SECS, "handshake_timeout_secs");
        let idle_timeout = positive(self.idle_timeout_secs, DEFAULT_IDLE_TIMEOUT_SECS, "idle_timeout_secs");
        let drain = positive(self.drain_secs, DEFAULT_DRAIN_SECS, "drain_secs");
        let slow_reader = positive(self.slow_reader_secs, DEFAULT_SLOW_READER_SECS, "slow_reader_secs");
        let https_header_timeout = positive(
            self.https_header_timeout_secs,
            DEFAULT_HTTPS_HEADER_TIMEOUT_SECS,
            "https_header_timeout_secs",
        );
        let webhook_timeout =
            positive(self.webhook_timeout_secs, DEFAULT_WEBHOOK_TIMEOUT_SECS, "webhook_timeout_secs");
        let token_leeway = self.token_leeway_secs.unwrap_or(DEFAULT_TOKEN_LEEWAY_SECS);
        if token_leeway > MAX_TOKEN_LEEWAY_SECS {
            errors.push(format!("token_leeway_secs must be at most {MAX_TOKEN_LEEWAY_SECS}"));
        }
        let max_sessions = self.max_sessions.unwrap_or(DEFAULT_MAX_SESSIONS);
        if max_sessions == 0 {
            errors.push("max_sessions must be greater than zero".into());
        }
        let log = self.log.unwrap_or_else(|| DEFAULT_LOG.into());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log) {
            errors.push(format!("log filter {log:?}: {e}"));
        }
        let webhook_window =
            Duration::from_millis(self.webhook_window_ms.unwrap_or(DEFAULT_WEBHOOK_WINDOW_MS));
        let webhook_max_events = self.webhook_max_events.unwrap_or(DEFAULT_WEBHOOK_MAX_EVENTS);
        let webhook_max_bytes = self.webhook_max_bytes.unwrap_or(DEFAULT_WEBHOOK_MAX_BYTES);
        if webhook_max_events == 0 || webhook_max_bytes == 0 {
            errors.push("webhook_max_events and webhook_max_bytes must be greater than zero".into());
        }
        let webhook_allow = self.webhook_allow.unwrap_or_default();
        for cidr in &webhook_allow {
            if let Err(e) = crate::webhook::guard::parse_cidr(cidr) {
                errors.push(format!("webhook_allow {cidr:?}: {e}"));
            }
        }
        let api_rate = self.api_rate.unwrap_or(DEFAULT_API_RATE);
        let api_burst = self.api_burst.unwrap_or(DEFAULT_API_BURST);
        if api_rate == 0 || api_burst == 0 {
            errors.push("api_rate and api_burst must be greater than zero".into());
        }
        let mut rate = |rate: Option<u32>, burst: Option<u32>, defaults: (u32, u32), name: &str| {
            let limit = Rate { rate: rate.unwrap_or(defaults.0), burst: burst.unwrap_or(defaults.1) };
            if limit.rate == 0 || limit.burst == 0 {
                errors.push(format!("{name}_rate and {name}_burst must be greater than zero"));
            }
            limit
        };
        let handshake_limit = rate(
            self.handshake_rate,
            self.handshake_burst,
            (DEFAULT_HANDSHAKE_RATE, DEFAULT_HANDSHAKE_BURST),
            "handshake",
        );
        let session_frames = rate(
            self.session_frame_rate,
            self.session_frame_burst,
            (DEFAULT_SESSION_FRAME_RATE, DEFAULT_SESSION_FRAME_BURST),
            "session_frame",
        );
        let session_pings = rate(
            self.session_ping_rate,
            self.session_ping_burst,
            (DEFAULT_SESSION_PING_RATE, DEFAULT_SESSION_PING_BURST),
            "session_ping",
        );
        let notify_app = rate(
            self.notify_app_rate,
            self.notify_app_burst,
            (DEFAULT_NOTIFY_APP_RATE, DEFAULT_NOTIFY_APP_BURST),
            "notify_app",
        );
        let notify_user = rate(
            self.notify_user_rate,
            self.notify_user_burst,
            (DEFAULT_NOTIFY_USER_RATE, DEFAULT_NOTIFY_USER_BURST),
            "notify_user",
        );
        let notify_outstanding = self.notify_outstanding.unwrap_or(DEFAULT_NOTIFY_OUTSTANDING);
        let https_max_connections = self.https_max_connections.unwrap_or(DEFAULT_HTTPS_MAX_CONNECTIONS);
        if notify_outstanding == 0 || https_max_connections == 0 {
            errors.push("notify_outstanding and https_max_connections must be greater than zero".into());
        }
        let settings = Settings {
            data_dir: self.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            quic_listen: self.quic_listen.unwrap_or_else(|| parse_default(DEFAULT_QUIC_LISTEN)),
            https_listen: self.https_listen.unwrap_or_else(|| parse_default(DEFAULT_HTTPS_LISTEN)),
            dev,
            credentials,
            max_sessions,
            retry_threshold: self.retry_threshold.unwrap_or(DEFAULT_RETRY_THRESHOLD),
            session_store: self.session_store.unwrap_or(DEFAULT_SESSION_STORE),
            heartbeat_grace,
            handshake_timeout,
            idle_timeout,
            drain,
            log,
            webhook_window,
            webhook_max_events,
            webhook_max_bytes,
            webhook_timeout,
            webhook_allow,
            admin_remote: self.admin_remote.unwrap_or(false),
            api_rate,
            api_burst,
            udp_buffer: self.udp_buffer.unwrap_or(DEFAULT_UDP_BUFFER),
            handshake_limit,
            session_frames,
            session_pings,
            slow_reader,
            token_leeway: Duration::from_secs(token_leeway),
            notify_app,
            notify_user,
            notify_outstanding,
            https_max_connections,
            https_header_timeout,
            metrics_remote: self.metrics_remote.unwrap_or(false),
        };
        if settings.quic_listen.port() != 0 && settings.quic_listen == settings.https_listen {
            errors.push("quic_listen and https_listen must differ".into());
        }
        if errors.is_empty() { Ok(settings) } else { Err(ConfigError(errors)) }
    }
}

fn parse_default(addr: &str) -> SocketAddr {
    addr.parse().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_in_dev_mode() {
        let settings = SettingsLayer { dev: Some(true), ..Default::default() }.resolve().expect("valid");
        assert_eq!(settings.quic_listen, DEFAULT_QUIC_LISTEN.parse().expect("addr"));
        assert_eq!(settings.https_listen, DEFAULT_HTTPS_LISTEN.parse().expect("addr"));
        assert_eq!(settings.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(settings.credentials, Credentials::Dev);
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let layer = SettingsLayer {
            drain_secs: Some(0),
            max_sessions: Some(0),
            log: Some("=[".into()),
            notify_user_burst: Some(0),
            handshake_rate: Some(0),
            ..Default::default()
        };
        let ConfigError(errors) = layer.resolve().expect_err("invalid");
        let all = errors.join("\n");
        for needle in [
            "--tls-cert",
            "--tls-key",
            "--jwks",
            "--puid-secret-file",
            "drain_secs",
            "max_sessions",
            "log",
            "notify_user_burst",
            "handshake_rate",
        ] {
            assert!(all.contains(needle), "{needle} missing from {all}");
        }
    }

    #[test]
    fn flags_win_over_file_and_unknown_keys_are_rejected() {
        let file: SettingsLayer =
            toml::from_str("dev = true\nmax_sessions = 5\ndrain_secs = 3").expect("toml");
        let flags = SettingsLayer { max_sessions: Some(7), ..Default::default() };
        let settings = flags.over(file).resolve().expect("valid");
        assert_eq!(settings.max_sessions, 7);
        assert_eq!(settings.drain, Duration::from_secs(3));
        assert!(toml::from_str::<SettingsLayer>("dve = true").is_err());
    }
}
