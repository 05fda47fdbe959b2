//! # presence-bench
//!
//! Performance measurement for Presence, in two parts.
//!
//! - **Micro-benchmarks** (criterion, `benches/`): the wire protocol's codecs and the
//!   server session's per-heartbeat hot path (`benches/codec.rs`); presence-table updates
//!   under two-thread contention against other maps (`benches/table.rs`); PUID derivation
//!   and webhook batch encoding plus signing (`benches/webhook.rs`). They say what one
//!   operation costs, in isolation.
//! - **The load generator** ([`load`], the `presence-load` binary): many simulated devices
//!   against a running daemon, measuring what engineers choose a presence system by:
//!   sessions held and the daemon memory per session (as a ratio to a bare quinn server
//!   measured in the same run), handshake rates, heartbeat traffic, and how long a status
//!   change takes to reach the AppService as a webhook. BENCHMARKS.md at the repository root
//!   has the commands and this machine's figures.
//!
//! - **Fan-out throughput** ([`fanout`], the `presence-fanout` binary): presence events
//!   through the daemon's real webhook fan-out (durable redb outbox, batching, signing,
//!   HTTPS) into a verifying receiver on loopback, in events per second with the CPU each
//!   part used.
//!
//! The shared [`fixtures`] are the realistic messages and sessions the benches measure, so
//! every bench speaks of the same "typical" traffic.
//!
//! `scripts/heartbeat-wire.sh` captures one heartbeat round trip on the wire (tcpdump on
//! loopback) and prints its packets and bytes.
//!
//! Run the benches with `cargo bench -p presence-bench`; a quick pass is
//! `cargo bench -p presence-bench --bench codec -- --warm-up-time 1 --measurement-time 2`.
//! Run the load generator with `cargo run --release -p presence-bench --bin presence-load --
//! --help`.

#![forbid(unsafe_code)]

pub mod fanout;
pub mod load;

pub mod fixtures {
    //! Typical messages and an accepted server session.
    //!
    //! "Typical" means what a phone sends and receives in the common case: a compact JWT
    //! of about 300 bytes, two apps in the visibility list, a short status message, a
    //! notification with a one-line title, a sentence of body and a small JSON payload.

    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use presence_protocol::*;

    fn text<const MAX: usize>(value: &str) -> Text<MAX> {
        Text::new(value).expect("fixture text within its limit")
    }

    /// A device token of exactly `len` bytes shaped like a compact JWS
    /// (`header.claims.signature`, base64url).
    pub fn token(len: usize) -> Token {
        let header = "eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCJ9";
        let signature = "x".repeat(86); // an Ed25519 signature, base64url
        let claims_len = len.saturating_sub(header.len() + signature.len() + 2).max(1);
        let claims: String =
            "eyJzdWIiOiJ1c2VyLTQyIiwiZGV2IjoicGhvbmUtMSJ9".chars().cycle().take(claims_len).collect();
        text(&format!("{header}.{claims}.{signature}"))
    }

    /// The `Hello` a phone opens its session with: a 300-byte token, two apps.
    pub fn typical_hello() -> Message {
        Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            token: token(300),
            device_id: text("7d1c9a52-phone"),
            status: Status::Online,
            idle: false,
            message: text("on the train"),
            visibility: AppList::new(vec![text("chat.example"), text("games.example")])
                .expect("two apps fit"),
            heartbeat_ms: 60_000,
            status_seq: 3,
        })
    }

    /// A status change with a message, as sent on the control stream.
    pub fn typical_status() -> Message {
        Message::Status(StatusUpdate {
            status: Status::Unavailable,
            idle: false,
            message: text("in a meeting until 3"),
            seq: 4,
        })
    }

    /// A live notification from a chat app: call invitation with a small JSON payload.
    pub fn typical_notify() -> Message {
        Message::Notify(Notify {
            id: 1_048_577,
            app_id: text("chat.example"),
            title: text("Ana is calling"),
            body: text("Pick up to join the voice call in #general. Ana, Bo and 2 others are in it."),
            data: text(
                r#"{"call":"c-7781f0","room":"general","video":false,"participants":4,"deeplink":"chat://call/c-7781f0"}"#,
            ),
            expires_in_ms: 30_000,
        })
    }

    /// The steady-state heartbeat: online, not idle, no acknowledgement wanted.
    pub fn heartbeat() -> Ping {
        Ping::heartbeat(Status::Online, false, 3)
    }

    /// A server session that has received [`typical_hello`] and sent `Welcome`, with
    /// every event and transmit drained: the state a session spends its life in.
    pub fn accepted_server(now: Instant) -> ServerSession {
        let mut session = ServerSession::new(Arc::new(ServerConfig::default()), now);
        let hello = encode_frame(&typical_hello()).expect("typical hello fits a frame");
        session.handle_stream_data(now, &hello);
        assert!(matches!(session.poll_event(), Some(ServerEvent::Hello(_))), "hello accepted for auth");
        let accept =
            Accept { session_id: 1, server_time_ms: 0, token_valid_for: Some(Duration::from_secs(3600)) };
        session.accept(now, accept).expect("session awaits accept");
        while session.poll_transmit().is_some() {}
        while session.poll_event().is_some() {}
        assert!(session.is_active());
        session
    }
}
