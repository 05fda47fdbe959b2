//! Control messages: the typed content of frames on the control stream.
//!
//! The order of [`Message`]'s variants *is* the wire format: postcard writes the variant
//! index as the frame's leading varint (its *kind*). Append new kinds at the end, never
//! reorder. Each struct's fields are written in declaration order; later revisions may only
//! append fields, and receivers ignore bytes after the last field they know.

use serde::{Deserialize, Serialize};

use crate::bounded::{List, Text};
use crate::error::ErrorCode;
use crate::limits::*;

/// A device token (a compact JWT); opaque to the protocol.
pub type Token = Text<MAX_TOKEN_LEN>;
/// One installed client of a user, stable across reconnects.
pub type DeviceId = Text<MAX_DEVICE_ID_LEN>;
/// An application registered with the daemon.
pub type AppId = Text<MAX_APP_ID_LEN>;
/// The pseudonymous id one app knows one user by.
pub type Puid = Text<MAX_PUID_LEN>;
/// The user's short free-text status message.
pub type StatusText = Text<MAX_MESSAGE_LEN>;
/// The apps a device lets see its presence.
pub type AppList = List<AppId, MAX_VISIBILITY>;
/// The opaque value an app hands its user to link the PUID to its own account.
pub type LinkState = Text<MAX_STATE_LEN>;
/// A notification's title.
pub type Title = Text<MAX_TITLE_LEN>;
/// A notification's body.
pub type Body = Text<MAX_BODY_LEN>;
/// A notification's opaque data (usually JSON from the app).
pub type Data = Text<MAX_DATA_LEN>;
/// A human-readable reason for `GoAway` and `Error`.
pub type Reason = Text<MAX_REASON_LEN>;

/// The protocol version this crate speaks, carried in ALPN, `Hello` and every ping.
pub const PROTOCOL_VERSION: u8 = 1;
/// The ALPN protocol id of version 1. Version negotiation happens here, in the TLS
/// handshake: a client offers every version it speaks, the server picks one or fails the
/// handshake with `no_application_protocol`.
pub const ALPN: &[u8] = b"presence/1";

/// What a user shows the apps they allowed. Ordered from most to least available, which is
/// the order the daemon uses to aggregate several devices (the most available one wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Status {
    /// Reachable now.
    Online,
    /// Signed in but away from the device.
    Away,
    /// Do not disturb: present, but notifications should not interrupt.
    Unavailable,
    /// Appears offline while the session stays up.
    Offline,
}

impl Status {
    /// All statuses in wire order.
    pub const ALL: [Status; 4] = [Status::Online, Status::Away, Status::Unavailable, Status::Offline];

    /// The two-bit code used in ping datagrams (the same as the postcard variant index).
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Inverse of [`Status::code`]; total over the two-bit range.
    pub fn from_code(code: u8) -> Option<Status> {
        Status::ALL.get(usize::from(code)).copied()
    }

    /// The lowercase name used in the HTTP API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Online => "online",
            Status::Away => "away",
            Status::Unavailable => "unavailable",
            Status::Offline => "offline",
        }
    }
}

impl core::str::FromStr for Status {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Status, UnknownStatus> {
        Status::ALL.into_iter().find(|status| status.as_str().eq_ignore_ascii_case(s)).ok_or(UnknownStatus)
    }
}

impl core::fmt::Display for Status {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status name was none of online, away, unavailable or offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown status: expected online, away, unavailable or offline")]
pub struct UnknownStatus;

/// Device → server, first frame: who the device is and how it starts out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Must equal the version chosen by ALPN.
    pub version: u8,
    /// Proves the user (`sub`) and device; verified by the daemon, not the protocol.
    pub token: Token,
    /// Must match the token's device claim.
    pub device_id: DeviceId,
    /// Initial status.
    pub status: Status,
    /// Initial idle flag.
    pub idle: bool,
    /// Initial status message.
    pub message: StatusText,
    /// Apps allowed to see this device's presence.
    pub visibility: AppList,
    /// The heartbeat interval the device intends, in milliseconds.
    pub heartbeat_ms: u32,
    /// The device's current status sequence number (see pings).
    pub status_seq: u8,
}

/// Server → device, answer to `Hello`: the session is up, and the limits it runs under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Identifies the session in logs on both ends.
    pub session_id: u64,
    /// The heartbeat interval the server holds the device to (the request, clamped).
    pub heartbeat_ms: u32,
    /// How long past a missed heartbeat the server waits before declaring the device offline.
    pub grace_ms: u32,
    /// The longest visibility list the server accepts.
    pub max_visibility: u16,
    /// The longest status message (bytes) the server accepts.
    pub max_message_len: u16,
    /// The server's clock, Unix milliseconds, so a device can correct for skew.
    pub server_time_ms: u64,
}

/// Device → server: a reliable status change; the only way to change the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusUpdate {
    /// New status.
    pub status: Status,
    /// New idle flag.
    pub idle: bool,
    /// New status message.
    pub message: StatusText,
    /// The status sequence number of this state (shared with pings).
    pub seq: u8,
}

/// Device → server: replaces the visibility list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Visibility {
    /// The complete new list.
    pub apps: AppList,
}

/// Device → server: the user authorizes an app; answered by `Authorized` or `Denied`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorize {
    /// The app being authorized.
    pub app_id: AppId,
    /// Opaque value from the app, passed back to it in the `grant` webhook.
    pub state: LinkState,
}

/// Server → device: the PUID the authorized app knows this user by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorized {
    /// The app that was authorized.
    pub app_id: AppId,
    /// The user's PUID for that app.
    pub puid: Puid,
}

/// Device → server: the user withdraws an app's authorization; answered by `Revoked`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoke {
    /// The app being revoked.
    pub app_id: AppId,
}

/// Server → device: the revocation took effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// The app that was revoked.
    pub app_id: AppId,
}

/// Server → device: an `Authorize` or `Revoke` was refused; the session goes on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denied {
    /// The app the refused request named.
    pub app_id: AppId,
    /// Why, from the error code table.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: Reason,
}

/// Server → device: a live notification from an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notify {
    /// Server-assigned, unique per server; answers and cancels name it.
    pub id: u64,
    /// The app that sent it.
    pub app_id: AppId,
    /// Short title.
    pub title: Title,
    /// Body text.
    pub body: Body,
    /// Opaque data for the app's own client code.
    pub data: Data,
    /// Time to live remaining when the server sent it, in milliseconds. Relative, so device
    /// clock skew does not matter.
    pub expires_in_ms: u32,
}

/// The user's answer to a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Response {
    /// The user took it up.
    Accepted,
    /// The user turned it down.
    Dismissed,
}

/// Device → server: the user answered a notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyResponse {
    /// The notification answered.
    pub id: u64,
    /// The answer.
    pub response: Response,
}

/// Why a notification was withdrawn from a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CancelReason {
    /// Another device of the same user answered it.
    Answered,
    /// The app withdrew it.
    Withdrawn,
    /// In first-accept mode, another recipient accepted it.
    Taken,
    /// It expired.
    Expired,
}

/// Server → device: stop showing a notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    /// The notification to withdraw.
    pub id: u64,
    /// Why.
    pub reason: CancelReason,
}

/// Server → device: the server is draining; reconnect (elsewhere or later) after the delay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoAway {
    /// Human-readable reason.
    pub reason: Reason,
    /// How long to wait before reconnecting, in milliseconds.
    pub retry_after_ms: u32,
}

/// Either direction: a fatal error; the sender closes the connection with the same code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMessage {
    /// The error code.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: Reason,
}

/// Device → server: a fresh token for the running session, before the old one expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reauth {
    /// The new token; it must name the same user and device.
    pub token: Token,
}

/// Every control message. The variant index is the frame kind; see PROTOCOL.md.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Kind 0.
    Hello(Hello),
    /// Kind 1.
    Welcome(Welcome),
    /// Kind 2.
    Status(StatusUpdate),
    /// Kind 3.
    Visibility(Visibility),
    /// Kind 4.
    Authorize(Authorize),
    /// Kind 5.
    Authorized(Authorized),
    /// Kind 6.
    Revoke(Revoke),
    /// Kind 7.
    Revoked(Revoked),
    /// Kind 8.
    Denied(Denied),
    /// Kind 9.
    Notify(Notify),
    /// Kind 10.
    NotifyResponse(NotifyResponse),
    /// Kind 11.
    Cancel(Cancel),
    /// Kind 12.
    GoAway(GoAway),
    /// Kind 13.
    Error(ErrorMessage),
    /// Kind 14.
    Reauth(Reauth),
}

/// Which end may send a message kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Only the device sends it.
    ToServer,
    /// Only the server sends it.
    ToDevice,
    /// Either end.
    Both,
}

impl Message {
    /// The number of kinds this version knows; kinds at or above it are skipped.
    pub const KINDS: u32 = 15;

    /// The frame kind (the postcard variant index).
    pub fn kind(&self) -> u32 {
        match self {
            Message::Hello(_) => 0,
            Message::Welcome(_) => 1,
            Message::Status(_) => 2,
            Message::Visibility(_) => 3,
            Message::Authorize(_) => 4,
            Message::Authorized(_) => 5,
            Message::Revoke(_) => 6,
            Message::Revoked(_) => 7,
            Message::Denied(_) => 8,
            Message::Notify(_) => 9,
            Message::NotifyResponse(_) => 10,
            Message::Cancel(_) => 11,
            Message::GoAway(_) => 12,
            Message::Error(_) => 13,
            Message::Reauth(_) => 14,
        }
    }

    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Welcome(_) => "welcome",
            Message::Status(_) => "status",
            Message::Visibility(_) => "visibility",
            Message::Authorize(_) => "authorize",
            Message::Authorized(_) => "authorized",
            Message::Revoke(_) => "revoke",
            Message::Revoked(_) => "revoked",
            Message::Denied(_) => "denied",
            Message::Notify(_) => "notify",
            Message::NotifyResponse(_) => "notify_response",
            Message::Cancel(_) => "cancel",
            Message::GoAway(_) => "go_away",
            Message::Error(_) => "error",
            Message::Reauth(_) => "reauth",
        }
    }

    /// Who may send this kind; a message from the wrong end is a protocol violation.
    pub fn direction(&self) -> Direction {
        match self {
            Message::Hello(_)
            | Message::Status(_)
            | Message::Visibility(_)
            | Message::Authorize(_)
            | Message::Revoke(_)
            | Message::NotifyResponse(_)
            | Message::Reauth(_) => Direction::ToServer,
            Message::Welcome(_)
            | Message::Authorized(_)
            | Message::Revoked(_)
            | Message::Denied(_)
            | Message::Notify(_)
            | Message::Cancel(_)
            | Message::GoAway(_) => Direction::ToDevice,
            Message::Error(_) => Direction::Both,
        }
    }
}
