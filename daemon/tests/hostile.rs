//! The bad-input battery: every kind of hostile or broken input a device, a network peer or
//! an AppService can send, each answered with a clear error (a QUIC close code, a protocol
//! `Error`, an HTTP status with a stable JSON `code`) while an honest device beside it
//! notices nothing ([`Honest::assert_unharmed`]: still online at its app, no offline or away
//! event at a real webhook receiver, a notification still round-trips).
//!
//! Inputs covered elsewhere and not repeated here: garbage UDP, a malformed frame, an
//! oversized length prefix and garbage datagrams inside a session
//! (`sessions.rs::garbage_from_one_peer_leaves_other_sessions_untouched`); forged, expired
//! and wrong-audience tokens, a token for another device, a Reauth naming another user
//! (`sessions.rs`); invalid JSON, unknown fields, wrong media type, out-of-range ttl, wrong
//! and missing API keys, oversized bodies (`appservice.rs::api_errors_are_json_with_stable_codes`
//! and `openapi.rs`). The state machine's answers to frames in the wrong phase are in
//! `protocol/tests/sim.rs`; here the same rule is shown end to end for 0-RTT data.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::honest::Honest;
use common::*;
use presence_protocol::*;
use presenced::settings::SettingsLayer;
use serde_json::{Value, json};

/// A deterministic byte source (xorshift64).
struct Noise(u64);

impl Noise {
    fn byte(&mut self) -> u8 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 as u8
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.byte()).collect()
    }
}

/// A datagram shaped like a QUIC v1 Initial (long header, type 0, version 1, 8-byte
/// connection ids, a length that matches) whose protected payload is random: it can never
/// decrypt.
fn junk_initial(noise: &mut Noise) -> Vec<u8> {
    let mut packet = vec![0xc0 | (noise.byte() & 0x0f), 0, 0, 0, 1, 8];
    packet.extend(noise.bytes(8));
    packet.push(8);
    packet.extend(noise.bytes(8));
    packet.push(0); // no token
    let rest = 1_200 - packet.len() - 2;
    packet.extend([0x40 | (rest >> 8) as u8, rest as u8]);
    packet.extend(noise.bytes(rest));
    packet
}

async fn start(layer: SettingsLayer) -> (TestDaemon, Honest) {
    let daemon = TestDaemon::start_with(layer).await;
    let honest = Honest::start(&daemon).await;
    (daemon, honest)
}

async fn wait_for_metric(daemon: &TestDaemon, name: &str, at_least: f64) {
    let reached = tokio::time::timeout(WAIT, async {
        while daemon.metric(name) < at_least {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if reached.is_err() {
        panic!("{name} did not reach {at_least}:\n{}", daemon.daemon.metrics().render());
    }
}

fn refusals(reason: &str) -> String {
    format!("presence_refusals_total{{reason=\"{reason}\"}}")
}

/// Sends `bytes` on a fresh control stream; returns the server's `Error` (if one came
/// before the end) and the connection's close code.
async fn send_bytes(daemon: &TestDaemon, bytes: &[u8]) -> (Option<Message>, Option<u64>) {
    let mut device = RawDevice::connect(daemon.daemon.quic_addr, &daemon.roots).await;
    device.send_raw(bytes).await;
    let answer = device.next_message().await;
    (answer, device.close_code().await)
}

fn assert_refused(answer: (Option<Message>, Option<u64>), code: ErrorCode, what: &str) {
    let (message, close) = answer;
    assert!(matches!(&message, Some(Message::Error(e)) if e.code == code), "{what}: {message:?}");
    assert_eq!(close, Some(u64::from(code.0)), "{what}: close code");
}

/// A frame around `body`, its length as the spec's varint prefix (LEB128).
fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut len = body.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(body);
    out
}

fn replace(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let at = haystack.windows(needle.len()).position(|w| w == needle).expect("needle present");
    [&haystack[..at], with, &haystack[at + needle.len()..]].concat()
}

#[tokio::test]
async fn junk_initials_and_garbage_udp_are_dropped_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (daemon, mut honest) = start(settings(dir.path())).await;
    let handshakes = daemon.metric("presence_handshakes_total");
    let datagrams = daemon.metric("presence_udp_datagrams_total");
    let initials = daemon.metric("presence_udp_initials_total");

    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("socket");
    let mut noise = Noise(0x2545_f491_4f6c_dd1d);
    for i in 0..1_000usize {
        let _ = socket.send_to(&junk_initial(&mut noise), daemon.daemon.quic_addr);
        // Garbage with a short-header first byte, of every length.
        let mut garbage = noise.bytes(1 + i % 1_400);
        garbage[0] = 0x40 | (garbage[0] & 0x3f);
        let _ = socket.send_to(&garbage, daemon.daemon.quic_addr);
        if i % 64 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    wait_for_metric(&daemon, "presence_udp_datagrams_total", datagrams + 2_000.0).await;
    assert!(daemon.metric("presence_udp_initials_total") >= initials + 1_000.0);
    assert_eq!(daemon.metric("presence_handshakes_total"), handshakes, "no junk became a handshake");
    // quinn drops most junk before it becomes an incoming connection; what gets that far
    // fails to decrypt at accept, in the accept loop, and is counted.
    let failed = daemon.metric("presence_handshakes_failed_total{reason=\"initial\"}");
    assert!(failed > 0.0 && failed <= 1_000.0, "{}", daemon.daemon.metrics().render());
    assert_eq!(daemon.metric("presence_retries_total"), 0.0, "junk never counted as handshakes in flight");
    honest.assert_unharmed(&daemon).await;
}

/// A client endpoint that offers `alpn` instead of Presence's.
fn endpoint_with_alpn(daemon: &TestDaemon, alpn: &[u8]) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    for root in &daemon.roots {
        roots.add(root.clone()).expect("root");
    }
    let mut tls =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).expect("endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

#[tokio::test]
async fn wrong_alpn_and_other_protocol_versions_are_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (daemon, mut honest) = start(settings(dir.path())).await;

    // ALPN carries the version (PROTOCOL.md §3): another protocol, or a newer Presence,
    // fails the TLS handshake with no_application_protocol (alert 120, QUIC 0x178).
    for alpn in [&b"h3"[..], b"presence/2"] {
        let endpoint = endpoint_with_alpn(&daemon, alpn);
        let connecting = endpoint.connect(daemon.daemon.quic_addr, "localhost").expect("connect");
        let error =
            tokio::time::timeout(WAIT, connecting).await.expect("answer in time").expect_err("refused");
        match error {
            quinn::ConnectionError::ConnectionClosed(close) => {
                assert_eq!(u64::from(close.error_code), 0x178, "{alpn:?}: {close:?}");
            }
            other => panic!("{alpn:?}: {other:?}"),
        }
    }

    // Hello of an older or newer version than the one negotiated.
    for version in [0, 2] {
        let token = daemon.token("mallory", "m1");
        let hello = Hello { version, ..hello(&token, "m1", Status::Online, &[]) };
        let (device, answer) = RawDevice::hello(daemon.daemon.quic_addr, &daemon.roots, hello).await;
        assert!(
            matches!(answer, Message::Error(ref e) if e.code == ErrorCode::UNSUPPORTED_VERSION),
            "version {version}: {answer:?}"
        );
        assert_eq!(device.close_code().await, Some(u64::from(ErrorCode::UNSUPPORTED_VERSION.0)));
    }

    // Pings of another version inside a good session are dropped and counted, never fatal.
    let token = daemon.token("mallory", "m2");
    let (device, answer) =
        RawDevice::hello(daemon.daemon.quic_addr, &daemon.roots, hello(&token, "m2", Status::Online, &[]))
            .await;
    assert!(matches!(answer, Message::Welcome(_)), "{answer:?}");
    let bad = daemon.metric("presence_bad_datagrams_total");
    for version in [0u8, 2, 3] {
        let ping = [version << 6, 1];
        device.connection.send_datagram(bytes::Bytes::copy_from_slice(&ping)).expect("datagram");
    }
    wait_for_metric(&daemon, "presence_bad_datagrams_total", bad + 3.0).await;
    assert!(device.connection.close_reason().is_none(), "the session lives on");
    honest.assert_unharmed(&daemon).await;
}

#[tokio::test]
async fn truncated_oversized_and_non_utf8_frames_close_with_clear_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (daemon, mut honest) = start(settings(dir.path())).await;
    let token = daemon.token("mallory", "phone");
    let good = encode_body(&Message::Hello(hello(&token, "phone", Status::Online, &[]))).expect("body");

    // A Hello cut short inside its token, framed at its shortened length.
    assert_refused(
        send_bytes(&daemon, &frame(&good[..good.len() / 2])).await,
        ErrorCode::MALFORMED_FRAME,
        "truncated",
    );
    // One byte over the maximum frame size.
    assert_refused(
        send_bytes(&daemon, &frame(&vec![0; limits::MAX_FRAME_LEN + 1])).await,
        ErrorCode::FRAME_TOO_LARGE,
        "oversized",
    );
    // Invalid UTF-8 in the device id.
    let latin1 = replace(&good, b"phone", b"ph\xf6ne");
    assert_refused(send_bytes(&daemon, &frame(&latin1)).await, ErrorCode::MALFORMED_FRAME, "invalid UTF-8");
    // A status message over the wire limit (300 bytes where 256 is the most).
    let mut long = hello(&token, "phone", Status::Online, &[]);
    long.message = StatusText::new("x".repeat(200)).expect("message");
    let body = encode_body(&Message::Hello(long)).expect("body");
    let over = replace(
        &body,
        &[&[0xc8, 0x01][..], &[b'x'; 200]].concat(),
        &[&[0xac, 0x02][..], &[b'x'; 300]].concat(),
    );
    assert_refused(send_bytes(&daemon, &frame(&over)).await, ErrorCode::MALFORMED_FRAME, "long message");
    // A visibility list over the server's announced limit (64), within the wire limit.
    let apps: Vec<String> = (0..65).map(|i| format!("app-{i}")).collect();
    let apps: Vec<&str> = apps.iter().map(String::as_str).collect();
    let wide = encode_frame(&Message::Hello(hello(&token, "phone", Status::Online, &apps))).expect("frame");
    assert_refused(send_bytes(&daemon, &wide).await, ErrorCode::LIMIT_EXCEEDED, "visibility in hello");
    // The same list mid-session.
    let (mut device, answer) =
        RawDevice::hello(daemon.daemon.quic_addr, &daemon.roots, hello(&token, "phone", Status::Online, &[]))
            .await;
    assert!(matches!(answer, Message::Welcome(_)), "{answer:?}");
    let list = AppList::new(apps.iter().map(|a| AppId::new(*a).expect("app")).collect()).expect("list");
    device.send_message(&Message::Visibility(Visibility { apps: list })).await;
    assert_refused(
        (device.next_message().await, device.close_code().await),
        ErrorCode::LIMIT_EXCEEDED,
        "visibility",
    );
    honest.assert_unharmed(&daemon).await;
}

#[tokio::test]
async fn a_device_flooding_pings_or_frames_is_closed_as_rate_limited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (daemon, mut honest) = start(settings(dir.path())).await;

    let token = daemon.token("mallory", "pinger");
    let (device, _) = RawDevice::hello(
        daemon.daemon.quic_addr,
        &daemon.roots,
        hello(&token, "pinger", Status::Online, &[]),
    )
    .await;
    // Paced just enough that the sender's small datagram queue does not drop them first.
    for seq in 0..400u32 {
        if device.connection.close_reason().is_some() {
            break;
        }
        device.ping(Status::Online, seq as u8, false);
        if seq % 8 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    assert_eq!(device.close_code().await, Some(u64::from(ErrorCode::RATE_LIMITED.0)));
    assert!(daemon.metric(&refusals("ping_rate")) > 0.0);

    let token = daemon.token("mallory", "talker");
    let (mut device, _) = RawDevice::hello(
        daemon.daemon.quic_addr,
        &daemon.roots,
        hello(&token, "talker", Status::Online, &[]),
    )
    .await;
    let frame = encode_frame(&Message::Visibility(Visibility { apps: AppList::default() })).expect("frame");
    device.send_raw(&frame.repeat(200)).await;
    let answer = device.next_message().await;
    assert_refused((answer, device.close_code().await), ErrorCode::RATE_LIMITED, "frame flood");
    assert_eq!(daemon.metric(&refusals("session_rate_limited")), 2.0);
    assert_eq!(daemon.metric("presence_sessions_closed_total{reason=\"rate_limited\"}"), 2.0);
    honest.assert_unharmed(&daemon).await;
}

async fn notify(daemon: &TestDaemon, key: &str, body: &Value) -> (u16, Value, Option<String>) {
    let response = daemon
        .http()
        .post(daemon.url("/v1/notifications"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("notify");
    let status = response.status().as_u16();
    let retry = response.headers().get("retry-after").map(|v| v.to_str().expect("ascii").to_owned());
    (status, response.json().await.expect("JSON body"), retry)
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test]
async fn a_device_that_never_reads_is_closed_as_a_slow_reader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layer = SettingsLayer {
        slow_reader_secs: Some(1),
        notify_user_rate: Some(100),
        notify_user_burst: Some(100),
        ..settings(dir.path())
    };
    let (daemon, mut honest) = start(layer).await;
    let app = daemon.register("pusher", "https://127.0.0.1:9/hook").await;
    let token = daemon.token("sloth", "phone");
    let (device, answer) = RawDevice::hello(
        daemon.daemon.quic_addr,
        &daemon.roots,
        hello(&token, "phone", Status::Online, &[&app.id]),
    )
    .await;
    assert!(matches!(answer, Message::Welcome(_)), "{answer:?}");
    let puid = daemon.daemon.table().puid(&app.id, "sloth").to_string();
    // About 4 KiB each: the device's 64 KiB stream window fills after some 16 of them, and
    // the device never reads.
    let data = "d".repeat(4_000);
    for _ in 0..40 {
        let (status, body, _) =
            notify(&daemon, &app.api_key, &json!({"to": [puid], "title": "t", "data": data})).await;
        assert_eq!(status, 201, "{body}");
    }
    assert_eq!(device.close_code().await, Some(u64::from(ErrorCode::PROTOCOL_VIOLATION.0)));
    assert_eq!(daemon.metric(&refusals("slow_reader")), 1.0);
    honest.assert_unharmed(&daemon).await;
}

#[tokio::test]
async fn notification_limits_answer_429_with_stable_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layer = SettingsLayer {
        notify_app_rate: Some(1),
        notify_app_burst: Some(10),
        notify_user_rate: Some(1),
        notify_user_burst: Some(2),
        notify_outstanding: Some(2),
        ..settings(dir.path())
    };
    let (daemon, mut honest) = start(layer).await;
    let app = daemon.register("spammer", "https://127.0.0.1:9/hook").await;
    let key = app.api_key.as_str();

    // Per recipient: two, then 429 with a wait.
    let unknown = json!({"to": ["AAAAAAAAAAAAAAAAAAAAAA"], "title": "t"});
    for _ in 0..2 {
        assert_eq!(notify(&daemon, key, &unknown).await.0, 201);
    }
    let (status, body, retry) = notify(&daemon, key, &unknown).await;
    assert_eq!((status, code(&body)), (429, "recipient_rate_limited"));
    assert!(retry.is_some_and(|s| s.parse::<u64>().is_ok_and(|s| s >= 1)));

    // Undecided notifications per app: two pending to live devices, then 429; an answer
    // frees a place.
    let mut bob =
        presence_client::Client::connect(daemon.options("bob", "phone", &[&app.id])).await.expect("bob");
    let carol =
        presence_client::Client::connect(daemon.options("carol", "phone", &[&app.id])).await.expect("carol");
    let table = daemon.daemon.table();
    let (bob_puid, carol_puid) =
        (table.puid(&app.id, "bob").to_string(), table.puid(&app.id, "carol").to_string());
    let pending = |puid: &str| json!({"to": [puid], "title": "t", "ttl_ms": 60_000});
    let (status, first, _) = notify(&daemon, key, &pending(&bob_puid)).await;
    assert_eq!((status, first["recipients"][0]["outcome"].as_str()), (201, Some("pending")), "{first}");
    assert_eq!(notify(&daemon, key, &pending(&carol_puid)).await.0, 201);
    let (status, body, _) = notify(&daemon, key, &pending(&carol_puid)).await;
    assert_eq!((status, code(&body)), (429, "too_many_outstanding"));
    let id: u64 = first["id"].as_str().expect("id").parse().expect("id");
    loop {
        if let presence_client::Event::Notification { id: shown, .. } = next_client_event(&mut bob).await {
            assert_eq!(shown, id);
            break;
        }
    }
    bob.accept(id).await.expect("accept");
    let freed = tokio::time::timeout(WAIT, async {
        loop {
            let (status, _, _) = notify(&daemon, key, &pending(&bob_puid)).await;
            if status == 201 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    freed.await.expect("the answer freed a place");

    // Per app: the burst runs out (a refused request counts too). Another app, whose
    // undecided notifications do not stand in the way.
    let app = daemon.register("spammer-2", "https://127.0.0.1:9/hook").await;
    let key = app.api_key.as_str();
    let mut limited = None;
    for i in 0..20 {
        let fresh = json!({"to": [format!("p{i:021}")], "title": "t"});
        let (status, body, retry) = notify(&daemon, key, &fresh).await;
        if status == 429 {
            limited = Some((code(&body).to_owned(), retry));
            break;
        }
    }
    let (limited_code, retry) = limited.expect("the app rate ran out within 20 requests");
    assert_eq!(limited_code, "notify_rate_limited");
    assert!(retry.is_some());
    for reason in ["notify_user_rate", "notify_outstanding", "notify_app_rate"] {
        assert!(daemon.metric(&refusals(reason)) >= 1.0, "{reason}");
    }

    // Duplicates: ids are the daemon's, so a body naming one is an unknown field; a
    // recipient named twice is notified once.
    let (status, body, _) =
        notify(&daemon, &honest.app.api_key, &json!({"id": 5, "to": ["x"], "title": "t"})).await;
    assert_eq!((status, code(&body)), (422, "invalid_request"), "{body}");
    // Strings that are not PUIDs, in a path and in a body.
    let response = daemon
        .http()
        .get(daemon.url(&format!("/v1/presence/{}", "x".repeat(2_000))))
        .bearer_auth(&honest.app.api_key)
        .send()
        .await
        .expect("call");
    assert_eq!(response.status(), 400);
    assert_eq!(code(&response.json().await.expect("json")), "invalid_puid");
    let (status, body, _) =
        notify(&daemon, &honest.app.api_key, &json!({"to": ["../etc"], "title": "t"})).await;
    assert_eq!((status, code(&body)), (422, "invalid_puid"), "{body}");
    // A body that is not UTF-8.
    let response = daemon
        .http()
        .post(daemon.url("/v1/notifications"))
        .bearer_auth(&honest.app.api_key)
        .header("content-type", "application/json")
        .body(&b"{\"to\": [\"\xff\xfe\"], \"title\": \"t\"}"[..])
        .send()
        .await
        .expect("call");
    assert_eq!(response.status(), 400);
    assert_eq!(code(&response.json().await.expect("json")), "invalid_json");
    bob.close().await;
    carol.close().await;
    honest.assert_unharmed(&daemon).await;
}

#[tokio::test]
async fn https_connection_cap_and_slow_clients_are_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layer = SettingsLayer {
        https_max_connections: Some(4),
        https_reserved_connections: Some(1),
        https_header_timeout_secs: Some(1),
        ..settings(dir.path())
    };
    let (daemon, mut honest) = start(layer).await;
    // Wait for the honest start-up's HTTPS connections to close (reqwest clients dropped).
    tokio::time::sleep(Duration::from_millis(300)).await;
    use tokio::io::AsyncReadExt;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(tokio::net::TcpStream::connect(daemon.daemon.https_addr).await.expect("connect"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Over the cap: the newcomer takes the place of the oldest idle connection, which is
    // closed at once, long before the header timeout.
    let extra = tokio::net::TcpStream::connect(daemon.daemon.https_addr).await.expect("connect");
    let read = tokio::time::timeout(Duration::from_millis(900), idle[0].read(&mut [0; 16])).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed before the header timeout: {read:?}");
    assert_eq!(daemon.metric(&refusals("https_idle_evicted")), 1.0);
    assert_eq!(daemon.metric(&refusals("https_connections")), 0.0, "nobody refused while some were idle");
    // Silent clients (slowloris), the newcomer too, are dropped after the header timeout.
    for stream in idle.iter_mut().skip(1).chain([extra].iter_mut()) {
        let read = tokio::time::timeout(WAIT, stream.read(&mut [0; 16])).await.expect("closed in time");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    assert_eq!(daemon.metric(&refusals("https_handshake_timeout")), 4.0);
    honest.assert_unharmed(&daemon).await;
}

#[tokio::test]
async fn handshakes_over_the_per_source_rate_get_a_retry_then_are_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layer = SettingsLayer { handshake_rate: Some(1), handshake_burst: Some(2), ..settings(dir.path()) };
    let (daemon, mut honest) = start(layer).await;
    let attempts = (0..8).map(|_| {
        let endpoint =
            presence_client::transport::endpoint("127.0.0.1:0".parse().expect("addr"), &daemon.roots)
                .expect("endpoint");
        let addr = daemon.daemon.quic_addr;
        async move {
            let connecting = endpoint.connect(addr, "localhost").expect("connect");
            tokio::time::timeout(Duration::from_millis(1_500), connecting).await.is_ok_and(|c| c.is_ok())
        }
    });
    let connected = futures_util_join(attempts).await;
    let through = connected.iter().filter(|ok| **ok).count();
    assert!(through < 8, "some attempts were held back: {connected:?}");
    assert!(daemon.metric(&refusals("handshake_retry")) >= 1.0);
    assert!(daemon.metric(&refusals("handshake_ignored")) >= 1.0);
    honest.assert_unharmed(&daemon).await;
}

/// Runs futures concurrently and collects their outputs in order.
async fn futures_util_join<F: std::future::Future<Output = bool> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<bool> {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.expect("task"));
    }
    out
}

#[tokio::test]
async fn a_token_opens_a_session_for_its_own_user_and_device_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (daemon, mut honest) = start(settings(dir.path())).await;
    let app = &honest.app;
    let alice = daemon.token("alice", "phone");

    // The device id must be the token's: alice's phone token cannot open her tablet.
    let (device, answer) = RawDevice::hello(
        daemon.daemon.quic_addr,
        &daemon.roots,
        hello(&alice, "tablet", Status::Online, &[&app.id]),
    )
    .await;
    assert!(matches!(answer, Message::Error(ref e) if e.code == ErrorCode::UNAUTHENTICATED), "{answer:?}");
    assert_eq!(device.close_code().await, Some(u64::from(ErrorCode::UNAUTHENTICATED.0)));

    // The Hello names no user: the session is the token's user, whatever else it claims.
    // With alice's token, the app sees alice online, and neither the honest user nor bob.
    let (mut device, answer) = RawDevice::hello(
        daemon.daemon.quic_addr,
        &daemon.roots,
        hello(&alice, "phone", Status::Online, &[&app.id]),
    )
    .await;
    assert!(matches!(answer, Message::Welcome(_)), "{answer:?}");
    device
        .send_message(&Message::Authorize(Authorize {
            app_id: AppId::new(&app.id).expect("app"),
            state: Text::default(),
        }))
        .await;
    let Some(Message::Authorized(authorized)) = device.next_message().await else { panic!("authorized") };
    let table = daemon.daemon.table();
    assert_eq!(authorized.puid, table.puid(&app.id, "alice"));
    assert_ne!(authorized.puid.as_str(), honest.puid);
    let bob = table.puid(&app.id, "bob").to_string();
    let polled: Value = daemon
        .http()
        .get(daemon.url(&format!("/v1/presence/{bob}")))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .expect("poll")
        .json()
        .await
        .expect("json");
    assert_eq!(polled["status"], "offline");
    // Alice's grant and presence went to the app; nothing about the honest user changed.
    honest.assert_unharmed(&daemon).await;
}

#[tokio::test]
async fn nothing_but_the_hello_is_acted_on_from_zero_rtt_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (daemon, mut honest) = start(settings(dir.path())).await;
    let app_id = AppId::new(&honest.app.id).expect("app");
    let endpoint = presence_client::transport::endpoint("127.0.0.1:0".parse().expect("addr"), &daemon.roots)
        .expect("endpoint");
    let token = daemon.token("replayer", "phone");
    let hello_frame =
        encode_frame(&Message::Hello(hello(&token, "phone", Status::Online, &[&honest.app.id])))
            .expect("frame");

    // A first, full session, for a resumption ticket.
    let connection =
        endpoint.connect(daemon.daemon.quic_addr, "localhost").expect("connect").await.expect("hs");
    let (mut send, mut recv) = connection.open_bi().await.expect("stream");
    send.write_all(&hello_frame).await.expect("hello");
    recv.read_chunk(4096, true).await.expect("read").expect("welcome");
    connection.close(0u32.into(), b"bye");
    let replayer = daemon.daemon.table().puid(&honest.app.id, "replayer").to_string();
    let offline = honest.receiver.event(|e| e["puid"] == replayer.as_str() && e["status"] == "offline").await;
    let offline_seq = offline["seq"].as_u64().expect("seq");
    let users = daemon.daemon.table().users();

    // Resumed: the Hello and an Authorize ride together in 0-RTT, as a replay would.
    let connecting = endpoint.connect(daemon.daemon.quic_addr, "localhost").expect("connect");
    let Ok((connection, accepted)) = connecting.into_0rtt() else { panic!("0-RTT is offered on resumption") };
    let (mut send, _recv) = connection.open_bi().await.expect("stream");
    let authorize =
        encode_frame(&Message::Authorize(Authorize { app_id, state: Text::default() })).expect("frame");
    send.write_all(&[hello_frame, authorize].concat()).await.expect("0-RTT data");
    assert!(accepted.await, "the server took the 0-RTT data");
    let closed = tokio::time::timeout(WAIT, connection.closed()).await.expect("closed in time");
    let quinn::ConnectionError::ApplicationClosed(close) = closed else { panic!("{closed:?}") };
    assert_eq!(close.error_code.into_inner(), u64::from(ErrorCode::PROTOCOL_VIOLATION.0));

    // Neither the Authorize nor the Hello took effect: no grant, no presence, no session.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = honest.receiver.drain();
    // Webhooks are at least once: a repeat of the first session's events may still come,
    // but nothing newer than its offline.
    let newer = |e: &&Value| e["type"] != "presence" || e["seq"].as_u64().is_none_or(|seq| seq > offline_seq);
    let mine: Vec<&Value> = events.iter().filter(|e| e["puid"] == replayer.as_str()).filter(newer).collect();
    assert!(mine.is_empty(), "the 0-RTT data was acted on: {mine:?}");
    assert_eq!(daemon.daemon.table().users(), users);
    honest.assert_unharmed(&daemon).await;
}
