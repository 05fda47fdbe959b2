//! The server end of a device session.
//!
//! One [`ServerSession`] per connected device. The daemon feeds it control-stream bytes,
//! datagrams and timer expiries, and drains events (for the presence table) and transmits
//! (for the connection). Authentication is the daemon's: on `Hello` the session emits
//! [`ServerEvent::Hello`] and waits for [`ServerSession::accept`] or
//! [`ServerSession::reject`], under the same handshake timer.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::ErrorCode;
use crate::frame::{Decoded, FrameDecoder};
use crate::limits::{MAX_HEARTBEAT, MAX_MESSAGE_LEN, MIN_HEARTBEAT};
use crate::message::*;
use crate::ping::{EchoKind, EchoPing, Ping, PingKind, seq_newer};
use crate::rate::{RateLimit, Verdict};
use crate::session::{Close, SessionError, Transmit, error_message, queue_echo, queue_frame, queue_ping};

/// Server-side session settings, shared by all sessions of a daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Time from the stream opening to `Welcome`: the `Hello` and its authentication.
    /// Default 10 s.
    pub handshake_timeout: Duration,
    /// Silence allowed past the heartbeat interval before the device counts as offline.
    /// Default 15 s.
    pub heartbeat_grace: Duration,
    /// Shortest heartbeat interval accepted. Default [`MIN_HEARTBEAT`] (5 s).
    pub min_heartbeat: Duration,
    /// Longest heartbeat interval accepted. Default [`MAX_HEARTBEAT`] (30 min).
    pub max_heartbeat: Duration,
    /// Longest visibility list accepted, at most [`MAX_VISIBILITY`](crate::limits::MAX_VISIBILITY). Default 64.
    pub max_visibility: u16,
    /// Longest status message accepted in bytes, at most [`MAX_MESSAGE_LEN`]. Default 256.
    pub max_message_len: u16,
    /// Control frames per second an active device may send. Default [`DEFAULT_FRAME_RATE`].
    pub frame_rate: u32,
    /// Control frames an active device may send at once. Default [`DEFAULT_FRAME_BURST`].
    pub frame_burst: u32,
    /// Heartbeat pings per second an active device may send. Default [`DEFAULT_PING_RATE`].
    pub ping_rate: u32,
    /// Heartbeat pings an active device may send at once. Default [`DEFAULT_PING_BURST`].
    pub ping_burst: u32,
}

/// Default control frames per second: frames are user actions (a status message, a
/// visibility change, an answer), a handful a minute for an honest device.
pub const DEFAULT_FRAME_RATE: u32 = 10;
/// Default control-frame burst: a reconnecting device's catch-up fits with room to spare.
pub const DEFAULT_FRAME_BURST: u32 = 50;
/// Default heartbeat pings per second: a heartbeat every 5 s at the most, plus one ping
/// per status change.
pub const DEFAULT_PING_RATE: u32 = 5;
/// Default ping burst.
pub const DEFAULT_PING_BURST: u32 = 20;

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            heartbeat_grace: Duration::from_secs(15),
            min_heartbeat: MIN_HEARTBEAT,
            max_heartbeat: MAX_HEARTBEAT,
            max_visibility: 64,
            max_message_len: MAX_MESSAGE_LEN as u16,
            frame_rate: DEFAULT_FRAME_RATE,
            frame_burst: DEFAULT_FRAME_BURST,
            ping_rate: DEFAULT_PING_RATE,
            ping_burst: DEFAULT_PING_BURST,
        }
    }
}

/// What the daemon supplies to accept an authenticated `Hello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accept {
    /// Identifies the session in logs on both ends.
    pub session_id: u64,
    /// The daemon's wall clock, Unix milliseconds.
    pub server_time_ms: u64,
    /// How long the device token stays valid; the session closes with `TOKEN_EXPIRED`
    /// when this runs out without a `Reauth`. `None` for a token without expiry.
    pub token_valid_for: Option<Duration>,
}

/// What a server session tells the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// A well-formed `Hello` within limits: authenticate it, then `accept` or `reject`.
    Hello(Hello),
    /// The device's status changed (from a ping or a `Status` frame). `message` is `Some`
    /// only when it came on the control stream, which is the only way to change it.
    StatusChanged {
        /// The new status.
        status: Status,
        /// The new idle flag.
        idle: bool,
        /// The new message, when it was sent.
        message: Option<StatusText>,
    },
    /// The device replaced its visibility list.
    Visibility(AppList),
    /// The user authorizes an app: answer with `authorized` or `denied`.
    Authorize(Authorize),
    /// The user revokes an app: answer with `revoked` or `denied`.
    Revoke(Revoke),
    /// The device presented a fresh token: verify it, then `renew_token` or `close`.
    Reauth(Token),
    /// The user answered a pending notification.
    NotifyResponse(NotifyResponse),
    /// A notification expired unanswered.
    NotificationMissed {
        /// The notification's id.
        id: u64,
    },
    /// Nothing heard for the heartbeat interval plus grace: the device counts as offline.
    Silent,
    /// Heard again after [`ServerEvent::Silent`]: back to its status.
    Alive,
    /// The session ended; flush transmits, then close the connection with `code`.
    Closed(Close),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitHello,
    Authenticating,
    Active,
    Closed,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::AwaitHello => "awaiting hello",
            Phase::Authenticating => "authenticating",
            Phase::Active => "active",
            Phase::Closed => "closed",
        }
    }
}

/// The server's state machine for one device session. Deterministic: the clock is an input.
#[derive(Debug)]
pub struct ServerSession {
    config: Arc<ServerConfig>,
    phase: Phase,
    decoder: FrameDecoder,
    /// Handshake deadline before `Active`; unused after.
    handshake_deadline: Instant,
    /// Accepted heartbeat interval.
    heartbeat: Duration,
    last_heard: Instant,
    silent: bool,
    token_deadline: Option<Instant>,
    status: Status,
    idle: bool,
    /// The status message, as last received on the control stream.
    message: StatusText,
    seq: u8,
    /// Pending notifications and when each becomes missed.
    pending: Vec<(u64, Instant)>,
    /// The echo a `Probe` asked for and when it is due; a newer probe replaces it, so a
    /// device can never make the server hold more than one.
    echo: Option<(Instant, EchoPing)>,
    bad_datagrams: u64,
    /// Well-formed pings dropped over the ping rate.
    limited_datagrams: u64,
    frames: RateLimit,
    pings: RateLimit,
    events: VecDeque<ServerEvent>,
    transmits: VecDeque<Transmit>,
}

impl ServerSession {
    /// A session whose control stream just opened at `now`.
    pub fn new(config: Arc<ServerConfig>, now: Instant) -> Self {
        let handshake_deadline = now + config.handshake_timeout;
        Self {
            frames: RateLimit::new(config.frame_rate, config.frame_burst, now),
            pings: RateLimit::new(config.ping_rate, config.ping_burst, now),
            limited_datagrams: 0,
            heartbeat: config.max_heartbeat,
            config,
            phase: Phase::AwaitHello,
            decoder: FrameDecoder::new(),
            handshake_deadline,
            last_heard: now,
            silent: false,
            token_deadline: None,
            status: Status::Online,
            idle: false,
            message: StatusText::default(),
            seq: 0,
            pending: Vec::new(),
            echo: None,
            bad_datagrams: 0,
            events: VecDeque::new(),
            transmits: VecDeque::new(),
        }
    }

    /// Bytes that arrived on the control stream. An active device over the frame rate is
    /// closed with `RATE_LIMITED`: control frames are reliable, so dropping one would lose
    /// state the device believes delivered.
    pub fn handle_stream_data(&mut self, now: Instant, mut data: &[u8]) {
        while self.phase != Phase::Closed {
            let decoded = self.decoder.decode(&mut data);
            if matches!(decoded, Ok(Some(_)))
                && self.phase == Phase::Active
                && self.frames.take(now) != Verdict::Allowed
            {
                return self.close(ErrorCode::RATE_LIMITED, "control frames over the rate limit");
            }
            match decoded {
                Ok(None) => return,
                Ok(Some(Decoded::Unknown { .. })) => self.heard(now),
                Ok(Some(Decoded::Message(message))) => self.handle_message(now, message),
                Err(error) => self.close(error.code(), &error.to_string()),
            }
        }
    }

    /// A DATAGRAM frame's payload. Undecodable datagrams are dropped and counted, never
    /// fatal: on an unreliable channel a bad datagram and a lost one must look the same.
    /// Heartbeats over the ping rate are dropped and counted too (no liveness, no ack, no
    /// status change); a device that keeps sending well over the rate is closed with
    /// `RATE_LIMITED`.
    pub fn handle_datagram(&mut self, now: Instant, payload: &[u8]) {
        if self.phase != Phase::Active {
            self.bad_datagrams += 1;
            return;
        }
        match Ping::decode(payload) {
            Ok(ping) if ping.kind == PingKind::Heartbeat => {
                if !self.ping_allowed(now) {
                    return;
                }
                self.heard(now);
                self.apply_ping_state(ping.status, ping.idle, ping.seq);
                if ping.ack_requested {
                    let ack = Ping {
                        kind: PingKind::Ack,
                        status: self.status,
                        idle: self.idle,
                        ack_requested: false,
                        seq: ping.seq,
                    };
                    queue_ping(&mut self.transmits, ack);
                }
            }
            _ => match EchoPing::decode(payload) {
                Ok(probe) if probe.kind == EchoKind::Probe && self.probe_delay_allowed(probe.delay_secs) => {
                    if !self.ping_allowed(now) {
                        return;
                    }
                    // A probe is a heartbeat that also asks for an echo.
                    self.heard(now);
                    self.apply_ping_state(probe.status, probe.idle, probe.seq);
                    let due = now + Duration::from_secs(u64::from(probe.delay_secs));
                    self.echo = Some((due, probe));
                }
                _ => self.bad_datagrams += 1,
            },
        }
    }

    /// The driver saw the device's address change (its NAT binding was lost and renewed,
    /// or it moved to another network): tells the device at once with an unsolicited
    /// `Echo` of delay 0, so that it stops trusting the heartbeat interval it learned.
    pub fn handle_path_change(&mut self) {
        if self.phase != Phase::Active {
            return;
        }
        let notice = EchoPing {
            kind: EchoKind::Echo,
            status: self.status,
            idle: self.idle,
            seq: self.seq,
            delay_secs: 0,
        };
        queue_echo(&mut self.transmits, notice);
    }

    /// Runs every timer that is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::AwaitHello | Phase::Authenticating => {
                if now >= self.handshake_deadline {
                    self.close(ErrorCode::HANDSHAKE_TIMEOUT, "no hello within the handshake timeout");
                }
            }
            Phase::Active => {
                if self.token_deadline.is_some_and(|deadline| now >= deadline) {
                    self.close(ErrorCode::TOKEN_EXPIRED, "device token expired without reauth");
                    return;
                }
                if let Some((_, probe)) = self.echo.filter(|&(due, _)| now >= due) {
                    self.echo = None;
                    let echo =
                        EchoPing { kind: EchoKind::Echo, status: self.status, idle: self.idle, ..probe };
                    queue_echo(&mut self.transmits, echo);
                }
                if !self.silent && now >= self.liveness_deadline() {
                    self.silent = true;
                    self.events.push_back(ServerEvent::Silent);
                }
                let events = &mut self.events;
                self.pending.retain(|&(id, expiry)| {
                    let live = now < expiry;
                    if !live {
                        events.push_back(ServerEvent::NotificationMissed { id });
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
            Phase::AwaitHello | Phase::Authenticating => Some(self.handshake_deadline),
            Phase::Active => {
                let liveness = (!self.silent).then(|| self.liveness_deadline());
                let expiry = self.pending.iter().map(|&(_, expiry)| expiry).min();
                let echo = self.echo.map(|(due, _)| due);
                [liveness, self.token_deadline, expiry, echo].into_iter().flatten().min()
            }
            Phase::Closed => None,
        }
    }

    /// The next event for the daemon.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// The next bytes to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Accepts an authenticated `Hello`: queues `Welcome` and starts the liveness timer.
    pub fn accept(&mut self, now: Instant, accept: Accept) -> Result<Welcome, SessionError> {
        self.expect(Phase::Authenticating)?;
        let welcome = Welcome {
            session_id: accept.session_id,
            heartbeat_ms: millis(self.heartbeat),
            grace_ms: millis(self.config.heartbeat_grace),
            max_visibility: self.config.max_visibility,
            max_message_len: self.config.max_message_len,
            server_time_ms: accept.server_time_ms,
        };
        queue_frame(&mut self.transmits, &Message::Welcome(welcome.clone()));
        self.phase = Phase::Active;
        self.last_heard = now;
        self.token_deadline = token_deadline(now, accept.token_valid_for);
        Ok(welcome)
    }

    /// Refuses a `Hello` (bad token, server busy): sends `Error` and closes.
    pub fn reject(&mut self, code: ErrorCode, reason: &str) {
        self.close(code, reason);
    }

    /// A `Reauth` token checked out: it is valid for `valid_for` from `now`.
    pub fn renew_token(&mut self, now: Instant, valid_for: Option<Duration>) {
        self.token_deadline = token_deadline(now, valid_for);
    }

    /// Answers an `Authorize` with the app's PUID for this user.
    pub fn authorized(&mut self, app_id: AppId, puid: Puid) -> Result<(), SessionError> {
        self.send(Message::Authorized(Authorized { app_id, puid }))
    }

    /// Answers a `Revoke`.
    pub fn revoked(&mut self, app_id: AppId) -> Result<(), SessionError> {
        self.send(Message::Revoked(Revoked { app_id }))
    }

    /// Refuses an `Authorize` or `Revoke`; the session goes on.
    pub fn denied(&mut self, app_id: AppId, code: ErrorCode, message: Reason) -> Result<(), SessionError> {
        self.send(Message::Denied(Denied { app_id, code, message }))
    }

    /// Sends a live notification; it becomes missed at `now + expires_in_ms` unless answered.
    pub fn notify(&mut self, now: Instant, notify: Notify) -> Result<(), SessionError> {
        self.expect(Phase::Active)?;
        let expiry = now + Duration::from_millis(u64::from(notify.expires_in_ms));
        self.pending.retain(|&(id, _)| id != notify.id);
        self.pending.push((notify.id, expiry));
        queue_frame(&mut self.transmits, &Message::Notify(notify));
        Ok(())
    }

    /// Withdraws a notification from the device (answered elsewhere, taken, withdrawn).
    pub fn cancel(&mut self, id: u64, reason: CancelReason) -> Result<(), SessionError> {
        self.pending.retain(|&(pending, _)| pending != id);
        self.send(Message::Cancel(Cancel { id, reason }))
    }

    /// Asks the device to go away and come back after `retry_after` (draining).
    pub fn go_away(&mut self, reason: Reason, retry_after: Duration) -> Result<(), SessionError> {
        let retry_after_ms = millis(retry_after);
        self.send(Message::GoAway(GoAway { reason, retry_after_ms }))
    }

    /// Ends the session from this end: queues `Error` and emits [`ServerEvent::Closed`].
    pub fn close(&mut self, code: ErrorCode, reason: &str) {
        if self.phase == Phase::Closed {
            return;
        }
        queue_frame(&mut self.transmits, &error_message(code, reason));
        self.finish(Close { code, reason: reason.to_owned(), by_peer: false });
    }

    /// The device's current status and idle flag as this session knows them.
    pub fn status(&self) -> (Status, bool) {
        (self.status, self.idle)
    }

    /// The last applied status sequence number.
    pub fn status_seq(&self) -> u8 {
        self.seq
    }

    /// Whether the device has been silent past its heartbeat grace.
    pub fn is_silent(&self) -> bool {
        self.silent
    }

    /// Whether `Welcome` has been sent and the session is not closed.
    pub fn is_active(&self) -> bool {
        self.phase == Phase::Active
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// The heartbeat interval the device is held to.
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// Datagrams dropped because they did not decode or arrived out of phase.
    pub fn bad_datagrams(&self) -> u64 {
        self.bad_datagrams
    }

    /// Well-formed heartbeats dropped because they came over the ping rate.
    pub fn limited_datagrams(&self) -> u64 {
        self.limited_datagrams
    }

    /// Counts a well-formed ping (heartbeat or probe) against the ping rate: false when it
    /// must be dropped. Sustained abuse closes the session with `RATE_LIMITED`.
    fn ping_allowed(&mut self, now: Instant) -> bool {
        match self.pings.take(now) {
            Verdict::Allowed => true,
            Verdict::Dropped => {
                self.limited_datagrams += 1;
                false
            }
            Verdict::Abusive => {
                self.limited_datagrams += 1;
                self.close(ErrorCode::RATE_LIMITED, "pings over the rate limit");
                false
            }
        }
    }

    /// A probe may ask for a delay of 1 s up to the longest heartbeat interval: a longer
    /// wait could not prove anything the session uses, and 0 is the path-change notice.
    fn probe_delay_allowed(&self, delay_secs: u16) -> bool {
        delay_secs > 0 && Duration::from_secs(u64::from(delay_secs)) <= self.config.max_heartbeat
    }

    /// A heartbeat or probe states the device's whole ping state: applied when its seq is
    /// newer than the session's.
    fn apply_ping_state(&mut self, status: Status, idle: bool, seq: u8) {
        if seq_newer(seq, self.seq) {
            self.seq = seq;
            self.status = status;
            self.idle = idle;
            self.events.push_back(ServerEvent::StatusChanged { status, idle, message: None });
        }
    }

    fn liveness_deadline(&self) -> Instant {
        self.last_heard + self.heartbeat + self.config.heartbeat_grace
    }

    fn heard(&mut self, now: Instant) {
        self.last_heard = now;
        if self.silent {
            self.silent = false;
            self.events.push_back(ServerEvent::Alive);
        }
    }

    fn expect(&self, phase: Phase) -> Result<(), SessionError> {
        if self.phase == phase { Ok(()) } else { Err(SessionError::WrongPhase { phase: self.phase.name() }) }
    }

    fn send(&mut self, message: Message) -> Result<(), SessionError> {
        self.expect(Phase::Active)?;
        queue_frame(&mut self.transmits, &message);
        Ok(())
    }

    fn finish(&mut self, close: Close) {
        self.phase = Phase::Closed;
        self.pending = Vec::new();
        self.echo = None;
        self.events.push_back(ServerEvent::Closed(close));
    }

    fn handle_message(&mut self, now: Instant, message: Message) {
        if message.direction() == Direction::ToDevice {
            let reason = format!("{} is sent by servers only", message.name());
            return self.close(ErrorCode::PROTOCOL_VIOLATION, &reason);
        }
        if let Message::Error(error) = message {
            let reason = error.message.into_string();
            return self.finish(Close { code: error.code, reason, by_peer: true });
        }
        match self.phase {
            Phase::AwaitHello => match message {
                Message::Hello(hello) => self.handle_hello(hello),
                other => {
                    let reason = format!("{} before hello", other.name());
                    self.close(ErrorCode::PROTOCOL_VIOLATION, &reason);
                }
            },
            Phase::Authenticating => {
                let reason = format!("{} before welcome", message.name());
                self.close(ErrorCode::PROTOCOL_VIOLATION, &reason);
            }
            Phase::Active => {
                self.heard(now);
                self.handle_active(message);
            }
            Phase::Closed => {}
        }
    }

    fn handle_hello(&mut self, hello: Hello) {
        if hello.version != PROTOCOL_VERSION {
            let reason = format!("version {} is not spoken here", hello.version);
            return self.close(ErrorCode::UNSUPPORTED_VERSION, &reason);
        }
        if let Err(reason) = self.check_limits(hello.visibility.len(), hello.message.len()) {
            return self.close(ErrorCode::LIMIT_EXCEEDED, &reason);
        }
        let requested = Duration::from_millis(u64::from(hello.heartbeat_ms));
        // max-then-min rather than clamp: a misconfigured min above max must not panic.
        self.heartbeat = requested.max(self.config.min_heartbeat).min(self.config.max_heartbeat);
        self.status = hello.status;
        self.idle = hello.idle;
        self.message = hello.message.clone();
        self.seq = hello.status_seq;
        self.phase = Phase::Authenticating;
        self.events.push_back(ServerEvent::Hello(hello));
    }

    fn handle_active(&mut self, message: Message) {
        match message {
            Message::Status(update) => {
                if let Err(reason) = self.check_limits(0, update.message.len()) {
                    return self.close(ErrorCode::LIMIT_EXCEEDED, &reason);
                }
                if seq_newer(update.seq, self.seq) {
                    self.seq = update.seq;
                    self.status = update.status;
                    self.idle = update.idle;
                    self.message = update.message.clone();
                    self.events.push_back(ServerEvent::StatusChanged {
                        status: update.status,
                        idle: update.idle,
                        message: Some(update.message),
                    });
                } else if update.message != self.message {
                    // A newer ping overtook this frame (it waited for a stream
                    // retransmission): its status and idle flag are stale, but its message is
                    // the newest the device sent, because messages travel only on the ordered
                    // stream. Apply the message alone, or it would be lost.
                    self.message = update.message.clone();
                    self.events.push_back(ServerEvent::StatusChanged {
                        status: self.status,
                        idle: self.idle,
                        message: Some(update.message),
                    });
                }
            }
            Message::Visibility(visibility) => {
                if let Err(reason) = self.check_limits(visibility.apps.len(), 0) {
                    return self.close(ErrorCode::LIMIT_EXCEEDED, &reason);
                }
                self.events.push_back(ServerEvent::Visibility(visibility.apps));
            }
            Message::Authorize(authorize) => self.events.push_back(ServerEvent::Authorize(authorize)),
            Message::Revoke(revoke) => self.events.push_back(ServerEvent::Revoke(revoke)),
            Message::Reauth(reauth) => self.events.push_back(ServerEvent::Reauth(reauth.token)),
            Message::NotifyResponse(response) => {
                // An answer after expiry (or to an unknown id) is late, not a violation.
                let before = self.pending.len();
                self.pending.retain(|&(id, _)| id != response.id);
                if self.pending.len() < before {
                    self.events.push_back(ServerEvent::NotifyResponse(response));
                }
            }
            Message::Hello(_) => self.close(ErrorCode::PROTOCOL_VIOLATION, "second hello"),
            // Never reach here: the caller closes on a server-to-device kind (§5.2) and ends
            // the session on `Error` first. Listed, not `_`, so that a new message kind is a
            // compile error here until it is handled.
            Message::Welcome(_)
            | Message::Authorized(_)
            | Message::Revoked(_)
            | Message::Denied(_)
            | Message::Notify(_)
            | Message::Cancel(_)
            | Message::GoAway(_)
            | Message::Error(_) => {}
        }
    }

    fn check_limits(&self, visibility: usize, message: usize) -> Result<(), String> {
        if visibility > usize::from(self.config.max_visibility) {
            return Err(format!(
                "visibility list of {visibility} apps exceeds {}",
                self.config.max_visibility
            ));
        }
        if message > usize::from(self.config.max_message_len) {
            return Err(format!("status message of {message} bytes exceeds {}", self.config.max_message_len));
        }
        Ok(())
    }
}

/// When a token valid for `valid` from `now` runs out. A validity too far ahead to
/// represent (a token that names an expiry centuries away) means no deadline, not a panic.
fn token_deadline(now: Instant, valid: Option<Duration>) -> Option<Instant> {
    valid.and_then(|valid| now.checked_add(valid))
}

/// Milliseconds as a u32, saturating (durations here are at most minutes).
pub(crate) fn millis(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_valid_for_ever_sets_no_deadline_and_does_not_panic() {
        let now = Instant::now();
        assert_eq!(token_deadline(now, Some(Duration::MAX)), None);
        assert_eq!(token_deadline(now, Some(Duration::from_secs(5))), Some(now + Duration::from_secs(5)));
        assert_eq!(token_deadline(now, None), None);
    }
}
