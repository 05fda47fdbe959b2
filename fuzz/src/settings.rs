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
    // The committed seed itself, which the daemon's own test checks sets every key: one
    // list to keep up to date, not two.
    let full = include_str!("../corpus/settings_toml/full");
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
