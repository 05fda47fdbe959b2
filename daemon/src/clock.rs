//! The daemon's clock: the one place that reads the time.
//!
//! Domain code (the table, sessions, notifications, limiters, the fan-out) takes its time
//! from a [`Clock`] handed to it, never from `Instant::now()` or `SystemTime::now()`, for two
//! reasons:
//!
//! - **Tests control it.** The monotonic half reads tokio's clock, so a test on a runtime
//!   with paused time (`#[tokio::test(start_paused = true)]`) moves every timer and every
//!   "now" of the daemon together, without waiting in real time.
//! - **The two kinds of time stay apart.** Monotonic time ([`Clock::now`]) measures
//!   intervals (heartbeats, rate limits, timeouts) and never jumps. Wall time
//!   ([`Clock::unix_ms`] and friends) is only for what leaves the process: token expiry,
//!   `Welcome.server_time_ms`, webhook `at` and `seq`, stored records. It may step back
//!   when the system clock is set; code that needs it to increase (presence `seq`) guards
//!   that itself.
//!
//! The wall clock is the system's, read each time, so that a daemon run under libfaketime
//! (daemon/tests/clock.rs) sees the steps it is given.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where the daemon's time comes from. Cheap to copy; every component gets one.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clock {
    _private: (),
}

impl Clock {
    /// The system clock (tokio's monotonic clock, the system's wall clock).
    pub fn system() -> Clock {
        Clock { _private: () }
    }

    /// Monotonic now, for intervals and deadlines. Follows tokio's paused clock in tests.
    pub fn now(&self) -> Instant {
        self.tokio_now().into_std()
    }

    /// Monotonic now as tokio's `Instant`, for `sleep_until` and `timeout_at`.
    pub fn tokio_now(&self) -> tokio::time::Instant {
        tokio::time::Instant::now()
    }

    /// Wall-clock now as a `SystemTime`, for what takes one (HTTP dates).
    pub fn system_time(&self) -> SystemTime {
        SystemTime::now()
    }

    /// Wall-clock time since the Unix epoch (zero if the clock is before 1970).
    pub fn since_epoch(&self) -> Duration {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
    }

    /// Wall clock, Unix seconds.
    pub fn unix_secs(&self) -> u64 {
        self.since_epoch().as_secs()
    }

    /// Wall clock, Unix milliseconds.
    pub fn unix_ms(&self) -> u64 {
        u64::try_from(self.since_epoch().as_millis()).unwrap_or(u64::MAX)
    }

    /// Wall clock, Unix microseconds.
    pub fn unix_micros(&self) -> u64 {
        u64::try_from(self.since_epoch().as_micros()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn monotonic_time_follows_the_paused_runtime() {
        let clock = Clock::system();
        let before = clock.now();
        tokio::time::sleep(Duration::from_secs(3_600)).await;
        assert!(clock.now() - before >= Duration::from_secs(3_600), "an hour passed virtually");
    }

    #[test]
    fn wall_units_agree() {
        let clock = Clock::system();
        let (secs, ms, micros) = (clock.unix_secs(), clock.unix_ms(), clock.unix_micros());
        assert!(ms / 1_000 >= secs && ms / 1_000 <= secs + 1);
        assert!(micros / 1_000 >= ms && micros / 1_000 <= ms + 1_000);
    }
}
