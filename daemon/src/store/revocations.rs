//! Revocation tombstones behind [`RevocationStore`]: which (app, PUID) pairs a user revoked.
//!
//! Visibility lives on the devices, so a device that was offline during a revoke would
//! otherwise re-announce the app when it comes back. The daemon keeps one tombstone per
//! revoked (app, PUID) until a device grants the app again, and keeps it here so that a
//! restart does not forget it. Keyed by PUID, not user: the store holds no user id.

use super::StoreError;

/// One revoked (app, PUID) pair.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Tombstone {
    /// The app the user revoked.
    pub app_id: String,
    /// The user's PUID for that app.
    pub puid: String,
    /// When, Unix milliseconds (for operators reading the store; nothing expires by it).
    pub revoked_ms: u64,
}

/// The revocation tombstones. Every method is one transaction and may block on disk I/O.
pub(crate) trait RevocationStore: Send + Sync + std::fmt::Debug + 'static {
    /// Records a tombstone, replacing one for the same pair.
    fn put_tombstone(&self, tombstone: &Tombstone) -> Result<(), StoreError>;
    /// Removes the pair's tombstone (a new grant); false if there was none.
    fn delete_tombstone(&self, app_id: &str, puid: &str) -> Result<bool, StoreError>;
    /// Every tombstone, ordered by (app, PUID).
    fn list_tombstones(&self) -> Result<Vec<Tombstone>, StoreError>;
}
