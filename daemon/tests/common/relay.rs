//! A UDP relay between one device and the daemon that logs every datagram it forwards, in
//! order and by direction: the only way to see from outside how many QUIC packets a burst
//! took (QUIC encrypts everything else).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;

/// Which way a datagram went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToServer,
    ToDevice,
}

pub struct Relay {
    /// Where the device connects.
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<(Direction, usize)>>>,
    /// Set: nothing is forwarded either way any more, as when the server's machine dies.
    cut: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(server: SocketAddr) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind relay"));
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind relay"));
        back.connect(server).await.expect("connect relay");
        let addr = front.local_addr().expect("relay addr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (to_server, to_device) = (log.clone(), log.clone());
        let (front2, back2) = (front.clone(), back.clone());
        let device = Arc::new(Mutex::new(None::<SocketAddr>));
        let device2 = device.clone();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (cut_up, cut_down) = (cut.clone(), cut.clone());
        let is_cut = |cut: &std::sync::atomic::AtomicBool| cut.load(std::sync::atomic::Ordering::Relaxed);
        let upstream = async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((len, from)) = front.recv_from(&mut buf).await {
                if is_cut(&cut_up) {
                    continue;
                }
                *device.lock().expect("lock") = Some(from);
                to_server.lock().expect("lock").push((Direction::ToServer, len));
                let _ = back.send(&buf[..len]).await;
            }
        };
        let downstream = async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok(len) = back2.recv(&mut buf).await {
                if is_cut(&cut_down) {
                    continue;
                }
                let Some(device) = *device2.lock().expect("lock") else { continue };
                to_device.lock().expect("lock").push((Direction::ToDevice, len));
                let _ = front2.send_to(&buf[..len], device).await;
            }
        };
        let task = tokio::spawn(async move {
            tokio::join!(upstream, downstream);
        });
        Relay { addr, log, cut, task }
    }

    /// From now on forwards nothing, either way: the server goes silent, as a killed node's
    /// machine does (no reset, no ICMP: just nothing).
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many datagrams the log holds so far (a mark for [`Relay::to_server_before_reply`]).
    pub fn mark(&self) -> usize {
        self.log.lock().expect("lock").len()
    }

    /// Datagrams the device sent after `mark` and before the server's first datagram after
    /// it: with a quiet connection, the packets that carried what the device queued at the
    /// mark (the server cannot answer what it has not received).
    pub fn to_server_before_reply(&self, mark: usize) -> usize {
        let log = self.log.lock().expect("lock");
        log[mark..].iter().take_while(|(direction, _)| *direction == Direction::ToServer).count()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
