//! What AppServices are told: every webhook event is built here, as JSON, with its outbox
//! compaction key, and handed to the fan-out.
//!
//! | `type` | fields | key (compaction) |
//! | --- | --- | --- |
//! | `presence` | `puid`, `status`, `message`, `seq`, `at` | `p:<puid>`: only the latest state waits |
//! | `grant` | `puid`, `state`, `at` | `a:<puid>`: grant and revoke replace each other |
//! | `revoke` | `puid`, `at` | `a:<puid>` |
//! | `notification` | `id`, `puid`, `outcome`, `at` | `n:<id>:<puid>`: every outcome is delivered |
//! | `reset` | `at` | `r`: one waits at most |
//!
//! `reset` follows a daemon crash: the sessions died without their `offline` events, so
//! every user the app saw is offline unless a later event (with a higher `seq`) says
//! otherwise. A clean shutdown needs none: its drain reports every user offline.
//!
//! `at` is Unix milliseconds; `seq` increases per PUID (see [`crate::table`]).

use std::sync::Arc;

use serde_json::json;

use crate::apps::{Apps, now_ms};
use crate::store::OutboxEvent;
use crate::table::{PresenceEvent, PresenceSink};
use crate::webhook::fanout::Fanout;

/// Every event `type` this module sends (openapi.json documents each one; a test checks).
pub const EVENT_TYPES: &[&str] = &["presence", "grant", "revoke", "notification", "reset"];

/// Turns daemon happenings into webhook events for registered apps.
#[derive(Debug)]
pub struct Outbound {
    apps: Arc<Apps>,
    fanout: Arc<Fanout>,
}

impl Outbound {
    /// Events go to `fanout`, only for apps registered in `apps`.
    pub fn new(apps: Arc<Apps>, fanout: Arc<Fanout>) -> Outbound {
        Outbound { apps, fanout }
    }

    /// A user authorized an app; `state` lets the app link the PUID to its own account.
    pub fn grant(&self, app_id: &str, puid: &str, state: &str) {
        let at = now_ms();
        let event = json!({"type": "grant", "puid": puid, "state": state, "at": at});
        self.send(app_id, format!("a:{puid}"), at, event.to_string().into_bytes());
    }

    /// A user withdrew an app's authorization.
    pub fn revoke(&self, app_id: &str, puid: &str) {
        let at = now_ms();
        let event = json!({"type": "revoke", "puid": puid, "at": at});
        self.send(app_id, format!("a:{puid}"), at, event.to_string().into_bytes());
    }

    /// The daemon restarted after a crash: tell every app that all its users are offline
    /// until their devices reconnect.
    pub fn reset_all(&self, app_ids: impl IntoIterator<Item = String>) {
        for app_id in app_ids {
            let at = now_ms();
            let event = json!({"type": "reset", "at": at});
            self.send(&app_id, "r".to_owned(), at, event.to_string().into_bytes());
        }
    }

    /// A notification's outcome for one recipient.
    pub fn outcome(&self, app_id: &str, id: u64, puid: &str, outcome: &str) {
        let at = now_ms();
        let event =
            json!({"type": "notification", "id": id.to_string(), "puid": puid, "outcome": outcome, "at": at});
        self.send(app_id, format!("n:{id}:{puid}"), at, event.to_string().into_bytes());
    }

    fn send(&self, app_id: &str, key: String, at_ms: u64, json: Vec<u8>) {
        if !self.apps.exists(app_id) {
            return;
        }
        self.fanout.publish(app_id, vec![OutboxEvent { key, at_ms, json }]);
    }
}

impl PresenceSink for Outbound {
    fn publish(&self, event: &PresenceEvent) {
        let (key, json) = presence_event(event);
        self.send(&event.app_id, key, event.at_ms, json);
    }
}

/// A `presence` event's compaction key and JSON: the fan-out's per-event encoding, public
/// so that the benches measure exactly what the daemon sends.
///
/// Serialized from a struct rather than through a `serde_json::Value` (the most frequent
/// event skips building and dropping a map per change); the fields are in the order the
/// other events' `json!` maps print theirs, alphabetical.
pub fn presence_event(event: &PresenceEvent) -> (String, Vec<u8>) {
    #[derive(serde::Serialize)]
    struct Presence<'a> {
        at: u64,
        message: &'a str,
        puid: &'a str,
        seq: u64,
        status: &'a str,
        #[serde(rename = "type")]
        kind: &'static str,
    }
    let json = Presence {
        at: event.at_ms,
        message: &event.message,
        puid: event.puid.as_str(),
        seq: event.seq,
        status: event.status.as_str(),
        kind: "presence",
    };
    // A struct of strings and integers always serializes.
    (format!("p:{}", event.puid), serde_json::to_vec(&json).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use presence_protocol::{AppId, Puid, Status};

    use super::*;

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
        let (key, json) = presence_event(&event);
        assert_eq!(key, "p:pUiD_1");
        let map = json!({
            "type": "presence",
            "puid": "pUiD_1",
            "status": "unavailable",
            "message": "in a \"meeting\" ✓",
            "seq": 1_764_400_000_000_001u64,
            "at": 1_764_400_000_000u64,
        });
        assert_eq!(String::from_utf8(json).expect("utf-8"), map.to_string());
    }
}
