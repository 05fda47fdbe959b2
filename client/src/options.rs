//! What a device connects with.

use std::net::SocketAddr;
use std::time::Duration;

use presence_protocol::{AdaptiveHeartbeat, ClientConfig, Status};
use rustls::pki_types::CertificateDer;

/// Default heartbeat interval. Mobile NATs may drop UDP bindings after 30 s of silence;
/// a device that must stay reachable for pushes should pick an interval below its path's
/// NAT timeout, one that only reports presence can go far longer.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(25);

/// How long a ping may go without the server acknowledging anything before the device
/// gives the server up and fails over, at the least (see [`ClientOptions::unanswered`]).
pub const DEFAULT_UNANSWERED: Duration = Duration::from_secs(1);

/// Settings of one device's client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The daemon's QUIC addresses: the nodes of a cluster, or one daemon (never empty:
    /// the client refuses to start). A session goes to one at a time, starting with the
    /// first; when it goes down, or a connection attempt fails, the next attempt goes to
    /// the next address at once, and only after every address failed since the last
    /// session was up does the client back off ([`Backoff`]).
    pub servers: Vec<SocketAddr>,
    /// The name the server's certificate must carry. Default `localhost`.
    pub server_name: String,
    /// Trust roots for the server certificate (the dev CA, or a private CA). Empty means the
    /// client refuses to start: there are no built-in roots.
    pub roots: Vec<CertificateDer<'static>>,
    /// The device token (a JWT from the identity provider).
    pub token: String,
    /// The device id; default: the token's `did` claim.
    pub device_id: Option<String>,
    /// Initial status. Default online.
    pub status: Status,
    /// Initial message. Default empty.
    pub message: String,
    /// Apps allowed to see this device's presence. Default none.
    pub visibility: Vec<String>,
    /// The heartbeat interval asked for. Default [`DEFAULT_HEARTBEAT`]. Unused with
    /// [`adaptive_heartbeat`](Self::adaptive_heartbeat), which asks for its `max`.
    pub heartbeat: Duration,
    /// When to turn away and offline by itself. Default: never.
    pub idle: IdlePolicy,
    /// Reconnect backoff.
    pub backoff: Backoff,
    /// Session settings (handshake timeout, status retransmission, and the adaptive
    /// heartbeat in `session.adaptive`: see [`ClientOptions::adaptive_heartbeat`]).
    pub session: ClientConfig,
    /// Local address to bind. Default `0.0.0.0:0` (or `[::]:0` when a server is IPv6).
    pub bind: Option<SocketAddr>,
    /// A server that stops acknowledging is given up after three probe timeouts of the
    /// path (about three round trips, plus the server's ACK delay), and at least this long
    /// after a ping it did not acknowledge: the device fails over at once, without waiting
    /// for QUIC's idle timeout. Default [`DEFAULT_UNANSWERED`]; `None` waits for the idle
    /// timeout.
    pub unanswered: Option<Duration>,
}

impl ClientOptions {
    /// Options with every default, for one server and token (add others to
    /// [`servers`](Self::servers)).
    pub fn new(server: SocketAddr, roots: Vec<CertificateDer<'static>>, token: String) -> ClientOptions {
        ClientOptions {
            servers: vec![server],
            server_name: "localhost".into(),
            roots,
            token,
            device_id: None,
            status: Status::Online,
            message: String::new(),
            visibility: Vec::new(),
            heartbeat: DEFAULT_HEARTBEAT,
            idle: IdlePolicy::default(),
            backoff: Backoff::default(),
            session: ClientConfig::default(),
            bind: None,
            unanswered: Some(DEFAULT_UNANSWERED),
        }
    }
}

impl ClientOptions {
    /// Learns the longest heartbeat interval the path's NAT allows, within `bounds`, instead
    /// of heartbeating every [`heartbeat`](Self::heartbeat): fewer radio wake-ups wherever
    /// the NAT keeps bindings longer than the fixed interval, and a fall-back to
    /// `bounds.min` as soon as a push could have been lost. Needs a daemon that answers
    /// probes (PROTOCOL.md §8.4); against an older one the device heartbeats at `bounds.min`.
    pub fn adaptive_heartbeat(&mut self, bounds: AdaptiveHeartbeat) -> &mut Self {
        self.session.adaptive = Some(bounds);
        self
    }

    /// The interval the `Hello` asks for: the adaptive heartbeat's upper bound when it is
    /// on (the server then holds the device to no more), else the fixed interval.
    pub(crate) fn requested_heartbeat(&self) -> Duration {
        self.session.adaptive.as_ref().map_or(self.heartbeat, |adaptive| adaptive.max)
    }
}

/// The seed's "sliders": away after this long without activity, offline after that long.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdlePolicy {
    /// Turn `away` (idle) after this long without [`Client::activity`](crate::Client::activity).
    pub away_after: Option<Duration>,
    /// Appear `offline` after this long without activity.
    pub offline_after: Option<Duration>,
}

/// Exponential reconnect backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay. Default 500 ms.
    pub initial: Duration,
    /// Largest delay. Default 60 s.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(500), max: Duration::from_secs(60) }
    }
}

/// Where a device goes next after a failed attempt or a session that went down: the next
/// server at once while some server has not been tried since the last session was up,
/// else the backoff. `attempt` counts those failures (1 for the first).
pub(crate) fn next_attempt(backoff: &Backoff, servers: usize, attempt: u32) -> Duration {
    let servers = u32::try_from(servers.max(1)).unwrap_or(u32::MAX);
    if attempt < servers {
        return Duration::ZERO;
    }
    backoff.delay(attempt / servers - 1)
}

impl Backoff {
    /// The delay before attempt `attempt` (0-based): `min(max, initial · 2^attempt)`, scaled
    /// by a random factor in [0.5, 1) so that devices that failed together spread out.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.initial.saturating_mul(1u32 << attempt.min(20)).min(self.max);
        base.mul_f64(0.5 + fastrand::f64() / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_server_is_tried_at_once_before_the_backoff_grows_per_round() {
        let backoff = Backoff { initial: Duration::from_millis(400), max: Duration::from_secs(60) };
        // One server: the backoff from its first step, as without failover.
        let one: Vec<Duration> = (1..=3).map(|attempt| next_attempt(&backoff, 1, attempt)).collect();
        assert!((200..400).contains(&one[0].as_millis()), "{one:?}");
        assert!((400..800).contains(&one[1].as_millis()), "{one:?}");
        assert!((800..1600).contains(&one[2].as_millis()), "{one:?}");
        // Three servers: the other two at once, then one backoff step per failed round.
        assert_eq!(next_attempt(&backoff, 3, 1), Duration::ZERO);
        assert_eq!(next_attempt(&backoff, 3, 2), Duration::ZERO);
        assert!((200..400).contains(&next_attempt(&backoff, 3, 3).as_millis()));
        assert!((200..400).contains(&next_attempt(&backoff, 3, 5).as_millis()));
        assert!((400..800).contains(&next_attempt(&backoff, 3, 6).as_millis()));
        assert!(next_attempt(&backoff, 3, u32::MAX) <= backoff.max);
    }
}
