//! Live notification records behind [`NotificationStore`], so that after a restart the
//! daemon still answers `GET /v1/notifications/{id}` and decides what was left pending.

use super::StoreError;

/// Notification records, opaque bytes (JSON, owned by [`crate::notify`]) by id. Every
/// method is one transaction and may block on disk I/O.
pub(crate) trait NotificationStore: Send + Sync + std::fmt::Debug + 'static {
    /// Inserts or replaces a notification's record.
    fn put_notification(&self, id: u64, record: &[u8]) -> Result<(), StoreError>;
    /// Every stored record, ordered by id.
    fn notifications(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
    /// Forgets a notification (its retention has passed); forgetting an unknown id is fine.
    fn delete_notification(&self, id: u64) -> Result<(), StoreError>;
}
