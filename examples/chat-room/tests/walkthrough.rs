//! The README's "An AppService in five minutes", in one process: a dev daemon, the chat room
//! registered as an app, a device that lets the room see it and joins as alice; the room
//! receives signed batched presence, polls alice's PUID, notifies her, and learns that she
//! accepted.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chat_room::{Config, Room};
use presence_client::{Client, ClientOptions, Event, transport};
use presenced::credentials::{self, DevInfo};
use presenced::settings::SettingsLayer;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

/// Waits until `check` holds, polling.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn next_event(client: &mut Client) -> Event {
    tokio::time::timeout(WAIT, client.next_event())
        .await
        .expect("a client event in time")
        .expect("client running")
}

fn https(info: &DevInfo) -> reqwest::Client {
    presenced::credentials::https_client(&info.ca_cert).expect("https client")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_appservice_in_five_minutes() {
    // 1. presenced serve --dev
    let dir = tempfile::tempdir().expect("tempdir");
    let layer = SettingsLayer::dev_loopback(dir.path());
    let daemon = presenced::Daemon::start(layer.resolve().expect("settings")).await.expect("daemon");
    let info = daemon.dev_info.clone().expect("dev.json");
    let http = https(&info);

    // 2. presenced apps add --name chat --webhook http://127.0.0.1:PORT/webhook --json
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let room_url = format!("http://{}", listener.local_addr().expect("addr"));
    let created: Value = http
        .post(format!("{}/v1/admin/apps", info.https))
        .bearer_auth(&info.admin_token)
        .json(&json!({"name": "chat", "webhook_url": format!("{room_url}/webhook")}))
        .send()
        .await
        .expect("admin API")
        .json()
        .await
        .expect("JSON");
    let field = |key: &str| created[key].as_str().unwrap_or_else(|| panic!("{key} in {created}")).to_owned();
    let (app_id, api_key) = (field("app_id"), field("api_key"));

    // 3. the chat room, with the printed API key and webhook secret
    let config = Config {
        api: info.https.clone(),
        ca: Some(info.ca_cert.clone()),
        api_key: api_key.clone(),
        webhook_secret: field("webhook_secret"),
    };
    let room = Arc::new(Room::new(&config).expect("room"));
    let router = chat_room::router(room.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });

    // A webhook that is not signed with the secret is refused.
    let web = http.clone();
    let forged = web
        .post(format!("{room_url}/webhook"))
        .body(r#"{"app_id":"x","events":[]}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(forged.status(), 401);

    // 4. presence connect --allow APP_ID, then `authorize APP_ID alice`
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    let token = credentials::dev_signer(dir.path()).expect("signer").mint("alice", "phone", now, 3_600);
    let roots = transport::read_roots(&info.ca_cert).expect("roots");
    let mut options = ClientOptions::new(daemon.quic_addr, roots, token);
    options.visibility = vec![app_id.clone()];
    let mut device = Client::connect(options).await.expect("connect");
    assert!(matches!(next_event(&mut device).await, Event::Up { .. }));
    device.authorize(app_id.clone(), "alice".into()).await.expect("authorize");
    let puid = loop {
        if let Event::Authorized { puid, .. } = next_event(&mut device).await {
            break puid;
        }
    };

    // 5. signed, batched presence and the grant arrive: alice is online in the room
    until("alice online in the room", || {
        room.members().get(&puid).is_some_and(|m| m.name.as_deref() == Some("alice") && m.status == "online")
    })
    .await;
    let page = web.get(&room_url).send().await.expect("GET /").text().await.expect("text");
    assert!(page.contains("chat-room: 1 online") && page.contains("alice"), "{page}");

    // 6. poll the PUID with the API key
    let polled: Value = http
        .get(format!("{}/v1/presence/{puid}", info.https))
        .bearer_auth(&api_key)
        .send()
        .await
        .expect("poll")
        .json()
        .await
        .expect("JSON");
    assert_eq!(polled["status"], "online");
    assert_eq!(polled["seq"].as_u64(), Some(room.members()[&puid].seq), "the poll and the webhook agree");

    // 7. send a notification through the room; the device accepts it
    let sent = web
        .post(format!("{room_url}/notify?name=alice&title=Hello&body=join%20us"))
        .send()
        .await
        .expect("notify");
    assert_eq!(sent.status(), 200, "{}", sent.text().await.unwrap_or_default());
    let id = loop {
        if let Event::Notification { id, title, body, .. } = next_event(&mut device).await {
            assert_eq!((title.as_str(), body.as_str()), ("Hello", "join us"));
            break id;
        }
    };
    device.accept(id).await.expect("accept");

    // 8. the outcome arrives as a webhook event
    until("the accepted outcome", || {
        room.outcomes().iter().any(|o| o.id == id.to_string() && o.puid == puid && o.outcome == "accepted")
    })
    .await;

    // Going offline is a presence event too.
    device.set_status(presence_protocol::Status::Offline, None).await.expect("status");
    until("alice offline", || room.members()[&puid].status == "offline").await;
    device.close().await;
    daemon.shutdown().await;
}
