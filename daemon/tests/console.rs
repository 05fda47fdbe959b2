//! The web console in a real browser: Debian's headless `chromium`, driven over WebDriver by
//! `chromedriver`, against an in-process dev daemon, a real HTTPS webhook receiver and real
//! QUIC devices. Each test starts its own chromedriver on a free loopback port and saves a
//! screenshot under `target/tmp/console-screenshots/`. Where chromium or chromedriver is
//! missing the tests fail, saying how to install them: they never skip. (One test needs this
//! host to have an address besides loopback, to reach the daemon from; on a host with none
//! it fails, saying how to add one.)
//!
//! WebDriver is spoken as plain JSON over HTTP with the reqwest client the other tests use:
//! the dozen commands needed do not earn a WebDriver crate and its dependencies.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use common::receiver::Receiver;
use common::*;
use presence_client::{Client, Event};
use presence_protocol::Status;
use presenced::testing::console::{CONTENT_SECURITY_POLICY, ROUTES};
use presenced::testing::webhook::secret::{DEFAULT_TOLERANCE, WebhookSecret};
use reqwest::Method;
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Upper bound for anything the page is waited for (it polls every 2 s).
const PAGE_WAIT: Duration = Duration::from_secs(20);
/// The W3C WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless chromium behind its own chromedriver. Dropping it kills chromedriver's whole
/// process group (chromedriver and the browser it started), so a failed test leaves no
/// browser behind.
struct Browser {
    driver: Child,
    http: reqwest::Client,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let pid = self.driver.id() as i32;
        if let Some(group) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("address").port()
}

fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots")
}

impl Browser {
    async fn start() -> Browser {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: the console tests drive a real browser. Install it with \
                 `apt-get install -y chromium chromium-driver` (.ci/run does; package {package})"
            );
        }
        let profile = tempfile::tempdir().expect("a browser profile dir");
        let port = free_port();
        let log = std::fs::File::create(profile.path().join("chromedriver.log")).expect("log file");
        let driver = {
            use std::os::unix::process::CommandExt;
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                // Its own group, so that Drop ends the browser with it.
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"))
        };
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Browser { driver, http, base, session: String::new(), _profile: profile };
        let ready = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let Ok(response) = browser.http.get(format!("{}/status", browser.base)).send().await {
                    if let Ok(status) = response.json::<Value>().await {
                        if status["value"]["ready"] == true {
                            return;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(ready.is_ok(), "chromedriver did not answer on port {port} within 20 s");
        let args = json!([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
            "--password-store=basic",
            "--window-size=1280,1000",
            format!("--user-data-dir={}", browser._profile.path().join("profile").display()),
        ]);
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            // The dev daemon's certificate is self-signed.
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            // The browser's console, to read CSP violations from.
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let session = browser.raw(Method::POST, "/session", Some(capabilities)).await;
        let session = session.unwrap_or_else(|e| panic!("chromium did not start under chromedriver: {e}"));
        browser.session = session["sessionId"].as_str().expect("a session id").to_owned();
        browser
    }

    /// One WebDriver command; `Err` with WebDriver's error and message.
    async fn raw(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| format!("chromedriver: {e}"))?;
        let ok = response.status().is_success();
        let json: Value = response.json().await.map_err(|e| format!("chromedriver answer: {e}"))?;
        if ok {
            Ok(json["value"].clone())
        } else {
            Err(format!("{}: {}", json["value"]["error"], json["value"]["message"]))
        }
    }

    async fn command(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.raw(method, &path, body).await.unwrap_or_else(|e| panic!("WebDriver {path}: {e}"))
    }

    async fn goto(&self, url: &str) {
        self.command(Method::POST, "/url", Some(json!({"url": url}))).await;
    }

    async fn refresh(&self) {
        self.command(Method::POST, "/refresh", Some(json!({}))).await;
    }

    /// Runs `script` in the page with `args`; its return value.
    async fn script(&self, script: &str, args: Value) -> Value {
        self.command(Method::POST, "/execute/sync", Some(json!({"script": script, "args": args}))).await
    }

    /// The text of the first element matching `css` (`None` if there is none), read in one
    /// step so the page's re-rendering cannot make it stale.
    async fn text(&self, css: &str) -> Option<String> {
        let text = self
            .script(
                "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
                json!([css]),
            )
            .await;
        text.as_str().map(str::to_owned)
    }

    /// Whether the first element matching `css` is shown (not `hidden`, nor inside a hidden one).
    async fn shown(&self, css: &str) -> bool {
        let script = "const e = document.querySelector(arguments[0]); return !!e && e.offsetParent !== null;";
        self.script(script, json!([css])).await == true
    }

    /// Waits until the text of `css` satisfies `want`; returns it. Saves a screenshot and
    /// fails with the last text seen otherwise.
    async fn wait_text(&self, css: &str, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + PAGE_WAIT;
        loop {
            let text = self.text(css).await;
            if let Some(text) = text.as_deref().filter(|t| want(t)) {
                return text.to_owned();
            }
            if tokio::time::Instant::now() > deadline {
                self.screenshot("failure").await;
                panic!("{css}: waited {PAGE_WAIT:?} for {what}; last text: {text:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `css` is shown (`true`) or hidden (`false`).
    async fn wait_shown(&self, css: &str, shown: bool) {
        let deadline = tokio::time::Instant::now() + PAGE_WAIT;
        while self.shown(css).await != shown {
            if tokio::time::Instant::now() > deadline {
                self.screenshot("failure").await;
                panic!("{css}: waited {PAGE_WAIT:?} for it to be {}", if shown { "shown" } else { "hidden" });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The first element matching `css`, waited for.
    async fn find(&self, css: &str) -> String {
        let deadline = tokio::time::Instant::now() + PAGE_WAIT;
        loop {
            let found = self
                .raw(
                    Method::POST,
                    &format!("/session/{}/element", self.session),
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await;
            if let Ok(element) = found {
                return element[ELEMENT].as_str().expect("an element reference").to_owned();
            }
            if tokio::time::Instant::now() > deadline {
                self.screenshot("failure").await;
                panic!("no element {css} within {PAGE_WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks `css`, finding it again if the page re-rendered it meanwhile.
    async fn click(&self, css: &str) {
        for _ in 0..20 {
            let element = self.find(css).await;
            let path = format!("/session/{}/element/{element}/click", self.session);
            match self.raw(Method::POST, &path, Some(json!({}))).await {
                Ok(_) => return,
                Err(error) if error.contains("stale element") => continue,
                Err(error) => panic!("click {css}: {error}"),
            }
        }
        panic!("click {css}: the element kept going stale");
    }

    /// Types `text` into the field `css` after clearing it.
    async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.command(Method::POST, &format!("/element/{element}/clear"), Some(json!({}))).await;
        self.command(Method::POST, &format!("/element/{element}/value"), Some(json!({"text": text}))).await;
    }

    /// Saves a PNG of the window as `<name>.png` under the screenshot directory.
    async fn screenshot(&self, name: &str) -> PathBuf {
        let path = format!("/session/{}/screenshot", self.session);
        let shot = self.raw(Method::GET, &path, None).await.expect("a screenshot");
        let png =
            base64::engine::general_purpose::STANDARD.decode(shot.as_str().expect("base64")).expect("PNG");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        let file = dir.join(format!("{name}.png"));
        std::fs::write(&file, png).expect("write the screenshot");
        file
    }

    /// Signs in with `token` on the console's sign-in form.
    async fn sign_in(&self, token: &str) {
        self.wait_shown("#sign-in-view", true).await;
        self.type_into("#token", token).await;
        self.click("#sign-in-submit").await;
    }

    /// The browser console's messages since the last call.
    async fn console_log(&self) -> Vec<String> {
        let log = self.command(Method::POST, "/se/log", Some(json!({"type": "browser"}))).await;
        let entries = log.as_array().cloned().unwrap_or_default();
        entries.iter().filter_map(|entry| entry["message"].as_str().map(str::to_owned)).collect()
    }

    /// Fails if the browser refused anything under the console's Content-Security-Policy
    /// (an inline script or style, a foreign source) since the last look.
    async fn assert_no_csp_violations(&self) {
        let refused: Vec<String> =
            self.console_log().await.into_iter().filter(|m| m.contains("Content Security Policy")).collect();
        assert!(refused.is_empty(), "CSP violations: {refused:#?}");
    }

    /// Whether the page shows `needle` anywhere.
    async fn shows(&self, needle: &str) -> bool {
        self.script("return document.body.innerText.includes(arguments[0]);", json!([needle])).await == true
    }
}

/// A daemon, its console's URL, and an HTTPS webhook receiver trusting-wise like any test's.
async fn setup(dir: &Path) -> (TestDaemon, Receiver, String) {
    let daemon = TestDaemon::start(dir).await;
    let receiver = Receiver::start(&dir.join("tls")).await;
    let console = daemon.url("/console");
    (daemon, receiver, console)
}

/// The PUID the app knows a device's user by, from the first presence webhook.
async fn puid_from_webhooks(receiver: &mut Receiver) -> String {
    let event = receiver.event(|e| e["type"] == "presence" && e["status"] == "online").await;
    event["puid"].as_str().expect("puid").to_owned()
}

/// The next delivery with an event matching `pred`.
async fn delivery_with(receiver: &mut Receiver, pred: impl Fn(&Value) -> bool) -> common::receiver::Delivery {
    loop {
        let delivery = receiver.next().await;
        if delivery.events().iter().any(&pred) {
            return delivery;
        }
    }
}

/// An app with a connected device, whose owner is signed in to the console.
struct Owner {
    daemon: TestDaemon,
    receiver: Receiver,
    client: Client,
    puid: String,
    browser: Browser,
    _dir: tempfile::TempDir,
}

impl Owner {
    async fn start() -> Owner {
        let dir = tempfile::tempdir().expect("tempdir");
        let (daemon, mut receiver, console) = setup(dir.path()).await;
        let app = daemon.register("chat", &receiver.url()).await;
        let client = Client::connect(daemon.options("alice", "phone", &[&app.id])).await.expect("connect");
        let puid = puid_from_webhooks(&mut receiver).await;
        let browser = Browser::start().await;
        browser.goto(&console).await;
        browser.sign_in(&app.api_key).await;
        browser.wait_shown("#owner-view", true).await;
        browser.wait_text("#owner-summary", "the app", |t| t.contains(&app.id)).await;
        Owner { daemon, receiver, client, puid, browser, _dir: dir }
    }

    async fn stop(self) {
        self.browser.assert_no_csp_violations().await;
        self.client.close().await;
        drop(self.browser);
        self.daemon.daemon.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_registers_an_app_sees_its_key_once_rotates_disables_and_removes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (daemon, mut receiver, console) = setup(dir.path()).await;
    let browser = Browser::start().await;
    browser.goto(&console).await;
    browser.sign_in(&daemon.info.admin_token).await;
    browser.wait_shown("#operator-view", true).await;
    browser.wait_text("#apps-empty", "no app yet", |t| t.contains("No app")).await;

    // Register: the key and the secret are shown once, and they are the real ones.
    browser.type_into("#register-name", "chat").await;
    browser.type_into("#register-url", &receiver.url()).await;
    browser.click("#register-submit").await;
    let key = browser.wait_text("#secret-api-key", "the API key", |t| t.starts_with("pk_")).await;
    let secret = browser.wait_text("#secret-webhook-secret", "the secret", |t| t.starts_with("whsec_")).await;
    let app_id = browser.wait_text("#secret-app-id", "the app id", |t| t.starts_with("app_")).await;
    let row = format!("tr[data-app=\"{app_id}\"]");
    browser.wait_text(&row, "the new app's row", |t| t.contains("chat") && t.contains("enabled")).await;
    browser.screenshot("operator-registered").await;
    let own = daemon.http().get(daemon.url("/v1/deliveries")).bearer_auth(&key).send().await.expect("API");
    assert_eq!(own.status(), 200, "the key shown is the app's key");

    // Dismissed, it is gone from the page; a reload signs out (the token was in memory
    // only), and signed in again nothing shows it.
    browser.click("#secret-done").await;
    browser.wait_shown("#secret-box", false).await;
    assert!(!browser.shows(&key).await, "the key is shown once");
    browser.refresh().await;
    browser.wait_shown("#sign-in-view", true).await;
    assert!(!browser.shown("#operator-view").await, "a reload signs out");
    browser.sign_in(&daemon.info.admin_token).await;
    browser.wait_text(&row, "the app after a reload", |t| t.contains("chat")).await;
    assert!(!browser.shows(&key).await && !browser.shows(&secret).await, "never shown again");

    // Live figures: a device connecting shows as a session.
    let client = Client::connect(daemon.options("alice", "phone", &[&app_id])).await.expect("connect");
    browser.wait_text("#figure-sessions .value", "one session", |t| t == "1").await;
    browser.wait_text("#figure-handshakes .detail", "one handshake", |t| t.starts_with("1 in all")).await;
    receiver.event(|e| e["type"] == "presence").await;
    browser.wait_text("#figure-deliveries .detail", "a delivery", |t| t.contains("1 delivered")).await;

    // Rotate: a new secret, shown once, and the webhooks that follow are signed with it.
    browser.click(&format!("{row} button.rotate")).await;
    let rotated = browser
        .wait_text("#secret-webhook-secret", "the new secret", |t| t.starts_with("whsec_") && t != secret)
        .await;
    browser.wait_text("#operator-message", "the rotation", |t| t.contains("Rotated")).await;
    browser.screenshot("operator-rotated").await;
    let ping =
        daemon.http().post(daemon.url("/v1/webhooks/ping")).bearer_auth(&key).send().await.expect("API");
    assert_eq!(ping.status(), 202);
    let delivery = delivery_with(&mut receiver, |e| e["type"] == "ping").await;
    let verify = |secret: &str| {
        WebhookSecret::parse(secret).expect("whsec_").verify(
            &delivery.id,
            &delivery.timestamp,
            &delivery.signature,
            &delivery.body,
            DEFAULT_TOLERANCE,
        )
    };
    verify(&rotated).expect("signed with the rotated secret");
    assert!(verify(&secret).is_err(), "no longer with the old one (no overlap)");

    // Rotate the API key: a new one, shown once; the old one is refused, the new answers.
    browser.click("#secret-done").await;
    browser.wait_shown("#secret-box", false).await;
    browser.click(&format!("{row} button.rotate-key")).await;
    let new_key =
        browser.wait_text("#secret-api-key", "the new key", |t| t.starts_with("pk_") && t != key).await;
    browser.wait_text("#operator-message", "the key rotation", |t| t.contains("API key")).await;
    let ping = |key: String| {
        let http = daemon.http();
        let url = daemon.url("/v1/webhooks/ping");
        async move { http.post(url).bearer_auth(key).send().await.expect("API").status() }
    };
    assert_eq!(ping(key.clone()).await, 401, "the old key is refused");
    assert_eq!(ping(new_key.clone()).await, 202, "the new key answers");
    let key = new_key;
    browser.click("#secret-done").await;
    browser.wait_shown("#secret-box", false).await;

    // Disable and enable: the API says the same as the page.
    browser.click(&format!("{row} button.toggle")).await;
    browser.wait_text(&format!("{row} td:nth-child(4)"), "disabled", |t| t.starts_with("disabled")).await;
    let app: Value = daemon
        .http()
        .get(daemon.url(&format!("/v1/admin/apps/{app_id}")))
        .bearer_auth(&daemon.info.admin_token)
        .send()
        .await
        .expect("API")
        .json()
        .await
        .expect("json");
    assert_eq!(app["disabled"], true);
    browser.click(&format!("{row} button.toggle")).await;
    browser.wait_text(&format!("{row} td:nth-child(4)"), "enabled", |t| t.starts_with("enabled")).await;
    browser.screenshot("operator").await;

    // Remove, in two clicks.
    browser.click(&format!("{row} button.remove")).await;
    browser.wait_text(&format!("{row} button.remove"), "the confirmation", |t| t == "Confirm removal").await;
    browser.click(&format!("{row} button.remove")).await;
    browser.wait_text("#operator-message", "the removal", |t| t.contains("Removed")).await;
    browser.wait_shown(&row, false).await;
    let gone = daemon.http().get(daemon.url("/v1/deliveries")).bearer_auth(&key).send().await.expect("API");
    assert_eq!(gone.status(), 401, "the removed app's key is refused");
    browser.assert_no_csp_violations().await;
    client.close().await;
    drop(browser);
    daemon.daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_app_owner_watches_deliveries_appear_as_a_device_changes_status() {
    let mut owner = Owner::start().await;
    let Owner { browser, client, receiver, puid, .. } = &mut owner;

    // The device goes away: its webhook's id shows in the log, delivered with a 200.
    client.set_status(Status::Away, Some("lunch".into())).await.expect("status");
    let away = delivery_with(receiver, |e| e["status"] == "away").await;
    let row = browser
        .wait_text("#deliveries tbody", "the away delivery", |t| {
            t.lines()
                .any(|line| line.contains(&away.id) && line.contains("delivered") && line.contains("200"))
        })
        .await;
    assert!(!browser.shown("#deliveries-empty").await, "{row}");

    // A test event: queued, delivered, logged.
    browser.click("#ping").await;
    browser.wait_text("#ping-result", "the ping queued", |t| t.contains("queued")).await;
    let ping = delivery_with(receiver, |e| e["type"] == "ping").await;
    browser.wait_text("#deliveries tbody", "the ping delivery", |t| t.contains(&ping.id)).await;

    // A failing receiver: the log shows the status and when the retry goes.
    receiver.status.store(503, std::sync::atomic::Ordering::Relaxed);
    client.set_status(Status::Online, None).await.expect("status");
    browser
        .wait_text("#deliveries tbody tr:first-child", "a throttled attempt", |t| {
            t.contains("throttled") && t.contains("503")
        })
        .await;
    receiver.status.store(200, std::sync::atomic::Ordering::Relaxed);
    browser
        .wait_text("#deliveries tbody tr:first-child", "the retry delivered", |t| t.contains("delivered"))
        .await;

    // Presence lookup by PUID.
    client.set_status(Status::Away, Some("lunch".into())).await.expect("status");
    browser.type_into("#lookup-puid", puid).await;
    browser.click("#lookup-submit").await;
    browser.wait_text("#lookup-result", "away", |t| t.contains("is away") && t.contains("lunch")).await;
    browser.screenshot("owner").await;
    owner.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_test_notification_from_the_console_is_accepted_by_a_connected_device() {
    let mut owner = Owner::start().await;
    let Owner { browser, client, puid, .. } = &mut owner;
    browser.type_into("#notify-puid", puid).await;
    browser.type_into("#notify-title", "Lunch?").await;
    browser.click("#notify-submit").await;
    browser.wait_text("#notify-result", "pending", |t| t.contains("pending")).await;
    let id = loop {
        if let Event::Notification { id, title, .. } = next_client_event(client).await {
            assert_eq!(title, "Lunch?");
            break id;
        }
    };
    client.accept(id).await.expect("accept");
    let result = browser.wait_text("#notify-result", "accepted", |t| t.contains("accepted")).await;
    assert!(result.contains(&id.to_string()) && result.contains(puid.as_str()), "{result}");
    browser.screenshot("owner-notification").await;
    owner.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_token_gets_a_clear_message_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (daemon, receiver, console) = setup(dir.path()).await;
    let app = daemon.register("secretive", &receiver.url()).await;

    // The console's answers: its headers, and the API's JSON 404 beside it.
    let http = daemon.http();
    for (_, path) in ROUTES {
        let response = http.get(daemon.url(path)).send().await.expect("console");
        assert_eq!(response.status(), 200, "{path}");
        let header = |name: &str| response.headers()[name].to_str().expect("ascii").to_owned();
        assert_eq!(header("content-security-policy"), CONTENT_SECURITY_POLICY, "{path}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("referrer-policy"), "no-referrer", "{path}");
        assert_eq!(header("cache-control"), "no-store", "{path}");
        assert_eq!(header("x-frame-options"), "DENY", "{path}");
        assert_eq!(header("cross-origin-opener-policy"), "same-origin", "{path}");
        assert!(response.headers().get("set-cookie").is_none(), "{path}: no cookie");
    }
    let missing = http.get(daemon.url("/console/missing.js")).send().await.expect("console");
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.expect("a JSON error");
    assert_eq!(body["error"]["code"], "not_found");

    let browser = Browser::start().await;
    browser.goto(&console).await;
    for (token, expected) in [
        ("pk_not-a-key", "That API key was refused"),
        ("not-the-admin-token", "That admin token was refused"),
        (&format!("{}x", app.api_key), "That API key was refused"),
    ] {
        browser.sign_in(token).await;
        let message = browser.wait_text("#sign-in-error", "the refusal", |t| t.contains(expected)).await;
        assert!(!message.contains(token), "the message does not repeat the token: {message}");
        assert!(!browser.shown("#operator-view").await && !browser.shown("#owner-view").await, "no view");
        assert!(!browser.shows(&app.id).await, "nothing about the daemon's apps");
        let field = browser.script("return document.getElementById('token').value;", json!([])).await;
        assert_eq!(field, "", "the refused token is not kept in the form");
        assert!(
            !browser
                .script("return location.href;", json!([]))
                .await
                .as_str()
                .unwrap_or_default()
                .contains(token)
        );
    }
    browser.screenshot("sign-in-refused").await;
    // The log is read (the refused sign-ins' 401s are in it), so a violation would show.
    let log = browser.console_log().await;
    assert!(log.iter().any(|m| m.contains("401")), "the browser's console is read: {log:#?}");
    assert!(!log.iter().any(|m| m.contains("Content Security Policy")), "CSP violations: {log:#?}");
    drop(browser);
    daemon.daemon.shutdown().await;
}

/// The number of points the charts of the figure `card` draw (every polyline of its SVG).
async fn chart_points(browser: &Browser, card: &str) -> usize {
    let script = "let n = 0; for (const line of document.querySelectorAll(arguments[0] + ' polyline')) \
                  { n += line.getAttribute('points').trim().split(' ').length; } return n;";
    browser.script(script, json!([card])).await.as_u64().expect("a count") as usize
}

/// The operator view while real traffic runs: devices connecting in waves and leaving,
/// changing status, three apps' receivers taking the webhooks and one of them answering 503
/// for a while. The charts must show that history (the screenshot in the README is this
/// test's), and the figures must be the daemon's own.
#[tokio::test(flavor = "multi_thread")]
async fn the_operator_view_charts_live_traffic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (daemon, receiver, console) = setup(dir.path()).await;
    let calendar = Receiver::start(&dir.path().join("tls")).await;
    let billing = Receiver::start(&dir.path().join("tls")).await;
    let apps = [
        daemon.register("chat", &receiver.url()).await,
        daemon.register("calendar", &calendar.url()).await,
        daemon.register("billing", &billing.url()).await,
    ];
    let ids: Vec<&str> = apps.iter().map(|app| app.id.as_str()).collect();
    let browser = Browser::start().await;
    browser.goto(&console).await;
    browser.sign_in(&daemon.info.admin_token).await;
    browser.wait_shown("#operator-view", true).await;
    let billing_row = format!("tr[data-app=\"{}\"]", apps[2].id);
    browser.wait_text(&billing_row, "the billing app", |t| t.contains("billing")).await;

    // Twenty-two ticks of the console's 2 s poll. Devices arrive in waves (handshakes) and
    // change status in one to four rounds a tick (so deliveries to the three apps come and
    // go); two leave. Billing's receiver answers 503 from tick 6 to tick 11: its outbox
    // fills, deliveries are throttled and retried, and once it recovers the waiting events
    // go with a long latency.
    let statuses = [Status::Away, Status::Unavailable, Status::Online, Status::Offline, Status::Online];
    let waves = [1, 2, 4, 3, 2, 1, 3, 2, 0, 1, 2, 0, 0, 1, 0, 0, 2, 0, 1, 0, 0, 0];
    let last = waves.len() - 1;
    let mut clients: Vec<Client> = Vec::new();
    let mut users = 0;
    let mut most_waiting = 0u64;
    for (tick, arrivals) in waves.into_iter().enumerate() {
        let started = tokio::time::Instant::now();
        if tick == 6 {
            billing.status.store(503, std::sync::atomic::Ordering::Relaxed);
        }
        if tick == 12 {
            billing.status.store(200, std::sync::atomic::Ordering::Relaxed);
        }
        for _ in 0..arrivals {
            let options = daemon.options(&format!("user{users}"), "phone", &ids);
            clients.push(Client::connect(options).await.expect("connect"));
            users += 1;
        }
        let rounds = [1, 3, 2, 4][tick % 4];
        for round in 0..rounds {
            // A third of the devices each round, a different third each time.
            for (n, client) in clients.iter().enumerate().filter(|(n, _)| (n + tick + round) % 3 == 0) {
                let status = statuses[(n + tick + round) % statuses.len()];
                client.set_status(status, Some(format!("tick {tick}"))).await.expect("status");
            }
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        if tick == 9 || tick == 15 {
            // The earliest device leaves.
            clients.remove(0).close().await;
        }
        let depth = daemon
            .http()
            .get(daemon.url(&format!("/v1/admin/apps/{}", apps[2].id)))
            .bearer_auth(&daemon.info.admin_token)
            .send()
            .await
            .expect("API")
            .json::<Value>()
            .await
            .expect("json")["outbox_depth"]
            .as_u64()
            .expect("depth");
        most_waiting = most_waiting.max(depth);
        if tick < last {
            tokio::time::sleep_until(started + Duration::from_secs(2)).await;
        }
    }

    // While the last changes go out: the figures are the daemon's (sessions and users as
    // connected, every handshake), the charts hold the whole run (a point per reading,
    // about one every 2 s), and this is the README's screenshot.
    let connected = clients.len();
    browser.wait_text("#figure-sessions .value", "every device", |t| t == connected.to_string()).await;
    browser.wait_text("#figure-users .value", "every user", |t| t == connected.to_string()).await;
    browser
        .wait_text("#figure-handshakes .detail", "every handshake", |t| {
            t.starts_with(&format!("{users} in all"))
        })
        .await;
    browser.wait_text("#figure-deliveries .value", "deliveries going on", |t| t != "0.00").await;
    for card in ["#figure-users", "#figure-handshakes", "#figure-deliveries", "#figure-outbox"] {
        let points = chart_points(&browser, card).await;
        assert!(points >= 15, "{card} charts {points} readings");
    }
    let latency = chart_points(&browser, "#figure-latency").await;
    assert!(latency >= 8, "latency is charted whenever a delivery happened: {latency} points");
    browser.wait_text("#figures-updated", "the charts' span", |t| t.contains("charts: the last")).await;
    browser.screenshot("operator-traffic").await;

    // Billing's outage was seen and is over: its 503s counted as throttled, its outbox
    // filled and drained.
    let deliveries = browser.text("#figure-deliveries .detail").await.expect("deliveries");
    let throttled: u64 = deliveries
        .split(" · ")
        .find_map(|part| part.strip_suffix(" throttled"))
        .and_then(|n| n.parse().ok())
        .expect("a throttled count");
    assert!(throttled >= 1, "billing's 503s are counted: {deliveries}");
    assert!(most_waiting >= 2, "billing's outbox filled while it answered 503: at most {most_waiting}");
    browser.wait_text(&format!("{billing_row} .outbox-depth"), "billing drained", |t| t == "0").await;
    browser.assert_no_csp_violations().await;
    for client in clients {
        client.close().await;
    }
    drop(browser);
    daemon.daemon.shutdown().await;
}

/// Signs in with `token`, which must be refused; the message the page shows for it.
async fn refused_sign_in(browser: &Browser, token: &str) -> String {
    browser.sign_in(token).await;
    // The form hides the previous message as it submits, so this is the new one.
    browser.wait_shown("#sign-in-error", true).await;
    browser.text("#sign-in-error").await.expect("a message")
}

/// The API's rate limits apply to the console as to `curl`: refused tokens count against
/// the client's address (the right token is refused too once it is over), and an app's
/// calls from the page against the app's rate; both are a 429 with a JSON code and
/// `Retry-After`, and the page says what happened and how long to wait.
#[tokio::test(flavor = "multi_thread")]
async fn bursts_of_wrong_tokens_or_calls_from_the_console_meet_the_rate_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layer =
        presenced::settings::SettingsLayer { api_rate: Some(1), api_burst: Some(4), ..settings(dir.path()) };
    let daemon = TestDaemon::start_with(layer).await;
    let receiver = Receiver::start(&dir.path().join("tls")).await;
    let app = daemon.register("busy", &receiver.url()).await;
    let http = daemon.http();
    let deliveries = daemon.url("/v1/deliveries");

    // Over the API: four refusals are the burst, the fifth is over the rate, and then the
    // right key and the right admin token are refused alike.
    for n in 0..4 {
        let response = http.get(&deliveries).bearer_auth(format!("pk_wrong{n}")).send().await.expect("API");
        assert_eq!(response.status(), 401, "refusal {n} is within the burst");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], "invalid_api_key");
    }
    let over = http.get(&deliveries).bearer_auth("pk_wrong4").send().await.expect("API");
    assert_eq!(over.status(), 429);
    for (token, path) in [(&app.api_key, "/v1/deliveries"), (&daemon.info.admin_token, "/v1/admin/apps")] {
        let response = http.get(daemon.url(path)).bearer_auth(token).send().await.expect("API");
        assert_eq!(response.status(), 429, "{path}: the right token is refused too while over");
        let retry_after: u64 =
            response.headers()["retry-after"].to_str().expect("ascii").parse().expect("seconds");
        assert!((1..=2).contains(&retry_after), "{retry_after}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], "auth_rate_limited", "{body}");
        assert!(
            body["error"]["message"].as_str().expect("message").contains("refused credentials"),
            "{body}"
        );
    }
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let back = http.get(&deliveries).bearer_auth(&app.api_key).send().await.expect("API");
    assert_eq!(back.status(), 200, "after Retry-After the right key is served");

    // In the console: wrong tokens are refused as wrong until the address is over the
    // rate, then the page says to wait, and no view opens.
    let browser = Browser::start().await;
    browser.goto(&daemon.url("/console")).await;
    let mut plain = 0;
    let limited = loop {
        let message = refused_sign_in(&browser, &format!("pk_mistyped{plain}")).await;
        if !message.contains("That API key was refused") {
            break message;
        }
        plain += 1;
        assert!(plain < 20, "twenty wrong keys and still no rate limit");
    };
    assert!(plain >= 1, "the first wrong key is refused as wrong: {limited}");
    assert!(
        limited.contains("Too many refused sign-ins from this address: wait")
            && limited.contains("every token is refused, the right one too (auth_rate_limited)"),
        "{limited}"
    );
    assert!(!browser.shown("#operator-view").await && !browser.shown("#owner-view").await, "no view");
    browser.screenshot("sign-in-rate-limited").await;

    // Once the wait is over the right key signs in; a burst of test events from the page
    // then meets the app's own rate, and the page says so without signing out.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    browser.sign_in(&app.api_key).await;
    browser.wait_shown("#owner-view", true).await;
    let mut clicks = 0;
    loop {
        browser.click("#ping").await;
        clicks += 1;
        let result = browser.text("#ping-result").await.unwrap_or_default();
        if result.contains("Too many requests") {
            assert!(result.contains("wait") && result.contains("(rate_limited)"), "{result}");
            break;
        }
        assert!(clicks < 30, "thirty test events and still no rate limit: {result}");
    }
    assert!(browser.shown("#owner-view").await, "a 429 does not sign out");
    // The same limit over the API, with its JSON error.
    let mut answer = None;
    for _ in 0..10 {
        let response = http.get(&deliveries).bearer_auth(&app.api_key).send().await.expect("API");
        if response.status() == 429 {
            answer = Some(response);
            break;
        }
    }
    let answer = answer.expect("a 429 within ten calls at 1/s");
    assert!(answer.headers().contains_key("retry-after"));
    let body: Value = answer.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    browser.screenshot("owner-rate-limited").await;
    browser.assert_no_csp_violations().await;
    drop(browser);
    daemon.daemon.shutdown().await;
}

/// An address of this host that is not loopback (the one it would reach the internet
/// from), if it has one.
fn non_loopback_address() -> Option<std::net::IpAddr> {
    let routed = ["8.8.8.8:53", "[2001:4860:4860::8888]:53"].into_iter().find_map(|target| {
        let any = if target.starts_with('[') { "[::]:0" } else { "0.0.0.0:0" };
        let socket = std::net::UdpSocket::bind(any).ok()?;
        // A UDP connect sends nothing: it only picks the route and the source address.
        socket.connect(target).ok()?;
        let ip = socket.local_addr().ok()?.ip();
        (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
    });
    // A host without a default route may still have addresses of its own.
    routed.or_else(|| {
        let out = std::process::Command::new("ip")
            .args(["-o", "-4", "addr", "show", "scope", "global"])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_whitespace()
            .skip_while(|word| *word != "inet")
            .nth(1)
            .and_then(|cidr| cidr.split('/').next())
            .and_then(|ip| ip.parse().ok())
    })
}

/// An HTTPS client trusting the dev CA that reaches `localhost` at `addr`, so the dev
/// certificate (for localhost) is valid whatever address the daemon is reached on.
fn client_via(daemon: &TestDaemon, addr: std::net::SocketAddr) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for cert in presenced::credentials::read_certs(&daemon.info.ca_cert).expect("dev CA") {
        roots.add(cert).expect("a root");
    }
    let tls = rustls::ClientConfig::builder_with_provider(presenced::credentials::crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .resolve("localhost", addr)
        .no_proxy()
        .build()
        .expect("client")
}

/// The operator view is the admin API's, so it answers loopback clients only unless the
/// daemon runs with `admin_remote`. The daemon decides by the TCP peer's address, so this
/// reaches it from the host's own non-loopback address (`127.0.0.2` would still be
/// loopback): refused there, in the API and on the page, served from loopback, and served
/// from there too with `admin_remote`. A host with no address but loopback fails it, saying
/// how to add one (`api::tests` checks the decision on every kind of
/// address).
#[tokio::test(flavor = "multi_thread")]
async fn the_operator_view_answers_other_addresses_only_with_admin_remote() {
    let remote_ip = non_loopback_address();
    let mut browser = None;
    for admin_remote in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let layer = presenced::settings::SettingsLayer {
            https_listen: Some(std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
            admin_remote: Some(admin_remote),
            ..settings(dir.path())
        };
        let daemon = TestDaemon::start_with(layer).await;
        let receiver = Receiver::start(&dir.path().join("tls")).await;
        let app = daemon.register("chat", &receiver.url()).await;
        let port: u16 = daemon.info.https.rsplit(':').next().expect("port").parse().expect("a port");
        // Started once a daemon has installed the process's TLS crypto provider.
        if browser.is_none() {
            browser = Some(Browser::start().await);
        }
        let browser = browser.as_ref().expect("started");

        // From loopback the console's admin calls succeed.
        browser.goto(&daemon.url("/console")).await;
        browser.sign_in(&daemon.info.admin_token).await;
        browser.wait_shown("#operator-view", true).await;
        browser.wait_text(&format!("tr[data-app=\"{}\"]", app.id), "the app", |t| t.contains("chat")).await;
        browser.click("#sign-out").await;

        let ip = remote_ip.expect(
            "this test reaches the daemon from an address of this host besides loopback, and the host \
             has none: give it one (for example `ip link add d0 type dummy && ip addr add \
             198.51.100.7/32 dev d0 && ip link set d0 up`)",
        );
        let remote = std::net::SocketAddr::new(ip, port);
        let http = client_via(&daemon, remote);
        let url = |path: &str| format!("https://localhost:{port}{path}");
        let admin = http
            .get(url("/v1/admin/apps"))
            .bearer_auth(&daemon.info.admin_token)
            .send()
            .await
            .expect("the daemon from another address");
        let own = http.get(url("/v1/deliveries")).bearer_auth(&app.api_key).send().await.expect("API");
        assert_eq!(own.status(), 200, "the app API answers every address");
        let page = http.get(url("/console")).send().await.expect("console");
        assert_eq!(page.status(), 200, "the console's pages are public; what they call is not");
        if admin_remote {
            assert_eq!(admin.status(), 200, "admin_remote opens the admin API to {ip}");
        } else {
            assert_eq!(admin.status(), 403, "the admin API refuses {ip}");
            let body: Value = admin.json().await.expect("json");
            assert_eq!(body["error"]["code"], "admin_forbidden", "{body}");
            assert!(body["error"]["message"].as_str().expect("message").contains("admin_remote"), "{body}");
            let metrics = http.get(url("/metrics")).send().await.expect("metrics");
            assert_eq!(metrics.status(), 403, "/metrics too");
        }

        // The page, from that address: refused with the reason, or the operator view.
        let address = match ip {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        };
        browser.goto(&format!("https://{address}:{port}/console")).await;
        browser.sign_in(&daemon.info.admin_token).await;
        if admin_remote {
            browser.wait_shown("#operator-view", true).await;
            browser
                .wait_text(&format!("tr[data-app=\"{}\"]", app.id), "the app", |t| t.contains("chat"))
                .await;
            browser.click("#sign-out").await;
        } else {
            let message = browser
                .wait_text("#sign-in-error", "the refusal", |t| t.contains("daemon's own host only"))
                .await;
            assert!(message.contains("admin_remote"), "{message}");
            assert!(!browser.shown("#operator-view").await, "no operator view from {ip}");
            assert!(!browser.shows(&app.id).await, "nothing about the apps");
            browser.screenshot("operator-remote-refused").await;
        }
        daemon.daemon.shutdown().await;
    }
    browser.expect("started").assert_no_csp_violations().await;
}
