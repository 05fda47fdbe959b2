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

#[test]
fn jwt_seeds() {
    run("jwt", presence_fuzz::jwt);
}

#[test]
fn api_request_seeds() {
    run("api_request", presence_fuzz::api_request);
}

#[test]
fn webhook_secret_seeds() {
    run("webhook_secret", presence_fuzz::webhook_secret);
}

#[test]
fn webhook_url_seeds() {
    run("webhook_url", presence_fuzz::webhook_url);
}

#[test]
fn settings_toml_seeds() {
    run("settings_toml", presence_fuzz::settings_toml);
}

/// The API seed programs get the answers they are named for: every operation succeeds in
/// one of them, and the bad ones are refused with the documented statuses.
#[test]
fn api_seeds_reach_their_answers() {
    let expected: [(&str, &[u16]); 8] = [
        ("operator_endpoints", &[200, 200, 200]),
        ("presence", &[200, 200]),
        ("notify_then_get", &[201, 200]),
        ("admin_lifecycle", &[201, 200, 200, 200]),
        ("admin_list_remove", &[201, 200, 204]),
        ("bad_bodies", &[422, 422, 400, 415]),
        ("bad_credentials", &[401, 403, 401, 401]),
        ("bad_routes", &[405, 404, 400, 405]),
    ];
    for (seed, statuses) in expected {
        let answers = presence_fuzz::api::run(&seed_bytes("api_request", seed));
        let got: Vec<u16> = answers.iter().map(|(_, status)| *status).collect();
        assert_eq!(got, statuses, "{seed} (stale seeds? cargo run --example seeds): {answers:?}");
    }
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

#[test]
fn outbox_log_seeds() {
    run("outbox_log", presence_fuzz::outbox_log);
}
