//! Hard limits of protocol version 1.
//!
//! These are wire-level maxima: a decoder rejects anything larger before it allocates, so a
//! peer can never make the other side hold more than a frame's worth of memory per message.
//! A server may announce *tighter* limits in [`Welcome`](crate::Welcome); it can never
//! announce looser ones, because the decoders on both ends enforce these.

use core::time::Duration;

/// Largest frame body in bytes (the length prefix not included). Big enough for a `Hello`
/// with a maximal token and visibility list, small enough that a buffered frame is cheap.
pub const MAX_FRAME_LEN: usize = 16 * 1024;
/// Largest length prefix in bytes: a LEB128 varint of [`MAX_FRAME_LEN`] needs three.
pub const MAX_PREFIX_LEN: usize = 3;
/// Longest device token (a compact JWT) in bytes.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Longest device id in bytes.
pub const MAX_DEVICE_ID_LEN: usize = 64;
/// Longest app id in bytes.
pub const MAX_APP_ID_LEN: usize = 64;
/// Longest PUID in bytes.
pub const MAX_PUID_LEN: usize = 64;
/// Longest status message in bytes of UTF-8.
pub const MAX_MESSAGE_LEN: usize = 256;
/// Most app ids in one visibility list.
pub const MAX_VISIBILITY: usize = 128;
/// Longest `state` an app hands its user to link accounts, in bytes.
pub const MAX_STATE_LEN: usize = 256;
/// Longest notification title in bytes.
pub const MAX_TITLE_LEN: usize = 128;
/// Longest notification body in bytes.
pub const MAX_BODY_LEN: usize = 1024;
/// Longest notification data (opaque to the daemon, usually JSON) in bytes.
pub const MAX_DATA_LEN: usize = 4096;
/// Longest human-readable reason in `GoAway` and `Error`, in bytes.
pub const MAX_REASON_LEN: usize = 256;
/// Largest ping datagram payload in bytes. Version 1 pings are exactly
/// [`PING_LEN`](crate::ping::PING_LEN) bytes; the rest is room for later versions.
pub const MAX_PING_LEN: usize = 4;

/// Shortest heartbeat interval a server accepts; shorter requests are raised to it.
pub const MIN_HEARTBEAT: Duration = Duration::from_secs(5);
/// Longest heartbeat interval a server accepts; longer requests are lowered to it.
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(30 * 60);

/// Bytes a varint length prefix takes for a field of at most `max` bytes or items.
const fn varint_len(max: usize) -> usize {
    let mut len = 1;
    let mut value = max >> 7;
    while value > 0 {
        len += 1;
        value >>= 7;
    }
    len
}

/// Bytes of a length-prefixed text field of at most `max` bytes.
const fn text(max: usize) -> usize {
    varint_len(max) + max
}

/// The largest `Hello` body: kind, version, token, device id, status, idle, message,
/// visibility list, heartbeat (u32 varint) and status sequence number.
pub const MAX_HELLO_LEN: usize = 1
    + 1
    + text(MAX_TOKEN_LEN)
    + text(MAX_DEVICE_ID_LEN)
    + 1
    + 1
    + text(MAX_MESSAGE_LEN)
    + varint_len(MAX_VISIBILITY)
    + MAX_VISIBILITY * text(MAX_APP_ID_LEN)
    + 5
    + 1;

/// The largest `Notify` body: kind, id (u64 varint), app id, title, body, data, expiry.
pub const MAX_NOTIFY_LEN: usize =
    1 + 10 + text(MAX_APP_ID_LEN) + text(MAX_TITLE_LEN) + text(MAX_BODY_LEN) + text(MAX_DATA_LEN) + 5;

// Every message built from bounded fields fits in a frame, so encoding cannot fail on size.
const _: () = assert!(MAX_HELLO_LEN <= MAX_FRAME_LEN);
const _: () = assert!(MAX_NOTIFY_LEN <= MAX_FRAME_LEN);
const _: () = assert!(varint_len(MAX_FRAME_LEN) == MAX_PREFIX_LEN);
