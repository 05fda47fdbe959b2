//! What AppServices are told: every webhook event is built here, as a typed
//! [`WebhookEvent`] (the contract, shared with receivers through the `presence-webhook`
//! crate), encoded once with its outbox compaction key, and handed to the fan-out.
//!
//! | `type` | fields | key ([`OutboxKey`]) |
//! | --- | --- | --- |
//! | `presence` | `puid`, `status`, `message`, `seq`, `at` | `p:<puid>`: only the latest state waits |
//! | `grant` | `puid`, `state`, `at` | `a:<puid>`: grant and revoke replace each other |
//! | `revoke` | `puid`, `at` | `a:<puid>` |
//! | `notification` | `id`, `puid`, `outcome`, `at` | `n:<id>:<puid>`: every outcome is delivered |
//! | `reset` | `at` | `r`: one waits at most |
//! | `ping` | `at` | `t`: a test event; one waits at most |
//!
//! `reset` follows a daemon crash: the sessions died without their `offline` events, so
//! every user the app saw is offline unless a later event (with a higher `seq`) says
//! otherwise. A clean shutdown needs none: its drain reports every user offline, or, with a
//! drain grace, leaves them to the next start, which reports those who do not come back
//! ([`crate::table`], departures).
//!
//! `at` is Unix milliseconds; `seq` increases per PUID. A presence event's `seq` and `at`
//! are the (app, PUID) pair's own, to about a second (see [`crate::table`]).
//!
//! The key is derived from the event ([`OutboxKey::of`]), so an event cannot be stored
//! under another event's key, and [`encode`] is the one place both are produced: a direct
//! `serde_json::to_vec` of the borrowed event, no `serde_json::Value` in between (the
//! presence event is the fan-out's hot path).

use std::fmt;
use std::sync::Arc;

pub(crate) use presence_webhook::WebhookEvent;

use crate::apps::Apps;
use crate::clock::Clock;
use crate::store::OutboxEvent;
use crate::table::{PresenceEvent, PresenceSink};
use crate::webhook::fanout::Fanout;

/// An outbox entry's compaction key: entries of one app with equal keys replace each other
/// (the newest wins), so the key says which events are state and which are a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutboxKey<'a> {
    /// `p:<puid>`: a user's presence is state; only the latest waits.
    Presence(&'a str),
    /// `a:<puid>`: a user's access (grant or revoke); the latest decision wins.
    Access(&'a str),
    /// `n:<id>:<puid>`: one per notification and recipient, so every outcome is kept.
    Notification(&'a str, &'a str),
    /// `r`: a reset says everything; one waits at most.
    Reset,
    /// `t`: a test event carries no news; one waits at most, so pressing "send a test
    /// event" while the receiver is down does not pile them up.
    Ping,
}

impl<'a> OutboxKey<'a> {
    /// The key `event` compacts under; `None` for [`WebhookEvent::Unknown`], which the
    /// daemon never sends.
    pub(crate) fn of(event: &'a WebhookEvent<'_>) -> Option<OutboxKey<'a>> {
        Some(match event {
            WebhookEvent::Presence { puid, .. } => OutboxKey::Presence(puid),
            WebhookEvent::Grant { puid, .. } | WebhookEvent::Revoke { puid, .. } => OutboxKey::Access(puid),
            WebhookEvent::Notification { id, puid, .. } => OutboxKey::Notification(id, puid),
            WebhookEvent::Reset { .. } => OutboxKey::Reset,
            WebhookEvent::Ping { .. } => OutboxKey::Ping,
            WebhookEvent::Unknown => return None,
        })
    }

    /// Whether the event a stored key holds must reach the receiver in order with the
    /// app's other events, so the fan-out never has it in flight beside another batch.
    /// Grant, revoke and reset carry no `seq`: a receiver could not tell an older one
    /// from a newer, and a reset arriving after the presence that followed it would undo
    /// it. Presence events (ordered by `seq`), outcomes and pings (each its own) need no
    /// order.
    pub(crate) fn keeps_order(stored: &str) -> bool {
        stored.starts_with("a:") || stored == "r"
    }
}

/// The stored form, the one encoding of a key (stores compare keys as these strings).
impl fmt::Display for OutboxKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutboxKey::Presence(puid) => write!(f, "p:{puid}"),
            OutboxKey::Access(puid) => write!(f, "a:{puid}"),
            OutboxKey::Notification(id, puid) => write!(f, "n:{id}:{puid}"),
            OutboxKey::Reset => f.write_str("r"),
            OutboxKey::Ping => f.write_str("t"),
        }
    }
}

/// An event as the outbox stores it: its compaction key, its `at` and its JSON. Public so
/// that the benches measure exactly what the daemon sends. `None` only for
/// [`WebhookEvent::Unknown`], which has no encoding.
pub fn encode(event: &WebhookEvent<'_>) -> Option<OutboxEvent> {
    let key = OutboxKey::of(event)?.to_string();
    let at_ms = event.at()?;
    // Presence is state: of two events of one PUID, the higher `seq` is the newer.
    let version = match event {
        WebhookEvent::Presence { seq, .. } => *seq,
        // Not state: each replaces whatever of its key waits.
        WebhookEvent::Grant { .. }
        | WebhookEvent::Revoke { .. }
        | WebhookEvent::Notification { .. }
        | WebhookEvent::Reset { .. }
        | WebhookEvent::Ping { .. }
        | WebhookEvent::Unknown => 0,
    };
    // Every known event is strings and integers, which always serialize.
    serde_json::to_vec(event).ok().map(|json| OutboxEvent { key, version, at_ms, json })
}

/// A table change as a `presence` event, borrowing its text from `event`.
pub fn presence_event(event: &PresenceEvent) -> WebhookEvent<'_> {
    WebhookEvent::Presence {
        puid: event.puid.as_str().into(),
        status: event.status.as_str().into(),
        message: event.message.as_str().into(),
        seq: event.seq,
        at: event.at_ms,
    }
}

/// Turns daemon happenings into webhook events for registered apps.
#[derive(Debug)]
pub struct Outbound {
    apps: Arc<Apps>,
    fanout: Arc<Fanout>,
    clock: Clock,
}

impl Outbound {
    /// Events go to `fanout`, only for apps registered in `apps`.
    pub fn new(apps: Arc<Apps>, fanout: Arc<Fanout>, clock: Clock) -> Outbound {
        Outbound { apps, fanout, clock }
    }

    /// A user authorized an app; `state` lets the app link the PUID to its own account.
    pub fn grant(&self, app_id: &str, puid: &str, state: &str) {
        self.send(
            app_id,
            &WebhookEvent::Grant { puid: puid.into(), state: state.into(), at: self.clock.unix_ms() },
        );
    }

    /// A user withdrew an app's authorization.
    pub fn revoke(&self, app_id: &str, puid: &str) {
        self.send(app_id, &WebhookEvent::Revoke { puid: puid.into(), at: self.clock.unix_ms() });
    }

    /// The daemon restarted after a crash: tell every app that all its users are offline
    /// until their devices reconnect.
    pub fn reset_all(&self, app_ids: impl IntoIterator<Item = String>) {
        for app_id in app_ids {
            self.send(&app_id, &WebhookEvent::Reset { at: self.clock.unix_ms() });
        }
    }

    /// A test event for one app, asked for by its owner; returns its `at`, or `None` when
    /// the app is not registered (nothing is sent).
    pub fn ping(&self, app_id: &str) -> Option<u64> {
        if !self.apps.exists(app_id) {
            return None;
        }
        let at = self.clock.unix_ms();
        self.send(app_id, &WebhookEvent::Ping { at });
        Some(at)
    }

    /// A notification's outcome for one recipient.
    pub fn outcome(&self, app_id: &str, id: u64, puid: &str, outcome: &str) {
        let id = id.to_string();
        let event = WebhookEvent::Notification {
            id: id.into(),
            puid: puid.into(),
            outcome: outcome.into(),
            at: self.clock.unix_ms(),
        };
        self.send(app_id, &event);
    }

    fn send(&self, app_id: &str, event: &WebhookEvent<'_>) {
        self.store(app_id, encode(event));
    }

    /// Hands an encoded event to the fan-out, if its app is registered.
    fn store(&self, app_id: &str, event: Option<OutboxEvent>) {
        if let Some(event) = event.filter(|_| self.apps.exists(app_id)) {
            self.fanout.publish(app_id, vec![event]);
        }
    }
}

impl PresenceSink for Outbound {
    fn publish(&self, event: &PresenceEvent) {
        // The event's `at` is blurred to its slot for the app (`crate::table`); the outbox's
        // is when it was published, which the delivery latency is measured from.
        let stored = encode(&presence_event(event))
            .map(|stored| OutboxEvent { at_ms: self.clock.unix_ms(), ..stored });
        self.store(&event.app_id, stored);
    }
}

#[cfg(test)]
mod tests {
    use presence_protocol::{AppId, Puid, Status};
    use serde_json::json;

    use super::*;

    fn text(entry: Option<OutboxEvent>) -> (String, String) {
        let OutboxEvent { key, json, .. } = entry.expect("a known event encodes");
        (key, String::from_utf8(json).expect("utf-8"))
    }

    /// The daemon's previous encoders, `json!` maps printed by `serde_json` (sorted keys) and
    /// `format!` keys: the typed events must send exactly these bytes.
    #[test]
    fn every_event_encodes_as_the_previous_json_maps_did() {
        let (puid, at) = ("pUiD_1", 1_764_400_000_000u64);
        let grant = WebhookEvent::Grant { puid: puid.into(), state: "alice \"A\" ✓".into(), at };
        assert_eq!(
            text(encode(&grant)),
            (
                format!("a:{puid}"),
                json!({"type": "grant", "puid": puid, "state": "alice \"A\" ✓", "at": at}).to_string()
            )
        );
        let revoke = WebhookEvent::Revoke { puid: puid.into(), at };
        assert_eq!(
            text(encode(&revoke)),
            (format!("a:{puid}"), json!({"type": "revoke", "puid": puid, "at": at}).to_string())
        );
        assert_eq!(
            text(encode(&WebhookEvent::Reset { at })),
            ("r".to_owned(), json!({"type": "reset", "at": at}).to_string())
        );
        assert_eq!(
            text(encode(&WebhookEvent::Ping { at })),
            ("t".to_owned(), json!({"type": "ping", "at": at}).to_string())
        );
        for (event, ordered) in [
            (grant.clone(), true),
            (revoke.clone(), true),
            (WebhookEvent::Reset { at }, true),
            (WebhookEvent::Ping { at }, false),
            (
                WebhookEvent::Presence {
                    puid: puid.into(),
                    status: "online".into(),
                    message: "".into(),
                    seq: 1,
                    at,
                },
                false,
            ),
            (
                WebhookEvent::Notification {
                    id: "1".into(),
                    puid: "a:b".into(),
                    outcome: "taken".into(),
                    at,
                },
                false,
            ),
        ] {
            let key = OutboxKey::of(&event).expect("known").to_string();
            assert_eq!(OutboxKey::keeps_order(&key), ordered, "{key}");
        }
        let id = 4_503_599_627_370_497u64;
        let outcome = WebhookEvent::Notification {
            id: id.to_string().into(),
            puid: puid.into(),
            outcome: "undeliverable".into(),
            at,
        };
        let old = json!({"type": "notification", "id": id.to_string(), "puid": puid, "outcome": "undeliverable", "at": at});
        assert_eq!(text(encode(&outcome)), (format!("n:{id}:{puid}"), old.to_string()));
        assert_eq!(encode(&WebhookEvent::Unknown), None);
    }

    #[test]
    fn presence_events_encode_as_the_json_map_would() {
        let event = PresenceEvent {
            app_id: AppId::new("app_x").expect("app id"),
            puid: Puid::new("pUiD_1").expect("puid"),
            status: Status::Unavailable,
            message: "in a \"meeting\" ✓".to_owned(),
            seq: 1_764_400_000_000_001,
            at_ms: 1_764_400_000_000,
        };
        let (key, json) = text(encode(&presence_event(&event)));
        assert_eq!(key, "p:pUiD_1");
        let map = json!({
            "type": "presence",
            "puid": "pUiD_1",
            "status": "unavailable",
            "message": "in a \"meeting\" ✓",
            "seq": 1_764_400_000_000_001u64,
            "at": 1_764_400_000_000u64,
        });
        assert_eq!(json, map.to_string());
    }

    #[test]
    fn keys_keep_their_stored_form() {
        assert_eq!(OutboxKey::Presence("p1").to_string(), "p:p1");
        assert_eq!(OutboxKey::Access("p1").to_string(), "a:p1");
        assert_eq!(OutboxKey::Notification("42", "p1").to_string(), "n:42:p1");
        assert_eq!(OutboxKey::Reset.to_string(), "r");
        assert_eq!(OutboxKey::Ping.to_string(), "t");
        // Grant and revoke of one PUID share a key; different PUIDs and ids do not.
        let grant = WebhookEvent::Grant { puid: "p1".into(), state: "".into(), at: 1 };
        let revoke = WebhookEvent::Revoke { puid: "p1".into(), at: 2 };
        assert_eq!(OutboxKey::of(&grant), OutboxKey::of(&revoke));
        let note = |id: &'static str, puid: &'static str| WebhookEvent::Notification {
            id: id.into(),
            puid: puid.into(),
            outcome: "missed".into(),
            at: 1,
        };
        let (a, b, c) = (note("1", "p1"), note("1", "p2"), note("2", "p1"));
        assert_ne!(OutboxKey::of(&a), OutboxKey::of(&b));
        assert_ne!(OutboxKey::of(&a), OutboxKey::of(&c));
    }
}
