//! The server session target: a [`ServerSession`] driven by a program read from the input.
//!
//! The input starts with a configuration byte (0: the default configuration, else five more
//! bytes of one), followed by operations, each an opcode byte ([`op`]) and its operands.
//! After every operation the harness drains events and transmits and checks what the state
//! machine guarantees.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use presence_protocol::message::Direction;
use presence_protocol::*;

use crate::input::{Input, Script};
use crate::messages;

/// Opcodes of the server program.
pub mod op {
    /// `chunk: u8, len: u16, bytes`: raw control-stream bytes, fed `chunk` at a time (0: all).
    pub const STREAM: u8 = 0;
    /// `chunk: u8, frame`: a frame built by [`crate::messages::frame`].
    pub const FRAME: u8 = 1;
    /// `len: u8 (mod 8), bytes`: a raw datagram.
    pub const DATAGRAM: u8 = 2;
    /// `status: u8, flags: u8 (idle, ack), seq: u8`: a well-formed heartbeat ping.
    pub const HEARTBEAT: u8 = 3;
    /// `t: u16`: the clock moves on by `t` × 100 ms.
    pub const ADVANCE: u8 = 4;
    /// The clock moves to `poll_timeout()` (if any), then `handle_timeout`.
    pub const TIMEOUT: u8 = 5;
    /// `handle_timeout` at the current time.
    pub const TICK: u8 = 6;
    /// `session_id: u8, valid_for: u16 s (0: no expiry)`: `accept`.
    pub const ACCEPT: u8 = 7;
    /// `code: u16`: `reject`.
    pub const REJECT: u8 = 8;
    /// `valid_for: u16 s (0: no expiry)`: `renew_token`.
    pub const RENEW: u8 = 9;
    /// `which: u8 (authorized, revoked, denied), app: u8, code: u16`: answer the device.
    pub const ANSWER: u8 = 10;
    /// `id: u8, ttl: u16 × 10 ms`: `notify`.
    pub const NOTIFY: u8 = 11;
    /// `id: u8, reason: u8`: `cancel`.
    pub const CANCEL: u8 = 12;
    /// `retry_after: u16 ms`: `go_away`.
    pub const GO_AWAY: u8 = 13;
    /// `code: u16`: `close`.
    pub const CLOSE: u8 = 14;
    /// Number of opcodes; opcode bytes are taken modulo this.
    pub const COUNT: u8 = 15;
}

/// Runs one server program.
pub fn server_session(data: &[u8]) {
    run(data);
}

/// What a program did, for tests of the seeds.
#[derive(Debug)]
pub struct Outcome {
    /// Every event, in order.
    pub events: Vec<ServerEvent>,
    /// Every transmit, in order.
    pub transmits: Vec<Transmit>,
}

/// Runs one server program and returns what it did.
pub fn run(data: &[u8]) -> Outcome {
    let mut input = Input::new(data);
    let config = config(&mut input);
    let mut harness = Harness::new(config);
    while !input.is_empty() {
        harness.step(&mut input);
    }
    harness.outcome
}

fn config(input: &mut Input<'_>) -> ServerConfig {
    if input.u8() == 0 {
        return ServerConfig::default();
    }
    let min_heartbeat = Duration::from_secs(u64::from(input.u8()));
    ServerConfig {
        handshake_timeout: Duration::from_secs(u64::from(input.u8())),
        heartbeat_grace: Duration::from_secs(u64::from(input.u8())),
        min_heartbeat,
        // Possibly below the minimum: a misconfiguration the session must survive.
        max_heartbeat: Duration::from_secs(u64::from(input.u16())),
        max_visibility: u16::from(input.u8()),
        max_message_len: u16::from(input.u8()) * 2,
        // Zero included: the session must treat it as the smallest limit.
        frame_rate: u32::from(input.u8()),
        frame_burst: u32::from(input.u8()),
        ping_rate: u32::from(input.u8()),
        ping_burst: u32::from(input.u8()),
    }
}

struct Harness {
    session: ServerSession,
    config: Arc<ServerConfig>,
    now: Instant,
    /// A `Hello` event came.
    hello: bool,
    /// `accept` succeeded.
    accepted: bool,
    /// The `Welcome` frame `accept` promised and that has not been seen yet.
    welcome: Option<Welcome>,
    closed: bool,
    silent: bool,
    /// The server sent its `Error` frame: nothing may follow it.
    sent_error: bool,
    frames_sent: usize,
    /// Notifications sent and not answered, cancelled or missed, with their expiry.
    pending: HashMap<u64, Instant>,
    outcome: Outcome,
}

impl Harness {
    fn new(config: ServerConfig) -> Self {
        let config = Arc::new(config);
        let now = Instant::now();
        Self {
            session: ServerSession::new(config.clone(), now),
            config,
            now,
            hello: false,
            accepted: false,
            welcome: None,
            closed: false,
            silent: false,
            sent_error: false,
            frames_sent: 0,
            pending: HashMap::new(),
            outcome: Outcome { events: Vec::new(), transmits: Vec::new() },
        }
    }

    fn active(&self) -> bool {
        self.accepted && !self.closed
    }

    fn step(&mut self, input: &mut Input<'_>) {
        let was_closed = self.closed;
        let mut timed = false;
        let mut datagram = None;
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
                datagram = Some(input.bytes(len).to_vec());
            }
            op::HEARTBEAT => {
                let status = messages::status(input.u8());
                let flags = input.u8();
                let ping = Ping {
                    kind: PingKind::Heartbeat,
                    status,
                    idle: flags & 1 != 0,
                    ack_requested: flags & 2 != 0,
                    seq: input.u8(),
                };
                datagram = Some(ping.encode().to_vec());
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
            op::ACCEPT => {
                let accept = Accept {
                    session_id: u64::from(input.u8()),
                    server_time_ms: 1_767_225_600_000,
                    token_valid_for: validity(input.u16()),
                };
                let expected = self.hello && !self.accepted && !self.closed;
                let result = self.session.accept(self.now, accept.clone());
                assert_eq!(result.is_ok(), expected, "accept: {result:?}");
                if let Ok(welcome) = result {
                    assert_eq!(welcome.session_id, accept.session_id);
                    let heartbeat = self.session.heartbeat();
                    // The request, raised to the minimum, then lowered to the maximum.
                    assert!(heartbeat <= self.config.max_heartbeat);
                    assert!(heartbeat >= self.config.min_heartbeat.min(self.config.max_heartbeat));
                    assert_eq!(u128::from(welcome.heartbeat_ms), heartbeat.as_millis());
                    self.accepted = true;
                    self.welcome = Some(welcome);
                }
            }
            op::REJECT => {
                let code = ErrorCode(input.u16());
                self.session.reject(code, "rejected by the daemon");
            }
            op::RENEW => {
                let valid_for = validity(input.u16());
                self.session.renew_token(self.now, valid_for);
            }
            op::ANSWER => {
                let which = input.u8();
                let app: AppId = messages::ident("app", input.u8());
                let code = ErrorCode(input.u16());
                let result = match which % 3 {
                    0 => self.session.authorized(app, messages::ident("puid", which)),
                    1 => self.session.revoked(app),
                    _ => self.session.denied(app, code, messages::ident("denied", which)),
                };
                assert_eq!(result.is_ok(), self.active(), "answer: {result:?}");
            }
            op::NOTIFY => {
                let notify = Notify {
                    id: u64::from(input.u8()),
                    app_id: messages::ident("app", 1),
                    title: messages::ident("title", 1),
                    body: messages::ident("body", 1),
                    data: messages::ident("data", 1),
                    expires_in_ms: u32::from(input.u16()) * 10,
                };
                let (id, ttl) = (notify.id, Duration::from_millis(u64::from(notify.expires_in_ms)));
                let result = self.session.notify(self.now, notify);
                assert_eq!(result.is_ok(), self.active(), "notify: {result:?}");
                if result.is_ok() {
                    self.pending.insert(id, self.now + ttl);
                }
            }
            op::CANCEL => {
                let id = u64::from(input.u8());
                let result = self.session.cancel(id, messages::cancel_reason(input.u8()));
                assert_eq!(result.is_ok(), self.active(), "cancel: {result:?}");
                self.pending.remove(&id);
            }
            op::GO_AWAY => {
                let retry_after = Duration::from_millis(u64::from(input.u16()));
                let result = self.session.go_away(messages::ident("reason", 0), retry_after);
                assert_eq!(result.is_ok(), self.active(), "go_away: {result:?}");
            }
            _ => {
                let code = ErrorCode(input.u16());
                self.session.close(code, "closed by the daemon, reason long enough to matter: ééééé");
            }
        }
        // Whether the ping rate dropped the datagram (or closed the session over it).
        let mut limited = false;
        if let Some(payload) = &datagram {
            let (bad, over) = (self.session.bad_datagrams(), self.session.limited_datagrams());
            self.session.handle_datagram(self.now, payload);
            let heartbeat = Ping::decode(payload).ok().filter(|ping| ping.kind == PingKind::Heartbeat);
            let probe = EchoPing::decode(payload).ok().filter(|probe| {
                probe.kind == EchoKind::Probe
                    && probe.delay_secs > 0
                    && Duration::from_secs(u64::from(probe.delay_secs)) <= self.config.max_heartbeat
            });
            let counted = self.session.bad_datagrams() - bad;
            assert_eq!(counted, u64::from(!(self.active() && (heartbeat.is_some() || probe.is_some()))));
            limited = self.session.limited_datagrams() > over;
        }
        let (events, transmits) = self.drain(timed);
        if was_closed {
            assert!(events.is_empty() && transmits.is_empty(), "output after Closed");
        }
        if let Some(payload) = datagram.filter(|_| !limited) {
            // A steady-state heartbeat gets no answer; a status change gets exactly one Ack.
            // (A ping over the rate gets none, and may close the session.)
            let ping = Ping::decode(&payload).ok().filter(|ping| ping.kind == PingKind::Heartbeat);
            match ping {
                Some(ping) if ping.ack_requested && !was_closed && self.accepted => {
                    let [Transmit::Datagram(ack)] = &transmits[..] else {
                        panic!("one Ack expected, got {transmits:?}");
                    };
                    let ack = Ping::decode(ack).expect("Ack decodes");
                    assert_eq!((ack.kind, ack.seq), (PingKind::Ack, ping.seq));
                    assert_eq!((ack.status, ack.idle), self.session.status());
                }
                _ => assert!(transmits.is_empty(), "no answer expected, got {transmits:?}"),
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
        // Everything due has run: the next deadline lies strictly in the future.
        if let Some(next) = self.session.poll_timeout() {
            assert!(next > self.now, "poll_timeout {next:?} not after handle_timeout at {:?}", self.now);
        }
    }

    /// Drains and checks the session's output.
    fn drain(&mut self, timed: bool) -> (Vec<ServerEvent>, Vec<Transmit>) {
        let mut events = Vec::new();
        let mut last_status = None;
        while let Some(event) = self.session.poll_event() {
            assert!(!self.closed, "event after Closed: {event:?}");
            match &event {
                ServerEvent::Hello(hello) => {
                    assert!(!self.hello, "second Hello event");
                    self.hello = true;
                    assert_eq!(hello.version, PROTOCOL_VERSION);
                    assert!(hello.visibility.len() <= usize::from(self.config.max_visibility));
                    assert!(hello.message.len() <= usize::from(self.config.max_message_len));
                }
                ServerEvent::StatusChanged { status, idle, message } => {
                    assert!(self.accepted);
                    if let Some(message) = message {
                        assert!(message.len() <= usize::from(self.config.max_message_len));
                    }
                    last_status = Some((*status, *idle));
                }
                ServerEvent::Visibility(apps) => {
                    assert!(self.accepted);
                    assert!(apps.len() <= usize::from(self.config.max_visibility));
                }
                ServerEvent::Authorize(_) | ServerEvent::Revoke(_) | ServerEvent::Reauth(_) => {
                    assert!(self.accepted)
                }
                ServerEvent::NotifyResponse(response) => {
                    assert!(self.pending.remove(&response.id).is_some(), "answer to no pending notification");
                }
                ServerEvent::NotificationMissed { id } => {
                    assert!(timed, "a notification is missed only when a timer runs");
                    let expiry = self.pending.remove(id).expect("missed notification was pending");
                    assert!(self.now >= expiry, "missed before its expiry");
                }
                ServerEvent::Silent => {
                    assert!(timed && self.accepted && !self.silent, "Silent out of turn");
                    self.silent = true;
                }
                ServerEvent::Alive => {
                    assert!(self.silent, "Alive without Silent");
                    self.silent = false;
                }
                ServerEvent::Closed(_) => {
                    self.closed = true;
                    self.pending.clear();
                }
            }
            events.push(event);
        }
        if let Some(status) = last_status {
            assert_eq!(self.session.status(), status);
        }
        assert_eq!(self.session.is_closed(), self.closed);
        assert_eq!(self.session.is_active(), self.active());
        assert_eq!(self.session.is_silent(), self.silent);
        if self.closed {
            assert_eq!(self.session.poll_timeout(), None);
        }
        if timed && self.active() {
            // Every notification due by now has been reported missed.
            assert!(self.pending.values().all(|&expiry| expiry > self.now));
        }
        let mut transmits = Vec::new();
        while let Some(transmit) = self.session.poll_transmit() {
            assert!(!self.sent_error, "transmit after the Error frame: {transmit:?}");
            match &transmit {
                Transmit::Stream(bytes) => self.check_frame(bytes),
                // An Ack, or an Echo (a probe's, after its delay, or a path-change notice).
                Transmit::Datagram(bytes) => match Ping::decode(bytes) {
                    Ok(ping) => {
                        assert_eq!(ping.kind, PingKind::Ack);
                        assert!(!ping.ack_requested);
                    }
                    Err(_) => {
                        let echo = EchoPing::decode(bytes).expect("server pings decode");
                        assert_eq!(echo.kind, EchoKind::Echo);
                    }
                },
            }
            transmits.push(transmit);
        }
        (events, transmits)
    }

    fn check_frame(&mut self, bytes: &[u8]) {
        let mut input = bytes;
        let decoded = FrameDecoder::new().decode(&mut input).expect("server frames decode");
        assert!(input.is_empty(), "one frame per transmit");
        let Some(Decoded::Message(message)) = decoded else {
            panic!("server sent an incomplete or unknown frame: {decoded:?}");
        };
        assert_ne!(message.direction(), Direction::ToServer, "server sent {}", message.name());
        match &message {
            Message::Welcome(welcome) => {
                assert_eq!(self.frames_sent, 0, "Welcome comes first");
                assert_eq!(Some(welcome), self.welcome.take().as_ref());
            }
            Message::Error(_) => self.sent_error = true,
            other => assert!(self.frames_sent > 0, "{} before Welcome", other.name()),
        }
        self.frames_sent += 1;
    }
}

fn validity(seconds: u16) -> Option<Duration> {
    (seconds != 0).then(|| Duration::from_secs(u64::from(seconds)))
}

/// Seed programs: the paths a real session takes. Each is `(name, program)`.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let hello = messages::encode(&Message::Hello(messages::typical_hello()));
    let stream = |script: Script, chunk: u8, bytes: &[u8]| {
        script.u8(op::STREAM).u8(chunk).u16(bytes.len() as u16).bytes(bytes)
    };
    let frame = |script: Script, message: &Message| stream(script, 0, &messages::encode(message));
    // Default config, the typical Hello, accepted with a one-hour token.
    let active = || stream(Script::new().u8(0), 0, &hello).u8(op::ACCEPT).u8(7).u16(3600);
    let heartbeat = |script: Script, status: u8, flags: u8, seq: u8| {
        script.u8(op::HEARTBEAT).u8(status).u8(flags).u8(seq)
    };
    let advance = |script: Script, seconds: u16| script.u8(op::ADVANCE).u16(seconds * 10);
    let kinds = messages::every_kind();
    let kind = |name: &str| kinds.iter().find(|(n, _)| *n == name).expect("fixture").1.clone();

    vec![
        ("handshake", active().build()),
        ("hello_in_pieces", stream(Script::new().u8(0), 7, &hello).u8(op::ACCEPT).u8(1).u16(0).build()),
        ("handshake_timeout", stream(Script::new().u8(0), 0, &hello).u8(op::TIMEOUT).build()),
        ("reject", stream(Script::new().u8(0), 0, &hello).u8(op::REJECT).u16(6).build()),
        ("no_hello", Script::new().u8(0).u8(op::TIMEOUT).build()),
        ("custom_config", {
            let script = Script::new().u8(1).u8(5).u8(10).u8(3).u16(600).u8(8).u8(64);
            stream(script, 0, &hello).u8(op::ACCEPT).u8(2).u16(0).u8(op::TIMEOUT).build()
        }),
        ("heartbeats", {
            let mut script = active();
            for _ in 0..4 {
                script = heartbeat(advance(script, 60), 0, 0, 0);
            }
            script.build()
        }),
        ("status_ping_acked", heartbeat(advance(active(), 5), 1, 0b11, 1).build()),
        ("status_ping_repeated", heartbeat(heartbeat(active(), 2, 0b10, 1), 2, 0b10, 1).build()),
        ("status_frame", frame(active(), &kind("status")).build()),
        ("silent_then_alive", heartbeat(active().u8(op::TIMEOUT), 0, 0, 0).build()),
        ("token_expiry", active().u8(op::RENEW).u16(60).u8(op::TIMEOUT).u8(op::TIMEOUT).build()),
        ("reauth", frame(active(), &kind("reauth")).u8(op::RENEW).u16(7200).build()),
        ("visibility", frame(active(), &kind("visibility")).build()),
        (
            "authorize_revoke",
            frame(frame(active(), &kind("authorize")).u8(op::ANSWER).u8(0).u8(1).u16(0), &kind("revoke"))
                .u8(op::ANSWER)
                .u8(2)
                .u8(1)
                .u16(14)
                .build(),
        ),
        ("notify_answered", {
            let answer = Message::NotifyResponse(NotifyResponse { id: 9, response: Response::Accepted });
            frame(active().u8(op::NOTIFY).u8(9).u16(3000), &answer).build()
        }),
        ("notify_missed", active().u8(op::NOTIFY).u8(3).u16(500).u8(op::TIMEOUT).build()),
        ("notify_cancelled", active().u8(op::NOTIFY).u8(4).u16(3000).u8(op::CANCEL).u8(4).u8(1).build()),
        ("go_away_close", active().u8(op::GO_AWAY).u16(5000).u8(op::CLOSE).u16(12).build()),
        ("device_error", frame(active(), &kind("error")).build()),
        ("server_kind_from_device", frame(active(), &kind("notify")).build()),
        ("unknown_kind", stream(active(), 0, &[0x03, 0x2a, 0x01, 0x02]).build()),
        (
            "bad_datagrams",
            active().u8(op::DATAGRAM).u8(1).u8(0x40).u8(op::DATAGRAM).u8(2).u8(0xc0).u8(0).build(),
        ),
        (
            "structured_frames",
            // A Status {away, "aaaaa", seq 1}, then a frame of unknown kind 16 in 3-byte pieces.
            active()
                .u8(op::FRAME)
                .u8(0)
                .u8(0)
                .u8(2)
                .u8(1)
                .u8(0)
                .u16(5)
                .u8(0)
                .u8(1)
                .u8(op::FRAME)
                .u8(3)
                .u8(0x81)
                .u8(9)
                .u16(1)
                .build(),
        ),
    ]
}
