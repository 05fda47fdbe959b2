//! Token buckets for the daemon's defences, in two shapes.
//!
//! - [`RateLimiter`]: one bucket per key, exactly, for keys the daemon itself bounds (app
//!   ids: only registered apps get one).
//! - [`HashedLimiter`]: a fixed table of buckets indexed by a keyed hash, for keys a peer
//!   chooses (source addresses, which can be spoofed; PUIDs in a request). Its memory is
//!   fixed at start whatever arrives: a flood of fresh keys cannot grow it, only share
//!   slots. The hash key is random per run, so nobody can aim at a victim's slot; sharing a
//!   slot by chance only makes two keys share one budget.
//! - [`PerAppLimiter`]: one [`HashedLimiter`] per app, for peer-chosen keys that belong to
//!   an app (the recipients of its notifications). An app that floods fresh keys can only
//!   empty its own table, so two colluding apps cannot drain a recipient's budget for a
//!   third app; the tables are as many as the registered apps, which the operator bounds.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::settings::Rate;

/// One token bucket, refilled continuously.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(limit: Rate, now: Instant) -> Bucket {
        Bucket { tokens: f64::from(limit.burst.max(1)), at: now }
    }

    /// Refills to `now`, then says whether a token is there, or how long until one is.
    fn refill(&mut self, limit: Rate, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(limit.rate.max(1));
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(limit.burst.max(1)));
        self.at = self.at.max(now);
        if self.tokens >= 1.0 { Ok(()) } else { Err(Duration::from_secs_f64((1.0 - self.tokens) / rate)) }
    }

    fn take(&mut self, limit: Rate, now: Instant) -> Result<(), Duration> {
        self.refill(limit, now)?;
        self.tokens -= 1.0;
        Ok(())
    }
}

/// Token buckets keyed exactly, for a bounded set of keys.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    limit: Rate,
    buckets: DashMap<String, Bucket>,
}

impl RateLimiter {
    /// `rate` requests per second on average, `burst` at once.
    pub(crate) fn new(rate: u32, burst: u32) -> RateLimiter {
        RateLimiter { limit: Rate { rate, burst }, buckets: DashMap::new() }
    }

    /// Drops `key`'s bucket (a removed app): the next check starts it full.
    pub(crate) fn forget(&self, key: &str) {
        self.buckets.remove(key);
    }

    /// Takes one token for `key` at `now`, or says how long until one is available.
    pub(crate) fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut bucket = self.buckets.entry(key.to_owned()).or_insert_with(|| Bucket::full(self.limit, now));
        bucket.take(self.limit, now)
    }
}

/// A fixed table of token buckets indexed by a keyed hash of the key.
#[derive(Debug)]
pub(crate) struct HashedLimiter {
    limit: Rate,
    hasher: RandomState,
    slots: Mutex<Box<[Bucket]>>,
}

impl HashedLimiter {
    /// `slots` buckets (at least one), each `limit`, full at `now`.
    pub(crate) fn new(limit: Rate, slots: usize, now: Instant) -> HashedLimiter {
        let slots = vec![Bucket::full(limit, now); slots.max(1)].into_boxed_slice();
        HashedLimiter { limit, hasher: RandomState::new(), slots: Mutex::new(slots) }
    }

    /// Takes one token for `key` at `now`, or says how long until one is available.
    pub(crate) fn check(&self, key: &impl Hash, now: Instant) -> Result<(), Duration> {
        self.check_all(std::slice::from_ref(key), now)
    }

    /// Takes one token for every key, all or none: if any key's bucket is empty nothing is
    /// taken, and the answer is the longest wait.
    pub(crate) fn check_all<K: Hash>(&self, keys: &[K], now: Instant) -> Result<(), Duration> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let indices: Vec<usize> = keys.iter().map(|key| self.slot_of(key, slots.len())).collect();
        let mut wait = Duration::ZERO;
        for &index in &indices {
            if let Err(more) = slots[index].refill(self.limit, now) {
                wait = wait.max(more);
            }
        }
        if wait > Duration::ZERO {
            return Err(wait);
        }
        for &index in &indices {
            // A second key in a slot may find it empty: that key shares the budget.
            let _ = slots[index].take(self.limit, now);
        }
        Ok(())
    }

    /// Whether `key` has a token at `now`, taking none: for a budget spent only by some
    /// outcomes (a refused credential) but checked before every attempt, so that a
    /// spent budget refuses the right credential too and a guesser learns nothing.
    pub(crate) fn peek(&self, key: &impl Hash, now: Instant) -> Result<(), Duration> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let index = self.slot_of(key, slots.len());
        slots[index].refill(self.limit, now)
    }

    fn slot_of(&self, key: &impl Hash, slots: usize) -> usize {
        (self.hasher.hash_one(key) % slots as u64) as usize
    }
}

/// One fixed table of hashed buckets per app, made on the app's first check. See the
/// [module docs](self).
#[derive(Debug)]
pub(crate) struct PerAppLimiter {
    limit: Rate,
    slots: usize,
    tables: DashMap<String, HashedLimiter>,
}

impl PerAppLimiter {
    /// Tables of `slots` buckets each, every bucket `limit`.
    pub(crate) fn new(limit: Rate, slots: usize) -> PerAppLimiter {
        PerAppLimiter { limit, slots, tables: DashMap::new() }
    }

    /// Takes one token for every key in `app`'s own table, all or none (as
    /// [`HashedLimiter::check_all`]).
    pub(crate) fn check_all<K: Hash>(&self, app: &str, keys: &[K], now: Instant) -> Result<(), Duration> {
        if let Some(table) = self.tables.get(app) {
            return table.check_all(keys, now);
        }
        let table = self
            .tables
            .entry(app.to_owned())
            .or_insert_with(|| HashedLimiter::new(self.limit, self.slots, now));
        table.check_all(keys, now)
    }

    /// Drops `app`'s table (a removed app): its fixed memory goes with it.
    pub(crate) fn forget(&self, app: &str) {
        self.tables.remove(app);
    }

    /// Apps with a table.
    #[cfg(test)]
    pub(crate) fn apps(&self) -> usize {
        self.tables.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_with_a_wait() {
        let limiter = RateLimiter::new(10, 3);
        let now = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check("a", now).is_ok());
        }
        let wait = limiter.check("a", now).expect_err("over the burst");
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100));
        assert!(limiter.check("b", now).is_ok(), "apps do not share buckets");
    }

    #[test]
    fn hashed_buckets_hold_a_fixed_table_and_refill() {
        let limiter = HashedLimiter::new(Rate { rate: 1, burst: 2 }, 64, Instant::now());
        let now = Instant::now();
        assert!(limiter.check(&"10.0.0.1", now).is_ok());
        assert!(limiter.check(&"10.0.0.1", now).is_ok());
        assert!(limiter.check(&"10.0.0.1", now).is_err());
        assert!(limiter.check(&"10.0.0.1", now + Duration::from_secs(1)).is_ok());
        // A hundred thousand fresh keys leave the table as it was: 64 slots.
        for i in 0..100_000u32 {
            let _ = limiter.check(&i, now);
        }
        assert_eq!(limiter.slots.lock().expect("lock").len(), 64);
    }

    #[test]
    fn a_forgotten_app_leaves_nothing_behind_and_starts_afresh() {
        let now = Instant::now();
        let per_app = PerAppLimiter::new(Rate { rate: 1, burst: 1 }, 64);
        per_app.check_all("app_a", &["p1"], now).expect("a token");
        per_app.check_all("app_b", &["p1"], now).expect("a token");
        assert!(per_app.check_all("app_a", &["p1"], now).is_err(), "spent");
        per_app.forget("app_a");
        assert_eq!(per_app.apps(), 1, "only app_b's table is left");
        assert!(per_app.check_all("app_b", &["p1"], now).is_err(), "another app's table is untouched");
        let rates = RateLimiter::new(1, 1);
        rates.check("app_a", now).expect("a token");
        assert!(rates.check("app_a", now).is_err());
        rates.forget("app_a");
        assert!(rates.check("app_a", now).is_ok(), "a new bucket, full");
    }

    #[test]
    fn peek_takes_nothing() {
        let now = Instant::now();
        let limiter = HashedLimiter::new(Rate { rate: 1, burst: 1 }, 64, now);
        for _ in 0..3 {
            assert!(limiter.peek(&"10.0.0.1", now).is_ok());
        }
        assert!(limiter.check(&"10.0.0.1", now).is_ok());
        let wait = limiter.peek(&"10.0.0.1", now).expect_err("spent by the check");
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        assert!(limiter.peek(&"10.0.0.1", now + Duration::from_secs(1)).is_ok(), "refilled");
    }

    #[test]
    fn check_all_takes_all_or_nothing() {
        let limiter = HashedLimiter::new(Rate { rate: 1, burst: 1 }, 4_096, Instant::now());
        let now = Instant::now();
        // Two keys in different slots (the hash key is random per run).
        let b = (0..)
            .map(|i| format!("b{i}"))
            .find(|b| limiter.slot_of(b, 4_096) != limiter.slot_of(&"a", 4_096));
        let b = b.expect("a key in another slot");
        assert!(limiter.check(&b, now).is_ok());
        // "b" is empty, so "a" keeps its token.
        assert!(limiter.check_all(&["a", b.as_str()], now).is_err());
        assert!(limiter.check(&"a", now).is_ok());
    }

    /// One app that empties every slot of its table with fresh keys leaves another app's
    /// recipients their whole budget (in one shared table they would have found it empty).
    #[test]
    fn an_app_draining_its_recipient_table_leaves_other_apps_theirs() {
        let limiter = PerAppLimiter::new(Rate { rate: 1, burst: 1 }, 4);
        let now = Instant::now();
        for i in 0..64 {
            let _ = limiter.check_all("app_greedy", &[format!("puid{i}")], now);
        }
        assert!(
            limiter.check_all("app_greedy", &["alice"], now).is_err(),
            "the greedy app emptied all four of its slots"
        );
        assert!(limiter.check_all("app_other", &["alice"], now).is_ok(), "its own table is full");
        assert!(limiter.check_all("app_other", &["alice"], now).is_err(), "and alice's budget there is one");
        assert!(limiter.check_all("app_other", &["alice"], now + Duration::from_secs(1)).is_ok(), "refilled");
        assert_eq!(limiter.tables.len(), 2);
    }
}
