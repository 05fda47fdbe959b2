//! Codec and session hot-path benches for `presence-protocol`.
//!
//! - `encode` / `decode`: typical `Hello`, `Status` and `Notify` through `encode_frame` and
//!   `FrameDecoder::decode` (throughput in bytes of frame).
//! - `ping`: the two-byte datagram's encode and decode.
//! - `server_session`: one datagram into an accepted `ServerSession`, with the events and
//!   transmits drained, for a steady-state heartbeat (no event, no answer) and for a status
//!   change (one event, one `Ack`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use presence_bench::fixtures;
use presence_protocol::{FrameDecoder, Message, Ping, Status, encode_frame};

fn messages() -> [(&'static str, Message); 3] {
    [
        ("hello", fixtures::typical_hello()),
        ("status", fixtures::typical_status()),
        ("notify", fixtures::typical_notify()),
    ]
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for (name, message) in messages() {
        let len = encode_frame(&message).expect("fixture encodes").len();
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(name, |b| b.iter(|| encode_frame(black_box(&message)).expect("encodes")));
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for (name, message) in messages() {
        let frame = encode_frame(&message).expect("fixture encodes");
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut input = black_box(&frame[..]);
                FrameDecoder::new().decode(&mut input).expect("decodes").expect("one whole frame")
            })
        });
    }
    group.finish();
}

fn ping(c: &mut Criterion) {
    let mut group = c.benchmark_group("ping");
    group.throughput(Throughput::Elements(1));
    let ping = fixtures::heartbeat();
    let bytes = ping.encode();
    group.bench_function("encode", |b| b.iter(|| black_box(&ping).encode()));
    group.bench_function("decode", |b| b.iter(|| Ping::decode(black_box(&bytes)).expect("decodes")));
    group.finish();
}

fn server_session(c: &mut Criterion) {
    let mut group = c.benchmark_group("server_session");
    group.throughput(Throughput::Elements(1));
    let interval = Duration::from_secs(60);

    // The per-ping hot path: the device's next heartbeat, same status, no answer.
    let mut now = Instant::now();
    let mut session = fixtures::accepted_server(now);
    let heartbeat = fixtures::heartbeat().encode();
    group.bench_function("heartbeat", |b| {
        b.iter(|| {
            now += interval;
            session.handle_datagram(now, black_box(&heartbeat));
            while let Some(event) = session.poll_event() {
                black_box(event);
            }
            while let Some(transmit) = session.poll_transmit() {
                black_box(transmit);
            }
        })
    });
    assert_eq!(session.bad_datagrams(), 0, "every heartbeat was taken");

    // A status change by datagram: a newer sequence number, one event, one Ack back.
    let mut now = Instant::now();
    let mut session = fixtures::accepted_server(now);
    let mut seq = session.status_seq();
    group.bench_function("status_change", |b| {
        b.iter(|| {
            now += Duration::from_secs(1);
            seq = seq.wrapping_add(1);
            let status = if seq % 2 == 0 { Status::Online } else { Status::Away };
            let change = Ping { ack_requested: true, ..Ping::heartbeat(status, false, seq) }.encode();
            session.handle_datagram(now, black_box(&change));
            while let Some(event) = session.poll_event() {
                black_box(event);
            }
            while let Some(transmit) = session.poll_transmit() {
                black_box(transmit);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, encode, decode, ping, server_session);
criterion_main!(benches);
