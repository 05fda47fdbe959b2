//! The QUIC driver: everything that touches quinn lives below this module.
//!
//! Density is the product's headline, and quinn's per-connection channel and task cost about
//! as much as its protocol state (BENCHMARKS.md, heap profile). This boundary is where a direct quinn-proto
//! driver with sharded event loops can replace the quinn `Endpoint`: the rest of the daemon
//! sees only [`QuicServer`] (bind, serve, close); what a session means lives in the
//! driver-agnostic [`DeviceSession`](crate::session::DeviceSession), which this driver only
//! feeds with bytes, datagrams, timers and the handshake's completion.

mod config;
mod connection;
pub(crate) mod restart;
pub(crate) mod sessions;
mod socket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use presence_protocol::ALPN;
use presence_protocol::limits::MAX_PING_LEN;
use quinn::{IdleTimeout, Runtime, TransportConfig, VarInt};
use tokio::sync::watch;

use crate::credentials::crypto_provider;
use crate::limit::HashedLimiter;
use crate::metrics::{Metrics, ReasonLabel, Refusal};
use crate::session::SessionServices;
use sessions::DurableSessions;

pub(crate) use config::{Durable, QuicConfig, TlsIdentity};

/// What quinn charges one buffered DATAGRAM of the largest ping against a datagram buffer:
/// the payload plus the `Bytes` handle that holds it (quinn-proto `DatagramState::received`
/// counts `data.len() + size_of::<Datagram>()`, and `Datagram` is one `Bytes`). 36 bytes on
/// 64-bit targets.
const DATAGRAM_COST: usize = MAX_PING_LEN + std::mem::size_of::<bytes::Bytes>();
/// Smallest datagram buffer: it also caps the `max_datagram_frame_size` quinn advertises, and
/// quinn closes the connection on a datagram larger than the buffer, so the buffer holds any
/// datagram that fits a 1200-byte packet (the MTU, since path MTU discovery is off). A
/// datagram that large is undecodable and is dropped and counted like any other.
const MIN_DATAGRAM_BUFFER: usize = 1_280;

/// The datagram receive (and send) buffer of a session, sized so that quinn never drops a
/// ping the session's rate limit would accept: quinn drops the *oldest* buffered datagram,
/// silently, once the buffered bytes exceed the buffer (issue 11: with 256 bytes only the
/// newest 7 pings of a burst were read). Twice the ping burst of the largest pings leaves
/// room for a second burst arriving while the first is read; every ping past that is over
/// the burst anyway, and the session refuses and counts it (`ping_rate`). Whatever quinn
/// still drops is counted too (`datagram_buffer`, see `connection`).
pub fn datagram_buffer(ping_burst: u32) -> usize {
    (ping_burst as usize).saturating_mul(2 * DATAGRAM_COST).max(MIN_DATAGRAM_BUFFER)
}
/// Buckets in each per-source-address handshake table: fixed memory (about 200 KiB
/// each) however many addresses, spoofed or not, send Initials.
const SOURCE_SLOTS: usize = 8_192;

/// The transport settings for idle mobile sessions: one bidirectional stream, small windows,
/// datagram buffers sized from the ping burst ([`datagram_buffer`]; a buffer is a cap, not
/// an allocation), no MTU discovery and no server keep-alives (the device's heartbeat keeps
/// the path alive; the server never wakes a radio for nothing).
pub fn transport_config(idle_timeout: Duration, ping_burst: u32) -> Result<TransportConfig> {
    let datagrams = datagram_buffer(ping_burst);
    let mut transport = TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(32 * 1024))
        .receive_window(VarInt::from_u32(64 * 1024))
        .send_window(64 * 1024)
        .datagram_receive_buffer_size(Some(datagrams))
        // One Ack per accepted ping of a burst, queued at once: quinn drops the oldest
        // queued datagram when the send buffer is full, too.
        .datagram_send_buffer_size(datagrams)
        .mtu_discovery_config(None)
        .keep_alive_interval(None)
        .max_idle_timeout(Some(IdleTimeout::try_from(idle_timeout).context("idle timeout too long")?));
    Ok(transport)
}

/// What every connection task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) services: Arc<SessionServices>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) next_session: AtomicU64,
    pub(crate) handshaking: AtomicU32,
    /// Session tasks still running (they end after their close has lingered).
    pub(crate) sessions: AtomicU32,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Set when the drain is over: every session still open closes itself.
    pub(crate) close_sessions: watch::Receiver<bool>,
    /// How long a write may wait on a device that does not read its control stream.
    pub(crate) slow_reader: Duration,
}

/// The device-facing QUIC server.
#[derive(Debug)]
pub(crate) struct QuicServer {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    max_sessions: usize,
    retry_threshold: u32,
    tls_sessions: Arc<DurableSessions>,
    /// Tells the sessions left after the drain to close themselves.
    close_sessions: watch::Sender<bool>,
    /// Handshakes per source address not yet validated; over it, a Retry.
    sources: HashedLimiter,
    /// Handshakes per validated source address; over it, ignored.
    validated_sources: HashedLimiter,
}

impl QuicServer {
    /// Binds the QUIC endpoint with its own settings, identity and durable state.
    pub(crate) fn bind(
        config: &QuicConfig,
        TlsIdentity { cert_chain, key }: TlsIdentity,
        services: Arc<SessionServices>,
        Durable { store, endpoint_secret }: Durable,
        shutdown: watch::Receiver<bool>,
    ) -> Result<QuicServer> {
        let mut tls = rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(cert_chain, key)
            .context("TLS certificate and key do not match")?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        // 0-RTT needs stateful resumption: a ticket store sized for the devices, durable so
        // that a restarted daemon still resumes them.
        tls.max_early_data_size = u32::MAX;
        let tls_sessions = DurableSessions::start(
            store,
            config.session_store,
            services.clock,
            services.metrics.tls_resumptions.clone(),
        )
        .context("cannot load TLS sessions")?;
        tls.session_storage = tls_sessions.clone();
        tls.send_tls13_tickets = 1;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server_config
            .transport_config(Arc::new(transport_config(config.idle_timeout, config.session_pings.burst)?));
        server_config.migration(true);
        let socket = udp_socket(config.listen, config.udp_buffer)
            .with_context(|| format!("cannot bind QUIC on {}", config.listen))?;
        let runtime = Arc::new(quinn::TokioRuntime);
        let socket = runtime.wrap_udp_socket(socket)?;
        let socket = Arc::new(socket::CountingSocket::new(
            socket,
            services.metrics.clone(),
            config.handshake_limit,
            services.clock,
        ));
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            restart::endpoint_config(&endpoint_secret),
            Some(server_config),
            socket,
            runtime,
        )
        .with_context(|| format!("cannot start QUIC on {}", config.listen))?;
        let (close_sessions, close_sessions_rx) = watch::channel(false);
        let clock = services.clock;
        let shared = Arc::new(Shared {
            metrics: services.metrics.clone(),
            services,
            next_session: AtomicU64::new(1),
            handshaking: AtomicU32::new(0),
            sessions: AtomicU32::new(0),
            shutdown,
            close_sessions: close_sessions_rx,
            slow_reader: config.slow_reader,
        });
        Ok(QuicServer {
            endpoint,
            shared,
            max_sessions: config.max_sessions as usize,
            retry_threshold: config.retry_threshold,
            tls_sessions,
            close_sessions,
            sources: HashedLimiter::new(config.handshake_limit, SOURCE_SLOTS, clock.now()),
            validated_sources: HashedLimiter::new(config.handshake_limit, SOURCE_SLOTS, clock.now()),
        })
    }

    /// The address actually bound.
    pub(crate) fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.endpoint.local_addr()?)
    }

    /// Accepts connections until shutdown, each in its own task.
    pub(crate) async fn serve(&self) {
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            let incoming = tokio::select! {
                incoming = self.endpoint.accept() => incoming,
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
            let Some(incoming) = incoming else { return };
            let metrics = &self.shared.metrics;
            if let Some(refusal) = self.over_source_limit(&incoming) {
                metrics.refuse(refusal);
                match refusal {
                    // Retry cannot fail after may_retry; a failure just drops the attempt.
                    Refusal::HandshakeRetry => drop(incoming.retry()),
                    _ => incoming.ignore(),
                }
                continue;
            }
            if self.endpoint.open_connections() >= self.max_sessions {
                metrics.sessions_refused.inc();
                incoming.refuse();
                continue;
            }
            let busy = self.shared.handshaking.load(Ordering::Relaxed) >= self.retry_threshold;
            if busy && !incoming.remote_address_validated() && incoming.may_retry() {
                metrics.retries.inc();
                // Retry cannot fail after may_retry; a failure just drops the attempt.
                let _ = incoming.retry();
                continue;
            }
            // Accepting decrypts the Initial here, in the accept loop: junk that looks like
            // an Initial but does not decrypt costs no task and never counts as in flight
            // (which would push honest devices into Retry).
            match incoming.accept() {
                Ok(connecting) => {
                    metrics.handshakes.inc();
                    connection::start(connecting, self.shared.clone());
                }
                Err(error) => {
                    tracing::debug!(%error, "connection attempt refused at accept");
                    metrics.handshakes_failed.get_or_create(&reason("initial")).inc();
                }
            }
        }
    }

    /// Whether a connection attempt is over its source address's handshake rate, and what
    /// to do then. An address that has not proved itself gets a QUIC Retry: a spoofer
    /// cannot answer it, so spoofed floods cannot spend a real device's budget, which is
    /// kept apart for validated attempts. A validated address over its own rate is ignored
    /// (no packet goes back).
    fn over_source_limit(&self, incoming: &quinn::Incoming) -> Option<Refusal> {
        let ip = incoming.remote_address().ip().to_canonical();
        let now = self.shared.services.clock.now();
        if incoming.remote_address_validated() {
            return self.validated_sources.check(&ip, now).is_err().then_some(Refusal::HandshakeIgnored);
        }
        if self.sources.check(&ip, now).is_ok() {
            return None;
        }
        Some(if incoming.may_retry() { Refusal::HandshakeRetry } else { Refusal::HandshakeIgnored })
    }

    /// Ends every session the drain left, within `bound`, then writes the TLS sessions
    /// still queued. Each session closes itself through its sans-IO session, so the device
    /// gets the `Error` frame (`SHUTTING_DOWN`) every close carries, lingers for it and
    /// takes itself off the table (its `offline` events are published before this
    /// returns). The endpoint's own close then reaches only connections that never became
    /// a session, or sessions that outlived the bound.
    pub(crate) async fn close(&self, bound: Duration) {
        let clock = self.shared.services.clock;
        let deadline = clock.tokio_now() + bound;
        let _ = self.close_sessions.send(true);
        while self.shared.sessions.load(Ordering::Relaxed) > 0 && clock.tokio_now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.endpoint
            .close(VarInt::from_u32(u32::from(presence_protocol::ErrorCode::SHUTTING_DOWN.0)), b"shutdown");
        let _ = tokio::time::timeout_at(deadline, self.endpoint.wait_idle()).await;
        self.tls_sessions.close(bound).await;
    }

    /// Sessions currently open.
    pub(crate) fn open_connections(&self) -> usize {
        self.endpoint.open_connections()
    }
}

/// The endpoint's UDP socket with large buffers: one socket carries every device's packets,
/// and a burst of handshakes overflows the kernel's default receive buffer (packets then
/// wait for QUIC's resend timers, seconds each). The kernel caps the sizes at
/// `net.core.rmem_max` / `wmem_max`; what it granted is logged.
fn udp_socket(addr: SocketAddr, buffer: usize) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // `[::]` serves IPv4 devices too, as the std socket quinn would bind does.
        let _ = socket.set_only_v6(false);
    }
    // A refused size is not fatal: the kernel default still works, only worse under bursts.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&addr.into())?;
    tracing::info!(
        recv_buffer = socket.recv_buffer_size().unwrap_or(0),
        send_buffer = socket.send_buffer_size().unwrap_or(0),
        "QUIC socket bound"
    );
    Ok(socket.into())
}

fn reason(reason: &'static str) -> ReasonLabel {
    ReasonLabel { reason }
}

#[cfg(test)]
mod tests {
    use presence_protocol::limits::MAX_HEARTBEAT;

    use super::*;

    /// The QUIC part of the default settings.
    fn defaults() -> QuicConfig {
        let layer = crate::settings::SettingsLayer { dev: Some(true), ..Default::default() };
        layer.resolve().expect("the defaults are valid").quic
    }

    #[test]
    fn the_default_idle_timeout_outlasts_the_longest_heartbeat_plus_grace() {
        // PROTOCOL.md §2: liveness, not QUIC, decides that a quiet device is gone.
        let config = defaults();
        assert!(config.idle_timeout > MAX_HEARTBEAT + config.heartbeat_grace);
        assert!(transport_config(config.idle_timeout, config.session_pings.burst).is_ok());
    }

    #[test]
    fn datagram_buffers_hold_twice_the_burst_and_any_datagram_of_a_packet() {
        assert_eq!(datagram_buffer(defaults().session_pings.burst), 2 * 20 * DATAGRAM_COST);
        assert_eq!(datagram_buffer(1), MIN_DATAGRAM_BUFFER);
    }
}
