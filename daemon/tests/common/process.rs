//! The `presenced` binary as a child process: start it in dev mode, mint tokens with its
//! CLI, stop it with SIGTERM (or `kill -9` through [`Child::kill`]).

#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use presenced::credentials::DevInfo;

use crate::common::WAIT;

pub const BIN: &str = env!("CARGO_BIN_EXE_presenced");

/// Starts `presenced serve --dev` on loopback ports chosen by the OS, waiting for dev.json.
/// The caller owns the child and waits for it (after SIGTERM).
pub fn serve(dir: &Path) -> (Child, DevInfo) {
    serve_with(dir, "127.0.0.1:0", "127.0.0.1:0", &[])
}

/// [`serve`] on the given QUIC and HTTPS addresses (a restart on the same ports), with
/// extra environment variables (an `LD_PRELOAD` that fakes the clock).
pub fn serve_with(dir: &Path, quic: &str, https: &str, env: &[(&str, &str)]) -> (Child, DevInfo) {
    spawn(dir, quic, https, env, &[])
}

/// [`serve`] with extra `serve` flags.
pub fn serve_args(dir: &Path, args: &[&str]) -> (Child, DevInfo) {
    spawn(dir, "127.0.0.1:0", "127.0.0.1:0", &[], args)
}

#[allow(clippy::zombie_processes)]
fn spawn(dir: &Path, quic: &str, https: &str, env: &[(&str, &str)], args: &[&str]) -> (Child, DevInfo) {
    let _ = std::fs::remove_file(dir.join("dev.json"));
    let mut child = Command::new(BIN)
        .args(["serve", "--dev", "--quic-listen", quic, "--https-listen", https])
        .arg("--data-dir")
        .arg(dir)
        .args(["--drain-secs", "3", "--log", "warn"])
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn presenced");
    let started = Instant::now();
    loop {
        if let Ok(info) = DevInfo::load(dir) {
            return (child, info);
        }
        if started.elapsed() > WAIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("dev.json not written in time");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A device token from `presenced token` (one hour).
pub fn token(dir: &Path, user: &str, device: &str) -> String {
    let output = Command::new(BIN)
        .args(["token", "--user", user, "--device", device, "--ttl", "1h", "--data-dir"])
        .arg(dir)
        .output()
        .expect("run presenced token");
    assert!(output.status.success(), "token failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8").trim().to_owned()
}

pub fn https_client(info: &DevInfo) -> reqwest::Client {
    presenced::credentials::https_client(&info.ca_cert).expect("https client")
}

pub fn sigterm(child: &Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
}

pub fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(started.elapsed() < within, "daemon did not exit within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET /metrics` of a daemon, as text.
pub async fn metrics_text(http: &reqwest::Client, info: &DevInfo) -> String {
    http.get(format!("{}/metrics", info.https)).send().await.expect("metrics").text().await.expect("text")
}

/// Registers an app through the admin API of a daemon process; returns its id.
pub async fn register_app(info: &DevInfo, name: &str, webhook: &str) -> String {
    let created = create_app(info, name, webhook).await;
    created["app_id"].as_str().expect("app id").to_owned()
}

/// Registers an app through the admin API of a daemon process; returns the whole answer
/// (its id, API key and webhook secret).
pub async fn create_app(info: &DevInfo, name: &str, webhook: &str) -> serde_json::Value {
    https_client(info)
        .post(format!("{}/v1/admin/apps", info.https))
        .bearer_auth(&info.admin_token)
        .json(&serde_json::json!({"name": name, "webhook_url": webhook}))
        .send()
        .await
        .expect("admin API")
        .json()
        .await
        .expect("json")
}
