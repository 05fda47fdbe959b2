//! Messages built from fuzz input, so that the session targets reach deep states without
//! having to discover the frame encoding first, and typical messages of every kind for the
//! seed corpora.

use presence_protocol::limits::MAX_VISIBILITY;
use presence_protocol::*;

use crate::input::Input;

/// Text of a length and width chosen by the input; never over `MAX`. Wide text uses a
/// two-byte character, so that cutting it anywhere but a char boundary would be caught.
pub fn text<const MAX: usize>(input: &mut Input<'_>) -> Text<MAX> {
    let len = usize::from(input.u16()) % (MAX + 1);
    let value = if input.bool() { "é".repeat(len / 2) } else { "a".repeat(len) };
    Text::new(value).expect("built within the limit")
}

/// A short identifier such as an app id, `prefix-N`.
pub fn ident<const MAX: usize>(prefix: &str, n: u8) -> Text<MAX> {
    Text::new(format!("{prefix}-{n}")).expect("short identifiers fit every limit")
}

/// A status from the two low bits of a byte.
pub fn status(byte: u8) -> Status {
    Status::ALL[usize::from(byte & 0b11)]
}

/// A visibility list of up to [`MAX_VISIBILITY`] apps.
pub fn app_list(input: &mut Input<'_>) -> AppList {
    let len = usize::from(input.u8()) % (MAX_VISIBILITY + 1);
    AppList::new((0..len).map(|i| ident("app", i as u8)).collect()).expect("within the limit")
}

/// A `Hello` whose every field comes from the input; zero bytes give version 1.
pub fn hello(input: &mut Input<'_>) -> Hello {
    Hello {
        version: input.u8().wrapping_add(PROTOCOL_VERSION),
        token: text(input),
        device_id: text(input),
        status: status(input.u8()),
        idle: input.bool(),
        message: text(input),
        visibility: app_list(input),
        heartbeat_ms: input.u32(),
        status_seq: input.u8(),
    }
}

/// A `Welcome` whose every field comes from the input.
pub fn welcome(input: &mut Input<'_>) -> Welcome {
    Welcome {
        session_id: u64::from(input.u32()),
        heartbeat_ms: input.u32(),
        grace_ms: input.u32(),
        max_visibility: input.u16(),
        max_message_len: input.u16(),
        server_time_ms: u64::from(input.u32()),
    }
}

/// Any message kind, chosen by the input; device and server kinds alike.
pub fn message(input: &mut Input<'_>) -> Message {
    match input.u8() % Message::KINDS as u8 {
        0 => Message::Hello(hello(input)),
        1 => Message::Welcome(welcome(input)),
        2 => Message::Status(StatusUpdate {
            status: status(input.u8()),
            idle: input.bool(),
            message: text(input),
            seq: input.u8(),
        }),
        3 => Message::Visibility(Visibility { apps: app_list(input) }),
        4 => Message::Authorize(Authorize { app_id: ident("app", input.u8()), state: text(input) }),
        5 => Message::Authorized(Authorized { app_id: ident("app", input.u8()), puid: text(input) }),
        6 => Message::Revoke(Revoke { app_id: ident("app", input.u8()) }),
        7 => Message::Revoked(Revoked { app_id: ident("app", input.u8()) }),
        8 => Message::Denied(Denied {
            app_id: ident("app", input.u8()),
            code: ErrorCode(input.u16()),
            message: text(input),
        }),
        9 => Message::Notify(Notify {
            id: u64::from(input.u8()),
            app_id: ident("app", input.u8()),
            title: text(input),
            body: text(input),
            data: text(input),
            expires_in_ms: u32::from(input.u16()) * 10,
        }),
        10 => Message::NotifyResponse(NotifyResponse {
            id: u64::from(input.u8()),
            response: if input.bool() { Response::Dismissed } else { Response::Accepted },
        }),
        11 => Message::Cancel(Cancel { id: u64::from(input.u8()), reason: cancel_reason(input.u8()) }),
        12 => Message::GoAway(GoAway { reason: text(input), retry_after_ms: input.u32() }),
        13 => Message::Error(ErrorMessage { code: ErrorCode(input.u16()), message: text(input) }),
        _ => Message::Reauth(Reauth { token: text(input) }),
    }
}

/// A cancel reason from the two low bits of a byte.
pub fn cancel_reason(byte: u8) -> CancelReason {
    [CancelReason::Answered, CancelReason::Withdrawn, CancelReason::Taken, CancelReason::Expired]
        [usize::from(byte & 0b11)]
}

/// A control-stream chunk chosen by the input: a message of any kind, possibly with bytes
/// appended after its last field (which receivers must ignore), or a frame of a kind from a
/// newer version (which receivers must skip).
pub fn frame(input: &mut Input<'_>) -> Vec<u8> {
    let selector = input.u8();
    let trailing = input.bytes(usize::from(input_len(selector)));
    let body = if selector & 0x80 != 0 {
        let kind = Message::KINDS + u32::from(input.u16());
        let mut body = varint(u64::from(kind));
        body.extend_from_slice(trailing);
        body
    } else {
        let mut body = encode_body(&message(input)).expect("bounded fields always fit a frame");
        body.extend_from_slice(trailing);
        body
    };
    let mut frame = varint(body.len() as u64);
    frame.extend_from_slice(&body);
    frame
}

/// How many trailing bytes a frame selector asks for (0 to 15).
fn input_len(selector: u8) -> u8 {
    selector & 0x0f
}

/// LEB128, as the frame length prefix and postcard's varints use.
pub fn varint(mut value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

fn t<const MAX: usize>(value: &str) -> Text<MAX> {
    Text::new(value).expect("fixture within the limit")
}

/// A `Hello` as a phone sends it: a ~300-byte token, two apps.
pub fn typical_hello() -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        token: t(&format!(
            "eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCJ9.{}.{}",
            "eyJzdWIiOiJ1c2VyLTQyIiwiZGV2IjoicGhvbmUtMSIsImF1ZCI6InByZXNlbmNlIiwiZXhwIjoxOTAwMDAwMDAwfQ"
                .repeat(2),
            "c2lnbmF0dXJlLW9mLXNpeHR5LWZvdXItYnl0ZXMtZm9yLWFuLWVkMjU1MTktc2lnbmF0dXJlLXBhZGRpbmc"
        )),
        device_id: t("phone-1"),
        status: Status::Online,
        idle: false,
        message: t("on the train"),
        visibility: AppList::new(vec![t("chat"), t("games")]).expect("two apps"),
        heartbeat_ms: 60_000,
        status_seq: 0,
    }
}

/// One message of every kind with realistic content, named for seed files.
pub fn every_kind() -> Vec<(&'static str, Message)> {
    vec![
        ("hello", Message::Hello(typical_hello())),
        (
            "welcome",
            Message::Welcome(Welcome {
                session_id: 7,
                heartbeat_ms: 60_000,
                grace_ms: 15_000,
                max_visibility: 64,
                max_message_len: 256,
                server_time_ms: 1_767_225_600_000,
            }),
        ),
        (
            "status",
            Message::Status(StatusUpdate {
                status: Status::Unavailable,
                idle: false,
                message: t("in a meeting until 3"),
                seq: 4,
            }),
        ),
        (
            "visibility",
            Message::Visibility(Visibility {
                apps: AppList::new(vec![t("chat"), t("games"), t("calendar")]).expect("three apps"),
            }),
        ),
        ("authorize", Message::Authorize(Authorize { app_id: t("chat"), state: t("link-8f3a2c") })),
        ("authorized", Message::Authorized(Authorized { app_id: t("chat"), puid: t("p_3q2u7sXoM1vYk0aZ") })),
        ("revoke", Message::Revoke(Revoke { app_id: t("games") })),
        ("revoked", Message::Revoked(Revoked { app_id: t("games") })),
        (
            "denied",
            Message::Denied(Denied {
                app_id: t("nope"),
                code: ErrorCode::UNKNOWN_APP,
                message: t("no such app"),
            }),
        ),
        (
            "notify",
            Message::Notify(Notify {
                id: 145,
                app_id: t("chat"),
                title: t("Ana is calling"),
                body: t("Pick up to join the voice call in #general."),
                data: t(r#"{"call":"c-7781","room":"general","video":false}"#),
                expires_in_ms: 30_000,
            }),
        ),
        (
            "notify_response",
            Message::NotifyResponse(NotifyResponse { id: 145, response: Response::Accepted }),
        ),
        ("cancel", Message::Cancel(Cancel { id: 145, reason: CancelReason::Answered })),
        ("go_away", Message::GoAway(GoAway { reason: t("draining for upgrade"), retry_after_ms: 5_000 })),
        (
            "error",
            Message::Error(ErrorMessage {
                code: ErrorCode::PROTOCOL_VIOLATION,
                message: t("notify is sent by servers only"),
            }),
        ),
        ("reauth", Message::Reauth(Reauth { token: t("eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1In0.c2ln") })),
    ]
}

/// An encoded frame of a message; panics only if a fixture broke the limits.
pub fn encode(message: &Message) -> Vec<u8> {
    encode_frame(message).expect("fixtures fit a frame").to_vec()
}
