//! [`CompactingQueue`]: the outbox's compaction rule, written once. The memory outbox keeps
//! each app's entries in one; the redb outbox keeps the appends waiting for its next group
//! commit in one, so a stalled disk costs memory per key, not per flap.

use std::collections::{HashMap, VecDeque};

use super::{OutboxEntry, OutboxEvent};

/// A queue with at most one entry per key: pushing a key that is waiting replaces its
/// entry, which moves to the back under its new serial.
///
/// The order is a deque of (serial, key) in push order, appended to and never searched: a
/// replaced or acknowledged entry leaves its element behind, *dead* (its serial is no
/// longer its key's live one), skipped by readers, popped once it reaches the front and
/// swept out when the dead outnumber the live. Pushing is a hash insert and a deque push,
/// not a search tree's insert and remove: this queue is on every status change's path.
#[derive(Debug, Default)]
pub(crate) struct CompactingQueue {
    /// Key → the live version.
    entries: HashMap<String, Live>,
    /// (serial, key), in push order; live where `entries[key].serial` is the serial.
    order: VecDeque<(u64, String)>,
    /// Event bytes waiting.
    bytes: usize,
}

#[derive(Debug)]
struct Live {
    serial: u64,
    version: u64,
    at_ms: u64,
    json: Vec<u8>,
}

impl CompactingQueue {
    /// Pushes `event` under `serial`, which must be higher than every serial pushed
    /// before. Returns true when the queue did not grow: the event replaced a waiting one,
    /// or a waiting one with a higher version made it stale and it was dropped.
    ///
    /// A serial at or below the last one pushed is ignored: it replays an entry the queue
    /// already took (a migration imported twice after a crash) or comes from a damaged
    /// log. Taking it would leave the order unsorted, and batches find their start in it
    /// by serial. So is serial 0, which no outbox hands out: a batch "after 0" starts at
    /// the front, and would never reach it.
    pub(crate) fn push(&mut self, serial: u64, event: OutboxEvent) -> bool {
        if serial == 0 || self.order.back().is_some_and(|(last, _)| *last >= serial) {
            return true;
        }
        let OutboxEvent { key, version, at_ms, json } = event;
        if self.entries.get(&key).is_some_and(|old| old.version > version) {
            return true;
        }
        self.bytes += json.len();
        let live = Live { serial, version, at_ms, json };
        let replaced = match self.entries.get_mut(&key) {
            Some(old) => {
                let old = std::mem::replace(old, live);
                self.bytes -= old.json.len();
                true
            }
            None => {
                self.entries.insert(key.clone(), live);
                false
            }
        };
        self.order.push_back((serial, key));
        if replaced {
            self.tidy();
        }
        replaced
    }

    /// Entries waiting.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The oldest entries whose serial is above `after`, at most `max_events` and
    /// `max_bytes` of event data, but at least one if any waits. The order is by serial,
    /// so skipping to `after` is a binary search, not a scan past what is in flight.
    pub(crate) fn batch(&self, after: u64, max_events: usize, max_bytes: usize) -> Vec<OutboxEntry> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        let start = self.order.partition_point(|(serial, _)| *serial <= after);
        let live = self.order.range(start..).filter_map(|(serial, key)| self.live(*serial, key));
        for (key, live) in live {
            if batch.len() >= max_events.max(1) || (!batch.is_empty() && bytes + live.json.len() > max_bytes)
            {
                break;
            }
            bytes += live.json.len();
            batch.push(OutboxEntry {
                key: key.to_owned(),
                serial: live.serial,
                at_ms: live.at_ms,
                event: live.json.clone(),
            });
        }
        batch
    }

    /// Removes `key` if its live version is `serial`; returns whether it did.
    pub(crate) fn ack(&mut self, key: &str, serial: u64) -> bool {
        if self.entries.get(key).is_none_or(|live| live.serial != serial) {
            return false;
        }
        if let Some(live) = self.entries.remove(key) {
            self.bytes -= live.json.len();
        }
        self.tidy();
        true
    }

    /// Every entry in order, as (key, serial, version, at, event).
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&str, u64, u64, u64, &[u8])> {
        self.iter().map(|(key, live)| (key, live.serial, live.version, live.at_ms, live.json.as_slice()))
    }

    /// Event bytes waiting.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The `at` of the oldest entry waiting, if any.
    pub(crate) fn oldest_at_ms(&self) -> Option<u64> {
        self.iter().next().map(|(_, live)| live.at_ms)
    }

    /// Pushes every entry of `newer`, in its order and under its serials: for putting a
    /// failed write back in front of what was appended meanwhile.
    pub(crate) fn extend(&mut self, newer: CompactingQueue) {
        for (serial, event) in newer.into_events() {
            self.push(serial, event);
        }
    }

    /// The live entries, in order, as (serial, event), consuming the queue.
    pub(crate) fn into_events(self) -> impl Iterator<Item = (u64, OutboxEvent)> {
        let CompactingQueue { mut entries, order, .. } = self;
        order.into_iter().filter_map(move |(serial, key)| {
            if entries.get(&key).is_none_or(|live| live.serial != serial) {
                return None;
            }
            let Live { version, at_ms, json, .. } = entries.remove(&key)?;
            Some((serial, OutboxEvent { key, version, at_ms, json }))
        })
    }

    /// The live entries, in order.
    fn iter(&self) -> impl Iterator<Item = (&str, &Live)> {
        self.order.iter().filter_map(|(serial, key)| self.live(*serial, key))
    }

    /// `key`'s live version if it is the one pushed under `serial`.
    fn live(&self, serial: u64, key: &str) -> Option<(&str, &Live)> {
        let (key, live) = self.entries.get_key_value(key)?;
        (live.serial == serial).then_some((key.as_str(), live))
    }

    /// Pops dead elements off the front, and sweeps the deque once the dead outnumber the
    /// live (so it holds at most about twice the live entries, whatever the flapping).
    fn tidy(&mut self) {
        while let Some((serial, key)) = self.order.front() {
            if self.live(*serial, key).is_some() {
                break;
            }
            self.order.pop_front();
        }
        if self.order.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.order
                .retain(|(serial, key)| entries.get(key.as_str()).is_some_and(|live| live.serial == *serial));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(key: &str, json: &str) -> OutboxEvent {
        OutboxEvent { key: key.to_owned(), version: 0, at_ms: 7, json: json.as_bytes().to_vec() }
    }

    #[test]
    fn a_lower_version_never_replaces_a_higher_one() {
        let mut queue = CompactingQueue::default();
        let versioned = |version, json: &str| OutboxEvent { version, ..ev("p:1", json) };
        queue.push(1, versioned(20, "new"));
        assert!(queue.push(2, versioned(10, "stale")), "dropped: the queue did not grow");
        let entries: Vec<(u64, &[u8])> = queue.entries().map(|(_, s, _, _, e)| (s, e)).collect();
        assert_eq!(entries, [(1, &b"new"[..])]);
        queue.push(3, versioned(20, "same version, later call"));
        queue.push(4, versioned(21, "newer"));
        let entries: Vec<(u64, u64, &[u8])> = queue.entries().map(|(_, s, v, _, e)| (s, v, e)).collect();
        assert_eq!(entries, [(4, 21, &b"newer"[..])]);
    }

    #[test]
    fn a_newer_event_replaces_and_moves_to_the_back_and_bytes_follow() {
        let mut queue = CompactingQueue::default();
        assert!(!queue.push(1, ev("p:1", "a")));
        assert!(!queue.push(2, ev("p:2", "bb")));
        assert!(queue.push(3, ev("p:1", "ccc")));
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.bytes, 5);
        let order: Vec<(&str, u64)> = queue.entries().map(|(k, s, _, _, _)| (k, s)).collect();
        assert_eq!(order, [("p:2", 2), ("p:1", 3)]);
        assert!(!queue.ack("p:1", 1), "a replaced serial acknowledges nothing");
        assert!(queue.ack("p:1", 3));
        assert_eq!(queue.bytes, 2);
    }

    #[test]
    fn flapping_keys_leave_the_order_bounded_and_the_live_entries_in_order() {
        let mut queue = CompactingQueue::default();
        let mut serial = 0;
        for round in 0..10_000u64 {
            for key in ["p:1", "p:2", "p:3"] {
                serial += 1;
                queue.push(serial, ev(key, &round.to_string()));
            }
        }
        assert_eq!(queue.len(), 3);
        assert!(queue.order.len() <= 2 * 3 + 64 + 1, "dead elements swept: {}", queue.order.len());
        let live: Vec<(&str, u64)> = queue.entries().map(|(k, s, _, _, _)| (k, s)).collect();
        assert_eq!(live, [("p:1", serial - 2), ("p:2", serial - 1), ("p:3", serial)]);
        let batch = queue.batch(0, 2, 1 << 20);
        assert_eq!(batch.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), ["p:1", "p:2"]);
        for entry in &batch {
            assert!(queue.ack(&entry.key, entry.serial));
        }
        assert_eq!(queue.order.len(), 1, "acknowledged heads are popped at once");
        assert_eq!(queue.entries().map(|(k, ..)| k).collect::<Vec<_>>(), ["p:3"]);
    }

    #[test]
    fn a_batch_after_a_serial_skips_what_is_in_flight_and_sees_replacements() {
        let mut queue = CompactingQueue::default();
        for serial in 1..=6 {
            queue.push(serial, ev(&format!("p:{serial}"), "x"));
        }
        let keys = |batch: Vec<OutboxEntry>| batch.into_iter().map(|e| e.key).collect::<Vec<_>>();
        assert_eq!(keys(queue.batch(0, 2, 1 << 20)), ["p:1", "p:2"]);
        assert_eq!(keys(queue.batch(2, 2, 1 << 20)), ["p:3", "p:4"]);
        // p:1 replaced while its batch is in flight: the new version is after the cursor.
        queue.push(7, ev("p:1", "y"));
        assert_eq!(keys(queue.batch(4, 10, 1 << 20)), ["p:5", "p:6", "p:1"]);
        assert!(queue.batch(7, 10, 1 << 20).is_empty());
        assert!(queue.batch(u64::MAX, 10, 1 << 20).is_empty());
    }

    #[test]
    fn a_serial_not_above_the_last_is_ignored_so_the_order_stays_sorted() {
        let mut queue = CompactingQueue::default();
        queue.push(5, ev("p:1", "a"));
        queue.push(6, ev("p:2", "b"));
        assert!(queue.push(6, ev("p:2", "b again")), "a replay of the last serial");
        assert!(queue.push(3, ev("p:3", "older")), "a serial from before");
        let mut fresh = CompactingQueue::default();
        assert!(fresh.push(0, ev("p:0", "zero")), "serial 0 is never stored");
        assert_eq!(fresh.len(), 0);
        let entries: Vec<(&str, u64, &[u8])> = queue.entries().map(|(k, s, _, _, e)| (k, s, e)).collect();
        assert_eq!(entries, [("p:1", 5, &b"a"[..]), ("p:2", 6, &b"b"[..])]);
        assert_eq!(queue.batch(5, 10, 1 << 20).len(), 1);
    }

    #[test]
    fn extend_puts_older_entries_first_and_newer_content_wins() {
        let mut older = CompactingQueue::default();
        older.push(1, ev("p:1", "a"));
        older.push(2, ev("p:2", "b"));
        let mut newer = CompactingQueue::default();
        newer.push(3, ev("p:1", "c"));
        older.extend(newer);
        let entries: Vec<(&str, &[u8])> = older.entries().map(|(k, _, _, _, e)| (k, e)).collect();
        assert_eq!(entries, [("p:2", &b"b"[..]), ("p:1", &b"c"[..])]);
        assert_eq!(older.len(), 2);
    }
}
