//! The settings target: the operator's TOML configuration file
//! (`presenced::settings::SettingsLayer`).

use presenced::settings::SettingsLayer;

/// Parses `data` as the `--config` file and resolves it over the defaults. Never a panic;
/// a file that resolves also resolves under flags that override nothing (the layering is
/// neutral), and resolving twice gives the same answer.
pub fn settings_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(file) = toml::from_str::<SettingsLayer>(text) else { return };
    let once = format!("{:?}", file.clone().resolve());
    let layered = format!("{:?}", SettingsLayer::default().over(file).resolve());
    assert_eq!(once, layered, "an empty layer on top changes nothing");
}

/// Seed files: every key set, the dev minimum, and the typical mistakes.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let full = r#"data_dir = "/var/lib/presenced"
quic_listen = "0.0.0.0:4433"
https_listen = "[::]:8443"
dev = false
tls_cert = "/etc/presenced/cert.pem"
tls_key = "/etc/presenced/key.pem"
jwks = "/etc/presenced/jwks.json"
puid_secret_file = "/etc/presenced/puid-secret"
max_sessions = 200000
retry_threshold = 256
session_store = 200000
heartbeat_grace_secs = 15
handshake_timeout_secs = 10
idle_timeout_secs = 1860
drain_secs = 10
log = "info,presenced=debug"
webhook_window_ms = 250
webhook_max_events = 1000
webhook_max_bytes = 262144
webhook_in_flight = 4
webhook_timeout_secs = 10
webhook_allow = ["10.0.0.0/8", "fd00::/8"]
admin_remote = false
api_rate = 100
api_burst = 200
udp_buffer = 8388608
log_format = "json"
handshake_rate = 500
handshake_burst = 1000
session_frame_rate = 10
session_frame_burst = 50
session_ping_rate = 5
session_ping_burst = 20
slow_reader_secs = 30
token_leeway_secs = 30
notify_app_rate = 50
notify_app_burst = 100
notify_user_rate = 1
notify_user_burst = 10
notify_outstanding = 10000
https_max_connections = 4096
https_header_timeout_secs = 10
metrics_remote = false
"#;
    vec![
        ("full", full.as_bytes().to_vec()),
        ("dev", b"dev = true\nquic_listen = \"127.0.0.1:0\"\nhttps_listen = \"127.0.0.1:0\"\n".to_vec()),
        (
            "mistakes",
            b"dev = true\ndrain_secs = 0\nlog = \"=[\"\nwebhook_allow = [\"10.0.0.0/33\"]\napi_rate = 0\n"
                .to_vec(),
        ),
    ]
}
