//! `presence-load flood`: junk at a daemon's QUIC port, from another process, at a chosen
//! rate or as fast as one socket can send, bounded in time and in packets.
//!
//! It answers one question: does a live session keep its presence while the daemon's UDP
//! port is flooded? Two kinds of junk cover what a spoofing or careless network peer can
//! send without a key:
//!
//! - **Initials**: 1,200-byte datagrams shaped like QUIC version 1 Initials (long header,
//!   type 0, random 8-byte connection ids, a matching length) with a random payload. Each
//!   makes the daemon derive Initial keys and try to decrypt; none can succeed.
//! - **Garbage**: datagrams of random length (1 to 1,400 bytes) with a short-header first
//!   byte: packets for connections that do not exist.
//!
//! The flood never runs unbounded: it stops at `duration` or `max_packets`, whichever comes
//! first, and it refuses a server that is not on loopback unless told otherwise.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::LoadError;

/// Longest flood.
pub const MAX_DURATION: Duration = Duration::from_secs(600);
/// Size of a junk Initial: the minimum a server accepts for a client's first datagram.
pub const INITIAL_LEN: usize = 1_200;

/// What to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FloodKind {
    /// Junk QUIC Initials.
    Initials,
    /// Garbage datagrams.
    Garbage,
    /// Both, alternating.
    Both,
}

/// One flood.
#[derive(Debug, Clone)]
pub struct FloodConfig {
    /// The daemon's QUIC address.
    pub server: SocketAddr,
    /// What to send.
    pub kind: FloodKind,
    /// Datagrams per second; `None` sends as fast as the socket takes them.
    pub rate: Option<f64>,
    /// Stop after this long.
    pub duration: Duration,
    /// Stop after this many datagrams.
    pub max_packets: u64,
    /// Allow a server that is not on loopback.
    pub allow_remote: bool,
}

impl FloodConfig {
    fn check(&self) -> Result<(), LoadError> {
        let mut problems = Vec::new();
        if self.rate.is_some_and(|rate| !(rate.is_finite() && rate > 0.0)) {
            problems.push("rate must be a positive number of datagrams per second".to_owned());
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            problems.push(format!("duration must be 1 to {} seconds", MAX_DURATION.as_secs()));
        }
        if self.max_packets == 0 {
            problems.push("max_packets must be greater than zero".to_owned());
        }
        if !problems.is_empty() {
            return Err(LoadError::Config(problems));
        }
        if !self.allow_remote && !self.server.ip().is_loopback() {
            return Err(LoadError::NotLoopback { target: self.server.to_string() });
        }
        Ok(())
    }
}

/// What a flood sent.
#[derive(Debug, Clone, Serialize)]
pub struct FloodReport {
    /// What was sent.
    pub kind: FloodKind,
    /// Datagrams the socket accepted.
    pub packets_sent: u64,
    /// Junk Initials among them.
    pub initials_sent: u64,
    /// Bytes the socket accepted.
    pub bytes_sent: u64,
    /// Sends the socket refused (a full send buffer, usually).
    pub send_errors: u64,
    /// How long it ran, seconds.
    pub seconds: f64,
    /// Datagrams per second achieved.
    pub packets_per_second: f64,
}

impl std::fmt::Display for FloodReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "flood: {} datagrams ({} junk Initials, {} bytes) in {:.1} s, {:.0} per second, {} send errors",
            self.packets_sent,
            self.initials_sent,
            self.bytes_sent,
            self.seconds,
            self.packets_per_second,
            self.send_errors
        )
    }
}

/// A deterministic junk source (xorshift64), so a flood is the same from run to run.
#[derive(Debug, Clone)]
pub struct Junk(u64);

impl Junk {
    /// A source seeded with `seed` (zero is replaced: xorshift needs a non-zero state).
    pub fn new(seed: u64) -> Junk {
        Junk(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    /// Eight bytes per step, so that an unpaced flood is limited by the socket, not by
    /// making junk.
    fn fill(&mut self, out: &mut Vec<u8>, len: usize) {
        let end = out.len() + len;
        while out.len() < end {
            let word = self.next().to_le_bytes();
            let take = (end - out.len()).min(word.len());
            out.extend_from_slice(&word[..take]);
        }
    }

    /// A datagram shaped like a QUIC v1 Initial with a random, undecryptable payload.
    pub fn initial(&mut self) -> Vec<u8> {
        let mut packet = Vec::with_capacity(INITIAL_LEN);
        packet.extend([0xc0 | (self.byte() & 0x0f), 0, 0, 0, 1, 8]);
        self.fill(&mut packet, 8);
        packet.push(8);
        self.fill(&mut packet, 8);
        packet.push(0); // no token
        let rest = INITIAL_LEN - packet.len() - 2;
        packet.extend([0x40 | (rest >> 8) as u8, rest as u8]);
        self.fill(&mut packet, rest);
        packet
    }

    /// A garbage datagram of `1..=1400` bytes with a short-header first byte.
    pub fn garbage(&mut self) -> Vec<u8> {
        let len = 1 + usize::from(self.byte()) * 5 % 1_400;
        let mut packet = Vec::with_capacity(len);
        self.fill(&mut packet, len);
        packet[0] = 0x40 | (packet[0] & 0x3f);
        packet
    }
}

/// Sends junk until the duration or the packet budget runs out. Blocking: run it on a
/// thread of its own (the binary's main thread).
pub fn run(config: &FloodConfig) -> Result<FloodReport, LoadError> {
    config.check()?;
    let bind = if config.server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let socket = UdpSocket::bind(bind).map_err(|source| LoadError::Bind { what: "flood socket", source })?;
    let mut junk = Junk::new(0x2545_f491_4f6c_dd1d);
    let start = Instant::now();
    let end = start + config.duration;
    let mut report = FloodReport {
        kind: config.kind,
        packets_sent: 0,
        initials_sent: 0,
        bytes_sent: 0,
        send_errors: 0,
        seconds: 0.0,
        packets_per_second: 0.0,
    };
    let mut attempts = 0u64;
    while attempts < config.max_packets {
        // Checking the clock every 64 datagrams keeps an unpaced flood at full speed.
        if attempts % 64 == 0 {
            let now = Instant::now();
            if now >= end {
                break;
            }
            if let Some(rate) = config.rate {
                let due = start + Duration::from_secs_f64(attempts as f64 / rate);
                if due > now {
                    std::thread::sleep((due - now).min(end - now));
                }
            }
        }
        let initial = match config.kind {
            FloodKind::Initials => true,
            FloodKind::Garbage => false,
            FloodKind::Both => attempts % 2 == 0,
        };
        let packet = if initial { junk.initial() } else { junk.garbage() };
        attempts += 1;
        match socket.send_to(&packet, config.server) {
            Ok(sent) => {
                report.packets_sent += 1;
                report.initials_sent += u64::from(initial);
                report.bytes_sent += sent as u64;
            }
            Err(_) => report.send_errors += 1,
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    report.packets_per_second = report.packets_sent as f64 / report.seconds.max(1e-9);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junk_is_shaped_as_promised() {
        let mut junk = Junk::new(7);
        for _ in 0..100 {
            let initial = junk.initial();
            assert_eq!(initial.len(), INITIAL_LEN);
            assert_eq!(initial[0] & 0xf0, 0xc0, "long header, type Initial");
            assert_eq!(initial[1..5], [0, 0, 0, 1], "QUIC version 1");
            let garbage = junk.garbage();
            assert!((1..=1_400).contains(&garbage.len()));
            assert_eq!(garbage[0] & 0xc0, 0x40, "short header");
        }
    }

    #[test]
    fn a_remote_server_or_an_unbounded_flood_is_refused() {
        let config = FloodConfig {
            server: "192.0.2.1:4433".parse().expect("addr"),
            kind: FloodKind::Both,
            rate: None,
            duration: Duration::from_secs(1),
            max_packets: 10,
            allow_remote: false,
        };
        assert!(matches!(run(&config), Err(LoadError::NotLoopback { .. })));
        let unbounded = FloodConfig { duration: Duration::ZERO, max_packets: 0, ..config };
        assert!(matches!(run(&unbounded), Err(LoadError::Config(problems)) if problems.len() == 2));
    }

    #[test]
    fn a_paced_flood_keeps_its_rate_and_budget() {
        let sink = UdpSocket::bind("127.0.0.1:0").expect("sink");
        let config = FloodConfig {
            server: sink.local_addr().expect("addr"),
            kind: FloodKind::Garbage,
            rate: Some(1_000.0),
            duration: Duration::from_secs(5),
            max_packets: 200,
            allow_remote: false,
        };
        let report = run(&config).expect("flood");
        assert_eq!(report.packets_sent + report.send_errors, 200);
        assert!(report.seconds >= 0.15, "200 at 1,000 per second take about 0.2 s: {report}");
    }
}
