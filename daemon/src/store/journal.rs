//! The run journal: what one daemon run leaves for the next ([`RunJournal`]).

use serde::{Deserialize, Serialize};

use super::StoreError;

/// What one app was last told of a user whose devices a clean drain sent away with
/// `GoAway`: kept across the restart so that the next run can let the user come back
/// without the app seeing an `offline`/`online` pair, or tell it `offline` at `deadline_ms`
/// (`crate::table`'s departures).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Departure {
    /// The user (the token's `sub`); the PUID is derived again from it.
    pub(crate) user: String,
    /// The app told.
    pub(crate) app_id: String,
    /// The status the app was last told (`online`, `away`, `unavailable`).
    pub(crate) status: String,
    /// The message that went with it.
    pub(crate) message: String,
    /// The `seq` of that event: the next one for the pair goes above it.
    pub(crate) seq: u64,
    /// Its `at`, Unix milliseconds (what a poll answers as `since`).
    pub(crate) since_ms: u64,
    /// Unix milliseconds after which the app is told `offline` unless the user is back.
    pub(crate) deadline_ms: u64,
}

/// Whether the previous run ended cleanly, the presence `seq` floor, and the departures
/// of its drain. Every method is one transaction and may block on disk I/O.
pub(crate) trait RunJournal: Send + Sync + std::fmt::Debug + 'static {
    /// Records that a daemon run has started. Returns true when the previous run never
    /// called [`end_run`](Self::end_run): it crashed, and what it told apps about who is
    /// online can no longer be trusted. A store that never saw a run returns false.
    fn begin_run(&self) -> Result<bool, StoreError>;
    /// Records a clean end of the run (after the drain told apps every user went offline).
    fn end_run(&self) -> Result<(), StoreError>;
    /// The highest presence `seq` ever given to [`set_seq_floor`](Self::set_seq_floor), 0
    /// if none: a restarted daemon never hands out a lower one, whatever its clock says.
    fn seq_floor(&self) -> Result<u64, StoreError>;
    /// Records a presence `seq` handed out. The floor keeps the **maximum** of every value
    /// recorded: a lower one (a late writer, a clock that went back) leaves it unchanged,
    /// so the floor never goes down.
    fn set_seq_floor(&self, seq: u64) -> Result<(), StoreError>;
    /// Replaces the recorded departures with `departures` (a clean drain, just before
    /// [`end_run`](Self::end_run)).
    fn set_departures(&self, departures: &[Departure]) -> Result<(), StoreError>;
    /// The recorded departures, removed in the same transaction: a run takes them over at
    /// start, and records the ones it still holds when it drains in turn.
    fn take_departures(&self) -> Result<Vec<Departure>, StoreError>;
}
