//! # presence-protocol
//!
//! The device channel of Presence, without I/O. A device keeps one QUIC connection to the
//! daemon; on it travel two things, and this crate defines both exactly (PROTOCOL.md at the
//! repository root is the normative text, and its test vectors are checked against this code):
//!
//! - **Control frames** on one bidirectional stream the device opens: `varint length ‖
//!   varint kind ‖ fields`, fields in postcard encoding. [`Message`] lists every kind;
//!   [`frame`] frames and unframes them.
//! - **Ping datagrams** in QUIC DATAGRAM frames: two bytes of version, status, idle flag and
//!   a status sequence number. A steady-state heartbeat is one of them and nothing else;
//!   [`ping`] has the bit layout and the reliability rule for status changes.
//!
//! ## Layout
//!
//! - [`limits`]: every maximum, with a compile-time proof that the largest message fits a frame.
//! - [`bounded`]: [`Text`] and [`List`], fields whose length limit is part of the type, so a
//!   decoder checks the limit before it allocates.
//! - [`message`]: the message types and their kind numbers; [`error`]: error codes and errors.
//! - [`frame`] and [`ping`]: the codecs. Both are total: any bytes give a value or an error.
//! - [`server`] and [`client`]: the two session state machines; the server's per-session
//!   rate limits are token buckets on the caller's clock, and the client's adaptive
//!   heartbeat ([`AdaptiveHeartbeat`]) learns how long the path's NAT keeps a silent binding.
//!
//! ## Sans-IO
//!
//! Like `quinn-proto`, the state machines never touch a socket or a clock. A driver feeds
//! them input with `handle_stream_data`, `handle_datagram` and `handle_timeout`, passing
//! `now` each time, and drains output with `poll_transmit`, `poll_event` and
//! `poll_timeout`. The daemon and the client library are such drivers over quinn; the tests
//! drive a pair over a simulated lossy link with a virtual clock, deterministically.
//!
//! ```
//! use std::{sync::Arc, time::{Duration, Instant}};
//! use presence_protocol::*;
//!
//! let now = Instant::now();
//! let hello = Hello {
//!     version: PROTOCOL_VERSION,
//!     token: Token::new("header.claims.signature")?,
//!     device_id: DeviceId::new("phone-1")?,
//!     status: Status::Online,
//!     idle: false,
//!     message: StatusText::default(),
//!     visibility: AppList::new(vec![AppId::new("chat")?])?,
//!     heartbeat_ms: 60_000,
//!     status_seq: 0,
//! };
//! let mut device = ClientSession::new(ClientConfig::default(), now, hello);
//! let mut server = ServerSession::new(Arc::new(ServerConfig::default()), now);
//! while let Some(Transmit::Stream(bytes)) = device.poll_transmit() {
//!     server.handle_stream_data(now, &bytes);
//! }
//! assert!(matches!(server.poll_event(), Some(ServerEvent::Hello(_))));
//! let accept = Accept { session_id: 7, server_time_ms: 0, token_valid_for: None };
//! server.accept(now, accept)?;
//! while let Some(Transmit::Stream(bytes)) = server.poll_transmit() {
//!     device.handle_stream_data(now, &bytes);
//! }
//! assert!(device.is_active());
//! // The first heartbeat is due one interval after the welcome.
//! assert_eq!(device.poll_timeout(), Some(now + Duration::from_secs(60)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

mod adaptive;
pub mod bounded;
pub mod client;
pub mod error;
pub mod frame;
pub mod limits;
pub mod message;
pub mod ping;
mod rate;
pub mod server;
mod session;

pub use bounded::{LimitError, List, Text};
pub use client::{AdaptCause, AdaptiveHeartbeat, ClientConfig, ClientEvent, ClientSession};
pub use error::{DecodeError, EncodeError, ErrorCode};
pub use frame::{Decoded, FrameDecoder, decode_body, encode_body, encode_frame};
pub use message::*;
pub use ping::{ECHO_LEN, EchoKind, EchoPing, PING_LEN, Ping, PingKind, seq_newer};
pub use server::{Accept, ServerConfig, ServerEvent, ServerSession};
pub use session::{Close, SessionError, Transmit};
