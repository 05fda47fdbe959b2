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
//! Seed corpora live in `corpus/<target>/`; `cargo run --example seeds` writes them anew
//! from [`messages::every_kind`] and the seed programs of the session targets.

#![forbid(unsafe_code)]

pub mod client;
pub mod codec;
pub mod input;
pub mod messages;
pub mod server;

pub use client::client_session;
pub use codec::{control_frame, ping};
pub use server::server_session;
