//! The test vectors of PROTOCOL.md, checked against the code.
//!
//! The spec holds its vectors in fenced code blocks with the info string `vectors`, one
//! `<name> <hex>` per line. This test reads them straight out of PROTOCOL.md and compares
//! each with the expectation of the same name below: a valid frame or ping must encode to
//! exactly the spec's bytes and decode back to the value; every other vector must decode the
//! way the spec says (skipped, incomplete, or rejected with a given error). The test fails
//! when a vector in the spec has no expectation here, when an expectation here has no vector
//! in the spec, and when a message kind lacks a valid vector, so spec and code cannot drift.
//!
//! To print the vectors from the code (for a new vector, or after an intended change):
//! `cargo test -p presence-protocol --test vectors -- --ignored --nocapture print_vectors`.

use std::collections::{BTreeMap, BTreeSet};

use presence_protocol::limits::{MAX_APP_ID_LEN, MAX_FRAME_LEN};
use presence_protocol::*;

const SPEC: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../PROTOCOL.md"));

/// The encoded size of `hello_typical`, length prefix included, as PROTOCOL.md states it.
const TYPICAL_HELLO_FRAME_LEN: usize = 400;

/// A compact JWT of the size a device token has in practice (EdDSA, `sub`, `aud`, `dev`,
/// `iat`, `exp`): 325 bytes.
const TYPICAL_TOKEN: &str = "eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCIsImtpZCI6ImRrLTIwMjYtMDEifQ.\
eyJpc3MiOiJodHRwczovL3ByZXNlbmNlLmV4YW1wbGUiLCJzdWIiOiJ1XzhmMTRlNDVmY2VlYTE2N2EiLCJhdWQiOiJwcmVz\
ZW5jZSIsImRldiI6InBob25lLTdjOWUiLCJpYXQiOjE3NjcyMjU2MDAsImV4cCI6MTc2NzIyOTIwMH0.\
FO0KJ33sg2hyrfg8xSA0glZT-24mvw-QNk0zQk7QWYUrr6gcHqGaUBIBLZIoAkXUnAnNiDTbHD0-V9GprooPkw";

/// The same device's next token, an hour later, as a `Reauth` carries it.
const RENEWED_TOKEN: &str = "eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCIsImtpZCI6ImRrLTIwMjYtMDEifQ.\
eyJpc3MiOiJodHRwczovL3ByZXNlbmNlLmV4YW1wbGUiLCJzdWIiOiJ1XzhmMTRlNDVmY2VlYTE2N2EiLCJhdWQiOiJwcmVz\
ZW5jZSIsImRldiI6InBob25lLTdjOWUiLCJpYXQiOjE3NjcyMjg2MDAsImV4cCI6MTc2NzIzMjIwMH0.\
VmCSzHY_xdbym1GneA7AlSnqG2oOPEUoPggTVMa2_DPFRkmk1V2TnqOdZpfEuVB2mTGJDhr4vp9KE4p0mW7bAw";

/// What a vector's bytes must be and do.
#[derive(Debug)]
enum Expect {
    /// A valid frame as an encoder writes it: `encode_frame` gives exactly these bytes, and
    /// the decoder gives the message back.
    Frame(Message),
    /// Bytes no conforming encoder writes, which the decoder still reads as this message
    /// (appended fields of a later revision, non-minimal varints).
    DecodesTo(Vec<u8>, Message),
    /// A complete frame of a kind this version does not know: skipped, and the stream goes on.
    Skipped(Vec<u8>, u32),
    /// The bytes end inside a frame: the decoder buffers them and waits for more.
    Incomplete(Vec<u8>),
    /// The decoder rejects the bytes; the receiver closes with the error's code.
    Rejected(Vec<u8>, DecodeError, ErrorCode),
    /// A valid ping as an encoder writes it.
    Datagram(Ping),
    /// A datagram no version 1 encoder writes, which a version 1 receiver reads as this ping.
    DatagramDecodesTo(Vec<u8>, Ping),
    /// A datagram a receiver drops (and counts).
    DatagramRejected(Vec<u8>, DecodeError),
    /// A valid probe or echo as an encoder writes it; not a heartbeat or ack.
    Echo(EchoPing),
    /// Bytes of kind 2 or 3 that are no probe or echo: dropped (and counted).
    EchoRejected(Vec<u8>, DecodeError),
}

impl Expect {
    /// The vector's bytes according to the code.
    fn bytes(&self) -> Vec<u8> {
        match self {
            Expect::Frame(message) => encode_frame(message).expect("every vector message encodes").to_vec(),
            Expect::Datagram(ping) => ping.encode().to_vec(),
            Expect::Echo(echo) => echo.encode().to_vec(),
            Expect::DecodesTo(bytes, _)
            | Expect::Skipped(bytes, _)
            | Expect::Incomplete(bytes)
            | Expect::Rejected(bytes, _, _)
            | Expect::DatagramDecodesTo(bytes, _)
            | Expect::DatagramRejected(bytes, _)
            | Expect::EchoRejected(bytes, _) => bytes.clone(),
        }
    }
}

fn text<const MAX: usize>(value: &str) -> Text<MAX> {
    Text::new(value).expect("vector text within its limit")
}

fn apps(ids: &[&str]) -> AppList {
    AppList::new(ids.iter().map(|id| text(id)).collect()).expect("vector list within its limit")
}

/// A frame from a body: the minimal varint length prefix, then the body.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    let mut len = body.len();
    while len >= 0x80 {
        frame.push((len & 0x7f) as u8 | 0x80);
        len >>= 7;
    }
    frame.push(len as u8);
    frame.extend_from_slice(body);
    frame
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn typical_hello() -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        token: text(TYPICAL_TOKEN),
        device_id: text("phone-7c9e"),
        status: Status::Online,
        idle: false,
        message: text("On the train, back at 6"),
        visibility: apps(&["chat.example", "games.example"]),
        heartbeat_ms: 60_000,
        status_seq: 5,
    }
}

fn revoke_chat() -> Message {
    Message::Revoke(Revoke { app_id: text("chat.example") })
}

fn status_away() -> Message {
    Message::Status(StatusUpdate { status: Status::Away, idle: true, message: text("lunch"), seq: 6 })
}

fn malformed(kind: &'static str, detail: postcard::Error) -> DecodeError {
    DecodeError::Malformed { kind, detail }
}

/// Every vector PROTOCOL.md must hold, by name.
fn expectations() -> Vec<(&'static str, Expect)> {
    use Expect::*;
    let heartbeat = |status, idle, seq| Ping::heartbeat(status, idle, seq);
    let echo = |kind, status, idle, seq, delay_secs| EchoPing { kind, status, idle, seq, delay_secs };
    let body_of = |message: &Message| encode_body(message).expect("vector message encodes");
    vec![
        // Kind 0: Hello.
        (
            "hello_minimal",
            Frame(Message::Hello(Hello {
                version: PROTOCOL_VERSION,
                token: text("tok"),
                device_id: text("d1"),
                status: Status::Online,
                idle: false,
                message: text(""),
                visibility: apps(&[]),
                heartbeat_ms: 60_000,
                status_seq: 0,
            })),
        ),
        ("hello_typical", Frame(Message::Hello(typical_hello()))),
        // Kind 1: Welcome.
        (
            "welcome_typical",
            Frame(Message::Welcome(Welcome {
                session_id: 1_234_567,
                heartbeat_ms: 60_000,
                grace_ms: 15_000,
                max_visibility: 64,
                max_message_len: 256,
                server_time_ms: 1_767_225_600_000,
            })),
        ),
        // Kind 2: Status.
        ("status_away_idle", Frame(status_away())),
        (
            "status_online_cleared",
            Frame(Message::Status(StatusUpdate {
                status: Status::Online,
                idle: false,
                message: text(""),
                seq: 255,
            })),
        ),
        // Kind 3: Visibility.
        (
            "visibility_two_apps",
            Frame(Message::Visibility(Visibility { apps: apps(&["chat.example", "games.example"]) })),
        ),
        ("visibility_empty", Frame(Message::Visibility(Visibility { apps: apps(&[]) }))),
        // Kind 4: Authorize.
        (
            "authorize",
            Frame(Message::Authorize(Authorize { app_id: text("chat.example"), state: text("st_4f2a9c") })),
        ),
        // Kind 5: Authorized.
        (
            "authorized",
            Frame(Message::Authorized(Authorized {
                app_id: text("chat.example"),
                puid: text("p_Jq3vY0m1Wc8tXk2Zr9bN4A"),
            })),
        ),
        // Kind 6: Revoke.
        ("revoke", Frame(revoke_chat())),
        // Kind 7: Revoked.
        ("revoked", Frame(Message::Revoked(Revoked { app_id: text("chat.example") }))),
        // Kind 8: Denied.
        (
            "denied_unknown_app",
            Frame(Message::Denied(Denied {
                app_id: text("nope.example"),
                code: ErrorCode::UNKNOWN_APP,
                message: text("no such app"),
            })),
        ),
        // Kind 9: Notify.
        (
            "notify",
            Frame(Message::Notify(Notify {
                id: 1001,
                app_id: text("chat.example"),
                title: text("Ada is calling"),
                body: text("Join the call?"),
                data: text(r#"{"call":"c_81"}"#),
                expires_in_ms: 30_000,
            })),
        ),
        // Kind 10: NotifyResponse.
        (
            "notify_response_accepted",
            Frame(Message::NotifyResponse(NotifyResponse { id: 1001, response: Response::Accepted })),
        ),
        (
            "notify_response_dismissed",
            Frame(Message::NotifyResponse(NotifyResponse { id: 1001, response: Response::Dismissed })),
        ),
        // Kind 11: Cancel.
        ("cancel_answered", Frame(Message::Cancel(Cancel { id: 1001, reason: CancelReason::Answered }))),
        ("cancel_expired", Frame(Message::Cancel(Cancel { id: 7, reason: CancelReason::Expired }))),
        // Kind 12: GoAway.
        (
            "go_away",
            Frame(Message::GoAway(GoAway { reason: text("draining for upgrade"), retry_after_ms: 5_000 })),
        ),
        // Kind 13: Error.
        (
            "error_no_error",
            Frame(Message::Error(ErrorMessage {
                code: ErrorCode::NO_ERROR,
                message: text("closed by the device"),
            })),
        ),
        (
            "error_token_expired",
            Frame(Message::Error(ErrorMessage {
                code: ErrorCode::TOKEN_EXPIRED,
                message: text("device token expired without reauth"),
            })),
        ),
        (
            "error_rate_limited",
            Frame(Message::Error(ErrorMessage {
                code: ErrorCode::RATE_LIMITED,
                message: text("pings over the rate limit"),
            })),
        ),
        (
            "error_unknown_code",
            Frame(Message::Error(ErrorMessage { code: ErrorCode(300), message: text("") })),
        ),
        // Kind 14: Reauth.
        ("reauth", Frame(Message::Reauth(Reauth { token: text(RENEWED_TOKEN) }))),
        // Kinds from newer versions: skipped.
        ("unknown_kind_15", Skipped(framed(&[0x0f, 0x01, 0x02, 0x03]), 15)),
        ("unknown_kind_300", Skipped(framed(&[0xac, 0x02, 0x68, 0x69]), 300)),
        ("unknown_kind_15_empty", Skipped(framed(&[0x0f]), 15)),
        // A later revision's appended field is ignored.
        (
            "extended_revoke_appended_field",
            DecodesTo(framed(&concat(&[&body_of(&revoke_chat()), &[0x01, 0x2a]])), revoke_chat()),
        ),
        // Non-minimal varints: the reference decoder reads them (encoders never write them).
        (
            "lenient_overlong_kind",
            DecodesTo(
                framed(&[0x8b, 0x00, 0x87, 0x80, 0x00, 0x00]),
                Message::Cancel(Cancel { id: 7, reason: CancelReason::Answered }),
            ),
        ),
        (
            "lenient_overlong_string_length",
            DecodesTo(
                framed(&concat(&[&[0x07, 0x8c, 0x00], b"chat.example"])),
                Message::Revoked(Revoked { app_id: text("chat.example") }),
            ),
        ),
        // Bytes the decoder rejects.
        (
            "invalid_frame_too_large",
            Rejected(
                vec![0x81, 0x80, 0x01],
                DecodeError::FrameTooLarge { len: MAX_FRAME_LEN as u64 + 1, max: MAX_FRAME_LEN },
                ErrorCode::FRAME_TOO_LARGE,
            ),
        ),
        (
            "invalid_frame_prefix_four_bytes",
            Rejected(
                vec![0x80, 0x80, 0x80, 0x01],
                DecodeError::FrameTooLarge { len: 1 << 21, max: MAX_FRAME_LEN },
                ErrorCode::FRAME_TOO_LARGE,
            ),
        ),
        ("invalid_frame_empty", Rejected(vec![0x00], DecodeError::EmptyFrame, ErrorCode::MALFORMED_FRAME)),
        (
            "invalid_frame_overlong_prefix",
            Rejected(
                concat(&[&[0x84, 0x00], &body_of(&revoke_chat())[..4]]),
                DecodeError::BadLengthPrefix,
                ErrorCode::MALFORMED_FRAME,
            ),
        ),
        (
            "invalid_frame_truncated",
            Rejected(
                framed(&[0x02, 0x01, 0x01]),
                malformed("status", postcard::Error::DeserializeUnexpectedEnd),
                ErrorCode::MALFORMED_FRAME,
            ),
        ),
        (
            "invalid_frame_truncated_string",
            Rejected(
                framed(&concat(&[&[0x06, 0x0c], b"chat"])),
                malformed("revoke", postcard::Error::DeserializeUnexpectedEnd),
                ErrorCode::MALFORMED_FRAME,
            ),
        ),
        (
            "invalid_frame_bad_bool",
            Rejected(
                framed(&[0x02, 0x01, 0x02, 0x00, 0x06]),
                malformed("status", postcard::Error::DeserializeBadBool),
                ErrorCode::MALFORMED_FRAME,
            ),
        ),
        (
            "invalid_frame_bad_status",
            Rejected(
                framed(&[0x02, 0x04, 0x00, 0x00, 0x06]),
                malformed("status", postcard::Error::SerdeDeCustom),
                ErrorCode::MALFORMED_FRAME,
            ),
        ),
        (
            "invalid_frame_bad_utf8",
            Rejected(
                framed(&[0x06, 0x02, 0xc3, 0x28]),
                malformed("revoke", postcard::Error::DeserializeBadUtf8),
                ErrorCode::MALFORMED_FRAME,
            ),
        ),
        (
            "invalid_frame_over_limit",
            Rejected(
                framed(&concat(&[&[0x06, MAX_APP_ID_LEN as u8 + 1], &[b'a'; MAX_APP_ID_LEN + 1]])),
                malformed("revoke", postcard::Error::SerdeDeCustom),
                ErrorCode::MALFORMED_FRAME,
            ),
        ),
        (
            "invalid_frame_bad_varint",
            Rejected(
                framed(&[0x01, 0x07, 0xe0, 0xd4, 0x03, 0x98, 0x75, 0x40, 0x80, 0x80, 0x04]),
                malformed("welcome", postcard::Error::DeserializeBadVarint),
                ErrorCode::MALFORMED_FRAME,
            ),
        ),
        (
            "invalid_frame_bad_kind_varint",
            Rejected(
                framed(&[0xff, 0xff, 0xff, 0xff, 0x1f]),
                malformed("unknown", postcard::Error::DeserializeBadVarint),
                ErrorCode::MALFORMED_FRAME,
            ),
        ),
        // A frame cut short by the end of the input is not an error: more bytes may follow.
        ("incomplete_frame", Incomplete(framed(&body_of(&status_away()))[..4].to_vec())),
        // Pings.
        ("ping_heartbeat_online", Datagram(heartbeat(Status::Online, false, 0))),
        ("ping_heartbeat_away_idle", Datagram(heartbeat(Status::Away, true, 7))),
        ("ping_heartbeat_unavailable", Datagram(heartbeat(Status::Unavailable, false, 42))),
        ("ping_heartbeat_offline", Datagram(heartbeat(Status::Offline, false, 200))),
        (
            "ping_change_ack_requested",
            Datagram(Ping {
                kind: PingKind::Heartbeat,
                status: Status::Away,
                idle: false,
                ack_requested: true,
                seq: 8,
            }),
        ),
        (
            "ping_ack",
            Datagram(Ping {
                kind: PingKind::Ack,
                status: Status::Away,
                idle: false,
                ack_requested: false,
                seq: 8,
            }),
        ),
        (
            "ping_heartbeat_four_bytes",
            DatagramDecodesTo(vec![0x40, 0x00, 0xff, 0xff], heartbeat(Status::Online, false, 0)),
        ),
        (
            "ping_heartbeat_three_bytes",
            DatagramDecodesTo(vec![0x58, 0x07, 0x00], heartbeat(Status::Away, true, 7)),
        ),
        ("invalid_ping_one_byte", DatagramRejected(vec![0x40], DecodeError::PingLength { len: 1 })),
        (
            "invalid_ping_five_bytes",
            DatagramRejected(vec![0x40, 0x00, 0x00, 0x00, 0x00], DecodeError::PingLength { len: 5 }),
        ),
        (
            "invalid_ping_version_0",
            DatagramRejected(vec![0x00, 0x00], DecodeError::PingVersion { version: 0 }),
        ),
        (
            "invalid_ping_version_2",
            DatagramRejected(vec![0x80, 0x00], DecodeError::PingVersion { version: 2 }),
        ),
        (
            "invalid_ping_reserved_kind_2",
            DatagramRejected(vec![0x42, 0x00], DecodeError::PingKind { kind: 2 }),
        ),
        (
            "invalid_ping_reserved_kind_3",
            DatagramRejected(vec![0x43, 0x00], DecodeError::PingKind { kind: 3 }),
        ),
        // Probes and echoes.
        ("probe_online_30s", Echo(echo(EchoKind::Probe, Status::Online, false, 5, 30))),
        ("probe_away_idle_300s", Echo(echo(EchoKind::Probe, Status::Away, true, 7, 300))),
        ("echo_online_30s", Echo(echo(EchoKind::Echo, Status::Online, false, 5, 30))),
        ("echo_path_changed", Echo(echo(EchoKind::Echo, Status::Online, false, 5, 0))),
        (
            "invalid_probe_three_bytes",
            EchoRejected(vec![0x42, 0x05, 0x1e], DecodeError::PingLength { len: 3 }),
        ),
        (
            "invalid_probe_version_2",
            EchoRejected(vec![0x82, 0x05, 0x00, 0x1e], DecodeError::PingVersion { version: 2 }),
        ),
    ]
}

/// One vector as PROTOCOL.md writes it.
struct SpecVector {
    name: String,
    bytes: Vec<u8>,
    line: usize,
}

/// Every line of every ```` ```vectors ```` block in the spec.
fn spec_vectors() -> Vec<SpecVector> {
    let mut vectors = Vec::new();
    let mut in_block = false;
    for (index, line) in SPEC.lines().enumerate() {
        let line_no = index + 1;
        let trimmed = line.trim();
        if !in_block {
            if let Some(info) = trimmed.strip_prefix("```") {
                in_block = info.trim() == "vectors";
            }
            continue;
        }
        if trimmed.starts_with("```") {
            in_block = false;
            continue;
        }
        if trimmed.is_empty() {
            continue;
        }
        let mut parts = trimmed.split_whitespace();
        let (Some(name), Some(hex), None) = (parts.next(), parts.next(), parts.next()) else {
            panic!("PROTOCOL.md line {line_no}: expected `<name> <hex>`, found {trimmed:?}");
        };
        assert!(
            name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "PROTOCOL.md line {line_no}: vector name {name:?} is not a lowercase identifier"
        );
        vectors.push(SpecVector { name: name.to_owned(), bytes: parse_hex(hex, line_no), line: line_no });
    }
    assert!(!in_block, "PROTOCOL.md: a vectors block is not closed");
    vectors
}

fn parse_hex(hex: &str, line_no: usize) -> Vec<u8> {
    assert!(
        hex.len() % 2 == 0 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "PROTOCOL.md line {line_no}: {hex:?} is not lowercase hex of whole bytes"
    );
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("checked hex digits"))
        .collect()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes frames from `bytes` until the input is used up: all at once, and again one byte
/// at a time, which must give the same result. Stops at the first error.
fn decode_stream(bytes: &[u8]) -> (Vec<Decoded>, Option<DecodeError>, usize) {
    let whole = {
        let mut decoder = FrameDecoder::new();
        let mut input = bytes;
        let mut frames = Vec::new();
        let error = loop {
            match decoder.decode(&mut input) {
                Ok(Some(decoded)) => frames.push(decoded),
                Ok(None) => break None,
                Err(error) => break Some(error),
            }
        };
        (frames, error, decoder.buffered())
    };
    let bytewise = {
        let mut decoder = FrameDecoder::new();
        let mut frames = Vec::new();
        let mut error = None;
        'bytes: for byte in bytes {
            let mut input: &[u8] = &[*byte];
            loop {
                match decoder.decode(&mut input) {
                    Ok(Some(decoded)) => frames.push(decoded),
                    Ok(None) => break,
                    Err(e) => {
                        error = Some(e);
                        break 'bytes;
                    }
                }
            }
        }
        (frames, error, decoder.buffered())
    };
    assert_eq!(whole.0, bytewise.0, "whole and bytewise decoding disagree on frames");
    assert_eq!(whole.1, bytewise.1, "whole and bytewise decoding disagree on the error");
    if whole.1.is_none() {
        assert_eq!(whole.2, bytewise.2, "whole and bytewise decoding buffer differently");
    }
    whole
}

/// Checks one vector's behaviour; returns the kind of a valid frame.
fn check(name: &str, bytes: &[u8], expect: &Expect) -> Option<u32> {
    // Something the decoder must read after any complete frame: skipping must not lose sync.
    let next = encode_frame(&status_away()).expect("encodes").to_vec();
    match expect {
        Expect::Frame(message) => {
            let (frames, error, buffered) = decode_stream(bytes);
            assert_eq!(
                (&frames[..], error, buffered),
                (&[Decoded::Message(message.clone())][..], None, 0),
                "{name}"
            );
            let decoded = decode_stream(&concat(&[bytes, &next])).0;
            assert_eq!(decoded.len(), 2, "{name}: the frame does not end where its prefix says");
            // The kind as the decoder saw it on the wire.
            match &frames[0] {
                Decoded::Message(decoded) => Some(decoded.kind()),
                Decoded::Unknown { .. } => None,
            }
        }
        Expect::DecodesTo(_, message) => {
            let (frames, error, buffered) = decode_stream(bytes);
            assert_eq!(
                (frames, error, buffered),
                (vec![Decoded::Message(message.clone())], None, 0),
                "{name}"
            );
            let encoded = encode_frame(message).expect("encodes");
            assert_ne!(&encoded[..], bytes, "{name}: a canonical encoding belongs in a Frame expectation");
            None
        }
        Expect::Skipped(_, kind) => {
            assert!(*kind >= Message::KINDS, "{name}: kind {kind} is known");
            let (frames, error, _) = decode_stream(&concat(&[bytes, &next]));
            let expected = vec![Decoded::Unknown { kind: *kind }, Decoded::Message(status_away())];
            assert_eq!((frames, error), (expected, None), "{name}");
            None
        }
        Expect::Incomplete(_) => {
            let (frames, error, buffered) = decode_stream(bytes);
            assert_eq!((frames, error, buffered), (vec![], None, bytes.len()), "{name}");
            None
        }
        Expect::Rejected(_, expected, code) => {
            let (frames, error, _) = decode_stream(bytes);
            assert_eq!((frames, error.clone()), (vec![], Some(expected.clone())), "{name}");
            assert_eq!(expected.code(), *code, "{name}: close code");
            None
        }
        Expect::Datagram(ping) => {
            assert_eq!(bytes.len(), PING_LEN, "{name}: a version 1 ping is {PING_LEN} bytes");
            assert_eq!(Ping::decode(bytes), Ok(*ping), "{name}");
            None
        }
        Expect::DatagramDecodesTo(_, ping) => {
            assert_eq!(Ping::decode(bytes), Ok(*ping), "{name}");
            None
        }
        Expect::DatagramRejected(_, error) => {
            assert_eq!(Ping::decode(bytes), Err(error.clone()), "{name}");
            None
        }
        Expect::Echo(echo) => {
            assert_eq!(bytes.len(), ECHO_LEN, "{name}: a probe or echo is {ECHO_LEN} bytes");
            assert_eq!(EchoPing::decode(bytes), Ok(*echo), "{name}");
            // Kinds 2 and 3 are no heartbeat or ack: a receiver without them drops them.
            let kind = bytes[0] & 0b11;
            assert_eq!(Ping::decode(bytes), Err(DecodeError::PingKind { kind }), "{name}");
            None
        }
        Expect::EchoRejected(_, error) => {
            assert_eq!(EchoPing::decode(bytes), Err(error.clone()), "{name}");
            assert!(Ping::decode(bytes).is_err(), "{name}");
            None
        }
    }
}

#[test]
fn spec_vectors_match_the_code() {
    let spec = spec_vectors();
    let expectations = expectations();

    let mut spec_names = BTreeMap::new();
    for vector in &spec {
        if let Some(first) = spec_names.insert(vector.name.as_str(), vector.line) {
            panic!("PROTOCOL.md: vector {} appears on lines {first} and {}", vector.name, vector.line);
        }
    }
    let mut expected = BTreeMap::new();
    for (name, expect) in &expectations {
        assert!(expected.insert(*name, expect).is_none(), "expectation {name} is defined twice");
    }

    let unexpected: Vec<_> =
        spec.iter().filter(|v| !expected.contains_key(v.name.as_str())).map(|v| &v.name).collect();
    assert!(
        unexpected.is_empty(),
        "vectors in PROTOCOL.md without an expectation in this test: {unexpected:?}"
    );
    let missing: Vec<_> = expected.keys().filter(|name| !spec_names.contains_key(*name)).collect();
    assert!(missing.is_empty(), "expectations in this test without a vector in PROTOCOL.md: {missing:?}");

    let mut kinds = BTreeSet::new();
    for vector in &spec {
        let expect = expected[vector.name.as_str()];
        let bytes = expect.bytes();
        assert_eq!(
            to_hex(&vector.bytes),
            to_hex(&bytes),
            "PROTOCOL.md line {}: vector {} differs from the code",
            vector.line,
            vector.name
        );
        kinds.extend(check(&vector.name, &vector.bytes, expect));
    }
    // Sizes the prose states as "`name` (N bytes" must be the vectors' sizes.
    for vector in &spec {
        let pattern = format!("`{}` (", vector.name);
        for (at, _) in SPEC.match_indices(&pattern) {
            let rest = &SPEC[at + pattern.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if !digits.is_empty() && rest[digits.len()..].starts_with(" bytes") {
                let stated: usize = digits.parse().expect("digits");
                assert_eq!(
                    stated,
                    vector.bytes.len(),
                    "PROTOCOL.md states the wrong size for {}",
                    vector.name
                );
            }
        }
    }

    let all: BTreeSet<u32> = (0..Message::KINDS).collect();
    let lacking: Vec<_> = all.difference(&kinds).collect();
    assert!(lacking.is_empty(), "message kinds without a valid frame vector in PROTOCOL.md: {lacking:?}");
}

#[test]
fn stated_sizes_match_the_code() {
    let hello = encode_frame(&Message::Hello(typical_hello())).expect("encodes");
    assert_eq!(typical_hello().token.len(), TYPICAL_TOKEN.len());
    assert_eq!(hello.len(), TYPICAL_HELLO_FRAME_LEN, "typical Hello frame size");
    let stated = format!("typical `Hello` frame is {TYPICAL_HELLO_FRAME_LEN} bytes");
    assert!(SPEC.contains(&stated), "PROTOCOL.md must say: {stated}");
    let heartbeat = Ping::heartbeat(Status::Online, false, 0).encode();
    let stated = format!("heartbeat ping payload is {} bytes", heartbeat.len());
    assert!(SPEC.contains(&stated), "PROTOCOL.md must say: {stated}");
    assert!(
        SPEC.contains(&format!("`{}`", std::str::from_utf8(ALPN).expect("ASCII"))),
        "PROTOCOL.md must name the ALPN"
    );
}

/// Prints every vector as the code computes it, in the spec's format.
#[test]
#[ignore = "prints the vectors for PROTOCOL.md; run with --ignored --nocapture"]
fn print_vectors() {
    for (name, expect) in expectations() {
        println!("{name} {}", to_hex(&expect.bytes()));
    }
}
