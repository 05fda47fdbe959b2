//! The quinn side of the client: endpoint, TLS and transport settings.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use presence_protocol::ALPN;
use quinn::{AckFrequencyConfig, IdleTimeout, TransportConfig, VarInt};
use rustls::pki_types::CertificateDer;

use crate::ClientError;

/// QUIC idle timeout of the client: past the longest heartbeat interval plus grace.
const IDLE_TIMEOUT: Duration = Duration::from_secs(31 * 60);

/// Reads the certificates of a PEM file to trust as roots.
pub fn read_roots(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let file = std::fs::File::open(path)
        .map_err(|e| ClientError::Options(format!("cannot open {}: {e}", path.display())))?;
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::Options(format!("invalid PEM {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ClientError::Options(format!("no certificate in {}", path.display())));
    }
    Ok(certs)
}

/// A client endpoint whose TLS config resumes sessions and offers 0-RTT.
pub fn endpoint(bind: SocketAddr, roots: &[CertificateDer<'static>]) -> Result<quinn::Endpoint, ClientError> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).map_err(|e| ClientError::Options(format!("unusable CA certificate: {e}")))?;
    }
    if store.is_empty() {
        return Err(ClientError::Options("no CA certificate to trust".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Options(e.to_string()))?
        .with_root_certificates(store)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.enable_early_data = true;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ClientError::Options(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config()));
    let mut endpoint = quinn::Endpoint::client(bind)?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// The device's transport settings, trimmed like the server's: the device opens one stream
/// and accepts none, small windows and datagram buffers, no MTU discovery and no QUIC
/// keep-alives (the heartbeat is the only periodic traffic). Public so that load tools
/// simulate devices with exactly these settings.
///
/// The device also asks the daemon (ACK frequency extension, one `ACK_FREQUENCY` frame when
/// the session opens) to acknowledge every ack-eliciting packet at once instead of after its
/// 25 ms `max_ack_delay`. A heartbeat is alone on the path for its whole interval, so a
/// delayed ACK never saves a packet; it only races the device's probe timeout, which on a
/// short path is about the same 25 ms: when the ACK loses, the device sends two probe
/// packets per heartbeat (measured on loopback, BENCHMARKS.md "Heartbeat on the wire"), and
/// its radio stays up that much longer waiting.
pub fn transport_config() -> TransportConfig {
    let mut ack_frequency = AckFrequencyConfig::default();
    ack_frequency.ack_eliciting_threshold(VarInt::from_u32(0));
    let mut transport = TransportConfig::default();
    transport.ack_frequency_config(Some(ack_frequency));
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(64 * 1024))
        .receive_window(VarInt::from_u32(128 * 1024))
        .datagram_receive_buffer_size(Some(256))
        .datagram_send_buffer_size(256)
        .mtu_discovery_config(None)
        .keep_alive_interval(None);
    if let Ok(timeout) = IdleTimeout::try_from(IDLE_TIMEOUT) {
        transport.max_idle_timeout(Some(timeout));
    }
    transport
}
