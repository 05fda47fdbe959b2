//! End-to-end tests of device sessions over real QUIC on loopback, against an in-process
//! dev daemon with its own data directory.

mod common;

use std::time::Duration;

use common::relay::Relay;
use common::*;
use presence_client::{Client, ClientError, Event};
use presence_protocol::{ErrorCode, Message, Status};

#[tokio::test]
async fn refused_tokens_close_with_clear_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = TestDaemon::start(dir.path()).await;
    let now = unix_now();

    let expired = daemon.signer.mint("alice", "phone", now - 7_200, 60);
    let mut options = daemon.options("alice", "phone", &[]);
    options.token = expired;
    let error = Client::connect(options).await.expect_err("expired token refused");
    assert!(matches!(error, ClientError::Refused { code: Some(ErrorCode::TOKEN_EXPIRED), .. }), "{error:?}");

    let other_dir = tempfile::tempdir().expect("tempdir");
    let forger = presenced::credentials::dev_signer(other_dir.path()).expect("other key");
    let mut options = daemon.options("alice", "phone", &[]);
    options.token = forger.mint("alice", "phone", now, 600);
    let error = Client::connect(options).await.expect_err("forged token refused");
    assert!(
        matches!(error, ClientError::Refused { code: Some(ErrorCode::UNAUTHENTICATED), .. }),
        "{error:?}"
    );

    let wrong_audience = daemon.signer.sign(&serde_json::json!({
        "sub": "alice", "did": "phone", "aud": "mail", "exp": now + 600
    }));
    let mut options = daemon.options("alice", "phone", &[]);
    options.token = wrong_audience;
    let error = Client::connect(options).await.expect_err("wrong audience refused");
    assert!(
        matches!(error, ClientError::Refused { code: Some(ErrorCode::UNAUTHENTICATED), .. }),
        "{error:?}"
    );

    // A token for another device than the Hello names.
    let token = daemon.token("alice", "tablet");
    let (raw, answer) =
        RawDevice::hello(daemon.daemon.quic_addr, &daemon.roots, hello(&token, "phone", Status::Online, &[]))
            .await;
    assert!(matches!(answer, Message::Error(ref e) if e.code == ErrorCode::UNAUTHENTICATED), "{answer:?}");
    assert_eq!(raw.close_code().await, Some(u64::from(ErrorCode::UNAUTHENTICATED.0)));

    assert_eq!(daemon.metric("presence_handshakes_failed_total{reason=\"expired\"}"), 1.0);
    assert_eq!(daemon.metric("presence_handshakes_failed_total{reason=\"unauthenticated\"}"), 2.0);
    assert_eq!(daemon.metric("presence_handshakes_failed_total{reason=\"device\"}"), 1.0);
}

#[tokio::test]
async fn status_changes_reach_a_subscriber_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = TestDaemon::start(dir.path()).await;
    let mut events = daemon.events();
    let client = Client::connect(daemon.options("alice", "phone", &["chat"])).await.expect("connect");

    let online = next_event(&mut events, "chat").await;
    assert_eq!((online.status, online.message.as_str()), (Status::Online, ""));
    assert_eq!(online.puid, daemon.daemon.table().puid("chat", "alice"));

    client.set_status(Status::Away, Some("lunch".into())).await.expect("set");
    let away = next_event(&mut events, "chat").await;
    assert_eq!((away.status, away.message.as_str()), (Status::Away, "lunch"));
    assert!(away.seq > online.seq);

    client.set_status(Status::Unavailable, None).await.expect("set");
    let busy = next_event(&mut events, "chat").await;
    assert_eq!((busy.status, busy.message.as_str()), (Status::Unavailable, "lunch"));
    assert!(busy.seq > away.seq);

    client.close().await;
    let offline = next_event(&mut events, "chat").await;
    assert_eq!(offline.status, Status::Offline);
    assert!(offline.seq > busy.seq);
    assert_eq!(daemon.daemon.table().users(), 0, "a closed session leaves nothing behind");
}

#[tokio::test]
async fn several_devices_aggregate_to_the_most_available() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = TestDaemon::start(dir.path()).await;
    let mut events = daemon.events();

    let mut laptop_options = daemon.options("alice", "laptop", &["chat"]);
    laptop_options.status = Status::Away;
    let laptop = Client::connect(laptop_options).await.expect("laptop");
    assert_eq!(next_event(&mut events, "chat").await.status, Status::Away);

    let phone = Client::connect(daemon.options("alice", "phone", &["chat"])).await.expect("phone");
    assert_eq!(next_event(&mut events, "chat").await.status, Status::Online);

    // The laptop going unavailable changes nothing the app sees: the phone is online.
    laptop.set_status(Status::Unavailable, None).await.expect("set");
    no_event(&mut events, "chat", Duration::from_millis(500)).await;

    phone.close().await;
    assert_eq!(next_event(&mut events, "chat").await.status, Status::Unavailable);
    laptop.close().await;
    assert_eq!(next_event(&mut events, "chat").await.status, Status::Offline);
}

#[tokio::test]
async fn apps_see_only_what_visibility_allows_and_puids_do_not_link() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = TestDaemon::start(dir.path()).await;
    let mut events = daemon.events();
    let client = Client::connect(daemon.options("alice", "phone", &["chat"])).await.expect("connect");
    let chat = next_event(&mut events, "chat").await;

    let table = daemon.daemon.table();
    let mail_puid = table.puid("mail", "alice");
    assert_ne!(chat.puid, mail_puid, "two apps must not share a PUID");
    assert!(table.lookup("mail", &mail_puid).is_none(), "mail is not allowed");
    assert!(table.lookup("mail", &chat.puid).is_none(), "a PUID of chat means nothing to mail");
    assert_eq!(table.lookup("chat", &chat.puid).expect("visible").status, Status::Online);

    client.set_status(Status::Away, None).await.expect("set");
    assert_eq!(next_event(&mut events, "chat").await.status, Status::Away);
    client.allow("mail".into()).await.expect("allow");
    let mail = next_event(&mut events, "mail").await;
    assert_eq!((mail.status, mail.puid.clone()), (Status::Away, mail_puid));

    client.set_visibility(vec!["mail".into()]).await.expect("visibility");
    assert_eq!(next_event(&mut events, "chat").await.status, Status::Offline);
    assert!(table.lookup("chat", &chat.puid).is_none());
    client.close().await;
}

#[tokio::test]
async fn puids_are_stable_across_reconnects_and_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first_puid = {
        let daemon = TestDaemon::start(dir.path()).await;
        let mut events = daemon.events();
        let client = Client::connect(daemon.options("alice", "phone", &["chat"])).await.expect("connect");
        let first = next_event(&mut events, "chat").await.puid;
        client.close().await;
        assert_eq!(next_event(&mut events, "chat").await.status, Status::Offline);
        let client = Client::connect(daemon.options("alice", "phone", &["chat"])).await.expect("reconnect");
        assert_eq!(next_event(&mut events, "chat").await.puid, first);
        client.close().await;
        daemon.daemon.shutdown().await;
        first
    };
    let daemon = TestDaemon::start(dir.path()).await;
    let mut events = daemon.events();
    let client = Client::connect(daemon.options("alice", "phone", &["chat"])).await.expect("connect");
    assert_eq!(next_event(&mut events, "chat").await.puid, first_puid, "same data dir, same PUID");
    client.close().await;
}

#[tokio::test]
async fn silence_turns_offline_after_grace_and_the_next_ping_back_online() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = TestDaemon::start(dir.path()).await;
    let mut events = daemon.events();
    let token = daemon.token("alice", "phone");
    let (raw, answer) = RawDevice::hello(
        daemon.daemon.quic_addr,
        &daemon.roots,
        hello(&token, "phone", Status::Online, &["chat"]),
    )
    .await;
    let Message::Welcome(welcome) = answer else { panic!("expected welcome, got {answer:?}") };
    assert_eq!((welcome.heartbeat_ms, welcome.grace_ms), (5_000, 1_000));
    let up = tokio::time::Instant::now();
    assert_eq!(next_event(&mut events, "chat").await.status, Status::Online);

    // No pings: offline once the heartbeat interval plus grace (6 s) has passed, not before.
    let offline = next_event(&mut events, "chat").await;
    assert_eq!(offline.status, Status::Offline);
    let silent_for = up.elapsed();
    assert!(silent_for >= Duration::from_millis(5_900), "offline too early: {silent_for:?}");
    assert_eq!(daemon.metric("presence_sessions{state=\"silent\"}"), 1.0);

    raw.ping(Status::Online, 0, false);
    assert_eq!(next_event(&mut events, "chat").await.status, Status::Online);
    assert_eq!(daemon.metric("presence_sessions{state=\"online\"}"), 1.0);
}

#[tokio::test]
async fn a_reconnecting_device_replaces_its_ghost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = TestDaemon::start(dir.path()).await;
    let mut events = daemon.events();
    let token = daemon.token("alice", "phone");
    let (mut ghost, answer) = RawDevice::hello(
        daemon.daemon.quic_addr,
        &daemon.roots,
        hello(&token, "phone", Status::Online, &["chat"]),
    )
    .await;
    assert!(matches!(answer, Message::Welcome(_)));
    assert_eq!(next_event(&mut events, "chat").await.status, Status::Online);

    let mut options = daemon.options("alice", "phone", &["chat"]);
    options.status = Status::Away;
    let client = Client::connect(options).await.expect("new session");
    assert_eq!(next_event(&mut events, "chat").await.status, Status::Away);
    let closing = ghost.next_message().await;
    assert!(matches!(closing, Some(Message::Error(ref e)) if e.code == ErrorCode::REPLACED), "{closing:?}");
    assert_eq!(ghost.close_code().await, Some(u64::from(ErrorCode::REPLACED.0)));
    // The ghost's end does not take the device offline: the new session holds it.
    no_event(&mut events, "chat", Duration::from_millis(500)).await;
    assert_eq!(daemon.metric("presence_sessions{state=\"away\"}"), 1.0);
    assert_eq!(daemon.metric("presence_sessions{state=\"online\"}"), 0.0);
    client.close().await;
}

#[tokio::test]
async fn resumption_sends_hello_in_zero_rtt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = TestDaemon::start(dir.path()).await;
    let endpoint = presence_client::transport::endpoint("127.0.0.1:0".parse().expect("addr"), &daemon.roots)
        .expect("endpoint");
    let token = daemon.token("alice", "phone");
    for attempt in 0..2 {
        let connecting = endpoint.connect(daemon.daemon.quic_addr, "localhost").expect("connect");
        let (connection, zero_rtt) = match connecting.into_0rtt() {
            Ok((connection, accepted)) => (connection, Some(accepted)),
            Err(connecting) => (connecting.await.expect("handshake"), None),
        };
        assert_eq!(zero_rtt.is_some(), attempt == 1, "0-RTT possible exactly when resuming");
        let (mut send, mut recv) = connection.open_bi().await.expect("stream");
        let frame =
            presence_protocol::encode_frame(&Message::Hello(hello(&token, "phone", Status::Online, &[])))
                .expect("frame");
        send.write_all(&frame).await.expect("hello");
        if let Some(accepted) = zero_rtt {
            assert!(accepted.await, "the server accepted the 0-RTT Hello");
        }
        let chunk = recv.read_chunk(4096, true).await.expect("read").expect("welcome");
        let mut data: &[u8] = &chunk.bytes;
        let welcome = presence_protocol::FrameDecoder::new().decode(&mut data).expect("decode");
        assert!(matches!(welcome, Some(presence_protocol::Decoded::Message(Message::Welcome(_)))));
        connection.close(0u32.into(), b"bye");
        // Give the server time to send its session ticket before the next attempt uses it.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The second attempt resumed (exact) and its Hello was accepted in 0-RTT (the
    // client's `accepted` above); the server's 0-RTT count is a lower bound.
    assert_eq!(daemon.metric("presence_tls_resumptions_total"), 1.0);
    assert!(daemon.metric("presence_zero_rtt_accepted_total") <= 1.0);
}

#[tokio::test]
async fn a_rebound_socket_keeps_the_session_online() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = TestDaemon::start(dir.path()).await;
    let mut events = daemon.events();
    let mut client = Client::connect(daemon.options("alice", "phone", &["chat"])).await.expect("connect");
    assert!(matches!(next_client_event(&mut client).await, Event::Up { .. }));
    assert_eq!(next_event(&mut events, "chat").await.status, Status::Online);

    client.rebind("127.0.0.1:0".parse().expect("addr")).await.expect("rebind");
    tokio::time::timeout(WAIT, async {
        while daemon.metric("presence_migrations_total") < 1.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("migration seen");
    // A change after the move still arrives, and nothing flapped in between.
    client.set_status(Status::Away, None).await.expect("set");
    assert_eq!(next_event(&mut events, "chat").await.status, Status::Away);
    // The first client event after the move is the ack: no Down, no new session.
    assert!(matches!(next_client_event(&mut client).await, Event::StatusAcked { .. }));
    assert_eq!(daemon.metric("presence_handshakes_total"), 1.0, "the same connection migrated");
    assert_eq!(daemon.metric("presence_sessions{state=\"away\"}"), 1.0);
    client.close().await;
}

#[tokio::test]
async fn garbage_from_one_peer_leaves_other_sessions_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = TestDaemon::start(dir.path()).await;
    let mut events = daemon.events();
    let client = Client::connect(daemon.options("alice", "phone", &["chat"])).await.expect("connect");
    assert_eq!(next_event(&mut events, "chat").await.status, Status::Online);

    // Garbage UDP at the QUIC port.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("socket");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..2_000usize {
        let len = 1 + i % 1_300;
        let junk: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = socket.send_to(&junk, daemon.daemon.quic_addr);
    }

    // A device that sends a malformed frame, one that sends an oversized frame, and one that
    // sends garbage datagrams after a good hello.
    let token = daemon.token("mallory", "m1");
    let mut bad = RawDevice::connect(daemon.daemon.quic_addr, &daemon.roots).await;
    bad.send_raw(&[0x03, 0x00, 0xff, 0xff]).await;
    assert_eq!(bad.close_code().await, Some(u64::from(ErrorCode::MALFORMED_FRAME.0)));
    let mut big = RawDevice::connect(daemon.daemon.quic_addr, &daemon.roots).await;
    big.send_raw(&[0xff, 0xff, 0x7f]).await;
    assert_eq!(big.close_code().await, Some(u64::from(ErrorCode::FRAME_TOO_LARGE.0)));
    let (noisy, answer) =
        RawDevice::hello(daemon.daemon.quic_addr, &daemon.roots, hello(&token, "m1", Status::Online, &[]))
            .await;
    assert!(matches!(answer, Message::Welcome(_)));
    // Paced so that the sender's small datagram queue does not drop them before they leave.
    for i in 0..500u32 {
        let junk = i.to_be_bytes();
        let _ = noisy.connection.send_datagram(bytes::Bytes::copy_from_slice(&junk[..(i % 4) as usize]));
        if i % 8 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    tokio::time::timeout(WAIT, async {
        while daemon.metric("presence_bad_datagrams_total") < 250.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("garbage datagrams not counted: {}", daemon.daemon.metrics().render()));

    // The honest session noticed nothing and still works.
    client.set_status(Status::Away, Some("still here".into())).await.expect("set");
    let away = next_event(&mut events, "chat").await;
    assert_eq!((away.status, away.message.as_str()), (Status::Away, "still here"));
    assert_eq!(daemon.metric("presence_sessions{state=\"away\"}"), 1.0);
    client.close().await;
}

#[tokio::test]
async fn a_token_expiring_mid_session_closes_it_unless_renewed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = TestDaemon::start(dir.path()).await;
    let mut events = daemon.events();

    // The daemon honours the verifier's leeway: a token two seconds from the end of its
    // leeway has two seconds of session left.
    let leeway = presenced::settings::DEFAULT_TOKEN_LEEWAY_SECS;
    let mut short = daemon.options("alice", "phone", &["chat"]);
    short.token = daemon.signer.mint("alice", "phone", unix_now() + 2 - leeway, 0);
    let mut client = Client::connect(short).await.expect("connect");
    assert!(matches!(next_client_event(&mut client).await, Event::Up { .. }));
    assert_eq!(next_event(&mut events, "chat").await.status, Status::Online);
    let down = next_client_event(&mut client).await;
    assert!(
        matches!(down, Event::Down { code: Some(ErrorCode::TOKEN_EXPIRED), retry_in: None, .. }),
        "expired token ends the session for good: {down:?}"
    );
    assert_eq!(next_event(&mut events, "chat").await.status, Status::Offline);

    let mut renewed = daemon.options("bob", "phone", &["chat"]);
    renewed.token = daemon.signer.mint("bob", "phone", unix_now() + 2 - leeway, 0);
    let mut client = Client::connect(renewed).await.expect("connect");
    assert!(matches!(next_client_event(&mut client).await, Event::Up { .. }));
    assert_eq!(next_event(&mut events, "chat").await.status, Status::Online);
    client.reauth(daemon.token("bob", "phone")).await.expect("reauth");
    // Well past the first token's expiry the session is still up and still works.
    no_event(&mut events, "chat", Duration::from_secs(4)).await;
    client.set_status(Status::Away, None).await.expect("set");
    assert_eq!(next_event(&mut events, "chat").await.status, Status::Away);

    // A renewal naming another user closes the session.
    client.reauth(daemon.token("mallory", "phone")).await.expect("reauth");
    let down = loop {
        match next_client_event(&mut client).await {
            Event::StatusAcked { .. } => {}
            other => break other,
        }
    };
    assert!(matches!(down, Event::Down { code: Some(ErrorCode::UNAUTHENTICATED), .. }), "{down:?}");
}

#[tokio::test]
async fn retry_validates_addresses_and_the_session_limit_refuses_extra_devices() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layer = presenced::settings::SettingsLayer {
        retry_threshold: Some(0),
        max_sessions: Some(1),
        ..settings(dir.path())
    };
    let daemon = TestDaemon::start_with(layer).await;
    let first = Client::connect(daemon.options("alice", "phone", &[])).await.expect("first device");
    assert!(daemon.metric("presence_retries_total") >= 1.0, "a Retry preceded the session");

    let mut second = Client::start(daemon.options("bob", "phone", &[])).expect("start");
    let down = next_client_event(&mut second).await;
    assert!(matches!(down, Event::Down { retry_in: Some(_), .. }), "refused, and will retry: {down:?}");
    assert_eq!(daemon.metric("presence_sessions_refused_total"), 1.0);
    assert_eq!(daemon.daemon.table().users(), 1);
    first.close().await;
    // With the first gone, the second gets in on one of its retries.
    let up = loop {
        match next_client_event(&mut second).await {
            Event::Down { .. } => {}
            other => break other,
        }
    };
    assert!(matches!(up, Event::Up { .. }), "{up:?}");
    second.close().await;
}

#[tokio::test]
async fn go_away_reconnects_with_zero_rtt_and_keeps_presence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = TestDaemon::start(dir.path()).await;
    let mut events = daemon.events();
    let mut client = Client::connect(daemon.options("alice", "phone", &["chat"])).await.expect("connect");
    assert!(matches!(next_client_event(&mut client).await, Event::Up { zero_rtt: false, .. }));
    assert_eq!(next_event(&mut events, "chat").await.status, Status::Online);
    client.set_status(Status::Unavailable, Some("focus".into())).await.expect("status");
    assert_eq!(next_event(&mut events, "chat").await.status, Status::Unavailable);

    for session in daemon.daemon.table().sessions_of("alice") {
        let command = presenced::testing::handle::SessionCommand::GoAway {
            reason: "rebalancing".into(),
            retry_after: Duration::from_millis(100),
        };
        assert!(session.send(command));
    }
    let go_away = next_client_event(&mut client).await;
    assert!(matches!(go_away, Event::GoAway { ref reason, .. } if reason == "rebalancing"), "{go_away:?}");
    assert!(matches!(next_client_event(&mut client).await, Event::Down { retry_in: Some(_), .. }));
    let up = next_client_event(&mut client).await;
    assert!(matches!(up, Event::Up { zero_rtt: true, .. }), "the Hello rides 0-RTT on resumption: {up:?}");
    // The new session says the same status and message, so the app sees nothing change
    // except, at most, the offline gap of the reconnect.
    let table = daemon.daemon.table();
    let puid = table.puid("chat", "alice");
    let view = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(view) = table.lookup("chat", &puid).filter(|v| v.status != Status::Offline) {
                return view;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("back");
    assert_eq!((view.status, view.message.as_str()), (Status::Unavailable, "focus"));
    assert!(daemon.metric("presence_zero_rtt_accepted_total") >= 1.0);
    client.close().await;
}

#[tokio::test]
async fn the_idle_policy_turns_away_then_offline_and_activity_restores() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = TestDaemon::start(dir.path()).await;
    let mut events = daemon.events();
    let mut options = daemon.options("alice", "phone", &["chat"]);
    options.idle = presence_client::IdlePolicy {
        away_after: Some(Duration::from_millis(300)),
        offline_after: Some(Duration::from_millis(900)),
    };
    let mut client = Client::connect(options).await.expect("connect");
    assert!(matches!(next_client_event(&mut client).await, Event::Up { .. }));
    assert_eq!(next_event(&mut events, "chat").await.status, Status::Online);

    let changed = next_client_event(&mut client).await;
    assert!(matches!(changed, Event::StatusChanged { status: Status::Away, idle: true }), "{changed:?}");
    assert_eq!(next_event(&mut events, "chat").await.status, Status::Away);
    loop {
        match next_client_event(&mut client).await {
            Event::StatusAcked { .. } => {}
            Event::StatusChanged { status: Status::Offline, idle: true } => break,
            other => panic!("expected offline, got {other:?}"),
        }
    }
    assert_eq!(next_event(&mut events, "chat").await.status, Status::Offline);

    client.activity().await.expect("activity");
    assert_eq!(next_event(&mut events, "chat").await.status, Status::Online);
    client.close().await;
}

/// Issue 13, item 4: a drain that does not flap. Alice and Bob are online at an app; the
/// daemon drains (GoAway) and starts again on the same data dir within the grace; Alice
/// comes back, Bob does not. The receiver sees no `offline`/`online` pair for Alice (no
/// event at all), polls read both as they were told during the grace, and Bob's `offline`
/// arrives once the grace has passed since the drain, not before, with a higher `seq`.
#[tokio::test]
async fn a_clean_restart_within_the_drain_grace_shows_apps_no_flap_and_a_device_that_stays_away_goes_offline_after_it()
 {
    // Room for a restart on a loaded machine, and still below the harness's `WAIT`.
    const GRACE: Duration = Duration::from_secs(6);
    let dir = tempfile::tempdir().expect("tempdir");
    let layer = || presenced::settings::SettingsLayer {
        drain_grace_secs: Some(GRACE.as_secs()),
        ..settings(dir.path())
    };
    let daemon = TestDaemon::start_with(layer()).await;
    let mut receiver = common::receiver::Receiver::start(&dir.path().join("tls")).await;
    let app = daemon.register("chat", &receiver.url()).await;
    let mut online = std::collections::HashMap::new();
    let mut clients = Vec::new();
    for user in ["alice", "bob"] {
        let mut client = Client::connect(daemon.options(user, "phone", &[&app.id])).await.expect("connect");
        assert!(matches!(next_client_event(&mut client).await, Event::Up { .. }));
        let event = receiver.event(|e| e["type"] == "presence").await;
        assert_eq!(event["status"], "online", "{event}");
        online.insert(user, event);
        clients.push(client);
    }
    let poll = |daemon: &TestDaemon, puid: &serde_json::Value| {
        let request =
            daemon.http().get(daemon.url(&format!("/v1/presence/{}", puid.as_str().expect("puid"))));
        let request = request.bearer_auth(&app.api_key);
        async move {
            let response = request.send().await.expect("poll");
            assert_eq!(response.status(), 200);
            response.json::<serde_json::Value>().await.expect("json")
        }
    };

    let TestDaemon { daemon, .. } = daemon;
    let drained = std::time::Instant::now();
    tokio::time::timeout(WAIT, daemon.shutdown()).await.expect("the drain is bounded");
    drop(clients); // they would retry the old address; the devices reconnect below
    let daemon = TestDaemon::start_with(layer()).await;
    for user in ["alice", "bob"] {
        let polled = poll(&daemon, &online[user]["puid"]).await;
        assert_eq!(
            (&polled["status"], &polled["seq"]),
            (&online[user]["status"], &online[user]["seq"]),
            "{user}"
        );
    }
    let mut alice = Client::connect(daemon.options("alice", "phone", &[&app.id])).await.expect("connect");
    assert!(matches!(next_client_event(&mut alice).await, Event::Up { .. }));
    assert!(
        drained.elapsed() < GRACE,
        "back within the grace ({:?}); the test needs a faster restart",
        drained.elapsed()
    );

    let offline = receiver.event(|e| e["type"] == "presence").await;
    let waited = drained.elapsed();
    assert_eq!(
        (&offline["puid"], offline["status"].as_str()),
        (&online["bob"]["puid"], Some("offline")),
        "{offline}"
    );
    assert!(waited >= GRACE, "bob's offline came {waited:?} after the drain, before the grace");
    assert!(offline["seq"].as_u64() > online["bob"]["seq"].as_u64());
    // Alice's return would have been told long before Bob's deadline; let a window pass.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let rest: Vec<_> = receiver.drain().into_iter().filter(|e| e["type"] == "presence").collect();
    assert!(rest.is_empty(), "nothing else, nothing for alice: {rest:?}");
    let alice_now = poll(&daemon, &online["alice"]["puid"]).await;
    assert_eq!(
        (&alice_now["status"], &alice_now["seq"]),
        (&online["alice"]["status"], &online["alice"]["seq"])
    );
    let bob_now = poll(&daemon, &online["bob"]["puid"]).await;
    assert_eq!((bob_now["status"].as_str(), &bob_now["seq"]), (Some("offline"), &serde_json::Value::Null));
    alice.close().await;
}

/// A second daemon that accepts the first one's devices: the same certificate, token keys
/// and PUID secret (as the nodes of a cluster share them), its own data directory.
async fn second_node(first: &TestDaemon, dir: &std::path::Path) -> presenced::Daemon {
    let layer = presenced::settings::SettingsLayer {
        dev: Some(false),
        tls_cert: Some(first.dir.join("tls/cert.pem")),
        tls_key: Some(first.dir.join("tls/key.pem")),
        jwks: Some(first.dir.join("jwks.json")),
        puid_secret_file: Some(first.dir.join("puid-secret")),
        ..settings(dir)
    };
    presenced::Daemon::start(layer.resolve().expect("settings")).await.expect("the second node starts")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_fails_over_at_once_when_its_server_stops_acknowledging() {
    let (dir_a, dir_b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let a = TestDaemon::start(dir_a.path()).await;
    let b = second_node(&a, dir_b.path()).await;
    // The device reaches A through a relay that can go silent, as a killed node does.
    let relay = Relay::start(a.daemon.quic_addr).await;
    let mut options = a.options("alice", "phone", &[]);
    options.servers = vec![relay.addr, b.quic_addr];
    let heartbeat = options.heartbeat;
    let mut client = Client::connect(options).await.expect("connect");
    let up = next_client_event(&mut client).await;
    assert!(matches!(up, Event::Up { server, .. } if server == relay.addr), "{up:?}");

    relay.cut();
    let cut = std::time::Instant::now();
    let down = next_client_event(&mut client).await;
    let Event::Down { reason, retry_in, .. } = &down else { panic!("{down:?}") };
    assert!(reason.contains("stopped acknowledging"), "{reason}");
    assert_eq!(*retry_in, Some(Duration::ZERO), "the next server at once, no backoff");
    let up = next_client_event(&mut client).await;
    assert!(matches!(up, Event::Up { server, .. } if server == b.quic_addr), "{up:?}");
    let took = cut.elapsed();
    println!("failed over {took:?} after the cut (heartbeat {heartbeat:?})");
    // The next heartbeat goes unanswered, and a second later the device is on B: far from
    // QUIC's idle timeout (the daemon's is 31 minutes).
    assert!(took < heartbeat + Duration::from_secs(3), "failed over in {took:?}");
    let online = || metric_value(&b.metrics().render(), "presence_sessions{state=\"online\"}");
    let deadline = std::time::Instant::now() + WAIT;
    while online() != 1.0 {
        assert!(std::time::Instant::now() < deadline, "the second node shows the device online");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(client);
    b.shutdown().await;
}
