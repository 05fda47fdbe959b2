//! What the QUIC server is configured with, each part named: [`QuicConfig`] (built from
//! the settings), the [`TlsIdentity`] it presents and the [`Durable`] state that outlives a
//! process. Read only by [`super::QuicServer::bind`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::settings::Rate;
use crate::store::TicketStore;

/// The certificate the server presents to devices.
#[derive(Debug)]
pub(crate) struct TlsIdentity {
    /// Certificate chain, leaf first.
    pub(crate) cert_chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub(crate) key: PrivateKeyDer<'static>,
}

/// What lets devices of a previous process come back cheaply.
#[derive(Debug)]
pub(crate) struct Durable {
    /// Keeps the TLS sessions that make 0-RTT possible across restarts
    /// ([`super::sessions`]).
    pub(crate) store: Arc<dyn TicketStore>,
    /// Makes stateless resets reach the devices of a previous process
    /// ([`super::restart`]).
    pub(crate) endpoint_secret: [u8; 32],
}

/// The device-facing QUIC server's settings; every field comes from one setting (or a
/// rate/burst pair) with a documented default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QuicConfig {
    /// Where the UDP socket binds.
    pub(crate) listen: SocketAddr,
    /// Most concurrent sessions; over it a connection attempt is refused.
    pub(crate) max_sessions: u32,
    /// Handshakes in flight above which unvalidated addresses get a QUIC Retry.
    pub(crate) retry_threshold: u32,
    /// TLS resumption tickets held (in memory and in the store) for 0-RTT.
    pub(crate) session_store: usize,
    /// Silence past the heartbeat interval before a device counts as offline.
    pub(crate) heartbeat_grace: Duration,
    /// Time for a device to send an acceptable `Hello`.
    pub(crate) handshake_timeout: Duration,
    /// QUIC idle timeout: the connection dies after this much silence.
    pub(crate) idle_timeout: Duration,
    /// Receive and send buffer of the UDP socket, bytes (the kernel caps it).
    pub(crate) udp_buffer: usize,
    /// Handshakes per source address.
    pub(crate) handshake_limit: Rate,
    /// Control frames per session.
    pub(crate) session_frames: Rate,
    /// Heartbeat pings per session.
    pub(crate) session_pings: Rate,
    /// How long a write may wait on a device that does not read its control stream.
    pub(crate) slow_reader: Duration,
    /// Clock skew tolerated on device tokens' `exp` and `nbf`.
    pub(crate) token_leeway: Duration,
    /// The drain bound after SIGTERM; a draining device is told to wait this long before
    /// reconnecting.
    pub(crate) drain: Duration,
}

impl QuicConfig {
    /// The per-session protocol settings every session of this server runs under.
    pub(crate) fn protocol(&self) -> presence_protocol::ServerConfig {
        presence_protocol::ServerConfig {
            handshake_timeout: self.handshake_timeout,
            heartbeat_grace: self.heartbeat_grace,
            frame_rate: self.session_frames.rate,
            frame_burst: self.session_frames.burst,
            ping_rate: self.session_pings.rate,
            ping_burst: self.session_pings.burst,
            ..presence_protocol::ServerConfig::default()
        }
    }
}
