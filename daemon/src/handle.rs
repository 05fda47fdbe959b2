//! Handles to running sessions: how the rest of the daemon reaches a device.

use std::time::Duration;

use presence_protocol::{AppId, CancelReason, ErrorCode, Notify};
use tokio::sync::mpsc;

/// Commands per session that may queue before new ones are dropped; a session that cannot
/// keep up with this many is stuck, and waiting on it would let it stall its callers.
pub const COMMAND_QUEUE: usize = 32;

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
    commands: mpsc::Sender<SessionCommand>,
}

impl SessionHandle {
    /// A handle and the receiving end the session task reads.
    pub fn new(id: u64) -> (SessionHandle, mpsc::Receiver<SessionCommand>) {
        let (commands, receiver) = mpsc::channel(COMMAND_QUEUE);
        (SessionHandle { id, commands }, receiver)
    }

    /// Queues a command; false if the session is gone or its queue is full.
    pub fn send(&self, command: SessionCommand) -> bool {
        self.commands.try_send(command).is_ok()
    }
}
