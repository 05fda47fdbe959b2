//! The QUIC endpoint's UDP socket, with a count of what arrives and a cheap first filter.
//!
//! quinn drops junk (garbage, Initials that do not decrypt), but only after parsing it, and
//! it counts nothing. This wrapper counts every datagram received and those shaped like a
//! QUIC Initial, so an operator can see a flood that never became a handshake
//! (`presence_udp_initials_total` far above `presence_handshakes_total`).
//!
//! It also drops token-less Initials from a source address that sends them faster than
//! [`FLOOD_FACTOR`] times its handshake rate, before quinn spends any work on them: a
//! source that floods Initials cannot make the daemon derive keys and decrypt for each.
//! Below that, excess attempts get a QUIC Retry in the accept loop instead, which a
//! spoofed source cannot answer; Initials that carry a token (answers to a Retry) skip
//! this filter and meet the validated-address limit there.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

use crate::clock::Clock;
use crate::limit::HashedLimiter;
use crate::metrics::{Metrics, Refusal};
use crate::settings::Rate;

/// How many times its handshake rate a source may send token-less Initials before the
/// socket drops them unseen.
pub(crate) const FLOOD_FACTOR: u32 = 4;
/// Buckets in the socket's per-source table (fixed memory, like the accept loop's).
const SLOTS: usize = 8_192;

/// Counts datagrams on their way from the socket to quinn and drops Initial floods.
pub(crate) struct CountingSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    metrics: Arc<Metrics>,
    initials: HashedLimiter,
    clock: Clock,
}

impl CountingSocket {
    pub(crate) fn new(
        inner: Arc<dyn AsyncUdpSocket>,
        metrics: Arc<Metrics>,
        handshakes: Rate,
        clock: Clock,
    ) -> CountingSocket {
        let flood = Rate {
            rate: handshakes.rate.saturating_mul(FLOOD_FACTOR),
            burst: handshakes.burst.saturating_mul(FLOOD_FACTOR),
        };
        CountingSocket { inner, metrics, initials: HashedLimiter::new(flood, SLOTS, clock.now()), clock }
    }
}

impl fmt::Debug for CountingSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountingSocket").field("inner", &self.inner).finish_non_exhaustive()
    }
}

/// Whether a datagram starts like a QUIC version 1 Initial: long header (bit 7), fixed bit
/// (bit 6), packet type 0 (bits 5–4).
fn looks_like_initial(first: u8) -> bool {
    first & 0xf0 == 0xc0
}

/// Whether an Initial-shaped datagram carries a token (QUIC v1 long header: version,
/// connection ids, then the token length as a varint). Unparsable means no.
fn carries_token(datagram: &[u8]) -> bool {
    let dcid_len = usize::from(*datagram.get(5).unwrap_or(&0));
    let scid_at = 6 + dcid_len;
    let scid_len = usize::from(*datagram.get(scid_at).unwrap_or(&0));
    let token_at = scid_at + 1 + scid_len;
    let Some(&first) = datagram.get(token_at) else { return false };
    // The varint's value is zero only when every byte of it is zero.
    let len = 1usize << (first >> 6);
    datagram.get(token_at..token_at + len).is_some_and(|bytes| {
        bytes.iter().enumerate().any(|(i, &b)| if i == 0 { b & 0x3f != 0 } else { b != 0 })
    })
}

impl AsyncUdpSocket for CountingSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let result = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(count)) = &result {
            let now = self.clock.now();
            for (buf, meta) in bufs.iter().zip(meta.iter_mut()).take(*count) {
                let stride = meta.stride.max(1);
                let data = &buf[..meta.len.min(buf.len())];
                // With GRO one buffer holds several datagrams from one source, `stride`
                // bytes apart; the first decides for the batch.
                let mut initials = 0;
                for datagram in data.chunks(stride) {
                    self.metrics.udp_datagrams.inc();
                    if datagram.first().copied().is_some_and(looks_like_initial) {
                        self.metrics.udp_initials.inc();
                        initials += 1;
                    }
                }
                let first = &data[..stride.min(data.len())];
                if initials > 0
                    && first.first().copied().is_some_and(looks_like_initial)
                    && !carries_token(first)
                    && self.initials.check(&meta.addr.ip().to_canonical(), now).is_err()
                {
                    // quinn reads an empty buffer as nothing at all.
                    meta.len = 0;
                    self.metrics.refuse_n(Refusal::InitialFlood, initials);
                }
            }
        }
        result
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initials_are_long_header_type_zero() {
        assert!(looks_like_initial(0xc3));
        assert!(!looks_like_initial(0xe3), "handshake packet");
        assert!(!looks_like_initial(0x43), "short header");
        assert!(!looks_like_initial(0x83), "fixed bit clear");
    }

    #[test]
    fn tokens_are_found_after_the_connection_ids() {
        let mut initial = vec![0xc3, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0];
        assert!(!carries_token(&[&initial[..], &[0x00, 0x44]].concat()), "no token");
        assert!(carries_token(&[&initial[..], &[0x05, 1, 2, 3, 4, 5]].concat()), "5-byte token");
        assert!(carries_token(&[&initial[..], &[0x40, 0x50]].concat()), "two-byte length");
        assert!(!carries_token(&[&initial[..], &[0x40, 0x00]].concat()), "two-byte zero");
        initial.truncate(8);
        assert!(!carries_token(&initial), "cut short");
    }
}
