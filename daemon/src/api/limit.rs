//! Per-app request rate limiting: a token bucket per app, refilled continuously.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Token buckets keyed by app id.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: DashMap<String, Mutex<Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// `rate` requests per second on average, `burst` at once.
    pub fn new(rate: u32, burst: u32) -> RateLimiter {
        RateLimiter { rate: f64::from(rate.max(1)), burst: f64::from(burst.max(1)), buckets: DashMap::new() }
    }

    /// Takes one token for `app_id`, or says how long until one is available.
    pub fn check(&self, app_id: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let bucket = self
            .buckets
            .entry(app_id.to_owned())
            .or_insert_with(|| Mutex::new(Bucket { tokens: self.burst, at: now }));
        let Ok(mut bucket) = bucket.lock() else { return Ok(()) };
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_with_a_wait() {
        let limiter = RateLimiter::new(10, 3);
        for _ in 0..3 {
            assert!(limiter.check("a").is_ok());
        }
        let wait = limiter.check("a").expect_err("over the burst");
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100));
        assert!(limiter.check("b").is_ok(), "apps do not share buckets");
    }
}
