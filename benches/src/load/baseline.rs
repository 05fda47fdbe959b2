//! The bare-quinn baseline: the same connections against a server that does nothing else.
//!
//! Density figures mean little on their own: a number of bytes per session depends on the
//! allocator, the kernel and quinn's version as much as on the daemon. So the tool measures,
//! in the same run and on the same machine, what a quinn server with the daemon's exact
//! transport and TLS settings (`presenced::testing::quic::transport_config`, TLS 1.3 only, the
//! presence ALPN, a stateful ticket store of the daemon's default size, one ticket per
//! handshake) costs per connection when it only accepts connections and reads datagrams.
//! The daemon's bytes per session divided by that is the ratio to bare quinn.
//!
//! The server runs in a child process (the tool re-executes itself with a hidden flag), so
//! its resident set is its own and not mixed with the load generator's.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use presence_protocol::{ALPN, Ping, Status};
use presenced::settings::{DEFAULT_IDLE_TIMEOUT_SECS, DEFAULT_SESSION_STORE};
use serde::Serialize;
use tokio::io::AsyncBufReadExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::LoadError;
use super::procfs::read_proc;
use super::setup::{ClientConfigs, SERVER_NAME, endpoints};

/// The hidden flag that makes the binary the baseline server.
pub const SERVER_FLAG: &str = "--baseline-server";
/// The line prefix the child announces its address with on stdout.
pub const LISTENING: &str = "listening ";
/// Longest wait for the child to announce its address.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after the last connection before the resident set is read, so lazily grown
/// buffers (the first datagram, the ticket) are in it.
const SETTLE: Duration = Duration::from_secs(1);
/// The child serves at most this long, even if the parent never closes its stdin.
pub const MAX_LIFETIME: Duration = Duration::from_secs(6 * 3_600);

/// The baseline's part of the report.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineReport {
    /// Connections asked for (the run's session count).
    pub connections: u64,
    /// Connections established.
    pub established: u64,
    /// Connections that failed.
    pub failed: u64,
    /// The bare server's resident set before the first connection, bytes.
    pub rss_start_bytes: u64,
    /// Its resident set with every connection open, bytes.
    pub rss_end_bytes: u64,
    /// `(end - start) / established`.
    pub rss_per_connection_bytes: Option<u64>,
}

/// The bare quinn server.
#[derive(Debug)]
pub struct BareServer {
    endpoint: quinn::Endpoint,
}

impl BareServer {
    /// Binds `listen` with the dev certificate in `data_dir/tls` and the daemon's settings.
    pub fn bind(data_dir: &Path, listen: SocketAddr) -> Result<BareServer, LoadError> {
        let tls_dir = data_dir.join("tls");
        let (certs, key) =
            presenced::credentials::read_tls(&tls_dir.join("cert.pem"), &tls_dir.join("key.pem"))
                .map_err(|e| LoadError::Baseline(format!("{e:#}")))?;
        let mut tls = rustls::ServerConfig::builder_with_provider(presenced::credentials::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| LoadError::Baseline(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| LoadError::Baseline(e.to_string()))?;
        // As QuicServer::bind sets them.
        tls.alpn_protocols = vec![ALPN.to_vec()];
        tls.max_early_data_size = u32::MAX;
        tls.session_storage = rustls::server::ServerSessionMemoryCache::new(DEFAULT_SESSION_STORE);
        tls.send_tls13_tickets = 1;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| LoadError::Baseline(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let transport = presenced::testing::quic::transport_config(
            Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS),
            presence_protocol::server::DEFAULT_PING_BURST,
        )
        .map_err(|e| LoadError::Baseline(format!("{e:#}")))?;
        config.transport_config(Arc::new(transport));
        config.migration(true);
        let endpoint = quinn::Endpoint::server(config, listen)
            .map_err(|source| LoadError::Bind { what: "baseline server", source })?;
        Ok(BareServer { endpoint })
    }

    /// The address bound.
    pub fn local_addr(&self) -> Result<SocketAddr, LoadError> {
        self.endpoint.local_addr().map_err(|source| LoadError::Bind { what: "baseline server", source })
    }

    /// Accepts connections until `until` resolves (or [`MAX_LIFETIME`] passes), one task
    /// per connection reading datagrams, as the daemon has one task per connection.
    pub async fn serve(self, until: impl Future<Output = ()>) {
        let accept = async {
            while let Some(incoming) = self.endpoint.accept().await {
                tokio::spawn(async move {
                    let Ok(connection) = incoming.await else { return };
                    while connection.read_datagram().await.is_ok() {}
                });
            }
        };
        tokio::select! {
            _ = accept => {}
            _ = until => {}
            _ = tokio::time::sleep(MAX_LIFETIME) => {}
        }
        self.endpoint.close(0u32.into(), b"baseline over");
    }
}

/// What [`measure`] needs from the run.
#[derive(Debug, Clone)]
pub struct BaselinePlan {
    /// This program, to start again as the server.
    pub exe: PathBuf,
    /// The dev data directory (its certificate).
    pub data_dir: PathBuf,
    /// Connections to open.
    pub connections: usize,
    /// New connections per second.
    pub ramp: f64,
    /// Handshakes in flight at most.
    pub inflight: usize,
    /// Client endpoints.
    pub endpoints: usize,
}

/// Starts the child server, opens the connections, and reads its resident set before and
/// after. Everything is bounded: the child is killed when this returns, however it returns.
pub async fn measure(plan: &BaselinePlan, tls: &ClientConfigs) -> Result<BaselineReport, LoadError> {
    let fail = |what: String| LoadError::Baseline(what);
    let mut child = tokio::process::Command::new(&plan.exe)
        .arg(SERVER_FLAG)
        .arg("--data-dir")
        .arg(&plan.data_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot start {}: {e}", plan.exe.display())))?;
    let pid = child.id().ok_or_else(|| fail("child exited at once".into()))?;
    let stdout = child.stdout.take().ok_or_else(|| fail("no stdout".into()))?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(START_TIMEOUT, lines.next_line())
        .await
        .map_err(|_| fail("no address announced in time".into()))?
        .map_err(|e| fail(e.to_string()))?
        .ok_or_else(|| fail("child closed stdout".into()))?;
    let addr: SocketAddr = line
        .strip_prefix(LISTENING)
        .and_then(|addr| addr.trim().parse().ok())
        .ok_or_else(|| fail(format!("unexpected announcement {line:?}")))?;
    let result = connect_and_read(plan, tls, pid, addr).await;
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    result
}

async fn connect_and_read(
    plan: &BaselinePlan,
    tls: &ClientConfigs,
    pid: u32,
    addr: SocketAddr,
) -> Result<BaselineReport, LoadError> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = read_proc(pid).map_err(|e| LoadError::Baseline(format!("/proc/{pid}: {e}")))?;
    let clients = endpoints(plan.endpoints, addr)?;
    let held = Arc::new(Mutex::new(Vec::with_capacity(plan.connections)));
    let inflight = Arc::new(Semaphore::new(plan.inflight));
    let mut tasks = JoinSet::new();
    let began = Instant::now();
    let ping = bytes::Bytes::copy_from_slice(&Ping::heartbeat(Status::Online, false, 0).encode());
    let mut failed = 0u64;
    for index in 0..plan.connections {
        let due = began + Duration::from_secs_f64(index as f64 / plan.ramp);
        tokio::time::sleep_until(due.into()).await;
        let Ok(permit) = inflight.clone().acquire_owned().await else { break };
        let endpoint = clients[index % clients.len()].clone();
        let (config, held, ping) = (tls.plain.clone(), held.clone(), ping.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let connecting = endpoint.connect_with(config, addr, SERVER_NAME).ok()?;
            let connection =
                tokio::time::timeout(super::device::HANDSHAKE_TIMEOUT, connecting).await.ok()?.ok()?;
            let _ = connection.send_datagram(ping);
            held.lock().ok()?.push(connection);
            Some(())
        });
        while let Some(done) = tasks.try_join_next() {
            failed += u64::from(!matches!(done, Ok(Some(()))));
        }
    }
    while let Some(done) = tasks.join_next().await {
        failed += u64::from(!matches!(done, Ok(Some(()))));
    }
    tokio::time::sleep(SETTLE).await;
    let end = read_proc(pid).map_err(|e| LoadError::Baseline(format!("/proc/{pid}: {e}")))?;
    let connections = std::mem::take(&mut *held.lock().map_err(|_| LoadError::Baseline("lock".into()))?);
    let established = connections.len() as u64;
    for connection in &connections {
        connection.close(0u32.into(), b"baseline over");
    }
    for endpoint in &clients {
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    }
    Ok(BaselineReport {
        connections: plan.connections as u64,
        established,
        failed,
        rss_start_bytes: start.rss_bytes,
        rss_end_bytes: end.rss_bytes,
        rss_per_connection_bytes: (established > 0)
            .then(|| end.rss_bytes.saturating_sub(start.rss_bytes) / established),
    })
}
