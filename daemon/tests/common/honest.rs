//! An honest device and its app, running beside an attack: the yardstick for "no other
//! session notices". It is online at a real webhook receiver, heartbeats on its schedule,
//! and answers notifications; [`Honest::assert_unharmed`] checks all of that still holds.

use presence_client::{Client, Event};
use serde_json::json;

use super::receiver::Receiver;
use super::{RegisteredApp, TestDaemon, next_client_event};

pub struct Honest {
    pub client: Client,
    pub app: RegisteredApp,
    pub receiver: Receiver,
    pub puid: String,
}

impl Honest {
    /// Registers an app of its own, connects a device that authorizes it, and waits until
    /// the app has heard `grant` and `online`.
    pub async fn start(daemon: &TestDaemon) -> Honest {
        let mut receiver = Receiver::start(&daemon.dir.join("tls")).await;
        let app = daemon.register("honest", &receiver.url()).await;
        let mut client = Client::connect(daemon.options("honest-user", "phone", &[&app.id]))
            .await
            .expect("honest connects");
        client.authorize(app.id.clone(), "honest".into()).await.expect("authorize");
        let puid = loop {
            if let Event::Authorized { puid, .. } = next_client_event(&mut client).await {
                break puid;
            }
        };
        let online = receiver.event(|e| e["type"] == "presence").await;
        assert_eq!(
            (online["puid"].as_str(), online["status"].as_str()),
            (Some(puid.as_str()), Some("online"))
        );
        Honest { client, app, receiver, puid }
    }

    /// The honest session noticed nothing: its app never heard it go away or offline, the
    /// API shows it online, and a notification to it still round-trips (shown, accepted,
    /// outcome delivered).
    pub async fn assert_unharmed(&mut self, daemon: &TestDaemon) {
        for event in self.receiver.drain() {
            if event["type"] == "presence" && event["puid"] == self.puid.as_str() {
                assert_eq!(event["status"], "online", "the honest device's presence changed: {event}");
            }
        }
        let http = daemon.http();
        let presence = http
            .get(daemon.url(&format!("/v1/presence/{}", self.puid)))
            .bearer_auth(&self.app.api_key)
            .send()
            .await
            .expect("poll");
        assert_eq!(presence.status(), 200);
        let presence: serde_json::Value = presence.json().await.expect("json");
        assert_eq!(presence["status"], "online", "{presence}");

        let created = http
            .post(daemon.url("/v1/notifications"))
            .bearer_auth(&self.app.api_key)
            .json(&json!({"to": [self.puid], "title": "still there?", "ttl_ms": 30_000}))
            .send()
            .await
            .expect("notify");
        assert_eq!(created.status(), 201);
        let created: serde_json::Value = created.json().await.expect("json");
        assert_eq!(created["recipients"][0]["outcome"], "pending", "{created}");
        let id: u64 = created["id"].as_str().expect("id").parse().expect("numeric id");
        loop {
            match next_client_event(&mut self.client).await {
                Event::Notification { id: shown, .. } if shown == id => break,
                Event::Down { .. } => panic!("the honest session went down"),
                _ => {}
            }
        }
        self.client.accept(id).await.expect("accept");
        let id_text = id.to_string();
        let outcome =
            self.receiver.event(|e| e["type"] == "notification" && e["id"] == id_text.as_str()).await;
        assert_eq!(outcome["outcome"], "accepted");
    }
}
