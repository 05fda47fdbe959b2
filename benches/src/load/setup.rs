//! What a run needs before the first device connects: the dev daemon's credentials, the TLS
//! and QUIC client configurations, the client endpoints, and the tool's own app.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use presence_protocol::ALPN;
use presenced::credentials::{self, DevInfo};
use presenced::testing::auth::TokenSigner;
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Resumption};
use rustls::client::{Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::{CertificateDer, ServerName};

use super::LoadError;

/// The name the dev certificate is issued for (it also covers 127.0.0.1 and ::1).
pub const SERVER_NAME: &str = "localhost";
/// Bound on every admin and AppService API request the tool makes.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Server names the resumption cache remembers; the tool talks to one.
const RESUMPTION_NAMES: usize = 4;

/// The dev daemon's credentials, read through `--data-dir`.
#[derive(Debug)]
pub struct DevSetup {
    /// `dev.json`: HTTPS URL, CA path, admin token.
    pub info: DevInfo,
    /// Mints device tokens with the dev key (`token-signing.pk8`).
    pub signer: Arc<TokenSigner>,
    /// Certificates the devices trust for QUIC (`--ca`).
    pub roots: Vec<CertificateDer<'static>>,
    /// An HTTPS client trusting the dev CA.
    pub http: reqwest::Client,
    /// The directory holding `tls/cert.pem` and `tls/key.pem` (the sink serves with them).
    pub tls_dir: PathBuf,
}

impl DevSetup {
    /// Reads `dev.json`, the token key and the CA. Never creates anything: a missing key
    /// means `--data-dir` is not a dev daemon's directory, and minting with a fresh key
    /// would only produce refused tokens.
    pub fn load(data_dir: &Path, ca: &Path) -> Result<DevSetup, LoadError> {
        let fail = |detail: String| LoadError::Credentials { dir: data_dir.to_path_buf(), detail };
        let info = DevInfo::load(data_dir).map_err(|e| fail(format!("{e:#}")))?;
        let key = data_dir.join("token-signing.pk8");
        if !key.is_file() {
            return Err(fail(format!(
                "{} does not exist (is this a `serve --dev` data dir?)",
                key.display()
            )));
        }
        let signer = credentials::dev_signer(data_dir).map_err(|e| fail(format!("{e:#}")))?;
        let roots = credentials::read_certs(ca).map_err(|e| fail(format!("{e:#}")))?;
        let api_roots = credentials::read_certs(&info.ca_cert).map_err(|e| fail(format!("{e:#}")))?;
        let http = https_client(&api_roots)?;
        Ok(DevSetup { info, signer: Arc::new(signer), roots, http, tls_dir: data_dir.join("tls") })
    }

    /// `dev.json`'s HTTPS URL followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.info.https.trim_end_matches('/'))
    }
}

/// An HTTPS client trusting `roots` (rustls with ring, as the daemon's tests build it).
pub fn https_client(roots: &[CertificateDer<'static>]) -> Result<reqwest::Client, LoadError> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).map_err(|e| LoadError::Tls(format!("unusable CA certificate: {e}")))?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| LoadError::Tls(e.to_string()))?
        .with_root_certificates(store)
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(HTTP_TIMEOUT)
        .build()
        .map_err(|e| LoadError::Tls(format!("HTTPS client: {e}")))
}

/// Whether a URL's host is a loopback address (or `localhost`).
pub fn url_is_loopback(url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else { return false };
    let Some(host) = url.host_str() else { return false };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The two client TLS configurations devices connect with.
///
/// - `full` never offers a ticket, so every first connection of a simulated device is a
///   full handshake, as a newly installed device's would be. It still *deposits* the
///   ticket the server sends into the shared pool.
/// - `resume` takes a ticket from that pool and offers 0-RTT: what a device that
///   reconnects does. The server does not bind tickets to users, so a ticket from any
///   device resumes as well as the device's own would.
#[derive(Debug, Clone)]
pub struct ClientConfigs {
    /// First connections: full handshakes.
    pub full: quinn::ClientConfig,
    /// Reconnections: resumed, with the `Hello` in 0-RTT.
    pub resume: quinn::ClientConfig,
    /// No resumption at all (the baseline's connections).
    pub plain: quinn::ClientConfig,
}

impl ClientConfigs {
    /// Configurations trusting `roots`, with the client library's transport settings.
    pub fn new(roots: &[CertificateDer<'static>]) -> Result<ClientConfigs, LoadError> {
        let base = tls_base(roots)?;
        let pool = Arc::new(ClientSessionMemoryCache::new(RESUMPTION_NAMES));
        let deposit: Arc<dyn ClientSessionStore> = Arc::new(DepositOnly(pool.clone()));
        Ok(ClientConfigs {
            full: quic_client(&base, Resumption::store(deposit))?,
            resume: quic_client(&base, Resumption::store(pool))?,
            plain: quic_client(&base, Resumption::disabled())?,
        })
    }
}

/// The TLS settings every variant shares. The variants must be clones of one config:
/// rustls resumes a ticket only under the very verifier (and client-certificate resolver)
/// instance that obtained it, compared by pointer, so separately built configs could never
/// resume each other's tickets.
fn tls_base(roots: &[CertificateDer<'static>]) -> Result<rustls::ClientConfig, LoadError> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).map_err(|e| LoadError::Tls(format!("unusable CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| LoadError::Tls(e.to_string()))?
        .with_root_certificates(store)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.enable_early_data = true;
    Ok(tls)
}

fn quic_client(
    base: &rustls::ClientConfig,
    resumption: Resumption,
) -> Result<quinn::ClientConfig, LoadError> {
    let mut tls = base.clone();
    tls.resumption = resumption;
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| LoadError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(presence_client::transport::transport_config()));
    Ok(config)
}

/// A session store that keeps what it is given in a shared pool but never hands a ticket
/// out: connections made with it are full handshakes that feed the pool for resumptions.
#[derive(Debug)]
struct DepositOnly(Arc<ClientSessionMemoryCache>);

impl ClientSessionStore for DepositOnly {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: rustls::NamedGroup) {
        self.0.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        // A key-exchange hint only spares a HelloRetryRequest; it resumes nothing.
        self.0.kx_hint(server_name)
    }

    fn set_tls12_session(&self, _: ServerName<'static>, _: Tls12ClientSessionValue) {}

    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        None
    }

    fn remove_tls12_session(&self, _: &ServerName<'static>) {}

    fn insert_tls13_ticket(&self, server_name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.0.insert_tls13_ticket(server_name, value);
    }

    fn take_tls13_ticket(&self, _: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        None
    }
}

/// Receive and send buffer asked for on each client socket. The kernel default (about
/// 208 KiB on Linux) holds only some 90 loopback packets, and one client socket carries a
/// quarter of all sessions; the kernel caps the request at `net.core.rmem_max` /
/// `wmem_max`. The generator must not be where packets are lost.
pub const CLIENT_SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// `count` client endpoints, each on its own UDP socket (with [`CLIENT_SOCKET_BUFFER`]),
/// bound to the loopback (or wildcard) address of the server's family.
pub fn endpoints(count: usize, server: SocketAddr) -> Result<Vec<quinn::Endpoint>, LoadError> {
    let ip: IpAddr = match (server.ip().is_loopback(), server) {
        (true, SocketAddr::V4(_)) => [127, 0, 0, 1].into(),
        (true, SocketAddr::V6(_)) => std::net::Ipv6Addr::LOCALHOST.into(),
        (false, SocketAddr::V4(_)) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        (false, SocketAddr::V6(_)) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    let bind = |source| LoadError::Bind { what: "client endpoint", source };
    (0..count)
        .map(|_| {
            let socket = std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).map_err(bind)?;
            let state = quinn::udp::UdpSocketState::new((&socket).into()).map_err(bind)?;
            // Best effort: a smaller buffer than asked for is still a working socket.
            let _ = state.set_recv_buffer_size((&socket).into(), CLIENT_SOCKET_BUFFER);
            let _ = state.set_send_buffer_size((&socket).into(), CLIENT_SOCKET_BUFFER);
            let runtime = Arc::new(quinn::TokioRuntime);
            quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime).map_err(bind)
        })
        .collect()
}

/// The app the tool registers for itself.
#[derive(Debug, Clone)]
pub struct App {
    /// Its id.
    pub id: String,
    /// Its API key (AppService API).
    pub api_key: String,
    /// Its webhook secret (`whsec_...`).
    pub secret: String,
}

/// Registers an app whose webhooks go to `webhook_url` (`POST /v1/admin/apps`).
pub async fn register_app(dev: &DevSetup, name: &str, webhook_url: &str) -> Result<App, LoadError> {
    let response = dev
        .http
        .post(dev.url("/v1/admin/apps"))
        .bearer_auth(&dev.info.admin_token)
        .json(&serde_json::json!({"name": name, "webhook_url": webhook_url}))
        .send()
        .await
        .map_err(|e| LoadError::Admin(format!("POST /v1/admin/apps: {e}")))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if status != reqwest::StatusCode::CREATED {
        return Err(LoadError::Admin(format!("POST /v1/admin/apps answered {status}: {body}")));
    }
    let field = |name: &str| {
        body[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| LoadError::Admin(format!("answer without {name}")))
    };
    Ok(App { id: field("app_id")?, api_key: field("api_key")?, secret: field("webhook_secret")? })
}

/// Removes the tool's app (`DELETE /v1/admin/apps/{id}`); the daemon drops its outbox.
pub async fn remove_app(dev: &DevSetup, app_id: &str) -> Result<(), LoadError> {
    let response = dev
        .http
        .delete(dev.url(&format!("/v1/admin/apps/{app_id}")))
        .bearer_auth(&dev.info.admin_token)
        .send()
        .await
        .map_err(|e| LoadError::Admin(format!("DELETE app: {e}")))?;
    match response.status() {
        status if status.is_success() => Ok(()),
        status => Err(LoadError::Admin(format!("DELETE app answered {status}"))),
    }
}
