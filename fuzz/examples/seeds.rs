//! Writes the seed corpora: `cargo run --example seeds` from `fuzz/`.
//!
//! Seeds are real encoded frames of every message kind, pings of every shape, session
//! programs that walk the paths a real session takes, and for the daemon's decoders valid
//! and typical invalid tokens, API request programs, webhook secrets and URLs, and config
//! files. The files are committed; rerun this
//! after a wire change and commit the difference.

use std::fs;
use std::path::Path;

use presence_fuzz::{api, client, jwt, messages, outbox, server, settings, webhook};
use presence_protocol::{Message, Ping, PingKind, Status};

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut frames: Vec<(String, Vec<u8>)> = Vec::new();
    let kinds = messages::every_kind();
    for (name, message) in &kinds {
        frames.push((name.to_string(), messages::encode(message)));
    }
    // A whole session's worth of frames in one stream, a frame of a newer kind, a known
    // frame with a field appended by a later revision, and the largest Hello.
    let all: Vec<u8> = kinds.iter().flat_map(|(_, message)| messages::encode(message)).collect();
    frames.push(("stream_of_every_kind".into(), all));
    frames.push(("unknown_kind".into(), vec![0x04, 0x2a, 0xde, 0xad, 0x01]));
    let mut extended = presence_protocol::encode_body(&kinds[2].1).expect("fits");
    extended.extend_from_slice(&[0x07, 0x01]);
    frames
        .push(("status_with_new_field".into(), [messages::varint(extended.len() as u64), extended].concat()));
    let mut largest = messages::typical_hello();
    largest.token = presence_protocol::Token::new("t".repeat(presence_protocol::Token::MAX)).expect("max");
    frames.push(("largest_hello".into(), messages::encode(&Message::Hello(largest))));
    write(&root.join("control_frame"), &frames)?;

    let mut pings = Vec::new();
    for (i, status) in Status::ALL.into_iter().enumerate() {
        let heartbeat = Ping::heartbeat(status, i % 2 == 1, i as u8);
        pings.push((format!("heartbeat_{status}"), heartbeat.encode().to_vec()));
        let change = Ping { ack_requested: true, seq: 200 + i as u8, ..heartbeat };
        pings.push((format!("change_{status}"), change.encode().to_vec()));
        let ack = Ping { kind: PingKind::Ack, ack_requested: false, ..change };
        pings.push((format!("ack_{status}"), ack.encode().to_vec()));
    }
    pings.push((
        "heartbeat_with_reserved_bytes".into(),
        [&Ping::heartbeat(Status::Away, true, 9).encode()[..], &[0, 0]].concat(),
    ));
    write(&root.join("ping"), &pings)?;

    let owned =
        |seeds: Vec<(&str, Vec<u8>)>| seeds.into_iter().map(|(n, s)| (n.to_owned(), s)).collect::<Vec<_>>();
    write(&root.join("server_session"), &owned(server::seeds()))?;
    write(&root.join("client_session"), &owned(client::seeds()))?;
    write(&root.join("jwt"), &owned(jwt::seeds()))?;
    write(&root.join("api_request"), &owned(api::seeds()))?;
    write(&root.join("webhook_secret"), &owned(webhook::secret_seeds()))?;
    write(&root.join("webhook_url"), &owned(webhook::url_seeds()))?;
    write(&root.join("settings_toml"), &owned(settings::seeds()))?;
    write(&root.join("outbox_log"), &owned(outbox::seeds()))?;
    Ok(())
}

/// Replaces a corpus directory's contents with `seeds`, checking each against its target.
fn write(dir: &Path, seeds: &[(String, Vec<u8>)]) -> std::io::Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    fs::create_dir_all(dir)?;
    for (name, bytes) in seeds {
        fs::write(dir.join(name), bytes)?;
    }
    println!("{}: {} seeds", dir.display(), seeds.len());
    Ok(())
}
