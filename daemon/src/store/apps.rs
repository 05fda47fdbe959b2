//! The registered AppServices ([`AppRecord`]) behind [`AppStore`].
//!
//! The store is the durable copy; [`crate::apps::Apps`] caches it, writes through it and is
//! the only caller in the daemon, so the cache always matches what is stored.

use serde::{Deserialize, Serialize};

use super::StoreError;

/// A registered AppService.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    /// Stable id, `app_` + random base64url.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Where webhooks go (https, unless the daemon runs with `--dev`).
    pub webhook_url: String,
    /// SHA-256 of the API key, lowercase hex; the key itself is shown once and never stored.
    pub api_key_sha256: String,
    /// The Standard Webhooks signing secret, `whsec_` + base64.
    pub webhook_secret: String,
    /// Creation time, Unix milliseconds.
    pub created_ms: u64,
    /// Set when the endpoint answered 410 Gone: no more deliveries until re-enabled.
    pub disabled: bool,
    /// The secret a rotation with an overlap replaced, still signing beside the new one
    /// until it expires; absent in records written before overlaps existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret: Option<PreviousSecret>,
}

/// A replaced webhook secret during a rotation's overlap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousSecret {
    /// The old `whsec_` secret.
    pub secret: String,
    /// When it stops signing, Unix milliseconds.
    pub expires_ms: u64,
}

impl AppRecord {
    /// The previous secret if it is still within its overlap at `now_ms`: an expired one
    /// is never used, whether or not a later write has removed it yet.
    pub fn live_previous_secret(&self, now_ms: u64) -> Option<&PreviousSecret> {
        self.previous_secret.as_ref().filter(|previous| now_ms < previous.expires_ms)
    }
}

/// The registered apps. Every method is one transaction and may block on disk I/O.
pub trait AppStore: Send + Sync + std::fmt::Debug + 'static {
    /// Inserts or replaces an app.
    fn put_app(&self, app: &AppRecord) -> Result<(), StoreError>;
    /// One app by id.
    fn get_app(&self, id: &str) -> Result<Option<AppRecord>, StoreError>;
    /// Changes one app in a single transaction (read, change, write), so that concurrent
    /// changes (an admin rotating the secret while a 410 disables the endpoint) cannot undo
    /// each other. Returns the changed record, or `None` if there is no such app.
    fn update_app(
        &self,
        id: &str,
        change: &mut dyn FnMut(&mut AppRecord),
    ) -> Result<Option<AppRecord>, StoreError>;
    /// Every app, ordered by id.
    fn list_apps(&self) -> Result<Vec<AppRecord>, StoreError>;
    /// Removes an app and, in the same transaction, its whole outbox (see
    /// [`Outbox`](super::Outbox)); false if there was no such app.
    fn delete_app(&self, id: &str) -> Result<bool, StoreError>;
}
