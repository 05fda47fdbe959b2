//! The device session service: everything a device session means to the daemon, with no I/O.
//!
//! A QUIC driver (today [`crate::quic`], on quinn) owns the connection and moves bytes; a
//! [`DeviceSession`] owns what the bytes mean. It wraps the sans-IO protocol state machine
//! ([`ServerSession`]) and applies its events to the daemon's domain: it authenticates the
//! `Hello`, puts the device on the presence table (closing the ghost it replaces), answers
//! `Authorize` and `Revoke` (telling the app and the user's other sessions), checks `Reauth`
//! tokens, hands notification answers to the notification manager and takes the device off
//! the table when it ends.
//!
//! Like quinn-proto, it never waits and never reads a clock of its own: the driver feeds it
//! inputs with `now` and drains its outputs.
//!
//! | input | method |
//! | --- | --- |
//! | control-stream bytes, stream finished | [`handle_stream_data`](DeviceSession::handle_stream_data), [`handle_stream_finished`](DeviceSession::handle_stream_finished) |
//! | a DATAGRAM | [`handle_datagram`](DeviceSession::handle_datagram) |
//! | the deadline from `poll_timeout` passed | [`handle_timeout`](DeviceSession::handle_timeout) |
//! | a [`SessionCommand`] from the mailbox | [`handle_command`](DeviceSession::handle_command) |
//! | the TLS handshake completed (the client is live, not a 0-RTT replay) | [`handshake_confirmed`](DeviceSession::handshake_confirmed) |
//! | the peer's address changed | [`path_changed`](DeviceSession::path_changed) |
//! | the daemon is draining | [`shutdown`](DeviceSession::shutdown) |
//! | a token check asked for by an [`Effect`] is done | [`token_verified`](DeviceSession::token_verified) |
//! | the device stopped reading its control stream | [`slow_reader`](DeviceSession::slow_reader) |
//!
//! | output | method |
//! | --- | --- |
//! | bytes for the control stream, DATAGRAMs | [`poll_transmit`](DeviceSession::poll_transmit) |
//! | the next deadline | [`poll_timeout`](DeviceSession::poll_timeout) |
//! | work for the driver (verify a token, possibly off its event loop) | [`poll_effect`](DeviceSession::poll_effect) |
//! | whether to close, with which code, and whether to linger first | [`is_closed`](DeviceSession::is_closed), [`close_code`](DeviceSession::close_code), [`should_linger`](DeviceSession::should_linger) |
//!
//! **0-RTT.** A `Hello` may arrive in 0-RTT data, which an attacker can replay. Nothing
//! happens on its strength alone (PROTOCOL.md §11): its token is verified, but `Welcome`,
//! the table and the ghost's close wait for [`handshake_confirmed`](DeviceSession::handshake_confirmed),
//! within the protocol's handshake timeout.
//!
//! A `DeviceSession` takes its device off the table when it is dropped, so a driver that
//! loses a connection in any way (an error, a panic, an aborted task) leaves no ghost.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use presence_protocol::{
    Accept, AppId, ErrorCode, Hello, Reason, ServerConfig as ProtocolConfig, ServerEvent, ServerSession,
    Transmit,
};
use tracing::{debug, info, warn};

use crate::apps::Apps;
use crate::auth::{DeviceClaims, TokenError, TokenVerifier};
use crate::clock::Clock;
use crate::handle::{SessionCommand, SessionHandle};
use crate::metrics::{Metrics, ReasonLabel, Refusal};
use crate::notify::Notifications;
use crate::outbound::Outbound;
use crate::table::{DeviceState, PresenceTable};

/// The daemon services every device session uses, whatever driver carries it.
#[derive(Debug)]
pub(crate) struct SessionServices {
    /// Verifies device tokens.
    pub verifier: TokenVerifier,
    /// The presence table.
    pub table: Arc<PresenceTable>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Registered apps (authorize and revoke check them).
    pub apps: Arc<Apps>,
    /// Grant and revoke webhook events.
    pub outbound: Arc<Outbound>,
    /// Live notifications (answers go here).
    pub notifications: Arc<Notifications>,
    /// The protocol's per-session settings.
    pub protocol: Arc<ProtocolConfig>,
    /// How long a draining device is asked to wait before reconnecting.
    pub drain: Duration,
    /// The daemon's clock.
    pub clock: Clock,
}

impl SessionServices {
    /// Checks a token against the daemon's keys and wall clock. Pure CPU (a signature
    /// check), so a driver may run it wherever suits its event loop.
    pub(crate) fn verify(&self, token: &str) -> Result<DeviceClaims, TokenError> {
        self.verifier.verify(token, self.clock.unix_secs())
    }
}

/// Work a session asks its driver to do and report back.
#[derive(Debug)]
pub(crate) enum Effect {
    /// Verify this token (with [`SessionServices::verify`]) and give the result to
    /// [`DeviceSession::token_verified`].
    VerifyToken(TokenCheck),
}

/// A token waiting to be verified, and what it is for.
#[derive(Debug)]
pub(crate) struct TokenCheck {
    /// The compact JWS.
    pub token: String,
    purpose: Purpose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Hello,
    Reauth,
}

/// Who a session belongs to, once authenticated.
#[derive(Debug)]
struct Identity {
    user: String,
    device: String,
}

#[derive(Debug)]
enum Phase {
    /// No `Hello` yet.
    Opening,
    /// The `Hello`'s token is being verified.
    Verifying(Box<Hello>),
    /// The token verified, but the `Hello` came in 0-RTT: waiting for the handshake.
    Confirming(Box<(Hello, DeviceClaims)>),
    /// Welcomed and on the table.
    Up(Identity),
    /// Refused before it was up, or closed.
    Done,
}

/// The domain side of one device session. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct DeviceSession {
    services: Arc<SessionServices>,
    protocol: ServerSession,
    handle: SessionHandle,
    phase: Phase,
    /// The TLS handshake completed: the peer is live, not a replay of 0-RTT data.
    confirmed: bool,
    /// The control stream was opened in 0-RTT data (what `zero_rtt_accepted` counts).
    early: bool,
    /// Until when a verified 0-RTT `Hello` may wait for the handshake.
    confirm_by: Option<Instant>,
    effects: VecDeque<Effect>,
    /// The code the session ended with, once it has.
    closed: Option<ErrorCode>,
}

impl DeviceSession {
    /// A session whose control stream opened at `now`. `handle` is how the rest of the
    /// daemon reaches it; the driver keeps the mailbox's receiving end and feeds its
    /// commands to [`handle_command`](Self::handle_command).
    pub(crate) fn new(services: Arc<SessionServices>, handle: SessionHandle, now: Instant) -> DeviceSession {
        let protocol = ServerSession::new(services.protocol.clone(), now);
        DeviceSession {
            services,
            protocol,
            handle,
            phase: Phase::Opening,
            confirmed: false,
            early: false,
            confirm_by: None,
            effects: VecDeque::new(),
            closed: None,
        }
    }

    /// Bytes read from the control stream.
    pub(crate) fn handle_stream_data(&mut self, now: Instant, bytes: &[u8]) {
        self.protocol.handle_stream_data(now, bytes);
        self.process();
    }

    /// The device finished its side of the control stream: a clean close.
    pub(crate) fn handle_stream_finished(&mut self) {
        self.protocol.close(ErrorCode::NO_ERROR, "control stream finished");
        self.process();
    }

    /// A DATAGRAM (a ping) arrived.
    pub(crate) fn handle_datagram(&mut self, now: Instant, payload: &[u8]) {
        let metrics = &self.services.metrics;
        metrics.pings_received.inc();
        let (bad, limited) = (self.protocol.bad_datagrams(), self.protocol.limited_datagrams());
        self.protocol.handle_datagram(now, payload);
        if self.protocol.bad_datagrams() > bad {
            metrics.bad_datagrams.inc();
        }
        if self.protocol.limited_datagrams() > limited {
            metrics.refuse(Refusal::PingRate);
        }
        self.process();
    }

    /// The deadline [`poll_timeout`](Self::poll_timeout) gave has passed.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.confirm_by.is_some_and(|by| now >= by) {
            self.confirm_by = None;
            self.refuse(
                ErrorCode::HANDSHAKE_TIMEOUT,
                "0-RTT hello without a completed handshake",
                "handshake_timeout",
            );
        }
        self.protocol.handle_timeout(now);
        self.process();
    }

    /// A command from the rest of the daemon arrived in the session's mailbox.
    pub(crate) fn handle_command(&mut self, now: Instant, command: SessionCommand) {
        let result = match command {
            SessionCommand::Close { code, reason } => {
                self.protocol.close(code, &reason);
                Ok(())
            }
            SessionCommand::Notify(notify) => self.protocol.notify(now, notify),
            SessionCommand::Cancel { id, reason } => self.protocol.cancel(id, reason),
            SessionCommand::Revoked { app_id } => self.protocol.revoked(app_id),
            SessionCommand::GoAway { reason, retry_after } => {
                self.protocol.go_away(Reason::truncating(&reason), retry_after)
            }
        };
        if let Err(error) = result {
            debug!(%error, "command not applicable");
        }
        self.process();
    }

    /// The control stream was opened in 0-RTT data: its `Hello` waits for
    /// [`handshake_confirmed`](Self::handshake_confirmed), and the session counts as
    /// resumed in 0-RTT.
    pub(crate) fn opened_in_0rtt(&mut self) {
        self.early = true;
    }

    /// The TLS handshake completed. A 0-RTT `Hello` waiting for it goes ahead now.
    pub(crate) fn handshake_confirmed(&mut self, now: Instant) {
        self.confirmed = true;
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Confirming(verified) => {
                let (hello, claims) = *verified;
                self.confirm_by = None;
                self.welcome(now, hello, claims);
            }
            other => self.phase = other,
        }
        self.process();
    }

    /// The device's address changed (a migration or a NAT rebinding).
    pub(crate) fn path_changed(&mut self) {
        self.services.metrics.migrations.inc();
        // Its NAT binding may have lapsed: pushes to the old address were lost.
        self.protocol.handle_path_change();
    }

    /// The daemon is draining: a welcomed device is asked to go away and come back after
    /// the drain; one not yet welcomed just ends.
    pub(crate) fn shutdown(&mut self) {
        let reason = Reason::new("server shutting down").unwrap_or_default();
        if self.protocol.go_away(reason, self.services.drain).is_err() {
            self.protocol.close(ErrorCode::SHUTTING_DOWN, "server shutting down");
        }
        self.process();
    }

    /// The driver ends the session for a reason of its own (a peer without DATAGRAM
    /// support, the end of the drain): the device gets the `Error` frame every close carries.
    pub(crate) fn close(&mut self, code: ErrorCode, reason: &str) {
        self.protocol.close(code, reason);
        self.process();
    }

    /// The device does not read its control stream: a write waited past the slow-reader
    /// bound. The session ends at once; nothing more can reach the device anyway.
    pub(crate) fn slow_reader(&mut self) {
        self.services.metrics.refuse(Refusal::SlowReader);
        warn!("device does not read its control stream; closing");
        self.closed = Some(ErrorCode::PROTOCOL_VIOLATION);
        self.leave_table();
    }

    /// The result of an [`Effect::VerifyToken`].
    pub(crate) fn token_verified(
        &mut self,
        now: Instant,
        check: TokenCheck,
        result: Result<DeviceClaims, TokenError>,
    ) {
        match check.purpose {
            Purpose::Hello => self.hello_verified(now, result),
            Purpose::Reauth => self.reauth_verified(now, result),
        }
        self.process();
    }

    /// The next thing to send.
    pub(crate) fn poll_transmit(&mut self) -> Option<Transmit> {
        self.protocol.poll_transmit()
    }

    /// The next piece of work for the driver.
    pub(crate) fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match (self.protocol.poll_timeout(), self.confirm_by) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The session has ended: flush what [`poll_transmit`](Self::poll_transmit) still
    /// gives, then close the connection with [`close_code`](Self::close_code).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_some() || self.protocol.is_closed()
    }

    /// Whether the device is welcomed and on the table.
    pub(crate) fn is_up(&self) -> bool {
        matches!(self.phase, Phase::Up(_))
    }

    /// The QUIC close code for the session's end (`NO_ERROR` while it has not ended).
    pub(crate) fn close_code(&self) -> ErrorCode {
        self.closed.unwrap_or(ErrorCode::NO_ERROR)
    }

    /// Whether the driver should let the final frames (an `Error`, a `GoAway`) reach the
    /// device before closing: a QUIC close discards stream data still in flight.
    pub(crate) fn should_linger(&self) -> bool {
        self.closed.is_some_and(|code| code != ErrorCode::NO_ERROR)
    }

    /// Applies the protocol's events to the daemon.
    fn process(&mut self) {
        while let Some(event) = self.protocol.poll_event() {
            self.apply(event);
        }
    }

    fn apply(&mut self, event: ServerEvent) {
        match event {
            ServerEvent::Hello(hello) => {
                let token = hello.token.to_string();
                self.phase = Phase::Verifying(Box::new(hello));
                self.effects.push_back(Effect::VerifyToken(TokenCheck { token, purpose: Purpose::Hello }));
            }
            ServerEvent::StatusChanged { status, idle, message } => {
                self.services.metrics.status_changes.inc();
                self.update(|state| {
                    state.status = status;
                    state.idle = idle;
                    if let Some(message) = message {
                        state.message = message.into_string();
                    }
                });
            }
            ServerEvent::Visibility(apps) => {
                let apps = apps.into_vec();
                self.tell_revoked(&apps);
                self.update(|state| state.visibility = apps);
            }
            ServerEvent::Authorize(authorize) => self.authorize(authorize.app_id, &authorize.state),
            ServerEvent::Revoke(revoke) => self.revoke(revoke.app_id),
            ServerEvent::Reauth(token) => {
                if self.is_up() {
                    let check = TokenCheck { token: token.to_string(), purpose: Purpose::Reauth };
                    self.effects.push_back(Effect::VerifyToken(check));
                }
            }
            ServerEvent::NotifyResponse(response) => {
                if let Phase::Up(identity) = &self.phase {
                    let notifications = &self.services.notifications;
                    notifications.respond(response.id, &identity.user, self.handle.id, response.response);
                }
            }
            // The notification manager's own timer decides `missed` for the whole user.
            ServerEvent::NotificationMissed { id } => debug!(id, "notification expired on this device"),
            ServerEvent::Silent => self.set_silent(true),
            ServerEvent::Alive => self.set_silent(false),
            ServerEvent::Closed(close) => {
                self.closed = Some(close.code);
                let metrics = &self.services.metrics;
                metrics.sessions_closed.get_or_create(&ReasonLabel { reason: close.code.name() }).inc();
                if close.code == ErrorCode::RATE_LIMITED && !close.by_peer {
                    metrics.refuse(Refusal::SessionRateLimited);
                }
                debug!(code = %close.code, reason = %close.reason, by_peer = close.by_peer, "session closed");
                self.leave_table();
            }
        }
    }

    fn hello_verified(&mut self, now: Instant, result: Result<DeviceClaims, TokenError>) {
        let Phase::Verifying(hello) = std::mem::replace(&mut self.phase, Phase::Done) else {
            // The session ended while the token was being checked.
            return;
        };
        let claims = match result {
            Ok(claims) if claims.did == hello.device_id.as_str() => claims,
            Ok(_) => return self.refuse(ErrorCode::UNAUTHENTICATED, "token is for another device", "device"),
            Err(TokenError::Expired) => {
                return self.refuse(ErrorCode::TOKEN_EXPIRED, "token expired", "expired");
            }
            Err(error) => {
                return self.refuse(ErrorCode::UNAUTHENTICATED, &error.to_string(), "unauthenticated");
            }
        };
        if self.confirmed {
            self.welcome(now, *hello, claims);
        } else {
            // 0-RTT data can be replayed: Welcome, the table and the ghost's close wait for
            // the handshake, which proves the client is live.
            self.confirm_by = Some(now + self.services.protocol.handshake_timeout);
            self.phase = Phase::Confirming(Box::new((*hello, claims)));
        }
    }

    fn welcome(&mut self, now: Instant, hello: Hello, claims: DeviceClaims) {
        let zero_rtt = self.early;
        let span = tracing::Span::current();
        span.record("user", claims.sub.as_str());
        span.record("device", claims.did.as_str());
        let state = DeviceState {
            status: hello.status,
            idle: hello.idle,
            message: hello.message.into_string(),
            visibility: hello.visibility.into_vec(),
        };
        let listed = state.visibility.clone();
        // The table decides the device cap atomically with adding the device, so it goes
        // first; a refused device never got a Welcome.
        let table = &self.services.table;
        let ghost = match table.connect(&claims.sub, &claims.did, self.handle.clone(), state) {
            Ok(ghost) => ghost,
            Err(refused) => {
                self.services.metrics.refuse(Refusal::DevicesPerUser);
                return self.refuse(ErrorCode::TOO_MANY_DEVICES, &refused.to_string(), "too_many_devices");
            }
        };
        let accept = Accept {
            session_id: self.handle.id,
            server_time_ms: self.services.clock.unix_ms(),
            token_valid_for: Some(self.valid_for(&claims)),
        };
        if let Err(error) = self.protocol.accept(now, accept) {
            self.phase = Phase::Done;
            table.disconnect(&claims.sub, &claims.did, self.handle.id);
            return warn!(%error, "accept out of phase");
        }
        // A device that was away when the user revoked an app still lists it: the table left
        // it out, and the device learns why, after its Welcome (PROTOCOL.md §6.8).
        for app_id in listed.into_iter().filter(|app| table.is_revoked(&claims.sub, app)) {
            let _ = self.protocol.revoked(app_id);
        }
        if let Some(ghost) = ghost {
            ghost.send(SessionCommand::Close {
                code: ErrorCode::REPLACED,
                reason: "replaced by a new session".into(),
            });
        }
        if zero_rtt {
            self.services.metrics.zero_rtt_accepted.inc();
        }
        info!(zero_rtt, heartbeat = ?self.protocol.heartbeat(), "session up");
        self.phase = Phase::Up(Identity { user: claims.sub, device: claims.did });
    }

    fn reauth_verified(&mut self, now: Instant, result: Result<DeviceClaims, TokenError>) {
        let Phase::Up(identity) = &self.phase else { return };
        match result {
            Ok(claims) if claims.sub == identity.user && claims.did == identity.device => {
                let valid_for = self.valid_for(&claims);
                self.protocol.renew_token(now, Some(valid_for));
            }
            Ok(_) => {
                self.protocol.close(ErrorCode::UNAUTHENTICATED, "reauth token names another user or device")
            }
            Err(TokenError::Expired) => self.protocol.close(ErrorCode::TOKEN_EXPIRED, "reauth token expired"),
            Err(error) => self.protocol.close(ErrorCode::UNAUTHENTICATED, &error.to_string()),
        }
    }

    /// How long a verified token stays valid, to the millisecond, with the same leeway
    /// `verify` allowed it, so a token accepted at the edge of its expiry is not closed the
    /// moment its session starts.
    fn valid_for(&self, claims: &DeviceClaims) -> Duration {
        self.services.verifier.valid_for(claims, self.services.clock.unix_ms())
    }

    fn refuse(&mut self, code: ErrorCode, detail: &str, label: &'static str) {
        self.phase = Phase::Done;
        self.services.metrics.handshakes_failed.get_or_create(&ReasonLabel { reason: label }).inc();
        info!(code = %code, detail, "hello refused");
        self.protocol.reject(code, detail);
    }

    /// The user authorizes an app: answer with its PUID and tell the app (`grant`).
    fn authorize(&mut self, app_id: AppId, state: &str) {
        let Phase::Up(identity) = &self.phase else { return };
        let services = &self.services;
        if !services.apps.exists(&app_id) {
            let _ = self.protocol.denied(app_id, ErrorCode::UNKNOWN_APP, Reason::truncating("no such app"));
            return;
        }
        let puid = services.table.puid(&app_id, &identity.user);
        // A new grant lifts a revoke: the visibility lists sent from now on count again.
        services.table.grant(&identity.user, &app_id);
        services.outbound.grant(&app_id, &puid, state);
        let _ = self.protocol.authorized(app_id, puid);
    }

    /// The user withdraws an app: it stops seeing the user on every device at once, learns
    /// `revoke`, and every other session of the user is told to drop it from its list.
    fn revoke(&mut self, app_id: AppId) {
        let Phase::Up(identity) = &self.phase else { return };
        let services = &self.services;
        if !services.apps.exists(&app_id) {
            let _ = self.protocol.denied(app_id, ErrorCode::UNKNOWN_APP, Reason::truncating("no such app"));
            return;
        }
        services.table.revoke(&identity.user, &app_id);
        services.outbound.revoke(&app_id, &services.table.puid(&app_id, &identity.user));
        for session in services.table.sessions_of(&identity.user) {
            if session.id != self.handle.id {
                session.send(SessionCommand::Revoked { app_id: app_id.clone() });
            }
        }
        let _ = self.protocol.revoked(app_id);
    }

    /// Tells the device `Revoked` for each app of its new visibility list that the user
    /// revoked and has not authorized since (the table leaves those out).
    fn tell_revoked(&mut self, apps: &[AppId]) {
        let Phase::Up(identity) = &self.phase else { return };
        let table = &self.services.table;
        let revoked: Vec<AppId> =
            apps.iter().filter(|app| table.is_revoked(&identity.user, app)).cloned().collect();
        for app_id in revoked {
            let _ = self.protocol.revoked(app_id);
        }
    }

    fn update(&self, change: impl FnOnce(&mut DeviceState)) {
        if let Phase::Up(identity) = &self.phase {
            self.services.table.update(&identity.user, &identity.device, self.handle.id, change);
        }
    }

    fn set_silent(&self, silent: bool) {
        if let Phase::Up(identity) = &self.phase {
            info!(silent, "liveness changed");
            self.services.table.set_silent(&identity.user, &identity.device, self.handle.id, silent);
        }
    }

    /// Takes the device off the table, once.
    fn leave_table(&mut self) {
        if let Phase::Up(identity) = std::mem::replace(&mut self.phase, Phase::Done) {
            self.services.table.disconnect(&identity.user, &identity.device, self.handle.id);
        }
    }
}

impl Drop for DeviceSession {
    fn drop(&mut self) {
        self.leave_table();
    }
}

#[cfg(test)]
mod tests {
    use presence_protocol::{AppList, Message, Status, encode_frame};

    use super::*;
    use crate::auth::TokenSigner;
    use crate::notify::NotifyLimits;
    use crate::settings::Rate;
    use crate::store::memory::MemoryStore;
    use crate::testing::EventRecorder;
    use crate::webhook::fanout::{Fanout, FanoutConfig};

    /// The device cap of the test world's table.
    const MAX_DEVICES: u32 = 3;

    struct World {
        services: Arc<SessionServices>,
        signer: TokenSigner,
        events: Arc<EventRecorder>,
    }

    fn world() -> World {
        let signer =
            TokenSigner::from_pkcs8("k1", &TokenSigner::generate_pkcs8().expect("key")).expect("signer");
        let verifier = TokenVerifier::from_jwks_json(&serde_json::to_string(&signer.jwks()).expect("jwks"))
            .expect("verifier");
        let store = Arc::new(MemoryStore::default());
        let metrics = Arc::new(Metrics::default());
        let clock = Clock::system();
        let apps = Arc::new(Apps::load(store.clone(), clock).expect("apps"));
        let fanout = Arc::new(
            Fanout::start(store.clone(), apps.clone(), FanoutConfig::default(), metrics.clone(), clock)
                .expect("fanout"),
        );
        let outbound = Arc::new(Outbound::new(apps.clone(), fanout, clock));
        let events = Arc::new(EventRecorder::default());
        let key = crate::puid::PuidKey::new(&[9; 32]).expect("key");
        let table = Arc::new(
            PresenceTable::new(key, metrics.clone(), clock, Some(events.clone()))
                .with_max_devices(MAX_DEVICES),
        );
        let limits = NotifyLimits {
            app: Rate { rate: 10, burst: 10 },
            recipient: Rate { rate: 10, burst: 10 },
            outstanding: 10,
        };
        let notifications = Arc::new(Notifications::new(
            table.clone(),
            outbound.clone(),
            store,
            metrics.clone(),
            limits,
            clock,
        ));
        let services = Arc::new(SessionServices {
            verifier,
            table,
            metrics,
            apps,
            outbound,
            notifications,
            protocol: Arc::new(ProtocolConfig::default()),
            drain: Duration::from_secs(2),
            clock,
        });
        World { services, signer, events }
    }

    impl World {
        fn session(&self, id: u64, now: Instant) -> (DeviceSession, crate::handle::Commands) {
            let (handle, commands) = SessionHandle::new(id);
            (DeviceSession::new(self.services.clone(), handle, now), commands)
        }

        /// A 1-RTT session that said its Hello, with the token checks done.
        fn hello_1rtt(
            &self,
            id: u64,
            now: Instant,
            (user, token_device, device): (&str, &str, &str),
        ) -> (DeviceSession, crate::handle::Commands) {
            let (mut session, commands) = self.session(id, now);
            session.handshake_confirmed(now);
            session.handle_stream_data(now, &self.hello(user, token_device, device));
            drive(&mut session, &self.services, now);
            (session, commands)
        }

        fn hello(&self, user: &str, token_device: &str, device: &str) -> Vec<u8> {
            let token = self.signer.mint(user, token_device, self.services.clock.unix_secs(), 3_600);
            let hello = Hello {
                version: 1,
                token: token.parse_text(),
                device_id: device.parse_text(),
                status: Status::Online,
                idle: false,
                message: "hi".parse_text(),
                visibility: AppList::new(vec![AppId::new("app_chat").expect("app id")]).expect("list"),
                heartbeat_ms: 25_000,
                status_seq: 0,
            };
            encode_frame(&Message::Hello(hello)).expect("frame").to_vec()
        }
    }

    trait ParseText {
        fn parse_text<const N: usize>(&self) -> presence_protocol::Text<N>;
    }

    impl ParseText for str {
        fn parse_text<const N: usize>(&self) -> presence_protocol::Text<N> {
            presence_protocol::Text::new(self).expect("within bounds")
        }
    }

    /// Runs the effects a driver would: every token check, at once.
    fn drive(session: &mut DeviceSession, services: &SessionServices, now: Instant) {
        while let Some(Effect::VerifyToken(check)) = session.poll_effect() {
            let result = services.verify(&check.token);
            session.token_verified(now, check, result);
        }
    }

    fn sent_welcome(session: &mut DeviceSession) -> bool {
        std::iter::from_fn(|| session.poll_transmit()).any(|transmit| match transmit {
            Transmit::Stream(bytes) => {
                let mut decoder = presence_protocol::FrameDecoder::new();
                let mut input = &bytes[..];
                matches!(
                    decoder.decode(&mut input),
                    Ok(Some(presence_protocol::Decoded::Message(Message::Welcome(_))))
                )
            }
            Transmit::Datagram(_) => false,
        })
    }

    #[tokio::test]
    async fn a_zero_rtt_hello_waits_for_the_handshake_before_anything_happens() {
        let world = world();
        let now = world.services.clock.now();
        let (mut session, _commands) = world.session(1, now);
        session.opened_in_0rtt();
        session.handle_stream_data(now, &world.hello("alice", "phone", "phone"));
        drive(&mut session, &world.services, now);
        assert!(!session.is_up(), "verified, but the handshake has not confirmed the client");
        assert_eq!(world.services.table.users(), 0, "nothing on the table on 0-RTT alone");
        assert!(!sent_welcome(&mut session), "no Welcome before the handshake");
        assert!(world.events.all().is_empty());
        session.handshake_confirmed(now);
        assert!(session.is_up());
        assert!(sent_welcome(&mut session));
        assert_eq!(world.services.table.users(), 1);
        assert_eq!(world.events.all().len(), 1, "the app sees the user online");
        assert_eq!(world.services.metrics.zero_rtt_accepted.get(), 1);
    }

    #[tokio::test]
    async fn a_zero_rtt_hello_whose_handshake_never_completes_is_refused() {
        let world = world();
        let now = world.services.clock.now();
        let (mut session, _commands) = world.session(1, now);
        session.handle_stream_data(now, &world.hello("alice", "phone", "phone"));
        drive(&mut session, &world.services, now);
        let deadline = session.poll_timeout().expect("a deadline");
        assert!(deadline <= now + world.services.protocol.handshake_timeout);
        session.handle_timeout(deadline);
        assert!(session.is_closed());
        assert_eq!(session.close_code(), ErrorCode::HANDSHAKE_TIMEOUT);
        assert_eq!(world.services.table.users(), 0);
    }

    #[tokio::test]
    async fn a_one_rtt_hello_goes_up_at_once_and_leaves_the_table_when_dropped() {
        let world = world();
        let now = world.services.clock.now();
        let (mut session, _commands) = world.hello_1rtt(1, now, ("alice", "phone", "phone"));
        assert!(session.is_up() && sent_welcome(&mut session));
        assert_eq!(world.services.metrics.zero_rtt_accepted.get(), 0);
        drop(session);
        assert_eq!(world.services.table.users(), 0, "a dropped session leaves no ghost");
        let statuses: Vec<Status> = world.events.all().iter().map(|e| e.status).collect();
        assert_eq!(statuses, [Status::Online, Status::Offline]);
    }

    #[tokio::test]
    async fn a_token_for_another_device_is_refused_and_a_new_session_closes_its_ghost() {
        let world = world();
        let now = world.services.clock.now();
        let (forged, _c) = world.hello_1rtt(1, now, ("alice", "laptop", "phone"));
        assert_eq!(forged.close_code(), ErrorCode::UNAUTHENTICATED);
        assert_eq!(world.services.table.users(), 0);

        let (mut first, mut first_commands) = world.hello_1rtt(2, now, ("alice", "phone", "phone"));
        let (second, _c) = world.hello_1rtt(3, now, ("alice", "phone", "phone"));
        assert!(second.is_up());
        let command =
            tokio::time::timeout(Duration::from_secs(1), first_commands.recv()).await.expect("a command");
        first.handle_command(now, command);
        assert_eq!(first.close_code(), ErrorCode::REPLACED);
        drop(first);
        assert_eq!(world.services.table.users(), 1, "the ghost's end does not take the new session off");
    }

    #[tokio::test]
    async fn a_device_beyond_the_users_cap_is_refused_with_too_many_devices() {
        let world = world();
        let now = world.services.clock.now();
        let mut up: Vec<_> = (0..MAX_DEVICES)
            .map(|i| world.hello_1rtt(u64::from(i) + 1, now, ("alice", &format!("d{i}"), &format!("d{i}"))))
            .collect();
        assert!(up.iter_mut().all(|(session, _)| session.is_up() && sent_welcome(session)));
        let events = world.events.all().len();

        let (mut extra, _c) = world.hello_1rtt(10, now, ("alice", "extra", "extra"));
        assert!(extra.is_closed() && !extra.is_up());
        assert_eq!(extra.close_code(), ErrorCode::TOO_MANY_DEVICES);
        assert!(!sent_welcome(&mut extra), "a refused device is never welcomed");
        assert_eq!(world.services.table.sessions_of("alice").len(), MAX_DEVICES as usize);
        assert_eq!(world.events.all().len(), events, "the apps saw nothing of it");
        let refused = ReasonLabel { reason: "devices_per_user" };
        assert_eq!(world.services.metrics.refusals.get_or_create(&refused).get(), 1);
        drop(extra);
        assert_eq!(
            world.services.table.sessions_of("alice").len(),
            MAX_DEVICES as usize,
            "its end takes nobody off"
        );

        // A device of the cap reconnecting replaces its own session; bob has his own cap.
        let (again, _c) = world.hello_1rtt(11, now, ("alice", "d0", "d0"));
        assert!(again.is_up(), "a reconnect is not a new device");
        let (bob, _c) = world.hello_1rtt(12, now, ("bob", "extra", "extra"));
        assert!(bob.is_up());
        // Once one of alice's devices leaves, a new one fits.
        drop(up.pop());
        let (late, _c) = world.hello_1rtt(13, now, ("alice", "extra", "extra"));
        assert!(late.is_up());
    }
}
