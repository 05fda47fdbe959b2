//! A wall-clock step under a live daemon: the real binary runs under libfaketime with only
//! the wall clock faked (`DONT_FAKE_MONOTONIC=1`), and the test moves that clock an hour
//! forward, then two hours back, while devices stay connected.
//!
//! What the daemon promises, and this test checks:
//! - Timers run on the monotonic clock: heartbeat grace, handshake and batch windows do not
//!   see the step, so no session drops and no presence flaps.
//! - `seq` keeps increasing per PUID even when the clock goes back (the high-water mark).
//! - A live session keeps the token lifetime it was accepted with, counted on the monotonic
//!   clock: a step forward does not end it early, nor does a step back lengthen it. Every
//!   new verification (a connection, a reauth) uses the wall clock as it now is, so a token
//!   that expired by the new clock is refused.
//! - The same after a crash and restart with the clock stepped back: the daemon records
//!   the highest `seq` and starts above it.
//! - Webhooks keep flowing; their `webhook-timestamp` and events' `at` follow the daemon's
//!   wall clock (a receiver with a correct clock and a 5-minute tolerance would refuse
//!   signatures from a daemon whose clock is an hour off: that is the clock's fault to fix).
//!
//! Skipped, with a message, where libfaketime is not installed (Debian: `faketime`).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[path = "common/process.rs"]
mod process;
use common::receiver::Receiver;
use common::*;
use presence_client::{Client, ClientError, ClientOptions, Event, transport};
use presence_protocol::{ErrorCode, Status};
use presenced::credentials::{DevInfo, dev_signer};
use process::*;

const LIBFAKETIME: [&str; 3] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
];
const HOUR_MS: i64 = 3_600_000;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as i64
}

/// Moves the daemon's wall clock to `offset` seconds from the real one, and waits until
/// libfaketime has read it (it caches the file for a second).
async fn set_offset(file: &Path, offset: i64) {
    std::fs::write(file, format!("{offset:+}\n")).expect("faketime file");
    tokio::time::sleep(Duration::from_millis(2_200)).await;
}

fn device(info: &DevInfo, dir: &Path, user: &str, ttl_secs: u64, message: &str) -> ClientOptions {
    let token = dev_signer(dir).expect("signer").mint(user, "phone", unix_now(), ttl_secs);
    let roots = transport::read_roots(&info.ca_cert).expect("roots");
    let mut options = ClientOptions::new(info.quic, roots, token);
    options.heartbeat = Duration::from_secs(5);
    options.message = message.to_owned();
    options
}

/// Collects a client's events for `quiet`; fails on any sign of the session ending.
async fn stays_up(client: &mut Client, quiet: Duration, who: &str) {
    let deadline = tokio::time::Instant::now() + quiet;
    while let Ok(event) = tokio::time::timeout_at(deadline, client.next_event()).await {
        let event = event.expect("client running");
        assert!(
            !matches!(event, Event::Down { .. } | Event::GoAway { .. }),
            "{who}'s session ended across the clock step: {event:?}"
        );
    }
}

/// The `at` of an event, as an offset from the real clock now, in hours (rounded).
fn hours_off(event: &serde_json::Value) -> i64 {
    let at = event["at"].as_i64().expect("at");
    (at - now_ms() + HOUR_MS / 2).div_euclid(HOUR_MS)
}

#[tokio::test]
async fn a_wall_clock_step_drops_no_session_and_keeps_seqs_increasing() {
    let Some(library) = LIBFAKETIME.iter().map(PathBuf::from).find(|path| path.exists()) else {
        println!(
            "SKIPPED: libfaketime not found (apt-get install faketime); the clock-step test did not run"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = dir.path().join("faketime");
    std::fs::write(&clock, "+0\n").expect("faketime file");
    let library = library.to_string_lossy().into_owned();
    let clock_path = clock.to_string_lossy().into_owned();
    let env = [
        ("LD_PRELOAD", library.as_str()),
        ("FAKETIME_TIMESTAMP_FILE", clock_path.as_str()),
        ("FAKETIME_CACHE_DURATION", "1"),
        ("DONT_FAKE_MONOTONIC", "1"),
    ];
    let (mut daemon, info) = serve_with(dir.path(), "127.0.0.1:0", "127.0.0.1:0", &env);
    let mut receiver = Receiver::start(&dir.path().join("tls")).await;
    let app = register_app(&info, "chat", &receiver.url()).await;

    // Alice's token is good for three hours, Bob's for thirty minutes.
    let mut alice = device(&info, dir.path(), "alice", 3 * 3_600, "a");
    alice.visibility = vec![app.clone()];
    let mut bob = device(&info, dir.path(), "bob", 30 * 60, "b");
    bob.visibility = vec![app.clone()];
    let mut alice = Client::connect(alice).await.expect("connect");
    let mut bob = Client::connect(bob).await.expect("connect");
    for client in [&mut alice, &mut bob] {
        assert!(matches!(next_client_event(client).await, Event::Up { .. }));
    }
    let seq = |event: &serde_json::Value| event["seq"].as_u64().expect("seq");
    let a0 = receiver.event(|e| e["message"] == "a").await;
    let b0 = receiver.event(|e| e["message"] == "b").await;
    assert_eq!(hours_off(&a0), 0);

    // One hour forward.
    set_offset(&clock, 3_600).await;
    alice.set_status(Status::Away, None).await.expect("status");
    let a1 = receiver.event(|e| e["message"] == "a").await;
    assert_eq!(a1["status"], "away");
    assert_eq!(hours_off(&a1), 1, "the daemon's wall clock moved (is libfaketime working?): {a1}");
    assert!(seq(&a1) > seq(&a0));
    // A new connection is verified by the new clock: a fresh 30-minute token has expired.
    match Client::connect(device(&info, dir.path(), "carol", 30 * 60, "c")).await {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, Some(ErrorCode::TOKEN_EXPIRED)),
        other => panic!("expected a refusal for an expired token, got {:?}", other.map(|_| "a session")),
    }
    // Bob's live session keeps the lifetime it was accepted with, past a heartbeat.
    stays_up(&mut bob, Duration::from_secs(6), "bob").await;
    stays_up(&mut alice, Duration::from_millis(100), "alice").await;

    // Two hours back: an hour behind the real clock.
    set_offset(&clock, -3_600).await;
    alice.set_status(Status::Online, None).await.expect("status");
    bob.set_status(Status::Unavailable, None).await.expect("status");
    let a2 = receiver.event(|e| e["message"] == "a").await;
    let b1 = receiver.event(|e| e["message"] == "b").await;
    assert_eq!((a2["status"].as_str(), b1["status"].as_str()), (Some("online"), Some("unavailable")));
    assert_eq!(hours_off(&a2), -1, "{a2}");
    assert!(seq(&a2) > seq(&a1), "seq went back with the clock: {} after {}", seq(&a2), seq(&a1));
    assert!(seq(&b1) > seq(&b0));
    // Tokens minted by the real clock are not "from the future" to the daemon's checks.
    let mut dave = Client::connect(device(&info, dir.path(), "dave", 30 * 60, "d")).await.expect("connect");
    assert!(matches!(next_client_event(&mut dave).await, Event::Up { .. }));
    stays_up(&mut alice, Duration::from_secs(6), "alice").await;
    stays_up(&mut bob, Duration::from_millis(100), "bob").await;

    // Nobody flapped: the receiver saw exactly the changes made, and no one offline.
    let events: Vec<serde_json::Value> =
        receiver.seen.lock().expect("lock").iter().flat_map(|d| d.events()).collect();
    assert!(events.iter().all(|e| e["status"] != "offline"), "a presence flap: {events:?}");
    let timestamp: i64 =
        receiver.seen.lock().expect("lock").last().expect("delivery").timestamp.parse().expect("ts");
    assert_eq!(
        (timestamp * 1_000 - now_ms() + HOUR_MS / 2).div_euclid(HOUR_MS),
        -1,
        "webhook-timestamp follows the daemon's clock"
    );
    let http = https_client(&info);
    let text = metrics_text(&http, &info).await;
    assert_eq!(metric_value(&text, "presence_sessions{state=\"online\"}"), 2.0, "{text}");
    assert_eq!(metric_value(&text, "presence_sessions{state=\"unavailable\"}"), 1.0, "{text}");

    // A crash while the clock is behind, and a restart on it: the seqs of the new run
    // start above the old run's, which followed the clock while it was an hour ahead.
    dave.close().await;
    bob.close().await;
    daemon.kill().expect("kill -9");
    let _ = daemon.wait();
    let quic = info.quic.to_string();
    let https = info.https.trim_start_matches("https://").to_owned();
    let (mut daemon, _) = serve_with(dir.path(), &quic, &https, &env);
    loop {
        // Alice's next heartbeat meets a stateless reset and she reconnects.
        if let Event::Up { .. } = next_client_event(&mut alice).await {
            break;
        }
    }
    let a3 = receiver.event(|e| e["message"] == "a").await;
    assert_eq!(hours_off(&a3), -1, "{a3}");
    assert!(seq(&a3) > seq(&a2), "seq went back across the restart: {} after {}", seq(&a3), seq(&a2));

    alice.close().await;
    sigterm(&daemon);
    assert!(wait_exit(&mut daemon, Duration::from_secs(8)).success());
}
