//! PUID derivation, and webhook batches encoded and signed as the fan-out does it.
//!
//! - `puid/derive`: `PuidKey::derive` for an app id and a user id of typical length (one
//!   HMAC-SHA256 and 16 bytes of base64url), paid once per (app, user) view.
//! - `webhook_batch/encode/N`: N presence events to JSON (`outbound::presence_event` and
//!   `outbound::encode`: the typed `WebhookEvent`, the daemon's own encoding) and spliced into the batch body (`fanout::batch_body`).
//! - `webhook_batch/encode_json_value/N`: the same through a `serde_json::Value` map
//!   (`json!`), as the daemon encoded presence events before: the same-run baseline.
//! - `webhook_batch/sign/N`: the batch's `webhook-id` (`fanout::message_id`) and its
//!   Standard Webhooks signature (`WebhookSecret::sign`, HMAC-SHA256 over id, timestamp and
//!   body) for an already encoded body.
//! - `webhook_batch/encode_and_sign/N`: both, what one POST costs before it hits the
//!   socket.
//!
//! N is 1 (a quiet app), 100 and 1,000 (the default `--webhook-max-events`). Throughput is
//! in events.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use presence_protocol::{AppId, Status};
use presenced::testing::outbound::{encode as encode_event, presence_event};
use presenced::testing::puid::PuidKey;
use presenced::testing::store::OutboxEntry;
use presenced::testing::table::PresenceEvent;
use presenced::testing::webhook::WebhookSecret;
use presenced::testing::webhook::fanout::{batch_body, message_id};

const APP: &str = "app_Zm9vYmFyYmF6cXV4";
const SIZES: [usize; 3] = [1, 100, 1_000];

fn puid(c: &mut Criterion) {
    let mut group = c.benchmark_group("puid");
    group.throughput(Throughput::Elements(1));
    let key = PuidKey::new(&[7; 32]).expect("32-byte secret");
    let user = "3f2c9a1e-5b7d-4c11-9e0a-7d1c9a52b6f4";
    group.bench_function("derive", |b| b.iter(|| key.derive(black_box(APP), black_box(user))));
    group.finish();
}

/// `n` presence events for distinct PUIDs, as the table emits them.
fn events(n: usize) -> Vec<PresenceEvent> {
    let key = PuidKey::new(&[7; 32]).expect("32-byte secret");
    (0..n)
        .map(|i| PresenceEvent {
            app_id: AppId::new(APP).expect("app id"),
            puid: key.derive(APP, &format!("user-{i}")),
            status: [Status::Online, Status::Away, Status::Unavailable][i % 3],
            message: if i % 4 == 0 { "on the train".to_owned() } else { String::new() },
            seq: 1_764_400_000_000_000 + i as u64,
            at_ms: 1_764_400_000_000 + i as u64,
        })
        .collect()
}

fn encode(events: &[PresenceEvent]) -> (Vec<OutboxEntry>, Vec<u8>) {
    let entries: Vec<OutboxEntry> = events
        .iter()
        .enumerate()
        .map(|(serial, event)| {
            let encoded = encode_event(&presence_event(event)).expect("a presence event encodes");
            OutboxEntry { key: encoded.key, serial: serial as u64, at_ms: encoded.at_ms, event: encoded.json }
        })
        .collect();
    let body = batch_body(APP, &entries);
    (entries, body)
}

/// The former encoding: a `json!` map per event.
fn encode_json_value(events: &[PresenceEvent]) -> (Vec<OutboxEntry>, Vec<u8>) {
    let entries: Vec<OutboxEntry> = events
        .iter()
        .enumerate()
        .map(|(serial, event)| {
            let json = serde_json::json!({
                "type": "presence",
                "puid": event.puid.as_str(),
                "status": event.status.as_str(),
                "message": event.message,
                "seq": event.seq,
                "at": event.at_ms,
            });
            let event = json.to_string().into_bytes();
            OutboxEntry { key: format!("p:{}", events[serial].puid), serial: serial as u64, at_ms: 0, event }
        })
        .collect();
    let body = batch_body(APP, &entries);
    (entries, body)
}

fn sign(secret: &WebhookSecret, entries: &[OutboxEntry], body: &[u8]) -> String {
    let id = message_id(APP, entries);
    secret.sign(&id, 1_764_400_000, body)
}

fn webhook_batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("webhook_batch");
    let secret = WebhookSecret::generate();
    for n in SIZES {
        let events = events(n);
        let (entries, body) = encode(&events);
        group.throughput(Throughput::Elements(n as u64));
        assert_eq!(encode_json_value(&events).1, body, "both encodings give the same bytes");
        group.bench_function(BenchmarkId::new("encode", n), |b| b.iter(|| encode(black_box(&events))));
        group.bench_function(BenchmarkId::new("encode_json_value", n), |b| {
            b.iter(|| encode_json_value(black_box(&events)))
        });
        group.bench_function(BenchmarkId::new("sign", n), |b| {
            b.iter(|| sign(&secret, black_box(&entries), black_box(&body)))
        });
        group.bench_function(BenchmarkId::new("encode_and_sign", n), |b| {
            b.iter(|| {
                let (entries, body) = encode(black_box(&events));
                (sign(&secret, &entries, &body), body)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, puid, webhook_batch);
criterion_main!(benches);
