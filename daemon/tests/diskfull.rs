//! A full disk under the daemon's data directory, made real with a small tmpfs: presence
//! keeps being served, `/healthz` and `/metrics` say the webhook outbox cannot write, and
//! once space is back the outbox reopens its file and delivers the latest state.
//!
//! Mounting a tmpfs needs root, as CI runs; elsewhere the test fails and says so.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::receiver::Receiver;
use common::*;
use presence_client::Client;
use presence_protocol::Status;
use serde_json::Value;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a {size} tmpfs at {} failed ({status}): this test needs root (CI runs as root)",
            path.display()
        );
        Tmpfs(path.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros into `dir/filler` until the filesystem refuses: the disk is then full.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0usize;
    while file.write_all(&chunk).is_ok() {
        written += chunk.len();
        assert!(written < 1 << 30, "the tmpfs never filled up");
    }
    let _ = file.sync_all();
    path
}

async fn health(daemon: &TestDaemon) -> String {
    let body: Value =
        daemon.http().get(daemon.url("/healthz")).send().await.expect("healthz").json().await.expect("json");
    body["status"].as_str().expect("status").to_owned()
}

async fn metric(daemon: &TestDaemon, name: &str) -> f64 {
    let text =
        daemon.http().get(daemon.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    metric_value(&text, name)
}

#[tokio::test]
async fn a_full_disk_keeps_presence_served_and_the_latest_state_is_delivered_once_space_is_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let _tmpfs = Tmpfs::mount(&data, "24m");
    let daemon = TestDaemon::start(&data).await;
    let mut receiver = Receiver::start(&data.join("tls")).await;
    let app = daemon.register("disk", &receiver.url()).await;
    let alice = daemon.daemon.table().puid(&app.id, "alice");
    let phone = Client::connect(daemon.options("alice", "phone", &[&app.id])).await.expect("phone");
    receiver
        .event(|e| e["type"] == "presence" && e["puid"] == alice.as_str() && e["status"] == "online")
        .await;
    assert_eq!(health(&daemon).await, "ok");
    assert_eq!(metric(&daemon, "presence_outbox_writable").await, 1.0);

    let filler = fill(&data);
    // Each change is an outbox write; one of them soon needs a page the disk cannot give.
    let mut degraded = false;
    for i in 0..500 {
        let status = if i % 2 == 0 { Status::Away } else { Status::Online };
        phone.set_status(status, Some(format!("change {i}"))).await.expect("set status");
        tokio::time::sleep(Duration::from_millis(20)).await;
        if health(&daemon).await == "degraded" {
            degraded = true;
            break;
        }
    }
    assert!(degraded, "/healthz never said degraded while the disk was full");
    assert_eq!(metric(&daemon, "presence_outbox_writable").await, 0.0);

    // Presence is still served: a change is acknowledged and the poll API shows it.
    phone.set_status(Status::Unavailable, Some("while full".to_owned())).await.expect("set status");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let response = daemon
            .http()
            .get(daemon.url(&format!("/v1/presence/{alice}")))
            .bearer_auth(&app.api_key)
            .send()
            .await
            .expect("poll");
        let body: Value = response.json().await.expect("json");
        if body["status"] == "unavailable" && body["message"] == "while full" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the poll never showed the change: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(health(&daemon).await, "degraded", "still full: still degraded");

    // Space comes back: the outbox reopens its file, writes what waited, and delivers it.
    std::fs::remove_file(&filler).expect("free the disk");
    let event = tokio::time::timeout(
        3 * WAIT,
        receiver.event(|e| e["puid"] == alice.as_str() && e["message"] == "while full"),
    )
    .await
    .expect("the change made while the disk was full is delivered once space is back");
    assert_eq!(event["status"], "unavailable");
    let deadline = tokio::time::Instant::now() + WAIT;
    while health(&daemon).await != "ok" {
        assert!(tokio::time::Instant::now() < deadline, "/healthz stayed degraded after the disk was freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&daemon, "presence_outbox_writable").await, 1.0);
    drop(phone);
}
