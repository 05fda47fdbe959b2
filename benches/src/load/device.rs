//! One simulated device: a small driver around the sans-IO [`ClientSession`].
//!
//! `presence_client::Client` is built for one device per process: a task, two channels, an
//! idle policy and reconnect backoff per client. A load run holds up to hundreds of
//! thousands of devices, so each one here is a single task that owns its quinn connection
//! and its `ClientSession` directly and takes no commands: it schedules its own status
//! changes (a Poisson process whose rate is the run's rate divided by the sessions) and its
//! own reconnects, answers every notification with `accept`, and watches one shared stop
//! signal. Its heartbeats are the session's own timer, so they are exactly what a real
//! device sends.
//!
//! A device's life: connect with a full handshake (timed to `Welcome`), authorize the
//! tool's app (the answer, `Authorized`, carries the PUID the webhooks will name), then
//! heartbeat and change status until the stop signal; a reconnect closes the session
//! cleanly and connects again with a resumed handshake and the `Hello` in 0-RTT.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use presence_protocol::{
    AppId, AppList, ClientConfig, ClientEvent, ClientSession, DeviceId, ErrorCode, Hello, LinkState,
    PROTOCOL_VERSION, Response, Status, StatusText, Token, Transmit,
};
use presenced::testing::auth::TokenSigner;
use tokio::sync::{OwnedSemaphorePermit, watch};

use super::setup::{ClientConfigs, SERVER_NAME};
use super::stats::{Counter, Errors, Latencies};
use super::stopped;
use super::tracker::Tracker;

/// Largest chunk read from the control stream at once.
const READ_CHUNK: usize = 4096;
/// From `connect` to `Welcome`, at most; past it the attempt counts as failed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a device waits to reconnect when a status change still awaits its webhook
/// (reconnecting then would make the session's own `online` event ambiguous).
const RECONNECT_DEFER: Duration = Duration::from_secs(1);
/// Validity of minted tokens beyond the run's expected length.
const TOKEN_MARGIN_SECS: u64 = 3_600;
/// A scheduled interval is at most this many means long, so a draw of `-ln(u)` near the
/// tail cannot schedule past any sensible run.
const MAX_INTERVAL_MEANS: f64 = 50.0;
/// The statuses a device moves between; never `offline`, so that every device can be sent
/// a notification.
const STATUSES: [Status; 3] = [Status::Online, Status::Away, Status::Unavailable];

/// How a handshake was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HandshakeKind {
    Full,
    Resumed,
}

/// Counters every device updates.
#[derive(Debug, Default)]
pub struct DeviceCounters {
    /// Devices whose first session reached `Welcome`.
    pub established: Counter,
    /// Devices whose first session never did.
    pub failed: Counter,
    /// Sessions that ended before the stop signal (closed by the server, connection lost,
    /// failed reconnect).
    pub lost: Counter,
    /// Reconnections that reached `Welcome` again.
    pub reconnects: Counter,
    /// Ping datagrams handed to QUIC: heartbeats and status-change pings.
    pub pings_sent: Counter,
    /// Status changes made.
    pub changes_sent: Counter,
    /// Status changes the server acknowledged.
    pub changes_acked: Counter,
    /// Live notifications shown (and accepted).
    pub notifications: Counter,
    /// Sessions up right now.
    pub up: AtomicI64,
}

/// What every device shares.
#[derive(Debug)]
pub struct Fleet {
    /// The daemon's QUIC address.
    pub server: std::net::SocketAddr,
    /// Client endpoints; device `i` uses endpoint `i % len`.
    pub endpoints: Vec<quinn::Endpoint>,
    /// TLS configurations (full, resumed).
    pub tls: ClientConfigs,
    /// Mints device tokens.
    pub signer: Arc<TokenSigner>,
    /// The tool's app, in every device's visibility list.
    pub app_id: AppId,
    /// Distinguishes this run's users from earlier runs' on the same daemon.
    pub run_id: String,
    /// Heartbeat interval asked for in `Hello`.
    pub heartbeat: Duration,
    /// Mean time between one device's status changes (`None`: no changes).
    pub change_every: Option<Duration>,
    /// Mean time between one device's reconnects (`None`: no reconnects).
    pub reconnect_every: Option<Duration>,
    /// On the stop signal each device waits a random part of this before it closes, so the
    /// daemon is not sent every CONNECTION_CLOSE at once (see [`CLOSE_RATE`](super::CLOSE_RATE)).
    pub close_spread: Duration,
    /// Token validity, seconds.
    pub token_ttl_secs: u64,
    /// Status changes are made only while this is set.
    pub changes_on: AtomicBool,
    /// The stop signal.
    pub stop: watch::Receiver<bool>,
    /// Change and notification matching.
    pub tracker: Arc<Tracker>,
    /// Errors by kind.
    pub errors: Arc<Errors>,
    /// Counters.
    pub counters: DeviceCounters,
    /// Connect-to-`Welcome` of full handshakes.
    pub handshake_full: Latencies,
    /// Connect-to-`Welcome` of resumed (0-RTT) handshakes.
    pub handshake_resumed: Latencies,
    /// Each device's PUID while its session is up (notification targets).
    pub puids: Mutex<Vec<Option<Arc<str>>>>,
    /// Device tasks still running.
    pub live: AtomicUsize,
}

impl Fleet {
    /// A random device's PUID among those up, trying at most `tries` slots.
    pub fn random_puid(&self, tries: usize) -> Option<Arc<str>> {
        let puids = self.puids.lock().ok()?;
        if puids.is_empty() {
            return None;
        }
        (0..tries).find_map(|_| puids[fastrand::usize(..puids.len())].clone())
    }

    fn set_puid(&self, index: usize, puid: Option<Arc<str>>) {
        if let Ok(mut puids) = self.puids.lock()
            && let Some(slot) = puids.get_mut(index)
        {
            *slot = puid;
        }
    }
}

/// Decrements the live-task count however the task ends.
struct Live<'a>(&'a Fleet);

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A session that reached `Welcome`.
struct Up {
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    session: ClientSession,
}

/// Why [`drive`] returned.
enum End {
    Stop,
    Reconnect,
    Lost(String),
}

/// What a device remembers across its sessions.
struct Device {
    index: usize,
    user: String,
    device: String,
    status: Status,
    seq: u8,
    puid: Option<Arc<str>>,
}

/// Runs device `index` until the stop signal. `permit` bounds the handshakes in flight; it
/// is released when the first handshake ends, either way.
pub async fn run(fleet: Arc<Fleet>, index: usize, permit: OwnedSemaphorePermit) {
    fleet.live.fetch_add(1, Ordering::Relaxed);
    let _live = Live(&fleet);
    let endpoint = &fleet.endpoints[index % fleet.endpoints.len()];
    let mut device = Device {
        index,
        user: format!("load-{}-{index}", fleet.run_id),
        device: format!("dev-{index}"),
        status: Status::Online,
        seq: 0,
        puid: None,
    };
    let mut permit = Some(permit);
    let mut kind = HandshakeKind::Full;
    loop {
        let started = Instant::now();
        let attempt = connect(&fleet, endpoint, kind, hello(&fleet, &device)).await;
        drop(permit.take());
        let mut up = match attempt {
            Ok(up) => up,
            Err(error) => {
                fleet.errors.add(error);
                match kind {
                    HandshakeKind::Full => fleet.counters.failed.inc(),
                    HandshakeKind::Resumed => fleet.counters.lost.inc(),
                }
                return;
            }
        };
        let took = started.elapsed();
        match kind {
            HandshakeKind::Full => {
                fleet.handshake_full.record(took);
                fleet.counters.established.inc();
            }
            HandshakeKind::Resumed => {
                fleet.handshake_resumed.record(took);
                fleet.counters.reconnects.inc();
            }
        }
        fleet.counters.up.fetch_add(1, Ordering::Relaxed);
        fleet.set_puid(index, device.puid.clone());
        let end = drive(&fleet, &mut up, &mut device).await;
        fleet.counters.up.fetch_sub(1, Ordering::Relaxed);
        fleet.set_puid(index, None);
        device.seq = up.session.status_seq();
        match end {
            End::Stop => return,
            End::Reconnect => kind = HandshakeKind::Resumed,
            End::Lost(error) => {
                fleet.errors.add(error);
                fleet.counters.lost.inc();
                return;
            }
        }
    }
}

fn hello(fleet: &Fleet, device: &Device) -> Result<Hello, String> {
    let now = unix_secs();
    let token =
        fleet.signer.mint(&device.user, &device.device, now, fleet.token_ttl_secs + TOKEN_MARGIN_SECS);
    Ok(Hello {
        version: PROTOCOL_VERSION,
        token: Token::new(token).map_err(|_| "token_too_long".to_owned())?,
        device_id: DeviceId::new(device.device.as_str()).map_err(|_| "device_id".to_owned())?,
        status: device.status,
        idle: false,
        message: StatusText::default(),
        visibility: AppList::new(vec![fleet.app_id.clone()]).map_err(|_| "visibility".to_owned())?,
        heartbeat_ms: u32::try_from(fleet.heartbeat.as_millis()).unwrap_or(u32::MAX),
        status_seq: device.seq,
    })
}

/// Connects and waits for `Welcome`, mirroring the client library's driver: with a ticket
/// the `Hello` rides in 0-RTT, and is sent again on a fresh stream if the server refuses
/// the early data.
async fn connect(
    fleet: &Fleet,
    endpoint: &quinn::Endpoint,
    kind: HandshakeKind,
    hello: Result<Hello, String>,
) -> Result<Up, String> {
    let hello = hello?;
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let config = match kind {
        HandshakeKind::Full => fleet.tls.full.clone(),
        HandshakeKind::Resumed => fleet.tls.resume.clone(),
    };
    let connecting =
        endpoint.connect_with(config, fleet.server, SERVER_NAME).map_err(|e| format!("connect: {e}"))?;
    let (connection, early) = match connecting.into_0rtt() {
        Ok((connection, accepted)) => (connection, Some(accepted)),
        Err(connecting) => match tokio::time::timeout_at(deadline, connecting).await {
            Ok(Ok(connection)) => (connection, None),
            Ok(Err(error)) => return Err(connection_error("handshake", &error)),
            Err(_) => return Err("handshake_timeout".into()),
        },
    };
    if kind == HandshakeKind::Resumed && early.is_none() {
        // No ticket in the pool: this reconnect was a full handshake after all.
        fleet.errors.add("resume_without_ticket");
    }
    let new_session = || ClientSession::new(ClientConfig::default(), Instant::now(), hello.clone());
    let mut session = new_session();
    let open = |connection: &quinn::Connection| {
        let connection = connection.clone();
        async move {
            match tokio::time::timeout_at(deadline, connection.open_bi()).await {
                Ok(Ok(pair)) => Ok(pair),
                Ok(Err(error)) => Err(connection_error("open_stream", &error)),
                Err(_) => Err("handshake_timeout".to_owned()),
            }
        }
    };
    let (mut send, mut recv) = open(&connection).await?;
    flush(fleet, &mut session, &connection, &mut send).await.map_err(|_| "hello_write".to_owned())?;
    if let Some(accepted) = early {
        let zero_rtt = tokio::time::timeout_at(deadline, accepted).await.unwrap_or(false);
        if !zero_rtt {
            // The server refused the early data: the stream and the Hello are gone.
            fleet.errors.add("zero_rtt_rejected");
            session = new_session();
            (send, recv) = open(&connection).await?;
            flush(fleet, &mut session, &connection, &mut send).await.map_err(|_| "hello_write".to_owned())?;
        }
    }
    loop {
        let chunk = match tokio::time::timeout_at(deadline, recv.read_chunk(READ_CHUNK, true)).await {
            Err(_) => return Err("welcome_timeout".into()),
            Ok(Err(error)) => return Err(read_error("welcome", &error)),
            Ok(Ok(None)) => return Err("welcome_stream_finished".into()),
            Ok(Ok(Some(chunk))) => chunk,
        };
        session.handle_stream_data(Instant::now(), &chunk.bytes);
        while let Some(event) = session.poll_event() {
            match event {
                ClientEvent::Welcome(_) => return Ok(Up { connection, send, recv, session }),
                ClientEvent::Closed(close) => return Err(format!("refused:{}", close.code.name())),
                _ => {}
            }
        }
    }
}

/// Runs an established session until the stop signal, a reconnect or its end.
async fn drive(fleet: &Fleet, up: &mut Up, device: &mut Device) -> End {
    let mut stop = fleet.stop.clone();
    if *stop.borrow() {
        close(fleet, up).await;
        return End::Stop;
    }
    if device.puid.is_none() {
        let state = LinkState::new(format!("load-{}", device.index)).unwrap_or_default();
        if up.session.authorize(fleet.app_id.clone(), state).is_err() {
            return End::Lost("authorize_out_of_phase".into());
        }
    }
    let now = Instant::now();
    let mut next_change = device.puid.as_ref().and(fleet.change_every).map(|mean| now + interval(mean));
    let mut next_reconnect = fleet.reconnect_every.map(|mean| now + interval(mean));
    loop {
        if flush(fleet, &mut up.session, &up.connection, &mut up.send).await.is_err() {
            return End::Lost("stream_write".into());
        }
        let timer = [up.session.poll_timeout(), next_change, next_reconnect].into_iter().flatten().min();
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => {
                tokio::time::sleep(fleet.close_spread.mul_f64(fastrand::f64())).await;
                close(fleet, up).await;
                return End::Stop;
            }
            chunk = up.recv.read_chunk(READ_CHUNK, true) => match chunk {
                Ok(Some(chunk)) => up.session.handle_stream_data(Instant::now(), &chunk.bytes),
                Ok(None) => return End::Lost("stream_finished".into()),
                Err(error) => return End::Lost(read_error("stream", &error)),
            },
            datagram = up.connection.read_datagram() => match datagram {
                Ok(payload) => up.session.handle_datagram(Instant::now(), &payload),
                Err(error) => return End::Lost(connection_error("connection", &error)),
            },
            _ = sleep_until(timer) => {
                let now = Instant::now();
                if let (Some(at), Some(mean)) = (next_change, fleet.change_every)
                    && now >= at
                {
                    change_status(fleet, up, device, now);
                    next_change = Some(now + interval(mean));
                }
                if next_reconnect.is_some_and(|at| now >= at)
                {
                    let busy = device.puid.as_deref().is_none_or(|puid| fleet.tracker.has_pending(puid));
                    if busy {
                        next_reconnect = Some(now + RECONNECT_DEFER);
                    } else {
                        close(fleet, up).await;
                        return End::Reconnect;
                    }
                }
                up.session.handle_timeout(now);
            }
        }
        while let Some(event) = up.session.poll_event() {
            match event {
                ClientEvent::Authorized(authorized) => {
                    let puid: Arc<str> = Arc::from(authorized.puid.as_str());
                    fleet.set_puid(device.index, Some(puid.clone()));
                    device.puid = Some(puid);
                    next_change = fleet.change_every.map(|mean| Instant::now() + interval(mean));
                }
                ClientEvent::Denied(denied) => fleet.errors.add(format!("denied:{}", denied.code.name())),
                ClientEvent::StatusAcked { .. } => fleet.counters.changes_acked.inc(),
                ClientEvent::Notification(notify) => {
                    fleet.counters.notifications.inc();
                    if up.session.respond(notify.id, Response::Accepted).is_err() {
                        fleet.errors.add("respond_out_of_phase");
                    }
                }
                ClientEvent::GoAway(_) => {
                    close(fleet, up).await;
                    return End::Lost("go_away".into());
                }
                ClientEvent::Closed(close) => return End::Lost(format!("closed:{}", close.code.name())),
                _ => {}
            }
        }
    }
}

/// Moves the device to a random other status, recording the change before it is sent so
/// its webhook cannot arrive first.
fn change_status(fleet: &Fleet, up: &mut Up, device: &mut Device, now: Instant) {
    let Some(puid) = &device.puid else { return };
    if !fleet.changes_on.load(Ordering::Relaxed) || up.session.change_pending() {
        return;
    }
    let others: Vec<Status> = STATUSES.into_iter().filter(|&status| status != device.status).collect();
    let status = others[fastrand::usize(..others.len())];
    fleet.tracker.change_sent(puid, status, now, unix_ms());
    up.session.set_status(now, status, false);
    device.status = status;
    fleet.counters.changes_sent.inc();
}

/// Ends the session cleanly: an `Error(no_error)` frame, FIN, then a QUIC close.
async fn close(fleet: &Fleet, up: &mut Up) {
    up.session.close();
    let _ = flush(fleet, &mut up.session, &up.connection, &mut up.send).await;
    let _ = up.send.finish();
    up.connection.close(quinn::VarInt::from_u32(u32::from(ErrorCode::NO_ERROR.0)), b"load run over");
}

/// Moves everything the session queued onto the connection.
async fn flush(
    fleet: &Fleet,
    session: &mut ClientSession,
    connection: &quinn::Connection,
    send: &mut quinn::SendStream,
) -> Result<(), ()> {
    while let Some(transmit) = session.poll_transmit() {
        match transmit {
            Transmit::Stream(bytes) => send.write_all(&bytes).await.map_err(|_| ())?,
            Transmit::Datagram(bytes) => {
                fleet.counters.pings_sent.inc();
                if connection.send_datagram(bytes).is_err() {
                    fleet.errors.add("datagram_send");
                }
            }
        }
    }
    Ok(())
}

/// An exponentially distributed interval with the given mean (Poisson arrivals).
fn interval(mean: Duration) -> Duration {
    let uniform = 1.0 - fastrand::f64(); // in (0, 1]
    mean.mul_f64((-uniform.ln()).min(MAX_INTERVAL_MEANS))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// A short, stable error kind for a connection error.
fn connection_error(stage: &str, error: &quinn::ConnectionError) -> String {
    use quinn::ConnectionError as E;
    let what = match error {
        E::ApplicationClosed(close) => {
            let code = u16::try_from(close.error_code.into_inner()).map(ErrorCode);
            return match code {
                Ok(code) => format!("{stage}:closed:{}", code.name()),
                Err(_) => format!("{stage}:closed:{}", close.error_code),
            };
        }
        E::ConnectionClosed(_) => "transport_closed",
        E::TimedOut => "timed_out",
        E::Reset => "reset",
        E::LocallyClosed => "locally_closed",
        E::VersionMismatch => "version_mismatch",
        E::TransportError(_) => "transport_error",
        E::CidsExhausted => "cids_exhausted",
    };
    format!("{stage}:{what}")
}

fn read_error(stage: &str, error: &quinn::ReadError) -> String {
    match error {
        quinn::ReadError::ConnectionLost(error) => connection_error(stage, error),
        quinn::ReadError::Reset(_) => format!("{stage}:stream_reset"),
        _ => format!("{stage}:read_error"),
    }
}

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Wall-clock Unix milliseconds, comparable with the `at` of webhook events.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_average_their_mean() {
        let mean = Duration::from_millis(100);
        let total: Duration = (0..20_000).map(|_| interval(mean)).sum();
        let average = total / 20_000;
        assert!((90..110).contains(&average.as_millis()), "{average:?}");
    }
}
