//! The QUIC endpoint's UDP socket with a count of what arrives.
//!
//! quinn drops junk (garbage, Initials that do not decrypt) before the daemon sees a
//! connection, which is what makes a flood cheap to survive, but it counts nothing. This
//! wrapper counts every datagram received and those shaped like a QUIC Initial, so an
//! operator can see a flood that never became a handshake (`presence_udp_initials_total`
//! far above `presence_handshakes_total`). It adds two atomic increments per datagram.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

use crate::metrics::Metrics;

/// Counts datagrams on their way from the socket to quinn.
pub(crate) struct CountingSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    metrics: Arc<Metrics>,
}

impl CountingSocket {
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>, metrics: Arc<Metrics>) -> CountingSocket {
        CountingSocket { inner, metrics }
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
            for (buf, meta) in bufs.iter().zip(meta.iter()).take(*count) {
                let stride = meta.stride.max(1);
                let data = &buf[..meta.len.min(buf.len())];
                // With GRO one buffer holds several datagrams, `stride` bytes apart.
                for datagram in data.chunks(stride) {
                    self.metrics.udp_datagrams.inc();
                    if datagram.first().copied().is_some_and(looks_like_initial) {
                        self.metrics.udp_initials.inc();
                    }
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
}
