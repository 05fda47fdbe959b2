//! The server side of TLS 1.3 resumption tickets behind [`TicketStore`]. rustls accepts
//! 0-RTT only with stateful resumption, so devices reconnect in 0-RTT after a restart (a
//! crash included) only if these outlive the process.

use super::StoreError;

/// One TLS session (the server's half of a resumption ticket), as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredSession {
    /// The ticket the client presents (random, 32 bytes from rustls).
    pub key: Vec<u8>,
    /// When it was issued, Unix seconds (a wall-clock time, since it outlives the process).
    pub created_secs: u64,
    /// rustls's encoded session state: the resumption secret. As sensitive as a key.
    pub value: Vec<u8>,
}

/// A change to the stored TLS sessions, written in batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SessionChange {
    /// A session was issued.
    Put(StoredSession),
    /// A session was used (tickets are single-use), evicted or expired.
    Remove(Vec<u8>),
}

/// The stored TLS sessions. Every method is one transaction and may block on disk I/O.
pub(crate) trait TicketStore: Send + Sync + std::fmt::Debug + 'static {
    /// Applies TLS session changes, in order, in one durable transaction (the session cache
    /// batches them off the handshake path).
    fn save_sessions(&self, changes: &[SessionChange]) -> Result<(), StoreError>;
    /// Every stored TLS session issued at or after `since_secs`, oldest first; older ones
    /// are deleted on the way.
    fn load_sessions(&self, since_secs: u64) -> Result<Vec<StoredSession>, StoreError>;
}
