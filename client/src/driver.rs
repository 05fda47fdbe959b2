//! The client's background task: one connection at a time, reconnecting with backoff.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use presence_protocol::{
    AppId, AppList, ClientEvent, ClientSession, DeviceId, ErrorCode, Hello, LinkState, PROTOCOL_VERSION,
    Ping, Status, StatusText, Token, Transmit,
};
use quinn::ConnectionError;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::{ClientError, ClientOptions, Command, Event};

/// Largest chunk read from the control stream at once.
const READ_CHUNK: usize = 4096;

/// How a session ended, and what to do next.
enum Outcome {
    /// The application closed the client.
    Closed,
    /// Retrying cannot help (refused token, replaced by a newer session of this device).
    Fatal { code: Option<ErrorCode>, reason: String },
    /// Try again, after `after` if the server said when.
    Retry { code: Option<ErrorCode>, reason: String, after: Option<Duration>, was_up: bool },
}

/// The idle policy's state.
#[derive(Debug)]
struct Idle {
    last_activity: Instant,
    /// The status the policy chose, while it is in force.
    auto: Option<Status>,
}

pub(crate) struct Driver {
    options: ClientOptions,
    endpoint: quinn::Endpoint,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    device_id: DeviceId,
    token: Token,
    /// The status the user chose.
    chosen: Status,
    message: StatusText,
    visibility: Vec<String>,
    seq: u8,
    idle: Idle,
    close_ack: Option<tokio::sync::oneshot::Sender<()>>,
    /// The visibility list the current session's Hello carried.
    sent_visibility: Vec<String>,
    /// Authorize and revoke requests made while disconnected, sent after the next Welcome.
    deferred: Vec<Deferred>,
    /// Which of `options.servers` the next attempt goes to (always in range: it moves on
    /// modulo their number, which `new` checked is not zero).
    current: usize,
}

/// A request that waits for the next session.
#[derive(Debug)]
enum Deferred {
    Authorize(AppId, LinkState),
    Revoke(AppId),
}

impl Driver {
    pub(crate) fn new(
        options: ClientOptions,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
    ) -> Result<Driver, ClientError> {
        let invalid = |what: &str, e: &dyn std::fmt::Display| ClientError::Options(format!("{what}: {e}"));
        let token = Token::new(options.token.clone()).map_err(|e| invalid("token", &e))?;
        let device = match &options.device_id {
            Some(device) => device.clone(),
            None => device_claim(&options.token).ok_or_else(|| {
                ClientError::Options("no device id given and the token has no did claim".into())
            })?,
        };
        let device_id = DeviceId::new(device).map_err(|e| invalid("device id", &e))?;
        let message = StatusText::new(options.message.clone()).map_err(|e| invalid("message", &e))?;
        app_list(&options.visibility).map_err(|e| ClientError::Options(format!("visibility: {e}")))?;
        if options.servers.is_empty() {
            return Err(ClientError::Options("no server address given".into()));
        }
        // One endpoint for every server (it keeps the TLS tickets): dual-stack when any is
        // IPv6, which reaches IPv4 servers too.
        let bind = options.bind.unwrap_or_else(|| {
            if options.servers.iter().any(std::net::SocketAddr::is_ipv6) {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            } else {
                ([0, 0, 0, 0], 0).into()
            }
        });
        let endpoint = crate::transport::endpoint(bind, &options.roots)?;
        Ok(Driver {
            chosen: options.status,
            visibility: options.visibility.clone(),
            endpoint,
            commands,
            events,
            device_id,
            token,
            message,
            seq: 0,
            idle: Idle { last_activity: Instant::now(), auto: None },
            close_ack: None,
            sent_visibility: Vec::new(),
            deferred: Vec::new(),
            current: 0,
            options,
        })
    }

    pub(crate) async fn run(mut self) {
        let mut attempt = 0u32;
        loop {
            let outcome = self.session().await;
            let (code, reason, retry_in) = match outcome {
                Outcome::Closed => break,
                Outcome::Fatal { code, reason } => (code, reason, None),
                Outcome::Retry { code, reason, after, was_up } => {
                    if was_up {
                        attempt = 0;
                    }
                    attempt = attempt.saturating_add(1);
                    // The next attempt goes to the next server (the same when there is one).
                    self.current = (self.current + 1) % self.options.servers.len();
                    let servers = self.options.servers.len();
                    let delay = after.unwrap_or_else(|| {
                        crate::options::next_attempt(&self.options.backoff, servers, attempt)
                    });
                    (code, reason, Some(delay))
                }
            };
            let _ = self.events.send(Event::Down { reason, code, retry_in }).await;
            let Some(delay) = retry_in else { break };
            if !self.wait(delay).await {
                break;
            }
        }
        // Let the CONNECTION_CLOSE reach the server before the endpoint goes away.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        if let Some(ack) = self.close_ack.take() {
            let _ = ack.send(());
        }
    }

    /// Sleeps `delay` while still taking commands; false if the application closed.
    async fn wait(&mut self, delay: Duration) -> bool {
        let until = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return true,
                command = self.commands.recv() => match command {
                    None => return false,
                    Some(Command::Close(ack)) => {
                        self.close_ack = Some(ack);
                        return false;
                    }
                    Some(command) => self.apply_offline(command),
                },
            }
        }
    }

    fn hello(&self) -> Hello {
        let status = self.idle.auto.unwrap_or(self.chosen);
        Hello {
            version: PROTOCOL_VERSION,
            token: self.token.clone(),
            device_id: self.device_id.clone(),
            status,
            idle: self.idle.auto.is_some(),
            message: self.message.clone(),
            visibility: app_list(&self.visibility).unwrap_or_default(),
            heartbeat_ms: u32::try_from(self.options.requested_heartbeat().as_millis()).unwrap_or(u32::MAX),
            status_seq: self.seq,
        }
    }

    async fn session(&mut self) -> Outcome {
        let retry = |reason: String| Outcome::Retry { code: None, reason, after: None, was_up: false };
        let server = self.options.servers[self.current];
        let connecting = match self.endpoint.connect(server, &self.options.server_name) {
            Ok(connecting) => connecting,
            Err(error) => return Outcome::Fatal { code: None, reason: format!("cannot connect: {error}") },
        };
        let handshake = self.options.session.handshake_timeout;
        let (connection, early) = match connecting.into_0rtt() {
            Ok((connection, accepted)) => (connection, Some(accepted)),
            Err(connecting) => match tokio::time::timeout(handshake, connecting).await {
                Ok(Ok(connection)) => (connection, None),
                Ok(Err(error)) => return connection_outcome(error, false),
                Err(_) => return retry("handshake timed out".into()),
            },
        };
        let mut session = ClientSession::new(self.options.session.clone(), Instant::now(), self.hello());
        // What the Hello said, to send what changed while it was in flight after Welcome.
        self.sent_visibility = self.visibility.clone();
        let Ok((mut send, mut recv)) = connection.open_bi().await else {
            return retry("cannot open the control stream".into());
        };
        // The Hello goes out now: in 0-RTT when resuming, else after the handshake.
        if flush(&mut session, &connection, &mut send).await.is_none() {
            return retry("cannot send hello".into());
        }
        let tried_early = early.is_some();
        let zero_rtt = match early {
            // The handshake still has to finish: bound it like any other handshake.
            Some(accepted) => match tokio::time::timeout(handshake, accepted).await {
                Ok(accepted) => accepted,
                Err(_) => return retry("handshake timed out".into()),
            },
            None => false,
        };
        if tried_early && !zero_rtt {
            // The server refused the early data: the stream and the Hello are gone.
            session = ClientSession::new(self.options.session.clone(), Instant::now(), self.hello());
            self.sent_visibility = self.visibility.clone();
            match connection.open_bi().await {
                Ok(pair) => (send, recv) = pair,
                Err(error) => return connection_outcome(error, false),
            }
            if flush(&mut session, &connection, &mut send).await.is_none() {
                return retry("cannot send hello".into());
            }
        }
        let mut up = false;
        let mut unanswered: Option<Unanswered> = None;
        let outcome = loop {
            let deadline = session.poll_timeout().map(tokio::time::Instant::from_std);
            let idle_deadline = self.idle_deadline().map(tokio::time::Instant::from_std);
            tokio::select! {
                chunk = recv.read_chunk(READ_CHUNK, true) => match chunk {
                    Ok(Some(chunk)) => session.handle_stream_data(Instant::now(), &chunk.bytes),
                    Ok(None) => break retry("server finished the control stream".into()),
                    Err(error) => break stream_outcome(error, up),
                },
                datagram = connection.read_datagram() => match datagram {
                    Ok(payload) => session.handle_datagram(Instant::now(), &payload),
                    Err(error) => break connection_outcome(error, up),
                },
                command = self.commands.recv() => match command {
                    None => break Outcome::Closed,
                    Some(Command::Close(ack)) => {
                        self.close_ack = Some(ack);
                        session.close();
                        let _ = flush(&mut session, &connection, &mut send).await;
                        break Outcome::Closed;
                    }
                    Some(command) => self.apply(command, &mut session, &connection).await,
                },
                _ = sleep_until(deadline) => session.handle_timeout(Instant::now()),
                _ = sleep_until(idle_deadline) => self.apply_idle(&mut session).await,
                _ = sleep_until(unanswered.map(|watch| watch.deadline)) => {
                    let lost = unanswered.take().is_some_and(|watch| !watch.answered(&connection));
                    if lost {
                        // Dead or cut off: no use waiting for the idle timeout.
                        let reason = format!("{server} stopped acknowledging");
                        break Outcome::Retry { code: None, reason, after: None, was_up: up };
                    }
                }
            }
            if let Some(outcome) = self.handle_events(&mut session, zero_rtt, &mut up).await {
                break outcome;
            }
            let Some(pings) = flush(&mut session, &connection, &mut send).await else {
                break retry("control stream write failed".into());
            };
            if let Some(floor) = self.options.unanswered.filter(|_| up && pings > 0 && unanswered.is_none()) {
                unanswered = Some(Unanswered::arm(&connection, floor));
            }
        };
        self.seq = session.status_seq();
        let code = match &outcome {
            Outcome::Fatal { code: Some(code), .. } | Outcome::Retry { code: Some(code), .. } => *code,
            _ => ErrorCode::NO_ERROR,
        };
        let _ = send.finish();
        connection.close(quinn::VarInt::from_u32(u32::from(code.0)), code.name().as_bytes());
        outcome
    }

    async fn handle_events(
        &mut self,
        session: &mut ClientSession,
        zero_rtt: bool,
        up: &mut bool,
    ) -> Option<Outcome> {
        while let Some(event) = session.poll_event() {
            let event = match event {
                ClientEvent::Welcome(welcome) => {
                    *up = true;
                    if self.visibility != self.sent_visibility {
                        let _ = session.set_visibility(app_list(&self.visibility).unwrap_or_default());
                    }
                    // Requests made while disconnected go now, in order.
                    for command in std::mem::take(&mut self.deferred) {
                        let result = match command {
                            Deferred::Authorize(app, state) => session.authorize(app, state),
                            Deferred::Revoke(app) => session.revoke(app),
                        };
                        if let Err(error) = result {
                            warn!(%error, "deferred request not sent");
                        }
                    }
                    Event::Up {
                        server: self.options.servers[self.current],
                        session_id: welcome.session_id,
                        zero_rtt,
                        heartbeat: Duration::from_millis(u64::from(welcome.heartbeat_ms)),
                    }
                }
                ClientEvent::StatusAcked { seq } => Event::StatusAcked { seq },
                ClientEvent::Authorized(a) => {
                    Event::Authorized { app_id: a.app_id.into_string(), puid: a.puid.into_string() }
                }
                ClientEvent::Revoked(r) => {
                    // Revoked here or on another of the user's devices: the app leaves this
                    // device's list too, so the next Hello does not grant it again.
                    self.visibility.retain(|app| app.as_str() != r.app_id.as_str());
                    Event::Revoked { app_id: r.app_id.into_string() }
                }
                ClientEvent::Denied(d) => Event::Denied {
                    app_id: d.app_id.into_string(),
                    code: d.code,
                    message: d.message.into_string(),
                },
                ClientEvent::Notification(n) => Event::Notification {
                    id: n.id,
                    app_id: n.app_id.into_string(),
                    title: n.title.into_string(),
                    body: n.body.into_string(),
                    data: n.data.into_string(),
                    expires_in: Duration::from_millis(u64::from(n.expires_in_ms)),
                },
                ClientEvent::Cancelled(c) => Event::Cancelled { id: c.id, reason: c.reason },
                ClientEvent::NotificationExpired { id } => Event::Expired { id },
                ClientEvent::GoAway(go_away) => {
                    let retry_after = Duration::from_millis(u64::from(go_away.retry_after_ms));
                    let reason = go_away.reason.into_string();
                    let _ = self.events.send(Event::GoAway { reason: reason.clone(), retry_after }).await;
                    session.close();
                    let after = Some(retry_after.mul_f64(1.0 + fastrand::f64() / 2.0));
                    return Some(Outcome::Retry {
                        code: Some(ErrorCode::SHUTTING_DOWN),
                        reason,
                        after,
                        was_up: true,
                    });
                }
                ClientEvent::HeartbeatAdapted { interval, proven, cause } => {
                    debug!(?interval, ?proven, ?cause, "heartbeat adapted");
                    Event::HeartbeatAdapted { interval, proven, cause }
                }
                ClientEvent::Closed(close) => return Some(classify(Some(close.code), close.reason, *up)),
            };
            if self.events.send(event).await.is_err() {
                return Some(Outcome::Closed);
            }
        }
        None
    }

    async fn apply(&mut self, command: Command, session: &mut ClientSession, connection: &quinn::Connection) {
        let now = Instant::now();
        let result = match command {
            Command::Status(status, message) => {
                self.chosen = status;
                self.idle = Idle { last_activity: now, auto: None };
                match message.map(StatusText::new).transpose() {
                    Ok(message) => {
                        if let Some(message) = message {
                            self.message = message;
                        }
                        session.set_presence(now, status, false, self.message.clone());
                        Ok(())
                    }
                    Err(error) => Err(format!("status message: {error}")),
                }
            }
            Command::Visibility(apps) => self.set_visibility(apps, session),
            Command::Allow(app) => {
                let mut apps = self.visibility.clone();
                if !apps.contains(&app) {
                    apps.push(app);
                }
                self.set_visibility(apps, session)
            }
            Command::Authorize(app, state) => match (AppId::new(app), LinkState::new(state)) {
                (Ok(app), Ok(state)) if session.is_active() => {
                    session.authorize(app, state).map_err(|e| e.to_string())
                }
                (Ok(app), Ok(state)) => {
                    self.deferred.push(Deferred::Authorize(app, state));
                    Ok(())
                }
                _ => Err("app id or state too long".into()),
            },
            Command::Revoke(app) => {
                self.visibility.retain(|listed| listed != &app);
                match AppId::new(app) {
                    Ok(app) if session.is_active() => session.revoke(app).map_err(|e| e.to_string()),
                    Ok(app) => {
                        self.deferred.push(Deferred::Revoke(app));
                        Ok(())
                    }
                    Err(error) => Err(error.to_string()),
                }
            }
            Command::Respond(id, response) => session.respond(id, response).map_err(|e| e.to_string()),
            Command::Reauth(token) => match Token::new(token) {
                Ok(token) => {
                    self.token = token.clone();
                    session.reauth(token).map_err(|e| e.to_string())
                }
                Err(error) => Err(error.to_string()),
            },
            Command::Activity => {
                self.activity(now, session).await;
                Ok(())
            }
            Command::Rebind(local, done) => {
                let result = std::net::UdpSocket::bind(local).and_then(|socket| self.endpoint.rebind(socket));
                if result.is_ok() {
                    // Migration happens when the device speaks first from the new address.
                    let (status, idle, _) = session.status();
                    let ping = Ping::heartbeat(status, idle, session.status_seq()).encode();
                    let _ = connection.send_datagram(bytes::Bytes::copy_from_slice(&ping));
                }
                let _ = done.send(result);
                Ok(())
            }
            Command::Close(_) => Ok(()),
        };
        if let Err(error) = result {
            warn!(%error, "command not applied");
        }
    }

    /// A command while disconnected: remember what the next `Hello` must say.
    fn apply_offline(&mut self, command: Command) {
        match command {
            Command::Status(status, message) => {
                self.chosen = status;
                self.idle = Idle { last_activity: Instant::now(), auto: None };
                self.seq = self.seq.wrapping_add(1);
                if let Some(message) = message.and_then(|m| StatusText::new(m).ok()) {
                    self.message = message;
                }
            }
            Command::Visibility(apps) => self.visibility = apps,
            Command::Allow(app) => {
                if !self.visibility.contains(&app) {
                    self.visibility.push(app);
                }
            }
            Command::Reauth(token) => {
                if let Ok(token) = Token::new(token) {
                    self.token = token;
                }
            }
            Command::Activity => self.idle = Idle { last_activity: Instant::now(), auto: None },
            Command::Rebind(local, done) => {
                let result = std::net::UdpSocket::bind(local).and_then(|socket| self.endpoint.rebind(socket));
                let _ = done.send(result);
            }
            Command::Authorize(app, state) => match (AppId::new(app), LinkState::new(state)) {
                (Ok(app), Ok(state)) => self.deferred.push(Deferred::Authorize(app, state)),
                _ => warn!("app id or state too long; authorize dropped"),
            },
            Command::Revoke(app) => {
                // The app leaves the list at once, so no Hello shows it the user again.
                self.visibility.retain(|listed| listed != &app);
                match AppId::new(app) {
                    Ok(app) => self.deferred.push(Deferred::Revoke(app)),
                    Err(error) => warn!(%error, "revoke dropped"),
                }
            }
            // Notifications shown in the lost session expired with it.
            other => warn!(?other, "not connected; command dropped"),
        }
    }

    fn set_visibility(&mut self, apps: Vec<String>, session: &mut ClientSession) -> Result<(), String> {
        let list = app_list(&apps)?;
        self.visibility = apps;
        if session.is_active() { session.set_visibility(list).map_err(|e| e.to_string()) } else { Ok(()) }
    }

    async fn activity(&mut self, now: Instant, session: &mut ClientSession) {
        self.idle.last_activity = now;
        if self.idle.auto.take().is_some() {
            session.set_status(now, self.chosen, false);
            let _ = self.events.send(Event::StatusChanged { status: self.chosen, idle: false }).await;
        }
    }

    /// When the idle policy next has something to do.
    fn idle_deadline(&self) -> Option<Instant> {
        let policy = self.options.idle;
        let away = policy
            .away_after
            .filter(|_| self.idle.auto.is_none() && self.chosen == Status::Online)
            .map(|after| self.idle.last_activity + after);
        let offline = policy
            .offline_after
            .filter(|_| self.idle.auto != Some(Status::Offline) && self.chosen != Status::Offline)
            .map(|after| self.idle.last_activity + after);
        away.into_iter().chain(offline).min()
    }

    async fn apply_idle(&mut self, session: &mut ClientSession) {
        let now = Instant::now();
        let idle_for = now.duration_since(self.idle.last_activity);
        let policy = self.options.idle;
        let status = if policy.offline_after.is_some_and(|after| idle_for >= after) {
            Status::Offline
        } else if policy.away_after.is_some_and(|after| idle_for >= after) && self.chosen == Status::Online {
            Status::Away
        } else {
            return;
        };
        if self.idle.auto != Some(status) {
            self.idle.auto = Some(status);
            session.set_status(now, status, true);
            let _ = self.events.send(Event::StatusChanged { status, idle: true }).await;
        }
    }
}

/// Moves everything the session queued onto the connection; the datagrams (pings) sent,
/// or `None` if the stream broke.
async fn flush(
    session: &mut ClientSession,
    connection: &quinn::Connection,
    send: &mut quinn::SendStream,
) -> Option<usize> {
    let mut datagrams = 0;
    while let Some(transmit) = session.poll_transmit() {
        match transmit {
            Transmit::Stream(bytes) => {
                if send.write_all(&bytes).await.is_err() {
                    return None;
                }
            }
            Transmit::Datagram(bytes) => {
                if connection.send_datagram(bytes).is_ok() {
                    datagrams += 1;
                }
            }
        }
    }
    Some(datagrams)
}

/// Watches whether the server still acknowledges: armed by a ping, it holds how many ACK
/// frames had arrived when the ping left and when to give the server up if no more have.
#[derive(Debug, Clone, Copy)]
struct Unanswered {
    acks: u64,
    deadline: tokio::time::Instant,
}

impl Unanswered {
    /// Armed now for `connection`: three probe timeouts, estimated as in RFC 9002
    /// (`smoothed_rtt + 4·rttvar + max_ack_delay`, with the variance taken as half the
    /// RTT and the ACK delay at QUIC's default 25 ms), and at least `floor`.
    fn arm(connection: &quinn::Connection, floor: Duration) -> Unanswered {
        let rtt = connection.rtt();
        let probe_timeout = rtt * 3 + Duration::from_millis(25);
        let wait = (probe_timeout * 3).max(floor);
        Unanswered { acks: connection.stats().frame_rx.acks, deadline: tokio::time::Instant::now() + wait }
    }

    /// Whether anything was acknowledged since the watch was armed.
    fn answered(&self, connection: &quinn::Connection) -> bool {
        connection.stats().frame_rx.acks > self.acks
    }
}

fn app_list(apps: &[String]) -> Result<AppList, String> {
    let ids = apps.iter().map(|app| AppId::new(app.as_str())).collect::<Result<Vec<_>, _>>();
    AppList::new(ids.map_err(|e| format!("app id: {e}"))?).map_err(|e| format!("visibility list: {e}"))
}

/// Whether a code means retrying the same way cannot succeed.
fn is_fatal(code: ErrorCode) -> bool {
    [
        ErrorCode::UNAUTHENTICATED,
        ErrorCode::TOKEN_EXPIRED,
        ErrorCode::UNSUPPORTED_VERSION,
        ErrorCode::REPLACED,
        ErrorCode::LIMIT_EXCEEDED,
        ErrorCode::PROTOCOL_VIOLATION,
        // Retrying cannot succeed until another of the user's devices disconnects; every
        // device retrying would only hammer the server with refused handshakes.
        ErrorCode::TOO_MANY_DEVICES,
    ]
    .contains(&code)
}

fn classify(code: Option<ErrorCode>, reason: String, was_up: bool) -> Outcome {
    match code {
        Some(code) if is_fatal(code) => Outcome::Fatal { code: Some(code), reason },
        code => Outcome::Retry { code, reason, after: None, was_up },
    }
}

fn connection_outcome(error: ConnectionError, was_up: bool) -> Outcome {
    match error {
        ConnectionError::ApplicationClosed(close) => {
            let code = u16::try_from(close.error_code.into_inner()).map(ErrorCode).ok();
            let reason = String::from_utf8_lossy(&close.reason).into_owned();
            classify(code, reason, was_up)
        }
        ConnectionError::LocallyClosed => Outcome::Closed,
        other => Outcome::Retry { code: None, reason: other.to_string(), after: None, was_up },
    }
}

fn stream_outcome(error: quinn::ReadError, was_up: bool) -> Outcome {
    match error {
        quinn::ReadError::ConnectionLost(error) => connection_outcome(error, was_up),
        other => Outcome::Retry { code: None, reason: other.to_string(), after: None, was_up },
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The `did` claim of a JWT, read without verifying it (the server verifies).
fn device_claim(token: &str) -> Option<String> {
    let claims = token.split('.').nth(1)?;
    let json: serde_json::Value = serde_json::from_slice(&B64URL.decode(claims).ok()?).ok()?;
    json.get("did")?.as_str().map(str::to_owned)
}
