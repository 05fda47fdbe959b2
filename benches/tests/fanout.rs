//! `presence-fanout` end to end, small: events through the daemon's real fan-out (the
//! durable outbox, HTTPS, signatures) arrive at the receiver, all of them, verified, and the
//! coalescing case delivers one event per (app, PUID).

use std::time::Duration;

use presence_bench::fanout::{self, FanoutRun, StoreKind};

fn small(store: StoreKind, events: u64, puids: u64) -> FanoutRun {
    FanoutRun {
        events,
        puids,
        apps: 2,
        batch_window: Duration::from_millis(20),
        max_events: 100,
        timeout: Duration::from_secs(30),
        store,
        ..FanoutRun::default()
    }
}

#[test]
fn every_event_arrives_verified_through_the_durable_outbox() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config =
        FanoutRun { sample_every: Duration::from_millis(5), ..small(StoreKind::Embedded, 2_000, 1_000) };
    let report = fanout::run(&config, dir.path()).expect("run");
    assert!(!report.timed_out, "{report:?}");
    assert_eq!(report.expected, 2_000);
    assert_eq!(report.delivered, 2_000, "{report:?}");
    assert!(report.batches >= 20, "at most 100 events per POST: {report:?}");
    assert!(report.errors.is_empty(), "every signature verified: {report:?}");
    assert!(report.events_per_second > 0.0 && report.cpu_percent.process > 0.0, "{report:?}");
    assert!(report.store_bytes > 0, "real files: {report:?}");
    // The curve follows the run: several samples, counts that only grow, real sizes.
    let curve = &report.disk_curve;
    assert!(curve.len() >= 2, "{curve:?}");
    assert!(
        curve.windows(2).all(|w| w[0].seconds <= w[1].seconds
            && w[0].published <= w[1].published
            && w[0].delivered <= w[1].delivered),
        "{curve:?}"
    );
    assert!(curve.iter().all(|sample| sample.bytes > 0 && sample.delivered <= report.delivered), "{curve:?}");
    assert_eq!(
        report.peak_store_bytes,
        curve.iter().map(|s| s.bytes).max().unwrap_or(0).max(report.store_bytes)
    );
}

#[test]
fn changes_of_one_puid_coalesce_and_the_memory_store_behaves_alike() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 3,000 changes over 2 apps x 10 PUIDs: the receiver sees at most one event per PUID
    // per batch, and the run waits for the 20 distinct ones at least.
    let report = fanout::run(&small(StoreKind::Memory, 3_000, 10), dir.path()).expect("run");
    assert_eq!(report.expected, 20, "{report:?}");
    assert!(report.delivered >= 20 && report.delivered < 3_000, "{report:?}");
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(report.store_bytes, 0, "{report:?}");
}
