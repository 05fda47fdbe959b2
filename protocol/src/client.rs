//! The device end of a session.
//!
//! [`ClientSession`] sends `Hello`, waits for `Welcome`, then keeps the device present at
//! the lowest radio cost: one heartbeat datagram per interval and nothing else, a status
//! change as a datagram that asks for an acknowledgement (retried with backoff, then sent on
//! the control stream), and a local expiry for every notification shown.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub use crate::adaptive::{AdaptCause, AdaptiveHeartbeat};
use crate::adaptive::{Adaptive, Beat};
use crate::error::ErrorCode;
use crate::frame::{Decoded, FrameDecoder};
use crate::limits::{MAX_HEARTBEAT, MIN_HEARTBEAT};
use crate::message::*;
use crate::ping::{EchoKind, EchoPing, Ping, PingKind};
use crate::session::{Close, SessionError, Transmit, error_message, queue_echo, queue_frame, queue_ping};

/// Device-side session settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Time from `Hello` to `Welcome` before giving up. Default 10 s.
    pub handshake_timeout: Duration,
    /// Wait before the first retransmission of an unacknowledged status change; doubles on
    /// each try. Default 1 s.
    pub status_retransmit: Duration,
    /// Datagram tries of a status change (the first send included) before it goes on the
    /// control stream instead. Default 3.
    pub status_datagram_tries: u8,
    /// Learn the longest heartbeat interval the path's NAT allows, within these bounds,
    /// instead of heartbeating at the server's interval. Ask for `max` in `Hello`. Default
    /// off: a fixed interval.
    pub adaptive: Option<AdaptiveHeartbeat>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            status_retransmit: Duration::from_secs(1),
            status_datagram_tries: 3,
            adaptive: None,
        }
    }
}

/// What a client session tells the device application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The session is up; heartbeats have started.
    Welcome(Welcome),
    /// The server applied the status change with this sequence number.
    StatusAcked {
        /// The acknowledged status sequence number.
        seq: u8,
    },
    /// An `Authorize` succeeded.
    Authorized(Authorized),
    /// A `Revoke` took effect.
    Revoked(Revoked),
    /// An `Authorize` or `Revoke` was refused.
    Denied(Denied),
    /// A live notification to show; answer it with [`ClientSession::respond`].
    Notification(Notify),
    /// Stop showing a notification: answered elsewhere or taken (an expiry is
    /// [`NotificationExpired`](Self::NotificationExpired)).
    Cancelled(Cancel),
    /// A notification's time to live ran out unanswered: by this device's timer or by the
    /// server's `Cancel(Expired)`, whichever came first (told once either way).
    NotificationExpired {
        /// The notification's id.
        id: u64,
    },
    /// The adaptive heartbeat changed its interval or its proof.
    HeartbeatAdapted {
        /// The heartbeat interval now in force.
        interval: Duration,
        /// The longest silence proven survivable on this path.
        proven: Duration,
        /// What it learned.
        cause: AdaptCause,
    },
    /// The server is draining: reconnect after `retry_after_ms`.
    GoAway(GoAway),
    /// The session ended.
    Closed(Close),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Active,
    Closed,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::Active => "active",
            Phase::Closed => "closed",
        }
    }
}

/// A status change waiting for the server's acknowledgement.
#[derive(Debug, Clone, Copy)]
struct PendingChange {
    tries: u8,
    retry_at: Instant,
}

/// The device's state machine for one session. Deterministic: the clock is an input.
#[derive(Debug)]
pub struct ClientSession {
    config: ClientConfig,
    phase: Phase,
    decoder: FrameDecoder,
    handshake_deadline: Instant,
    heartbeat: Duration,
    next_heartbeat: Instant,
    status: Status,
    idle: bool,
    message: StatusText,
    seq: u8,
    /// The sequence number the server knows (from `Hello`) until the session is active.
    announced_seq: u8,
    change: Option<PendingChange>,
    /// The adaptive heartbeat's learning, once welcomed with it configured.
    adaptive: Option<Adaptive>,
    /// Notifications shown and when each expires.
    shown: Vec<(u64, Instant)>,
    events: VecDeque<ClientEvent>,
    transmits: VecDeque<Transmit>,
}

impl ClientSession {
    /// Starts a session at `now` by queueing `hello`.
    pub fn new(config: ClientConfig, now: Instant, hello: Hello) -> Self {
        let mut transmits = VecDeque::new();
        let handshake_deadline = now + config.handshake_timeout;
        let heartbeat = Duration::from_millis(u64::from(hello.heartbeat_ms));
        let session = Self {
            config,
            phase: Phase::Connecting,
            decoder: FrameDecoder::new(),
            handshake_deadline,
            heartbeat,
            next_heartbeat: handshake_deadline,
            status: hello.status,
            idle: hello.idle,
            message: hello.message.clone(),
            seq: hello.status_seq,
            announced_seq: hello.status_seq,
            change: None,
            adaptive: None,
            shown: Vec::new(),
            events: VecDeque::new(),
            transmits: VecDeque::new(),
        };
        queue_frame(&mut transmits, &Message::Hello(hello));
        Self { transmits, ..session }
    }

    /// Bytes that arrived on the control stream.
    pub fn handle_stream_data(&mut self, now: Instant, mut data: &[u8]) {
        while self.phase != Phase::Closed {
            match self.decoder.decode(&mut data) {
                Ok(None) => return,
                Ok(Some(Decoded::Unknown { .. })) => {}
                Ok(Some(Decoded::Message(message))) => {
                    if let Some(adaptive) = &mut self.adaptive {
                        adaptive.interrupted();
                    }
                    self.handle_message(now, message);
                }
                Err(error) => self.close_with(error.code(), &error.to_string()),
            }
        }
    }

    /// A DATAGRAM frame's payload; anything but an acknowledgement or an echo is ignored.
    pub fn handle_datagram(&mut self, now: Instant, payload: &[u8]) {
        let Ok(ping) = Ping::decode(payload) else {
            if let Ok(echo) = EchoPing::decode(payload) {
                self.handle_echo(now, echo);
            }
            return;
        };
        if ping.kind == PingKind::Ack && ping.seq == self.seq && self.change.is_some() {
            self.change = None;
            self.events.push_back(ClientEvent::StatusAcked { seq: ping.seq });
        }
    }

    /// Runs every timer that is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Connecting => {
                if now >= self.handshake_deadline {
                    self.close_with(ErrorCode::HANDSHAKE_TIMEOUT, "no welcome within the handshake timeout");
                }
            }
            Phase::Active => {
                if let Some(change) = self.change.filter(|change| now >= change.retry_at) {
                    if change.tries < self.config.status_datagram_tries {
                        self.send_change_ping(now, change.tries + 1);
                    } else {
                        self.change = None;
                        self.send_status_frame();
                    }
                }
                let missed = self.adaptive.as_mut().and_then(|adaptive| adaptive.check_deadline(now));
                if let Some(cause) = missed {
                    // The binding may be gone: open it again at once, at the safe interval.
                    self.adapted(cause);
                    self.send_ping(now, false);
                }
                if now >= self.next_heartbeat {
                    self.beat(now);
                }
                let events = &mut self.events;
                self.shown.retain(|&(id, expiry)| {
                    let live = now < expiry;
                    if !live {
                        events.push_back(ClientEvent::NotificationExpired { id });
                    }
                    live
                });
            }
            Phase::Closed => {}
        }
    }

    /// The earliest instant at which [`handle_timeout`](Self::handle_timeout) has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Connecting => Some(self.handshake_deadline),
            Phase::Active => {
                let retry = self.change.map(|change| change.retry_at);
                let expiry = self.shown.iter().map(|&(_, expiry)| expiry).min();
                [Some(self.next_heartbeat), retry, expiry].into_iter().flatten().min()
            }
            Phase::Closed => None,
        }
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// The next bytes to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Changes status, idle flag and message together. A change of message goes as one
    /// `Status` frame on the control stream (the only carrier of messages), taking the status
    /// with it; a change of status or idle flag alone is one datagram, retried until
    /// acknowledged. Before `Welcome` the change is sent when the session comes up.
    pub fn set_presence(&mut self, now: Instant, status: Status, idle: bool, message: StatusText) {
        let message_changed = message != self.message;
        if !message_changed && (status, idle) == (self.status, self.idle) {
            return;
        }
        self.status = status;
        self.idle = idle;
        self.message = message;
        self.seq = self.seq.wrapping_add(1);
        if self.phase != Phase::Active {
            return;
        }
        if message_changed {
            self.change = None;
            self.send_status_frame();
        } else {
            self.send_change_ping(now, 1);
        }
    }

    /// Changes status and idle flag, keeping the message.
    pub fn set_status(&mut self, now: Instant, status: Status, idle: bool) {
        self.set_presence(now, status, idle, self.message.clone());
    }

    /// Changes the message, keeping status and idle flag.
    pub fn set_message(&mut self, now: Instant, message: StatusText) {
        self.set_presence(now, self.status, self.idle, message);
    }

    /// Replaces the visibility list.
    pub fn set_visibility(&mut self, apps: AppList) -> Result<(), SessionError> {
        self.send(Message::Visibility(Visibility { apps }))
    }

    /// Authorizes an app; the answer comes as `Authorized` or `Denied`.
    pub fn authorize(&mut self, app_id: AppId, state: LinkState) -> Result<(), SessionError> {
        self.send(Message::Authorize(Authorize { app_id, state }))
    }

    /// Revokes an app; the answer comes as `Revoked` or `Denied`.
    pub fn revoke(&mut self, app_id: AppId) -> Result<(), SessionError> {
        self.send(Message::Revoke(Revoke { app_id }))
    }

    /// Presents a fresh token before the current one expires.
    pub fn reauth(&mut self, token: Token) -> Result<(), SessionError> {
        self.send(Message::Reauth(Reauth { token }))
    }

    /// Answers a notification that is shown and not expired.
    pub fn respond(&mut self, id: u64, response: Response) -> Result<(), SessionError> {
        self.expect_active()?;
        let before = self.shown.len();
        self.shown.retain(|&(shown, _)| shown != id);
        if self.shown.len() == before {
            return Err(SessionError::UnknownNotification { id });
        }
        self.send(Message::NotifyResponse(NotifyResponse { id, response }))
    }

    /// Ends the session cleanly; the server marks the device offline at once.
    pub fn close(&mut self) {
        self.close_with(ErrorCode::NO_ERROR, "closed by the device");
    }

    /// The current status, idle flag and message.
    pub fn status(&self) -> (Status, bool, &StatusText) {
        (self.status, self.idle, &self.message)
    }

    /// The current status sequence number (carry it into the next session's `Hello`).
    pub fn status_seq(&self) -> u8 {
        self.seq
    }

    /// Whether a status change still waits for its acknowledgement.
    pub fn change_pending(&self) -> bool {
        self.change.is_some()
    }

    /// The heartbeat interval in force: the server's answer once welcomed, or what the
    /// adaptive heartbeat learned.
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// Whether `Welcome` arrived and the session is not closed.
    pub fn is_active(&self) -> bool {
        self.phase == Phase::Active
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    fn send_ping(&mut self, now: Instant, ack_requested: bool) {
        let ping = Ping { ack_requested, ..Ping::heartbeat(self.status, self.idle, self.seq) };
        queue_ping(&mut self.transmits, ping);
        if let Some(adaptive) = &mut self.adaptive {
            adaptive.sent(now);
        }
        // Any ping proves liveness: the next heartbeat is due one interval after it.
        self.next_heartbeat = now + self.heartbeat;
    }

    /// The heartbeat timer fired: a heartbeat, or a probe when the adaptive heartbeat is
    /// learning (then nothing more until the echo or its deadline).
    fn beat(&mut self, now: Instant) {
        let Some(adaptive) = &mut self.adaptive else {
            return self.send_ping(now, false);
        };
        match adaptive.beat(now) {
            Beat::Heartbeat => {
                queue_ping(&mut self.transmits, Ping::heartbeat(self.status, self.idle, self.seq));
                self.next_heartbeat = now + self.heartbeat;
                if adaptive.take_settled() {
                    self.adapted(AdaptCause::Settled);
                }
            }
            Beat::Probe { delay_secs, with_heartbeat } => {
                if with_heartbeat {
                    queue_ping(&mut self.transmits, Ping::heartbeat(self.status, self.idle, self.seq));
                }
                let probe = EchoPing {
                    kind: EchoKind::Probe,
                    status: self.status,
                    idle: self.idle,
                    seq: self.seq,
                    delay_secs,
                };
                queue_echo(&mut self.transmits, probe);
                self.next_heartbeat = adaptive.probe_deadline().unwrap_or(now + self.heartbeat);
            }
        }
    }

    fn handle_echo(&mut self, now: Instant, echo: EchoPing) {
        if echo.kind != EchoKind::Echo || self.phase != Phase::Active {
            return;
        }
        let Some(cause) = self.adaptive.as_mut().and_then(|adaptive| adaptive.echoed(now, echo.delay_secs))
        else {
            return;
        };
        self.adapted(cause);
        if matches!(cause, AdaptCause::Echoed { .. }) {
            // The radio is awake for the echo: the next beat (a probe, or the heartbeat
            // that the server's liveness timer counts on) goes now.
            self.beat(now);
        } else {
            self.next_heartbeat = self.next_heartbeat.min(now + self.heartbeat);
        }
    }

    /// Takes the adaptive heartbeat's new interval and tells the application.
    fn adapted(&mut self, cause: AdaptCause) {
        if let Some(adaptive) = &self.adaptive {
            self.heartbeat = adaptive.interval();
            let (interval, proven) = (self.heartbeat, adaptive.proven());
            self.events.push_back(ClientEvent::HeartbeatAdapted { interval, proven, cause });
        }
    }

    fn send_change_ping(&mut self, now: Instant, tries: u8) {
        self.send_ping(now, true);
        let backoff = self.config.status_retransmit * (1u32 << (tries - 1).min(16));
        self.change = Some(PendingChange { tries, retry_at: now + backoff });
    }

    fn send_status_frame(&mut self) {
        let update = StatusUpdate {
            status: self.status,
            idle: self.idle,
            message: self.message.clone(),
            seq: self.seq,
        };
        queue_frame(&mut self.transmits, &Message::Status(update));
    }

    fn expect_active(&self) -> Result<(), SessionError> {
        match self.phase {
            Phase::Active => Ok(()),
            phase => Err(SessionError::WrongPhase { phase: phase.name() }),
        }
    }

    fn send(&mut self, message: Message) -> Result<(), SessionError> {
        self.expect_active()?;
        if let Some(adaptive) = &mut self.adaptive {
            adaptive.interrupted();
        }
        queue_frame(&mut self.transmits, &message);
        Ok(())
    }

    fn close_with(&mut self, code: ErrorCode, reason: &str) {
        if self.phase == Phase::Closed {
            return;
        }
        queue_frame(&mut self.transmits, &error_message(code, reason));
        self.finish(Close { code, reason: reason.to_owned(), by_peer: false });
    }

    fn finish(&mut self, close: Close) {
        self.phase = Phase::Closed;
        self.change = None;
        self.shown = Vec::new();
        self.events.push_back(ClientEvent::Closed(close));
    }

    fn handle_message(&mut self, now: Instant, message: Message) {
        if message.direction() == Direction::ToServer {
            let reason = format!("{} is sent by devices only", message.name());
            return self.close_with(ErrorCode::PROTOCOL_VIOLATION, &reason);
        }
        match (self.phase, message) {
            (_, Message::Error(error)) => {
                let reason = error.message.into_string();
                self.finish(Close { code: error.code, reason, by_peer: true });
            }
            (Phase::Connecting, Message::Welcome(welcome)) => self.handle_welcome(now, welcome),
            (Phase::Active, Message::Authorized(m)) => self.events.push_back(ClientEvent::Authorized(m)),
            (Phase::Active, Message::Revoked(m)) => self.events.push_back(ClientEvent::Revoked(m)),
            (Phase::Active, Message::Denied(m)) => self.events.push_back(ClientEvent::Denied(m)),
            (Phase::Active, Message::Notify(notify)) => {
                let expiry = now + Duration::from_millis(u64::from(notify.expires_in_ms));
                self.shown.retain(|&(id, _)| id != notify.id);
                self.shown.push((notify.id, expiry));
                self.events.push_back(ClientEvent::Notification(notify));
            }
            (Phase::Active, Message::Cancel(cancel)) => {
                let before = self.shown.len();
                self.shown.retain(|&(id, _)| id != cancel.id);
                let was_shown = self.shown.len() < before;
                if cancel.reason == CancelReason::Expired {
                    // The server's timer started before this device's (which runs from the
                    // `Notify`'s arrival), so its `Cancel(Expired)` usually comes first: it
                    // is the expiry, told once, the same way whichever timer fires first
                    // (PROTOCOL.md §9.7). After the local expiry it is late, and says nothing.
                    if was_shown {
                        self.events.push_back(ClientEvent::NotificationExpired { id: cancel.id });
                    }
                } else {
                    self.events.push_back(ClientEvent::Cancelled(cancel));
                }
            }
            (Phase::Active, Message::GoAway(go_away)) => self.events.push_back(ClientEvent::GoAway(go_away)),
            (Phase::Closed, _) => {}
            (phase, other) => {
                let reason = format!("{} while {}", other.name(), phase.name());
                self.close_with(ErrorCode::PROTOCOL_VIOLATION, &reason);
            }
        }
    }

    fn handle_welcome(&mut self, now: Instant, welcome: Welcome) {
        let heartbeat = Duration::from_millis(u64::from(welcome.heartbeat_ms));
        if !(MIN_HEARTBEAT..=MAX_HEARTBEAT).contains(&heartbeat) {
            // A zero interval would make the heartbeat timer fire forever without time
            // passing: a server may never hold a device outside the protocol's range.
            let reason = format!("welcome heartbeat of {} ms is out of range", welcome.heartbeat_ms);
            return self.close_with(ErrorCode::PROTOCOL_VIOLATION, &reason);
        }
        self.phase = Phase::Active;
        self.heartbeat = heartbeat;
        if let Some(config) = self.config.adaptive.clone() {
            let adaptive = Adaptive::new(config, heartbeat, now);
            self.heartbeat = adaptive.interval();
            self.adaptive = Some(adaptive);
        }
        self.next_heartbeat = now + self.heartbeat;
        self.events.push_back(ClientEvent::Welcome(welcome));
        if self.seq != self.announced_seq {
            // Changed while connecting: send the whole state reliably.
            self.send_status_frame();
        }
    }
}
