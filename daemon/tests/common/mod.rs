//! A test harness: an in-process dev daemon on loopback ports, clients for it, and a raw
//! device that speaks the protocol frame by frame (to go silent or misbehave at will).

#![allow(dead_code, unreachable_pub)]

pub mod honest;
pub mod receiver;
pub mod relay;
// `process` (the daemon binary) and `netns` (network namespaces) are declared by the tests
// that use them, so crates that borrow this harness by path need neither.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use presence_client::{ClientOptions, transport};
use presence_protocol::*;
use presenced::Daemon;
use presenced::credentials::{self, DevInfo};
use presenced::settings::SettingsLayer;
use presenced::testing::EventCursor;
use presenced::testing::auth::TokenSigner;
use presenced::testing::table::PresenceEvent;
use rustls::pki_types::CertificateDer;

/// Upper bound for anything a test waits for.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestDaemon {
    pub daemon: Daemon,
    pub dir: PathBuf,
    pub info: DevInfo,
    pub signer: TokenSigner,
    pub roots: Vec<CertificateDer<'static>>,
}

pub fn settings(dir: &Path) -> SettingsLayer {
    SettingsLayer { heartbeat_grace_secs: Some(1), drain_secs: Some(2), ..SettingsLayer::dev_loopback(dir) }
}

impl TestDaemon {
    pub async fn start(dir: &Path) -> TestDaemon {
        Self::start_with(settings(dir)).await
    }

    pub async fn start_with(layer: SettingsLayer) -> TestDaemon {
        let dir = layer.data_dir.clone().expect("data dir");
        let daemon = Daemon::start(layer.resolve().expect("settings")).await.expect("daemon starts");
        let info = daemon.dev_info.clone().expect("dev info");
        let signer = credentials::dev_signer(&dir).expect("dev signer");
        let roots = transport::read_roots(&info.ca_cert).expect("roots");
        TestDaemon { daemon, dir, info, signer, roots }
    }

    pub fn token(&self, user: &str, device: &str) -> String {
        self.signer.mint(user, device, unix_now(), 3_600)
    }

    pub fn options(&self, user: &str, device: &str, allow: &[&str]) -> ClientOptions {
        let mut options =
            ClientOptions::new(self.daemon.quic_addr, self.roots.clone(), self.token(user, device));
        options.visibility = allow.iter().map(|app| app.to_string()).collect();
        options.heartbeat = Duration::from_secs(5);
        options
    }

    pub fn events(&self) -> EventCursor {
        self.daemon.events()
    }

    /// An HTTPS client trusting the dev CA.
    pub fn http(&self) -> reqwest::Client {
        presenced::credentials::https_client(&self.info.ca_cert).expect("https client")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.info.https)
    }

    /// Registers an app through the admin API; returns its `add` answer.
    pub async fn register(&self, name: &str, webhook: &str) -> RegisteredApp {
        let response = self
            .http()
            .post(self.url("/v1/admin/apps"))
            .bearer_auth(&self.info.admin_token)
            .json(&serde_json::json!({"name": name, "webhook_url": webhook}))
            .send()
            .await
            .expect("admin API");
        assert_eq!(response.status(), 201);
        let body: serde_json::Value = response.json().await.expect("json");
        RegisteredApp {
            id: body["app_id"].as_str().expect("app_id").to_owned(),
            api_key: body["api_key"].as_str().expect("api_key").to_owned(),
            secret: body["webhook_secret"].as_str().expect("secret").to_owned(),
        }
    }

    pub fn metric(&self, name: &str) -> f64 {
        metric_value(&self.daemon.metrics().render(), name)
    }
}

/// What registering an app returned.
#[derive(Debug, Clone)]
pub struct RegisteredApp {
    pub id: String,
    pub api_key: String,
    pub secret: String,
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

/// The value of one sample line (`name` includes any labels) in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |value| value.trim().parse().expect("metric value"))
}

/// The next event for `app_id`, skipping others.
pub async fn next_event(events: &mut EventCursor, app_id: &str) -> PresenceEvent {
    tokio::time::timeout(WAIT, async {
        loop {
            let event = events.recv().await;
            if event.app_id.as_str() == app_id {
                return event;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no event for {app_id} within {WAIT:?}"))
}

/// Asserts that no event for `app_id` arrives within `quiet`.
pub async fn no_event(events: &mut EventCursor, app_id: &str, quiet: Duration) {
    let found = tokio::time::timeout(quiet, async {
        loop {
            let event = events.recv().await;
            if event.app_id.as_str() == app_id {
                return event;
            }
        }
    })
    .await;
    if let Ok(event) = found {
        panic!("unexpected event {event:?}");
    }
}

pub async fn next_client_event(client: &mut presence_client::Client) -> presence_client::Event {
    tokio::time::timeout(WAIT, client.next_event())
        .await
        .expect("client event in time")
        .expect("client running")
}

/// A device driven frame by frame, for silence and misbehaviour.
pub struct RawDevice {
    pub endpoint: quinn::Endpoint,
    pub connection: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    decoder: FrameDecoder,
}

pub fn hello(token: &str, device: &str, status: Status, allow: &[&str]) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        token: Token::new(token).expect("token"),
        device_id: DeviceId::new(device).expect("device"),
        status,
        idle: false,
        message: StatusText::default(),
        visibility: AppList::new(allow.iter().map(|a| AppId::new(*a).expect("app")).collect()).expect("list"),
        heartbeat_ms: 5_000,
        status_seq: 0,
    }
}

impl RawDevice {
    pub async fn connect(addr: SocketAddr, roots: &[CertificateDer<'static>]) -> RawDevice {
        let endpoint = transport::endpoint("127.0.0.1:0".parse().expect("addr"), roots).expect("endpoint");
        let connection = endpoint.connect(addr, "localhost").expect("connect").await.expect("handshake");
        let (send, recv) = connection.open_bi().await.expect("stream");
        RawDevice { endpoint, connection, send, recv, decoder: FrameDecoder::new() }
    }

    /// Connects over an endpoint shared with other devices (one UDP socket for a crowd).
    pub async fn connect_on(endpoint: &quinn::Endpoint, addr: SocketAddr) -> RawDevice {
        let connection = endpoint.connect(addr, "localhost").expect("connect").await.expect("handshake");
        let (send, recv) = connection.open_bi().await.expect("stream");
        RawDevice { endpoint: endpoint.clone(), connection, send, recv, decoder: FrameDecoder::new() }
    }

    /// Connects with `transport` instead of the client crate's settings (to disable DATAGRAM
    /// support, or to queue more datagrams than a device would).
    pub async fn connect_with(
        addr: SocketAddr,
        roots: &[CertificateDer<'static>],
        transport: quinn::TransportConfig,
    ) -> RawDevice {
        let mut store = rustls::RootCertStore::empty();
        for root in roots {
            store.add(root.clone()).expect("root");
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(store)
            .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS");
        let mut config = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
        config.transport_config(std::sync::Arc::new(transport));
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
        endpoint.set_default_client_config(config);
        let connection = endpoint.connect(addr, "localhost").expect("connect").await.expect("handshake");
        let (send, recv) = connection.open_bi().await.expect("stream");
        RawDevice { endpoint, connection, send, recv, decoder: FrameDecoder::new() }
    }

    /// Connects and says `hello`; returns the device and the server's first answer.
    pub async fn hello(
        addr: SocketAddr,
        roots: &[CertificateDer<'static>],
        hello: Hello,
    ) -> (RawDevice, Message) {
        let mut device = RawDevice::connect(addr, roots).await;
        device.send_message(&Message::Hello(hello)).await;
        let answer = device.next_message().await.expect("an answer to hello");
        (device, answer)
    }

    pub async fn send_message(&mut self, message: &Message) {
        let frame = encode_frame(message).expect("encode");
        self.send_raw(&frame).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.expect("write");
    }

    pub fn ping(&self, status: Status, seq: u8, ack: bool) {
        let ping = Ping { ack_requested: ack, ..Ping::heartbeat(status, false, seq) };
        self.connection.send_datagram(bytes::Bytes::copy_from_slice(&ping.encode())).expect("datagram");
    }

    /// The next decodable message, or `None` when the stream or connection ends.
    pub async fn next_message(&mut self) -> Option<Message> {
        tokio::time::timeout(WAIT, async {
            loop {
                let chunk = self.recv.read_chunk(4096, true).await.ok()??;
                let mut data: &[u8] = &chunk.bytes;
                if let Some(Decoded::Message(message)) = self.decoder.decode(&mut data).ok()? {
                    return Some(message);
                }
            }
        })
        .await
        .expect("message or end within the wait")
    }

    /// The application close code the connection ended with.
    pub async fn close_code(&self) -> Option<u64> {
        match tokio::time::timeout(WAIT, self.connection.closed()).await.expect("closed in time") {
            quinn::ConnectionError::ApplicationClosed(close) => Some(close.error_code.into_inner()),
            _ => None,
        }
    }
}
