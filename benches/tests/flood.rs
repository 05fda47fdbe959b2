//! The "done when" of the hardening issue: a live session keeps its presence through a
//! flood of junk QUIC Initials and garbage datagrams sent at full speed from another
//! process (`presence-load flood`, unpaced). The honest device is watched at a real HTTPS
//! webhook receiver (no offline or away event), by the daemon's ping counter (its
//! heartbeats keep arriving) and by a notification round trip in the middle of the flood.
//! The daemon's own counters must show the junk arrived and was refused.
//!
//! The harness is the daemon's test harness (`daemon/tests/common`), included by path so
//! both crates test with the same daemon, receiver and honest device.

#[path = "../../daemon/tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::honest::Honest;
use common::{TestDaemon, settings};
use presenced::settings::SettingsLayer;

/// How long the flood runs: more than two heartbeat intervals of the honest device (5 s).
const FLOOD_SECS: u64 = 12;
/// The daemon's grace past the heartbeat interval. A flood that fills the daemon's socket
/// buffer makes the kernel drop datagrams, honest ones too, and a heartbeat is a datagram
/// that is never resent; the grace (15 s by default) is what absorbs one lost heartbeat.
/// At 6 s here, two heartbeats in a row would have to be lost for the device to go offline.
const GRACE_SECS: u64 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_session_keeps_its_presence_through_a_junk_flood_from_another_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layer = SettingsLayer { heartbeat_grace_secs: Some(GRACE_SECS), ..settings(dir.path()) };
    let daemon = TestDaemon::start_with(layer).await;
    let mut honest = Honest::start(&daemon).await;
    let metric = |name: &str| daemon.metric(name);
    let (pings, datagrams, initials, handshakes) = (
        metric("presence_pings_received_total"),
        metric("presence_udp_datagrams_total"),
        metric("presence_udp_initials_total"),
        metric("presence_handshakes_total"),
    );

    let started = Instant::now();
    let flood = tokio::process::Command::new(env!("CARGO_BIN_EXE_presence-load"))
        .args(["flood", "--server", &daemon.daemon.quic_addr.to_string(), "--kind", "both", "--unpaced"])
        .args(["--duration", &FLOOD_SECS.to_string(), "--max-packets", "20000000", "--json"])
        .kill_on_drop(true)
        .output();
    let flood = tokio::spawn(flood);
    // Mid-flood: the honest session still answers a notification and is still online.
    tokio::time::sleep(Duration::from_secs(3)).await;
    honest.assert_unharmed(&daemon).await;
    let output = tokio::time::timeout(Duration::from_secs(FLOOD_SECS + 20), flood)
        .await
        .expect("the flood ends by itself")
        .expect("task")
        .expect("presence-load runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("JSON line")).expect("report JSON");
    let sent = report["packets_sent"].as_f64().expect("packets_sent");
    assert!(started.elapsed() >= Duration::from_secs(FLOOD_SECS));
    assert!(sent > 10_000.0, "a full-speed flood: {report}");

    // The daemon saw the junk, and none of it became a handshake.
    let received = metric("presence_udp_datagrams_total") - datagrams;
    let junk_initials = metric("presence_udp_initials_total") - initials;
    println!("daemon received {received} of {sent} datagrams, {junk_initials} shaped as Initials");
    assert!(received >= sent / 100.0, "the junk reached the daemon: {received} of {sent}");
    assert!(junk_initials > 0.0);
    let dropped = metric("presence_refusals_total{reason=\"initial_flood\"}");
    println!("{dropped} junk Initials dropped at the socket before quinn parsed them");
    assert!(dropped > 0.0, "one source far over its handshake rate is cut off at the socket");
    assert_eq!(metric("presence_handshakes_total"), handshakes, "no junk became a handshake");
    // Heartbeats kept arriving through the flood (one every 5 s).
    assert!(metric("presence_pings_received_total") > pings, "heartbeats were counted during the flood");
    // And after it: still online, nothing lost, a notification round-trips.
    honest.assert_unharmed(&daemon).await;
    assert_eq!(metric("presence_sessions{state=\"online\"}"), 1.0);
    honest.client.close().await;
}
