//! The HTTPS API target: requests through the daemon's real axum router, in process.
//!
//! One `--dev` daemon per fuzzing process ([`presenced::Daemon::api_router`] gives its
//! router without TLS or a socket), with one registered app whose webhooks go to a receiver
//! on loopback that takes everything, so the outbox drains as it does in production. The
//! input is a program of up to [`MAX_REQUESTS`] requests; each picks a method, a route (one
//! of [`presenced::testing::api::ROUTES`] with a fuzzed or a known path parameter, or a fuzzed path),
//! the credentials (none, the app's API key, the admin token, fuzzed), the client address,
//! the content type and the body. Apps the program registers are removed at its end, so
//! the daemon's state does not grow with the run.
//!
//! Checks, for every answer: never a 5xx; on a documented operation, a status that
//! openapi.json documents for it and, for an error, a code among that response's
//! documented examples; every error is the JSON `{"error": {"code", "message"}}`; every
//! success with a body is JSON (except `/metrics`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use presenced::settings::SettingsLayer;
use presenced::testing::api::{OPENAPI, Peer, ROUTES};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::input::{Input, Script};

/// Most requests in one program.
pub const MAX_REQUESTS: usize = 4;

/// Methods a program may use besides the documented one (PROPFIND: one the router has
/// never heard of).
const METHODS: [&str; 8] = ["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS", "PROPFIND"];

/// Content types a program may send.
const CONTENT_TYPES: [Option<&str>; 5] = [
    Some("application/json"),
    None,
    Some("text/plain"),
    Some("application/json; charset=utf-8"),
    Some("application/problem+json"),
];

/// The daemon under test and what the programs need to reach past its checks.
struct Harness {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    api_key: String,
    admin_token: String,
    doc: Value,
    /// Every error code openapi.json documents anywhere, plus the router's fallbacks.
    all_codes: BTreeSet<String>,
    /// Kept so the daemon's tasks live as long as the process.
    _daemon: presenced::Daemon,
}

thread_local! {
    static HARNESS: Harness = Harness::start();
}

impl Harness {
    fn start() -> Harness {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        // tmpfs where there is one: the store commits every notification.
        let base = std::path::Path::new("/dev/shm");
        let base = if base.is_dir() { base.to_path_buf() } else { std::env::temp_dir() };
        static HARNESSES: AtomicUsize = AtomicUsize::new(0);
        let nth = HARNESSES.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("presence-fuzz-api-{}-{nth}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let settings = SettingsLayer {
            api_rate: Some(u32::MAX),
            api_burst: Some(u32::MAX),
            webhook_window_ms: Some(1),
            log: Some("off".into()),
            ..SettingsLayer::dev_loopback(&dir)
        }
        .resolve()
        .expect("settings");
        let (daemon, receiver) = runtime.block_on(async {
            let daemon = presenced::Daemon::start(settings).await.expect("daemon starts");
            let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = receiver.local_addr().expect("addr");
            let accept = axum::Router::new().fallback(|| async { StatusCode::NO_CONTENT });
            tokio::spawn(async move { axum::serve(receiver, accept).await });
            (daemon, addr)
        });
        // Everything the daemon needs later is open or in memory (the database, and the
        // outbox log's current segment, which a fuzzing run never fills to the next one):
        // the directory can go, so fuzzing processes leave nothing behind.
        let _ = std::fs::remove_dir_all(&dir);
        let admin_token = daemon.dev_info.as_ref().expect("dev info").admin_token.clone();
        let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json");
        let mut all_codes: BTreeSet<String> =
            ["not_found", "method_not_allowed"].into_iter().map(String::from).collect();
        collect_codes(&doc, &mut all_codes);
        let mut harness = Harness {
            runtime,
            router: daemon.api_router(),
            api_key: String::new(),
            admin_token,
            doc,
            all_codes,
            _daemon: daemon,
        };
        let body = json!({"name": "fuzz", "webhook_url": format!("http://{receiver}/hook")});
        let request = harness.request(Method::POST, "/v1/admin/apps", Credentials::Admin, Some(&body));
        let (status, body) = harness.send(request.expect("request"));
        assert_eq!(status, StatusCode::CREATED, "{body:?}");
        let created: Value = serde_json::from_slice(&body).expect("json");
        harness.api_key = created["api_key"].as_str().expect("api key").to_owned();
        harness
    }

    /// A request from loopback with a JSON body.
    fn request(
        &self,
        method: Method,
        path: &str,
        credentials: Credentials,
        body: Option<&Value>,
    ) -> Option<Request<Body>> {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 40_000));
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        self.build(method, path, &credentials, loopback, Some("application/json"), body)
    }

    fn build(
        &self,
        method: Method,
        path: &str,
        credentials: &Credentials,
        peer: SocketAddr,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Option<Request<Body>> {
        let mut request = Request::builder().method(method).uri(path);
        let authorization = match credentials {
            Credentials::None => None,
            Credentials::ApiKey => Some(HeaderValue::from_str(&format!("Bearer {}", self.api_key)).ok()?),
            Credentials::Admin => Some(HeaderValue::from_str(&format!("Bearer {}", self.admin_token)).ok()?),
            Credentials::Raw(value) => Some(HeaderValue::from_bytes(value).ok()?),
        };
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let mut request = request.body(Body::from(body)).ok()?;
        request.extensions_mut().insert(Peer(peer));
        Some(request)
    }

    /// Sends one request through the router and reads the whole answer.
    fn send(&self, request: Request<Body>) -> (StatusCode, Bytes) {
        self.runtime.block_on(async {
            let response = self.router.clone().oneshot(request).await.expect("the router is infallible");
            let status = response.status();
            let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
            if status.is_client_error() || status.is_server_error() {
                assert!(
                    content_type.is_some_and(|t| t.as_bytes().starts_with(b"application/json")),
                    "{status}: an error without a JSON content type"
                );
            }
            (status, body)
        })
    }

    /// Checks one answer against openapi.json: see the module docs.
    fn check(&self, method: &Method, template: Option<&str>, status: StatusCode, body: &[u8], here: &str) {
        assert!(!status.is_server_error(), "{here}: {status}: {}", String::from_utf8_lossy(body));
        let head = method == Method::HEAD;
        let json: Option<Value> = serde_json::from_slice(body).ok();
        if (status.is_client_error()) && !head {
            let json = json.as_ref().unwrap_or_else(|| panic!("{here}: {status}: error body is not JSON"));
            let error = json["error"].as_object().unwrap_or_else(|| panic!("{here}: {json}"));
            assert_eq!(json.as_object().map(|o| o.len()), Some(1), "{here}: {json}");
            assert_eq!(error.len(), 2, "{here}: {json}");
            assert!(error["message"].is_string(), "{here}: {json}");
            let code = error["code"].as_str().unwrap_or_else(|| panic!("{here}: {json}"));
            assert!(self.all_codes.contains(code), "{here}: undocumented code {code}");
        }
        if status.is_success() && !body.is_empty() && !head && template != Some("/metrics") {
            assert!(json.is_some(), "{here}: {status}: success body is not JSON");
        }
        // HEAD is answered by the GET handler.
        let documented_method = if head { "get".to_owned() } else { method.as_str().to_lowercase() };
        let Some(op) =
            template.map(|t| &self.doc["paths"][t][&documented_method]).filter(|op| op.is_object())
        else {
            return;
        };
        let class = format!("{}XX", status.as_u16() / 100);
        let responses = &op["responses"];
        let response = [status.as_str(), class.as_str(), "default"]
            .into_iter()
            .find_map(|key| responses.get(key))
            .unwrap_or_else(|| panic!("{here}: status {status} is not documented"));
        if status.is_client_error() && !head {
            let response = resolve(&self.doc, response);
            let code = json.as_ref().and_then(|j| j["error"]["code"].as_str()).unwrap_or_default();
            let documented = response["content"]["application/json"]["examples"]
                .as_object()
                .into_iter()
                .flatten()
                .any(|(_, example)| example["value"]["error"]["code"] == code);
            assert!(documented, "{here}: {status} {code} is not among the documented examples");
        }
    }
}

/// Who a request claims to be.
enum Credentials {
    None,
    ApiKey,
    Admin,
    /// A fuzzed `Authorization` value.
    Raw(Vec<u8>),
}

/// Follows a `$ref` within the document.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value["$ref"].as_str().and_then(|r| r.strip_prefix('#')) {
        Some(pointer) => doc.pointer(pointer).unwrap_or(value),
        None => value,
    }
}

/// Every error code in the examples of every response.
fn collect_codes(value: &Value, codes: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            if let Some(code) = map.get("error").and_then(|e| e["code"].as_str()) {
                codes.insert(code.to_owned());
            }
            map.values().for_each(|v| collect_codes(v, codes));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_codes(v, codes)),
        _ => {}
    }
}

/// Percent-encodes every byte outside the unreserved set, so any bytes make a valid path
/// segment (and invalid UTF-8 reaches the path extractor).
fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for &byte in bytes {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// What a program remembers between its requests.
#[derive(Default)]
struct Program {
    /// Apps it registered and has not removed.
    apps: Vec<String>,
    /// The last notification it created.
    notification: Option<String>,
    /// What it has been answered so far.
    answers: Vec<(String, u16)>,
}

/// Runs one program (see the module docs).
pub fn api_request(data: &[u8]) {
    run(data);
}

/// Runs one program and returns each request (`METHOD path`) with its answer's status.
pub fn run(data: &[u8]) -> Vec<(String, u16)> {
    HARNESS.with(|harness| {
        let mut input = Input::new(data);
        let mut program = Program::default();
        for _ in 0..MAX_REQUESTS {
            if input.is_empty() {
                break;
            }
            if let Some(answer) = step(harness, &mut input, &mut program) {
                program.answers.push(answer);
            }
        }
        for app in program.apps {
            let path = format!("/v1/admin/apps/{app}");
            if let Some(request) = harness.request(Method::DELETE, &path, Credentials::Admin, None) {
                let (status, _) = harness.send(request);
                assert_eq!(status, StatusCode::NO_CONTENT, "cleanup of {app}");
            }
        }
        program.answers
    })
}

fn step(harness: &Harness, input: &mut Input<'_>, program: &mut Program) -> Option<(String, u16)> {
    let route = usize::from(input.u8());
    let method_choice = input.u8();
    let (method, template, path) = match ROUTES.get(route % (ROUTES.len() + 1)) {
        Some(&(documented, template)) => {
            let (path, exact) = match template.split_once('{') {
                Some((before, after)) => {
                    let parameter = match input.u8() % 4 {
                        0 => program.apps.last().cloned().unwrap_or_else(|| "app_missing".into()),
                        1 => program.notification.clone().unwrap_or_else(|| u64::MAX.to_string()),
                        2 => percent_encode(input.short_bytes()),
                        _ => input.short_text(),
                    };
                    let rest = after.split_once('}').map_or("", |(_, rest)| rest);
                    // A parameter that is empty or holds a separator no longer names the route.
                    let exact = !parameter.is_empty() && !parameter.contains(['/', '?', '#']);
                    (format!("{before}{parameter}{rest}"), exact)
                }
                None => (template.to_owned(), true),
            };
            let method = if method_choice < 192 {
                documented
            } else {
                METHODS[usize::from(method_choice) % METHODS.len()]
            };
            (method, exact.then_some(template), path)
        }
        None => {
            let path = input.short_text();
            let path = if path.starts_with('/') { path } else { format!("/{path}") };
            (METHODS[usize::from(method_choice) % METHODS.len()], None, path)
        }
    };
    let auth = input.u8();
    let credentials = match auth % 5 {
        0 => Credentials::None,
        1 => Credentials::ApiKey,
        2 => Credentials::Admin,
        3 => Credentials::Raw(input.short_bytes().to_vec()),
        _ => Credentials::Raw(format!("Basic {}", harness.admin_token).into_bytes()),
    };
    let peer = if auth & 0x80 == 0 {
        SocketAddr::from(([127, 0, 0, 1], 40_000))
    } else {
        SocketAddr::from(([203, 0, 113, 7], 40_000))
    };
    let content_type = CONTENT_TYPES[usize::from(input.u8()) % CONTENT_TYPES.len()];
    let body = input.long_bytes().to_vec();
    let method = Method::from_bytes(method.as_bytes()).ok()?;
    let request = harness.build(method.clone(), &path, &credentials, peer, content_type, body)?;
    let (status, body) = harness.send(request);
    let here = format!("{method} {path}");
    harness.check(&method, template, status, &body, &here);
    let answer = Some((here, status.as_u16()));
    if !status.is_success() || method == Method::HEAD {
        return answer;
    }
    let json: Value = serde_json::from_slice(&body).unwrap_or_default();
    match (method.as_str(), template) {
        ("POST", Some("/v1/admin/apps")) => {
            program.apps.push(json["app_id"].as_str().expect("created app id").to_owned());
        }
        ("DELETE", Some("/v1/admin/apps/{id}")) => {
            program.apps.retain(|app| !path.ends_with(app.as_str()));
        }
        ("POST", Some("/v1/notifications")) => {
            program.notification = json["id"].as_str().map(str::to_owned);
        }
        _ => {}
    }
    answer
}

/// How the seeds below spell one request.
struct Call<'a> {
    template: &'a str,
    /// `None`: the documented method; otherwise an index into [`METHODS`].
    method: Option<u8>,
    /// The path parameter: 0, the program's app; 1, its notification; 3, this text.
    parameter: (u8, &'a str),
    /// 0 none, 1 API key, 2 admin token, 4 the admin token as Basic; +0x80 from a
    /// non-loopback address.
    auth: u8,
    content_type: u8,
    body: &'a str,
}

impl Call<'_> {
    fn new<'a>(template: &'a str, auth: u8, body: &'a str) -> Call<'a> {
        Call { template, method: None, parameter: (3, "x"), auth, content_type: 0, body }
    }

    fn write(&self, script: Script) -> Script {
        let route = ROUTES.iter().position(|&(_, t)| t == self.template);
        let script = script.u8(route.unwrap_or(ROUTES.len()) as u8);
        // 192 and up pick from METHODS (192 is a multiple of its length).
        let script = script.u8(self.method.map_or(0, |m| 192 + m));
        let script = match route {
            Some(_) if self.template.contains('{') => {
                let (selector, text) = self.parameter;
                let script = script.u8(selector);
                if selector == 3 { script.short_text(text) } else { script }
            }
            Some(_) => script,
            None => script.short_text(self.template),
        };
        script.u8(self.auth).u8(self.content_type).u16(self.body.len() as u16).bytes(self.body.as_bytes())
    }
}

/// Seed programs: every operation answered successfully, and the typical bad requests.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let program = |calls: &[Call<'_>]| calls.iter().fold(Script::new(), |s, c| c.write(s)).build();
    let app = r#"{"name": "chat", "webhook_url": "https://example.com/hook"}"#;
    let note = r#"{"to": ["AAAAAAAAAAAAAAAAAAAAAA", "BBBBBBBBBBBBBBBBBBBBBB"], "title": "Join?", "body": "room 4", "data": {"room": 4}, "ttl_ms": 5000, "mode": "first-accept"}"#;
    let on_app = |template, auth| Call { parameter: (0, ""), ..Call::new(template, auth, "") };
    vec![
        (
            "operator_endpoints",
            program(&[
                Call::new("/healthz", 0, ""),
                Call::new("/metrics", 0, ""),
                Call::new("/openapi.json", 0, ""),
            ]),
        ),
        (
            "presence",
            program(&[
                Call { parameter: (3, "q3Rz1Y7oGk0Xv4Pw2mHk9A"), ..Call::new("/v1/presence/{puid}", 1, "") },
                Call::new(
                    "/v1/presence/query",
                    1,
                    r#"{"puids": ["AAAAAAAAAAAAAAAAAAAAAA", "BBBBBBBBBBBBBBBBBBBBBB", "q3Rz1Y7oGk0Xv4Pw2mHk9A"]}"#,
                ),
            ]),
        ),
        (
            "notify_then_get",
            program(&[
                Call::new("/v1/notifications", 1, note),
                Call { parameter: (1, ""), ..Call::new("/v1/notifications/{id}", 1, "") },
            ]),
        ),
        (
            "admin_lifecycle",
            program(&[
                Call::new("/v1/admin/apps", 2, app),
                on_app("/v1/admin/apps/{id}/rotate-secret", 2),
                on_app("/v1/admin/apps/{id}/enable", 2),
                on_app("/v1/admin/apps/{id}", 2),
            ]),
        ),
        (
            "admin_list_remove",
            program(&[
                Call::new("/v1/admin/apps", 2, app),
                Call { method: Some(0), ..Call::new("/v1/admin/apps", 2, "") },
                Call { method: Some(2), ..on_app("/v1/admin/apps/{id}", 2) },
            ]),
        ),
        (
            "bad_bodies",
            program(&[
                Call::new(
                    "/v1/notifications",
                    1,
                    r#"{"to": ["AAAAAAAAAAAAAAAAAAAAAA"], "title": "x", "ttl_ms": 1}"#,
                ),
                Call::new("/v1/presence/query", 1, r#"{"puids": "a", "extra": 1}"#),
                Call::new("/v1/notifications", 1, "{\"to\": ["),
                Call { content_type: 1, ..Call::new("/v1/presence/query", 1, r#"{"puids": []}"#) },
            ]),
        ),
        (
            "bad_credentials",
            program(&[
                Call::new("/v1/presence/query", 0, r#"{"puids": []}"#),
                Call::new("/v1/admin/apps", 0x82, app),
                Call::new("/v1/admin/apps", 4, ""),
                Call::new("/v1/presence/query", 2, r#"{"puids": []}"#),
            ]),
        ),
        (
            "bad_routes",
            program(&[
                Call { method: Some(3), ..Call::new("/healthz", 0, "") },
                Call::new("/v2/nothing/here", 0, ""),
                Call { parameter: (3, "%FF%FE"), ..Call::new("/v1/notifications/{id}", 1, "") },
                Call { method: Some(5), ..Call::new("/v1/presence/query", 1, "") },
            ]),
        ),
    ]
}
