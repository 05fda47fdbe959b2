//! The HTTPS listener: TLS (HTTP/1.1 and HTTP/2 by ALPN) in front of [`crate::api`].
//!
//! Configured by `HttpConfig` alone. Bounded whatever clients do:
//!
//! - **Connection slots** ([`Slots`]): at most `max_connections` at once, of which
//!   `reserved` only loopback clients can take (so an operator on the host always reaches the
//!   admin API, `/metrics` and `/healthz`), and at most `max_per_source` from one IP address
//!   (every address counts apart, loopback ones too; 0 turns the limit off, for a load
//!   balancer that is the only source).
//! - **Idle connections are the first to go.** A connection is *idle* while it has no
//!   request in flight: during its TLS handshake, before its first request, between
//!   requests, and an HTTP/2 connection with no open stream. When the slots are full, a new
//!   client takes the slot of the oldest idle connection, which is closed at once; only when
//!   every connection has a request in flight is the newcomer refused. So connections that
//!   open and then say nothing (an HTTP/2 preface and SETTINGS, then silence) can never
//!   lock anybody out, however many there are. An idle connection is also closed after
//!   `idle_timeout` (longer than load balancers' usual 60 s, so the balancer, not the
//!   daemon, ends its pooled connections).
//! - **Time**: `header_timeout` for the TLS handshake and each HTTP/1.1 request's headers
//!   (slowloris); `body_timeout` from a request's dispatch to the last byte of its body, so a
//!   body trickling a byte every few seconds is cut off; `request_timeout` for the whole
//!   request, body and handler. Both answer 408 `request_timeout` (a JSON error like every
//!   other) and, on HTTP/1.1, the connection closes. HTTP/2 connections are pinged every
//!   [`H2_KEEP_ALIVE`] and closed when a ping goes unanswered as long.
//! - hyper's own limits on header size and HTTP/2 streams; request bodies are bounded by
//!   the API's body limit.
//!
//! Every refusal and every close the bounds force is counted in
//! `presence_refusals_total{reason}` (see [`Refusal`]).

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tracing::debug;

use crate::api::{ApiError, ApiErrorCode, Peer};
use crate::clock::Clock;
use crate::metrics::{Metrics, Refusal};

/// Most concurrent HTTP/2 streams per connection.
const H2_MAX_STREAMS: u32 = 100;
/// HTTP/2 keep-alive: a ping this often, and the connection closes if one goes unanswered
/// this long, so a peer that stopped reading does not hold its slot until the idle timeout.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(20);
/// How long an idle connection closed by the idle timeout may take to say goodbye (an
/// HTTP/2 GOAWAY) before it is dropped.
const GOODBYE: Duration = Duration::from_secs(1);

/// Where the listener binds and how it bounds its clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpConfig {
    /// The TCP address the daemon binds before calling [`serve`].
    pub(crate) listen: SocketAddr,
    /// Most connections at once.
    pub(crate) max_connections: u32,
    /// Of `max_connections`, how many only loopback clients may take.
    pub(crate) reserved: u32,
    /// Most connections from one IP address; 0 for no limit.
    pub(crate) max_per_source: u32,
    /// Time for the TLS handshake, and for each HTTP/1.1 request's headers.
    pub(crate) header_timeout: Duration,
    /// Time from a request's dispatch to the end of its body.
    pub(crate) body_timeout: Duration,
    /// Time for a whole request: body and handler.
    pub(crate) request_timeout: Duration,
    /// Time a connection may stay without a request in flight.
    pub(crate) idle_timeout: Duration,
}

/// Serves `router` over TLS on `listener` (bound at `config.listen`) until shutdown; every
/// request carries its client's [`Peer`]; refusals are counted in `metrics`.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    config: HttpConfig,
    metrics: Arc<Metrics>,
    clock: Clock,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(Slots::new(&config));
    let config = Arc::new(config);
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
        let admitted = slots.admit(peer.ip(), clock.now());
        if admitted.evicted > 0 {
            metrics.refuse_n(Refusal::HttpsIdleEvicted, admitted.evicted);
        }
        let slot = match admitted.slot {
            Ok(slot) => SlotGuard { slots: slots.clone(), slot },
            Err(refusal) => {
                metrics.refuse(refusal);
                debug!(%peer, reason = refusal.as_str(), "HTTPS connection refused; closing");
                drop(stream);
                continue;
            }
        };
        let connection = Connection {
            acceptor: acceptor.clone(),
            router: router.clone(),
            config: config.clone(),
            metrics: metrics.clone(),
            clock,
            peer,
        };
        tokio::spawn(connection.run(stream, slot));
    }
}

/// One accepted connection and what it needs.
struct Connection {
    acceptor: tokio_rustls::TlsAcceptor,
    router: Router,
    config: Arc<HttpConfig>,
    metrics: Arc<Metrics>,
    clock: Clock,
    peer: SocketAddr,
}

impl Connection {
    /// Runs the connection until it ends, is evicted or idles out.
    async fn run(self, stream: tokio::net::TcpStream, slot: SlotGuard) {
        let peer = self.peer;
        let evicted = slot.slot.evict.clone();
        let handshake = tokio::time::timeout(self.config.header_timeout, self.acceptor.accept(stream));
        let tls = tokio::select! {
            tls = handshake => match tls {
                Ok(Ok(tls)) => tls,
                Ok(Err(_)) => return debug!(%peer, "TLS handshake failed"),
                Err(_) => {
                    self.metrics.refuse(Refusal::HttpsHandshakeTimeout);
                    return debug!(%peer, "TLS handshake timed out");
                }
            },
            _ = evicted.notified() => return debug!(%peer, "evicted during its TLS handshake"),
        };
        let service = {
            let (router, config, slot) = (self.router.clone(), self.config.clone(), slot.share());
            let (clock, metrics) = (self.clock, self.metrics.clone());
            hyper::service::service_fn(move |request: Request<Incoming>| {
                let (router, config, metrics) = (router.clone(), config.clone(), metrics.clone());
                let busy = slot.busy(clock);
                async move {
                    let response = bounded(router, request, &config, &metrics, peer).await;
                    drop(busy);
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).header_read_timeout(self.config.header_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_STREAMS)
            .keep_alive_interval(H2_KEEP_ALIVE)
            .keep_alive_timeout(H2_KEEP_ALIVE);
        let connection = builder.serve_connection(TokioIo::new(tls), service);
        tokio::pin!(connection);
        let ended = tokio::select! {
            ended = connection.as_mut() => ended,
            _ = evicted.notified() => return debug!(%peer, "idle connection evicted for a new client"),
            _ = slot.idled_out(self.clock, self.config.idle_timeout) => {
                self.metrics.refuse(Refusal::HttpsIdleTimeout);
                debug!(%peer, "idle connection timed out");
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(GOODBYE, connection).await;
                return;
            }
        };
        if let Err(error) = ended {
            debug!(%peer, %error, "HTTP connection ended with an error");
        }
    }
}

/// One request through the router within the body and request timeouts: the body ends in
/// an error at its deadline, and a request that timed out either way answers 408
/// `request_timeout`.
async fn bounded(
    router: Router,
    request: Request<Incoming>,
    config: &HttpConfig,
    metrics: &Metrics,
    peer: SocketAddr,
) -> Response<Body> {
    let timed_out = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| {
        let deadline = Box::pin(tokio::time::sleep(config.body_timeout));
        Body::new(DeadlineBody { inner: Body::new(body), deadline, timed_out: timed_out.clone() })
    });
    let service = TowerToHyperService::new(router.layer(axum::Extension(Peer(peer))));
    let answer = hyper::service::Service::call(&service, request);
    let (refusal, why) = match tokio::time::timeout(config.request_timeout, answer).await {
        Ok(Ok(response)) if !timed_out.load(Ordering::Relaxed) => return response,
        Ok(Ok(_)) => (Refusal::HttpsBodyTimeout, "its body took longer than the body timeout"),
        Ok(Err(never)) => match never {},
        Err(_) => (Refusal::HttpsRequestTimeout, "it took longer than the request timeout"),
    };
    metrics.refuse(refusal);
    debug!(%peer, reason = refusal.as_str(), "request timed out");
    let message = format!("request cut off: {why}");
    ApiError::new(StatusCode::REQUEST_TIMEOUT, ApiErrorCode::RequestTimeout, message).into_response()
}

/// A request body that fails once its deadline passes, and says so in `timed_out`.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timed_out: Arc<AtomicBool>,
}

/// The error a body past its deadline ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not complete within the body timeout")]
struct BodyTimedOut;

impl http_body::Body for DeadlineBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.timed_out.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The listener's connection slots: who holds them, which are idle and since when, and
/// how many each source address holds. See the [module docs](self).
#[derive(Debug)]
struct Slots {
    max: usize,
    /// `max` less the loopback reserve: what non-loopback clients may fill.
    shared: usize,
    max_per_source: usize,
    inner: Mutex<SlotsInner>,
}

#[derive(Debug, Default)]
struct SlotsInner {
    next_id: u64,
    open: HashMap<u64, SlotState>,
    /// Idle connections by (idle since, id): the first is the oldest idle.
    idle: BTreeSet<(Instant, u64)>,
    per_source: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct SlotState {
    ip: IpAddr,
    in_flight: u32,
    idle_since: Option<Instant>,
    evict: Arc<Notify>,
}

/// A connection's place in [`Slots`].
#[derive(Debug, Clone)]
struct Slot {
    id: u64,
    /// Notified when the connection is evicted for a newcomer: it must close at once.
    evict: Arc<Notify>,
}

/// What [`Slots::admit`] decided.
#[derive(Debug)]
struct Admitted {
    /// A slot, or the refusal to count.
    slot: Result<Slot, Refusal>,
    /// Idle connections closed to make room.
    evicted: u64,
}

impl Slots {
    fn new(config: &HttpConfig) -> Slots {
        let max = config.max_connections.max(1) as usize;
        Slots {
            max,
            shared: max.saturating_sub(config.reserved as usize).max(1),
            max_per_source: config.max_per_source as usize,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotsInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a new connection from `ip`, evicting the oldest idle connections if the
    /// slots it may use are full.
    fn admit(&self, ip: IpAddr, now: Instant) -> Admitted {
        let ip = ip.to_canonical();
        let mut inner = self.lock();
        if self.max_per_source > 0 && inner.per_source.get(&ip).copied().unwrap_or(0) >= self.max_per_source {
            return Admitted { slot: Err(Refusal::HttpsPerSource), evicted: 0 };
        }
        let limit = if ip.is_loopback() { self.max } else { self.shared };
        let mut evicted = 0;
        while inner.open.len() >= limit {
            let Some((_, oldest)) = inner.idle.pop_first() else {
                return Admitted { slot: Err(Refusal::HttpsConnections), evicted };
            };
            if let Some(state) = inner.remove(oldest) {
                // notify_one keeps a permit, so a connection not yet waiting still sees it.
                state.evict.notify_one();
                evicted += 1;
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let evict = Arc::new(Notify::new());
        inner.open.insert(id, SlotState { ip, in_flight: 0, idle_since: Some(now), evict: evict.clone() });
        inner.idle.insert((now, id));
        *inner.per_source.entry(ip).or_insert(0) += 1;
        Admitted { slot: Ok(Slot { id, evict }), evicted }
    }

    /// A request starts on connection `id`: it is not idle until every request ends.
    fn begin(&self, id: u64) {
        let mut inner = self.lock();
        let SlotsInner { open, idle, .. } = &mut *inner;
        if let Some(state) = open.get_mut(&id) {
            state.in_flight += 1;
            if let Some(since) = state.idle_since.take() {
                idle.remove(&(since, id));
            }
        }
    }

    /// A request on connection `id` ended at `now`.
    fn end(&self, id: u64, now: Instant) {
        let mut inner = self.lock();
        let SlotsInner { open, idle, .. } = &mut *inner;
        if let Some(state) = open.get_mut(&id) {
            state.in_flight = state.in_flight.saturating_sub(1);
            if state.in_flight == 0 {
                state.idle_since = Some(now);
                idle.insert((now, id));
            }
        }
    }

    /// Since when connection `id` has been idle; `None` while it has a request in flight or
    /// once it is gone.
    fn idle_since(&self, id: u64) -> Option<Instant> {
        self.lock().open.get(&id).and_then(|state| state.idle_since)
    }

    fn release(&self, id: u64) {
        self.lock().remove(id);
    }
}

impl SlotsInner {
    fn remove(&mut self, id: u64) -> Option<SlotState> {
        let state = self.open.remove(&id)?;
        if let Some(since) = state.idle_since {
            self.idle.remove(&(since, id));
        }
        if let Some(count) = self.per_source.get_mut(&state.ip) {
            *count -= 1;
            if *count == 0 {
                self.per_source.remove(&state.ip);
            }
        }
        Some(state)
    }
}

/// A held slot, given back when the connection's task ends, however it ends.
#[derive(Debug)]
struct SlotGuard {
    slots: Arc<Slots>,
    slot: Slot,
}

/// A request in flight on a connection; the connection is idle again once every one is
/// dropped.
struct Busy {
    slots: Arc<Slots>,
    id: u64,
    clock: Clock,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.slots.end(self.id, self.clock.now());
    }
}

/// What the per-request service holds of the connection's slot.
#[derive(Debug, Clone)]
struct SlotRef {
    slots: Arc<Slots>,
    id: u64,
}

impl SlotGuard {
    fn share(&self) -> SlotRef {
        SlotRef { slots: self.slots.clone(), id: self.slot.id }
    }

    /// Resolves once the connection has been idle for `timeout`.
    async fn idled_out(&self, clock: Clock, timeout: Duration) {
        loop {
            match self.slots.idle_since(self.slot.id) {
                Some(since) if clock.now() >= since + timeout => return,
                Some(since) => {
                    tokio::time::sleep((since + timeout).saturating_duration_since(clock.now())).await
                }
                None => tokio::time::sleep(timeout).await,
            }
        }
    }
}

impl SlotRef {
    fn busy(&self, clock: Clock) -> Busy {
        self.slots.begin(self.id);
        Busy { slots: self.slots.clone(), id: self.id, clock }
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.slots.release(self.slot.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(max: u32, reserved: u32, max_per_source: u32) -> Slots {
        Slots::new(&HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_connections: max,
            reserved,
            max_per_source,
            header_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
        })
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    #[test]
    fn a_full_listener_evicts_its_oldest_idle_connection_for_a_newcomer() {
        let slots = slots(3, 0, 0);
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let a = slots.admit(ip("10.0.0.1"), at(0)).slot.expect("a");
        let b = slots.admit(ip("10.0.0.2"), at(1)).slot.expect("b");
        let c = slots.admit(ip("10.0.0.3"), at(2)).slot.expect("c");
        // "a" has a request in flight: it is not idle, so "b" is the oldest idle one.
        slots.begin(a.id);
        let d = slots.admit(ip("10.0.0.4"), at(3));
        assert_eq!(d.evicted, 1);
        assert!(d.slot.is_ok());
        assert!(slots.idle_since(b.id).is_none() && !slots.lock().open.contains_key(&b.id), "b evicted");
        // b's task is told, even though it was not waiting yet.
        assert!(futures_ready(b.evict.notified()));
        // "a" idle again (since 4 ms) is younger than "c" (2 ms): "c" goes next.
        slots.end(a.id, at(4));
        assert_eq!(slots.admit(ip("10.0.0.5"), at(5)).evicted, 1);
        assert!(!slots.lock().open.contains_key(&c.id));
        assert!(slots.lock().open.contains_key(&a.id));
    }

    #[test]
    fn when_every_connection_is_busy_only_loopback_gets_the_reserve() {
        let slots = slots(4, 2, 0);
        let now = Instant::now();
        for i in 1..=2 {
            let slot = slots.admit(ip(&format!("10.0.0.{i}")), now).slot.expect("shared slot");
            slots.begin(slot.id);
        }
        let refused = slots.admit(ip("10.0.0.9"), now);
        assert!(matches!(refused.slot, Err(Refusal::HttpsConnections)), "{refused:?}");
        assert_eq!(refused.evicted, 0, "busy connections are never evicted");
        for local in ["127.0.0.1", "::1"] {
            let slot = slots.admit(ip(local), now).slot.expect("the reserve");
            slots.begin(slot.id);
        }
        assert!(matches!(slots.admit(ip("127.0.0.1"), now).slot, Err(Refusal::HttpsConnections)), "all full");
        // A mapped loopback address is loopback.
        let slots = self::slots(2, 1, 0);
        slots.begin(slots.admit(ip("10.0.0.1"), now).slot.expect("shared").id);
        assert!(slots.admit(ip("::ffff:127.0.0.1"), now).slot.is_ok());
    }

    #[test]
    fn each_source_address_has_its_own_limit_and_zero_means_none() {
        let slots = slots(100, 0, 2);
        let now = Instant::now();
        let first = slots.admit(ip("10.0.0.1"), now).slot.expect("1");
        assert!(slots.admit(ip("10.0.0.1"), now).slot.is_ok());
        assert!(matches!(slots.admit(ip("10.0.0.1"), now).slot, Err(Refusal::HttpsPerSource)));
        // Loopback addresses count apart: 127.0.0.2 is not 127.0.0.1.
        assert!(slots.admit(ip("127.0.0.1"), now).slot.is_ok());
        assert!(slots.admit(ip("127.0.0.2"), now).slot.is_ok());
        slots.release(first.id);
        assert!(slots.admit(ip("10.0.0.1"), now).slot.is_ok(), "a closed connection gives its place back");
        let unlimited = self::slots(100, 0, 0);
        for _ in 0..50 {
            assert!(unlimited.admit(ip("10.0.0.1"), now).slot.is_ok());
        }
        assert_eq!(unlimited.lock().per_source[&ip("10.0.0.1")], 50);
    }

    /// Whether a future is ready at its first poll.
    fn futures_ready(future: impl Future) -> bool {
        let mut future = std::pin::pin!(future);
        let waker = std::task::Waker::noop();
        future.as_mut().poll(&mut Context::from_waker(waker)).is_ready()
    }
}
