//! The client session target: a [`ClientSession`] driven by a program read from the input,
//! in the same style as [`crate::server`].
//!
//! The input starts with a byte choosing the start (0: default configuration and the typical
//! `Hello`, else a configuration and `Hello` read from the input), followed by operations,
//! each an opcode byte ([`op`]) and its operands.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use presence_protocol::message::Direction;
use presence_protocol::*;

use crate::input::{Input, Script};
use crate::messages;

/// Opcodes of the client program.
pub mod op {
    /// `chunk: u8, len: u16, bytes`: raw control-stream bytes, fed `chunk` at a time (0: all).
    pub const STREAM: u8 = 0;
    /// `chunk: u8, frame`: a frame built by [`crate::messages::frame`].
    pub const FRAME: u8 = 1;
    /// `len: u8 (mod 8), bytes`: a raw datagram.
    pub const DATAGRAM: u8 = 2;
    /// `status: u8, flags: u8 (idle, ack), seq: u8`: a well-formed `Ack` ping.
    pub const ACK: u8 = 3;
    /// `t: u16`: the clock moves on by `t` × 100 ms.
    pub const ADVANCE: u8 = 4;
    /// The clock moves to `poll_timeout()` (if any), then `handle_timeout`.
    pub const TIMEOUT: u8 = 5;
    /// `handle_timeout` at the current time.
    pub const TICK: u8 = 6;
    /// `status: u8, idle: u8`: `set_status`.
    pub const SET_STATUS: u8 = 7;
    /// `text`: `set_message`.
    pub const SET_MESSAGE: u8 = 8;
    /// `list`: `set_visibility`.
    pub const SET_VISIBILITY: u8 = 9;
    /// `app: u8, text`: `authorize`.
    pub const AUTHORIZE: u8 = 10;
    /// `app: u8`: `revoke`.
    pub const REVOKE: u8 = 11;
    /// `text`: `reauth`.
    pub const REAUTH: u8 = 12;
    /// `id: u8, dismissed: u8`: `respond`.
    pub const RESPOND: u8 = 13;
    /// `close`.
    pub const CLOSE: u8 = 14;
    /// `status: u8, idle: u8, text`: `set_presence`.
    pub const SET_PRESENCE: u8 = 15;
    /// Number of opcodes; opcode bytes are taken modulo this.
    pub const COUNT: u8 = 16;
}

/// Runs one client program.
pub fn client_session(data: &[u8]) {
    run(data);
}

/// What a program did, for tests of the seeds.
#[derive(Debug)]
pub struct Outcome {
    /// Every event, in order.
    pub events: Vec<ClientEvent>,
    /// Every transmit, in order.
    pub transmits: Vec<Transmit>,
}

/// Runs one client program and returns what it did.
pub fn run(data: &[u8]) -> Outcome {
    let mut input = Input::new(data);
    let (config, hello) = if input.u8() == 0 {
        (ClientConfig::default(), messages::typical_hello())
    } else {
        let config = ClientConfig {
            handshake_timeout: Duration::from_secs(u64::from(input.u8())),
            status_retransmit: Duration::from_millis(u64::from(input.u16())),
            status_datagram_tries: input.u8(),
            adaptive: adaptive(&mut input),
        };
        (config, messages::hello(&mut input))
    };
    let mut harness = Harness::new(config, hello);
    while !input.is_empty() {
        harness.step(&mut input);
    }
    harness.outcome
}

/// An adaptive heartbeat with fuzzed bounds (possibly inverted or zero), or none.
fn adaptive(input: &mut Input<'_>) -> Option<AdaptiveHeartbeat> {
    if input.u8() % 2 == 0 {
        return None;
    }
    Some(AdaptiveHeartbeat {
        min: Duration::from_secs(u64::from(input.u8())),
        max: Duration::from_secs(u64::from(input.u16())),
        growth_percent: u32::from(input.u16()),
        margin_percent: u32::from(input.u8()),
        echo_slack: Duration::from_millis(u64::from(input.u16())),
        resolution: Duration::from_millis(u64::from(input.u16())),
        reprobe_after: Duration::from_secs(u64::from(input.u16())),
    })
}

struct Harness {
    session: ClientSession,
    config: ClientConfig,
    now: Instant,
    welcomed: bool,
    closed: bool,
    /// The device sent its `Error` frame: nothing may follow it.
    sent_error: bool,
    frames_sent: usize,
    /// Notifications shown and not answered, cancelled or expired, with their expiry.
    shown: HashMap<u64, Instant>,
    outcome: Outcome,
}

impl Harness {
    fn new(config: ClientConfig, hello: Hello) -> Self {
        let now = Instant::now();
        let mut harness = Self {
            session: ClientSession::new(config.clone(), now, hello.clone()),
            config,
            now,
            welcomed: false,
            closed: false,
            sent_error: false,
            frames_sent: 0,
            shown: HashMap::new(),
            outcome: Outcome { events: Vec::new(), transmits: Vec::new() },
        };
        let (events, transmits) = harness.drain(false, false);
        assert!(events.is_empty());
        assert!(matches!(&transmits[..], [Transmit::Stream(_)]), "one Hello: {transmits:?}");
        assert_eq!(harness.session.status_seq(), hello.status_seq);
        harness.outcome.transmits.extend(transmits);
        harness
    }

    fn active(&self) -> bool {
        self.welcomed && !self.closed
    }

    fn step(&mut self, input: &mut Input<'_>) {
        let was_closed = self.closed;
        let was_pending = self.session.change_pending();
        let before = (self.session.status().0, self.session.status().1, self.session.status().2.clone());
        let seq_before = self.session.status_seq();
        let mut timed = false;
        // The presence (status, idle flag, message) a set_* call asked for.
        let mut presence_call = None;
        match input.u8() % op::COUNT {
            op::STREAM => {
                let chunk = input.u8();
                let len = input.u16();
                let bytes = input.bytes(usize::from(len));
                self.feed(chunk, bytes);
            }
            op::FRAME => {
                let chunk = input.u8();
                let frame = messages::frame(input);
                self.feed(chunk, &frame);
            }
            op::DATAGRAM => {
                let len = usize::from(input.u8() % 8);
                let payload = input.bytes(len);
                self.session.handle_datagram(self.now, payload);
            }
            op::ACK => {
                let status = messages::status(input.u8());
                let flags = input.u8();
                let ping = Ping {
                    kind: PingKind::Ack,
                    status,
                    idle: flags & 1 != 0,
                    ack_requested: flags & 2 != 0,
                    seq: input.u8(),
                };
                self.session.handle_datagram(self.now, &ping.encode());
            }
            op::ADVANCE => self.now += Duration::from_millis(u64::from(input.u16()) * 100),
            op::TIMEOUT => {
                if let Some(deadline) = self.session.poll_timeout() {
                    self.now = self.now.max(deadline);
                }
                self.timeout();
                timed = true;
            }
            op::TICK => {
                self.timeout();
                timed = true;
            }
            op::SET_STATUS => {
                let status = messages::status(input.u8());
                let idle = input.bool();
                self.session.set_status(self.now, status, idle);
                presence_call = Some((status, idle, before.2.clone()));
            }
            op::SET_MESSAGE => {
                let message: StatusText = messages::text(input);
                self.session.set_message(self.now, message.clone());
                presence_call = Some((before.0, before.1, message));
            }
            op::SET_PRESENCE => {
                let status = messages::status(input.u8());
                let idle = input.bool();
                let message: StatusText = messages::text(input);
                self.session.set_presence(self.now, status, idle, message.clone());
                presence_call = Some((status, idle, message));
            }
            op::SET_VISIBILITY => {
                let result = self.session.set_visibility(messages::app_list(input));
                assert_eq!(result.is_ok(), self.active(), "set_visibility: {result:?}");
            }
            op::AUTHORIZE => {
                let app = messages::ident("app", input.u8());
                let result = self.session.authorize(app, messages::text(input));
                assert_eq!(result.is_ok(), self.active(), "authorize: {result:?}");
            }
            op::REVOKE => {
                let result = self.session.revoke(messages::ident("app", input.u8()));
                assert_eq!(result.is_ok(), self.active(), "revoke: {result:?}");
            }
            op::REAUTH => {
                let result = self.session.reauth(messages::text(input));
                assert_eq!(result.is_ok(), self.active(), "reauth: {result:?}");
            }
            op::RESPOND => {
                let id = u64::from(input.u8());
                let response = if input.bool() { Response::Dismissed } else { Response::Accepted };
                let result = self.session.respond(id, response);
                let expected = self.active() && self.shown.contains_key(&id);
                assert_eq!(result.is_ok(), expected, "respond: {result:?}");
                self.shown.remove(&id);
            }
            op::CLOSE => self.session.close(),
            _ => unreachable!("opcodes are taken modulo COUNT"),
        }
        let (events, transmits) = self.drain(timed, was_pending);
        if was_closed {
            assert!(events.is_empty() && transmits.is_empty(), "output after Closed");
        }
        if let Some(call) = presence_call {
            let (status, idle, message) = self.session.status();
            assert_eq!((status, idle, message), (call.0, call.1, &call.2));
            let message_changed = before.2 != call.2;
            let changed = message_changed || (before.0, before.1) != (call.0, call.1);
            assert_eq!(self.session.status_seq(), seq_before.wrapping_add(u8::from(changed)));
            if changed && self.active() && message_changed {
                // A message travels only on the control stream: one Status frame, no Ack.
                assert!(matches!(&transmits[..], [Transmit::Stream(_)]), "one Status: {transmits:?}");
                assert!(!self.session.change_pending());
            } else if changed && self.active() {
                // A status change alone is one datagram that asks for an acknowledgement.
                let [Transmit::Datagram(ping)] = &transmits[..] else {
                    panic!("one change ping expected, got {transmits:?}");
                };
                let ping = Ping::decode(ping).expect("ping decodes");
                assert!(ping.ack_requested && self.session.change_pending());
                assert_eq!((ping.status, ping.idle, ping.seq), (status, idle, self.session.status_seq()));
            } else {
                assert!(transmits.is_empty(), "nothing sent: {transmits:?}");
            }
        }
        self.outcome.events.extend(events);
        self.outcome.transmits.extend(transmits);
    }

    fn feed(&mut self, chunk: u8, bytes: &[u8]) {
        let chunk = if chunk == 0 { bytes.len().max(1) } else { usize::from(chunk) };
        for piece in bytes.chunks(chunk) {
            self.session.handle_stream_data(self.now, piece);
        }
    }

    fn timeout(&mut self) {
        self.session.handle_timeout(self.now);
        if let Some(next) = self.session.poll_timeout() {
            assert!(next >= self.now, "poll_timeout {next:?} before now {:?}", self.now);
            // With a zero retransmit interval a status change stays due after it ran (for a
            // bounded number of tries); otherwise everything due has run.
            if self.config.status_retransmit > Duration::ZERO {
                assert!(next > self.now, "poll_timeout not after handle_timeout");
            }
        }
    }

    /// Drains and checks the session's output.
    fn drain(&mut self, timed: bool, was_pending: bool) -> (Vec<ClientEvent>, Vec<Transmit>) {
        let mut events = Vec::new();
        while let Some(event) = self.session.poll_event() {
            assert!(!self.closed, "event after Closed: {event:?}");
            match &event {
                ClientEvent::Welcome(welcome) => {
                    assert!(!self.welcomed, "second Welcome");
                    self.welcomed = true;
                    let heartbeat = Duration::from_millis(u64::from(welcome.heartbeat_ms));
                    assert!((limits::MIN_HEARTBEAT..=limits::MAX_HEARTBEAT).contains(&heartbeat));
                    if self.config.adaptive.is_none() {
                        assert_eq!(self.session.heartbeat(), heartbeat);
                    } else {
                        // The adaptive heartbeat starts at its lower bound (1 s at least) and
                        // never exceeds what the server holds the device to.
                        let learned = self.session.heartbeat();
                        assert!(learned >= Duration::from_secs(1) && learned <= heartbeat, "{learned:?}");
                    }
                }
                ClientEvent::StatusAcked { seq } => {
                    assert!(was_pending, "Ack without a pending change");
                    assert_eq!(*seq, self.session.status_seq());
                    assert!(!self.session.change_pending());
                }
                ClientEvent::Authorized(_)
                | ClientEvent::Revoked(_)
                | ClientEvent::Denied(_)
                | ClientEvent::GoAway(_) => assert!(self.welcomed),
                ClientEvent::Notification(notify) => {
                    assert!(self.welcomed);
                    let ttl = Duration::from_millis(u64::from(notify.expires_in_ms));
                    self.shown.insert(notify.id, self.now + ttl);
                }
                ClientEvent::Cancelled(cancel) => {
                    assert!(self.welcomed);
                    self.shown.remove(&cancel.id);
                }
                ClientEvent::NotificationExpired { id } => {
                    // Told once, for a shown notification: by the device's timer (never
                    // early), or by a `Cancel(Expired)` frame from the server.
                    let expiry = self.shown.remove(id).expect("expired notification was shown");
                    if timed {
                        assert!(self.now >= expiry, "expired early");
                    }
                }
                ClientEvent::Closed(_) => {
                    self.closed = true;
                    self.shown.clear();
                }
                _ => {}
            }
            events.push(event);
        }
        assert_eq!(self.session.is_closed(), self.closed);
        assert_eq!(self.session.is_active(), self.active());
        if self.closed {
            assert_eq!(self.session.poll_timeout(), None);
            assert!(!self.session.change_pending());
        }
        if timed && self.active() {
            assert!(self.shown.values().all(|&expiry| expiry > self.now));
        }
        let mut transmits = Vec::new();
        while let Some(transmit) = self.session.poll_transmit() {
            assert!(!self.sent_error, "transmit after the Error frame: {transmit:?}");
            match &transmit {
                Transmit::Stream(bytes) => self.check_frame(bytes),
                Transmit::Datagram(bytes) => {
                    assert!(self.active(), "ping outside an active session");
                    // A heartbeat, or (adaptive heartbeat only) a Probe asking for an echo.
                    match Ping::decode(bytes) {
                        Ok(ping) => assert_eq!(ping.kind, PingKind::Heartbeat),
                        Err(_) => {
                            assert!(self.config.adaptive.is_some(), "a probe without an adaptive heartbeat");
                            let probe = EchoPing::decode(bytes).expect("client pings decode");
                            assert_eq!(probe.kind, EchoKind::Probe);
                            assert!(probe.delay_secs > 0, "a probe asks for a delay");
                        }
                    }
                }
            }
            transmits.push(transmit);
        }
        (events, transmits)
    }

    fn check_frame(&mut self, bytes: &[u8]) {
        let mut input = bytes;
        let decoded = FrameDecoder::new().decode(&mut input).expect("client frames decode");
        assert!(input.is_empty(), "one frame per transmit");
        let Some(Decoded::Message(message)) = decoded else {
            panic!("client sent an incomplete or unknown frame: {decoded:?}");
        };
        assert_ne!(message.direction(), Direction::ToDevice, "client sent {}", message.name());
        match &message {
            Message::Hello(_) => assert_eq!(self.frames_sent, 0, "Hello comes first, once"),
            Message::Error(_) => self.sent_error = true,
            Message::Status(update) => {
                assert!(self.welcomed, "Status before Welcome");
                let (status, idle, text) = self.session.status();
                assert_eq!((update.status, update.idle, &update.message), (status, idle, text));
                assert_eq!(update.seq, self.session.status_seq());
            }
            other => assert!(self.welcomed, "{} before Welcome", other.name()),
        }
        self.frames_sent += 1;
    }
}

/// Seed programs: the paths a real session takes. Each is `(name, program)`.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let kinds = messages::every_kind();
    let kind = |name: &str| kinds.iter().find(|(n, _)| *n == name).expect("fixture").1.clone();
    let stream = |script: Script, chunk: u8, bytes: &[u8]| {
        script.u8(op::STREAM).u8(chunk).u16(bytes.len() as u16).bytes(bytes)
    };
    let frame = |script: Script, message: &Message| stream(script, 0, &messages::encode(message));
    let welcome = messages::encode(&kind("welcome"));
    let active = || stream(Script::new().u8(0), 0, &welcome);
    let ack = |script: Script, seq: u8| script.u8(op::ACK).u8(1).u8(0).u8(seq);
    let notify = kind("notify");

    vec![
        ("welcome", active().build()),
        ("welcome_in_pieces", stream(Script::new().u8(0), 5, &welcome).build()),
        ("handshake_timeout", Script::new().u8(0).u8(op::TIMEOUT).build()),
        ("custom_start", {
            // Config (10 s, 500 ms, 2 tries), then a Hello with a short token and one app.
            let script = Script::new().u8(1).u8(10).u16(500).u8(2);
            let script = script.u8(0).u16(40).u8(0).u16(8).u8(0).u8(1).u8(0).u16(0).u8(0).u8(1);
            stream(script.u32(30_000).u8(3), 0, &welcome).u8(op::TIMEOUT).build()
        }),
        ("heartbeats", active().u8(op::TIMEOUT).u8(op::TIMEOUT).u8(op::TIMEOUT).build()),
        ("status_acked", ack(active().u8(op::SET_STATUS).u8(1).u8(0), 1).build()),
        (
            "status_retried_then_frame",
            active().u8(op::SET_STATUS).u8(2).u8(1).u8(op::TIMEOUT).u8(op::TIMEOUT).u8(op::TIMEOUT).build(),
        ),
        (
            "status_before_welcome",
            stream(Script::new().u8(0).u8(op::SET_STATUS).u8(1).u8(1), 0, &welcome).build(),
        ),
        ("message", active().u8(op::SET_MESSAGE).u16(12).u8(1).build()),
        (
            "presence",
            active()
                .u8(op::SET_PRESENCE)
                .u8(2)
                .u8(0)
                .u16(20)
                .u8(0)
                .u8(op::SET_PRESENCE)
                .u8(1)
                .u8(1)
                .u16(20)
                .u8(0)
                .build(),
        ),
        ("notify_accepted", frame(active(), &notify).u8(op::RESPOND).u8(0x91).u8(0).build()),
        ("notify_expired", frame(active(), &notify).u8(op::TIMEOUT).u8(op::RESPOND).u8(0x91).u8(1).build()),
        ("notify_cancelled", frame(frame(active(), &notify), &kind("cancel")).build()),
        ("authorize", frame(active().u8(op::AUTHORIZE).u8(1).u16(11).u8(0), &kind("authorized")).build()),
        ("revoke", frame(active().u8(op::REVOKE).u8(2), &kind("revoked")).build()),
        ("denied", frame(active().u8(op::AUTHORIZE).u8(3).u16(0).u8(0), &kind("denied")).build()),
        ("visibility_reauth", active().u8(op::SET_VISIBILITY).u8(3).u8(op::REAUTH).u16(300).u8(0).build()),
        ("go_away", frame(active(), &kind("go_away")).u8(op::CLOSE).build()),
        ("server_error", frame(active(), &kind("error")).build()),
        ("device_kind_from_server", frame(active(), &kind("hello")).build()),
        ("unknown_kind", stream(active(), 0, &[0x02, 0x63, 0x00]).build()),
        (
            "bad_datagrams",
            active().u8(op::DATAGRAM).u8(3).bytes(&[0x41, 0, 0]).u8(op::DATAGRAM).u8(0).build(),
        ),
    ]
}
