//! The `presence` CLI against a real dev daemon on loopback: JSON lines out, commands in.

use std::process::Stdio;
use std::time::Duration;

use presence_protocol::Status;
use presenced::Daemon;
use presenced::settings::SettingsLayer;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn connect_prints_json_lines_and_obeys_stdin_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = SettingsLayer::dev_loopback(dir.path());
    let daemon = Daemon::start(settings.resolve().expect("settings")).await.expect("daemon");
    let info = daemon.dev_info.clone().expect("dev info");
    let app = daemon.apps().create("chat", "https://127.0.0.1:9/hook").await.expect("register app").app.id;
    let mut events = daemon.events();
    let signer = presenced::credentials::dev_signer(dir.path()).expect("signer");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let token = signer.mint("alice", "phone", now, 600);

    let mut cli = Command::new(env!("CARGO_BIN_EXE_presence"))
        .args(["connect", "--json", "--allow", &app, "--message", "hello there", "--server"])
        .arg(info.quic.to_string())
        .arg("--ca")
        .arg(&info.ca_cert)
        .arg("--token")
        .arg(&token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn presence");
    let mut stdin = cli.stdin.take().expect("stdin");
    let mut lines = BufReader::new(cli.stdout.take().expect("stdout")).lines();
    let mut next_line = async || -> serde_json::Value {
        let line = tokio::time::timeout(WAIT, lines.next_line()).await.expect("line in time").expect("read");
        serde_json::from_str(&line.expect("a line")).expect("JSON line")
    };

    let up = next_line().await;
    assert_eq!(up["event"], "up", "{up}");
    assert_eq!(up["heartbeat_ms"], 25_000);
    let online = tokio::time::timeout(WAIT, events.recv()).await.expect("event");
    assert_eq!((online.status, online.message.as_str()), (Status::Online, "hello there"));

    stdin.write_all(format!("authorize {app} invite-42\n").as_bytes()).await.expect("write");
    let authorized = next_line().await;
    assert_eq!(authorized["event"], "authorized", "{authorized}");
    assert_eq!(authorized["app_id"], app.as_str());
    assert_eq!(authorized["puid"], daemon.table().puid(&app, "alice").as_str());
    stdin.write_all(b"authorize app_unknown x\n").await.expect("write");
    let denied = next_line().await;
    assert_eq!(
        (denied["event"].as_str(), denied["code"].as_str()),
        (Some("denied"), Some("unknown_app")),
        "{denied}"
    );

    stdin.write_all(b"status away out for lunch\n").await.expect("write");
    let away = tokio::time::timeout(WAIT, events.recv()).await.expect("event");
    assert_eq!((away.status, away.message.as_str()), (Status::Away, "out for lunch"));

    stdin.write_all(b"frobnicate\n").await.expect("write");
    let error = next_line().await;
    assert_eq!(error["event"], "error", "{error}");

    stdin.write_all(b"quit\n").await.expect("write");
    let closed = next_line().await;
    assert_eq!(closed["event"], "closed", "{closed}");
    let status = tokio::time::timeout(WAIT, cli.wait()).await.expect("exit in time").expect("wait");
    assert!(status.success());
    let offline = tokio::time::timeout(WAIT, events.recv()).await.expect("event");
    assert_eq!(offline.status, Status::Offline, "a clean quit is offline at once");
    daemon.shutdown().await;
}

#[tokio::test]
async fn adaptive_heartbeat_flags_learn_up_to_the_bound_and_print_heartbeat_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(SettingsLayer::dev_loopback(dir.path()).resolve().expect("settings"))
        .await
        .expect("daemon");
    let info = daemon.dev_info.clone().expect("dev info");
    let signer = presenced::credentials::dev_signer(dir.path()).expect("signer");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let token = signer.mint("alice", "laptop", now, 600);

    let mut cli = Command::new(env!("CARGO_BIN_EXE_presence"))
        .args(["connect", "--json", "--adaptive-heartbeat", "--heartbeat-min", "1", "--heartbeat-max", "4"])
        .arg("--server")
        .arg(info.quic.to_string())
        .arg("--ca")
        .arg(&info.ca_cert)
        .arg("--token")
        .arg(&token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn presence");
    let mut lines = BufReader::new(cli.stdout.take().expect("stdout")).lines();
    let mut next_line = async || -> serde_json::Value {
        let line = tokio::time::timeout(WAIT, lines.next_line()).await.expect("line in time").expect("read");
        serde_json::from_str(&line.expect("a line")).expect("JSON line")
    };

    let up = next_line().await;
    assert_eq!(up["event"], "up", "{up}");
    // The Hello asked for the upper bound; the daemon raised it to its 5 s minimum.
    assert_eq!(up["heartbeat_ms"], 5_000);
    // On loopback every echo arrives: 2 s, 3 s, then the 4 s bound, where it settles.
    let mut proven = Vec::new();
    let settled = loop {
        let line = next_line().await;
        assert_eq!(line["event"], "heartbeat", "{line}");
        match line["cause"].as_str() {
            Some("echoed") => proven.push(line["delay_ms"].as_u64().expect("delay")),
            Some("settled") => break line,
            _ => panic!("unexpected {line}"),
        }
    };
    assert_eq!(proven, [2_000, 3_000, 4_000]);
    assert_eq!((settled["proven_ms"].as_u64(), settled["interval_ms"].as_u64()), (Some(4_000), Some(3_600)));
    drop(cli);
    daemon.shutdown().await;
}
