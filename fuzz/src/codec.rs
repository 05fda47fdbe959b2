//! The codec targets: control frames and ping datagrams.

use presence_protocol::limits::{MAX_FRAME_LEN, MAX_PREFIX_LEN};
use presence_protocol::*;

/// Decodes `data` as a control stream, whole and in small chunks, and as a single frame
/// body. Checks that both ways of feeding the decoder agree frame by frame, that it never
/// buffers more than one frame, and that every message re-encodes to a frame that decodes
/// to the same message and re-encodes to the same bytes.
pub fn control_frame(data: &[u8]) {
    if let Ok(Decoded::Message(message)) = decode_body(data) {
        round_trip(&message);
    }
    let whole = decode_stream(data, data.len().max(1));
    let chunked = decode_stream(data, 1);
    assert_eq!(whole, chunked, "decoding must not depend on how the stream is cut");
    for decoded in whole.into_iter().flatten() {
        if let Decoded::Message(message) = decoded {
            round_trip(&message);
        }
    }
}

/// Feeds `data` to one decoder in chunks of growing size (`first`, `first + 1`, …) and
/// collects every result up to and including the first error.
fn decode_stream(data: &[u8], first: usize) -> Vec<Result<Decoded, DecodeError>> {
    let mut decoder = FrameDecoder::new();
    let mut results = Vec::new();
    let mut rest = data;
    let mut size = first;
    while !rest.is_empty() {
        let (mut chunk, tail) = rest.split_at(size.min(rest.len()));
        rest = tail;
        size += 1;
        loop {
            match decoder.decode(&mut chunk) {
                Ok(None) => {
                    assert!(chunk.is_empty(), "Ok(None) only once the input is used up");
                    break;
                }
                Ok(Some(decoded)) => results.push(Ok(decoded)),
                Err(error) => {
                    results.push(Err(error));
                    return results;
                }
            }
            assert!(decoder.buffered() <= MAX_PREFIX_LEN + MAX_FRAME_LEN);
        }
        assert!(decoder.buffered() <= MAX_PREFIX_LEN + MAX_FRAME_LEN);
    }
    results
}

/// A decoded message survives encode → decode unchanged, and its encoding is stable.
fn round_trip(message: &Message) {
    let frame = encode_frame(message).expect("a decoded message always fits a frame");
    let mut input = &frame[..];
    let decoded = FrameDecoder::new().decode(&mut input).expect("re-encoded frame decodes");
    assert!(input.is_empty(), "one frame, consumed whole");
    assert_eq!(decoded, Some(Decoded::Message(message.clone())));
    let again = encode_frame(message).expect("encodes twice");
    assert_eq!(frame, again);
    let body = encode_body(message).expect("body encodes");
    assert_eq!(decode_body(&body), Ok(Decoded::Message(message.clone())));
}

/// Decodes `data` as a ping; a ping that decodes re-encodes to bytes that decode to it.
pub fn ping(data: &[u8]) {
    if let Ok(ping) = Ping::decode(data) {
        let encoded = ping.encode();
        assert_eq!(Ping::decode(&encoded), Ok(ping));
        // Version 1 pings are two bytes; longer payloads only add reserved bytes.
        assert_eq!(encoded[..], data[..PING_LEN]);
    }
}
