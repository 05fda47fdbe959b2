//! Property tests of the codecs and of the session state machines' input handling.
//!
//! - Every message kind round-trips through `encode_frame`/`FrameDecoder` and
//!   `encode_body`/`decode_body`, with fields up to their limits.
//! - Frames split at arbitrary points decode to the same messages, in order, and the decoder
//!   never buffers more than one frame.
//! - Arbitrary bytes never make a decoder or a session panic, and a session fed bytes that do
//!   not decode closes with the decoder's error code and nothing else.
//! - Pings: every field combination round-trips, every short payload decodes or errors
//!   exactly per the bit layout, and sequence numbers compare antisymmetrically.
//! - Text and list limits hold on construction and on decoding, including hostile lengths.

use std::sync::Arc;
use std::time::{Duration, Instant};

use presence_protocol::limits::*;
use presence_protocol::*;
use proptest::collection::vec;
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------

/// Characters of every UTF-8 width, weighted towards the ones that are easy to read.
fn any_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => proptest::char::range(' ', '~'),
        1 => Just('\0'),
        1 => prop::sample::select(vec!['é', 'ß', 'ж', '€', '中', '😀', '🦀', '\u{10FFFF}']),
        2 => any::<char>(),
    ]
}

/// A string of at most `max` bytes: empty, arbitrary, or filled exactly to the limit.
fn string_upto(max: usize) -> impl Strategy<Value = String> {
    let arbitrary = vec(any_char(), 0..=max.min(300)).prop_map(move |chars| {
        let mut s = String::new();
        for c in chars {
            if s.len() + c.len_utf8() > max {
                break;
            }
            s.push(c);
        }
        s
    });
    let full = vec(any_char(), 0..=max.min(300)).prop_map(move |chars| {
        let mut s = String::new();
        for c in chars.into_iter().cycle().take(max) {
            if s.len() + c.len_utf8() > max {
                break;
            }
            s.push(c);
        }
        // Pad with ASCII so the text sits exactly at the limit.
        while s.len() < max {
            s.push('x');
        }
        s
    });
    prop_oneof![1 => Just(String::new()), 4 => arbitrary, 2 => full]
}

fn text<const N: usize>() -> impl Strategy<Value = Text<N>> {
    string_upto(N).prop_map(|s| Text::new(s).expect("strategy respects the limit"))
}

fn u64_any() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0), Just(1), Just(u64::MAX), Just(u64::MAX - 1), Just(1 << 63), any::<u64>()]
}

fn u32_any() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0), Just(1), Just(u32::MAX), Just(127), Just(128), any::<u32>()]
}

fn u16_any() -> impl Strategy<Value = u16> {
    prop_oneof![Just(0), Just(u16::MAX), any::<u16>()]
}

fn u8_any() -> impl Strategy<Value = u8> {
    prop_oneof![Just(0), Just(u8::MAX), Just(PROTOCOL_VERSION), any::<u8>()]
}

fn status() -> impl Strategy<Value = Status> {
    prop::sample::select(Status::ALL.to_vec())
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![prop::sample::select(ErrorCode::ALL.to_vec()), any::<u16>().prop_map(ErrorCode)]
}

fn app_list() -> impl Strategy<Value = AppList> {
    let lists = prop_oneof![
        1 => Just(Vec::new()),
        4 => vec(text::<MAX_APP_ID_LEN>(), 0..=8),
        1 => vec(text::<MAX_APP_ID_LEN>(), 0..=MAX_VISIBILITY),
        1 => vec(text::<MAX_APP_ID_LEN>(), MAX_VISIBILITY..=MAX_VISIBILITY),
    ];
    lists.prop_map(|apps| AppList::new(apps).expect("strategy respects the limit"))
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        u8_any(),
        text::<MAX_TOKEN_LEN>(),
        text::<MAX_DEVICE_ID_LEN>(),
        status(),
        any::<bool>(),
        text::<MAX_MESSAGE_LEN>(),
        app_list(),
        u32_any(),
        u8_any(),
    )
        .prop_map(
            |(version, token, device_id, status, idle, message, visibility, heartbeat_ms, status_seq)| {
                Hello {
                    version,
                    token,
                    device_id,
                    status,
                    idle,
                    message,
                    visibility,
                    heartbeat_ms,
                    status_seq,
                }
            },
        )
}

fn welcome() -> impl Strategy<Value = Welcome> {
    (u64_any(), u32_any(), u32_any(), u16_any(), u16_any(), u64_any()).prop_map(
        |(session_id, heartbeat_ms, grace_ms, max_visibility, max_message_len, server_time_ms)| Welcome {
            session_id,
            heartbeat_ms,
            grace_ms,
            max_visibility,
            max_message_len,
            server_time_ms,
        },
    )
}

fn status_update() -> impl Strategy<Value = StatusUpdate> {
    (status(), any::<bool>(), text::<MAX_MESSAGE_LEN>(), u8_any())
        .prop_map(|(status, idle, message, seq)| StatusUpdate { status, idle, message, seq })
}

fn notify() -> impl Strategy<Value = Notify> {
    (
        u64_any(),
        text::<MAX_APP_ID_LEN>(),
        text::<MAX_TITLE_LEN>(),
        text::<MAX_BODY_LEN>(),
        text::<MAX_DATA_LEN>(),
        u32_any(),
    )
        .prop_map(|(id, app_id, title, body, data, expires_in_ms)| Notify {
            id,
            app_id,
            title,
            body,
            data,
            expires_in_ms,
        })
}

fn message() -> impl Strategy<Value = Message> {
    let response = prop_oneof![Just(Response::Accepted), Just(Response::Dismissed)];
    let reason = prop::sample::select(vec![
        CancelReason::Answered,
        CancelReason::Withdrawn,
        CancelReason::Taken,
        CancelReason::Expired,
    ]);
    prop_oneof![
        hello().prop_map(Message::Hello),
        welcome().prop_map(Message::Welcome),
        status_update().prop_map(Message::Status),
        app_list().prop_map(|apps| Message::Visibility(Visibility { apps })),
        (text(), text()).prop_map(|(app_id, state)| Message::Authorize(Authorize { app_id, state })),
        (text(), text()).prop_map(|(app_id, puid)| Message::Authorized(Authorized { app_id, puid })),
        text().prop_map(|app_id| Message::Revoke(Revoke { app_id })),
        text().prop_map(|app_id| Message::Revoked(Revoked { app_id })),
        (text(), error_code(), text()).prop_map(|(app_id, code, message)| Message::Denied(Denied {
            app_id,
            code,
            message
        })),
        notify().prop_map(Message::Notify),
        (u64_any(), response)
            .prop_map(|(id, response)| Message::NotifyResponse(NotifyResponse { id, response })),
        (u64_any(), reason).prop_map(|(id, reason)| Message::Cancel(Cancel { id, reason })),
        (text(), u32_any())
            .prop_map(|(reason, retry_after_ms)| Message::GoAway(GoAway { reason, retry_after_ms })),
        (error_code(), text()).prop_map(|(code, message)| Message::Error(ErrorMessage { code, message })),
        text().prop_map(|token| Message::Reauth(Reauth { token })),
    ]
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// LEB128, as postcard and the frame prefix write it.
fn varint(mut value: u64) -> Vec<u8> {
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

/// A frame with the given body, prefix included.
fn frame_of(body: &[u8]) -> Vec<u8> {
    let mut frame = varint(body.len() as u64);
    frame.extend_from_slice(body);
    frame
}

/// Splits `bytes` at the given (arbitrary, unsorted) cut points.
fn chunks<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> =
        cuts.iter().map(|&c| if bytes.is_empty() { 0 } else { c % (bytes.len() + 1) }).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
}

/// Feeds chunks through one decoder; returns every frame up to the first error.
fn decode_chunks(chunks: &[&[u8]]) -> (Vec<Decoded>, Option<DecodeError>) {
    let mut decoder = FrameDecoder::new();
    let mut out = Vec::new();
    for chunk in chunks {
        let mut input = *chunk;
        loop {
            let result = decoder.decode(&mut input);
            assert!(decoder.buffered() <= MAX_PREFIX_LEN + MAX_FRAME_LEN);
            match result {
                Ok(Some(decoded)) => out.push(decoded),
                Ok(None) => {
                    assert!(input.is_empty(), "Ok(None) must mean the input is used up");
                    break;
                }
                Err(error) => return (out, Some(error)),
            }
        }
    }
    (out, None)
}

/// How many leading bytes decode to whole frames, and the first error if any.
fn reference_decode(bytes: &[u8]) -> (usize, Option<DecodeError>) {
    let mut decoder = FrameDecoder::new();
    let mut input = bytes;
    let mut consumed = 0;
    loop {
        match decoder.decode(&mut input) {
            Ok(Some(_)) => consumed = bytes.len() - input.len(),
            Ok(None) => return (consumed, None),
            Err(error) => return (consumed, Some(error)),
        }
    }
}

/// Input for the "arbitrary bytes" properties: valid frames, hand-built frames of any kind
/// with random bodies, corrupted frames, and raw noise, concatenated.
fn hostile_stream() -> impl Strategy<Value = Vec<u8>> {
    let segment = prop_oneof![
        3 => vec(any::<u8>(), 0..48),
        2 => message().prop_map(|m| encode_frame(&m).expect("encodes").to_vec()),
        3 => (prop_oneof![0u64..20, Just(200), any::<u32>().prop_map(u64::from)], vec(any::<u8>(), 0..40))
            .prop_map(|(kind, rest)| {
                let mut body = varint(kind);
                body.extend(rest);
                frame_of(&body)
            }),
        2 => (message(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(m, at, byte)| {
            let mut frame = encode_frame(&m).expect("encodes").to_vec();
            let i = at.index(frame.len());
            frame[i] = byte;
            frame
        }),
        1 => (message(), any::<prop::sample::Index>()).prop_map(|(m, at)| {
            let frame = encode_frame(&m).expect("encodes").to_vec();
            let cut = at.index(frame.len());
            frame[..cut].to_vec()
        }),
    ];
    vec(segment, 0..6).prop_map(|segments| segments.concat())
}

fn small_hello() -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        token: Token::new("header.claims.signature").unwrap(),
        device_id: DeviceId::new("phone-1").unwrap(),
        status: Status::Online,
        idle: false,
        message: StatusText::default(),
        visibility: AppList::new(vec![AppId::new("chat").unwrap()]).unwrap(),
        heartbeat_ms: 60_000,
        status_seq: 0,
    }
}

fn welcome_frame() -> Vec<u8> {
    let welcome = Welcome {
        session_id: 1,
        heartbeat_ms: 60_000,
        grace_ms: 15_000,
        max_visibility: 64,
        max_message_len: 256,
        server_time_ms: 0,
    };
    encode_frame(&Message::Welcome(welcome)).unwrap().to_vec()
}

/// A server session at `now`, either fresh or past an accepted `Hello`.
fn server_session(now: Instant, active: bool) -> ServerSession {
    let mut server = ServerSession::new(Arc::new(ServerConfig::default()), now);
    if active {
        server.handle_stream_data(now, &encode_frame(&Message::Hello(small_hello())).unwrap());
        assert!(matches!(server.poll_event(), Some(ServerEvent::Hello(_))));
        server.accept(now, Accept { session_id: 1, server_time_ms: 0, token_valid_for: None }).unwrap();
        while server.poll_transmit().is_some() {}
    }
    server
}

/// A client session at `now`, either connecting or past a `Welcome`.
fn client_session(now: Instant, active: bool) -> ClientSession {
    let mut client = ClientSession::new(ClientConfig::default(), now, small_hello());
    while client.poll_transmit().is_some() {}
    if active {
        client.handle_stream_data(now, &welcome_frame());
        assert!(matches!(client.poll_event(), Some(ClientEvent::Welcome(_))));
    }
    client
}

fn drain_server(server: &mut ServerSession) -> Vec<ServerEvent> {
    while server.poll_transmit().is_some() {}
    std::iter::from_fn(|| server.poll_event()).collect()
}

fn drain_client(client: &mut ClientSession) -> Vec<ClientEvent> {
    while client.poll_transmit().is_some() {}
    std::iter::from_fn(|| client.poll_event()).collect()
}

fn assert_decode_close(close: &Close, error: &DecodeError) {
    assert_eq!(close.code, error.code(), "closed for the decode error {error}");
    assert!(close.code == ErrorCode::MALFORMED_FRAME || close.code == ErrorCode::FRAME_TOO_LARGE);
    assert!(!close.by_peer);
}

/// The server-session property: fed `bytes` in `cuts`-shaped chunks, the session produces
/// exactly the events of the whole frames before the first decode error, then (unless it
/// already closed) a close with that error's code.
fn check_server_stream(active: bool, bytes: &[u8], cuts: &[usize]) {
    let start = Instant::now();
    let (consumed, error) = reference_decode(bytes);

    let mut whole_frames = server_session(start, active);
    whole_frames.handle_stream_data(start, &bytes[..consumed]);
    let expected = drain_server(&mut whole_frames);

    let mut fed = server_session(start, active);
    for chunk in chunks(bytes, cuts) {
        fed.handle_stream_data(start, chunk);
    }
    let events = drain_server(&mut fed);

    match error {
        Some(error) if !whole_frames.is_closed() => {
            assert_eq!(events.len(), expected.len() + 1, "{events:?}");
            assert_eq!(events[..expected.len()], expected[..]);
            let Some(ServerEvent::Closed(close)) = events.last() else {
                panic!("session not closed after {error}: {events:?}")
            };
            assert_decode_close(close, &error);
            assert!(fed.is_closed());
        }
        _ => {
            assert_eq!(events, expected);
            assert_eq!(fed.is_closed(), whole_frames.is_closed());
        }
    }
    // Nothing is ever delivered after the close.
    if let Some(i) = events.iter().position(|e| matches!(e, ServerEvent::Closed(_))) {
        assert_eq!(i, events.len() - 1, "events after close: {events:?}");
    }
}

fn check_client_stream(active: bool, bytes: &[u8], cuts: &[usize]) {
    let start = Instant::now();
    let (consumed, error) = reference_decode(bytes);

    let mut whole_frames = client_session(start, active);
    whole_frames.handle_stream_data(start, &bytes[..consumed]);
    let expected = drain_client(&mut whole_frames);

    let mut fed = client_session(start, active);
    for chunk in chunks(bytes, cuts) {
        fed.handle_stream_data(start, chunk);
    }
    let events = drain_client(&mut fed);

    match error {
        Some(error) if !whole_frames.is_closed() => {
            assert_eq!(events.len(), expected.len() + 1, "{events:?}");
            assert_eq!(events[..expected.len()], expected[..]);
            let Some(ClientEvent::Closed(close)) = events.last() else {
                panic!("session not closed after {error}: {events:?}")
            };
            assert_decode_close(close, &error);
            assert!(fed.is_closed());
        }
        _ => {
            assert_eq!(events, expected);
            assert_eq!(fed.is_closed(), whole_frames.is_closed());
        }
    }
    if let Some(i) = events.iter().position(|e| matches!(e, ClientEvent::Closed(_))) {
        assert_eq!(i, events.len() - 1, "events after close: {events:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------

// Messages with fields at their limits are large (a maximal Hello is 12 KB): fewer cases.
proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn frame_round_trip(message in message()) {
        let frame = encode_frame(&message).unwrap();
        let body = encode_body(&message).unwrap();
        prop_assert!(body.len() <= MAX_FRAME_LEN);
        prop_assert_eq!(&frame[frame.len() - body.len()..], &body[..]);
        prop_assert_eq!(&frame[..frame.len() - body.len()], &varint(body.len() as u64)[..]);

        let mut decoder = FrameDecoder::new();
        let mut input = &frame[..];
        let decoded = decoder.decode(&mut input).unwrap();
        prop_assert_eq!(decoded, Some(Decoded::Message(message.clone())));
        prop_assert!(input.is_empty());
        prop_assert_eq!(decoder.buffered(), 0);
        prop_assert_eq!(decoder.decode(&mut input).unwrap(), None);
    }

    #[test]
    fn body_round_trip(message in message()) {
        let body = encode_body(&message).unwrap();
        prop_assert_eq!(u32::from(body[0]), message.kind(), "kinds below 128 are one byte");
        prop_assert_eq!(decode_body(&body).unwrap(), Decoded::Message(message));
    }

    #[test]
    fn trailing_bytes_after_known_fields_are_ignored(message in message(), extra in vec(any::<u8>(), 1..16)) {
        let mut body = encode_body(&message).unwrap();
        body.extend(extra);
        prop_assert_eq!(decode_body(&body).unwrap(), Decoded::Message(message));
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn split_frames_decode_in_order(
        messages in vec(message(), 1..6),
        cuts in vec(any::<usize>(), 0..24),
    ) {
        let stream: Vec<u8> =
            messages.iter().flat_map(|m| encode_frame(m).unwrap().to_vec()).collect();
        let (decoded, error) = decode_chunks(&chunks(&stream, &cuts));
        prop_assert_eq!(error, None);
        let expected: Vec<Decoded> = messages.into_iter().map(Decoded::Message).collect();
        prop_assert_eq!(decoded, expected);
    }
}

#[test]
fn byte_at_a_time_decodes_a_maximal_hello() {
    let hello = Hello {
        version: PROTOCOL_VERSION,
        token: Token::new("t".repeat(MAX_TOKEN_LEN)).unwrap(),
        device_id: DeviceId::new("€".repeat(MAX_DEVICE_ID_LEN / 3)).unwrap(),
        status: Status::Offline,
        idle: true,
        message: StatusText::new("😀".repeat(MAX_MESSAGE_LEN / 4)).unwrap(),
        visibility: AppList::new(vec![AppId::new("a".repeat(MAX_APP_ID_LEN)).unwrap(); MAX_VISIBILITY])
            .unwrap(),
        heartbeat_ms: u32::MAX,
        status_seq: u8::MAX,
    };
    let frame = encode_frame(&Message::Hello(hello.clone())).unwrap();
    assert!(frame.len() > 12_000, "a maximal hello is large: {}", frame.len());
    assert!(frame.len() <= MAX_PREFIX_LEN + MAX_FRAME_LEN);
    let bytes: Vec<&[u8]> = frame.chunks(1).collect();
    let (decoded, error) = decode_chunks(&bytes);
    assert_eq!(error, None);
    assert_eq!(decoded, vec![Decoded::Message(Message::Hello(hello))]);
}

#[test]
fn maximal_notify_fits_a_frame() {
    let notify = Notify {
        id: u64::MAX,
        app_id: AppId::new("a".repeat(MAX_APP_ID_LEN)).unwrap(),
        title: Title::new("t".repeat(MAX_TITLE_LEN)).unwrap(),
        body: Body::new("b".repeat(MAX_BODY_LEN)).unwrap(),
        data: Data::new("d".repeat(MAX_DATA_LEN)).unwrap(),
        expires_in_ms: u32::MAX,
    };
    let frame = encode_frame(&Message::Notify(notify.clone())).unwrap();
    assert_eq!(decode_chunks(&[&frame]).0, vec![Decoded::Message(Message::Notify(notify))]);
}

// ---------------------------------------------------------------------------------------
// Arbitrary bytes
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn decoders_never_panic(bytes in vec(any::<u8>(), 0..64)) {
        let _ = decode_body(&bytes);
        let _ = Ping::decode(&bytes);
        let _ = decode_chunks(&[&bytes]);
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn frame_decoder_never_panics_on_hostile_streams(bytes in hostile_stream(), cuts in vec(any::<usize>(), 0..8)) {
        let (whole, whole_error) = decode_chunks(&[&bytes]);
        let (split, split_error) = decode_chunks(&chunks(&bytes, &cuts));
        // Chunking never changes the outcome.
        prop_assert_eq!(whole, split);
        prop_assert_eq!(whole_error, split_error);
        let _ = decode_body(&bytes);
    }

    #[test]
    fn fresh_server_session_survives_anything(bytes in hostile_stream(), cuts in vec(any::<usize>(), 0..8)) {
        check_server_stream(false, &bytes, &cuts);
    }

    #[test]
    fn active_server_session_survives_anything(bytes in hostile_stream(), cuts in vec(any::<usize>(), 0..8)) {
        check_server_stream(true, &bytes, &cuts);
    }

    #[test]
    fn connecting_client_session_survives_anything(bytes in hostile_stream(), cuts in vec(any::<usize>(), 0..8)) {
        check_client_stream(false, &bytes, &cuts);
    }

    #[test]
    fn active_client_session_survives_anything(bytes in hostile_stream(), cuts in vec(any::<usize>(), 0..8)) {
        check_client_stream(true, &bytes, &cuts);
    }

    #[test]
    fn sessions_survive_arbitrary_datagrams(datagrams in vec(vec(any::<u8>(), 0..8), 0..32)) {
        let start = Instant::now();
        let mut server = server_session(start, true);
        let mut client = client_session(start, true);
        client.set_status(start, Status::Away, false);
        for (i, datagram) in datagrams.iter().enumerate() {
            let now = start + Duration::from_millis(i as u64);
            server.handle_datagram(now, datagram);
            client.handle_datagram(now, datagram);
        }
        // Datagrams never close a session: a bad one must look like a lost one.
        prop_assert!(!server.is_closed());
        prop_assert!(!client.is_closed());
        for event in drain_server(&mut server) {
            prop_assert!(
                matches!(event, ServerEvent::StatusChanged { message: None, .. }),
                "unexpected {:?}", event
            );
        }
        for event in drain_client(&mut client) {
            prop_assert!(matches!(event, ClientEvent::StatusAcked { .. }), "unexpected {:?}", event);
        }
    }
}

#[test]
fn bad_length_prefixes() {
    let mut decoder = FrameDecoder::new();
    // Zero-length frame: no kind at all.
    assert_eq!(decoder.decode(&mut &[0u8][..]), Err(DecodeError::EmptyFrame));
    // Non-minimal prefixes.
    assert_eq!(FrameDecoder::new().decode(&mut &[0x81, 0x00][..]), Err(DecodeError::BadLengthPrefix));
    assert_eq!(FrameDecoder::new().decode(&mut &[0x81, 0x80, 0x00][..]), Err(DecodeError::BadLengthPrefix));
    // One past the maximum, announced before any body byte arrives.
    let too_large = varint(MAX_FRAME_LEN as u64 + 1);
    assert!(matches!(
        FrameDecoder::new().decode(&mut &too_large[..]),
        Err(DecodeError::FrameTooLarge { len, .. }) if len == MAX_FRAME_LEN as u64 + 1
    ));
    // The maximum itself is fine: waiting for the body.
    let mut decoder = FrameDecoder::new();
    assert_eq!(decoder.decode(&mut &varint(MAX_FRAME_LEN as u64)[..]), Ok(None));
    // A four-byte prefix is too large whatever it says.
    assert!(matches!(
        FrameDecoder::new().decode(&mut &[0xff, 0xff, 0xff, 0x7f][..]),
        Err(DecodeError::FrameTooLarge { .. })
    ));
    // The same, one byte at a time.
    let mut decoder = FrameDecoder::new();
    let mut result = Ok(None);
    for byte in [0x80u8, 0x80, 0x80] {
        result = decoder.decode(&mut &[byte][..]);
        if result.is_err() {
            break;
        }
    }
    assert!(matches!(result, Err(DecodeError::FrameTooLarge { .. })));
    assert_eq!(DecodeError::EmptyFrame.code(), ErrorCode::MALFORMED_FRAME);
    assert_eq!(decode_body(&[]), Err(DecodeError::EmptyFrame));
}

#[test]
fn unknown_kinds_are_skipped_whole() {
    for kind in [Message::KINDS as u64, 200, 1 << 20, u64::from(u32::MAX)] {
        let mut body = varint(kind);
        body.extend_from_slice(b"fields of a newer version");
        let mut stream = frame_of(&body);
        stream.extend_from_slice(
            &encode_frame(&Message::Cancel(Cancel { id: 9, reason: CancelReason::Taken })).unwrap(),
        );
        let (decoded, error) = decode_chunks(&[&stream]);
        assert_eq!(error, None);
        assert_eq!(
            decoded,
            vec![
                Decoded::Unknown { kind: kind as u32 },
                Decoded::Message(Message::Cancel(Cancel { id: 9, reason: CancelReason::Taken })),
            ]
        );
    }
    // A kind beyond u32 is malformed, not unknown.
    let body = varint(1 << 32);
    assert!(matches!(decode_body(&body), Err(DecodeError::Malformed { .. })));
}

// ---------------------------------------------------------------------------------------
// Pings
// ---------------------------------------------------------------------------------------

#[test]
fn ping_round_trips_every_field_combination() {
    const { assert!(PING_LEN <= MAX_PING_LEN) };
    for kind in [PingKind::Heartbeat, PingKind::Ack] {
        for status in Status::ALL {
            for idle in [false, true] {
                for ack_requested in [false, true] {
                    for seq in 0..=u8::MAX {
                        let ping = Ping { kind, status, idle, ack_requested, seq };
                        let bytes = ping.encode();
                        assert_eq!(bytes.len(), PING_LEN);
                        assert_eq!(bytes[0] >> 6, PROTOCOL_VERSION);
                        assert_eq!(bytes[1], seq);
                        assert_eq!(Ping::decode(&bytes), Ok(ping));
                        // Reserved trailing bytes are ignored.
                        let mut long = bytes.to_vec();
                        long.extend_from_slice(&[0xAA, 0x55]);
                        assert_eq!(Ping::decode(&long[..3]), Ok(ping));
                        assert_eq!(Ping::decode(&long), Ok(ping));
                    }
                }
            }
        }
    }
    assert_eq!(Ping::heartbeat(Status::Away, true, 7).encode(), [0x58, 7]);
}

/// The decoding rules, written out independently of the decoder.
fn check_ping_rules(payload: &[u8]) {
    let result = Ping::decode(payload);
    if !(2..=MAX_PING_LEN).contains(&payload.len()) {
        assert_eq!(result, Err(DecodeError::PingLength { len: payload.len() }));
        return;
    }
    let head = payload[0];
    let version = head >> 6;
    let kind = head & 0b11;
    if version != PROTOCOL_VERSION {
        assert_eq!(result, Err(DecodeError::PingVersion { version }));
    } else if kind > 1 {
        assert_eq!(result, Err(DecodeError::PingKind { kind }));
    } else {
        let ping = result.expect("a valid ping");
        let expected = Ping {
            kind: if kind == 0 { PingKind::Heartbeat } else { PingKind::Ack },
            status: Status::ALL[usize::from((head >> 4) & 0b11)],
            idle: head & 0b1000 != 0,
            ack_requested: head & 0b100 != 0,
            seq: payload[1],
        };
        assert_eq!(ping, expected);
        assert_eq!(ping.encode(), [payload[0], payload[1]]);
    }
}

#[test]
fn every_two_byte_payload_decodes_or_errors_per_the_rules() {
    for head in 0..=u8::MAX {
        for seq in 0..=u8::MAX {
            check_ping_rules(&[head, seq]);
        }
    }
    check_ping_rules(&[]);
    check_ping_rules(&[0x40]);
    check_ping_rules(&[0x40, 0, 0, 0, 0]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn every_short_payload_decodes_or_errors_per_the_rules(payload in vec(any::<u8>(), 0..=6)) {
        check_ping_rules(&payload);
    }
}

#[test]
fn seq_newer_is_antisymmetric() {
    for a in 0..=u8::MAX {
        assert!(!seq_newer(a, a));
        for b in 0..=u8::MAX {
            let distance = a.wrapping_sub(b);
            if a != b && distance != 128 {
                assert!(seq_newer(a, b) ^ seq_newer(b, a), "a={a} b={b}");
            }
            if distance == 128 {
                assert!(!seq_newer(a, b) && !seq_newer(b, a));
            }
        }
        // Wrapping: the next number is always newer.
        assert!(seq_newer(a.wrapping_add(1), a));
        assert!(seq_newer(a.wrapping_add(127), a));
        assert!(!seq_newer(a.wrapping_add(129), a));
    }
}

// ---------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------

proptest! {
    #[test]
    fn text_new_enforces_its_limit(s in vec(any_char(), 0..80).prop_map(String::from_iter)) {
        let small = Text::<16>::new(s.clone());
        if s.len() <= 16 {
            prop_assert_eq!(small.unwrap().into_string(), s.clone());
        } else {
            prop_assert_eq!(small, Err(LimitError { len: s.len(), max: 16 }));
        }
        let app = AppId::new(s.clone());
        prop_assert_eq!(app.is_ok(), s.len() <= MAX_APP_ID_LEN);
        prop_assert_eq!(Text::<0>::new(s.clone()).is_ok(), s.is_empty());
    }

    #[test]
    fn list_new_enforces_its_limit(len in 0usize..=MAX_VISIBILITY + 8) {
        let list = AppList::new(vec![AppId::default(); len]);
        if len <= MAX_VISIBILITY {
            prop_assert_eq!(list.unwrap().len(), len);
        } else {
            prop_assert_eq!(list, Err(LimitError { len, max: MAX_VISIBILITY }));
        }
    }

    /// `Revoke` is kind 6 followed by one app id: the limit decides decoding exactly.
    #[test]
    fn decoding_enforces_text_limits(s in vec(any_char(), 0..40).prop_map(String::from_iter)) {
        let mut body = varint(6);
        body.extend(varint(s.len() as u64));
        body.extend_from_slice(s.as_bytes());
        let result = decode_body(&body);
        if s.len() <= MAX_APP_ID_LEN {
            let app_id = AppId::new(s).unwrap();
            prop_assert_eq!(result.unwrap(), Decoded::Message(Message::Revoke(Revoke { app_id })));
        } else {
            let is_malformed = matches!(result, Err(DecodeError::Malformed { kind: "revoke", .. }));
            prop_assert!(is_malformed);
        }
    }

    /// `Visibility` is kind 3 followed by a list of app ids.
    #[test]
    fn decoding_enforces_list_limits(count in 0usize..=MAX_VISIBILITY + 4, declared_extra in 0usize..3) {
        let mut body = varint(3);
        body.extend(varint((count + declared_extra) as u64));
        for _ in 0..count + declared_extra {
            body.extend([1, b'a']);
        }
        let result = decode_body(&body);
        if count + declared_extra <= MAX_VISIBILITY {
            let apps = AppList::new(vec![AppId::new("a").unwrap(); count + declared_extra]).unwrap();
            prop_assert_eq!(result.unwrap(), Decoded::Message(Message::Visibility(Visibility { apps })));
        } else {
            let is_malformed = matches!(result, Err(DecodeError::Malformed { kind: "visibility", .. }));
            prop_assert!(is_malformed);
        }
    }
}

#[test]
fn limits_at_the_boundary() {
    for (max, over) in [(MAX_APP_ID_LEN, "a"), (MAX_APP_ID_LEN / 2, "é")] {
        let exact = over.repeat(max);
        let mut body = varint(6);
        body.extend(varint(exact.len() as u64));
        body.extend_from_slice(exact.as_bytes());
        assert!(decode_body(&body).is_ok(), "{} bytes fit", exact.len());
        let longer = format!("{exact}{over}");
        let mut body = varint(6);
        body.extend(varint(longer.len() as u64));
        body.extend_from_slice(longer.as_bytes());
        assert!(decode_body(&body).is_err(), "{} bytes do not fit", longer.len());
    }
    // Invalid UTF-8 within the limit is malformed too.
    assert!(decode_body(&[6, 2, 0xC3, 0x28]).is_err());
}

#[test]
fn hostile_length_prefixes_fail_fast() {
    let began = Instant::now();
    let hostile: Vec<Vec<u8>> = vec![
        // Visibility with a list count of 2^31.
        [varint(3), varint(1 << 31)].concat(),
        // Visibility with a list count of u64::MAX.
        [varint(3), varint(u64::MAX)].concat(),
        // Hello with a token length of 2^31.
        [varint(0), vec![1], varint(1 << 31), b"abc".to_vec()].concat(),
        // Notify whose data claims 2^31 bytes after valid leading fields.
        [varint(9), varint(1), vec![1, b'a', 1, b't', 1, b'b'], varint(1 << 31)].concat(),
        // Authorize with a state of MAX_STATE_LEN + 1 bytes, only three of them present.
        [varint(4), vec![1, b'a'], varint(MAX_STATE_LEN as u64 + 1), b"xyz".to_vec()].concat(),
    ];
    for body in &hostile {
        assert!(matches!(decode_body(body), Err(DecodeError::Malformed { .. })), "{body:?}");
        // And in a frame, through the stream decoder.
        let frame = frame_of(body);
        let (decoded, error) = decode_chunks(&[&frame]);
        assert!(decoded.is_empty());
        assert!(matches!(error, Some(DecodeError::Malformed { .. })));
        // And to a session, which closes as malformed.
        let mut server = server_session(began, true);
        server.handle_stream_data(began, &frame);
        let events = drain_server(&mut server);
        assert!(
            matches!(&events[..], [ServerEvent::Closed(close)] if close.code == ErrorCode::MALFORMED_FRAME),
            "{events:?}"
        );
    }
    assert!(began.elapsed() < Duration::from_secs(2), "hostile lengths must not allocate or loop");
}

#[test]
fn echo_ping_round_trips_and_every_four_byte_payload_decodes_by_the_rules() {
    for kind in [EchoKind::Probe, EchoKind::Echo] {
        for status in Status::ALL {
            for idle in [false, true] {
                for delay_secs in [0, 1, 30, 255, 256, 1800, u16::MAX] {
                    let echo = EchoPing { kind, status, idle, seq: 9, delay_secs };
                    let bytes = echo.encode();
                    assert_eq!(EchoPing::decode(&bytes), Ok(echo));
                    assert_eq!(u16::from_be_bytes([bytes[2], bytes[3]]), delay_secs);
                    // Kinds 2 and 3 never read as a heartbeat or ack.
                    assert!(Ping::decode(&bytes).is_err());
                }
            }
        }
    }
    for head in 0..=u8::MAX {
        let payload = [head, 3, 0, 20];
        let (version, kind) = (head >> 6, head & 0b11);
        match EchoPing::decode(&payload) {
            Ok(echo) => {
                assert!(version == PROTOCOL_VERSION && kind >= 2);
                // Re-encoding clears only the ignored bit 2.
                assert_eq!(echo.encode(), [head & !0b100, 3, 0, 20]);
            }
            Err(DecodeError::PingVersion { version: v }) => {
                assert_eq!((v, version != PROTOCOL_VERSION), (version, true))
            }
            Err(DecodeError::PingKind { kind: k }) => assert_eq!((k, k < 2), (kind, true)),
            Err(other) => panic!("{other:?}"),
        }
        for len in [0, 1, 2, 3, 5] {
            let long = [head; 5];
            assert_eq!(EchoPing::decode(&long[..len]), Err(DecodeError::PingLength { len }));
        }
    }
}
