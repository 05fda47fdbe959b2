//! Pieces shared by both session state machines.

use bytes::Bytes;

use crate::error::ErrorCode;
use crate::frame::encode_frame;
use crate::message::{ErrorMessage, Message, Reason};
use crate::ping::{EchoPing, Ping};

/// Bytes a session wants sent; the driver moves them onto the QUIC connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// A complete frame for the control stream, in order.
    Stream(Bytes),
    /// A ping for a DATAGRAM frame; losing it is allowed.
    Datagram(Bytes),
}

/// How and why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// The code; also the QUIC application close code the driver should use.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub reason: String,
    /// Whether the peer ended it (with an `Error` frame) rather than this end.
    pub by_peer: bool,
}

/// A session method was called when it could not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The session is not in the phase this call needs (for example, not yet welcomed).
    #[error("session is {phase}, not ready for this call")]
    WrongPhase {
        /// The phase the session is in.
        phase: &'static str,
    },
    /// No pending notification has this id (never received, answered or expired).
    #[error("no pending notification {id}")]
    UnknownNotification {
        /// The id asked for.
        id: u64,
    },
}

/// Queues a frame. Every message is built from bounded fields, and the limits module proves
/// at compile time that the largest fits in a frame, so encoding cannot fail here.
pub(crate) fn queue_frame(transmits: &mut std::collections::VecDeque<Transmit>, message: &Message) {
    if let Ok(frame) = encode_frame(message) {
        transmits.push_back(Transmit::Stream(frame));
    }
}

/// Queues a ping datagram.
pub(crate) fn queue_ping(transmits: &mut std::collections::VecDeque<Transmit>, ping: Ping) {
    transmits.push_back(Transmit::Datagram(Bytes::copy_from_slice(&ping.encode())));
}

/// Queues a probe or echo datagram.
pub(crate) fn queue_echo(transmits: &mut std::collections::VecDeque<Transmit>, ping: EchoPing) {
    transmits.push_back(Transmit::Datagram(Bytes::copy_from_slice(&ping.encode())));
}

/// The `Error` message a closing end sends; the reason is cut to fit.
pub(crate) fn error_message(code: ErrorCode, reason: &str) -> Message {
    Message::Error(ErrorMessage { code, message: Reason::truncating(reason) })
}
