//! Daemon memory per idle session, measured on the real binary: RSS with 1 and with 1,000
//! sessions. Ignored by default (it is a measurement, not a check); run it with
//! `cargo test --release -p presenced --test density -- --ignored --nocapture`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use presence_protocol::{Decoded, FrameDecoder, Message, Status, encode_frame};
use presenced::credentials::{DevInfo, dev_signer};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

async fn open_sessions(
    endpoint: &quinn::Endpoint,
    info: &DevInfo,
    dir: &Path,
    range: std::ops::Range<usize>,
) -> Vec<(quinn::Connection, quinn::SendStream, quinn::RecvStream)> {
    let signer = dev_signer(dir).expect("signer");
    let mut sessions = Vec::new();
    for i in range {
        let user = format!("user-{i}");
        let token = signer.mint(&user, "phone", unix_now(), 3_600);
        let connection = endpoint.connect(info.quic, "localhost").expect("connect").await.expect("handshake");
        let (mut send, mut recv) = connection.open_bi().await.expect("stream");
        let frame =
            encode_frame(&Message::Hello(hello(&token, "phone", Status::Online, &["chat"]))).expect("frame");
        send.write_all(&frame).await.expect("hello");
        let chunk = recv.read_chunk(4096, true).await.expect("read").expect("welcome");
        let mut data: &[u8] = &chunk.bytes;
        let answer = FrameDecoder::new().decode(&mut data).expect("decode");
        assert!(matches!(answer, Some(Decoded::Message(Message::Welcome(_)))), "{answer:?}");
        sessions.push((connection, send, recv));
    }
    sessions
}

#[tokio::test]
#[ignore = "measurement; run explicitly with --ignored --nocapture"]
async fn idle_session_rss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_presenced"))
        .args([
            "serve",
            "--dev",
            "--quic-listen",
            "127.0.0.1:0",
            "--https-listen",
            "127.0.0.1:0",
            "--log",
            "warn",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let started = Instant::now();
    let info = loop {
        if let Ok(info) = DevInfo::load(dir.path()) {
            break info;
        }
        assert!(started.elapsed() < WAIT);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let roots = presence_client::transport::read_roots(&info.ca_cert).expect("roots");
    let endpoint =
        presence_client::transport::endpoint("127.0.0.1:0".parse().expect("addr"), &roots).expect("endpoint");
    let pid = child.id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_kib(pid);
    let mut sessions = open_sessions(&endpoint, &info, dir.path(), 0..1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let one = rss_kib(pid);
    sessions.extend(open_sessions(&endpoint, &info, dir.path(), 1..1_000).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let thousand = rss_kib(pid);
    println!("daemon RSS: no sessions {idle} KiB, 1 session {one} KiB, 1000 sessions {thousand} KiB");
    println!("per idle session (1000 - 1) / 999: {:.1} KiB", (thousand - one) as f64 / 999.0);
    drop(sessions);
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let _ = child.wait();
}
