//! Ping datagrams: the heartbeat and status carrier, sent in QUIC DATAGRAM frames.
//!
//! Two bytes in version 1 (payloads of up to [`MAX_PING_LEN`] are accepted, the extra bytes
//! reserved):
//!
//! ```text
//!  byte 0:  7 6 | 5 4    | 3    | 2   | 1 0
//!           ver | status | idle | ack | kind
//!  byte 1:  status sequence number (u8, wrapping)
//! ```
//!
//! A steady-state heartbeat is a `Heartbeat` with `ack` clear, and the server does not
//! answer it. A status change is a `Heartbeat` carrying the next sequence number with `ack`
//! set; the server applies it if the number is newer and answers with an `Ack` datagram
//! echoing it. See PROTOCOL.md for the retransmission rules.
//!
//! Kinds 2 and 3 are the delayed echo of the adaptive heartbeat, four bytes long
//! ([`EchoPing`]): a device sends a `Probe` asking for an `Echo` after a delay and stays
//! silent; the echo arrives only if the path's NAT kept its binding that long.

use crate::error::DecodeError;
use crate::limits::MAX_PING_LEN;
use crate::message::{PROTOCOL_VERSION, Status};

/// Length of a version 1 ping.
pub const PING_LEN: usize = 2;

/// What a ping datagram is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PingKind {
    /// Device → server: liveness, and the current status.
    Heartbeat = 0,
    /// Server → device: acknowledges a status sequence number.
    Ack = 1,
}

/// One decoded ping datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ping {
    /// Heartbeat or acknowledgement.
    pub kind: PingKind,
    /// The sender's view of the device's status.
    pub status: Status,
    /// The device's idle flag.
    pub idle: bool,
    /// On a heartbeat: the device wants an `Ack` for `seq`. Always clear on an `Ack`.
    pub ack_requested: bool,
    /// The status sequence number this status belongs to.
    pub seq: u8,
}

impl Ping {
    /// A steady-state heartbeat: no answer expected.
    pub fn heartbeat(status: Status, idle: bool, seq: u8) -> Ping {
        Ping { kind: PingKind::Heartbeat, status, idle, ack_requested: false, seq }
    }

    /// Encodes the ping; infallible, the layout has no variable parts.
    pub fn encode(&self) -> [u8; PING_LEN] {
        let head = (PROTOCOL_VERSION << 6)
            | (self.status.code() << 4)
            | (u8::from(self.idle) << 3)
            | (u8::from(self.ack_requested) << 2)
            | self.kind as u8;
        [head, self.seq]
    }

    /// Decodes a datagram payload. Total: any bytes give a ping or an error.
    pub fn decode(payload: &[u8]) -> Result<Ping, DecodeError> {
        let (&head, &seq) = match payload {
            [head, seq, ..] if payload.len() <= MAX_PING_LEN => (head, seq),
            _ => return Err(DecodeError::PingLength { len: payload.len() }),
        };
        let version = head >> 6;
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::PingVersion { version });
        }
        let kind = match head & 0b11 {
            0 => PingKind::Heartbeat,
            1 => PingKind::Ack,
            kind => return Err(DecodeError::PingKind { kind }),
        };
        // Two bits always name a status: the table has exactly four entries.
        let status = Status::from_code((head >> 4) & 0b11).unwrap_or(Status::Online);
        Ok(Ping { kind, status, idle: head & 0b1000 != 0, ack_requested: head & 0b100 != 0, seq })
    }
}

/// Whether status sequence number `a` is newer than `b` (serial number arithmetic, RFC 1982,
/// over u8): `a` is newer when it is 1 to 127 steps ahead of `b`.
pub fn seq_newer(a: u8, b: u8) -> bool {
    (1..=127).contains(&a.wrapping_sub(b))
}

/// Length of a `Probe` or `Echo` ping: the two ping bytes and a 16-bit delay.
pub const ECHO_LEN: usize = 4;

/// Which half of a delayed echo an [`EchoPing`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EchoKind {
    /// Device → server: a heartbeat that also asks for an `Echo` after `delay_secs`.
    Probe = 2,
    /// Server → device: the answer to a `Probe`, sent `delay_secs` after it arrived. With
    /// `delay_secs` 0 and no probe behind it, it tells the device that its address changed.
    Echo = 3,
}

/// A `Probe` or `Echo` ping (kinds 2 and 3): the ping's first two bytes, then the delay in
/// seconds (u16, big-endian). Separate from [`Ping`] because it is longer, and because a
/// version 1 peer that predates it drops it as a ping of a reserved kind: a probe to an old
/// server is simply never echoed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EchoPing {
    /// Probe or echo.
    pub kind: EchoKind,
    /// The sender's view of the device's status (as in a heartbeat).
    pub status: Status,
    /// The device's idle flag.
    pub idle: bool,
    /// The status sequence number the status belongs to.
    pub seq: u8,
    /// How long after the probe the echo is due, in seconds; echoed back unchanged.
    pub delay_secs: u16,
}

impl EchoPing {
    /// Encodes the ping; infallible, the layout has no variable parts.
    pub fn encode(&self) -> [u8; ECHO_LEN] {
        let head = (PROTOCOL_VERSION << 6)
            | (self.status.code() << 4)
            | (u8::from(self.idle) << 3)
            | self.kind as u8;
        let [high, low] = self.delay_secs.to_be_bytes();
        [head, self.seq, high, low]
    }

    /// Decodes a datagram payload. Total: any bytes give an echo ping or an error. Exactly
    /// [`ECHO_LEN`] bytes; the ack bit is ignored.
    pub fn decode(payload: &[u8]) -> Result<EchoPing, DecodeError> {
        let &[head, seq, high, low] = payload else {
            return Err(DecodeError::PingLength { len: payload.len() });
        };
        let version = head >> 6;
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::PingVersion { version });
        }
        let kind = match head & 0b11 {
            2 => EchoKind::Probe,
            3 => EchoKind::Echo,
            kind => return Err(DecodeError::PingKind { kind }),
        };
        let status = Status::from_code((head >> 4) & 0b11).unwrap_or(Status::Online);
        let delay_secs = u16::from_be_bytes([high, low]);
        Ok(EchoPing { kind, status, idle: head & 0b1000 != 0, seq, delay_secs })
    }
}
