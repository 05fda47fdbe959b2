//! The `presenced` binary and a device through a real network path: network namespaces
//! joined by veth pairs (see `common/netns.rs`), a masquerading router whose UDP bindings
//! expire after a short conntrack timeout, and packet loss and delay.
//!
//! The daemon runs as its binary in the server namespace (`ip netns exec`); the device is the
//! presence-client library on a thread inside the device namespace; the AppService (webhook
//! receiver and API calls) runs on a thread inside the server namespace and reaches the
//! daemon on that namespace's loopback. Each test prints `SKIPPED` and returns where
//! namespaces, netfilter or netem are missing.

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

#[path = "common/netns.rs"]
mod netns;
#[path = "common/process.rs"]
mod process;
use common::receiver::Receiver;
use netns::{Impairment, Net, SERVER_ADDR, skip};
use presence_client::{AdaptCause, AdaptiveHeartbeat, Client, ClientOptions, Event, transport};
use presence_protocol::Status;
use presenced::credentials::DevInfo;
use serde_json::{Value, json};

use process::BIN;

/// The daemon binary in the server namespace; killed on drop.
struct Daemon {
    child: Child,
    info: DevInfo,
    http: reqwest::Client,
}

impl Daemon {
    fn start(net: &Net, dir: &Path) -> Daemon {
        let quic = format!("{SERVER_ADDR}:4433");
        let child = net
            .command(&net.server, BIN)
            .args([
                "serve",
                "--dev",
                "--quic-listen",
                &quic,
                "--https-listen",
                "127.0.0.1:0",
                "--log",
                "warn",
            ])
            .arg("--data-dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn presenced in the server namespace");
        let started = Instant::now();
        let info = loop {
            if let Ok(info) = DevInfo::load(dir) {
                break info;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "dev.json not written in time");
            std::thread::sleep(Duration::from_millis(50));
        };
        let http = presenced::credentials::https_client(&info.ca_cert).expect("https client");
        Daemon { child, info, http }
    }

    fn token(&self, dir: &Path, user: &str, device: &str) -> String {
        process::token(dir, user, device)
    }

    /// Registers an app through the admin API: (app id, API key).
    async fn register(&self, webhook: &str) -> (String, String) {
        let response = self
            .http
            .post(format!("{}/v1/admin/apps", self.info.https))
            .bearer_auth(&self.info.admin_token)
            .json(&json!({"name": "chat", "webhook_url": webhook}))
            .send()
            .await
            .expect("admin API");
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.expect("json");
        (body["app_id"].as_str().expect("id").to_owned(), body["api_key"].as_str().expect("key").to_owned())
    }

    async fn api(&self, key: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.info.https)).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("API call");
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }

    async fn metric(&self, name: &str) -> f64 {
        let url = format!("{}/metrics", self.info.https);
        let text = self.http.get(url).send().await.expect("metrics").text().await.expect("text");
        common::metric_value(&text, name)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a device client on a thread inside the device namespace. The client's driver
/// (and its UDP socket) live on that thread's runtime until `stop` is dropped.
fn start_device(
    net: &Net,
    options: ClientOptions,
) -> (Client, std::thread::JoinHandle<()>, tokio::sync::oneshot::Sender<()>) {
    let (client_tx, client_rx) = std_mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = net.spawn_in(&net.device, move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            client_tx.send(Client::start(options).expect("client")).expect("hand over the client");
            let _ = stopped.await;
        });
    });
    (client_rx.recv().expect("client started"), thread, stop)
}

/// Runs `body` on a thread inside the server namespace with its own runtime.
fn in_server_ns<T: Send + 'static>(
    net: &Net,
    body: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> T {
    let thread = net.spawn_in(&net.server, move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(body())
    });
    match thread.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The next device event matching `pred` within `within`; heartbeat adaptations on the way
/// are logged (and kept in `log`).
async fn device_event(
    client: &mut Client,
    log: &mut Vec<(Duration, Event)>,
    start: Instant,
    within: Duration,
    pred: impl Fn(&Event) -> bool,
) -> Event {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let event = tokio::time::timeout_at(deadline, client.next_event())
            .await
            .unwrap_or_else(|_| panic!("no matching device event within {within:?}; log: {log:#?}"))
            .expect("client running");
        if let Event::HeartbeatAdapted { interval, proven, cause } = &event {
            eprintln!("{:>6.1?} heartbeat {interval:.1?} proven {proven:?} {cause:?}", start.elapsed());
        }
        log.push((start.elapsed(), event.clone()));
        if pred(&event) {
            return event;
        }
    }
}

fn settled(event: &Event) -> Option<Duration> {
    match event {
        Event::HeartbeatAdapted { interval, cause: AdaptCause::Settled, .. } => Some(*interval),
        _ => None,
    }
}

/// Posts a live notification and waits for the device to show it.
async fn push_arrives(
    daemon: &Daemon,
    key: &str,
    puid: &str,
    client: &mut Client,
    log: &mut Vec<(Duration, Event)>,
    start: Instant,
) -> Duration {
    let body = json!({"to": [puid], "title": "ping", "ttl_ms": 30_000});
    let sent = Instant::now();
    let (status, created) = daemon.api(key, reqwest::Method::POST, "/v1/notifications", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["recipients"][0]["outcome"], "pending", "the device counts as online: {created}");
    let shown =
        device_event(client, log, start, Duration::from_secs(5), |e| matches!(e, Event::Notification { .. }))
            .await;
    let took = sent.elapsed();
    // Answered, so that no later cancel (at expiry) refreshes the binding behind the test's back.
    let Event::Notification { id, .. } = shown else { unreachable!() };
    client.accept(id).await.expect("accept");
    took
}

/// The adaptive heartbeat through a NAT whose bindings expire after 10 s of silence: it
/// settles between its lower bound and the NAT's timeout, pushes reach the device between
/// heartbeats, and when the NAT's timeout drops below the learned interval the device hears
/// of the lapsed binding at its next heartbeat and falls back at once, then relearns.
#[test]
fn adaptive_heartbeat_learns_a_real_nat_timeout_and_falls_back_when_it_shrinks() {
    const TEST: &str = "netns::adaptive_heartbeat_learns_a_real_nat_timeout_and_falls_back_when_it_shrinks";
    let net = match Net::behind_nat("nat", 10) {
        Ok(net) => net,
        Err(reason) => return skip(TEST, &reason),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&net, dir.path());
    let token = daemon.token(dir.path(), "alice", "phone");
    let bounds = AdaptiveHeartbeat {
        min: Duration::from_secs(3),
        max: Duration::from_secs(60),
        growth_percent: 200,
        ..AdaptiveHeartbeat::default()
    };
    let (net, daemon) = (std::sync::Arc::new(net), std::sync::Arc::new(daemon));
    let (net2, daemon2, tls) = (net.clone(), daemon.clone(), dir.path().join("tls"));
    in_server_ns(&net.clone(), move || {
        Box::pin(async move {
            let (net, daemon) = (net2, daemon2);
            let mut receiver = Receiver::start(&tls).await;
            let (app, key) = daemon.register(&receiver.url()).await;
            let roots = transport::read_roots(&daemon.info.ca_cert).expect("roots");
            let mut options = ClientOptions::new(daemon.info.quic, roots, token);
            options.visibility = vec![app.clone()];
            options.adaptive_heartbeat(bounds);
            let (mut client, device, stop) = start_device(&net, options);
            let start = Instant::now();
            let mut log = Vec::new();
            let online = receiver.event(|e| e["type"] == "presence").await;
            let puid = online["puid"].as_str().expect("puid").to_owned();

            // Learning: it settles between the lower bound and the NAT's 10 s.
            let event = device_event(&mut client, &mut log, start, Duration::from_secs(120), |e| {
                settled(e).is_some()
            })
            .await;
            let learned = settled(&event).expect("settled");
            let learned_at = start.elapsed();
            assert!(
                learned > Duration::from_secs(3) && learned < Duration::from_secs(10),
                "learned {learned:?}"
            );
            for (_, event) in &log {
                if let Event::HeartbeatAdapted { proven, .. } = event {
                    assert!(*proven < Duration::from_secs(10), "only echoes prove a delay: {proven:?}");
                }
            }

            // Steady state: pushes arrive late in a heartbeat interval, and the binding never
            // lapses (no migration at the daemon).
            let migrations = daemon.metric("presence_migrations_total").await;
            for _ in 0..2 {
                tokio::time::sleep(learned.mul_f64(0.8)).await;
                let took = push_arrives(&daemon, &key, &puid, &mut client, &mut log, start).await;
                assert!(took < Duration::from_secs(2), "push took {took:?}");
            }
            // Between pushes the device is silent but for its heartbeats: no QUIC keep-alives,
            // no ACK-only chatter (each heartbeat is one packet; the push above was answered).
            tokio::time::sleep(Duration::from_secs(1)).await;
            let before = net.device_packets();
            tokio::time::sleep(learned * 3).await;
            let sent = net.device_packets() - before;
            assert!((2..=4).contains(&sent), "{sent} device packets in three heartbeat intervals");
            assert_eq!(daemon.metric("presence_migrations_total").await, migrations, "a binding lapsed");

            // The network now drops bindings after 5 s. The binding refreshed last keeps its
            // old timeout; once refreshed under the new one, the next heartbeat finds it gone
            // (within two intervals, three if other traffic refreshed it in between), the
            // daemon sees a new address and says so, and the device falls back.
            net.set_nat_timeout(5).expect("shorten the NAT timeout");
            let shortened = start.elapsed();
            let fallback =
                device_event(&mut client, &mut log, start, learned * 3 + Duration::from_secs(5), |e| {
                    matches!(e, Event::HeartbeatAdapted { cause: AdaptCause::PathChanged, .. })
                })
                .await;
            let noticed = start.elapsed() - shortened;
            let Event::HeartbeatAdapted { interval, .. } = fallback else { unreachable!() };
            assert_eq!(interval, Duration::from_secs(3), "back to the lower bound at once");
            assert!(noticed <= learned * 3 + Duration::from_secs(3), "noticed after {noticed:?}");
            let event =
                device_event(&mut client, &mut log, start, Duration::from_secs(90), |e| settled(e).is_some())
                    .await;
            let relearned = settled(&event).expect("settled");
            assert!(
                relearned >= Duration::from_secs(3) && relearned < Duration::from_secs(5),
                "relearned {relearned:?}"
            );
            let took = push_arrives(&daemon, &key, &puid, &mut client, &mut log, start).await;
            assert!(took < Duration::from_secs(2));
            eprintln!(
                "NAT 10 s: learned {learned:?} at {learned_at:?}, {sent} device packets in 3 intervals; \
                 NAT 5 s: noticed after {noticed:?}, relearned {relearned:?}"
            );
            client.close().await;
            drop(stop);
            device.join().expect("device thread");
        })
    });
}

/// Heartbeats per hour against the NAT's timeout, for BENCHMARKS.md. Slow (about ten
/// minutes for a 60 s NAT): `cargo test -p presenced --test netns -- --ignored --nocapture
/// heartbeats_per_hour` (NAT timeouts from `PRESENCE_NAT_TIMEOUTS`, default 15,30,60).
#[test]
#[ignore = "a measurement of several minutes; run by hand for BENCHMARKS.md"]
fn heartbeats_per_hour_against_the_nat_timeout() {
    const TEST: &str = "netns::heartbeats_per_hour_against_the_nat_timeout";
    let timeouts: Vec<u32> = std::env::var("PRESENCE_NAT_TIMEOUTS")
        .unwrap_or_else(|_| "15,30,60".into())
        .split(',')
        .map(|t| t.trim().parse().expect("seconds"))
        .collect();
    let runs: Vec<_> = timeouts
        .into_iter()
        .map(|timeout| {
            std::thread::spawn(move || {
                let net = match Net::behind_nat(&format!("hb{timeout}"), timeout) {
                    Ok(net) => net,
                    Err(reason) => {
                        skip(TEST, &reason);
                        return None;
                    }
                };
                let dir = tempfile::tempdir().expect("tempdir");
                let daemon = Daemon::start(&net, dir.path());
                let token = daemon.token(dir.path(), "alice", "phone");
                let roots = transport::read_roots(&daemon.info.ca_cert).expect("roots");
                let mut options = ClientOptions::new(daemon.info.quic, roots, token);
                options.adaptive_heartbeat(AdaptiveHeartbeat {
                    min: Duration::from_secs(10),
                    ..AdaptiveHeartbeat::default()
                });
                let net = std::sync::Arc::new(net);
                let net2 = net.clone();
                let (learned, took) = in_server_ns(&net.clone(), move || {
                    Box::pin(async move {
                        let (mut client, device, stop) = start_device(&net2, options);
                        let (start, mut log) = (Instant::now(), Vec::new());
                        let event =
                            device_event(&mut client, &mut log, start, Duration::from_secs(20 * 60), |e| {
                                settled(e).is_some()
                            })
                            .await;
                        let learned = settled(&event).expect("settled");
                        client.close().await;
                        drop(stop);
                        device.join().expect("device thread");
                        (learned, start.elapsed())
                    })
                });
                drop(daemon);
                Some((timeout, learned, took))
            })
        })
        .collect();
    println!(
        "| NAT UDP timeout | learned interval | learned after | heartbeats per hour | fixed 25 s default |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for run in runs {
        if let Some((timeout, learned, took)) = run.join().expect("run") {
            assert!(learned < Duration::from_secs(u64::from(timeout)));
            println!(
                "| {timeout} s | {:.1} s | {:.0} s | {:.0} | 144 |",
                learned.as_secs_f64(),
                took.as_secs_f64(),
                3600.0 / learned.as_secs_f64()
            );
        }
    }
}

/// Packet loss and delay on the path (netem where the kernel has it, else random drops by
/// nftables): a device changes status six times, and the AppService's view converges on the
/// final status with increasing sequence numbers, never showing the device offline.
#[test]
fn presence_converges_without_flapping_under_loss_and_delay() {
    const TEST: &str = "netns::presence_converges_without_flapping_under_loss_and_delay";
    let net = match Net::behind_nat("loss", 120) {
        Ok(net) => net,
        Err(reason) => return skip(TEST, &reason),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&net, dir.path());
    let token = daemon.token(dir.path(), "bob", "phone");
    let (net, daemon) = (std::sync::Arc::new(net), std::sync::Arc::new(daemon));
    let (net2, daemon2, tls) = (net.clone(), daemon.clone(), dir.path().join("tls"));
    in_server_ns(&net.clone(), move || {
        Box::pin(async move {
            let (net, daemon) = (net2, daemon2);
            let mut receiver = Receiver::start(&tls).await;
            let (app, key) = daemon.register(&receiver.url()).await;
            let roots = transport::read_roots(&daemon.info.ca_cert).expect("roots");
            let mut options = ClientOptions::new(daemon.info.quic, roots, token);
            options.visibility = vec![app.clone()];
            options.heartbeat = Duration::from_secs(5);
            let (client, device, stop) = start_device(&net, options);
            let online = receiver.event(|e| e["type"] == "presence").await;
            let puid = online["puid"].as_str().expect("puid").to_owned();

            let impairment = net.impair(15, 150).expect("impair the path");
            match impairment {
                Impairment::Netem => eprintln!("{TEST}: netem, 15% loss and 150 ms delay each way"),
                Impairment::NftLoss => skip(
                    &format!("{TEST} (delay part)"),
                    "the kernel has no sch_netem: 15% random loss each way by nftables, no added delay",
                ),
            }
            let changes = [
                Status::Away,
                Status::Unavailable,
                Status::Online,
                Status::Away,
                Status::Unavailable,
                Status::Online,
            ];
            for (i, status) in changes.iter().enumerate() {
                let message = (i % 2 == 1).then(|| format!("change {i}"));
                client.set_status(*status, message).await.expect("set status");
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            let last = changes.last().expect("changes").as_str();

            // The AppService's poll converges on the final status ...
            let deadline = Instant::now() + Duration::from_secs(60);
            let polled = loop {
                let (status, view) =
                    daemon.api(&key, reqwest::Method::GET, &format!("/v1/presence/{puid}"), None).await;
                assert_eq!(status, 200, "{view}");
                if view["status"] == last {
                    break view;
                }
                assert!(Instant::now() < deadline, "the poll never showed {last}: {view}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            };
            // ... and so do its webhooks: increasing seqs, the final status last, and never
            // offline while the device lives.
            let deadline = Instant::now() + Duration::from_secs(30);
            let events = loop {
                let events: Vec<Value> = receiver
                    .seen
                    .lock()
                    .expect("lock")
                    .iter()
                    .flat_map(|d| d.events())
                    .filter(|e| e["type"] == "presence" && e["puid"] == puid.as_str())
                    .collect();
                if events.last().is_some_and(|e| e["seq"] == polled["seq"]) {
                    break events;
                }
                assert!(
                    Instant::now() < deadline,
                    "webhooks never caught up with the poll {polled}: {events:#?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().expect("seq")).collect();
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seqs not increasing: {seqs:?}");
            assert!(events.iter().all(|e| e["status"] != "offline"), "offline while alive: {events:#?}");
            assert_eq!(events.last().expect("events")["status"], last);
            assert!(events.len() <= changes.len() + 1, "flapping: {events:#?}");
            assert_eq!(
                daemon.metric("presence_sessions{state=\"online\"}").await,
                1.0,
                "one session throughout"
            );
            let dropped = net.dropped(impairment);
            assert!(dropped > 0, "the path lost nothing: the test would prove nothing");
            eprintln!(
                "{TEST}: {} webhook events, seqs {seqs:?}, {impairment:?}, {dropped} packets dropped",
                events.len()
            );
            drop(client);
            drop(stop);
            device.join().expect("device thread");
        })
    });
}
