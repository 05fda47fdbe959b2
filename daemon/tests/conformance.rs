//! Where PROTOCOL.md and the daemon once disagreed (issue 11), checked end to end over real
//! QUIC on loopback: ping bursts packed into one packet, devices without DATAGRAM support,
//! the token leeway, the shutdown close and its webhooks, Welcome's clock, and the points the
//! spec left vague (idle devices as apps see them, empty `Notify.data`, Acks and Echoes sent
//! to the server). PROTOCOL.md §15 names these tests.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::receiver::Receiver;
use common::relay::Relay;
use common::*;
use presence_protocol::server::DEFAULT_PING_BURST as DEFAULT_SESSION_PING_BURST;
use presence_protocol::{
    EchoKind, EchoPing, ErrorCode, Message, Ping, PingKind, Status, limits, limits::MAX_PING_LEN,
};
use presenced::settings::SettingsLayer;

/// A transport that queues as many datagrams as a test asks for, both ways (the client
/// crate's, like a real device's, holds a handful).
fn roomy_transport() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.datagram_receive_buffer_size(Some(1 << 16)).datagram_send_buffer_size(1 << 16);
    // No MTU probes: they would be packets of their own among those the relay counts.
    transport.mtu_discovery_config(None);
    transport
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64
}

/// The seqs of the `Ack`s that arrive until `quiet` passes without one.
async fn acks(device: &RawDevice, quiet: Duration) -> BTreeSet<u8> {
    let mut seqs = BTreeSet::new();
    while let Ok(Ok(payload)) = tokio::time::timeout(quiet, device.connection.read_datagram()).await {
        if let Ok(ping) = Ping::decode(&payload) {
            if ping.kind == PingKind::Ack {
                assert!(!ping.ack_requested, "an Ack never asks for an Ack (PROTOCOL.md §8.1)");
                seqs.insert(ping.seq);
            }
        }
    }
    seqs
}

/// One round of the burst measurement: a fresh device (a full ping bucket) queues `count`
/// ack-requesting heartbeats back to back, without awaiting, so quinn packs them into as
/// few packets as fit. Returns (packets they took, Acks received).
async fn burst(daemon: &TestDaemon, user: &str, count: u8) -> (usize, usize) {
    let relay = Relay::start(daemon.daemon.quic_addr).await;
    let mut device = RawDevice::connect_with(relay.addr, &daemon.roots, roomy_transport()).await;
    let token = daemon.token(user, "phone");
    device.send_message(&Message::Hello(hello(&token, "phone", Status::Online, &[]))).await;
    assert!(matches!(device.next_message().await, Some(Message::Welcome(_))));
    // Quiet: every ACK of the handshake and of Welcome has gone, so the next packets from the
    // device are the burst's.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mark = relay.mark();
    for seq in 1..=count {
        device.ping(Status::Online, seq, true);
    }
    let acked = acks(&device, Duration::from_millis(500)).await;
    let packets = relay.to_server_before_reply(mark);
    let expected: BTreeSet<u8> = (1..=count.min(DEFAULT_SESSION_PING_BURST as u8)).collect();
    assert_eq!(acked, expected, "{count} pings in {packets} packet(s): every one within the burst is acked");
    (packets, acked.len())
}

#[tokio::test]
async fn pings_packed_in_one_packet_are_all_answered_within_the_burst() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = TestDaemon::start(dir.path()).await;
    println!("pings in one packet | packets | acks | ping_rate refusals | datagram_buffer drops");
    let (mut refused, mut lost) = (0.0, 0.0);
    for count in [1u8, 8, 16, 20, 32] {
        let (packets, acked) = burst(&daemon, &format!("user{count}"), count).await;
        assert_eq!(packets, 1, "the {count} pings shared one QUIC packet");
        let limited = daemon.metric("presence_refusals_total{reason=\"ping_rate\"}") - refused;
        refused += limited;
        let dropped = daemon.metric("presence_refusals_total{reason=\"datagram_buffer\"}") - lost;
        lost += dropped;
        println!("{count:>19} | {packets:>7} | {acked:>4} | {limited:>18} | {dropped:>21}");
        // The session's burst limit, not quinn's buffer, is what refuses: and it counts.
        assert_eq!(limited as usize, usize::from(count) - acked);
        assert_eq!(dropped, 0.0, "quinn dropped nothing");
    }
}

#[tokio::test]
async fn datagrams_quinn_drops_are_counted() {
    // A burst larger than the buffer (sized for twice the ping burst) overflows it: quinn
    // drops the oldest, and the daemon counts each one it never got to read.
    let dir = tempfile::tempdir().expect("tempdir");
    let layer = SettingsLayer { session_ping_burst: Some(1), ..settings(dir.path()) };
    let daemon = TestDaemon::start_with(layer).await;
    let buffer = presenced::testing::quic::datagram_buffer(1);
    let mut device = RawDevice::connect_with(daemon.daemon.quic_addr, &daemon.roots, roomy_transport()).await;
    let token = daemon.token("alice", "phone");
    device.send_message(&Message::Hello(hello(&token, "phone", Status::Online, &[]))).await;
    assert!(matches!(device.next_message().await, Some(Message::Welcome(_))));
    // Pings of the largest size, as many as fill the buffer twice, in one packet.
    let cost = MAX_PING_LEN + std::mem::size_of::<bytes::Bytes>();
    let count = (2 * buffer / cost) as u8;
    for seq in 1..=count {
        let ping = Ping { ack_requested: true, ..Ping::heartbeat(Status::Online, false, seq) }.encode();
        let mut payload = ping.to_vec();
        payload.resize(MAX_PING_LEN, 0);
        device.connection.send_datagram(payload.into()).expect("datagram");
    }
    let _ = acks(&device, Duration::from_millis(500)).await;
    let read = daemon.metric("presence_pings_received_total");
    let dropped = daemon.metric("presence_refusals_total{reason=\"datagram_buffer\"}");
    assert!(dropped > 0.0, "the overflow is counted");
    assert_eq!(read + dropped, f64::from(count), "every datagram is either read or counted as dropped");
}

#[tokio::test]
async fn a_device_without_datagram_support_is_refused_with_protocol_violation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = TestDaemon::start(dir.path()).await;
    let mut events = daemon.events();
    let mut transport = quinn::TransportConfig::default();
    // No `max_datagram_frame_size` transport parameter.
    transport.datagram_receive_buffer_size(None);
    let mut device = RawDevice::connect_with(daemon.daemon.quic_addr, &daemon.roots, transport).await;
    let token = daemon.token("alice", "phone");
    device.send_message(&Message::Hello(hello(&token, "phone", Status::Online, &["chat"]))).await;
    let answer = device.next_message().await.expect("an Error frame");
    assert!(
        matches!(answer, Message::Error(ref error) if error.code == ErrorCode::PROTOCOL_VIOLATION),
        "{answer:?}"
    );
    assert_eq!(device.close_code().await, Some(u64::from(ErrorCode::PROTOCOL_VIOLATION.0)));
    assert_eq!(daemon.metric("presence_handshakes_failed_total{reason=\"no_datagrams\"}"), 1.0);
    no_event(&mut events, "chat", Duration::from_millis(300)).await;
}

#[tokio::test]
async fn the_token_leeway_is_the_configured_one_at_hello_and_mid_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let leeway = 3;
    let layer = SettingsLayer { token_leeway_secs: Some(leeway), ..settings(dir.path()) };
    let daemon = TestDaemon::start_with(layer).await;
    let addr = daemon.daemon.quic_addr;
    let now = unix_now();

    // Expired one second beyond the leeway: refused.
    let beyond = daemon.signer.mint("alice", "phone", now - leeway - 1 - 60, 60);
    let (device, answer) =
        RawDevice::hello(addr, &daemon.roots, hello(&beyond, "phone", Status::Online, &[])).await;
    assert!(matches!(answer, Message::Error(ref e) if e.code == ErrorCode::TOKEN_EXPIRED), "{answer:?}");
    assert_eq!(device.close_code().await, Some(u64::from(ErrorCode::TOKEN_EXPIRED.0)));

    // Expired one second ago, inside the leeway: accepted, and closed at exp + leeway.
    let exp = now - 1;
    let inside = daemon.signer.mint("bob", "phone", exp - 60, 60);
    let (mut device, answer) =
        RawDevice::hello(addr, &daemon.roots, hello(&inside, "phone", Status::Online, &[])).await;
    assert!(matches!(answer, Message::Welcome(_)), "{answer:?}");
    let closing = device.next_message().await.expect("the expiry's Error frame");
    let closed_at = unix_ms();
    assert!(matches!(closing, Message::Error(ref e) if e.code == ErrorCode::TOKEN_EXPIRED), "{closing:?}");
    let end = (exp + leeway) * 1_000;
    assert!(
        closed_at >= end && closed_at < end + 1_000,
        "closed at {closed_at}, {} ms after exp + leeway",
        closed_at as i64 - end as i64
    );
}

#[tokio::test]
async fn shutdown_closes_with_an_error_frame_and_posts_offline_before_returning() {
    let dir = tempfile::tempdir().expect("tempdir");
    // No drain grace: the drain itself tells apps offline (with one, see
    // sessions.rs::a_clean_restart_within_the_drain_grace_shows_apps_no_flap_and_a_device_that_stays_away_goes_offline_after_it).
    let daemon =
        TestDaemon::start_with(SettingsLayer { drain_grace_secs: Some(0), ..settings(dir.path()) }).await;
    let mut receiver = Receiver::start(&dir.path().join("tls")).await;
    let app = daemon.register("chat", &receiver.url()).await;
    let mut device = welcomed(&daemon, "alice", &[&app.id]).await;
    let online = receiver.event(|e| e["type"] == "presence").await;
    assert_eq!(online["status"], "online");

    // The device stays through the drain (it ignores GoAway), so the daemon must close it.
    let TestDaemon { daemon, .. } = daemon;
    let shutdown = tokio::spawn(daemon.shutdown());
    let go_away = device.next_message().await.expect("GoAway");
    assert!(matches!(go_away, Message::GoAway(_)), "{go_away:?}");
    let closing = device.next_message().await.expect("the final Error frame");
    assert!(matches!(closing, Message::Error(ref e) if e.code == ErrorCode::SHUTTING_DOWN), "{closing:?}");
    assert_eq!(device.close_code().await, Some(u64::from(ErrorCode::SHUTTING_DOWN.0)));
    tokio::time::timeout(WAIT, shutdown).await.expect("shutdown is bounded").expect("shutdown");
    // Delivered before shutdown returned: no waiting here.
    let offline: Vec<_> = receiver.drain().into_iter().filter(|e| e["type"] == "presence").collect();
    assert_eq!(offline.len(), 1, "{offline:?}");
    assert_eq!(offline[0]["status"], "offline");
    assert_eq!(offline[0]["puid"], online["puid"]);
}

#[tokio::test]
async fn welcome_is_within_the_wire_limits_and_its_clock_is_real_milliseconds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = TestDaemon::start(dir.path()).await;
    let mut whole_seconds = 0;
    let rounds = 6;
    for round in 0..rounds {
        let token = daemon.token("alice", "phone");
        let before = unix_ms();
        let (device, answer) = RawDevice::hello(
            daemon.daemon.quic_addr,
            &daemon.roots,
            hello(&token, "phone", Status::Online, &[]),
        )
        .await;
        let after = unix_ms();
        let Message::Welcome(welcome) = answer else { panic!("{answer:?}") };
        // PROTOCOL.md §7.2: never looser than the wire limits.
        assert!(usize::from(welcome.max_visibility) <= limits::MAX_VISIBILITY);
        assert!(usize::from(welcome.max_message_len) <= limits::MAX_MESSAGE_LEN);
        let heartbeat = Duration::from_millis(u64::from(welcome.heartbeat_ms));
        assert!((limits::MIN_HEARTBEAT..=limits::MAX_HEARTBEAT).contains(&heartbeat));
        assert!(
            (before..=after).contains(&welcome.server_time_ms),
            "round {round}: {} outside [{before}, {after}]",
            welcome.server_time_ms
        );
        whole_seconds += usize::from(welcome.server_time_ms % 1_000 == 0);
        device.connection.close(0u32.into(), b"done");
        // Land the next Hello on another part of the second.
        tokio::time::sleep(Duration::from_millis(137)).await;
    }
    assert!(whole_seconds < rounds, "not every value is a whole second");
}

#[tokio::test]
async fn an_idle_online_device_shows_online_to_apps() {
    // The idle flag is the device's business (its idle policy turns long idleness into
    // Away); apps see the status only. PROTOCOL.md §6.16.
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = TestDaemon::start(dir.path()).await;
    let mut events = daemon.events();
    let token = daemon.token("alice", "phone");
    let idle = presence_protocol::Hello { idle: true, ..hello(&token, "phone", Status::Online, &["chat"]) };
    let (device, answer) = RawDevice::hello(daemon.daemon.quic_addr, &daemon.roots, idle).await;
    assert!(matches!(answer, Message::Welcome(_)), "{answer:?}");
    assert_eq!(next_event(&mut events, "chat").await.status, Status::Online);
    // Going idle by ping changes nothing an app sees either.
    let ping = Ping { ack_requested: true, ..Ping::heartbeat(Status::Online, true, 1) };
    device.connection.send_datagram(ping.encode().to_vec().into()).expect("datagram");
    assert_eq!(acks(&device, Duration::from_millis(300)).await, BTreeSet::from([1]));
    no_event(&mut events, "chat", Duration::from_millis(300)).await;
}

#[tokio::test]
async fn acks_and_echoes_sent_to_the_server_are_dropped_and_counted_as_bad() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = TestDaemon::start(dir.path()).await;
    let token = daemon.token("alice", "phone");
    let (device, answer) =
        RawDevice::hello(daemon.daemon.quic_addr, &daemon.roots, hello(&token, "phone", Status::Online, &[]))
            .await;
    assert!(matches!(answer, Message::Welcome(_)), "{answer:?}");
    let ack = Ping { kind: PingKind::Ack, ..Ping::heartbeat(Status::Away, false, 5) };
    let echo = EchoPing { kind: EchoKind::Echo, status: Status::Away, idle: false, seq: 6, delay_secs: 1 };
    device.connection.send_datagram(ack.encode().to_vec().into()).expect("datagram");
    device.connection.send_datagram(echo.encode().to_vec().into()).expect("datagram");
    // Then a heartbeat asking for an ack: the session is still up and ignored both.
    device.ping(Status::Online, 1, true);
    let started = Instant::now();
    assert_eq!(acks(&device, Duration::from_millis(300)).await, BTreeSet::from([1]));
    assert!(started.elapsed() < WAIT);
    assert_eq!(daemon.metric("presence_bad_datagrams_total"), 2.0);
    assert_eq!(daemon.metric("presence_status_changes_total"), 1.0, "only the heartbeat was applied");
}

#[tokio::test]
async fn notify_without_data_carries_an_empty_string() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = TestDaemon::start(dir.path()).await;
    let app = daemon.register("chat", "https://127.0.0.1:9/hook").await;
    let mut device = welcomed(&daemon, "alice", &[&app.id]).await;
    let puid = daemon.daemon.table().puid(&app.id, "alice");
    let response = daemon
        .http()
        .post(daemon.url("/v1/notifications"))
        .bearer_auth(&app.api_key)
        .json(&serde_json::json!({"to": [puid], "title": "ping", "ttl_ms": 5_000}))
        .send()
        .await
        .expect("notify");
    assert_eq!(response.status(), 201);
    let notify = device.next_message().await.expect("Notify");
    let Message::Notify(notify) = notify else { panic!("{notify:?}") };
    assert_eq!(notify.data.as_str(), "");
    assert_eq!(notify.app_id.as_str(), app.id);
    assert!(app.id.starts_with("app_"), "registered app ids are app_…: {}", app.id);
}

/// A new device of a user who has `max_devices_per_user` connected gets `Error` and the
/// QUIC close `TOO_MANY_DEVICES` (15) instead of `Welcome` (PROTOCOL.md §9.2, §10); the
/// user's devices keep their sessions, a device of theirs reconnecting is not refused, and
/// a new one fits again once one leaves.
#[tokio::test]
async fn a_device_beyond_the_users_cap_is_refused_with_too_many_devices() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layer = SettingsLayer { max_devices_per_user: Some(3), ..settings(dir.path()) };
    let daemon = TestDaemon::start_with(layer).await;
    let mut devices = Vec::new();
    for i in 0..3 {
        devices.push(welcomed_as(&daemon, "alice", &format!("d{i}"), &[]).await);
    }
    let (extra, answer) = answer_to_hello(&daemon, "alice", "extra").await;
    assert!(matches!(answer, Message::Error(ref e) if e.code == ErrorCode::TOO_MANY_DEVICES), "{answer:?}");
    assert_eq!(extra.close_code().await, Some(u64::from(ErrorCode::TOO_MANY_DEVICES.0)));
    assert_eq!(daemon.metric("presence_refusals_total{reason=\"devices_per_user\"}"), 1.0);
    assert_eq!(daemon.daemon.table().sessions_of("alice").len(), 3, "alice's devices stay up");

    // d0 reconnecting replaces its own session; bob is not alice.
    let (_again, answer) = answer_to_hello(&daemon, "alice", "d0").await;
    assert!(matches!(answer, Message::Welcome(_)), "{answer:?}");
    assert_eq!(devices.remove(0).close_code().await, Some(u64::from(ErrorCode::REPLACED.0)));
    welcomed_as(&daemon, "bob", "extra", &[]).await;
    // One of alice's leaves: a new one fits.
    let leaving = devices.pop().expect("a device");
    leaving.connection.close(0u32.into(), b"bye");
    let deadline = Instant::now() + WAIT;
    while daemon.daemon.table().sessions_of("alice").len() == 3 {
        assert!(Instant::now() < deadline, "the closed session left the table");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    welcomed_as(&daemon, "alice", "extra", &[]).await;
}

/// Connects `user`'s `device` and says its `Hello`; returns the server's first answer.
async fn answer_to_hello(daemon: &TestDaemon, user: &str, device: &str) -> (RawDevice, Message) {
    let token = daemon.token(user, device);
    RawDevice::hello(daemon.daemon.quic_addr, &daemon.roots, hello(&token, device, Status::Online, &[])).await
}

/// A raw device `device` of `user` listing `apps`, welcomed.
async fn welcomed_as(daemon: &TestDaemon, user: &str, device: &str, apps: &[&str]) -> RawDevice {
    let token = daemon.token(user, device);
    let (device, answer) =
        RawDevice::hello(daemon.daemon.quic_addr, &daemon.roots, hello(&token, device, Status::Online, apps))
            .await;
    assert!(matches!(answer, Message::Welcome(_)), "{answer:?}");
    device
}

/// A raw device of `user` ("phone") listing `apps`, welcomed.
async fn welcomed(daemon: &TestDaemon, user: &str, apps: &[&str]) -> RawDevice {
    welcomed_as(daemon, user, "phone", apps).await
}
