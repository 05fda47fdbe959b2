//! Floods against the real `presenced` binary over loopback (issue 17), each while an honest
//! client keeps being served and timed:
//!
//! - 4,096 HTTP/2 connections that send the preface and SETTINGS, then nothing: an honest
//!   AppService's presence poll and the admin API answer within 1 s throughout;
//! - slow request bodies from a valid app (Content-Length 131072, a byte every 2 s, 300
//!   opened a second, faster than the app's own default API rate and three times the
//!   issue's 95): they are cut off at the body timeout with 408 `request_timeout`, and the
//!   same honest calls answer within 1 s throughout;
//! - one user's 300 devices (the cap set to 300) churning Status frames: the 301st device is
//!   refused with `TOO_MANY_DEVICES`, and an honest device's ping Acks stay within their
//!   normal latency, measured against a control phase in the same test.
//!
//! The attackers connect from 127.0.0.2 and 127.0.0.3, the honest clients from 127.0.0.1
//! (every loopback address counts apart). The tests take the file-descriptor soft limit up
//! to the hard limit (the daemon inherits it) and run one at a time.

mod common;

#[path = "common/process.rs"]
mod process;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use presence_protocol::{ErrorCode, Message, Ping, PingKind, Status, StatusText, StatusUpdate};
use process::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// The honest calls' bound, from the issue.
const HONEST_BOUND: Duration = Duration::from_secs(1);
/// Idle connections in the first flood: the default `https_max_connections`.
const IDLE_FLOOD: usize = 4_096;
/// Slow-body connections being opened at once.
const OPENERS: usize = 48;
/// Slow bodies started per second, at most.
const SLOW_RATE: u32 = 300;
/// Idle connections being opened at once: fewer, since each is a TLS handshake the daemon
/// (a debug build in CI) queues ahead of an honest client's on two shared cores; the 4,096
/// are held all the same.
const IDLE_OPENERS: usize = 16;

/// One flood at a time: they share two cores with everything else.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Raises the soft file-descriptor limit to the hard one (the daemon, a child, inherits it)
/// and checks that `needed` descriptors fit.
fn enough_descriptors(needed: u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if limit.current.is_some_and(|soft| soft < hard) {
        limit.current = Some(hard);
        setrlimit(Resource::Nofile, limit).expect("raise the soft file-descriptor limit to the hard one");
    }
    assert!(
        hard >= needed,
        "this flood needs {needed} file descriptors per process but the hard limit (ulimit -Hn) is {hard}; \
         raise it (e.g. `ulimit -Hn 65536` as root) to run it"
    );
}

/// A daemon binary serving until dropped (then killed).
struct Binary {
    child: std::process::Child,
    info: presenced::credentials::DevInfo,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Binary {
    fn start(args: &[&str]) -> Binary {
        let dir = tempfile::tempdir().expect("tempdir");
        let (child, info) = serve_args(dir.path(), args);
        // A fresh connection for every honest call, as curl makes: pooled connections would
        // hide whether a new client can get in at all.
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(&info, None))
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        Binary { child, info, http, dir }
    }

    fn https_addr(&self) -> SocketAddr {
        self.info.https.trim_start_matches("https://").parse().expect("https address")
    }

    async fn metric(&self, name: &str) -> f64 {
        metric_value(&metrics_text(&self.http, &self.info).await, name)
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn refusals(reason: &str) -> String {
    format!("presence_refusals_total{{reason=\"{reason}\"}}")
}

/// The API key of a new app registered on the binary.
async fn app_key(binary: &Binary) -> String {
    let created = create_app(&binary.info, "flood", "https://127.0.0.1:9/hook").await;
    created["api_key"].as_str().expect("api key").to_owned()
}

/// The honest client's two calls, timed: a presence poll with the app's key and the admin
/// API's app list, each on a fresh connection from 127.0.0.1. Panics on an answer that is
/// not 200.
async fn honest_round(binary: &Binary, api_key: &str) -> Duration {
    let mut slowest = Duration::ZERO;
    let poll = binary.http.get(format!("{}/v1/presence/AAAAAAAAAAAAAAAAAAAAAA", binary.info.https));
    let admin = binary.http.get(format!("{}/v1/admin/apps", binary.info.https));
    for request in [poll.bearer_auth(api_key), admin.bearer_auth(&binary.info.admin_token)] {
        let started = Instant::now();
        let response = request.send().await.expect("an honest call is answered");
        assert_eq!(response.status(), 200);
        response.bytes().await.expect("body");
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

/// Runs honest rounds every 100 ms until `stop`; returns each round's slowest call.
fn honest_prober(
    binary: Arc<Binary>,
    api_key: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Duration>> {
    tokio::spawn(async move {
        let mut rounds = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            rounds.push(honest_round(&binary, &api_key).await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        rounds
    })
}

/// A TLS client configuration trusting the dev CA, offering `alpn` if given.
fn tls_config(info: &presenced::credentials::DevInfo, alpn: Option<&[u8]>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for root in presence_client::transport::read_roots(&info.ca_cert).expect("roots") {
        roots.add(root).expect("root");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(presenced::credentials::crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.into_iter().map(<[u8]>::to_vec).collect();
    config
}

/// A raw TLS connector offering `alpn`.
fn tls(binary: &Binary, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(Arc::new(tls_config(&binary.info, Some(alpn))))
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection to the binary from `source`, or `None` if the daemon closed it.
async fn connect_from(source: [u8; 4], to: SocketAddr, tls: &tokio_rustls::TlsConnector) -> Option<Tls> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::from((source, 0))).expect("bind a loopback source");
    let stream = socket.connect(to).await.ok()?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    tls.connect(name, stream).await.ok()
}

/// Whether the daemon closed `stream`: what it sent before is read first, then the end (or
/// an error) is there at once.
async fn closed(stream: &mut Tls) -> bool {
    let mut buffer = [0; 1024];
    loop {
        match tokio::time::timeout(Duration::from_millis(5), stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

fn summary(rounds: &[Duration]) -> (Duration, Duration) {
    let mut sorted = rounds.to_vec();
    sorted.sort();
    (sorted[sorted.len() / 2], *sorted.last().expect("some rounds"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_never_lock_out_the_app_or_the_admin() {
    let _serial = SERIAL.lock().await;
    // Ours (up to twice the flood), the daemon's (a child with the same limits), and room.
    enough_descriptors(2 * IDLE_FLOOD as u64 + 512);
    // The per-source limit is off, as behind a load balancer: what holds is the eviction of
    // idle connections, not the attacker's address.
    let binary = Arc::new(Binary::start(&["--https-max-per-source", "0"]));
    let key = app_key(&binary).await;
    let stop = Arc::new(AtomicBool::new(false));
    let prober = honest_prober(binary.clone(), key.clone(), stop.clone());

    let started = Instant::now();
    let tls = tls(&binary, b"h2");
    let to = binary.https_addr();
    // The attacker keeps opening: first the 4,096, then more while the flood is held, so the
    // listener stays full and every newcomer, honest or not, must take an idle one's place.
    let opened = Arc::new(AtomicUsize::new(0));
    let flooding = Arc::new(AtomicBool::new(true));
    let mut openers = tokio::task::JoinSet::new();
    for _ in 0..IDLE_OPENERS {
        let (tls, opened, flooding) = (tls.clone(), opened.clone(), flooding.clone());
        openers.spawn(async move {
            let mut held = Vec::new();
            while flooding.load(Ordering::Relaxed) && opened.load(Ordering::Relaxed) < 2 * IDLE_FLOOD {
                let Some(mut stream) = connect_from([127, 0, 0, 2], to, &tls).await else { continue };
                // The HTTP/2 preface and an empty SETTINGS frame, then silence.
                let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
                hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
                if stream.write_all(&hello).await.is_ok() && stream.flush().await.is_ok() {
                    held.push(stream);
                    opened.fetch_add(1, Ordering::Relaxed);
                }
            }
            let mut alive = 0;
            for stream in &mut held {
                alive += usize::from(!closed(stream).await);
            }
            (held.len(), alive)
        });
    }
    while opened.load(Ordering::Relaxed) < IDLE_FLOOD {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let flooded = started.elapsed();
    // Hold the flood, still opening, while the honest client keeps calling.
    tokio::time::sleep(Duration::from_secs(3)).await;
    flooding.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let rounds = prober.await.expect("prober");
    let (mut held, mut alive) = (0, 0);
    while let Some(counts) = openers.join_next().await {
        let counts = counts.expect("opener");
        held += counts.0;
        alive += counts.1;
    }
    let evicted = binary.metric(&refusals("https_idle_evicted")).await;
    let refused = binary.metric(&refusals("https_connections")).await;
    let (median, max) = summary(&rounds);
    println!(
        "idle flood: {IDLE_FLOOD} connections opened in {flooded:.1?}, {held} by the end, {alive} of them still held; \
         {} honest rounds (poll + admin), median {median:.1?}, max {max:.1?}; https_idle_evicted {evicted}, \
         https_connections {refused}",
        rounds.len(),
    );
    assert!(held > IDLE_FLOOD, "the attacker kept the listener full: {held} connections");
    assert!(alive >= IDLE_FLOOD * 3 / 4, "the idle connections were held, not refused: {alive} alive");
    // Everything beyond the cap took an idle connection's place (the oldest).
    assert!(evicted >= (held - IDLE_FLOOD) as f64, "newcomers evicted idle connections: {evicted}");
    assert_eq!(refused, 0.0, "nobody was turned away while connections were idle");
    assert!(rounds.len() >= 5, "the honest client kept calling through the flood: {} rounds", rounds.len());
    assert!(max < HONEST_BOUND, "every honest call answered within {HONEST_BOUND:?}: max {max:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_from_a_valid_app_are_cut_off_while_honest_calls_answer() {
    let _serial = SERIAL.lock().await;
    enough_descriptors(4_096 + 512);
    // No per-source limit (a load balancer's address) and a generous API rate: what holds is
    // the body timeout (5 s here, 10 by default), not the attacker's address or rate.
    let binary = Arc::new(Binary::start(&[
        "--https-max-per-source",
        "0",
        "--https-body-timeout-secs",
        "5",
        "--api-rate",
        "1000",
        "--api-burst",
        "2000",
    ]));
    let key = app_key(&binary).await;
    let attacker_key = app_key(&binary).await;
    let stop = Arc::new(AtomicBool::new(false));
    let prober = honest_prober(binary.clone(), key.clone(), stop.clone());

    let tls = tls(&binary, b"http/1.1");
    let to = binary.https_addr();
    let flood_until = Instant::now() + Duration::from_secs(10);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut attackers = tokio::task::JoinSet::new();
    for _ in 0..OPENERS {
        let (tls, key, in_flight, peak) =
            (tls.clone(), attacker_key.clone(), in_flight.clone(), peak.clone());
        attackers.spawn(async move {
            // (time from the headers to the answer, the answer's first bytes)
            let mut cut = Vec::new();
            let mut slow = tokio::task::JoinSet::new();
            // Together the openers start at most SLOW_RATE a second: three times the issue's
            // 95 and above the app's default API rate, yet the same on a fast machine as on
            // a slow one, so the busy connections stay below the cap (there is no cap to
            // test here: it is the body timeout that must let them go).
            let mut pace = tokio::time::interval(Duration::from_secs(OPENERS as u64) / SLOW_RATE);
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while Instant::now() < flood_until {
                pace.tick().await;
                let Some(mut stream) = connect_from([127, 0, 0, 3], to, &tls).await else { continue };
                let head = format!(
                    "POST /v1/presence/query HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {key}\r\n\
                     content-type: application/json\r\ncontent-length: 131072\r\n\r\n["
                );
                if stream.write_all(head.as_bytes()).await.is_err() {
                    continue;
                }
                let now = in_flight.fetch_add(1, Ordering::Relaxed) + 1;
                peak.fetch_max(now, Ordering::Relaxed);
                let in_flight = in_flight.clone();
                slow.spawn(async move {
                    let sent = Instant::now();
                    let mut answer = vec![0; 512];
                    let mut len = 0;
                    // A byte every 2 s, reading whatever the daemon says meanwhile.
                    loop {
                        tokio::select! {
                            read = stream.read(&mut answer[len..]) => match read {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    len += n;
                                    if len == answer.len() { break }
                                }
                            },
                            _ = tokio::time::sleep(Duration::from_secs(2)) => {
                                if stream.write_all(b" ").await.is_err() { break }
                            }
                        }
                        if sent.elapsed() > Duration::from_secs(20) {
                            break;
                        }
                    }
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                    (sent.elapsed(), String::from_utf8_lossy(&answer[..len]).into_owned())
                });
            }
            while let Some(done) = slow.join_next().await {
                cut.push(done.expect("slow body"));
            }
            cut
        });
    }
    let mut cut = Vec::new();
    while let Some(batch) = attackers.join_next().await {
        cut.extend(batch.expect("attacker"));
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = prober.await.expect("prober");
    let timeouts = binary.metric(&refusals("https_body_timeout")).await;
    let with_408: Vec<&(Duration, String)> = cut
        .iter()
        .filter(|(_, answer)| {
            answer.starts_with("HTTP/1.1 408") && answer.contains("\"code\":\"request_timeout\"")
        })
        .collect();
    let slowest_cut = with_408.iter().map(|(after, _)| *after).max().unwrap_or_default();
    let (median, max) = summary(&rounds);
    println!(
        "slow bodies: {} opened, at most {} at once; {} answered 408 request_timeout, the last after {slowest_cut:.1?}; \
         https_body_timeout {timeouts}; {} honest rounds (poll + admin), median {median:.1?}, max {max:.1?}",
        cut.len(),
        peak.load(Ordering::Relaxed),
        with_408.len(),
        rounds.len(),
    );
    assert!(cut.len() >= 200, "the flood was a flood: {} slow bodies", cut.len());
    assert!(
        with_408.len() * 10 >= cut.len() * 9,
        "nine in ten slow bodies were cut off with a JSON 408: {} of {} (an answer: {:?})",
        with_408.len(),
        cut.len(),
        cut.iter().find(|(_, answer)| !answer.starts_with("HTTP/1.1 408")),
    );
    assert!(slowest_cut < Duration::from_secs(9), "cut at the 5 s body timeout, not later: {slowest_cut:?}");
    assert!(timeouts >= with_408.len() as f64, "each counted: {timeouts}");
    assert!(rounds.len() >= 5, "the honest client kept calling through the flood: {} rounds", rounds.len());
    assert!(max < HONEST_BOUND, "every honest call answered within {HONEST_BOUND:?}: max {max:?}");
}

/// Ack round trips of `count` ack-requesting pings from `device`, one every 250 ms (within
/// the default ping rate); a lost Ack is `None`.
async fn ack_latencies(device: &RawDevice, first_seq: u8, count: u8) -> Vec<Option<Duration>> {
    let mut latencies = Vec::new();
    for i in 0..count {
        let seq = first_seq.wrapping_add(i);
        let sent = Instant::now();
        device.ping(Status::Online, seq, true);
        let deadline = sent + Duration::from_millis(240);
        let mut latency = None;
        while let Ok(Ok(payload)) = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            device.connection.read_datagram(),
        )
        .await
        {
            if Ping::decode(&payload).is_ok_and(|ping| ping.kind == PingKind::Ack && ping.seq == seq) {
                latency = Some(sent.elapsed());
                break;
            }
        }
        latencies.push(latency);
        tokio::time::sleep(deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(10))
            .await;
    }
    latencies
}

fn p90(latencies: &[Option<Duration>]) -> Duration {
    let mut got: Vec<Duration> = latencies.iter().flatten().copied().collect();
    got.sort();
    got.get(got.len() * 9 / 10).copied().unwrap_or(Duration::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_churning_devices_leave_an_honest_devices_acks_on_time() {
    const CROWD: usize = 300;
    let _serial = SERIAL.lock().await;
    enough_descriptors(1_024);
    let binary = Binary::start(&["--max-devices-per-user", &CROWD.to_string()]);
    let signer = presenced::credentials::dev_signer(binary.dir.path()).expect("the dev signer");
    let roots = presence_client::transport::read_roots(&binary.info.ca_cert).expect("roots");
    let quic = binary.info.quic;
    // 64 apps on every device of the crowd, as in the issue.
    let apps: Vec<String> = (0..64).map(|i| format!("app_crowd{i:02}")).collect();
    let apps: Vec<&str> = apps.iter().map(String::as_str).collect();
    let shared =
        presence_client::transport::endpoint("127.0.0.1:0".parse().expect("addr"), &roots).expect("endpoint");
    let mut crowd = Vec::new();
    for i in 0..CROWD {
        let device = format!("d{i}");
        let token = signer.mint("crowd", &device, unix_now(), 3_600);
        let mut raw = RawDevice::connect_on(&shared, quic).await;
        raw.send_message(&Message::Hello(hello(&token, &device, Status::Online, &apps))).await;
        let answer = raw.next_message().await;
        assert!(matches!(answer, Some(Message::Welcome(_))), "device {i}: {answer:?}");
        crowd.push(raw);
    }
    // One more of the same user: refused with the specified code, nothing else disturbed.
    let token = signer.mint("crowd", "one-too-many", unix_now(), 3_600);
    let mut extra = RawDevice::connect_on(&shared, quic).await;
    extra.send_message(&Message::Hello(hello(&token, "one-too-many", Status::Online, &apps))).await;
    let answer = extra.next_message().await;
    assert!(
        matches!(answer, Some(Message::Error(ref e)) if e.code == ErrorCode::TOO_MANY_DEVICES),
        "{answer:?}"
    );
    assert_eq!(extra.close_code().await, Some(u64::from(ErrorCode::TOO_MANY_DEVICES.0)));
    assert_eq!(binary.metric(&refusals("devices_per_user")).await, 1.0);

    let honest_token = signer.mint("honest", "phone", unix_now(), 3_600);
    let (honest, answer) =
        RawDevice::hello(quic, &roots, hello(&honest_token, "phone", Status::Online, &["app_crowd00"])).await;
    assert!(matches!(answer, Message::Welcome(_)), "{answer:?}");

    let control = ack_latencies(&honest, 0, 20).await;
    // Churn: every crowd device sends 5 Status frames a second (online and away in turn),
    // spread evenly, for as long as the churn phase is measured.
    let churning = Arc::new(AtomicBool::new(true));
    let sent = Arc::new(AtomicUsize::new(0));
    let churn = {
        let (churning, sent) = (churning.clone(), sent.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut next = 0usize;
            let mut seq = 1u8;
            while churning.load(Ordering::Relaxed) {
                tick.tick().await;
                // 300 devices × 5 a second = 15 frames every 10 ms.
                for _ in 0..15 {
                    let status = if seq % 2 == 0 { Status::Online } else { Status::Away };
                    let update = StatusUpdate { status, idle: false, message: StatusText::default(), seq };
                    crowd[next].send_message(&Message::Status(update)).await;
                    next += 1;
                    if next == crowd.len() {
                        next = 0;
                        seq = seq.wrapping_add(1);
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            crowd
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let churned_from = sent.load(Ordering::Relaxed);
    let during = ack_latencies(&honest, 100, 20).await;
    let frames = sent.load(Ordering::Relaxed) - churned_from;
    churning.store(false, Ordering::Relaxed);
    let crowd = churn.await.expect("churn");
    let changes = binary.metric("presence_status_changes_total").await;
    let closed = binary.metric(&refusals("session_rate_limited")).await;
    let (control_p90, churn_p90) = (p90(&control), p90(&during));
    let lost =
        (control.iter().filter(|l| l.is_none()).count(), during.iter().filter(|l| l.is_none()).count());
    let bound = (control_p90 * 10).max(Duration::from_millis(100));
    println!(
        "churn: {CROWD} devices x 64 apps, {frames} Status frames during the {} measured pings ({changes} status changes \
         applied); honest Acks: control p90 {control_p90:.1?} ({} lost), churn p90 {churn_p90:.1?} ({} lost), bound {bound:.1?}",
        during.len(),
        lost.0,
        lost.1,
    );
    assert_eq!(closed, 0.0, "the churn stayed within the per-session frame rate");
    assert!(frames >= 3_000, "the crowd churned: {frames} frames in the measured phase");
    assert!(changes >= frames as f64 / 2.0, "the daemon applied the churn: {changes} changes");
    assert_eq!(lost, (0, 0), "no Ack lost, before or during the churn");
    assert!(churn_p90 < bound, "honest Acks within normal latency: p90 {churn_p90:?} against {bound:?}");
    drop(crowd);
}
