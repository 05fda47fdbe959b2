//! The HTTPS listener: TLS (HTTP/1.1 and HTTP/2 by ALPN) in front of [`crate::api`].
//!
//! Configured by `HttpConfig` alone. Bounded against slow and many clients: at most
//! `max_connections` at once (one more is
//! closed as soon as it is accepted), `header_timeout` for the TLS handshake and again for
//! each HTTP/1.1 request's headers (slowloris), and hyper's own limits on header size and
//! HTTP/2 streams. Request bodies are bounded by the API's body limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::debug;

use crate::api::Peer;
use crate::metrics::{Metrics, Refusal};

/// Most concurrent HTTP/2 streams per connection.
const H2_MAX_STREAMS: u32 = 100;

/// Where the listener binds and how it bounds its clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpConfig {
    /// The TCP address the daemon binds before calling [`serve`].
    pub(crate) listen: SocketAddr,
    /// Most connections at once.
    pub(crate) max_connections: u32,
    /// Time for the TLS handshake, and for each request's headers.
    pub(crate) header_timeout: Duration,
}

/// Serves `router` over TLS on `listener` (bound at `config.listen`) until shutdown; every
/// request carries its client's [`Peer`]; refusals are counted in `metrics`.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    config: HttpConfig,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(config.max_connections as usize));
    let header_timeout = config.header_timeout;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    debug!(%error, "accept failed");
                    continue;
                }
            },
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.refuse(Refusal::HttpsConnections);
            debug!(%peer, "HTTPS connection cap reached; closing");
            drop(stream);
            continue;
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone().layer(axum::Extension(Peer(peer))));
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(_)) => return debug!(%peer, "TLS handshake failed"),
                Err(_) => {
                    metrics.refuse(Refusal::HttpsHandshakeTimeout);
                    return debug!(%peer, "TLS handshake timed out");
                }
            };
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
            builder.http2().timer(TokioTimer::new()).max_concurrent_streams(H2_MAX_STREAMS);
            if let Err(error) = builder.serve_connection(TokioIo::new(tls), service).await {
                debug!(%peer, %error, "HTTP connection ended with an error");
            }
        });
    }
}
