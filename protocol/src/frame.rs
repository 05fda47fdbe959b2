//! Framing on the control stream: `varint length ‖ body`, body = `varint kind ‖ fields`.
//!
//! The decoder follows mini-redis: "need more bytes" is `Ok(None)`, never an error. It
//! consumes input incrementally and buffers at most one partial frame
//! ([`MAX_PREFIX_LEN`] + [`MAX_FRAME_LEN`] bytes), so a peer that streams without pause
//! cannot grow it; an idle session's decoder holds no heap memory at all.

use bytes::Bytes;

use crate::error::{DecodeError, EncodeError};
use crate::limits::{MAX_FRAME_LEN, MAX_PREFIX_LEN};
use crate::message::Message;

/// Names of the known kinds by number, for errors about frames that failed to decode.
const KIND_NAMES: [&str; Message::KINDS as usize] = [
    "hello",
    "welcome",
    "status",
    "visibility",
    "authorize",
    "authorized",
    "revoke",
    "revoked",
    "denied",
    "notify",
    "notify_response",
    "cancel",
    "go_away",
    "error",
    "reauth",
];

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A frame of a kind this version knows.
    Message(Message),
    /// A frame of a kind from a newer version; receivers skip it (PROTOCOL.md §Unknown kinds).
    Unknown {
        /// The frame's kind.
        kind: u32,
    },
}

/// Encodes a message as a frame body (kind and fields, no length prefix).
pub fn encode_body(message: &Message) -> Result<Vec<u8>, EncodeError> {
    let body = postcard::to_allocvec(message).map_err(EncodeError::Serialize)?;
    if body.len() > MAX_FRAME_LEN {
        return Err(EncodeError::FrameTooLarge { len: body.len(), max: MAX_FRAME_LEN });
    }
    Ok(body)
}

/// Encodes a message as a complete frame, length prefix included, ready for the stream.
pub fn encode_frame(message: &Message) -> Result<Bytes, EncodeError> {
    let body = encode_body(message)?;
    let mut frame = Vec::with_capacity(MAX_PREFIX_LEN + body.len());
    let mut len = body.len();
    loop {
        // Truncation is intended: the low seven bits go out first.
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            frame.push(byte);
            break;
        }
        frame.push(byte | 0x80);
    }
    frame.extend_from_slice(&body);
    Ok(Bytes::from(frame))
}

/// Decodes one frame body. Total: every input gives a value or an error, never a panic, and
/// nothing is allocated beyond the field limits.
pub fn decode_body(body: &[u8]) -> Result<Decoded, DecodeError> {
    let Some(kind) = leading_kind(body) else {
        return Err(if body.is_empty() {
            DecodeError::EmptyFrame
        } else {
            DecodeError::Malformed { kind: "unknown", detail: postcard::Error::DeserializeBadVarint }
        });
    };
    let Some(name) = usize::try_from(kind).ok().and_then(|k| KIND_NAMES.get(k)) else {
        return Ok(Decoded::Unknown { kind });
    };
    // Bytes after the last known field are ignored: later revisions may append fields.
    postcard::take_from_bytes::<Message>(body)
        .map(|(message, _rest)| Decoded::Message(message))
        .map_err(|detail| DecodeError::Malformed { kind: name, detail })
}

/// Reads the kind varint (u32, at most five bytes) at the start of a body.
fn leading_kind(body: &[u8]) -> Option<u32> {
    let mut value: u64 = 0;
    for (i, &byte) in body.iter().take(5).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return u32::try_from(value).ok();
        }
    }
    None
}

/// Parses a length prefix: `Ok(None)` while incomplete, else `(body length, prefix length)`.
fn parse_prefix(bytes: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value: usize = 0;
    for i in 0..MAX_PREFIX_LEN {
        let Some(&byte) = bytes.get(i) else {
            return Ok(None);
        };
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if i > 0 && byte == 0 {
                return Err(DecodeError::BadLengthPrefix);
            }
            if value == 0 {
                return Err(DecodeError::EmptyFrame);
            }
            if value > MAX_FRAME_LEN {
                return Err(DecodeError::FrameTooLarge { len: value as u64, max: MAX_FRAME_LEN });
            }
            return Ok(Some((value, i + 1)));
        }
    }
    // A fourth byte would be needed: the frame is at least 2^21 bytes.
    Err(DecodeError::FrameTooLarge { len: 1 << (7 * MAX_PREFIX_LEN), max: MAX_FRAME_LEN })
}

/// Incremental frame decoder for one control stream.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    /// The partial frame (prefix and body bytes) carried between calls; empty between frames.
    partial: Vec<u8>,
}

impl FrameDecoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of a partial frame held between calls.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Takes bytes from the front of `input` and returns the next complete frame, or
    /// `Ok(None)` once `input` is used up without completing one. Call it in a loop until
    /// it returns `Ok(None)`. After an error the stream is unusable: close the session.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Decoded>, DecodeError> {
        if self.partial.is_empty() {
            // Fast path: a whole frame in the input is decoded in place, without copying.
            if let Some((len, prefix)) = parse_prefix(input)? {
                if let Some(body) = input.get(prefix..prefix + len) {
                    *input = &input[prefix + len..];
                    return decode_body(body).map(Some);
                }
            }
        }
        loop {
            match parse_prefix(&self.partial)? {
                None => {
                    let Some((&byte, rest)) = input.split_first() else {
                        return Ok(None);
                    };
                    self.partial.push(byte);
                    *input = rest;
                }
                Some((len, prefix)) => {
                    let missing = prefix + len - self.partial.len();
                    let take = missing.min(input.len());
                    self.partial.extend_from_slice(&input[..take]);
                    *input = &input[take..];
                    if take < missing {
                        return Ok(None);
                    }
                    let result = decode_body(&self.partial[prefix..]);
                    // Give the memory back: idle sessions should hold no buffer.
                    self.partial = Vec::new();
                    return result.map(Some);
                }
            }
        }
    }
}
