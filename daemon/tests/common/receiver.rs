//! A real HTTPS webhook receiver on loopback: records every delivery and answers with the
//! status the test sets.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::mpsc;

/// One webhook POST as received.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Bytes,
    pub json: serde_json::Value,
}

impl Delivery {
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.json["events"].as_array().cloned().unwrap_or_default()
    }
}

pub struct Receiver {
    pub addr: SocketAddr,
    /// Events received and not yet claimed by `event`.
    pending: std::collections::VecDeque<serde_json::Value>,
    pub status: Arc<AtomicU16>,
    deliveries: mpsc::UnboundedReceiver<Delivery>,
    pub seen: Arc<Mutex<Vec<Delivery>>>,
}

impl Receiver {
    /// Serves HTTPS with the certificate and key in `tls_dir` (the dev daemon's).
    pub async fn start(tls_dir: &Path) -> Receiver {
        let (certs, key) =
            presenced::credentials::read_tls(&tls_dir.join("cert.pem"), &tls_dir.join("key.pem"))
                .expect("tls");
        let tls =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .expect("cert");
        let mut tls = tls;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let status = Arc::new(AtomicU16::new(200));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, deliveries) = mpsc::unbounded_channel();
        let app = {
            let status = status.clone();
            let seen = seen.clone();
            axum::Router::new().route(
                "/hook",
                axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                    let status = status.clone();
                    let seen = seen.clone();
                    let tx = tx.clone();
                    async move {
                        let header = |name: &str| {
                            headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
                        };
                        let delivery = Delivery {
                            id: header("webhook-id"),
                            timestamp: header("webhook-timestamp"),
                            signature: header("webhook-signature"),
                            json: serde_json::from_slice(&body).unwrap_or_default(),
                            body,
                        };
                        let code = status.load(Ordering::Relaxed);
                        if (200..300).contains(&code) {
                            seen.lock().expect("lock").push(delivery.clone());
                            let _ = tx.send(delivery);
                        }
                        StatusCode::from_u16(code).unwrap_or(StatusCode::OK)
                    }
                }),
            )
        };
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let acceptor = acceptor.clone();
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else { return };
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Receiver { addr, pending: Default::default(), status, deliveries, seen }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/hook", self.addr.port())
    }

    /// The next accepted delivery.
    pub async fn next(&mut self) -> Delivery {
        tokio::time::timeout(super::WAIT, self.deliveries.recv())
            .await
            .expect("a webhook delivery in time")
            .expect("receiver running")
    }

    /// Every event received so far and not yet claimed, without waiting.
    pub fn drain(&mut self) -> Vec<serde_json::Value> {
        while let Ok(delivery) = self.deliveries.try_recv() {
            self.pending.extend(delivery.events());
        }
        self.pending.drain(..).collect()
    }

    /// The first event, in delivery order, matching `pred`; earlier non-matching events
    /// stay for later calls.
    pub async fn event(&mut self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        loop {
            if let Some(index) = self.pending.iter().position(&pred) {
                return self.pending.remove(index).expect("index in range");
            }
            let delivery = self.next().await;
            self.pending.extend(delivery.events());
        }
    }
}
