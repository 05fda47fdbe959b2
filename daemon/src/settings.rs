//! Daemon settings: one declaration per setting, resolved into one config struct per
//! component.
//!
//! ## Layout
//!
//! - The `settings!` invocation below is the only list of settings. Each entry names the
//!   setting (the TOML key; the flag is the same with dashes), its type, its default, its
//!   `PRESENCED_*` environment variable, its documentation and, if it has one, its check.
//!   The macro generates [`SettingsLayer`] (every field optional, read by clap from flags and
//!   environment and by serde from the TOML file), [`SettingsLayer::over`] (the layering),
//!   the defaults, the `--help` text with each default, and the reference the tests check
//!   the README and the naming rules against. Adding a setting is one entry, plus the line
//!   that hands it to its component in [`SettingsLayer::resolve`].
//! - [`SettingsLayer::resolve`] applies the defaults, runs every check and reports every
//!   problem at once (so an operator fixes a config in one round), then builds [`Settings`]:
//!   one struct per component (`QuicConfig`, `HttpConfig`, `ApiConfig`,
//!   [`FanoutConfig`], [`NotifyLimits`], `TableConfig`, [`Credentials`]) and the few truly global values
//!   (data directory, dev mode, logging). [`crate::Daemon::start`] hands each component its
//!   own struct and nothing else.
//!
//! Layers: flags and environment win over the TOML file named by `--config`, the file over
//! the defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::api::ApiConfig;
use crate::http::HttpConfig;
use crate::notify::NotifyLimits;
use crate::quic::QuicConfig;
use crate::table::TableConfig;
use crate::webhook::fanout::FanoutConfig;
use crate::webhook::guard::UrlPolicy;

/// Default data directory, relative to the working directory. A named constant because the
/// `apps` and `token` commands use it as their own clap default.
pub const DEFAULT_DATA_DIR: &str = "./presenced-data";
/// Default TLS session-resumption store size: the load tool's bare quinn baseline sizes its
/// ticket cache the same.
pub const DEFAULT_SESSION_STORE: usize = 200_000;
/// Default QUIC idle timeout, seconds: longer than the longest heartbeat interval plus grace
/// so liveness, not QUIC, decides offline. The load tool's baseline uses it too.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 1_860;
/// Default clock skew tolerated on a device token's `exp` and `nbf`, seconds (PROTOCOL.md
/// §9.8). A named constant because tests and the fuzz harness check tokens at its edge.
pub const DEFAULT_TOKEN_LEEWAY_SECS: u64 = 30;
/// Largest token leeway accepted, seconds: RFC 7519 allows "a small leeway", and more than
/// a few minutes would turn skew tolerance into a longer token lifetime.
pub const MAX_TOKEN_LEEWAY_SECS: u64 = 300;

/// What the daemon's log lines look like.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event (colour only on a terminal).
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// How a default appears in `--help` and the reference.
trait ShowDefault {
    fn show(&self) -> String;
}

macro_rules! show_by_display {
    ($($ty:ty),*) => { $(impl ShowDefault for $ty { fn show(&self) -> String { self.to_string() } })* };
}
show_by_display!(u32, u64, usize, bool, String, SocketAddr, LogFormat);

impl ShowDefault for PathBuf {
    fn show(&self) -> String {
        self.display().to_string()
    }
}

impl ShowDefault for Vec<String> {
    fn show(&self) -> String {
        if self.is_empty() { "none".into() } else { self.join(",") }
    }
}

/// One setting as the reference shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SettingDoc {
    /// The TOML key (and, with dashes, the flag).
    pub(crate) name: &'static str,
    /// The environment variable.
    pub(crate) env: &'static str,
    /// What it does.
    pub(crate) doc: String,
    /// Its default as shown; `None` for settings without one (the credential files).
    pub(crate) default: Option<String>,
}

#[cfg(test)]
impl SettingDoc {
    /// The flag, as operators type it.
    pub(crate) fn flag(&self) -> String {
        format!("--{}", self.name.replace('_', "-"))
    }
}

/// The `--help` line of setting `name`: its documentation and its default.
fn help_for(name: &str) -> String {
    let Some(setting) = reference().into_iter().find(|s| s.name == name) else { return String::new() };
    match setting.default {
        Some(default) => format!("{} [default: {default}]", setting.doc.trim_end_matches('.')),
        None => setting.doc,
    }
}

/// A setting's type after defaults: `T` with a default, `Option<T>` without.
macro_rules! filled_type {
    ($ty:ty) => { Option<$ty> };
    ($ty:ty, $default:expr) => { $ty };
}

/// A setting's value after defaults.
macro_rules! filled_value {
    ($ty:ty, $value:expr) => {
        $value
    };
    ($ty:ty, $value:expr, $default:expr) => {
        $value.unwrap_or_else(|| -> $ty { $default })
    };
}

/// Generates the layer, its merge, its defaults, its checks and its reference from the one
/// list of settings below. Entry syntax:
///
/// ```text
/// /// Doc (the --help text; the default is appended).
/// name: Type = default_expr, env "PRESENCED_NAME" [, check fn] [, arg(extra clap args)];
/// ```
macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])+
        $name:ident: $ty:ty $(= $default:expr)?, env $env:literal
            $(, check $check:path)? $(, arg($($arg:tt)*))?;
    )+) => {
        /// One layer of settings, every field optional. The same struct reads flags,
        /// environment and the TOML file, so the three can never disagree on names. Each
        /// field's default is shown by `presenced serve --help`.
        #[derive(Debug, Clone, Default, clap::Args, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct SettingsLayer {
            $(
                $(#[doc = $doc])+
                #[arg(long, env = $env, help = help_for(stringify!($name)) $(, $($arg)*)?)]
                pub $name: Option<$ty>,
            )+
        }

        /// Every setting with its default applied (the credential files stay optional).
        struct Filled {
            $($name: filled_type!($ty $(, $default)?),)+
        }

        impl SettingsLayer {
            /// This layer with gaps filled from `lower`.
            pub fn over(self, lower: SettingsLayer) -> SettingsLayer {
                SettingsLayer { $($name: self.$name.or(lower.$name),)+ }
            }

            /// Applies the defaults and runs every setting's own check, collecting errors.
            fn fill(self, errors: &mut Vec<String>) -> Filled {
                let filled = Filled { $($name: filled_value!($ty, self.$name $(, $default)?),)+ };
                $($( if let Some(error) = $check(stringify!($name), &filled.$name) { errors.push(error); } )?)+
                filled
            }
        }

        /// Every setting, in declaration order, as `--help` and the README show it.
        pub(crate) fn reference() -> Vec<SettingDoc> {
            vec![$(SettingDoc {
                name: stringify!($name),
                env: $env,
                doc: [$($doc),+].iter().map(|line| line.trim()).collect::<Vec<_>>().join(" "),
                default: None $(.or(Some(ShowDefault::show(&{ let value: $ty = $default; value }))))?,
            },)+]
        }
    };
}

settings! {
    /// Directory for keys, certificates and data.
    data_dir: PathBuf = PathBuf::from(DEFAULT_DATA_DIR), env "PRESENCED_DATA_DIR";
    /// QUIC listen address for devices.
    quic_listen: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 4433)), env "PRESENCED_QUIC_LISTEN";
    /// HTTPS listen address for the API, /healthz and /metrics.
    https_listen: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 8443)), env "PRESENCED_HTTPS_LISTEN";
    /// Development mode: create and use a self-signed certificate, a token-signing key, a
    /// PUID secret and an admin token in the data directory.
    dev: bool = false, env "PRESENCED_DEV", arg(num_args = 0..=1, default_missing_value = "true");
    /// TLS certificate chain (PEM) for QUIC and HTTPS; required without --dev.
    tls_cert: PathBuf, env "PRESENCED_TLS_CERT";
    /// TLS private key (PEM) for the certificate; required without --dev.
    tls_key: PathBuf, env "PRESENCED_TLS_KEY";
    /// JWKS file with the Ed25519 public keys that device tokens are verified against;
    /// required without --dev.
    jwks: PathBuf, env "PRESENCED_JWKS";
    /// File holding the PUID secret (32+ bytes, base64); required without --dev.
    puid_secret_file: PathBuf, env "PRESENCED_PUID_SECRET_FILE";
    /// Most concurrent device sessions.
    max_sessions: u32 = 200_000, env "PRESENCED_MAX_SESSIONS", check nonzero;
    /// Most devices one user may have connected at once; one more is refused with
    /// TOO_MANY_DEVICES (a device reconnecting replaces its own session and is not refused).
    max_devices_per_user: u32 = crate::table::DEFAULT_MAX_DEVICES_PER_USER,
        env "PRESENCED_MAX_DEVICES_PER_USER", check nonzero;
    /// Handshakes in flight above which QUIC Retry validates addresses.
    retry_threshold: u32 = 256, env "PRESENCED_RETRY_THRESHOLD";
    /// TLS resumption tickets held for 0-RTT, kept in the data dir across restarts.
    session_store: usize = DEFAULT_SESSION_STORE, env "PRESENCED_SESSION_STORE";
    /// Seconds of silence past the heartbeat interval before offline.
    heartbeat_grace_secs: u64 = 15, env "PRESENCED_HEARTBEAT_GRACE_SECS", check nonzero;
    /// Seconds a device has to complete its Hello.
    handshake_timeout_secs: u64 = 10, env "PRESENCED_HANDSHAKE_TIMEOUT_SECS", check nonzero;
    /// QUIC idle timeout in seconds: the connection dies after this much silence.
    idle_timeout_secs: u64 = DEFAULT_IDLE_TIMEOUT_SECS, env "PRESENCED_IDLE_TIMEOUT_SECS", check nonzero;
    /// Bound on the graceful drain after SIGTERM, seconds.
    drain_secs: u64 = 10, env "PRESENCED_DRAIN_SECS", check nonzero;
    /// Seconds a device the drain sent away (GoAway on SIGTERM) has to come back, to this
    /// daemon restarted on the same data dir, before apps are told it is offline: a clean
    /// restart within it shows apps no offline/online pair. Told by the restarted daemon; if
    /// none starts, apps are never told. 0 tells apps offline in the drain; any other value
    /// must exceed drain_secs.
    drain_grace_secs: u64 = 30, env "PRESENCED_DRAIN_GRACE_SECS", check at_most_a_day;
    /// Log filter, tracing-subscriber syntax.
    log: String = "info".into(), env "PRESENCED_LOG", check log_filter;
    /// Log line format: text for people, json (one object per line) for log collectors.
    log_format: LogFormat = LogFormat::Text, env "PRESENCED_LOG_FORMAT";
    /// Webhook batch window in milliseconds: how long the first waiting event waits for
    /// company before its batch goes out.
    webhook_window_ms: u64 = 250, env "PRESENCED_WEBHOOK_WINDOW_MS";
    /// Most events per webhook POST.
    webhook_max_events: usize = 1_000, env "PRESENCED_WEBHOOK_MAX_EVENTS", check nonzero;
    /// Most bytes of events per webhook POST.
    webhook_max_bytes: usize = 256 * 1024, env "PRESENCED_WEBHOOK_MAX_BYTES", check nonzero;
    /// Most webhook batches of one app in flight at once: presence events (ordered by
    /// `seq`) and notification outcomes may overlap; grant, revoke and reset never do. 1
    /// sends one batch at a time.
    webhook_in_flight: usize = crate::webhook::fanout::DEFAULT_MAX_IN_FLIGHT,
        env "PRESENCED_WEBHOOK_IN_FLIGHT", check nonzero;
    /// Webhook request timeout in seconds.
    webhook_timeout_secs: u64 = 10, env "PRESENCED_WEBHOOK_TIMEOUT_SECS", check nonzero;
    /// Webhook POSTs remembered per app for its delivery log (GET /v1/deliveries and the
    /// console), in memory, at most 10000; 0 keeps none.
    delivery_log_size: usize = crate::webhook::log::DEFAULT_DELIVERY_LOG_SIZE,
        env "PRESENCED_DELIVERY_LOG_SIZE", check delivery_log_cap;
    /// Address ranges (CIDR) webhooks may reach although they are private, for example an
    /// AppService on the operator's own network; repeat or separate with commas (`--dev`
    /// allows every address).
    webhook_allow: Vec<String> = Vec::new(), env "PRESENCED_WEBHOOK_ALLOW", check cidrs,
        arg(value_delimiter = ',');
    /// Let the admin API answer clients that are not on loopback.
    admin_remote: bool = false, env "PRESENCED_ADMIN_REMOTE",
        arg(num_args = 0..=1, default_missing_value = "true");
    /// Receive and send buffer of the QUIC UDP socket in bytes, capped by the kernel's
    /// rmem_max/wmem_max (the kernel default, about 208 KiB, overflows under a burst of
    /// handshakes).
    udp_buffer: usize = 8 * 1024 * 1024, env "PRESENCED_UDP_BUFFER";
    /// AppService API requests per second per app.
    api_rate: u32 = 100, env "PRESENCED_API_RATE", check nonzero;
    /// AppService API burst per app.
    api_burst: u32 = 200, env "PRESENCED_API_BURST", check nonzero;
    /// New QUIC handshakes per second from one source address (generous: many devices can
    /// share one address behind carrier-grade NAT).
    handshake_rate: u32 = 500, env "PRESENCED_HANDSHAKE_RATE", check nonzero;
    /// QUIC handshakes at once from one source address (a reconnect storm behind one NAT).
    handshake_burst: u32 = 1_000, env "PRESENCED_HANDSHAKE_BURST", check nonzero;
    /// Control frames per second a session may send.
    session_frame_rate: u32 = presence_protocol::server::DEFAULT_FRAME_RATE,
        env "PRESENCED_SESSION_FRAME_RATE", check nonzero;
    /// Control frames a session may send at once.
    session_frame_burst: u32 = presence_protocol::server::DEFAULT_FRAME_BURST,
        env "PRESENCED_SESSION_FRAME_BURST", check nonzero;
    /// Heartbeat pings per second a session may send.
    session_ping_rate: u32 = presence_protocol::server::DEFAULT_PING_RATE,
        env "PRESENCED_SESSION_PING_RATE", check nonzero;
    /// Heartbeat pings a session may send at once.
    session_ping_burst: u32 = presence_protocol::server::DEFAULT_PING_BURST,
        env "PRESENCED_SESSION_PING_BURST", check nonzero;
    /// Seconds a write to a device may wait for it to read before it is closed.
    slow_reader_secs: u64 = 30, env "PRESENCED_SLOW_READER_SECS", check nonzero;
    /// Clock skew tolerated on device tokens' `exp` and `nbf`, seconds, 0 to 300
    /// (PROTOCOL.md §9.8).
    token_leeway_secs: u64 = DEFAULT_TOKEN_LEEWAY_SECS, env "PRESENCED_TOKEN_LEEWAY_SECS",
        check small_leeway;
    /// Notifications per second per app (each request counts once).
    notify_app_rate: u32 = 50, env "PRESENCED_NOTIFY_APP_RATE", check nonzero;
    /// Notification burst per app.
    notify_app_burst: u32 = 100, env "PRESENCED_NOTIFY_APP_BURST", check nonzero;
    /// Notifications per second to one recipient (PUID) from one app.
    notify_user_rate: u32 = 1, env "PRESENCED_NOTIFY_USER_RATE", check nonzero;
    /// Notification burst to one recipient from one app.
    notify_user_burst: u32 = 10, env "PRESENCED_NOTIFY_USER_BURST", check nonzero;
    /// Most undecided notifications per app.
    notify_outstanding: u32 = 10_000, env "PRESENCED_NOTIFY_OUTSTANDING", check nonzero;
    /// Most concurrent HTTPS connections. When all are taken a new client takes the place
    /// of the oldest idle one (no request in flight); only when all are busy is it refused.
    https_max_connections: u32 = 4_096, env "PRESENCED_HTTPS_MAX_CONNECTIONS", check nonzero;
    /// Of --https-max-connections, how many only loopback clients may take, so an operator
    /// on the host always reaches the admin API, /metrics and /healthz.
    https_reserved_connections: u32 = 64, env "PRESENCED_HTTPS_RESERVED_CONNECTIONS";
    /// Most HTTPS connections from one IP address (each loopback address counts apart); 0
    /// for no limit. Behind a load balancer every client may share its few addresses: raise
    /// it or set 0 there.
    https_max_per_source: u32 = 512, env "PRESENCED_HTTPS_MAX_PER_SOURCE";
    /// Seconds for an HTTPS client's TLS handshake and each request's headers (slowloris
    /// bound).
    https_header_timeout_secs: u64 = 10, env "PRESENCED_HTTPS_HEADER_TIMEOUT_SECS", check nonzero;
    /// Seconds from an HTTPS request's headers to the last byte of its body (slow bodies);
    /// over it the answer is 408 request_timeout.
    https_body_timeout_secs: u64 = 10, env "PRESENCED_HTTPS_BODY_TIMEOUT_SECS", check nonzero;
    /// Seconds for a whole HTTPS request, body and handler; over it the answer is 408
    /// request_timeout.
    https_request_timeout_secs: u64 = 30, env "PRESENCED_HTTPS_REQUEST_TIMEOUT_SECS", check nonzero;
    /// Seconds an HTTPS connection may stay without a request in flight before it is closed
    /// (longer than a load balancer's usual 60 s, so the balancer ends its own first).
    https_idle_timeout_secs: u64 = 75, env "PRESENCED_HTTPS_IDLE_TIMEOUT_SECS", check nonzero;
    /// Let /metrics answer clients that are not on loopback (it tells load, error rates and
    /// app ids).
    metrics_remote: bool = false, env "PRESENCED_METRICS_REMOTE",
        arg(num_args = 0..=1, default_missing_value = "true");
}

/// Longest drain grace accepted, seconds: a user whose devices never come back is shown
/// as they were for at most this long after a restart.
pub const MAX_DRAIN_GRACE_SECS: u64 = 86_400;

/// Check: a drain grace of at most [`MAX_DRAIN_GRACE_SECS`].
fn at_most_a_day(name: &str, value: &u64) -> Option<String> {
    (*value > MAX_DRAIN_GRACE_SECS).then(|| format!("{name} must be at most {MAX_DRAIN_GRACE_SECS}"))
}

/// Check: a delivery log of at most [`MAX_DELIVERY_LOG_SIZE`](crate::webhook::log::MAX_DELIVERY_LOG_SIZE)
/// attempts per app.
fn delivery_log_cap(name: &str, value: &usize) -> Option<String> {
    let max = crate::webhook::log::MAX_DELIVERY_LOG_SIZE;
    (*value > max).then(|| format!("{name} must be at most {max}"))
}

/// Check: a token leeway of at most [`MAX_TOKEN_LEEWAY_SECS`].
fn small_leeway(name: &str, value: &u64) -> Option<String> {
    (*value > MAX_TOKEN_LEEWAY_SECS).then(|| format!("{name} must be at most {MAX_TOKEN_LEEWAY_SECS}"))
}

/// Check: the value is not zero.
fn nonzero<T: Default + PartialEq>(name: &str, value: &T) -> Option<String> {
    (*value == T::default()).then(|| format!("{name} must be greater than zero"))
}

/// Check: the value is a valid tracing-subscriber filter.
fn log_filter(name: &str, value: &str) -> Option<String> {
    tracing_subscriber::EnvFilter::try_new(value).err().map(|e| format!("{name} filter {value:?}: {e}"))
}

/// Check: every entry is a CIDR range.
fn cidrs(name: &str, value: &[String]) -> Option<String> {
    let bad: Vec<String> = value
        .iter()
        .filter_map(|cidr| crate::webhook::guard::parse_cidr(cidr).err().map(|e| format!("{cidr:?}: {e}")))
        .collect();
    (!bad.is_empty()).then(|| format!("{name} {}", bad.join(", ")))
}

/// Resolved settings: each component's own config, and what is truly global.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Directory for keys, certificates and data.
    pub data_dir: PathBuf,
    /// Development mode: dev secrets, any webhook address, the dev CA trusted for webhooks.
    pub dev: bool,
    /// How the binary sets up logging.
    pub log: LogConfig,
    /// Where the TLS certificate, token keys and PUID secret come from.
    pub credentials: Credentials,
    /// The device-facing QUIC server.
    pub(crate) quic: QuicConfig,
    /// The HTTPS listener.
    pub(crate) https: HttpConfig,
    /// The HTTPS API's limits and exposure.
    pub(crate) api: ApiConfig,
    /// Webhook delivery. `extra_roots` is empty here: the dev CA is added once the
    /// credentials are loaded.
    pub(crate) fanout: FanoutConfig,
    /// Notification limits.
    pub(crate) notify: NotifyLimits,
    /// The presence table's limits.
    pub(crate) table: TableConfig,
}

/// Logging, set up by the binary before the daemon starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// The tracing-subscriber filter.
    pub filter: String,
    /// Text or JSON lines.
    pub format: LogFormat,
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

    /// Applies defaults and checks the result, collecting every error; then hands each
    /// component its own part.
    pub fn resolve(self) -> Result<Settings, ConfigError> {
        let mut errors = Vec::new();
        let v = self.fill(&mut errors);
        let credentials = if v.dev {
            Credentials::Dev
        } else {
            let mut need = |value: Option<PathBuf>, flag: &str, what: &str| {
                if value.is_none() {
                    errors.push(format!("--{flag} is required without --dev ({what})"));
                }
                value.unwrap_or_default()
            };
            Credentials::Files {
                tls_cert: need(v.tls_cert, "tls-cert", "TLS certificate chain, PEM"),
                tls_key: need(v.tls_key, "tls-key", "TLS private key, PEM"),
                jwks: need(v.jwks, "jwks", "JWKS file with the token-verification keys"),
                puid_secret_file: need(v.puid_secret_file, "puid-secret-file", "PUID secret, base64"),
            }
        };
        if let Credentials::Files { tls_cert, tls_key, jwks, puid_secret_file } = &credentials {
            for path in [tls_cert, tls_key, jwks, puid_secret_file] {
                if !path.as_os_str().is_empty() && !path.is_file() {
                    errors.push(format!("{} does not exist or is not a file", path.display()));
                }
            }
        }
        if v.drain_grace_secs != 0 && v.drain_grace_secs <= v.drain_secs {
            // The devices a drain sends away come back after it ends, and the restart
            // takes time: a grace that ends first reports them offline all the same.
            errors.push(format!(
                "drain_grace_secs ({}) must exceed drain_secs ({}) plus the restart time, or be 0 (no grace)",
                v.drain_grace_secs, v.drain_secs
            ));
        }
        if v.https_reserved_connections >= v.https_max_connections {
            errors.push("https_reserved_connections must be less than https_max_connections".into());
        }
        if v.quic_listen.port() != 0 && v.quic_listen == v.https_listen {
            errors.push("quic_listen and https_listen must differ".into());
        }
        // The CIDRs were checked above; a policy that still fails is reported, not unwrapped.
        let url_policy = UrlPolicy::new(v.dev, &v.webhook_allow).unwrap_or_else(|e| {
            errors.push(format!("webhook_allow: {e}"));
            UrlPolicy::default()
        });
        if !errors.is_empty() {
            return Err(ConfigError(errors));
        }
        let secs = Duration::from_secs;
        let rate = |rate, burst| Rate { rate, burst };
        Ok(Settings {
            data_dir: v.data_dir,
            dev: v.dev,
            log: LogConfig { filter: v.log, format: v.log_format },
            credentials,
            quic: QuicConfig {
                listen: v.quic_listen,
                max_sessions: v.max_sessions,
                retry_threshold: v.retry_threshold,
                session_store: v.session_store,
                heartbeat_grace: secs(v.heartbeat_grace_secs),
                handshake_timeout: secs(v.handshake_timeout_secs),
                idle_timeout: secs(v.idle_timeout_secs),
                udp_buffer: v.udp_buffer,
                handshake_limit: rate(v.handshake_rate, v.handshake_burst),
                session_frames: rate(v.session_frame_rate, v.session_frame_burst),
                session_pings: rate(v.session_ping_rate, v.session_ping_burst),
                slow_reader: secs(v.slow_reader_secs),
                token_leeway: secs(v.token_leeway_secs),
                drain: secs(v.drain_secs),
            },
            https: HttpConfig {
                listen: v.https_listen,
                max_connections: v.https_max_connections,
                reserved: v.https_reserved_connections,
                max_per_source: v.https_max_per_source,
                header_timeout: secs(v.https_header_timeout_secs),
                body_timeout: secs(v.https_body_timeout_secs),
                request_timeout: secs(v.https_request_timeout_secs),
                idle_timeout: secs(v.https_idle_timeout_secs),
            },
            api: ApiConfig {
                rate: rate(v.api_rate, v.api_burst),
                admin_remote: v.admin_remote,
                metrics_remote: v.metrics_remote,
            },
            fanout: FanoutConfig {
                batch_window: Duration::from_millis(v.webhook_window_ms),
                max_events: v.webhook_max_events,
                max_bytes: v.webhook_max_bytes,
                max_in_flight: v.webhook_in_flight,
                request_timeout: secs(v.webhook_timeout_secs),
                url_policy: Arc::new(url_policy),
                delivery_log_size: v.delivery_log_size,
                ..FanoutConfig::default()
            },
            notify: NotifyLimits {
                app: rate(v.notify_app_rate, v.notify_app_burst),
                recipient: rate(v.notify_user_rate, v.notify_user_burst),
                outstanding: v.notify_outstanding,
            },
            table: TableConfig {
                max_devices_per_user: v.max_devices_per_user,
                drain_grace: secs(v.drain_grace_secs),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Args;

    #[test]
    fn a_token_leeway_over_five_minutes_is_refused() {
        let layer =
            |secs| SettingsLayer { dev: Some(true), token_leeway_secs: Some(secs), ..Default::default() };
        assert_eq!(layer(0).resolve().expect("no leeway is fine").quic.token_leeway, Duration::ZERO);
        assert_eq!(layer(300).resolve().expect("five minutes").quic.token_leeway, Duration::from_secs(300));
        let error = layer(301).resolve().expect_err("more is a longer token lifetime, not skew");
        assert!(error.to_string().contains("token_leeway_secs"), "{error}");
    }

    /// The drain grace reaches the table: 30 s by default, 0 allowed (offline in the
    /// drain), a day at most.
    #[test]
    fn the_drain_grace_defaults_to_30_s_and_is_at_most_a_day() {
        let layer = |secs| SettingsLayer { dev: Some(true), drain_grace_secs: secs, ..Default::default() };
        assert_eq!(layer(None).resolve().expect("default").table.drain_grace, Duration::from_secs(30));
        assert_eq!(layer(Some(0)).resolve().expect("none is fine").table.drain_grace, Duration::ZERO);
        let day = layer(Some(MAX_DRAIN_GRACE_SECS)).resolve().expect("a day");
        assert_eq!(day.table.drain_grace, Duration::from_secs(MAX_DRAIN_GRACE_SECS));
        let error = layer(Some(MAX_DRAIN_GRACE_SECS + 1)).resolve().expect_err("more than a day");
        assert!(error.to_string().contains("drain_grace_secs"), "{error}");
        // A grace that ends with the drain (10 s by default) would report the devices it
        // sent away offline all the same.
        for short in [1, 10] {
            let error = layer(Some(short)).resolve().expect_err("not longer than the drain");
            assert!(error.to_string().contains("must exceed drain_secs (10)"), "{error}");
        }
        assert!(layer(Some(11)).resolve().is_ok(), "longer than the drain");
    }

    /// The delivery log keeps 100 attempts per app by default, none with 0, 10,000 at most.
    #[test]
    fn the_delivery_log_size_defaults_to_100_and_is_bounded() {
        let layer = |size| SettingsLayer { dev: Some(true), delivery_log_size: size, ..Default::default() };
        assert_eq!(layer(None).resolve().expect("default").fanout.delivery_log_size, 100);
        assert_eq!(layer(Some(0)).resolve().expect("none is fine").fanout.delivery_log_size, 0);
        let error = layer(Some(10_001)).resolve().expect_err("too many");
        assert!(error.to_string().contains("delivery_log_size"), "{error}");
    }

    #[test]
    fn defaults_apply_in_dev_mode() {
        let settings = SettingsLayer { dev: Some(true), ..Default::default() }.resolve().expect("valid");
        assert_eq!(settings.quic.listen, "0.0.0.0:4433".parse().expect("addr"));
        assert_eq!(settings.https.listen, "0.0.0.0:8443".parse().expect("addr"));
        assert_eq!(settings.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(settings.credentials, Credentials::Dev);
        assert_eq!(settings.log, LogConfig { filter: "info".into(), format: LogFormat::Text });
        assert_eq!(settings.quic.idle_timeout, Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS));
        assert_eq!(settings.quic.session_store, DEFAULT_SESSION_STORE);
        assert_eq!(settings.fanout.max_bytes, 256 * 1024);
        assert_eq!(settings.notify.recipient, Rate { rate: 1, burst: 10 });
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let layer = SettingsLayer {
            drain_secs: Some(0),
            max_sessions: Some(0),
            log: Some("=[".into()),
            notify_user_burst: Some(0),
            handshake_rate: Some(0),
            https_reserved_connections: Some(4_096),
            webhook_allow: Some(vec!["10.0.0.0/33".into()]),
            quic_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9000))),
            https_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9000))),
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
            "log filter",
            "notify_user_burst",
            "handshake_rate",
            "https_reserved_connections must be less",
            "webhook_allow \"10.0.0.0/33\"",
            "quic_listen and https_listen",
        ] {
            assert!(all.contains(needle), "{needle} missing from {all}");
        }
    }

    #[test]
    fn flags_win_over_file_and_unknown_keys_are_rejected() {
        let file: SettingsLayer =
            toml::from_str("dev = true\nmax_sessions = 5\ndrain_secs = 3\nlog_format = \"json\"")
                .expect("toml");
        let flags = SettingsLayer { max_sessions: Some(7), ..Default::default() };
        let settings = flags.over(file).resolve().expect("valid");
        assert_eq!(settings.quic.max_sessions, 7);
        assert_eq!(settings.quic.drain, Duration::from_secs(3));
        assert_eq!(settings.log.format, LogFormat::Json);
        assert!(toml::from_str::<SettingsLayer>("dve = true").is_err());
        assert!(toml::from_str::<SettingsLayer>("log_format = \"xml\"").is_err());
    }

    /// The declarations follow one naming rule, so an operator can guess every name from one:
    /// flag `--a-b`, variable `PRESENCED_A_B`, TOML key `a_b`; and clap builds the same flags.
    #[test]
    fn every_setting_has_a_flag_an_env_and_a_documented_default() {
        let command = SettingsLayer::augment_args(clap::Command::new("serve"));
        command.clone().debug_assert();
        let reference = reference();
        assert_eq!(reference.len(), command.get_arguments().count());
        for setting in &reference {
            assert_eq!(setting.env, format!("PRESENCED_{}", setting.name.to_uppercase()));
            let arg = command
                .get_arguments()
                .find(|a| a.get_id() == setting.name)
                .unwrap_or_else(|| panic!("{} is a flag", setting.name));
            assert_eq!(format!("--{}", arg.get_long().expect("long")), setting.flag());
            assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(setting.env));
            let help = arg.get_help().expect("help").to_string();
            assert!(!setting.doc.is_empty(), "{} is documented", setting.name);
            match &setting.default {
                Some(default) => assert!(help.ends_with(&format!("[default: {default}]")), "{help}"),
                None => assert!(help.contains("required without --dev"), "{help}"),
            }
        }
        let defaults: Vec<_> = reference.iter().filter_map(|s| Some((s.name, s.default.clone()?))).collect();
        assert!(defaults.contains(&("quic_listen", "0.0.0.0:4433".into())));
        assert!(defaults.contains(&("webhook_max_bytes", "262144".into())));
        assert!(defaults.contains(&("log_format", "text".into())));
        assert!(defaults.contains(&("webhook_allow", "none".into())));
    }

    /// The fuzz corpus's "full" configuration sets every key, so the settings fuzzer starts
    /// from a file that reaches every field.
    #[test]
    fn the_full_fuzz_seed_sets_every_setting() {
        let seed = include_str!("../../fuzz/corpus/settings_toml/full");
        toml::from_str::<SettingsLayer>(seed).expect("the seed parses");
        let keys: toml::Table = toml::from_str(seed).expect("toml");
        for setting in reference() {
            assert!(keys.contains_key(setting.name), "the full seed lacks {}", setting.name);
        }
    }

    /// The README points to `--help` for the list; every flag it names in its
    /// Configuration section is a real setting (or another `serve` flag).
    #[test]
    fn the_readme_names_only_real_settings() {
        let readme = include_str!("../../README.md");
        let section = readme.split("\n## Configuration").nth(1).expect("a Configuration section");
        let section = section.split("\n## ").next().unwrap_or(section);
        let flags: Vec<String> = reference().iter().map(SettingDoc::flag).collect();
        let mut named = 0;
        for word in section.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')) {
            let Some(flag) = word.strip_prefix("--") else { continue };
            // Dashes alone are a Markdown table's rule, not a flag.
            let rule = flag.chars().all(|c| c == '-');
            if rule || ["config", "help", "api", "ca", "admin-token"].contains(&flag) {
                continue;
            }
            let flag = format!("--{flag}");
            assert!(flags.contains(&flag), "README names {flag}, which is no setting");
            named += 1;
        }
        assert!(named >= 10, "the README's Configuration section names the settings it explains");
        assert!(section.contains("presenced serve --help"));
    }
}
