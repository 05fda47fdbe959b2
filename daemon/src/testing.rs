//! What tests, benches, fuzz targets and tools reach inside the daemon, and nothing else.
//!
//! The daemon's modules are `pub(crate)`: its public API is [`Daemon`](crate::Daemon),
//! [`settings`](crate::settings), [`credentials`](crate::credentials),
//! [`clock`](crate::clock) and the admin CLI. What the workspace's other crates need of the
//! internals (a table to bench, a token signer to fuzz, an outbox to drive) is re-exported
//! here, one submodule per daemon module, each item named: a new internal item stays
//! crate-private until a test names it here. Production code never uses this module.
//!
//! It also holds what tests watch a daemon with: an [`EventRecorder`], so that they observe
//! the daemon through the same seam its components use (a [`PresenceSink`]), not through
//! channels kept alive only for them.

/// The HTTPS API's routes, error codes and description.
pub mod api {
    pub use crate::api::error::ApiErrorCode;
    pub use crate::api::{OPENAPI, Peer, ROUTES};
}

/// The web console's paths and headers.
pub mod console {
    pub use crate::console::{CONTENT_SECURITY_POLICY, ROUTES};
}

/// The registered AppServices.
pub mod apps {
    pub use crate::apps::Apps;
}

/// Device tokens.
pub mod auth {
    pub use crate::auth::{
        AUDIENCE, Claim, DeviceClaims, MAX_USER_LEN, Malformation, TokenError, TokenSigner, TokenVerifier,
    };
}

/// How the daemon reaches a session.
pub mod handle {
    pub use crate::handle::{SessionCommand, SessionHandle};
}

/// The daemon's metrics.
pub mod metrics {
    pub use crate::metrics::Metrics;
}

/// Webhook events and their encoding for the outbox.
pub mod outbound {
    pub use crate::outbound::{Outbound, encode, presence_event};
    pub use presence_webhook::{WebhookBatch, WebhookEvent};
}

/// PUID derivation.
pub mod puid {
    pub use crate::puid::PuidKey;
}

/// The QUIC driver's transport settings.
pub mod quic {
    pub use crate::quic::{datagram_buffer, transport_config};
}

/// Storage by concern, and both implementations.
pub mod store {
    pub use crate::store::apps::{AppRecord, AppStore};
    pub use crate::store::outbox::{Outbox, OutboxEntry, OutboxEvent};

    /// The redb store.
    pub mod embedded {
        pub use crate::store::embedded::EmbeddedStore;
    }

    /// The in-memory store.
    pub mod memory {
        pub use crate::store::memory::MemoryStore;
    }

    /// The outbox log's records and their reading, for the fuzz target.
    pub mod log {
        pub use crate::store::log::files::Replayed;
        pub use crate::store::log::record::{Record, RecordError};
    }
}

/// The presence table.
pub mod table {
    pub use crate::table::{DeviceState, PresenceEvent, PresenceSink, PresenceTable};
}

/// Webhook signing, the SSRF guard and the fan-out.
pub mod webhook {
    pub use crate::webhook::fanout::{Fanout, FanoutConfig};
    pub use crate::webhook::secret::WebhookSecret;

    /// The delivery engine's batch format.
    pub mod fanout {
        pub use crate::webhook::fanout::{DEFAULT_REQUEST_TIMEOUT, batch_body, message_id};
    }

    /// The SSRF guard.
    pub mod guard {
        pub use crate::webhook::guard::{UrlPolicy, is_public, parse_cidr};
    }

    /// Standard Webhooks signing.
    pub mod secret {
        pub use crate::webhook::secret::{
            DEFAULT_TOLERANCE, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, Signer, VerifyError,
            WebhookSecret,
        };
    }
}

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use crate::table::{PresenceEvent, PresenceSink};

/// A [`PresenceSink`] that keeps every event it is given, in order, for
/// [`EventCursor`]s to read. Unbounded: for tests and short tool runs only.
#[derive(Debug, Default)]
pub struct EventRecorder {
    events: Mutex<Vec<PresenceEvent>>,
    added: Notify,
}

impl EventRecorder {
    /// A cursor that reads the events recorded from now on.
    pub fn cursor(self: &Arc<Self>) -> EventCursor {
        EventCursor { recorder: self.clone(), next: self.len() }
    }

    /// Every event recorded so far.
    pub fn all(&self) -> Vec<PresenceEvent> {
        self.lock().clone()
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn get(&self, index: usize) -> Option<PresenceEvent> {
        self.lock().get(index).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<PresenceEvent>> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl PresenceSink for EventRecorder {
    fn publish(&self, event: &PresenceEvent) {
        self.lock().push(event.clone());
        self.added.notify_waiters();
    }
}

/// Reads an [`EventRecorder`] from a position on; each cursor sees every event once.
#[derive(Debug)]
pub struct EventCursor {
    recorder: Arc<EventRecorder>,
    next: usize,
}

impl EventCursor {
    /// The next event, waiting for it.
    pub async fn recv(&mut self) -> PresenceEvent {
        loop {
            let added = self.recorder.added.notified();
            tokio::pin!(added);
            // Registered before the check, so an event recorded in between still wakes us.
            added.as_mut().enable();
            if let Some(event) = self.recorder.get(self.next) {
                self.next += 1;
                return event;
            }
            added.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use presence_protocol::{AppId, Puid, Status};

    use super::*;

    fn event(seq: u64) -> PresenceEvent {
        PresenceEvent {
            app_id: AppId::new("app_x").expect("app id"),
            puid: Puid::new("pUiD_1").expect("puid"),
            status: Status::Online,
            message: String::new(),
            seq,
            at_ms: 0,
        }
    }

    #[tokio::test]
    async fn cursors_read_from_their_start_in_order_and_wait_for_more() {
        let recorder = Arc::new(EventRecorder::default());
        recorder.publish(&event(1));
        let mut cursor = recorder.cursor();
        let waiting = tokio::spawn(async move { (cursor.recv().await.seq, cursor.recv().await.seq) });
        tokio::task::yield_now().await;
        recorder.publish(&event(2));
        recorder.publish(&event(3));
        assert_eq!(waiting.await.expect("cursor task"), (2, 3));
        assert_eq!(recorder.all().len(), 3);
    }
}
