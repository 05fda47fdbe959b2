//! The web console in a real browser: Debian's headless `chromium`, driven over WebDriver by
//! `chromedriver`, against an in-process dev daemon, a real HTTPS webhook receiver and real
//! QUIC devices. Each test starts its own chromedriver on a free loopback port and saves a
//! screenshot under `target/tmp/console-screenshots/`. Where chromium or chromedriver is
//! missing the tests fail, saying how to install them: they never skip.
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
