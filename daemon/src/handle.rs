//! Handles to running sessions: how the rest of the daemon reaches a device.
//!
//! Every session has a mailbox of [`SessionCommand`]s. It is not a tokio `mpsc` channel on
//! purpose: a bounded channel allocates its first block of 32 slots when it is made, about
//! 3.6 KiB per session here (heaptrack, BENCHMARKS.md), for a queue that is empty nearly
//! always. The mailbox is a `VecDeque` that allocates only when a command is waiting, and a
//! [`Notify`](tokio::sync::Notify) to wake the session.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use presence_protocol::{AppId, CancelReason, ErrorCode, Notify};

/// Commands per session that may queue before new ones are dropped; a session that cannot
/// keep up with this many is stuck, and waiting on it would let it stall its callers.
pub(crate) const COMMAND_QUEUE: usize = 32;

/// Something the daemon asks a session to do.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SessionCommand {
    /// Close the session with this code (for example `REPLACED`).
    Close {
        /// The close code.
        code: ErrorCode,
        /// Human-readable detail.
        reason: String,
    },
    /// Deliver a live notification.
    Notify(Notify),
    /// Withdraw a notification.
    Cancel {
        /// The notification.
        id: u64,
        /// Why.
        reason: CancelReason,
    },
    /// The user revoked an app on another device: drop it from this device's list too.
    Revoked {
        /// The app.
        app_id: AppId,
    },
    /// Ask the device to reconnect later.
    GoAway {
        /// Human-readable detail.
        reason: String,
        /// When to come back.
        retry_after: Duration,
    },
}

/// A cheap, cloneable way to reach one session.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    /// The session id (unique per daemon run).
    pub id: u64,
    mailbox: Arc<Mailbox>,
}

/// The queue both ends share.
#[derive(Debug, Default)]
struct Mailbox {
    state: Mutex<Queue>,
    wake: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Queue {
    commands: VecDeque<SessionCommand>,
    /// The session has ended: commands sent now would never be read.
    closed: bool,
}

impl Mailbox {
    /// The queue, also after a panic elsewhere left the lock poisoned: a queue of commands
    /// stays consistent whatever a panicking holder was doing.
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl SessionHandle {
    /// A handle and the receiving end the session task reads.
    pub fn new(id: u64) -> (SessionHandle, Commands) {
        let mailbox = Arc::new(Mailbox::default());
        (SessionHandle { id, mailbox: mailbox.clone() }, Commands { mailbox })
    }

    /// Queues a command; false if the session is gone or its queue is full.
    pub fn send(&self, command: SessionCommand) -> bool {
        {
            let mut queue = self.mailbox.lock();
            if queue.closed || queue.commands.len() >= COMMAND_QUEUE {
                return false;
            }
            queue.commands.push_back(command);
        }
        self.mailbox.wake.notify_one();
        true
    }
}

/// The session's end of its mailbox; dropping it makes every later `send` fail.
#[derive(Debug)]
pub struct Commands {
    mailbox: Arc<Mailbox>,
}

impl Commands {
    /// The next command, waiting for one. Cancel-safe: a command is only taken out of the
    /// queue by a call that returns it.
    pub async fn recv(&mut self) -> SessionCommand {
        loop {
            if let Some(command) = self.mailbox.lock().commands.pop_front() {
                return command;
            }
            // `notify_one` leaves a permit when nobody waits, so a command queued between
            // the check above and this wait still wakes it.
            self.mailbox.wake.notified().await;
        }
    }
}

impl Drop for Commands {
    fn drop(&mut self) {
        let mut queue = self.mailbox.lock();
        queue.closed = true;
        queue.commands = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close() -> SessionCommand {
        SessionCommand::Close { code: ErrorCode::REPLACED, reason: "test".into() }
    }

    #[tokio::test]
    async fn commands_arrive_in_order_and_the_queue_is_bounded() {
        let (handle, mut commands) = SessionHandle::new(7);
        for _ in 0..COMMAND_QUEUE {
            assert!(handle.send(close()));
        }
        assert!(!handle.send(close()), "a full queue refuses");
        for _ in 0..COMMAND_QUEUE {
            assert!(matches!(commands.recv().await, SessionCommand::Close { .. }));
        }
        assert!(handle.send(SessionCommand::Cancel { id: 3, reason: CancelReason::Expired }));
        assert!(matches!(commands.recv().await, SessionCommand::Cancel { id: 3, .. }));
    }

    #[tokio::test]
    async fn a_waiting_session_wakes_and_a_gone_one_refuses() {
        let (handle, mut commands) = SessionHandle::new(1);
        let sender = handle.clone();
        let waiter =
            tokio::spawn(async move { matches!(commands.recv().await, SessionCommand::Close { .. }) });
        tokio::task::yield_now().await;
        assert!(sender.send(close()));
        assert!(waiter.await.expect("the waiter ran"));
        assert!(!handle.send(close()), "the receiving end is gone");
    }
}
