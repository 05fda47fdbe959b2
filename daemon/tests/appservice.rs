//! What an AppService sees, end to end: admin registration, the grant flow, signed batched
//! webhooks from a real HTTPS receiver, polling, live notifications with every outcome, and
//! the API's errors.

mod common;

use base64::Engine;
use common::receiver::{Delivery, Receiver};
use common::*;
use presence_client::{Client, Event};
use presence_protocol::{CancelReason, Status};
use serde_json::{Value, json};

/// Checks a delivery's Standard Webhooks signature independently of the daemon's code.
fn verify(delivery: &Delivery, secret: &str) {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("base64 secret");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let mut signed = format!("{}.{}.", delivery.id, delivery.timestamp).into_bytes();
    signed.extend_from_slice(&delivery.body);
    let expected = base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, &signed));
    let ok = delivery.signature.split(' ').any(|sig| sig == format!("v1,{expected}"));
    assert!(ok, "signature {} does not verify", delivery.signature);
    assert!(delivery.id.starts_with("msg_"), "webhook-id {}", delivery.id);
    let timestamp: u64 = delivery.timestamp.parse().expect("timestamp");
    assert!(timestamp.abs_diff(unix_now()) < 60);
}

async fn api(
    daemon: &TestDaemon,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = daemon.http().request(method, daemon.url(path)).bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("API call");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn next_notification(client: &mut Client) -> (u64, String) {
    loop {
        if let Event::Notification { id, title, .. } = next_client_event(client).await {
            return (id, title);
        }
    }
}

async fn next_cancel(client: &mut Client) -> (u64, CancelReason) {
    loop {
        if let Event::Cancelled { id, reason } = next_client_event(client).await {
            return (id, reason);
        }
    }
}

#[tokio::test]
async fn grant_presence_poll_notify_accept_and_outcome() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = TestDaemon::start(dir.path()).await;
    let mut receiver = Receiver::start(&dir.path().join("tls")).await;
    let app = daemon.register("chat", &receiver.url()).await;

    let mut client = Client::connect(daemon.options("alice", "phone", &[&app.id])).await.expect("connect");
    client.authorize(app.id.clone(), "alice@chat".into()).await.expect("authorize");
    let puid = loop {
        if let Event::Authorized { puid, .. } = next_client_event(&mut client).await {
            break puid;
        }
    };

    let grant = receiver.event(|e| e["type"] == "grant").await;
    assert_eq!(grant["puid"], puid.as_str());
    assert_eq!(grant["state"], "alice@chat");
    let online = receiver.event(|e| e["type"] == "presence").await;
    assert_eq!((online["puid"].as_str(), online["status"].as_str()), (Some(puid.as_str()), Some("online")));
    assert!(online["seq"].as_u64().expect("seq") > 0 && online["at"].as_u64().is_some());
    let delivery = receiver.seen.lock().expect("lock")[0].clone();
    verify(&delivery, &app.secret);
    assert_eq!(delivery.json["app_id"], app.id.as_str());

    client.set_status(Status::Away, Some("lunch".into())).await.expect("status");
    let away = receiver.event(|e| e["type"] == "presence").await;
    assert_eq!((away["status"].as_str(), away["message"].as_str()), (Some("away"), Some("lunch")));
    assert!(away["seq"].as_u64() > online["seq"].as_u64());

    let (status, polled) =
        api(&daemon, &app.api_key, reqwest::Method::GET, &format!("/v1/presence/{puid}"), None).await;
    assert_eq!(status, 200);
    assert_eq!((polled["status"].as_str(), polled["message"].as_str()), (Some("away"), Some("lunch")));
    assert_eq!(polled["seq"], away["seq"]);
    let (status, queried) = api(
        &daemon,
        &app.api_key,
        reqwest::Method::POST,
        "/v1/presence/query",
        Some(json!({"puids": [puid, "AAAAAAAAAAAAAAAAAAAAAA"]})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(queried["presence"][0]["status"], "away");
    assert_eq!(
        queried["presence"][1],
        json!({"puid": "AAAAAAAAAAAAAAAAAAAAAA", "status": "offline", "message": "", "since": null, "seq": null})
    );

    let (status, created) = api(
        &daemon,
        &app.api_key,
        reqwest::Method::POST,
        "/v1/notifications",
        Some(json!({"to": [puid], "title": "Join the call?", "body": "standup", "data": {"room": 7}, "ttl_ms": 60_000})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(created["recipients"][0]["outcome"], "pending");
    let (shown, title) = next_notification(&mut client).await;
    assert_eq!((shown.to_string(), title.as_str()), (id.clone(), "Join the call?"));
    client.accept(shown).await.expect("accept");

    let outcome = receiver.event(|e| e["type"] == "notification").await;
    assert_eq!((outcome["id"].as_str(), outcome["outcome"].as_str()), (Some(id.as_str()), Some("accepted")));
    assert_eq!(outcome["puid"], puid.as_str());
    let (status, view) =
        api(&daemon, &app.api_key, reqwest::Method::GET, &format!("/v1/notifications/{id}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(view["recipients"][0]["outcome"], "accepted");

    client.close().await;
    let offline = receiver.event(|e| e["type"] == "presence").await;
    assert_eq!(offline["status"], "offline");
}

#[tokio::test]
async fn every_notification_outcome() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = TestDaemon::start(dir.path()).await;
    let mut receiver = Receiver::start(&dir.path().join("tls")).await;
    let app = daemon.register("support", &receiver.url()).await;
    let table = daemon.daemon.table();
    let (alice, bob, carol) =
        (table.puid(&app.id, "alice"), table.puid(&app.id, "bob"), table.puid(&app.id, "carol"));

    let mut phone = Client::connect(daemon.options("alice", "phone", &[&app.id])).await.expect("phone");
    let mut laptop = Client::connect(daemon.options("alice", "laptop", &[&app.id])).await.expect("laptop");
    let mut bob_phone = Client::connect(daemon.options("bob", "phone", &[&app.id])).await.expect("bob");
    let notify = |to: Vec<&str>, mode: &str, ttl: u64| json!({"to": to, "title": "help?", "ttl_ms": ttl, "mode": mode});
    let post = async |body: Value| {
        let (status, created) =
            api(&daemon, &app.api_key, reqwest::Method::POST, "/v1/notifications", Some(body)).await;
        assert_eq!(status, 201, "{created}");
        created
    };

    // Dismissed on one device: the other device of the same user is cancelled (answered).
    let created = post(notify(vec![&alice], "all", 60_000)).await;
    let (id, _) = next_notification(&mut phone).await;
    assert_eq!(next_notification(&mut laptop).await.0, id);
    laptop.dismiss(id).await.expect("dismiss");
    assert_eq!(next_cancel(&mut phone).await, (id, CancelReason::Answered));
    let event = receiver.event(|e| e["type"] == "notification").await;
    assert_eq!(
        (event["id"].as_str(), event["outcome"].as_str()),
        (created["id"].as_str(), Some("dismissed"))
    );

    // Offline or unknown recipients are undeliverable at once; carol has no session.
    let created = post(notify(vec![&carol, "AAAAAAAAAAAAAAAAAAAAAA"], "all", 60_000)).await;
    assert_eq!(created["recipients"][0]["outcome"], "undeliverable");
    assert_eq!(created["recipients"][1]["outcome"], "undeliverable");
    let event = receiver.event(|e| e["type"] == "notification" && e["puid"] == carol.as_str()).await;
    assert_eq!(event["outcome"], "undeliverable");

    // First-accept: bob accepts, alice's devices are cancelled (taken).
    let created = post(notify(vec![&alice, &bob], "first-accept", 60_000)).await;
    let id = created["id"].as_str().expect("id").parse::<u64>().expect("numeric id");
    assert_eq!(next_notification(&mut phone).await.0, id);
    assert_eq!(next_notification(&mut laptop).await.0, id);
    assert_eq!(next_notification(&mut bob_phone).await.0, id);
    bob_phone.accept(id).await.expect("accept");
    assert_eq!(next_cancel(&mut phone).await, (id, CancelReason::Taken));
    assert_eq!(next_cancel(&mut laptop).await, (id, CancelReason::Taken));
    let bob_outcome = receiver.event(|e| e["type"] == "notification" && e["puid"] == bob.as_str()).await;
    let alice_outcome = receiver.event(|e| e["type"] == "notification" && e["puid"] == alice.as_str()).await;
    assert_eq!(
        (bob_outcome["outcome"].as_str(), alice_outcome["outcome"].as_str()),
        (Some("accepted"), Some("taken"))
    );

    // Unanswered: missed at the expiry (the shortest ttl is 5 s).
    let created = post(notify(vec![&bob], "all", 5_000)).await;
    let (id, _) = next_notification(&mut bob_phone).await;
    let event = receiver.event(|e| e["type"] == "notification" && e["outcome"] == "missed").await;
    assert_eq!(event["id"].as_str(), created["id"].as_str());
    loop {
        if let Event::Expired { id: expired } = next_client_event(&mut bob_phone).await {
            assert_eq!(expired, id);
            break;
        }
    }
    let (status, view) =
        api(&daemon, &app.api_key, reqwest::Method::GET, &format!("/v1/notifications/{id}"), None).await;
    assert_eq!((status, view["recipients"][0]["outcome"].as_str()), (200, Some("missed")));
    assert_eq!(daemon.metric("presence_notifications_total{reason=\"taken\"}"), 1.0);
}

#[tokio::test]
async fn revoke_hides_the_user_from_the_app() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = TestDaemon::start(dir.path()).await;
    let mut receiver = Receiver::start(&dir.path().join("tls")).await;
    let app = daemon.register("chat", &receiver.url()).await;
    let other = daemon.register("mail", &receiver.url()).await;
    let mut phone =
        Client::connect(daemon.options("alice", "phone", &[&app.id, &other.id])).await.expect("phone");
    let mut laptop = Client::connect(daemon.options("alice", "laptop", &[&app.id])).await.expect("laptop");
    let puid = daemon.daemon.table().puid(&app.id, "alice");
    assert_eq!(
        receiver.event(|e| e["type"] == "presence" && e["puid"] == puid.as_str()).await["status"],
        "online"
    );

    phone.revoke(app.id.clone()).await.expect("revoke");
    loop {
        if let Event::Revoked { app_id } = next_client_event(&mut phone).await {
            assert_eq!(app_id, app.id);
            break;
        }
    }
    // The user's other device is told too.
    loop {
        if let Event::Revoked { app_id } = next_client_event(&mut laptop).await {
            assert_eq!(app_id, app.id);
            break;
        }
    }
    assert_eq!(receiver.event(|e| e["type"] == "revoke").await["puid"], puid.as_str());
    assert_eq!(
        receiver.event(|e| e["type"] == "presence" && e["puid"] == puid.as_str()).await["status"],
        "offline"
    );
    let (_, polled) =
        api(&daemon, &app.api_key, reqwest::Method::GET, &format!("/v1/presence/{puid}"), None).await;
    assert_eq!(polled["status"], "offline");
    let (_, created) = api(
        &daemon,
        &app.api_key,
        reqwest::Method::POST,
        "/v1/notifications",
        Some(json!({"to": [puid], "title": "still there?"})),
    )
    .await;
    assert_eq!(created["recipients"][0]["outcome"], "undeliverable");
    // The other app still sees alice.
    let mail_puid = daemon.daemon.table().puid(&other.id, "alice");
    let (_, polled) =
        api(&daemon, &other.api_key, reqwest::Method::GET, &format!("/v1/presence/{mail_puid}"), None).await;
    assert_eq!(polled["status"], "online");

    // Authorizing an unknown app is denied, and the session goes on.
    phone.authorize("app_nope".into(), "x".into()).await.expect("authorize");
    loop {
        if let Event::Denied { app_id, code, .. } = next_client_event(&mut phone).await {
            assert_eq!((app_id.as_str(), code), ("app_nope", presence_protocol::ErrorCode::UNKNOWN_APP));
            break;
        }
    }
}

/// Whether `secret` alone verifies a delivery, with the daemon's verifier (which accepts
/// any matching entry of a several-signature header, as the Standard Webhooks libraries do).
fn verifies_with(delivery: &Delivery, secret: &str) -> bool {
    use presenced::testing::webhook::secret::{DEFAULT_TOLERANCE, WebhookSecret};
    let secret = WebhookSecret::parse(secret).expect("secret");
    secret
        .verify(&delivery.id, &delivery.timestamp, &delivery.signature, &delivery.body, DEFAULT_TOLERANCE)
        .is_ok()
}

/// The next delivery that carries a presence event.
async fn next_presence_delivery(receiver: &mut Receiver) -> Delivery {
    loop {
        let delivery = receiver.next().await;
        if delivery.events().iter().any(|e| e["type"] == "presence") {
            return delivery;
        }
    }
}

#[tokio::test]
async fn a_rotation_with_an_overlap_signs_with_both_secrets_until_it_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = TestDaemon::start(dir.path()).await;
    let mut receiver = Receiver::start(&dir.path().join("tls")).await;
    let app = daemon.register("chat", &receiver.url()).await;
    let admin = daemon.info.admin_token.clone();
    let rotate = |query: &str| format!("/v1/admin/apps/{}/rotate-secret{query}", app.id);

    // Past the bound, or not a number: refused with the stable code, nothing rotated.
    for query in ["?overlap_secs=604801", "?overlap_secs=soon", "?overlap_secs=-1"] {
        let (status, body) = api(&daemon, &admin, reqwest::Method::POST, &rotate(query), None).await;
        assert_eq!((status, body["error"]["code"].as_str()), (422, Some("overlap_out_of_range")), "{query}");
    }

    let overlap_secs = 3;
    let before = unix_now() * 1000;
    let (status, rotated) =
        api(&daemon, &admin, reqwest::Method::POST, &rotate(&format!("?overlap_secs={overlap_secs}")), None)
            .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["webhook_secret"].as_str().expect("new secret").to_owned();
    assert_ne!(new_secret, app.secret);
    let expires_ms = rotated["previous_secret_expires_at_ms"].as_u64().expect("expiry in the answer");
    assert!(
        expires_ms >= before + overlap_secs * 1000
            && expires_ms <= unix_now() * 1000 + overlap_secs * 1000 + 1000
    );
    let (_, shown) =
        api(&daemon, &admin, reqwest::Method::GET, &format!("/v1/admin/apps/{}", app.id), None).await;
    assert_eq!(shown["previous_secret_expires_at_ms"].as_u64(), Some(expires_ms), "{shown}");

    // During the overlap: both signatures, and a receiver holding either secret verifies.
    let phone = Client::connect(daemon.options("alice", "phone", &[&app.id])).await.expect("connect");
    let during = next_presence_delivery(&mut receiver).await;
    assert!(
        unix_now() * 1000 < expires_ms,
        "the first delivery came after the overlap: the test is too slow"
    );
    assert_eq!(during.signature.split(' ').count(), 2, "{}", during.signature);
    assert!(verifies_with(&during, &app.secret), "a receiver still on the old secret verifies");
    assert!(verifies_with(&during, &new_secret), "a receiver on the new secret verifies");

    // After it: the new signature only; the old secret no longer verifies.
    while unix_now() * 1000 <= expires_ms + 1000 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    phone.set_status(Status::Away, None).await.expect("status");
    let after = next_presence_delivery(&mut receiver).await;
    assert_eq!(after.signature.split(' ').count(), 1, "{}", after.signature);
    assert!(verifies_with(&after, &new_secret));
    assert!(!verifies_with(&after, &app.secret), "the old secret stopped at the end of the overlap");
    let (_, shown) =
        api(&daemon, &admin, reqwest::Method::GET, &format!("/v1/admin/apps/{}", app.id), None).await;
    assert!(shown.get("previous_secret_expires_at_ms").is_none(), "{shown}");

    // Without an overlap, as before: the old secret stops at once.
    let (_, again) = api(&daemon, &admin, reqwest::Method::POST, &rotate(""), None).await;
    assert!(again.get("previous_secret_expires_at_ms").is_none(), "{again}");
    let newest = again["webhook_secret"].as_str().expect("secret").to_owned();
    phone.set_status(Status::Online, None).await.expect("status");
    let last = next_presence_delivery(&mut receiver).await;
    assert!(verifies_with(&last, &newest) && !verifies_with(&last, &new_secret));
}

/// Waits for the next `Revoked`, skipping other events.
async fn next_revoked(client: &mut Client) -> String {
    loop {
        if let Event::Revoked { app_id } = next_client_event(client).await {
            return app_id;
        }
    }
}

/// What the app's poll says of `puid`.
async fn polled_status(daemon: &TestDaemon, app: &RegisteredApp, puid: &str) -> Value {
    let (status, polled) =
        api(daemon, &app.api_key, reqwest::Method::GET, &format!("/v1/presence/{puid}"), None).await;
    assert_eq!(status, 200, "{polled}");
    polled["status"].clone()
}

/// Lets a batch window or two pass, then takes every presence event the receiver got for
/// `puid` whose status is not offline.
async fn visible_events(receiver: &mut Receiver, puid: &str) -> Vec<Value> {
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let events = receiver.drain();
    events
        .into_iter()
        .filter(|e| e["type"] == "presence" && e["puid"] == puid && e["status"] != "offline")
        .collect()
}

#[tokio::test]
async fn a_revoke_reaches_a_device_that_was_offline_and_outlives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = TestDaemon::start(dir.path()).await;
    let mut receiver = Receiver::start(&dir.path().join("tls")).await;
    let app = daemon.register("chat", &receiver.url()).await;
    let other = daemon.register("mail", &receiver.url()).await;
    let mut phone = Client::connect(daemon.options("alice", "phone", &[&app.id])).await.expect("phone");
    let laptop =
        Client::connect(daemon.options("alice", "laptop", &[&app.id, &other.id])).await.expect("laptop");
    let puid = daemon.daemon.table().puid(&app.id, "alice");
    let online = receiver.event(|e| e["type"] == "presence" && e["puid"] == puid.as_str()).await;
    assert_eq!(online["status"], "online");

    // The laptop goes away; the phone revokes meanwhile.
    laptop.close().await;
    phone.revoke(app.id.clone()).await.expect("revoke");
    assert_eq!(next_revoked(&mut phone).await, app.id);
    assert_eq!(receiver.event(|e| e["type"] == "revoke").await["puid"], puid.as_str());
    let offline = receiver.event(|e| e["type"] == "presence" && e["puid"] == puid.as_str()).await;
    assert_eq!(offline["status"], "offline");

    // The laptop comes back still listing the app: told Revoked, and the app sees nothing.
    let mut laptop = Client::connect(daemon.options("alice", "laptop", &[&app.id, &other.id]))
        .await
        .expect("laptop again");
    assert_eq!(next_revoked(&mut laptop).await, app.id);
    assert_eq!(visible_events(&mut receiver, puid.as_str()).await, Vec::<Value>::new());
    assert_eq!(polled_status(&daemon, &app, puid.as_str()).await, "offline");
    let mail_puid = daemon.daemon.table().puid(&other.id, "alice");
    assert_eq!(
        polled_status(&daemon, &other, mail_puid.as_str()).await,
        "online",
        "the other app is unaffected"
    );
    // Nor does a later visibility list bring it back.
    laptop.set_visibility(vec![app.id.clone(), other.id.clone()]).await.expect("visibility");
    assert_eq!(next_revoked(&mut laptop).await, app.id);
    assert_eq!(visible_events(&mut receiver, puid.as_str()).await, Vec::<Value>::new());

    // The tombstone is durable: after a restart a device listing the app is told again.
    laptop.close().await;
    phone.close().await;
    daemon.daemon.shutdown().await;
    receiver.drain();
    let daemon = TestDaemon::start(dir.path()).await;
    let mut laptop = Client::connect(daemon.options("alice", "laptop", &[&app.id, &other.id]))
        .await
        .expect("after restart");
    assert_eq!(next_revoked(&mut laptop).await, app.id);
    assert_eq!(visible_events(&mut receiver, puid.as_str()).await, Vec::<Value>::new());
    assert_eq!(polled_status(&daemon, &app, puid.as_str()).await, "offline");

    // A new Authorize lifts it: the next list that names the app counts again.
    laptop.authorize(app.id.clone(), "alice@chat".into()).await.expect("authorize");
    loop {
        if let Event::Authorized { app_id, .. } = next_client_event(&mut laptop).await {
            assert_eq!(app_id, app.id);
            break;
        }
    }
    laptop.allow(app.id.clone()).await.expect("allow");
    let back = receiver.event(|e| e["type"] == "presence" && e["puid"] == puid.as_str()).await;
    assert_eq!(back["status"], "online");
    assert_eq!(polled_status(&daemon, &app, puid.as_str()).await, "online");
}

#[tokio::test]
async fn api_errors_are_json_with_stable_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layer =
        presenced::settings::SettingsLayer { api_rate: Some(1), api_burst: Some(15), ..settings(dir.path()) };
    let daemon = TestDaemon::start_with(layer).await;
    let app = daemon.register("chat", "https://127.0.0.1:9/hook").await;
    let http = daemon.http();
    let code = |body: &Value| body["error"]["code"].as_str().unwrap_or("<none>").to_owned();

    let response = http.get(daemon.url("/v1/presence/x")).send().await.expect("call");
    assert_eq!(response.status(), 401);
    assert_eq!(code(&response.json().await.expect("json")), "unauthenticated");
    let (status, body) = api(&daemon, "pk_wrong", reqwest::Method::GET, "/v1/presence/x", None).await;
    assert_eq!((status, code(&body)), (401, "invalid_api_key".into()));

    let post_raw = async |body: &'static str, content_type: &str| {
        let response = http
            .post(daemon.url("/v1/notifications"))
            .bearer_auth(&app.api_key)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("call");
        (response.status().as_u16(), code(&response.json().await.expect("json")))
    };
    assert_eq!(post_raw("{not json", "application/json").await, (400, "invalid_json".into()));
    assert_eq!(post_raw("{}", "text/plain").await, (415, "unsupported_media_type".into()));
    assert_eq!(
        post_raw(r#"{"to": ["p"], "title": "t", "colour": 1}"#, "application/json").await.1,
        "invalid_request"
    );
    assert_eq!(
        post_raw(r#"{"to": ["p"], "title": "t", "ttl_ms": 1000}"#, "application/json").await,
        (422, "ttl_out_of_range".into())
    );
    assert_eq!(
        post_raw(r#"{"to": ["p"], "title": "t", "ttl_ms": 600001}"#, "application/json").await.1,
        "ttl_out_of_range"
    );
    assert_eq!(
        post_raw(r#"{"to": [], "title": "t"}"#, "application/json").await,
        (422, "invalid_request".into())
    );
    let many: Vec<String> = (0..1_001).map(|i| format!("p{i}")).collect();
    let (status, body) =
        api(&daemon, &app.api_key, reqwest::Method::POST, "/v1/presence/query", Some(json!({"puids": many})))
            .await;
    assert_eq!((status, code(&body)), (422, "invalid_request".into()));
    let huge = json!({"puids": vec!["x".repeat(1_000); 200]});
    let (status, body) =
        api(&daemon, &app.api_key, reqwest::Method::POST, "/v1/presence/query", Some(huge)).await;
    assert_eq!((status, code(&body)), (413, "payload_too_large".into()));
    let (status, body) =
        api(&daemon, &app.api_key, reqwest::Method::GET, "/v1/notifications/12345", None).await;
    assert_eq!((status, code(&body)), (404, "not_found".into()));
    let (status, body) = api(&daemon, &app.api_key, reqwest::Method::DELETE, "/v1/presence/x", None).await;
    assert_eq!((status, code(&body)), (405, "method_not_allowed".into()));

    // Admin: a wrong token, and URLs the policy refuses (--dev allows private addresses).
    let (status, body) = api(&daemon, "adm_wrong", reqwest::Method::GET, "/v1/admin/apps", None).await;
    assert_eq!((status, code(&body)), (401, "unauthenticated".into()));
    let (status, body) = api(
        &daemon,
        &daemon.info.admin_token,
        reqwest::Method::POST,
        "/v1/admin/apps",
        Some(json!({"name": "x", "webhook_url": "ftp://example.com/hook"})),
    )
    .await;
    assert_eq!((status, code(&body)), (422, "invalid_webhook_url".into()));

    // The rate limit: the burst is spent by now; the next calls are refused with Retry-After.
    let mut limited = None;
    for _ in 0..20 {
        let response =
            http.get(daemon.url("/v1/presence/x")).bearer_auth(&app.api_key).send().await.expect("call");
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
    }
    let response = limited.expect("rate limited within 20 calls");
    let retry_after: u64 =
        response.headers()["retry-after"].to_str().expect("header").parse().expect("seconds");
    assert!((1..=2).contains(&retry_after));
    assert_eq!(code(&response.json().await.expect("json")), "rate_limited");
}

#[tokio::test]
async fn apps_cli_adds_rotates_the_key_of_and_removes_an_app() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = TestDaemon::start(dir.path()).await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_presenced"))
        .args(["apps", "--data-dir"])
        .arg(dir.path())
        .args(["add", "--name", "chat", "--webhook", "https://127.0.0.1:9/hook", "--json"])
        .output()
        .await
        .expect("run");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let added: Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    let id = added["app_id"].as_str().expect("app_id");
    assert!(added["api_key"].as_str().expect("api_key").starts_with("pk_"));
    assert!(added["webhook_secret"].as_str().expect("secret").starts_with("whsec_"));
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_presenced"))
        .args(["apps", "--data-dir"])
        .arg(dir.path())
        .args(["list", "--json"])
        .output()
        .await
        .expect("run");
    let list: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(list["apps"][0]["app_id"], id);
    assert!(list["apps"][0].get("api_key").is_none(), "the key is never shown again");
    // A leaked key is rotated: the old one is refused at once, the new one answers.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_presenced"))
        .args(["apps", "--data-dir"])
        .arg(dir.path())
        .args(["rotate-key", id, "--json"])
        .output()
        .await
        .expect("run");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let rotated: Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(rotated["app_id"], id);
    let old_key = added["api_key"].as_str().expect("api_key");
    let new_key = rotated["api_key"].as_str().expect("api_key");
    assert!(new_key.starts_with("pk_") && new_key != old_key);
    let (status, _) = api(&daemon, old_key, reqwest::Method::GET, "/v1/presence/x", None).await;
    assert_eq!(status, 401, "the rotated-away key is refused");
    let unknown = "/v1/presence/AAAAAAAAAAAAAAAAAAAAAA";
    let (status, _) = api(&daemon, new_key, reqwest::Method::GET, unknown, None).await;
    assert_eq!(status, 200, "the new key answers");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_presenced"))
        .args(["apps", "--data-dir"])
        .arg(dir.path())
        .args(["remove", id])
        .output()
        .await
        .expect("run");
    assert!(output.status.success());
    // Removed for real: the registry no longer knows the app or its API key.
    assert!(!daemon.daemon.apps().exists(id));
    let (status, _) = api(&daemon, new_key, reqwest::Method::GET, "/v1/presence/x", None).await;
    assert_eq!(status, 401, "a removed app's key no longer works");
}

#[tokio::test]
async fn a_restart_keeps_notifications_readable_and_decides_their_outcomes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut receiver = None;
    let (app, id) = {
        let daemon = TestDaemon::start(dir.path()).await;
        let receiver = receiver.insert(Receiver::start(&dir.path().join("tls")).await);
        let app = daemon.register("chat", &receiver.url()).await;
        let mut client =
            Client::connect(daemon.options("alice", "phone", &[&app.id])).await.expect("connect");
        let puid = daemon.daemon.table().puid(&app.id, "alice");
        let (status, created) = api(
            &daemon,
            &app.api_key,
            reqwest::Method::POST,
            "/v1/notifications",
            Some(json!({"to": [puid], "title": "still pending at the restart", "ttl_ms": 5_000})),
        )
        .await;
        assert_eq!(status, 201);
        next_notification(&mut client).await;
        drop(client);
        daemon.daemon.shutdown().await;
        (app, created["id"].as_str().expect("id").to_owned())
    };
    let daemon = TestDaemon::start(dir.path()).await;
    let (status, view) =
        api(&daemon, &app.api_key, reqwest::Method::GET, &format!("/v1/notifications/{id}"), None).await;
    assert_eq!(status, 200, "readable after the restart: {view}");
    let receiver = receiver.as_mut().expect("receiver");
    let missed = receiver.event(|e| e["type"] == "notification" && e["id"] == id.as_str()).await;
    assert_eq!(missed["outcome"], "missed");
    let (_, view) =
        api(&daemon, &app.api_key, reqwest::Method::GET, &format!("/v1/notifications/{id}"), None).await;
    assert_eq!(view["recipients"][0]["outcome"], "missed");
}

/// One device lists two apps and changes status across several seconds: both apps get
/// every change, each with its own `seq` and `at` (issue 13, item 4: two colluding apps
/// cannot match their PUIDs by equal numbers or equal gaps), each app's `seq` increases,
/// each `at` is the change's time to about a second, and a poll reads the webhook's `seq`
/// and `at` (`since`).
#[tokio::test]
async fn two_apps_listed_by_one_device_get_their_own_seqs_and_ats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = TestDaemon::start(dir.path()).await;
    let mut receiver = Receiver::start(&dir.path().join("tls")).await;
    let chat = daemon.register("chat", &receiver.url()).await;
    let mail = daemon.register("mail", &receiver.url()).await;
    let apps = [&chat, &mail];

    let client =
        Client::connect(daemon.options("alice", "phone", &[&chat.id, &mail.id])).await.expect("connect");
    // (seq, at) per app, one per change, and when the test saw each change happen.
    let mut seen: [Vec<(u64, u64)>; 2] = Default::default();
    let mut puids: [Option<String>; 2] = Default::default();
    let mut windows = Vec::new();
    let statuses = [Status::Online, Status::Away, Status::Unavailable, Status::Online, Status::Away];
    for (round, status) in statuses.into_iter().enumerate() {
        let before = unix_ms();
        if round > 0 {
            client.set_status(status, None).await.expect("status");
        }
        while seen.iter().any(|s| s.len() <= round) {
            let delivery = receiver.next().await;
            let index = apps.iter().position(|a| delivery.json["app_id"] == a.id.as_str()).expect("our app");
            for event in delivery.events().into_iter().filter(|e| e["type"] == "presence") {
                assert_eq!(event["status"], status.as_str(), "{event}");
                let puid = event["puid"].as_str().expect("puid").to_owned();
                assert_eq!(puids[index].get_or_insert(puid.clone()), &puid, "one PUID per app");
                seen[index].push((event["seq"].as_u64().expect("seq"), event["at"].as_u64().expect("at")));
            }
        }
        windows.push((before, unix_ms()));
        // Past the slot (about a second), so that each change falls in a slot of its own.
        tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    }
    assert_ne!(puids[0], puids[1]);
    for (app, changes) in seen.iter().enumerate() {
        assert_eq!(changes.len(), statuses.len(), "app {app}: every change, once");
        assert!(changes.windows(2).all(|w| w[0].0 < w[1].0), "app {app}: seq increases: {changes:?}");
        for ((_, at), (before, after)) in changes.iter().zip(&windows) {
            // At most one slot (1,048.576 ms) either side of when the change happened.
            assert!(
                *at + 1_050 >= *before && *at <= after + 1_050,
                "app {app}: at {at} in {before}..{after}"
            );
        }
    }
    let (a, b) = (&seen[0], &seen[1]);
    assert!(a.iter().all(|(seq, _)| b.iter().all(|(other, _)| other != seq)), "no equal seq: {a:?} {b:?}");
    let gaps = |s: &[(u64, u64)], pick: fn(&(u64, u64)) -> u64| -> Vec<i128> {
        s.windows(2).map(|w| i128::from(pick(&w[1])) - i128::from(pick(&w[0]))).collect()
    };
    let (seq_a, seq_b) = (gaps(a, |x| x.0), gaps(b, |x| x.0));
    assert!(seq_a.iter().zip(&seq_b).all(|(x, y)| x != y), "no equal seq gap: {seq_a:?} {seq_b:?}");
    // Each `at` gap of ms matches by chance one time in about a thousand: the whole series
    // of gaps is what must differ.
    assert_ne!(gaps(a, |x| x.1), gaps(b, |x| x.1), "the at gaps differ");

    for (index, app) in apps.iter().enumerate() {
        let puid = puids[index].as_deref().expect("puid");
        let (status, polled) =
            api(&daemon, &app.api_key, reqwest::Method::GET, &format!("/v1/presence/{puid}"), None).await;
        assert_eq!(status, 200);
        let (seq, at) = seen[index].last().expect("an event");
        assert_eq!((polled["seq"].as_u64(), polled["since"].as_u64()), (Some(*seq), Some(*at)), "{polled}");
    }
    client.close().await;
}

fn unix_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970");
    u64::try_from(since.as_millis()).expect("fits")
}
