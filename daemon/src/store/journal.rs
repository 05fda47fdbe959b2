//! The run journal: what one daemon run leaves for the next ([`RunJournal`]).

use super::StoreError;

/// Whether the previous run ended cleanly, and the presence `seq` floor. Every method is
/// one transaction and may block on disk I/O.
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
}
