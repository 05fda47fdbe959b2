//! One task per connection: drives a [`ServerSession`] with quinn I/O and applies its
//! events to the presence table.
//!
//! Every end of a session goes through the sans-IO session's `close` (or `reject`): it
//! queues the `Error` frame PROTOCOL.md §9.9 requires, the task flushes and lingers for it,
//! and only then closes the QUIC connection with the same code. That holds for the
//! daemon's own reasons too: a peer without DATAGRAM support (§2) and the end of a
//! shutdown drain (§9.10).
//!
//! Datagrams are read in batches: the one that woke the task and every one already waiting
//! behind it. With quinn's buffer empty, each DATAGRAM frame quinn counted
//! (`ConnectionStats::frame_rx.datagram`) was either read here or dropped by quinn, so the
//! difference is exact and is counted (`presence_refusals_total{reason="datagram_buffer"}`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use presence_protocol::{Accept, AppId, ErrorCode, Hello, Reason, ServerEvent, ServerSession, Transmit};
use quinn::VarInt;
use tracing::{Instrument, debug, info, info_span, warn};

use super::{Shared, reason};
use crate::auth::TokenError;
use crate::handle::{SessionCommand, SessionHandle};
use crate::metrics::Refusal;
use crate::table::DeviceState;

/// Largest chunk read from the control stream at once; bounds per-read work.
const READ_CHUNK: usize = 4096;
/// Longest wait for a closing session's last frames to be acknowledged.
const LINGER: Duration = Duration::from_millis(500);

/// Who a session belongs to, once authenticated.
struct Identity {
    user: String,
    device: String,
}

/// Decrements a count of tasks in some phase (handshaking, alive) when the phase ends,
/// however it ends.
struct InPhase<'a>(&'a AtomicU32);

impl Drop for InPhase<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Starts the session task of a connection whose Initial decrypted. The 0-RTT split is
/// done here, before the task exists, so the task does not carry quinn's `Connecting` for
/// the whole life of the session.
pub(super) fn start(connecting: quinn::Connecting, shared: Arc<Shared>) {
    let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let span = info_span!("session", id, remote = %connecting.remote_address(), user = tracing::field::Empty, device = tracing::field::Empty);
    // Server side, 0.5-RTT always works; `handshake_done` resolves when the handshake
    // completes, so a Hello read before it must have arrived in the client's 0-RTT.
    let Ok((connection, handshake_done)) = connecting.into_0rtt() else {
        // quinn documents that this always succeeds for incoming connections.
        shared.metrics.handshakes_failed.get_or_create(&reason("tls")).inc();
        return;
    };
    // Counted before the task exists, so shutdown never sees a spawned task as gone.
    shared.sessions.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(run(connection, handshake_done, id, shared).instrument(span));
}

async fn run(
    connection: quinn::Connection,
    handshake_done: quinn::ZeroRttAccepted,
    id: u64,
    shared: Arc<Shared>,
) {
    let _alive = InPhase(&shared.sessions);
    shared.handshaking.fetch_add(1, Ordering::Relaxed);
    let guard = InPhase(&shared.handshaking);
    let stream = tokio::time::timeout(shared.protocol.handshake_timeout, connection.accept_bi()).await;
    let (send, recv) = match stream {
        Ok(Ok(pair)) => pair,
        Ok(Err(error)) => {
            debug!(%error, "connection ended before the control stream opened");
            shared.metrics.handshakes_failed.get_or_create(&reason("no_stream")).inc();
            return;
        }
        Err(_) => {
            shared.metrics.handshakes_failed.get_or_create(&reason("handshake_timeout")).inc();
            connection.close(close_code(ErrorCode::HANDSHAKE_TIMEOUT), b"no control stream");
            return;
        }
    };
    let mut driver = Driver {
        shared: &shared,
        connection,
        send,
        recv,
        session: ServerSession::new(shared.protocol.clone(), Instant::now()),
        id,
        identity: None,
        handshake: Some(guard),
        handshake_done: Box::pin(handshake_done),
        closed: None,
        datagrams_read: 0,
        datagrams_dropped: 0,
    };
    driver.run().await;
    if driver.closed.is_some_and(|code| code != ErrorCode::NO_ERROR) {
        driver.linger().await;
    }
    driver.finish();
}

struct Driver<'a> {
    shared: &'a Shared,
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    session: ServerSession,
    id: u64,
    identity: Option<Identity>,
    handshake: Option<InPhase<'a>>,
    handshake_done: std::pin::Pin<Box<quinn::ZeroRttAccepted>>,
    /// The code the session ended with, once it has.
    closed: Option<ErrorCode>,
    /// DATAGRAM frames read from quinn, and those counted as dropped by it.
    datagrams_read: u64,
    datagrams_dropped: u64,
}

impl Driver<'_> {
    async fn run(&mut self) {
        let (handle, mut commands) = SessionHandle::new(self.id);
        let mut shutdown = self.shared.shutdown.clone();
        let mut draining = *shutdown.borrow();
        let mut close_now = self.shared.close_sessions.clone();
        let mut remote = self.connection.remote_address();
        let mut stream_open = true;
        if self.connection.max_datagram_size().is_none() {
            // PROTOCOL.md §2: no pings, no session. Said on the control stream like every
            // other close, before the device's Hello is even read.
            self.shared.metrics.handshakes_failed.get_or_create(&reason("no_datagrams")).inc();
            self.session.close(
                ErrorCode::PROTOCOL_VIOLATION,
                "the QUIC DATAGRAM extension is required (max_datagram_frame_size)",
            );
            self.handle_events(&handle).await;
            self.flush().await;
            return;
        }
        loop {
            let deadline = self.session.poll_timeout().map(tokio::time::Instant::from_std);
            tokio::select! {
                chunk = self.recv.read_chunk(READ_CHUNK, true), if stream_open => match chunk {
                    Ok(Some(chunk)) => self.session.handle_stream_data(Instant::now(), &chunk.bytes),
                    Ok(None) => {
                        // The device finished its side: a clean close.
                        stream_open = false;
                        self.session.close(ErrorCode::NO_ERROR, "control stream finished");
                    }
                    Err(error) => return debug!(%error, "control stream ended"),
                },
                datagram = self.connection.read_datagram() => match datagram {
                    Ok(payload) => self.read_datagrams(&payload),
                    Err(error) => return debug!(%error, "connection ended"),
                },
                command = commands.recv() => self.apply(command),
                _ = sleep_until(deadline), if deadline.is_some() => self.session.handle_timeout(Instant::now()),
                _ = shutdown.wait_for(|stop| *stop), if !draining => {
                    draining = true;
                    let reason = Reason::new("server shutting down").unwrap_or_default();
                    // Before Welcome there is nothing to drain: the session just ends.
                    if self.session.go_away(reason, self.shared.drain).is_err() {
                        self.session.close(ErrorCode::SHUTTING_DOWN, "server shutting down");
                    }
                }
                // The drain is over (PROTOCOL.md §9.10): the session ends itself, so the
                // device gets the `Error` frame every close carries.
                _ = close_now.wait_for(|close| *close) => {
                    self.session.close(ErrorCode::SHUTTING_DOWN, "server shutting down");
                }
            }
            let address = self.connection.remote_address();
            if address != remote {
                remote = address;
                self.shared.metrics.migrations.inc();
                info!(%remote, "device migrated");
                // Its NAT binding may have lapsed: pushes to the old address were lost.
                self.session.handle_path_change();
            }
            self.handle_events(&handle).await;
            if !self.flush().await {
                return;
            }
            if self.session.is_closed() {
                return;
            }
        }
    }

    /// Handles `first` and every datagram already waiting behind it, then counts what quinn
    /// dropped: once its buffer is empty, every DATAGRAM frame it received up to the last
    /// look was either read here or dropped by it.
    fn read_datagrams(&mut self, first: &[u8]) {
        self.handle_datagram(first);
        loop {
            let received = self.connection.stats().frame_rx.datagram;
            match ready_now(self.connection.read_datagram()) {
                Some(Ok(payload)) => self.handle_datagram(&payload),
                // Empty (or the connection ended: the next read says so).
                _ => return self.count_dropped(received),
            }
        }
    }

    fn handle_datagram(&mut self, payload: &[u8]) {
        self.datagrams_read += 1;
        self.shared.metrics.pings_received.inc();
        let (bad, limited) = (self.session.bad_datagrams(), self.session.limited_datagrams());
        self.session.handle_datagram(Instant::now(), payload);
        if self.session.bad_datagrams() > bad {
            self.shared.metrics.bad_datagrams.inc();
        }
        if self.session.limited_datagrams() > limited {
            self.shared.metrics.refuse(Refusal::PingRate);
        }
    }

    /// Counts the DATAGRAM frames among the first `received` that were never read.
    fn count_dropped(&mut self, received: u64) {
        let dropped = received.saturating_sub(self.datagrams_read + self.datagrams_dropped);
        if dropped > 0 {
            self.datagrams_dropped += dropped;
            self.shared.metrics.refuse_n(Refusal::DatagramBuffer, dropped);
            debug!(dropped, "datagrams dropped by the QUIC datagram buffer");
        }
    }

    fn apply(&mut self, command: SessionCommand) {
        let result = match command {
            SessionCommand::Close { code, reason } => {
                self.session.close(code, &reason);
                Ok(())
            }
            SessionCommand::Notify(notify) => self.session.notify(Instant::now(), notify),
            SessionCommand::Cancel { id, reason } => self.session.cancel(id, reason),
            SessionCommand::Revoked { app_id } => self.session.revoked(app_id),
            SessionCommand::GoAway { reason, retry_after } => {
                self.session.go_away(Reason::truncating(&reason), retry_after)
            }
        };
        if let Err(error) = result {
            debug!(%error, "command not applicable");
        }
    }

    async fn handle_events(&mut self, handle: &SessionHandle) {
        while let Some(event) = self.session.poll_event() {
            match event {
                // Boxed: it runs once per session, and inline it would make every session's
                // task future larger for the session's whole life.
                ServerEvent::Hello(hello) => Box::pin(self.authenticate(hello, handle)).await,
                ServerEvent::StatusChanged { status, idle, message } => {
                    self.shared.metrics.status_changes.inc();
                    self.update(|state| {
                        state.status = status;
                        state.idle = idle;
                        if let Some(message) = message {
                            state.message = message.into_string();
                        }
                    });
                }
                ServerEvent::Visibility(apps) => self.update(|state| state.visibility = apps.into_vec()),
                ServerEvent::Authorize(authorize) => self.authorize(authorize.app_id, &authorize.state),
                ServerEvent::Revoke(revoke) => self.revoke(revoke.app_id, handle),
                ServerEvent::Reauth(token) => self.reauth(&token),
                ServerEvent::NotifyResponse(response) => {
                    if let Some(identity) = &self.identity {
                        let notifications = &self.shared.services.notifications;
                        notifications.respond(response.id, &identity.user, self.id, response.response);
                    }
                }
                // The notification manager's own timer decides `missed` for the whole user.
                ServerEvent::NotificationMissed { id } => debug!(id, "notification expired on this device"),
                ServerEvent::Silent => self.set_silent(true),
                ServerEvent::Alive => self.set_silent(false),
                ServerEvent::Closed(close) => {
                    self.closed = Some(close.code);
                    let label = reason(close.code.name());
                    self.shared.metrics.sessions_closed.get_or_create(&label).inc();
                    if close.code == ErrorCode::RATE_LIMITED && !close.by_peer {
                        self.shared.metrics.refuse(Refusal::SessionRateLimited);
                    }
                    debug!(code = %close.code, reason = %close.reason, by_peer = close.by_peer, "session closed");
                }
                other => debug!(?other, "unhandled session event"),
            }
        }
    }

    async fn authenticate(&mut self, hello: Hello, handle: &SessionHandle) {
        let now_ms = unix_now_ms();
        let now = now_ms / 1_000;
        let verifier = &self.shared.services.verifier;
        let claims = match verifier.verify(&hello.token, now) {
            Ok(claims) if claims.did == hello.device_id.as_str() => claims,
            Ok(_) => return self.refuse(ErrorCode::UNAUTHENTICATED, "token is for another device", "device"),
            Err(TokenError::Expired) => {
                return self.refuse(ErrorCode::TOKEN_EXPIRED, "token expired", "expired");
            }
            Err(error) => {
                return self.refuse(ErrorCode::UNAUTHENTICATED, &error.to_string(), "unauthenticated");
            }
        };
        let zero_rtt = tokio::select! {
            biased;
            _ = &mut self.handshake_done => false,
            _ = std::future::ready(()) => true,
        };
        if zero_rtt {
            // 0-RTT data can be replayed: nothing may happen on its strength alone
            // (PROTOCOL.md §11). Welcome, the table and the ghost's close wait for the
            // handshake, which proves the client is live.
            let handshake = self.shared.protocol.handshake_timeout;
            if tokio::time::timeout(handshake, &mut self.handshake_done).await.is_err() {
                return self.refuse(
                    ErrorCode::HANDSHAKE_TIMEOUT,
                    "0-RTT hello without a completed handshake",
                    "handshake_timeout",
                );
            }
            self.shared.metrics.zero_rtt_accepted.inc();
        }
        let span = tracing::Span::current();
        span.record("user", claims.sub.as_str());
        span.record("device", claims.did.as_str());
        // Read again: a 0-RTT Hello waited for the handshake, and both the clock the device
        // corrects against and the token's remaining time count from Welcome.
        let now_ms = unix_now_ms();
        let accept = Accept {
            session_id: self.id,
            server_time_ms: now_ms,
            token_valid_for: Some(self.shared.services.verifier.valid_for(&claims, now_ms)),
        };
        if let Err(error) = self.session.accept(Instant::now(), accept) {
            return warn!(%error, "accept out of phase");
        }
        let state = DeviceState {
            status: hello.status,
            idle: hello.idle,
            message: hello.message.into_string(),
            visibility: hello.visibility.into_vec(),
        };
        let replaced = self.shared.services.table.connect(&claims.sub, &claims.did, handle.clone(), state);
        if let Some(ghost) = replaced {
            ghost.send(SessionCommand::Close {
                code: ErrorCode::REPLACED,
                reason: "replaced by a new session".into(),
            });
        }
        info!(zero_rtt, heartbeat = ?self.session.heartbeat(), "session up");
        self.identity = Some(Identity { user: claims.sub, device: claims.did });
        self.handshake = None;
    }

    /// The user authorizes an app: answer with its PUID and tell the app (`grant`).
    fn authorize(&mut self, app_id: AppId, state: &str) {
        let Some(identity) = &self.identity else { return };
        let services = &self.shared.services;
        if !services.apps.exists(&app_id) {
            let _ = self.session.denied(app_id, ErrorCode::UNKNOWN_APP, Reason::truncating("no such app"));
            return;
        }
        let puid = services.table.puid(&app_id, &identity.user);
        services.outbound.grant(&app_id, &puid, state);
        let _ = self.session.authorized(app_id, puid);
    }

    /// The user withdraws an app: it stops seeing the user on every device at once, learns
    /// `revoke`, and every session of the user is told to drop it from its list.
    fn revoke(&mut self, app_id: AppId, own: &SessionHandle) {
        let Some(identity) = &self.identity else { return };
        let services = &self.shared.services;
        if !services.apps.exists(&app_id) {
            let _ = self.session.denied(app_id, ErrorCode::UNKNOWN_APP, Reason::truncating("no such app"));
            return;
        }
        services.table.revoke(&identity.user, &app_id);
        services.outbound.revoke(&app_id, &services.table.puid(&app_id, &identity.user));
        for session in services.table.sessions_of(&identity.user) {
            if session.id != own.id {
                session.send(SessionCommand::Revoked { app_id: app_id.clone() });
            }
        }
        let _ = self.session.revoked(app_id);
    }

    fn refuse(&mut self, code: ErrorCode, detail: &str, label: &'static str) {
        self.shared.metrics.handshakes_failed.get_or_create(&reason(label)).inc();
        info!(code = %code, detail, "hello refused");
        self.session.reject(code, detail);
    }

    fn reauth(&mut self, token: &str) {
        let Some(identity) = &self.identity else { return };
        let now_ms = unix_now_ms();
        let verifier = &self.shared.services.verifier;
        match verifier.verify(token, now_ms / 1_000) {
            Ok(claims) if claims.sub == identity.user && claims.did == identity.device => {
                self.session.renew_token(Instant::now(), Some(verifier.valid_for(&claims, now_ms)));
            }
            Ok(_) => {
                self.session.close(ErrorCode::UNAUTHENTICATED, "reauth token names another user or device")
            }
            Err(TokenError::Expired) => self.session.close(ErrorCode::TOKEN_EXPIRED, "reauth token expired"),
            Err(error) => self.session.close(ErrorCode::UNAUTHENTICATED, &error.to_string()),
        }
    }

    fn update(&self, change: impl FnOnce(&mut DeviceState)) {
        if let Some(identity) = &self.identity {
            self.shared.services.table.update(&identity.user, &identity.device, self.id, change);
        }
    }

    fn set_silent(&self, silent: bool) {
        if let Some(identity) = &self.identity {
            info!(silent, "liveness changed");
            self.shared.services.table.set_silent(&identity.user, &identity.device, self.id, silent);
        }
    }

    /// Sends what the session queued; false once the connection is unusable. A device that
    /// stops reading its control stream blocks the write once flow control is spent; after
    /// the slow-reader bound it is closed, so it can neither hold this task (and its
    /// queue) forever nor keep looking online while nothing reaches it.
    async fn flush(&mut self) -> bool {
        while let Some(transmit) = self.session.poll_transmit() {
            match transmit {
                Transmit::Stream(bytes) => {
                    match tokio::time::timeout(self.shared.slow_reader, self.send.write_all(&bytes)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return false,
                        Err(_) => {
                            self.shared.metrics.refuse(Refusal::SlowReader);
                            warn!("device does not read its control stream; closing");
                            self.closed = Some(ErrorCode::PROTOCOL_VIOLATION);
                            return false;
                        }
                    }
                }
                Transmit::Datagram(bytes) => {
                    // Datagrams may be lost anyway; a failed send is one more loss.
                    let _ = self.connection.send_datagram(bytes);
                }
            }
        }
        true
    }

    /// Takes the device off the table and closes the connection with the session's code.
    fn finish(&mut self) {
        if let Some(identity) = &self.identity {
            self.shared.services.table.disconnect(&identity.user, &identity.device, self.id);
        }
        // Datagrams still buffered now are never read either.
        self.count_dropped(self.connection.stats().frame_rx.datagram);
        let code = self.closed.unwrap_or(ErrorCode::NO_ERROR);
        let _ = self.send.finish();
        self.connection.close(close_code(code), code.name().as_bytes());
    }

    /// Lets the final frames (an `Error`, a `GoAway`) reach the device before the connection
    /// closes: a QUIC close discards stream data still in flight. Bounded, so a device that
    /// stopped reading cannot hold the session open.
    async fn linger(&mut self) {
        let _ = self.send.finish();
        let _ = tokio::time::timeout(LINGER, self.send.stopped()).await;
    }
}

fn close_code(code: ErrorCode) -> VarInt {
    VarInt::from_u32(u32::from(code.0))
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Unix time in milliseconds: `Welcome.server_time_ms` is for skew correction (§6.2), so it
/// is the real millisecond, not a whole second.
fn unix_now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Polls `future` once: its output if it is ready now, without waiting.
fn ready_now<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}
