//! The delivery log: the last webhook POSTs of each app, as its delivery task made them,
//! for the app's owner (`GET /v1/deliveries`), the operator
//! (`GET /v1/admin/apps/{id}/deliveries`) and the console that shows both.
//!
//! Bounded and in memory: at most `delivery_log_size` attempts per app (the oldest goes
//! first), and an app's ring goes with the app. A restart empties it: the log is for watching
//! a receiver, not an audit trail, and the durable outbox is what keeps deliveries safe. The
//! delivery task records an attempt once its POST ended, under a lock held only for the
//! push, so watching costs the hot path nothing it waits on.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

/// The default number of attempts kept per app.
pub(crate) const DEFAULT_DELIVERY_LOG_SIZE: usize = 100;
/// The most a log may keep per app: 10,000 attempts of about 200 bytes is 2 MB per app.
pub(crate) const MAX_DELIVERY_LOG_SIZE: usize = 10_000;
/// Longest error text kept, in characters: enough for a resolver's or TLS stack's reason.
const MAX_ERROR: usize = 300;

/// How one POST ended, as the log and `presence_webhook_batches_total{result}` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AttemptResult {
    /// 2xx: the batch is acknowledged.
    Delivered,
    /// Any other status, a timeout, a connection or TLS error, a refused URL: retried.
    Failed,
    /// 429, 502, 503 or 504: retried, after `Retry-After` if the receiver said.
    Throttled,
    /// 410: the app's deliveries are now disabled.
    Gone,
}

impl AttemptResult {
    /// The label value, the same word as in JSON.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AttemptResult::Delivered => "delivered",
            AttemptResult::Failed => "failed",
            AttemptResult::Throttled => "throttled",
            AttemptResult::Gone => "gone",
        }
    }
}

/// One webhook POST.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Attempt {
    /// When the POST started, Unix milliseconds.
    pub(crate) at: u64,
    /// The batch's `webhook-id` header (the same for every retry of the same content).
    pub(crate) webhook_id: String,
    /// Events in the batch.
    pub(crate) events: usize,
    /// How it ended.
    pub(crate) result: AttemptResult,
    /// The receiver's HTTP status; `None` when no answer came (timeout, connection error).
    pub(crate) status: Option<u16>,
    /// Why it failed without a status, in one line; never the URL (it may hold a token).
    pub(crate) error: Option<String>,
    /// From the start of the POST to the end of the answer, milliseconds.
    pub(crate) latency_ms: u64,
    /// 1 for a batch's first POST, counting up through its retries.
    pub(crate) attempt: u32,
    /// When the next retry goes, Unix milliseconds; `None` when none is due (delivered, or
    /// gone).
    pub(crate) next_retry_at: Option<u64>,
}

/// The per-app rings; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct DeliveryLog {
    size: usize,
    apps: Mutex<HashMap<String, VecDeque<Attempt>>>,
}

impl DeliveryLog {
    /// A log keeping `size` attempts per app (0 keeps none).
    pub(crate) fn new(size: usize) -> DeliveryLog {
        DeliveryLog { size: size.min(MAX_DELIVERY_LOG_SIZE), apps: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Attempt>>> {
        // Every critical section is one push or copy: a panic elsewhere leaves it whole.
        self.apps.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records an attempt of `app_id`'s, dropping its oldest beyond the size.
    pub(crate) fn record(&self, app_id: &str, mut attempt: Attempt) {
        if self.size == 0 {
            return;
        }
        if let Some(error) = &mut attempt.error {
            if let Some((cut, _)) = error.char_indices().nth(MAX_ERROR) {
                error.truncate(cut);
                error.push('…');
            }
        }
        let mut apps = self.lock();
        let ring = match apps.get_mut(app_id) {
            Some(ring) => ring,
            None => {
                apps.entry(app_id.to_owned()).or_insert_with(|| VecDeque::with_capacity(self.size.min(16)))
            }
        };
        if ring.len() == self.size {
            ring.pop_front();
        }
        ring.push_back(attempt);
    }

    /// The app's attempts, newest first.
    pub(crate) fn recent(&self, app_id: &str) -> Vec<Attempt> {
        self.lock().get(app_id).map(|ring| ring.iter().rev().cloned().collect()).unwrap_or_default()
    }

    /// Drops a removed app's ring.
    pub(crate) fn forget(&self, app_id: &str) {
        self.lock().remove(app_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(n: u32) -> Attempt {
        Attempt {
            at: u64::from(n),
            webhook_id: format!("msg_{n}"),
            events: 1,
            result: AttemptResult::Failed,
            status: Some(500),
            error: None,
            latency_ms: 3,
            attempt: n,
            next_retry_at: Some(u64::from(n) + 1_000),
        }
    }

    #[test]
    fn each_app_keeps_its_last_attempts_newest_first() {
        let log = DeliveryLog::new(3);
        for n in 1..=5 {
            log.record("app_a", attempt(n));
        }
        log.record("app_b", attempt(9));
        let attempts: Vec<u32> = log.recent("app_a").iter().map(|a| a.attempt).collect();
        assert_eq!(attempts, [5, 4, 3], "the oldest went first");
        assert_eq!(log.recent("app_b").len(), 1, "apps keep rings of their own");
        log.forget("app_a");
        assert!(log.recent("app_a").is_empty());
        assert!(log.recent("app_c").is_empty());
    }

    #[test]
    fn a_zero_size_keeps_nothing_and_long_errors_are_cut() {
        let none = DeliveryLog::new(0);
        none.record("app_a", attempt(1));
        assert!(none.recent("app_a").is_empty());
        let log = DeliveryLog::new(1);
        log.record("app_a", Attempt { error: Some("é".repeat(1_000)), ..attempt(1) });
        let error = log.recent("app_a")[0].error.clone().expect("error");
        assert_eq!(error.chars().count(), MAX_ERROR + 1);
        assert!(error.ends_with('…'));
    }

    #[test]
    fn attempts_serialize_with_the_documented_fields() {
        let json = serde_json::to_value(attempt(2)).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "at": 2, "webhook_id": "msg_2", "events": 1, "result": "failed", "status": 500,
                "error": null, "latency_ms": 3, "attempt": 2, "next_retry_at": 1_002
            })
        );
    }
}
