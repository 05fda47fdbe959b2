//! Storage by concern: one small trait per kind of data, so that each can get an
//! implementation of its own (a cluster outbox on NATS JetStream, say) without the rest of
//! the daemon noticing.
//!
//! | trait                 | module            | what it keeps                                   |
//! |-----------------------|-------------------|-------------------------------------------------|
//! | [`AppStore`]          | [`apps`]          | the registered AppServices ([`AppRecord`])       |
//! | [`Outbox`]            | [`outbox`]        | per app, the webhook events not yet delivered    |
//! | [`NotificationStore`] | [`notifications`] | live notifications, so a restart loses no outcome |
//! | [`TicketStore`]       | [`tickets`]       | the server half of TLS resumption tickets        |
//! | [`RunJournal`]        | [`journal`]       | whether the last run ended cleanly; the seq floor; the drain's departures |
//! | [`RevocationStore`]   | [`revocations`]   | revoked (app, PUID) pairs, until granted again   |
//!
//! Two implementations hold all six: [`embedded::EmbeddedStore`] (one redb file in the data
//! directory, the daemon's) and [`memory::MemoryStore`] (nothing durable: tests and the
//! fan-out bench's `--store memory` diagnostic). One object implements every trait because
//! the concerns meet in two places: removing an app removes its outbox, and an outbox
//! refuses events for an app that is not registered, both in one transaction.
//!
//! The synchronous traits block on disk I/O (a write is an fsync): callers on the runtime
//! run them on the blocking pool (`blocking`). The [`Outbox`] is asynchronous, because
//! its implementation owns group commit: it decides how appends share a transaction.
//!
//! The contract every implementation keeps is written once, as test suites generic over
//! the implementation (`contract`), and run against both.

pub(crate) mod apps;
pub(crate) mod embedded;
pub(crate) mod journal;
pub(crate) mod log;
pub(crate) mod memory;
pub(crate) mod notifications;
pub(crate) mod outbox;
mod queue;
pub(crate) mod revocations;
pub(crate) mod tickets;

#[cfg(test)]
pub(crate) mod contract;

pub(crate) use apps::{AppRecord, AppStore, PreviousSecret};
pub(crate) use journal::{Departure, RunJournal};
pub(crate) use notifications::NotificationStore;
pub(crate) use outbox::{Commit, CommitListener, Outbox, OutboxEntry, OutboxEvent, OutboxStats, StoreFuture};
pub(crate) use revocations::{RevocationStore, Tombstone};
pub(crate) use tickets::{SessionChange, StoredSession, TicketStore};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened, read or written (boxed: redb's error is large,
    /// and every storage result carries this type).
    #[error("database: {0}")]
    Redb(#[source] Box<redb::Error>),
    /// A stored record did not decode (a newer or corrupted database).
    #[error("corrupt record in {table}")]
    Corrupt {
        /// The table holding it.
        table: &'static str,
        /// Why it did not decode.
        #[source]
        source: serde_json::Error,
    },
    /// A record could not be encoded for storage.
    #[error("cannot encode a record for {table}")]
    Encode {
        /// The table it was meant for.
        table: &'static str,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The outbox's order index and its entries disagree (a corrupted database).
    #[error("corrupt outbox of {app}: order entry {serial} points at {found:?}")]
    OutboxOrder {
        /// The app whose outbox it is.
        app: String,
        /// The serial in the order index.
        serial: u64,
        /// The serial the entry holds, if there is an entry at all.
        found: Option<u64>,
    },
    /// A blocking storage call panicked or was cancelled.
    #[error("storage task failed")]
    Task(#[from] tokio::task::JoinError),
    /// The outbox's committer went away before answering (it panicked, or the store was
    /// dropped): whether the events were stored is unknown.
    #[error("the outbox committer stopped before answering")]
    CommitterGone,
    /// A file of the outbox log could not be read or written.
    #[error("cannot {what} ({path})")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another outbox (another daemon, or one not yet closed in this process) has the
    /// directory open.
    #[error("the outbox directory {0} is in use by another process or store")]
    Locked(std::path::PathBuf),
    /// The database is closed after an I/O error and could not be opened again yet (its
    /// last transaction is still open, or the disk still refuses); the next call retries.
    #[error("the database is being reopened after an I/O error")]
    Closed,
}

impl StoreError {
    /// Whether the disk failed (rather than the data): after one, a redb handle refuses
    /// every later operation and must be reopened.
    pub(crate) fn is_io(&self) -> bool {
        match self {
            // Every redb error type flattens its storage errors into these two on conversion.
            StoreError::Redb(error) => matches!(**error, redb::Error::Io(_) | redb::Error::PreviousIo),
            StoreError::Io { .. } => true,
            _ => false,
        }
    }
}

/// Every redb error type converts into [`redb::Error`]; these let `?` take them directly.
macro_rules! from_redb {
    ($($error:ty),* $(,)?) => {
        $(impl From<$error> for StoreError {
            fn from(error: $error) -> StoreError {
                StoreError::Redb(Box::new(error.into()))
            }
        })*
    };
}

from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
);

/// Runs a blocking storage call on the blocking pool, so that a runtime thread never waits
/// for an fsync.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work).await?
}
