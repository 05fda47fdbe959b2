//! Storage behind one small trait, so that the rest of the daemon never knows whether it
//! runs embedded (a redb file in the data directory, [`embedded`]) or clustered (NATS
//! JetStream, a later implementation of the same trait).
//!
//! Two things are stored:
//!
//! - **Apps**: the registered AppServices ([`AppRecord`]).
//! - **Notifications**: the live notifications still pending or readable, so a restart
//!   neither loses an outcome nor forgets a notification an app may still ask about.
//! - **The outbox**: per app, the webhook events not yet delivered. It is *state-compacted*:
//!   every entry has a key, and enqueueing an entry whose key is already waiting replaces it
//!   (and moves it to the back). Presence events are keyed by PUID, so the outbox grows with
//!   the number of distinct PUIDs that changed, never with the number of flaps; notification
//!   outcomes have unique keys, so every one is delivered.
//! - **TLS sessions**: the server side of TLS 1.3 resumption tickets ([`StoredSession`]).
//!   rustls accepts 0-RTT only with stateful resumption, so devices reconnect in 0-RTT
//!   after a restart (a crash included) only if these outlive the process.

pub mod embedded;

use serde::{Deserialize, Serialize};

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
}

/// One undelivered webhook event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The compaction key: `p:<puid>` for presence, `a:<puid>` for grant/revoke,
    /// `n:<notification id>:<puid>` for notification outcomes.
    pub key: String,
    /// Position in the app's outbox, increasing; changes when the entry is replaced.
    pub serial: u64,
    /// The event, serialized JSON (one element of the webhook body's `events` array).
    pub event: Vec<u8>,
}

/// One TLS session (the server's half of a resumption ticket), as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// The ticket the client presents (random, 32 bytes from rustls).
    pub key: Vec<u8>,
    /// When it was issued, Unix seconds (a wall-clock time, since it outlives the process).
    pub created_secs: u64,
    /// rustls's encoded session state: the resumption secret. As sensitive as a key.
    pub value: Vec<u8>,
}

/// A change to the stored TLS sessions, written in batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// A session was issued.
    Put(StoredSession),
    /// A session was used (tickets are single-use), evicted or expired.
    Remove(Vec<u8>),
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be opened, read or written.
    #[error("storage: {0}")]
    Backend(String),
    /// A stored value did not decode (a newer or corrupted database).
    #[error("corrupt record in {table}: {detail}")]
    Corrupt {
        /// The table holding it.
        table: &'static str,
        /// What failed.
        detail: String,
    },
}

/// The storage the daemon needs. Implementations are internally synchronized and cheap to
/// call from many tasks; every method is one transaction.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
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
    /// Removes an app and its whole outbox; false if there was none.
    fn delete_app(&self, id: &str) -> Result<bool, StoreError>;
    /// Appends events to an app's outbox in one transaction. An entry whose key is already
    /// waiting replaces it (compaction) and takes a new serial at the back. Returns false,
    /// and stores nothing, when no app has that id: checked inside the transaction, so an
    /// app removed concurrently is never left with an orphaned outbox.
    fn enqueue(&self, app_id: &str, events: &[(String, Vec<u8>)]) -> Result<bool, StoreError>;
    /// The oldest entries of an app's outbox, at most `max_events` of them and at most
    /// `max_bytes` of event data in all (but always at least one entry if any is waiting).
    fn peek(&self, app_id: &str, max_events: usize, max_bytes: usize)
    -> Result<Vec<OutboxEntry>, StoreError>;
    /// Removes delivered entries, each only if its serial still matches (an entry replaced
    /// while its batch was in flight stays, with its newer content). Returns how many went.
    /// An implementation may make acknowledgements durable lazily: after a crash, entries
    /// acknowledged just before may be back, and are delivered again (at-least-once).
    fn ack(&self, app_id: &str, delivered: &[(String, u64)]) -> Result<usize, StoreError>;
    /// Entries waiting in an app's outbox.
    fn depth(&self, app_id: &str) -> Result<u64, StoreError>;
    /// Inserts or replaces a live notification's record (opaque JSON), so that its outcomes
    /// and `GET /v1/notifications/{id}` survive a restart.
    fn put_notification(&self, id: u64, record: &[u8]) -> Result<(), StoreError>;
    /// Every stored notification record.
    fn notifications(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
    /// Forgets a notification once its retention has passed.
    fn delete_notification(&self, id: u64) -> Result<(), StoreError>;
    /// Records that a daemon run has started. Returns true when the previous run never
    /// called [`end_run`](Self::end_run): it crashed, and what it told apps about who is
    /// online can no longer be trusted.
    fn begin_run(&self) -> Result<bool, StoreError>;
    /// Records a clean end of the run (after the drain told apps every user went offline).
    fn end_run(&self) -> Result<(), StoreError>;
    /// The highest presence `seq` recorded by [`set_seq_floor`](Self::set_seq_floor), 0 if
    /// none: a restarted daemon never hands out a lower one, whatever its clock says.
    fn seq_floor(&self) -> Result<u64, StoreError>;
    /// Records the highest presence `seq` handed out so far.
    fn set_seq_floor(&self, seq: u64) -> Result<(), StoreError>;
    /// Applies TLS session changes, in order, in one durable transaction (the session cache
    /// batches them off the handshake path).
    fn save_sessions(&self, changes: &[SessionChange]) -> Result<(), StoreError>;
    /// Every stored TLS session issued at or after `since_secs`, oldest first; older ones
    /// are deleted on the way.
    fn load_sessions(&self, since_secs: u64) -> Result<Vec<StoredSession>, StoreError>;
}
