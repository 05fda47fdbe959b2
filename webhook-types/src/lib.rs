//! # presence-webhook
//!
//! The webhook contract of Presence as Rust types: what the daemon POSTs to an AppService,
//! and what an AppService written in Rust parses. The daemon (`presenced`) encodes with
//! these types, the load tool and the example AppService (`chat-room`) decode with them, so
//! the schema exists once; `daemon/openapi.json` documents the same shapes for every other
//! language, and the daemon's tests check the two against each other.
//!
//! ## Layout
//!
//! - [`WebhookBatch`]: the body of one POST, `{"app_id": ..., "events": [...]}`.
//! - [`WebhookEvent`]: one event, tagged by its `type` (`presence`, `grant`, `revoke`,
//!   `notification`, `reset`, `ping`); a type this version does not know decodes as
//!   [`WebhookEvent::Unknown`], so a receiver keeps working when the daemon adds one.
//!
//! ## Design
//!
//! Text fields are [`Cow`]s: the daemon serializes an event that borrows from its own state
//! (the presence event is the hot path of the fan-out, and borrowing spares two allocations
//! per status change), while a receiver decodes owned values. `status` and `outcome` stay
//! strings on purpose: a receiver must not reject a whole batch because a later daemon
//! sends a value it does not know, and the daemon checks its own vocabularies against
//! openapi.json.
//!
//! The encoding writes each event's fields in alphabetical order with `type` last, the
//! bytes the daemon has always sent (its first encoder printed `serde_json` maps, which are
//! sorted). JSON readers do not care; the fixed order keeps stored outbox entries, signed
//! bodies and the benchmarks byte-for-byte comparable across versions.

#![forbid(unsafe_code)]

use std::borrow::Cow;

use serde::ser::{Error as _, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};

/// The body of one webhook POST: the events for one app, in the order they happened
/// (coalesced: see openapi.json's `webhooks.events`). Fields this version does not know
/// are ignored when decoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookBatch<'a> {
    /// The app the batch is for (`app_` + base64url).
    pub app_id: Cow<'a, str>,
    /// 1 to 1,000 events.
    pub events: Vec<WebhookEvent<'a>>,
}

/// One webhook event, told apart by its `type` field. `at` is always Unix milliseconds.
///
/// Not `#[non_exhaustive]`: inside the workspace a new event type must be a compile error
/// in every receiver's `match`, and at run time [`WebhookEvent::Unknown`] already keeps an
/// older receiver working.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WebhookEvent<'a> {
    /// What the app sees of a user changed. Only the latest per PUID is delivered; a
    /// receiver drops it unless `seq` is above the last `seq` it saw for the PUID.
    Presence {
        /// The user's pseudonym for this app.
        puid: Cow<'a, str>,
        /// `online`, `away`, `unavailable` or `offline`.
        status: Cow<'a, str>,
        /// The status message, at most 256 bytes; empty when offline.
        message: Cow<'a, str>,
        /// Increases per PUID, across reconnects and daemon restarts. Its values and gaps are
        /// this app's own, so two apps cannot match PUIDs by them.
        seq: u64,
        /// When the change happened, to about a second (a point of its slot chosen per app;
        /// order by `seq`, not by this).
        at: u64,
    },
    /// The user authorized the app from a device.
    Grant {
        /// The user's pseudonym for this app.
        puid: Cow<'a, str>,
        /// The string the app gave its user to link the PUID to an account: untrusted
        /// input, at most 256 bytes.
        state: Cow<'a, str>,
        /// When it was granted.
        at: u64,
    },
    /// The user withdrew the app's authorization: the PUID reads as offline until a new
    /// grant.
    Revoke {
        /// The user's pseudonym for this app.
        puid: Cow<'a, str>,
        /// When it was revoked.
        at: u64,
    },
    /// A notification's outcome for one recipient, delivered at least once: deduplicate on
    /// (`id`, `puid`).
    Notification {
        /// The id `POST /v1/notifications` answered with: a decimal string below 2^53.
        id: Cow<'a, str>,
        /// The recipient.
        puid: Cow<'a, str>,
        /// `accepted`, `dismissed`, `missed`, `undeliverable` or `taken` (never `pending`).
        outcome: Cow<'a, str>,
        /// When it was decided.
        at: u64,
    },
    /// The daemon restarted after a crash: every user the app saw is offline until a newer
    /// `presence` event says otherwise (keep each PUID's last `seq`).
    Reset {
        /// When the daemon came back.
        at: u64,
    },
    /// A test event the app's owner asked for (`POST /v1/webhooks/ping`, the console's
    /// "send a test event"): it says nothing about any user, and exists so that a receiver
    /// can be checked end to end, signature and delivery log included. Ignore it.
    Ping {
        /// When it was asked for.
        at: u64,
    },
    /// A `type` this version does not know: ignore it, as the contract asks. Decoding
    /// only; it has no encoding.
    #[serde(other)]
    Unknown,
}

impl WebhookEvent<'_> {
    /// Every `type` the daemon sends, in the order openapi.json lists them.
    pub const TYPES: [&'static str; 6] = ["presence", "grant", "revoke", "notification", "reset", "ping"];

    /// The event's `type`; `None` for [`WebhookEvent::Unknown`].
    pub fn kind(&self) -> Option<&'static str> {
        Some(match self {
            WebhookEvent::Presence { .. } => "presence",
            WebhookEvent::Grant { .. } => "grant",
            WebhookEvent::Revoke { .. } => "revoke",
            WebhookEvent::Notification { .. } => "notification",
            WebhookEvent::Reset { .. } => "reset",
            WebhookEvent::Ping { .. } => "ping",
            WebhookEvent::Unknown => return None,
        })
    }

    /// When the event happened, Unix milliseconds; `None` for [`WebhookEvent::Unknown`].
    pub fn at(&self) -> Option<u64> {
        match self {
            WebhookEvent::Presence { at, .. }
            | WebhookEvent::Grant { at, .. }
            | WebhookEvent::Revoke { at, .. }
            | WebhookEvent::Notification { at, .. }
            | WebhookEvent::Reset { at }
            | WebhookEvent::Ping { at } => Some(*at),
            WebhookEvent::Unknown => None,
        }
    }
}

/// Fields alphabetically, `type` last (see the crate docs); written out rather than derived
/// because serde's internal tagging would put `type` first.
impl Serialize for WebhookEvent<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Some(kind) = self.kind() else {
            return Err(S::Error::custom("an event of unknown type has no encoding"));
        };
        match self {
            WebhookEvent::Presence { puid, status, message, seq, at } => {
                let mut event = serializer.serialize_struct("PresenceEvent", 6)?;
                event.serialize_field("at", at)?;
                event.serialize_field("message", message)?;
                event.serialize_field("puid", puid)?;
                event.serialize_field("seq", seq)?;
                event.serialize_field("status", status)?;
                event.serialize_field("type", kind)?;
                event.end()
            }
            WebhookEvent::Grant { puid, state, at } => {
                let mut event = serializer.serialize_struct("GrantEvent", 4)?;
                event.serialize_field("at", at)?;
                event.serialize_field("puid", puid)?;
                event.serialize_field("state", state)?;
                event.serialize_field("type", kind)?;
                event.end()
            }
            WebhookEvent::Revoke { puid, at } => {
                let mut event = serializer.serialize_struct("RevokeEvent", 3)?;
                event.serialize_field("at", at)?;
                event.serialize_field("puid", puid)?;
                event.serialize_field("type", kind)?;
                event.end()
            }
            WebhookEvent::Notification { id, puid, outcome, at } => {
                let mut event = serializer.serialize_struct("NotificationEvent", 5)?;
                event.serialize_field("at", at)?;
                event.serialize_field("id", id)?;
                event.serialize_field("outcome", outcome)?;
                event.serialize_field("puid", puid)?;
                event.serialize_field("type", kind)?;
                event.end()
            }
            WebhookEvent::Reset { at } | WebhookEvent::Ping { at } => {
                let mut event = serializer.serialize_struct("AtOnlyEvent", 2)?;
                event.serialize_field("at", at)?;
                event.serialize_field("type", kind)?;
                event.end()
            }
            WebhookEvent::Unknown => Err(S::Error::custom("an event of unknown type has no encoding")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One event of every type, with text that needs escaping.
    fn samples() -> Vec<(WebhookEvent<'static>, &'static str)> {
        vec![
            (
                WebhookEvent::Presence {
                    puid: "pUiD_1".into(),
                    status: "unavailable".into(),
                    message: "in a \"meeting\" ✓".into(),
                    seq: 1_764_400_000_000_001,
                    at: 1_764_400_000_000,
                },
                r#"{"at":1764400000000,"message":"in a \"meeting\" ✓","puid":"pUiD_1","seq":1764400000000001,"status":"unavailable","type":"presence"}"#,
            ),
            (
                WebhookEvent::Grant { puid: "p".into(), state: "alice\n".into(), at: 2 },
                r#"{"at":2,"puid":"p","state":"alice\n","type":"grant"}"#,
            ),
            (WebhookEvent::Revoke { puid: "p".into(), at: 3 }, r#"{"at":3,"puid":"p","type":"revoke"}"#),
            (
                WebhookEvent::Notification {
                    id: "4503599627370497".into(),
                    puid: "p".into(),
                    outcome: "taken".into(),
                    at: 4,
                },
                r#"{"at":4,"id":"4503599627370497","outcome":"taken","puid":"p","type":"notification"}"#,
            ),
            (WebhookEvent::Reset { at: 5 }, r#"{"at":5,"type":"reset"}"#),
            (WebhookEvent::Ping { at: 6 }, r#"{"at":6,"type":"ping"}"#),
        ]
    }

    #[test]
    fn every_type_encodes_alphabetically_and_decodes_back() {
        for (event, json) in samples() {
            assert_eq!(serde_json::to_string(&event).expect("encodes"), json);
            assert_eq!(serde_json::from_str::<WebhookEvent<'_>>(json).expect("decodes"), event);
        }
    }

    #[test]
    fn the_type_list_is_the_set_of_kinds() {
        let kinds: Vec<_> = samples().iter().map(|(event, _)| event.kind().expect("known")).collect();
        assert_eq!(kinds, WebhookEvent::TYPES);
        assert_eq!(WebhookEvent::Unknown.kind(), None);
    }

    #[test]
    fn receivers_ignore_what_they_do_not_know() {
        let json = r#"{"app_id":"app_x","version":2,"events":[
            {"type":"presence","puid":"p","status":"online","message":"","seq":1,"at":2,"device":"d"},
            {"type":"typing","puid":"p"},
            {"type":"reset","at":3}
        ]}"#;
        let batch: WebhookBatch<'_> = serde_json::from_str(json).expect("decodes");
        assert_eq!(batch.app_id, "app_x");
        assert!(matches!(batch.events[0], WebhookEvent::Presence { seq: 1, at: 2, .. }));
        assert_eq!(batch.events[1], WebhookEvent::Unknown);
        assert_eq!(batch.events[2], WebhookEvent::Reset { at: 3 });
        // An unknown event cannot be sent on.
        assert!(serde_json::to_string(&WebhookEvent::Unknown).is_err());
    }

    #[test]
    fn a_known_type_without_its_fields_is_refused() {
        for json in [r#"{"type":"presence","puid":"p"}"#, r#"{"type":"reset"}"#, r#"{"at":1}"#] {
            assert!(serde_json::from_str::<WebhookEvent<'_>>(json).is_err(), "{json}");
        }
    }

    #[test]
    fn the_batch_is_app_id_then_events() {
        let batch = WebhookBatch { app_id: "app_x".into(), events: vec![WebhookEvent::Reset { at: 1 }] };
        let json = serde_json::to_string(&batch).expect("encodes");
        assert_eq!(json, r#"{"app_id":"app_x","events":[{"at":1,"type":"reset"}]}"#);
        assert_eq!(serde_json::from_str::<WebhookBatch<'_>>(&json).expect("decodes"), batch);
    }
}
