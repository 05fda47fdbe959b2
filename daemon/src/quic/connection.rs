//! One task per connection: moves bytes between quinn and the connection's
//! [`DeviceSession`], which owns what they mean (authentication, the table, apps).
//!
//! Every end of a session goes through the session's close: it queues the `Error` frame
//! PROTOCOL.md §9.9 requires, the task flushes and lingers for it, and only then closes the
//! QUIC connection with the same code. That holds for the driver's own reasons too: a peer
//! without DATAGRAM support (§2) and the end of a shutdown drain (§9.10).
//!
//! Datagrams are read in batches: the one that woke the task and every one already waiting
//! behind it. With quinn's buffer empty, each DATAGRAM frame quinn counted
//! (`ConnectionStats::frame_rx.datagram`) was either read here or dropped by quinn, so the
//! difference is exact and is counted (`presence_refusals_total{reason="datagram_buffer"}`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use presence_protocol::{ErrorCode, Transmit};
use quinn::VarInt;
use tracing::{Instrument, debug, info, info_span};

use super::{Shared, reason};
use crate::handle::{Commands, SessionHandle};
use crate::metrics::Refusal;
use crate::session::{DeviceSession, Effect};

/// Largest chunk read from the control stream at once; bounds per-read work.
const READ_CHUNK: usize = 4096;
/// Longest wait for a closing session's last frames to be acknowledged.
const LINGER: Duration = Duration::from_millis(500);

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
    let stream =
        tokio::time::timeout(shared.services.protocol.handshake_timeout, connection.accept_bi()).await;
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
    let (handle, commands) = SessionHandle::new(id);
    let now = shared.services.clock.now();
    let mut session = DeviceSession::new(shared.services.clone(), handle, now);
    // A stream opened in 1-RTT data means the handshake is complete; one opened in 0-RTT
    // data (a resumed device's `Hello`) waits for it.
    let handshake_done = if recv.is_0rtt() {
        session.opened_in_0rtt();
        Some(Box::pin(handshake_done))
    } else {
        session.handshake_confirmed(now);
        None
    };
    let mut driver = Driver {
        shared: &shared,
        connection,
        send,
        recv,
        session,
        commands,
        handshake: Some(guard),
        handshake_done,
        datagrams_read: 0,
        datagrams_dropped: 0,
    };
    driver.run().await;
    if driver.session.should_linger() {
        driver.linger().await;
    }
    driver.finish();
}

/// The quinn side of one session: moves bytes between the connection and the
/// [`DeviceSession`], which decides what they mean.
struct Driver<'a> {
    shared: &'a Shared,
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    session: DeviceSession,
    commands: Commands,
    /// Held while the session is not yet up: counts towards the handshakes in flight.
    handshake: Option<InPhase<'a>>,
    /// Resolves when the TLS handshake completes; gone once it has.
    handshake_done: Option<std::pin::Pin<Box<quinn::ZeroRttAccepted>>>,
    /// DATAGRAM frames read from quinn, and those counted as dropped by it.
    datagrams_read: u64,
    datagrams_dropped: u64,
}

impl Driver<'_> {
    async fn run(&mut self) {
        let clock = self.shared.services.clock;
        let mut shutdown = self.shared.shutdown.clone();
        let mut draining = *shutdown.borrow();
        if draining {
            self.session.shutdown();
        }
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
            self.flush().await;
            return;
        }
        loop {
            let deadline = self.session.poll_timeout().map(tokio::time::Instant::from_std);
            tokio::select! {
                chunk = self.recv.read_chunk(READ_CHUNK, true), if stream_open => match chunk {
                    Ok(Some(chunk)) => {
                        // A handshake that completed with these bytes counts before them: a
                        // Hello in 1-RTT data must not look like a 0-RTT one.
                        self.note_confirmed();
                        self.session.handle_stream_data(clock.now(), &chunk.bytes);
                    }
                    Ok(None) => {
                        stream_open = false;
                        self.session.handle_stream_finished();
                    }
                    Err(error) => return debug!(%error, "control stream ended"),
                },
                datagram = self.connection.read_datagram() => match datagram {
                    Ok(payload) => self.read_datagrams(&payload),
                    Err(error) => return debug!(%error, "connection ended"),
                },
                command = self.commands.recv() => self.session.handle_command(clock.now(), command),
                _ = sleep_until(deadline), if deadline.is_some() => self.session.handle_timeout(clock.now()),
                _ = confirmed(&mut self.handshake_done), if self.handshake_done.is_some() => {
                    self.handshake_done = None;
                    self.session.handshake_confirmed(clock.now());
                }
                _ = shutdown.wait_for(|stop| *stop), if !draining => {
                    draining = true;
                    self.session.shutdown();
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
                info!(%remote, "device migrated");
                self.session.path_changed();
            }
            while let Some(effect) = self.session.poll_effect() {
                match effect {
                    Effect::VerifyToken(check) => {
                        let result = self.shared.services.verify(&check.token);
                        self.session.token_verified(clock.now(), check, result);
                    }
                }
            }
            if self.session.is_up() {
                self.handshake = None;
            }
            if !self.flush().await || self.session.is_closed() {
                return;
            }
        }
    }

    /// Tells the session if the handshake has completed by now, without waiting for it.
    fn note_confirmed(&mut self) {
        let Some(done) = self.handshake_done.as_mut() else { return };
        if ready_now(done.as_mut()).is_some() {
            self.handshake_done = None;
            self.session.handshake_confirmed(self.shared.services.clock.now());
        }
    }

    /// Hands `first` and every datagram already waiting behind it to the session, then
    /// counts what quinn dropped: once its buffer is empty, every DATAGRAM frame it received
    /// up to the last look was either read here or dropped by it.
    ///
    /// quinn drops only when its buffer overflows, and an overflowed buffer is read here as
    /// a batch of many, so a batch of one (every heartbeat) cannot follow a drop: it skips
    /// the count, and with it `stats()`, which locks the connection and copies its counters.
    /// The count stays exact, since it is cumulative (and `finish` takes a last one).
    fn read_datagrams(&mut self, first: &[u8]) {
        let clock = self.shared.services.clock;
        self.handle_datagram(clock.now(), first);
        let mut batch = 1;
        while let Some(Ok(payload)) = ready_now(self.connection.read_datagram()) {
            self.handle_datagram(clock.now(), &payload);
            batch += 1;
        }
        if batch == 1 {
            return;
        }
        loop {
            let received = self.connection.stats().frame_rx.datagram;
            match ready_now(self.connection.read_datagram()) {
                Some(Ok(payload)) => self.handle_datagram(clock.now(), &payload),
                // Empty (or the connection ended: the next read says so).
                _ => return self.count_dropped(received),
            }
        }
    }

    fn handle_datagram(&mut self, now: std::time::Instant, payload: &[u8]) {
        self.datagrams_read += 1;
        self.session.handle_datagram(now, payload);
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
                            self.session.slow_reader();
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

    /// Closes the connection with the session's code. Dropping the session afterwards
    /// takes the device off the table.
    fn finish(&mut self) {
        // Datagrams still buffered now are never read either.
        self.count_dropped(self.connection.stats().frame_rx.datagram);
        let code = self.session.close_code();
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

/// Polls `future` once: its output if it is ready now, without waiting.
fn ready_now<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// Waits for the handshake to complete; pending forever once it has been seen.
async fn confirmed(done: &mut Option<std::pin::Pin<Box<quinn::ZeroRttAccepted>>>) {
    match done {
        Some(done) => {
            done.as_mut().await;
        }
        None => std::future::pending().await,
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
