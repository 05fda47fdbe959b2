//! Counters and latency samples shared by every simulated device.
//!
//! Hundreds of thousands of sessions update these concurrently, so counters are atomics and
//! the latency recorders hold a bounded reservoir of samples behind a short `Mutex`: memory
//! stays fixed however long a run lasts, and the percentiles stay unbiased (every sample has
//! the same chance to be kept). The maximum is tracked exactly, outside the reservoir.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Samples a [`Latencies`] keeps at most; 2^20 microsecond values are 4 MiB.
pub const MAX_SAMPLES: usize = 1 << 20;

/// A latency recorder: a uniform reservoir of samples plus the exact count and maximum.
#[derive(Debug, Default)]
pub struct Latencies {
    inner: Mutex<Reservoir>,
}

#[derive(Debug, Default)]
struct Reservoir {
    /// Kept samples, microseconds.
    kept: Vec<u32>,
    /// Samples offered in total.
    seen: u64,
    /// Largest sample, microseconds.
    max: u64,
}

impl Latencies {
    /// Records one latency.
    pub fn record(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let Ok(mut reservoir) = self.inner.lock() else { return };
        reservoir.seen += 1;
        reservoir.max = reservoir.max.max(micros);
        let value = u32::try_from(micros).unwrap_or(u32::MAX);
        if reservoir.kept.len() < MAX_SAMPLES {
            reservoir.kept.push(value);
        } else {
            // Algorithm R: the n-th sample replaces a kept one with probability MAX/n.
            let slot = fastrand::u64(..reservoir.seen);
            if let Ok(slot) = usize::try_from(slot)
                && slot < MAX_SAMPLES
            {
                reservoir.kept[slot] = value;
            }
        }
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.inner.lock().map_or(0, |reservoir| reservoir.seen)
    }

    /// Count, median, 99th percentile and maximum, in milliseconds.
    pub fn summary(&self) -> Summary {
        let Ok(reservoir) = self.inner.lock() else { return Summary::default() };
        let (count, max, mut kept) = (reservoir.seen, reservoir.max, reservoir.kept.clone());
        drop(reservoir);
        kept.sort_unstable();
        Summary {
            count,
            p50_ms: percentile(&kept, 0.50),
            p99_ms: percentile(&kept, 0.99),
            max_ms: (count > 0).then(|| micros_to_ms(max)),
        }
    }
}

/// Nearest-rank percentile of sorted microsecond samples, in milliseconds.
fn percentile(sorted: &[u32], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    // Nearest rank: the smallest value with at least q of the samples at or below it.
    let rank = (q * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    Some(micros_to_ms(u64::from(sorted[index])))
}

fn micros_to_ms(micros: u64) -> f64 {
    micros as f64 / 1_000.0
}

/// A latency distribution's summary; every field is `null` in JSON when nothing was
/// recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Samples recorded.
    pub count: u64,
    /// Median, milliseconds.
    pub p50_ms: Option<f64>,
    /// 99th percentile, milliseconds.
    pub p99_ms: Option<f64>,
    /// Largest, milliseconds (exact, not sampled).
    pub max_ms: Option<f64>,
}

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Errors by kind. Kinds are short stable strings (`handshake_timeout`, `closed:replaced`,
/// `webhook_signature`); the report lists every kind that occurred with its count.
#[derive(Debug, Default)]
pub struct Errors {
    kinds: Mutex<BTreeMap<String, u64>>,
}

impl Errors {
    /// Counts one error of `kind`.
    pub fn add(&self, kind: impl Into<String>) {
        if let Ok(mut kinds) = self.kinds.lock() {
            *kinds.entry(kind.into()).or_default() += 1;
        }
    }

    /// Counts `n` errors of `kind` (nothing when `n` is zero).
    pub fn add_n(&self, kind: impl Into<String>, n: u64) {
        if n == 0 {
            return;
        }
        if let Ok(mut kinds) = self.kinds.lock() {
            *kinds.entry(kind.into()).or_default() += n;
        }
    }

    /// Every kind seen, with its count.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.kinds.lock().map(|kinds| kinds.clone()).unwrap_or_default()
    }

    /// Errors of every kind together.
    pub fn total(&self) -> u64 {
        self.kinds.lock().map_or(0, |kinds| kinds.values().sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let latencies = Latencies::default();
        for ms in 1..=100 {
            latencies.record(Duration::from_millis(ms));
        }
        let summary = latencies.summary();
        assert_eq!(summary.count, 100);
        assert_eq!(summary.p50_ms, Some(50.0));
        assert_eq!(summary.p99_ms, Some(99.0));
        assert_eq!(summary.max_ms, Some(100.0));
    }

    #[test]
    fn empty_summary_is_null() {
        let summary = Latencies::default().summary();
        assert_eq!(summary, Summary { count: 0, p50_ms: None, p99_ms: None, max_ms: None });
        assert_eq!(
            serde_json::to_string(&summary).expect("json"),
            r#"{"count":0,"p50_ms":null,"p99_ms":null,"max_ms":null}"#
        );
    }

    #[test]
    fn errors_count_by_kind() {
        let errors = Errors::default();
        errors.add("a");
        errors.add("b");
        errors.add("a");
        assert_eq!(errors.total(), 3);
        assert_eq!(errors.snapshot().get("a"), Some(&2));
    }
}
