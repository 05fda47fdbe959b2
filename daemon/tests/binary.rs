//! The `presenced` binary as an operator runs it: dev start-up, tokens, `/metrics` over
//! HTTPS, exit code 64 on a bad configuration, the SIGTERM drain, global flags after a
//! subcommand, and logs written to a pipe (no colour codes; JSON lines on request).

mod common;

#[path = "common/process.rs"]
mod process;
use common::receiver::Receiver;
use process::*;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use presence_client::{Client, ClientOptions, Event, transport};

#[tokio::test]
async fn dev_daemon_shows_a_live_session_in_metrics_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut daemon, info) = serve(dir.path());
    for file in
        ["tls/cert.pem", "tls/key.pem", "token-signing.pk8", "jwks.json", "puid-secret", "admin-token"]
    {
        assert!(dir.path().join(file).is_file(), "{file} created on first run");
    }

    let roots = transport::read_roots(&info.ca_cert).expect("roots");
    let mut options = ClientOptions::new(info.quic, roots, token(dir.path(), "alice", "phone"));
    options.visibility = vec!["chat".into()];
    let mut client = Client::connect(options).await.expect("connect");
    assert!(matches!(next_client_event(&mut client).await, Event::Up { .. }));

    let http = https_client(&info);
    let health: serde_json::Value = http
        .get(format!("{}/healthz", info.https))
        .send()
        .await
        .expect("healthz")
        .json()
        .await
        .expect("json");
    assert_eq!(health, serde_json::json!({"status": "ok"}), "the public /healthz tells no user count");
    let metrics = http.get(format!("{}/metrics", info.https)).send().await.expect("metrics");
    assert!(metrics.headers()["content-type"].to_str().expect("type").starts_with("text/plain"));
    let text = metrics.text().await.expect("text");
    assert_eq!(metric_value(&text, "presence_sessions{state=\"online\"}"), 1.0, "{text}");
    assert_eq!(metric_value(&text, "presence_users"), 1.0, "the user count is on /metrics");
    assert_eq!(metric_value(&text, "presence_handshakes_total"), 1.0);
    let missing = http.get(format!("{}/nope", info.https)).send().await.expect("404");
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "not_found");

    // SIGTERM: the device hears GoAway, the daemon drains and exits 0 within its bound.
    sigterm(&daemon);
    let go_away = next_client_event(&mut client).await;
    assert!(matches!(go_away, Event::GoAway { .. }), "{go_away:?}");
    let status = wait_exit(&mut daemon, Duration::from_secs(8));
    assert!(status.success(), "exit status {status:?}");
    drop(client);

    // A second start reuses the secrets: same certificate, and old tokens still verify.
    let cert = std::fs::read(dir.path().join("tls/cert.pem")).expect("cert");
    let (mut again, info) = serve(dir.path());
    assert_eq!(std::fs::read(&info.ca_cert).expect("cert"), cert);
    sigterm(&again);
    assert!(wait_exit(&mut again, Duration::from_secs(8)).success());
}

#[test]
fn bad_configuration_exits_64_and_lists_every_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("presenced.toml");
    std::fs::write(&config, "max_sessions = 0\n").expect("config");
    let output = Command::new(BIN)
        .args(["serve", "--drain-secs", "0", "--config"])
        .arg(&config)
        .env_remove("PRESENCED_DEV")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in ["--tls-cert", "--jwks", "max_sessions", "drain_secs"] {
        assert!(stderr.contains(needle), "{needle} not reported in {stderr}");
    }
    std::fs::write(&config, "no_such_setting = 1\n").expect("config");
    let output = Command::new(BIN).args(["serve", "--dev", "--config"]).arg(&config).output().expect("run");
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no_such_setting"));
    let output = Command::new(BIN).args(["serve", "--quic-listen", "not-an-address"]).output().expect("run");
    assert_eq!(output.status.code(), Some(64));
    let output = Command::new(BIN).args(["serve", "--dev", "--log-format", "xml"]).output().expect("run");
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--log-format"));
    std::fs::write(&config, "dev = true\nlog_format = \"xml\"\n").expect("config");
    let output = Command::new(BIN).args(["serve", "--config"]).arg(&config).output().expect("run");
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("log_format"));
}

#[test]
fn admin_flags_work_before_and_after_the_app_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut daemon, _info) = serve(dir.path());
    let apps = |args: &[&str]| {
        let output = Command::new(BIN).args(args).env_remove("PRESENCED_DATA_DIR").output().expect("run");
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice::<serde_json::Value>(&output.stdout).expect("one JSON object")
    };
    let data_dir = dir.path().to_str().expect("utf-8 path");
    // As a new user types it: the flag after the subcommand.
    let hook = "https://127.0.0.1:9/hook";
    let added = apps(&["apps", "add", "--name", "chat", "--webhook", hook, "--json", "--data-dir", data_dir]);
    let id = added["app_id"].as_str().expect("app_id");
    let listed = apps(&["apps", "list", "--data-dir", data_dir, "--json"]);
    assert_eq!(listed["apps"][0]["app_id"], id);
    // And before it, as before.
    let shown = apps(&["apps", "--data-dir", data_dir, "show", id, "--json"]);
    assert_eq!(shown["name"], "chat");
    // Without the flag the default directory has no dev.json: the flag really was used above.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let output = Command::new(BIN)
        .args(["apps", "list", "--json"])
        .current_dir(elsewhere.path())
        .env_remove("PRESENCED_DATA_DIR")
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("presenced-data"));
    sigterm(&daemon);
    assert!(wait_exit(&mut daemon, Duration::from_secs(8)).success());
}

/// Runs a dev daemon with its log on a pipe until it is up, stops it, and returns the log.
/// `format` is given as a flag, or (with `by_env`) as `PRESENCED_LOG_FORMAT`.
fn log_through_a_pipe(dir: &std::path::Path, format: &str, by_env: bool) -> String {
    let _ = std::fs::remove_file(dir.join("dev.json"));
    let mut child = Command::new(BIN)
        .args(["serve", "--dev", "--quic-listen", "127.0.0.1:0", "--https-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir)
        .args(["--drain-secs", "1", "--log", "info"])
        .args(if by_env { vec![] } else { vec!["--log-format", format] })
        .envs(by_env.then_some(("PRESENCED_LOG_FORMAT", format)))
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn presenced");
    let started = Instant::now();
    while presenced::credentials::DevInfo::load(dir).is_err() {
        assert!(started.elapsed() < WAIT, "dev.json not written in time");
        std::thread::sleep(Duration::from_millis(50));
    }
    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(8));
    assert!(status.success(), "exit status {status:?}");
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut log).expect("read log");
    log
}

#[test]
fn logs_on_a_pipe_have_no_colour_and_json_lines_parse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = log_through_a_pipe(dir.path(), "text", false);
    assert!(text.contains("presenced listening"), "{text}");
    assert!(text.contains("INFO"), "{text}");
    assert!(!text.contains('\u{1b}'), "no ANSI escape codes in a piped log: {text:?}");

    let json = log_through_a_pipe(dir.path(), "json", true);
    assert!(!json.contains('\u{1b}'), "{json:?}");
    let lines: Vec<serde_json::Value> = json
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}")))
        .collect();
    assert!(lines.len() >= 2, "{json}");
    for line in &lines {
        assert!(line["timestamp"].is_string(), "{line}");
        assert!(["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&line["level"].as_str().unwrap_or("")));
        assert!(line["fields"]["message"].is_string(), "{line}");
    }
    let listening = lines
        .iter()
        .find(|line| line["fields"]["message"] == "presenced listening")
        .expect("the start-up line");
    assert_eq!(listening["level"], "INFO");
    assert!(listening["fields"]["quic_addr"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")));
    assert_eq!(listening["fields"]["dev"], true);
    assert!(lines.iter().any(|line| line["fields"]["message"] == "drain finished"), "{json}");
}

#[tokio::test]
async fn undelivered_events_survive_kill_9_and_go_out_after_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut daemon, info) = serve(dir.path());
    let mut receiver = Receiver::start(&dir.path().join("tls")).await;
    receiver.status.store(500, std::sync::atomic::Ordering::Relaxed);
    let http = https_client(&info);
    let app_id = register_app(&info, "chat", &receiver.url()).await;

    // A device comes and goes while the receiver fails: the outbox holds its latest state.
    let roots = transport::read_roots(&info.ca_cert).expect("roots");
    let mut options = ClientOptions::new(info.quic, roots, token(dir.path(), "alice", "phone"));
    options.visibility = vec![app_id.clone()];
    let client = Client::connect(options).await.expect("connect");
    client.set_status(presence_protocol::Status::Away, Some("gone fishing".into())).await.expect("status");
    let depth = async || -> f64 {
        let text = http
            .get(format!("{}/metrics", info.https))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        metric_value(&text, &format!("presence_outbox_depth{{app=\"{app_id}\"}}"))
    };
    let started = Instant::now();
    while depth().await < 1.0 {
        assert!(started.elapsed() < WAIT, "event never reached the outbox");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give the group commit time to reach the disk, then kill without warning.
    tokio::time::sleep(Duration::from_millis(200)).await;
    daemon.kill().expect("kill -9");
    let _ = daemon.wait();
    drop(client);

    receiver.status.store(200, std::sync::atomic::Ordering::Relaxed);
    let (mut again, _) = serve(dir.path());
    let event = receiver.event(|e| e["type"] == "presence").await;
    assert_eq!((event["status"].as_str(), event["message"].as_str()), (Some("away"), Some("gone fishing")));
    // The crash lost the session's offline event: the app is told to reset, after the
    // state that was waiting.
    let reset = receiver.event(|e| e["type"] == "reset").await;
    // A presence `at` is the change's time to within a slot (2^20 µs) either way; a reset's
    // is the restart's own.
    assert!(reset["at"].as_u64().expect("at") + SLOT_MS >= event["at"].as_u64().expect("at"));
    let order: Vec<serde_json::Value> =
        receiver.seen.lock().expect("lock").iter().flat_map(|d| d.events()).collect();
    let position = |wanted: &serde_json::Value| order.iter().position(|e| e == wanted);
    assert!(position(&reset) > position(&event), "reset comes after the state that was waiting");
    sigterm(&again);
    assert!(wait_exit(&mut again, Duration::from_secs(8)).success());
}

#[tokio::test]
async fn devices_resume_in_0rtt_after_kill_9_and_the_outbox_drains() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut daemon, info) = serve(dir.path());
    let mut receiver = Receiver::start(&dir.path().join("tls")).await;
    receiver.status.store(500, std::sync::atomic::Ordering::Relaxed);
    let http = https_client(&info);
    let app_id = register_app(&info, "chat", &receiver.url()).await;

    // Two devices up (full handshakes: no ticket yet), each holding a resumption ticket.
    let roots = transport::read_roots(&info.ca_cert).expect("roots");
    let mut devices = Vec::new();
    for user in ["alice", "bob"] {
        let mut options = ClientOptions::new(info.quic, roots.clone(), token(dir.path(), user, "phone"));
        options.visibility = vec![app_id.clone()];
        options.heartbeat = Duration::from_secs(5);
        let mut client = Client::connect(options).await.expect("connect");
        let up = next_client_event(&mut client).await;
        assert!(matches!(up, Event::Up { zero_rtt: false, .. }), "{up:?}");
        devices.push(client);
    }
    // A change the receiver cannot take yet: it waits in the outbox.
    let changed_ms = unix_ms();
    devices[0]
        .set_status(presence_protocol::Status::Away, Some("gone fishing".into()))
        .await
        .expect("status");
    let depth = format!("presence_outbox_depth{{app=\"{app_id}\"}}");
    let started = Instant::now();
    while metric_value(&metrics_text(&http, &info).await, &depth) < 2.0 {
        assert!(started.elapsed() < WAIT, "events never reached the outbox");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What the outbox holds and costs is in /metrics too.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let text = metrics_text(&http, &info).await;
    assert!(metric_value(&text, "presence_outbox_entries") >= 2.0, "{text}");
    assert!(metric_value(&text, "presence_outbox_live_bytes") > 100.0, "{text}");
    assert!(
        metric_value(&text, "presence_outbox_disk_bytes") > metric_value(&text, "presence_outbox_live_bytes")
    );
    let age = metric_value(&text, &format!("presence_outbox_oldest_age_seconds{{app=\"{app_id}\"}}"));
    assert!(age > 0.0 && age < 60.0, "the oldest event waited {age} s");
    assert!(
        text.lines().any(|line| line == "presence_outbox_compactions_total 0"),
        "a small log is not compacted: {text}"
    );
    // Let the group commits (outbox and TLS sessions) reach the disk, then kill -9.
    tokio::time::sleep(Duration::from_millis(300)).await;
    daemon.kill().expect("kill -9");
    let _ = daemon.wait();
    let killed = Instant::now();
    let killed_ms = unix_ms();

    // The same data dir and ports.
    receiver.status.store(200, std::sync::atomic::Ordering::Relaxed);
    let quic = info.quic.to_string();
    let https = info.https.trim_start_matches("https://").to_owned();
    let (mut again, info) = serve_with(dir.path(), &quic, &https, &[]);
    assert_eq!(info.quic.to_string(), quic);

    // Each device's next heartbeat meets a stateless reset it trusts (the restarted
    // endpoint derives the same keys), and it comes back resuming in 0-RTT.
    for client in &mut devices {
        let down = next_client_event(client).await;
        assert!(matches!(down, Event::Down { retry_in: Some(_), .. }), "{down:?}");
        let up = next_client_event(client).await;
        assert!(matches!(up, Event::Up { zero_rtt: true, .. }), "resumed in 0-RTT after the restart: {up:?}");
    }
    println!("both devices back in 0-RTT {:?} after the kill", killed.elapsed());
    assert!(killed.elapsed() < Duration::from_secs(9), "the devices noticed the restart within a heartbeat");
    let text = metrics_text(&http, &info).await;
    // Both resumed (exact); the 0-RTT count is a lower bound (see the metric's doc).
    assert_eq!(metric_value(&text, "presence_tls_resumptions_total"), 2.0, "{text}");
    assert!(metric_value(&text, "presence_zero_rtt_accepted_total") <= 2.0, "{text}");
    assert_eq!(metric_value(&text, "presence_sessions{state=\"online\"}"), 1.0);
    assert_eq!(metric_value(&text, "presence_sessions{state=\"away\"}"), 1.0);

    // What waited in the outbox before the kill arrives, then the reset for the crash.
    let away = receiver.event(|e| e["type"] == "presence" && e["status"] == "away").await;
    assert_eq!(away["message"], "gone fishing");
    // The change's `at` (within a slot of it), not a reconnect's after the restart, which
    // comes a heartbeat (5 s) after the kill.
    assert!(
        away["at"].as_u64().expect("at") <= changed_ms.max(killed_ms) + SLOT_MS,
        "before the kill: {away}"
    );
    receiver.event(|e| e["type"] == "reset").await;
    for client in devices {
        client.close().await;
    }
    sigterm(&again);
    assert!(wait_exit(&mut again, Duration::from_secs(8)).success());
}

/// A presence event's `at` lies within one slot (2^20 µs) of the change, either way.
const SLOT_MS: u64 = 1_049;

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64
}
