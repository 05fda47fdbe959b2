//! Token buckets on the caller's clock, for the per-session rate limits of [`crate::server`].
//!
//! A device that sends faster than any honest device needs to (a flood of pings, a loop of
//! frames) costs the daemon work for nothing, and the work it causes downstream (acks,
//! table updates, webhooks) is the amplification worth refusing. The bucket is sans-IO like
//! the rest of the crate: `now` is an input, so the limits are tested on a virtual clock.

use std::time::Instant;

/// What a [`RateLimit`] says about one more item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Within the rate: act on it.
    Allowed,
    /// Over the rate: drop it.
    Dropped,
    /// Over the rate for long enough that the sender is abusive: close.
    Abusive,
}

/// A token bucket (`rate` per second, `burst` at once) with a second, leaky bucket of
/// refusals: each refused item adds one and it drains at `rate`, so it overflows (past
/// `burst`) only while the sender keeps offering well over twice the rate. An honest peer
/// that bursts once is dropped, not closed.
#[derive(Debug, Clone)]
pub(crate) struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    excess: f64,
    at: Instant,
}

impl RateLimit {
    /// A full bucket at `now`. A zero rate or burst counts as one (a limit of nothing would
    /// make every session unusable, which no setting means).
    pub(crate) fn new(rate: u32, burst: u32, now: Instant) -> RateLimit {
        let burst = f64::from(burst.max(1));
        RateLimit { rate: f64::from(rate.max(1)), burst, tokens: burst, excess: 0.0, at: now }
    }

    /// Takes one token at `now`.
    pub(crate) fn take(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = self.at.max(now);
        let refill = elapsed * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.excess = (self.excess - refill).max(0.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allowed;
        }
        self.excess += 1.0;
        if self.excess > self.burst { Verdict::Abusive } else { Verdict::Dropped }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn burst_then_rate_then_abuse() {
        let start = Instant::now();
        let mut limit = RateLimit::new(10, 5, start);
        for _ in 0..5 {
            assert_eq!(limit.take(start), Verdict::Allowed);
        }
        assert_eq!(limit.take(start), Verdict::Dropped);
        // 100 ms refills one token.
        assert_eq!(limit.take(start + Duration::from_millis(100)), Verdict::Allowed);
        // Offering far over the rate overflows the refusals bucket.
        let at = start + Duration::from_millis(100);
        let verdicts: Vec<Verdict> = (0..7).map(|_| limit.take(at)).collect();
        assert_eq!(verdicts[..5], [Verdict::Dropped; 5]);
        assert_eq!(verdicts[6], Verdict::Abusive);
        // A clock that steps back never refills nor panics.
        assert_eq!(limit.take(start), Verdict::Abusive);
    }

    #[test]
    fn an_offer_at_twice_the_rate_is_dropped_but_never_abusive() {
        let start = Instant::now();
        let mut limit = RateLimit::new(10, 5, start);
        for i in 0..2_000u64 {
            let verdict = limit.take(start + Duration::from_millis(50 * i));
            assert_ne!(verdict, Verdict::Abusive, "at item {i}");
        }
    }
}
