//! Fuzz targets for `presence-protocol`, for cargo-fuzz (`cargo fuzz run <target>`).
//!
//! The targets in `fuzz_targets/` are one line each; the checks live here so they are
//! shared and readable:
//!
//! - [`codec::control_frame`]: arbitrary bytes as a control stream and as one frame body.
//!   Never a panic; feeding whole or in pieces gives the same frames; every decoded message
//!   round-trips through `encode_frame`.
//! - [`codec::ping`]: arbitrary bytes as a ping datagram; a decoded ping round-trips.
//! - [`server::server_session`] and [`client::client_session`]: a session state machine
//!   driven by a program read from the input (stream bytes, well-formed frames, datagrams,
//!   clock moves, timers and every API call of that end), with the state machine's
//!   guarantees checked after each step.
//!
//!
//! The daemon's decoders (`presenced`), each a target of its own:
//!
//! - [`jwt::jwt`]: device tokens (JWT header, claims, signature) and the JWKS document.
//! - [`api::api_request`]: programs of HTTPS API requests through the daemon's real router,
//!   every answer checked against openapi.json.
//! - [`webhook::webhook_secret`]: Standard Webhooks secrets and signature verification.
//! - [`webhook::webhook_url`]: the webhook URL policy and the operator's CIDR allow-list.
//! - [`settings::settings_toml`]: the operator's TOML configuration.
//! - [`outbox::outbox_log`]: the webhook outbox's log records, read back as after a crash.
//!
//! Seed corpora live in `corpus/<target>/`; `cargo run --example seeds` writes them anew
//! from [`messages::every_kind`] and the seed programs of the session targets.

#![forbid(unsafe_code)]

pub mod api;
pub mod client;
pub mod codec;
pub mod input;
pub mod jwt;
pub mod messages;
pub mod outbox;
pub mod server;
pub mod settings;
pub mod webhook;

pub use api::api_request;
pub use client::client_session;
pub use codec::{control_frame, ping};
pub use jwt::jwt;
pub use outbox::outbox_log;
pub use server::server_session;
pub use settings::settings_toml;
pub use webhook::{webhook_secret, webhook_url};
