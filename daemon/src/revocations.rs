//! Revocation tombstones: the (app, PUID) pairs a user revoked, kept until a device grants
//! the app again.
//!
//! Visibility lives on the devices, so without these a device that was offline during a
//! revoke would re-announce the app when it came back and the app would see the user
//! again. The table consults [`Revocations`] under the user's entry, so a revoke and a
//! reconnect cannot interleave into a visible user; the durable copy is written by one
//! writer task on the blocking pool, so a revoke never waits for storage (nor does it
//! under a table lock: the lock only queues the write).

use std::future::Future;
use std::sync::Arc;

use dashmap::DashSet;
use tokio::sync::mpsc;
use tracing::warn;

use crate::clock::Clock;
use crate::store::{RevocationStore, StoreError, Tombstone, blocking};

/// A change for the writer task, in the order the table made them.
#[derive(Debug)]
enum Write {
    Put(Tombstone),
    Delete {
        app_id: String,
        puid: String,
    },
    /// Write what came before, then end (shutdown): the writer lets go of the store.
    Stop,
}

/// The tombstones in memory, and the queue to their durable copy.
#[derive(Debug)]
pub(crate) struct Revocations {
    /// (app id, PUID).
    tombstones: DashSet<(String, String)>,
    /// `None`: nothing durable (tables built by tests and tools).
    writes: Option<mpsc::UnboundedSender<Write>>,
    clock: Clock,
}

impl Revocations {
    /// Tombstones kept for this process only.
    pub(crate) fn in_memory(clock: Clock) -> Revocations {
        Revocations { tombstones: DashSet::new(), writes: None, clock }
    }

    /// Loads the stored tombstones (start-up: it blocks on the read) and returns the
    /// writer task the caller spawns; it ends when the `Revocations` is dropped.
    pub(crate) fn load(
        store: Arc<dyn RevocationStore>,
        clock: Clock,
    ) -> Result<(Revocations, impl Future<Output = ()> + Send + 'static), StoreError> {
        let tombstones = DashSet::new();
        for tombstone in store.list_tombstones()? {
            tombstones.insert((tombstone.app_id, tombstone.puid));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        Ok((Revocations { tombstones, writes: Some(tx), clock }, write_loop(store, rx)))
    }

    /// Whether the user behind `puid` revoked `app_id` and has not granted it since.
    pub(crate) fn is_revoked(&self, app_id: &str, puid: &str) -> bool {
        self.tombstones.contains(&(app_id.to_owned(), puid.to_owned()))
    }

    /// Records a revoke: in memory at once, durably soon after.
    pub(crate) fn revoke(&self, app_id: &str, puid: &str) {
        self.tombstones.insert((app_id.to_owned(), puid.to_owned()));
        let revoked_ms = self.clock.unix_ms();
        self.queue(Write::Put(Tombstone { app_id: app_id.to_owned(), puid: puid.to_owned(), revoked_ms }));
    }

    /// Lifts a revoke (a new `Authorize`), if there was one.
    pub(crate) fn grant(&self, app_id: &str, puid: &str) {
        if self.tombstones.remove(&(app_id.to_owned(), puid.to_owned())).is_some() {
            self.queue(Write::Delete { app_id: app_id.to_owned(), puid: puid.to_owned() });
        }
    }

    /// Forgets a removed app's tombstones in memory (the store removes its own with the
    /// app): its id is never handed out again, so nothing would read them.
    pub(crate) fn forget_app(&self, app_id: &str) {
        self.tombstones.retain(|(app, _)| app != app_id);
    }

    /// Tells the writer task to write every change made so far and end; the caller awaits
    /// the task (shutdown: the run's revokes are durable before it ends). Later changes
    /// stay in memory only.
    pub(crate) fn stop(&self) {
        self.queue(Write::Stop);
    }

    fn queue(&self, write: Write) {
        let Some(writes) = &self.writes else { return };
        if writes.send(write).is_err() {
            warn!("the revocation writer has stopped; a tombstone change is kept in memory only");
        }
    }
}

/// Writes the changes in order, as many per blocking call as have accumulated.
async fn write_loop(store: Arc<dyn RevocationStore>, mut rx: mpsc::UnboundedReceiver<Write>) {
    while let Some(first) = rx.recv().await {
        let mut changes = Vec::new();
        let mut stop = false;
        let mut next = Some(first);
        while let Some(write) = next {
            match write {
                Write::Stop => stop = true,
                change => changes.push(change),
            }
            next = if stop { None } else { rx.try_recv().ok() };
        }
        let writer = store.clone();
        let written = blocking(move || {
            for change in &changes {
                match change {
                    Write::Put(tombstone) => writer.put_tombstone(tombstone)?,
                    Write::Delete { app_id, puid } => {
                        writer.delete_tombstone(app_id, puid)?;
                    }
                    Write::Stop => {}
                }
            }
            Ok(())
        })
        .await;
        if let Err(error) = written {
            // Still in force in memory for this run; lost at a restart.
            warn!(%error, "cannot store a revocation tombstone change");
        }
        if stop {
            return;
        }
    }
}
