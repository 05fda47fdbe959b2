//! # presence-client
//!
//! The device side of Presence: keeps one battery-cheap QUIC session to the daemon and
//! survives network changes, sleeps and server drains.
//!
//! ## Layout
//!
//! - [`options`]: what a device connects with ([`ClientOptions`]), the idle policy and the
//!   reconnect backoff.
//! - [`transport`]: the quinn endpoint: TLS roots, ALPN, 0-RTT resumption, rebinding.
//! - `driver` (private): one task per [`Client`] that owns the connection, drives the sans-IO
//!   [`presence_protocol::ClientSession`], reconnects, and applies the idle policy.
//! - [`Client`]: the handle an application holds: setters, notification answers, events.
//!
//! ## Battery
//!
//! In steady state the only traffic is one ping datagram per heartbeat interval (2 bytes of
//! payload) and the server's QUIC ACK. Status changes are one more datagram, retried until
//! acknowledged. Reconnects back off exponentially with jitter, so a fleet of devices that
//! lost the server together does not come back together.
//!
//! ## Several servers
//!
//! [`ClientOptions::servers`] may name several daemons (a cluster's nodes). The session
//! goes to one at a time; when it goes down, or an attempt fails, the next attempt goes to
//! the next server at once, and the backoff starts only after every server failed since
//! the last session was up. A server that goes silent (a dead machine sends no reset) is
//! noticed by its missing acknowledgements: nothing acknowledged for about three probe
//! timeouts after a ping ([`ClientOptions::unanswered`], at least 1 s), not QUIC's idle
//! timeout. One endpoint, and its TLS session cache, serves every server: a ticket is
//! tried on whichever server the name leads to, and one that cannot read it answers with
//! a full handshake.
//!
//! ## 0-RTT
//!
//! The client keeps its endpoint (and so its TLS session tickets) across reconnects. A
//! resumed connection sends its `Hello` in 0-RTT, which is replay-safe because a `Hello`
//! only states the device's whole current state; nothing else is sent before `Welcome`.

#![forbid(unsafe_code)]

mod driver;
pub mod options;
pub mod transport;

use std::net::SocketAddr;
use std::time::Duration;

pub use presence_protocol::{AdaptCause, AdaptiveHeartbeat};
use presence_protocol::{CancelReason, ErrorCode, Response, Status};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use options::{Backoff, ClientOptions, IdlePolicy};

/// Events a [`Client`] reports, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A session is up.
    Up {
        /// The server it is with (one of [`ClientOptions::servers`]).
        server: SocketAddr,
        /// The server's session id.
        session_id: u64,
        /// Whether the `Hello` rode in 0-RTT on a resumed connection.
        zero_rtt: bool,
        /// The heartbeat interval the server holds the device to.
        heartbeat: Duration,
    },
    /// The adaptive heartbeat ([`ClientOptions::adaptive_heartbeat`]) learned something
    /// about the path's NAT and now heartbeats every `interval`.
    HeartbeatAdapted {
        /// The heartbeat interval now in force.
        interval: Duration,
        /// The longest silence the path's NAT binding is proven to survive.
        proven: Duration,
        /// What it learned.
        cause: AdaptCause,
    },
    /// The session went down; the client reconnects after `retry_in` unless it is `None`.
    Down {
        /// Why.
        reason: String,
        /// The protocol code, when the server or the session gave one.
        code: Option<ErrorCode>,
        /// Delay before the next attempt; `None` when the client has stopped for good.
        retry_in: Option<Duration>,
    },
    /// A live notification to show; answer with [`Client::accept`] or [`Client::dismiss`].
    Notification {
        /// Its id.
        id: u64,
        /// The app that sent it.
        app_id: String,
        /// Title.
        title: String,
        /// Body.
        body: String,
        /// Opaque app data.
        data: String,
        /// Time to live when received.
        expires_in: Duration,
    },
    /// Stop showing a notification.
    Cancelled {
        /// Its id.
        id: u64,
        /// Why.
        reason: CancelReason,
    },
    /// A notification expired unanswered.
    Expired {
        /// Its id.
        id: u64,
    },
    /// An app was authorized; this is the PUID it knows the user by.
    Authorized {
        /// The app.
        app_id: String,
        /// The user's PUID for it.
        puid: String,
    },
    /// An app's authorization was withdrawn.
    Revoked {
        /// The app.
        app_id: String,
    },
    /// An authorize or revoke was refused.
    Denied {
        /// The app.
        app_id: String,
        /// Why.
        code: ErrorCode,
        /// Detail.
        message: String,
    },
    /// The server applied a status change.
    StatusAcked {
        /// The status sequence number acknowledged.
        seq: u8,
    },
    /// The server is draining; the client reconnects after the delay.
    GoAway {
        /// Why.
        reason: String,
        /// Delay before reconnecting.
        retry_after: Duration,
    },
    /// The status changed by itself (idle policy).
    StatusChanged {
        /// The new status.
        status: Status,
        /// Whether the idle policy set it.
        idle: bool,
    },
}

/// What the application asks of the driver.
#[derive(Debug)]
pub(crate) enum Command {
    Status(Status, Option<String>),
    Visibility(Vec<String>),
    Allow(String),
    Authorize(String, String),
    Revoke(String),
    Respond(u64, Response),
    Reauth(String),
    Activity,
    Rebind(SocketAddr, oneshot::Sender<std::io::Result<()>>),
    Close(oneshot::Sender<()>),
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The options were unusable (bad certificate, bad token, a value over a limit).
    #[error("invalid client options: {0}")]
    Options(String),
    /// The first connection failed for a reason retrying cannot fix.
    #[error("session refused: {reason} ({code:?})")]
    Refused {
        /// The protocol code, if any.
        code: Option<ErrorCode>,
        /// Detail.
        reason: String,
    },
    /// The client has stopped.
    #[error("client stopped")]
    Stopped,
    /// A socket operation failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// A device's connection to the daemon: reconnects by itself until closed.
#[derive(Debug)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<Event>,
    /// The `Up` that `connect` waited for, still to be read.
    first: Option<Event>,
    task: JoinHandle<()>,
}

/// Events buffered for an application that reads slowly.
const EVENT_QUEUE: usize = 1024;

impl Client {
    /// Starts the client and waits for its first session. Fails at once on errors that
    /// retrying cannot fix (a refused token, an unusable certificate); network errors are
    /// retried with backoff, so this waits until the server is reachable.
    pub async fn connect(options: ClientOptions) -> Result<Client, ClientError> {
        let mut client = Client::start(options)?;
        loop {
            match client.events.recv().await {
                Some(up @ Event::Up { .. }) => {
                    client.first = Some(up);
                    return Ok(client);
                }
                Some(Event::Down { reason, code, retry_in: None }) => {
                    return Err(ClientError::Refused { code, reason });
                }
                Some(_) => {}
                None => return Err(ClientError::Stopped),
            }
        }
    }

    /// Starts the client without waiting: its first event tells how connecting went.
    pub fn start(options: ClientOptions) -> Result<Client, ClientError> {
        let (commands, command_rx) = mpsc::channel(64);
        let (event_tx, events) = mpsc::channel(EVENT_QUEUE);
        let driver = driver::Driver::new(options, command_rx, event_tx)?;
        let task = tokio::spawn(driver.run());
        Ok(Client { commands, events, first: None, task })
    }

    /// The next event; `None` once the client has stopped and every event was read.
    pub async fn next_event(&mut self) -> Option<Event> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        self.events.recv().await
    }

    /// Sets the status and, optionally, the message.
    pub async fn set_status(&self, status: Status, message: Option<String>) -> Result<(), ClientError> {
        self.send(Command::Status(status, message)).await
    }

    /// Replaces the visibility list.
    pub async fn set_visibility(&self, apps: Vec<String>) -> Result<(), ClientError> {
        self.send(Command::Visibility(apps)).await
    }

    /// Adds one app to the visibility list.
    pub async fn allow(&self, app_id: String) -> Result<(), ClientError> {
        self.send(Command::Allow(app_id)).await
    }

    /// Authorizes an app; the answer arrives as [`Event::Authorized`] or [`Event::Denied`].
    pub async fn authorize(&self, app_id: String, state: String) -> Result<(), ClientError> {
        self.send(Command::Authorize(app_id, state)).await
    }

    /// Revokes an app.
    pub async fn revoke(&self, app_id: String) -> Result<(), ClientError> {
        self.send(Command::Revoke(app_id)).await
    }

    /// Accepts a notification.
    pub async fn accept(&self, id: u64) -> Result<(), ClientError> {
        self.send(Command::Respond(id, Response::Accepted)).await
    }

    /// Dismisses a notification.
    pub async fn dismiss(&self, id: u64) -> Result<(), ClientError> {
        self.send(Command::Respond(id, Response::Dismissed)).await
    }

    /// Replaces the device token (before the old one expires).
    pub async fn reauth(&self, token: String) -> Result<(), ClientError> {
        self.send(Command::Reauth(token)).await
    }

    /// The user did something: resets the idle policy's timers.
    pub async fn activity(&self) -> Result<(), ClientError> {
        self.send(Command::Activity).await
    }

    /// Moves the client to a new local socket, as a network change does; the session
    /// migrates and stays up.
    pub async fn rebind(&self, local: SocketAddr) -> Result<(), ClientError> {
        let (done, result) = oneshot::channel();
        self.send(Command::Rebind(local, done)).await?;
        Ok(result.await.map_err(|_| ClientError::Stopped)??)
    }

    /// Ends the session cleanly (the server marks the device offline at once) and stops.
    pub async fn close(self) {
        let (done, finished) = oneshot::channel();
        if self.commands.send(Command::Close(done)).await.is_ok() {
            let _ = finished.await;
        }
        let _ = self.task.await;
    }

    async fn send(&self, command: Command) -> Result<(), ClientError> {
        self.commands.send(command).await.map_err(|_| ClientError::Stopped)
    }
}
