//! The adaptive heartbeat: learning how long the path's NAT keeps a silent binding.
//!
//! A device behind a NAT is reachable only while the NAT keeps the UDP binding its last
//! packet opened, and a heartbeat is only needed to keep that binding. So the cheapest
//! interval is the longest one the binding survives, and no one tells the device what that
//! is: it differs between networks (30 s on some mobile networks, hours on others).
//!
//! [`Adaptive`] finds out with delayed echoes ([`EchoPing`](crate::EchoPing)): it sends a
//! `Probe` asking the server for an `Echo` after `delay` and stays silent. An echo that
//! arrives proves the binding outlived `delay` of silence; a missing one means the binding
//! (or the echo) was lost. The search:
//!
//! - starts from `min`, trusted on any path without proof;
//! - grows the probed delay by `growth_percent` per echo, chaining the next probe onto the
//!   echo's arrival (the radio is awake anyway), up to `max`;
//! - after a miss, re-verifies the proven delay first (a miss can also be a lost datagram,
//!   or a NAT whose timeout shrank), then bisects between the proven and the missed delay
//!   until they are within `resolution`;
//! - heartbeats at `margin_percent` of the proven delay once converged, and probes again
//!   after `reprobe_after`;
//! - falls back to `min` at once when a delay it trusted turns out too long: a verification
//!   probe missed, or the server reported that the device's address changed after a
//!   silence the device believed safe (the NAT dropped the binding and the device's next
//!   packet opened a new one: pushes sent in between were lost).
//!
//! The machine only decides; [`ClientSession`](crate::ClientSession) sends and times.

use std::time::{Duration, Instant};

/// Bounds and pace of the adaptive heartbeat. Every field has a default named below.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdaptiveHeartbeat {
    /// Shortest interval, used without proof on any path. Default [`Self::DEFAULT_MIN`].
    pub min: Duration,
    /// Longest interval tried; the device asks the server for it in `Hello`, so the server
    /// holds it to no more. Default [`Self::DEFAULT_MAX`].
    pub max: Duration,
    /// Each probe after an echo asks for this percentage of the proven delay (above 100).
    /// Default [`Self::DEFAULT_GROWTH_PERCENT`].
    pub growth_percent: u32,
    /// The heartbeat interval is this percentage of the proven delay (at most 100), room
    /// for NATs whose timers are not exact. Default [`Self::DEFAULT_MARGIN_PERCENT`].
    pub margin_percent: u32,
    /// How long past the asked delay an echo may take before it counts as missed: the
    /// round trip and the server's timer. Default [`Self::DEFAULT_ECHO_SLACK`].
    pub echo_slack: Duration,
    /// The search stops when the longest proven and the shortest missed delay are this
    /// close. Default [`Self::DEFAULT_RESOLUTION`].
    pub resolution: Duration,
    /// How long a learned interval is kept before probing for a longer one (paths change).
    /// Default [`Self::DEFAULT_REPROBE_AFTER`].
    pub reprobe_after: Duration,
}

impl AdaptiveHeartbeat {
    /// Default `min`: below the shortest UDP binding timeouts seen on mobile networks (30 s).
    pub const DEFAULT_MIN: Duration = Duration::from_secs(20);
    /// Default `max`: 5 min, which also bounds how long the server takes to notice a device
    /// that vanished (the interval it is held to, plus grace).
    pub const DEFAULT_MAX: Duration = Duration::from_secs(5 * 60);
    /// Default `growth_percent`: ×1.5 per echo, 20 s to 5 min in seven probes.
    pub const DEFAULT_GROWTH_PERCENT: u32 = 150;
    /// Default `margin_percent`.
    pub const DEFAULT_MARGIN_PERCENT: u32 = 90;
    /// Default `echo_slack`.
    pub const DEFAULT_ECHO_SLACK: Duration = Duration::from_secs(2);
    /// Default `resolution`.
    pub const DEFAULT_RESOLUTION: Duration = Duration::from_secs(3);
    /// Default `reprobe_after`.
    pub const DEFAULT_REPROBE_AFTER: Duration = Duration::from_secs(30 * 60);
}

impl Default for AdaptiveHeartbeat {
    fn default() -> Self {
        Self {
            min: Self::DEFAULT_MIN,
            max: Self::DEFAULT_MAX,
            growth_percent: Self::DEFAULT_GROWTH_PERCENT,
            margin_percent: Self::DEFAULT_MARGIN_PERCENT,
            echo_slack: Self::DEFAULT_ECHO_SLACK,
            resolution: Self::DEFAULT_RESOLUTION,
            reprobe_after: Self::DEFAULT_REPROBE_AFTER,
        }
    }
}

/// Why the adaptive heartbeat changed its mind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdaptCause {
    /// An echo arrived after this delay of silence: the binding outlived it.
    Echoed {
        /// The probed delay.
        delay: Duration,
    },
    /// No echo arrived after this delay: the binding (or the echo) was lost.
    Missed {
        /// The probed delay.
        delay: Duration,
    },
    /// The server saw the device's address change after a silence believed safe.
    PathChanged,
    /// The search converged: the interval holds until the next re-probe.
    Settled,
}

/// Probes the server never answered before the device concludes it does not echo (an
/// older server), stops probing, and keeps the `min` interval.
const UNANSWERED_PROBES: u8 = 3;

/// A probe waiting for its echo.
#[derive(Debug, Clone, Copy)]
struct Outstanding {
    delay_secs: u16,
    deadline: Instant,
}

/// The learning state of one session.
#[derive(Debug)]
pub(crate) struct Adaptive {
    config: AdaptiveHeartbeat,
    /// The longest silence proven survivable on this path (`min` until an echo proves more).
    proven: Duration,
    /// The shortest probed silence that was not echoed, while it bounds the search.
    failed: Option<Duration>,
    /// The next probe re-checks `proven` before the search goes on.
    verify: bool,
    /// When the search converged, while it rests.
    converged_at: Option<Instant>,
    /// The search converged at the last beat and nobody was told yet.
    settled: bool,
    probe: Option<Outstanding>,
    echo_seen: bool,
    unanswered: u8,
    /// When the device last sent, and the longest silence before a send in the current
    /// window of `echo_slack` (what a path-change notice may be about).
    last_send: Instant,
    window_start: Instant,
    window_gap: Duration,
}

/// What the session sends when the heartbeat timer fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Beat {
    /// A plain heartbeat.
    Heartbeat,
    /// A probe for this many seconds; with `with_heartbeat`, a plain heartbeat too (until
    /// the server has shown that it echoes, so that an older server still hears one).
    Probe { delay_secs: u16, with_heartbeat: bool },
}

impl Adaptive {
    /// Starts learning at `now`; `server_max` is the interval the server holds the device to.
    pub(crate) fn new(mut config: AdaptiveHeartbeat, server_max: Duration, now: Instant) -> Adaptive {
        config.max = config.max.min(server_max).max(Duration::from_secs(1));
        config.min = config.min.min(config.max).max(Duration::from_secs(1));
        config.growth_percent = config.growth_percent.max(101);
        config.margin_percent = config.margin_percent.clamp(1, 100);
        Adaptive {
            proven: config.min,
            config,
            failed: None,
            verify: false,
            converged_at: None,
            settled: false,
            probe: None,
            echo_seen: false,
            unanswered: 0,
            last_send: now,
            window_start: now,
            window_gap: Duration::ZERO,
        }
    }

    /// The heartbeat interval in force.
    pub(crate) fn interval(&self) -> Duration {
        let interval = self.proven * self.config.margin_percent / 100;
        interval.max(self.config.min).min(self.config.max)
    }

    /// The longest silence proven survivable.
    pub(crate) fn proven(&self) -> Duration {
        self.proven
    }

    /// When the outstanding probe counts as missed.
    pub(crate) fn probe_deadline(&self) -> Option<Instant> {
        self.probe.map(|probe| probe.deadline)
    }

    /// The device sent something at `now`: an outstanding probe proves nothing any more.
    pub(crate) fn sent(&mut self, now: Instant) {
        self.probe = None;
        self.note_send(now);
    }

    /// The device sent a frame, or stream data arrived (which the device's QUIC stack
    /// acknowledges): the NAT saw the device send, so an outstanding probe proves nothing.
    pub(crate) fn interrupted(&mut self) {
        self.probe = None;
    }

    /// Whether the search converged since the last call.
    pub(crate) fn take_settled(&mut self) -> bool {
        std::mem::take(&mut self.settled)
    }

    /// The heartbeat timer fired at `now`: what to send.
    pub(crate) fn beat(&mut self, now: Instant) -> Beat {
        self.note_send(now);
        let Some(delay) = self.next_probe(now) else {
            return Beat::Heartbeat;
        };
        let delay_secs = u16::try_from(delay.as_secs()).unwrap_or(u16::MAX).max(1);
        let deadline = now + Duration::from_secs(u64::from(delay_secs)) + self.config.echo_slack;
        self.probe = Some(Outstanding { delay_secs, deadline });
        Beat::Probe { delay_secs, with_heartbeat: !self.echo_seen }
    }

    /// An echo of `delay_secs` arrived at `now`; returns what changed, if anything.
    pub(crate) fn echoed(&mut self, now: Instant, delay_secs: u16) -> Option<AdaptCause> {
        if delay_secs == 0 {
            return self.path_changed(now);
        }
        let probe = self.probe.filter(|probe| probe.delay_secs == delay_secs)?;
        self.probe = None;
        self.echo_seen = true;
        let delay = Duration::from_secs(u64::from(probe.delay_secs));
        self.verify = false;
        self.proven = self.proven.max(delay);
        Some(AdaptCause::Echoed { delay })
    }

    /// Checks the outstanding probe at `now`; returns the miss, if it is one.
    pub(crate) fn check_deadline(&mut self, now: Instant) -> Option<AdaptCause> {
        let probe = self.probe.filter(|probe| now >= probe.deadline)?;
        self.probe = None;
        let delay = Duration::from_secs(u64::from(probe.delay_secs));
        if !self.echo_seen {
            self.unanswered = self.unanswered.saturating_add(1);
        }
        if delay <= self.proven {
            // A silence believed safe was not: the path changed under us. Back to the
            // bound trusted without proof, and learn again.
            self.restart();
        } else {
            self.failed = Some(self.failed.map_or(delay, |failed| failed.min(delay)));
            self.verify = true;
        }
        Some(AdaptCause::Missed { delay })
    }

    /// The server reported an address change at `now`. It matters only when the silence
    /// before the device's latest sends was one the device trusted.
    fn path_changed(&mut self, now: Instant) -> Option<AdaptCause> {
        let gap = if now.saturating_duration_since(self.window_start) <= self.config.echo_slack * 2 {
            self.window_gap
        } else {
            Duration::ZERO
        };
        if gap > self.proven {
            // The device was probing past what it trusted: a new binding was expected.
            return None;
        }
        self.probe = None;
        self.restart();
        Some(AdaptCause::PathChanged)
    }

    fn restart(&mut self) {
        self.proven = self.config.min;
        self.failed = None;
        self.verify = false;
        self.converged_at = None;
    }

    fn note_send(&mut self, now: Instant) {
        let gap = now.saturating_duration_since(self.last_send);
        if now.saturating_duration_since(self.window_start) > self.config.echo_slack {
            self.window_start = now;
            self.window_gap = gap;
        } else {
            self.window_gap = self.window_gap.max(gap);
        }
        self.last_send = now;
    }

    /// The delay to probe next, or `None` for a plain heartbeat.
    fn next_probe(&mut self, now: Instant) -> Option<Duration> {
        if !self.echo_seen && self.unanswered >= UNANSWERED_PROBES {
            return None;
        }
        if let Some(converged_at) = self.converged_at {
            if now.saturating_duration_since(converged_at) < self.config.reprobe_after {
                return None;
            }
            // Rested long enough: the path may allow more now, or less. Verify, then grow.
            self.converged_at = None;
            self.failed = None;
            self.verify = true;
        }
        if self.verify {
            return Some(self.proven);
        }
        let step = Duration::from_secs(1);
        let candidate = match self.failed {
            None if self.proven >= self.config.max => None,
            None => Some((self.proven * self.config.growth_percent / 100).min(self.config.max)),
            Some(failed) if failed.saturating_sub(self.proven) <= self.config.resolution.max(step) => None,
            Some(failed) => Some((self.proven + failed) / 2),
        };
        match candidate {
            // Whole seconds on the wire, and always past what is proven.
            Some(candidate) => Some(Duration::from_secs(candidate.as_secs()).max(self.proven + step)),
            None => {
                self.converged_at = Some(now);
                self.settled = true;
                None
            }
        }
    }
}
