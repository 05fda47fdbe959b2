//! Matching what the AppService hears to what the devices did.
//!
//! Every status change a simulated device makes is recorded here, keyed by the device's
//! PUID, with the moment it was handed to QUIC. When the webhook sink receives a `presence`
//! event, the tracker finds the change it reports and records the latency
//! (status-change-to-webhook). Matching rules, following the daemon's contract:
//!
//! - An event reports a change when the PUID and status agree and the daemon applied it
//!   (`at`, Unix milliseconds) no earlier than the device sent it. The `at` rule keeps the
//!   `online` event of a session coming up from matching a later change back to `online`.
//! - Presence is state, not a log: the daemon's outbox keeps only the latest state per PUID,
//!   so an event for the newest of several pending changes settles the older ones too. They
//!   count as *coalesced*, not lost.
//! - An event that matches nothing (a session coming up or going down) is *unsolicited*.
//!
//! Notification probes work the same way, keyed by notification id: the time from the
//! `POST /v1/notifications` to the `notification` outcome event is the round trip.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use presence_protocol::Status;

use super::stats::{Counter, Errors, Latencies};

/// Pending changes kept per PUID; a device changing faster than webhooks arrive loses the
/// oldest record (counted as unconfirmed) rather than growing without bound.
pub const MAX_PENDING_PER_PUID: usize = 16;

/// How far a presence event's `at` may lie before the change it reports: the daemon gives
/// each app a point of the change's slot (2^20 µs) instead of its exact time.
const AT_SLACK_MS: u64 = 1_049;

/// One status change waiting for its webhook.
#[derive(Debug, Clone, Copy)]
struct Change {
    status: Status,
    sent: Instant,
    sent_ms: u64,
}

/// A notification probe's state.
#[derive(Debug, Clone, Copy)]
enum Probe {
    /// Sent at this instant, outcome not yet seen.
    Sent(Instant),
    /// The outcome arrived before the POST's answer named the id.
    Early(Instant, Outcome),
}

/// The notification outcomes the tracker distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Accepted,
    Other,
}

/// Shared between the devices (which record changes) and the sink (which settles them).
#[derive(Debug, Default)]
pub struct Tracker {
    changes: Mutex<HashMap<Arc<str>, VecDeque<Change>>>,
    probes: Mutex<HashMap<u64, Probe>>,
    /// Status-change-to-webhook latencies.
    pub change_latency: Latencies,
    /// Notification round trips (POST to `accepted` outcome webhook).
    pub notify_rtt: Latencies,
    /// Changes whose own webhook event arrived.
    pub matched: Counter,
    /// Changes settled by a newer change's event (the outbox coalesced them).
    pub coalesced: Counter,
    /// Changes pushed out of a full per-PUID queue before any event settled them.
    pub overflowed: Counter,
    /// Presence events that settled no change (sessions coming up or going down).
    pub unsolicited: Counter,
    /// `grant` events (one per device that authorized the app).
    pub grants: Counter,
    /// Notification outcome events.
    pub outcomes: Counter,
    /// Notification probes attempted (`POST /v1/notifications`).
    pub probes_sent: Counter,
}

impl Tracker {
    /// A device with `puid` sent a change to `status` now (`sent_ms` is the wall clock).
    pub fn change_sent(&self, puid: &Arc<str>, status: Status, sent: Instant, sent_ms: u64) {
        let Ok(mut changes) = self.changes.lock() else { return };
        let queue = changes.entry(puid.clone()).or_default();
        if queue.len() >= MAX_PENDING_PER_PUID {
            queue.pop_front();
            self.overflowed.inc();
        }
        queue.push_back(Change { status, sent, sent_ms });
    }

    /// Whether a change of this PUID still waits for its event.
    pub fn has_pending(&self, puid: &str) -> bool {
        self.changes.lock().is_ok_and(|changes| changes.get(puid).is_some_and(|q| !q.is_empty()))
    }

    /// Changes still waiting, across every PUID.
    pub fn pending(&self) -> u64 {
        self.changes.lock().map_or(0, |changes| changes.values().map(|q| q.len() as u64).sum())
    }

    /// A `presence` event arrived at `received`.
    pub fn presence_seen(&self, puid: &str, status: Status, at_ms: u64, received: Instant) {
        let Ok(mut changes) = self.changes.lock() else { return };
        let Some(queue) = changes.get_mut(puid) else {
            self.unsolicited.inc();
            return;
        };
        let Some(index) =
            queue.iter().rposition(|change| change.status == status && change.sent_ms <= at_ms + AT_SLACK_MS)
        else {
            self.unsolicited.inc();
            return;
        };
        let change = queue[index];
        queue.drain(..=index);
        if queue.is_empty() {
            changes.remove(puid);
        }
        drop(changes);
        self.matched.inc();
        self.coalesced.add(index as u64);
        self.change_latency.record(received.saturating_duration_since(change.sent));
    }

    /// A notification was created with `id`; its POST started at `started`.
    pub fn probe_sent(&self, id: u64, started: Instant) {
        let Ok(mut probes) = self.probes.lock() else { return };
        match probes.remove(&id) {
            Some(Probe::Early(received, outcome)) => {
                drop(probes);
                self.settle_probe(started, received, outcome);
            }
            _ => {
                probes.insert(id, Probe::Sent(started));
            }
        }
    }

    /// A `notification` outcome event arrived at `received`.
    pub fn outcome_seen(&self, id: u64, outcome: &str, received: Instant, errors: &Errors) {
        self.outcomes.inc();
        let outcome = if outcome == "accepted" {
            Outcome::Accepted
        } else {
            errors.add(format!("notification_{outcome}"));
            Outcome::Other
        };
        let Ok(mut probes) = self.probes.lock() else { return };
        match probes.remove(&id) {
            Some(Probe::Sent(started)) => {
                drop(probes);
                self.settle_probe(started, received, outcome);
            }
            Some(early @ Probe::Early(..)) => {
                probes.insert(id, early);
            }
            None => {
                probes.insert(id, Probe::Early(received, outcome));
            }
        }
    }

    fn settle_probe(&self, started: Instant, received: Instant, outcome: Outcome) {
        if outcome == Outcome::Accepted {
            self.notify_rtt.record(received.saturating_duration_since(started));
        }
    }

    /// Probes sent whose outcome never arrived.
    pub fn probes_outstanding(&self) -> u64 {
        self.probes.lock().map_or(0, |probes| {
            probes.values().filter(|probe| matches!(probe, Probe::Sent(_))).count() as u64
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn newest_matching_change_settles_older_ones() {
        let tracker = Tracker::default();
        let puid: Arc<str> = Arc::from("p1");
        let t0 = Instant::now();
        tracker.change_sent(&puid, Status::Away, t0, 5_000);
        tracker.change_sent(&puid, Status::Online, t0 + Duration::from_millis(10), 5_010);
        // The session's own `online` from before the changes (further back than an `at`
        // may be moved within its slot) matches nothing.
        tracker.presence_seen("p1", Status::Online, 5_010 - AT_SLACK_MS - 1, t0 + Duration::from_millis(20));
        assert_eq!(tracker.unsolicited.get(), 1);
        // One whose `at` lies up to the slack before the change it reports does.
        tracker.presence_seen("p1", Status::Online, 5_010 - AT_SLACK_MS, t0 + Duration::from_millis(300));
        assert_eq!((tracker.matched.get(), tracker.coalesced.get(), tracker.pending()), (1, 1, 0));
        let summary = tracker.change_latency.summary();
        assert_eq!(summary.max_ms, Some(290.0));
    }

    #[test]
    fn outcome_before_the_post_answer_still_counts() {
        let tracker = Tracker::default();
        let errors = Errors::default();
        let t0 = Instant::now();
        tracker.outcome_seen(7, "accepted", t0 + Duration::from_millis(5), &errors);
        tracker.probe_sent(7, t0);
        tracker.probe_sent(8, t0);
        tracker.outcome_seen(8, "missed", t0, &errors);
        assert_eq!(tracker.notify_rtt.count(), 1);
        assert_eq!(tracker.probes_outstanding(), 0);
        assert_eq!(errors.snapshot().get("notification_missed"), Some(&1));
    }
}
