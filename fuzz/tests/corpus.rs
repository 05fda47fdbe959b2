//! Every committed seed runs clean through its target, without the fuzzer: `cargo test`.
//!
//! When a wire change breaks these, regenerate the seeds with `cargo run --example seeds`
//! and commit them.

use std::fs;
use std::path::Path;

fn run(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    let mut seeds = 0;
    for entry in fs::read_dir(&dir).expect("corpus directory") {
        let path = entry.expect("entry").path();
        check(&fs::read(&path).expect("seed"));
        seeds += 1;
    }
    assert!(seeds > 0, "no seeds in {}", dir.display());
}

#[test]
fn control_frame_seeds() {
    run("control_frame", presence_fuzz::control_frame);
}

#[test]
fn ping_seeds() {
    run("ping", presence_fuzz::ping);
}

#[test]
fn server_session_seeds() {
    run("server_session", presence_fuzz::server_session);
}

#[test]
fn client_session_seeds() {
    run("client_session", presence_fuzz::client_session);
}

/// The seed programs reach the states they are named for (so the fuzzer starts deep).
#[test]
fn session_seeds_reach_their_states() {
    let server = [
        ("handshake", "Hello("),
        ("notify_missed", "NotificationMissed { id: 3 }"),
        ("notify_answered", "NotifyResponse(NotifyResponse { id: 9"),
        ("silent_then_alive", "Silent, Alive"),
        ("status_ping_acked", "StatusChanged { status: Away, idle: true, message: None }"),
        ("structured_frames", "message: Some(\"aaaaa\")"),
        ("token_expiry", "token_expired"),
        ("authorize_revoke", "Revoke(Revoke"),
    ];
    for (seed, expected) in server {
        let outcome = presence_fuzz::server::run(&seed_bytes("server_session", seed));
        let events = format!("{:?}", outcome.events);
        assert!(events.contains(expected), "{seed} (stale seeds? cargo run --example seeds): {events}");
    }
    let client = [
        ("status_acked", "StatusAcked { seq: 1 }"),
        ("notify_expired", "NotificationExpired { id: 145 }"),
        ("notify_cancelled", "Cancelled("),
        ("go_away", "GoAway("),
        ("authorize", "Authorized("),
    ];
    for (seed, expected) in client {
        let outcome = presence_fuzz::client::run(&seed_bytes("client_session", seed));
        let events = format!("{:?}", outcome.events);
        assert!(events.contains(expected), "{seed} (stale seeds? cargo run --example seeds): {events}");
    }
    // A status change that is never acknowledged: three pings, then the control stream.
    let outcome = presence_fuzz::client::run(&seed_bytes("client_session", "status_retried_then_frame"));
    assert_eq!(outcome.transmits.len(), 5, "{:?}", outcome.transmits);
}

fn seed_bytes(target: &str, name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target).join(name);
    fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}
