//! Error codes on the wire and typed errors in the API.

use core::fmt;

use serde::{Deserialize, Serialize};

/// A protocol error code, carried in `Error` and `Denied` frames and as the QUIC application
/// close code. A newtype rather than an enum so that a code from a newer peer survives
/// decoding: unknown codes are treated like [`ErrorCode::INTERNAL`] but keep their number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorCode(pub u16);

macro_rules! error_codes {
    ($($(#[$doc:meta])* $name:ident = $value:expr, $label:literal;)*) => {
        impl ErrorCode {
            $($(#[$doc])* pub const $name: ErrorCode = ErrorCode($value);)*

            /// Every code this version defines.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];

            /// The stable snake_case name for logs, metrics and the CLI.
            pub fn name(self) -> &'static str {
                match self {
                    $(ErrorCode::$name => $label,)*
                    _ => "unknown",
                }
            }
        }
    };
}

error_codes! {
    /// A clean close; nothing went wrong.
    NO_ERROR = 0, "no_error";
    /// A message arrived in the wrong state or from the wrong end.
    PROTOCOL_VIOLATION = 1, "protocol_violation";
    /// A frame of a known kind did not decode.
    MALFORMED_FRAME = 2, "malformed_frame";
    /// A length prefix announced more than the maximum frame size.
    FRAME_TOO_LARGE = 3, "frame_too_large";
    /// `Hello` named a version the server does not speak.
    UNSUPPORTED_VERSION = 4, "unsupported_version";
    /// No `Hello` (or no `Welcome`) within the handshake timeout.
    HANDSHAKE_TIMEOUT = 5, "handshake_timeout";
    /// The token was forged, malformed, for another audience, or for another device.
    UNAUTHENTICATED = 6, "unauthenticated";
    /// The token expired, at connect or during the session without a `Reauth`.
    TOKEN_EXPIRED = 7, "token_expired";
    /// A field exceeded a limit the server announced.
    LIMIT_EXCEEDED = 8, "limit_exceeded";
    /// The device sent too much too fast.
    RATE_LIMITED = 9, "rate_limited";
    /// The same device opened a newer session; this one is closed.
    REPLACED = 10, "replaced";
    /// The server holds as many sessions as it allows.
    SERVER_BUSY = 11, "server_busy";
    /// The server is shutting down (after `GoAway`).
    SHUTTING_DOWN = 12, "shutting_down";
    /// The server failed; retry later.
    INTERNAL = 13, "internal";
    /// `Authorize` or `Revoke` named an app the server does not know (non-fatal, in `Denied`).
    UNKNOWN_APP = 14, "unknown_app";
    /// The user already has as many devices connected as the server allows; a new device
    /// is refused (a device replacing its own session is not).
    TOO_MANY_DEVICES = 15, "too_many_devices";
}

impl ErrorCode {
    /// Whether a code defined by this version; unknown codes come from newer peers.
    pub fn is_known(self) -> bool {
        ErrorCode::ALL.contains(&self)
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// Bytes from a peer that could not be decoded. Decoders return this and never panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A frame's length prefix announced more than the maximum frame size.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// The announced length (saturated at `u32::MAX`).
        len: u64,
        /// The maximum frame size.
        max: usize,
    },
    /// A length prefix was not a minimal varint of at most three bytes.
    #[error("invalid frame length prefix")]
    BadLengthPrefix,
    /// A frame had no bytes at all, so not even a kind.
    #[error("empty frame")]
    EmptyFrame,
    /// A frame of a known kind did not decode (bad varint, bad UTF-8, a limit exceeded,
    /// missing bytes, an unknown enum value).
    #[error("malformed {kind} frame: {detail}")]
    Malformed {
        /// The frame kind's name.
        kind: &'static str,
        /// What postcard reported.
        detail: postcard::Error,
    },
    /// A ping datagram had a length outside 2..=4 bytes.
    #[error("ping datagram of {len} bytes (expected 2 to 4)")]
    PingLength {
        /// The datagram's length.
        len: usize,
    },
    /// A ping datagram named a protocol version this end does not speak.
    #[error("ping datagram of unsupported version {version}")]
    PingVersion {
        /// The version bits.
        version: u8,
    },
    /// A ping datagram of a reserved kind.
    #[error("ping datagram of reserved kind {kind}")]
    PingKind {
        /// The kind bits.
        kind: u8,
    },
}

impl DecodeError {
    /// The code a peer closes the session with when it receives these bytes on the control
    /// stream. (Bad datagrams are dropped instead: see PROTOCOL.md.)
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::FrameTooLarge { .. } => ErrorCode::FRAME_TOO_LARGE,
            _ => ErrorCode::MALFORMED_FRAME,
        }
    }
}

/// Encoding failed; only possible when a frame would exceed the maximum frame size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded message is larger than the maximum frame size.
    #[error("encoded frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// The encoded length.
        len: usize,
        /// The maximum frame size.
        max: usize,
    },
    /// postcard failed to serialize.
    #[error("serialization failed: {0}")]
    Serialize(postcard::Error),
}
