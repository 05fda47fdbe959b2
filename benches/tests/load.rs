//! The load generator end to end against an in-process dev daemon: 50 devices, a few
//! seconds of status changes, notification probes and reconnects, and a report that says
//! every device came up, every webhook was timed and nothing went wrong.

use std::time::{Duration, Instant};

use presence_bench::load::{self, LoadConfig};
use presenced::Daemon;
use presenced::settings::SettingsLayer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sessions_report_webhook_latencies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layer = SettingsLayer { drain_secs: Some(1), ..SettingsLayer::dev_loopback(dir.path()) };
    let daemon = Daemon::start(layer.resolve().expect("settings")).await.expect("daemon starts");
    let info = daemon.dev_info.clone().expect("dev info");

    let mut config = LoadConfig::new(daemon.quic_addr, info.ca_cert.clone(), dir.path().to_path_buf());
    config.sessions = 50;
    config.ramp = 200.0;
    config.heartbeat = Duration::from_secs(5);
    config.changes = 25.0;
    config.duration = Duration::from_secs(3);
    config.endpoints = 2;
    config.reconnects = 1.0;
    config.notify_every = Some(Duration::from_millis(500));
    let started = Instant::now();
    let report = load::run(config).await.expect("load run");
    let took = started.elapsed();
    println!("{report}");

    assert_eq!(report.sessions_established, 50, "{report}");
    assert_eq!(report.sessions_failed, 0, "{report}");
    assert_eq!(report.sessions_lost, 0, "{report}");
    assert!(report.status_changes_sent > 0, "{report}");
    assert!(report.status_change_to_webhook_ms.count > 0, "{report}");
    assert_eq!(report.status_changes_unconfirmed, 0, "{report}");
    assert!(report.notification_round_trip_ms.count > 0, "{report}");
    assert!(report.pings_sent >= report.status_changes_sent, "{report}");
    assert!(report.errors.is_empty(), "{report}");
    assert!(took < Duration::from_secs(15), "run took {took:?}");

    // The JSON form: one object with the documented fields, nulls where nothing was read
    // (an in-process daemon without --daemon-pid and without process metrics).
    let json = serde_json::to_string(&report).expect("serializes");
    let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert!(!json.contains('\n'), "one line");
    assert_eq!(value["sessions_established"], 50);
    assert!(value["status_change_to_webhook_ms"]["p99_ms"].as_f64().is_some_and(|p99| p99 > 0.0));
    assert!(value["handshake_full_ms"]["p50_ms"].is_f64());
    assert!(value["daemon"]["rss_per_session_bytes"].is_null());
    assert!(value["baseline"].is_null());
    assert!(value["generator"]["cpu_percent_steady"].is_f64());
    assert!(value["machine"]["cores"].as_u64().is_some_and(|cores| cores > 0));
    assert!(value["udp_drops"]["daemon_socket"].is_u64(), "a loopback daemon's socket is visible");
    assert!(value["errors"].as_object().is_some_and(|errors| errors.is_empty()));

    daemon.shutdown().await;
}
