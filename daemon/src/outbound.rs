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
        let event = json!({"type": "grant", "puid": puid, "state": state, "at": now_ms()});
        self.send(app_id, format!("a:{puid}"), event.to_string().into_bytes());
    }

    /// A user withdrew an app's authorization.
    pub fn revoke(&self, app_id: &str, puid: &str) {
        let event = json!({"type": "revoke", "puid": puid, "at": now_ms()});
        self.send(app_id, format!("a:{puid}"), event.to_string().into_bytes());
    }

    /// The daemon restarted after a crash: tell every app that all its users are offline
    /// until their devices reconnect.
    pub fn reset_all(&self, app_ids: impl IntoIterator<Item = String>) {
        for app_id in app_ids {
            let event = json!({"type": "reset", "at": now_ms()});
            self.send(&app_id, "r".to_owned(), event.to_string().into_bytes());
        }
    }

    /// A notification's outcome for one recipient.
    pub fn outcome(&self, app_id: &str, id: u64, puid: &str, outcome: &str) {
        let event = json!({"type": "notification", "id": id.to_string(), "puid": puid, "outcome": outcome, "at": now_ms()});
        self.send(app_id, format!("n:{id}:{puid}"), event.to_string().into_bytes());
    }

    fn send(&self, app_id: &str, key: String, event: Vec<u8>) {
        if !self.apps.exists(app_id) {
            return;
        }
        self.fanout.publish(app_id, vec![(key, event)]);
    }
}

impl PresenceSink for Outbound {
    fn publish(&self, event: &PresenceEvent) {
        let (key, json) = presence_event(event);
        self.send(&event.app_id, key, json);
    }
}

/// A `presence` event's compaction key and JSON: the fan-out's per-event encoding, public
/// so that the benches measure exactly what the daemon sends.
pub fn presence_event(event: &PresenceEvent) -> (String, Vec<u8>) {
    let json = json!({
        "type": "presence",
        "puid": event.puid.as_str(),
        "status": event.status.as_str(),
        "message": event.message,
        "seq": event.seq,
        "at": event.at_ms,
    });
    (format!("p:{}", event.puid), json.to_string().into_bytes())
}
