//! What tests, benches and tools need to watch a daemon from inside the process.
//!
//! Production code never uses this module; it exists so that tests observe the daemon
//! through the same seams its components use (a [`PresenceSink`]), not through channels
//! kept alive only for them.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use crate::table::{PresenceEvent, PresenceSink};

/// A [`PresenceSink`] that keeps every event it is given, in order, for
/// [`EventCursor`]s to read. Unbounded: for tests and short tool runs only.
#[derive(Debug, Default)]
pub struct EventRecorder {
    events: Mutex<Vec<PresenceEvent>>,
    added: Notify,
}

impl EventRecorder {
    /// A cursor that reads the events recorded from now on.
    pub fn cursor(self: &Arc<Self>) -> EventCursor {
        EventCursor { recorder: self.clone(), next: self.len() }
    }

    /// Every event recorded so far.
    pub fn all(&self) -> Vec<PresenceEvent> {
        self.lock().clone()
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn get(&self, index: usize) -> Option<PresenceEvent> {
        self.lock().get(index).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<PresenceEvent>> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl PresenceSink for EventRecorder {
    fn publish(&self, event: &PresenceEvent) {
        self.lock().push(event.clone());
        self.added.notify_waiters();
    }
}

/// Reads an [`EventRecorder`] from a position on; each cursor sees every event once.
#[derive(Debug)]
pub struct EventCursor {
    recorder: Arc<EventRecorder>,
    next: usize,
}

impl EventCursor {
    /// The next event, waiting for it.
    pub async fn recv(&mut self) -> PresenceEvent {
        loop {
            let added = self.recorder.added.notified();
            tokio::pin!(added);
            // Registered before the check, so an event recorded in between still wakes us.
            added.as_mut().enable();
            if let Some(event) = self.recorder.get(self.next) {
                self.next += 1;
                return event;
            }
            added.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use presence_protocol::{AppId, Puid, Status};

    use super::*;

    fn event(seq: u64) -> PresenceEvent {
        PresenceEvent {
            app_id: AppId::new("app_x").expect("app id"),
            puid: Puid::new("pUiD_1").expect("puid"),
            status: Status::Online,
            message: String::new(),
            seq,
            at_ms: 0,
        }
    }

    #[tokio::test]
    async fn cursors_read_from_their_start_in_order_and_wait_for_more() {
        let recorder = Arc::new(EventRecorder::default());
        recorder.publish(&event(1));
        let mut cursor = recorder.cursor();
        let waiting = tokio::spawn(async move { (cursor.recv().await.seq, cursor.recv().await.seq) });
        tokio::task::yield_now().await;
        recorder.publish(&event(2));
        recorder.publish(&event(3));
        assert_eq!(waiting.await.expect("cursor task"), (2, 3));
        assert_eq!(recorder.all().len(), 3);
    }
}
