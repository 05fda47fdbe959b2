//! openapi.json against the daemon: the documented routes are exactly the served ones
//! ([`presenced::testing::api::ROUTES`] and the router's `.route(...)` calls), every route answers a
//! real request with a documented status and a body that matches its documented schema,
//! every error is the documented `Error` shape with a code documented for that operation,
//! and the webhooks a real receiver gets match the documented payloads and headers.

mod common;

use std::collections::BTreeSet;

use axum::body::Bytes;
use axum::http::HeaderMap;
use common::*;
use presence_client::{Client, Event};
use presenced::credentials::DevInfo;
use presenced::settings::SettingsLayer;
use presenced::testing::api::{ApiErrorCode, OPENAPI, ROUTES};
use presenced::testing::outbound::{WebhookBatch, WebhookEvent};
use presenced::testing::webhook::secret::{DEFAULT_TOLERANCE, WebhookSecret};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The HTTP methods an OpenAPI path item may hold.
const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch", "trace"];

fn doc() -> Value {
    serde_json::from_str(OPENAPI).expect("openapi.json is JSON")
}

fn routes() -> BTreeSet<(String, String)> {
    let set: BTreeSet<_> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(set.len(), ROUTES.len(), "ROUTES lists a route twice");
    set
}

/// (METHOD, path) of every operation in `paths`.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut set = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if METHODS.contains(&method.as_str()) {
                set.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    set
}

/// (METHOD, path) of every `.route("path", get(..).post(..))` in the router's source.
fn routes_in_router_source() -> BTreeSet<(String, String)> {
    let source = include_str!("../src/api/mod.rs");
    let start = source.find("fn router(").expect("api::router in api/mod.rs");
    let body = &source[start..];
    let body = &body[..body.find("\n}\n").expect("end of router")];
    for unseen in [".nest(", ".merge(", ".route_service(", ".nest_service("] {
        assert!(!body.contains(unseen), "the router uses {unseen}; teach this test to read it");
    }
    let mut found = BTreeSet::new();
    for (at, call) in body.match_indices(".route(\"") {
        let rest = &body[at + call.len()..];
        let end = rest.find('"').expect("end of the path literal");
        let path = &rest[..end];
        // Method routers (`get(`, `.post(`, ...) are calls at the first nesting level of
        // `.route(...)`; handler paths such as `admin::show` sit one level deeper.
        let (mut depth, mut word) = (1, String::new());
        for c in rest[end + 1..].chars() {
            match c {
                '(' => {
                    if depth == 1 && METHODS.contains(&word.as_str()) {
                        found.insert((word.to_uppercase(), path.to_owned()));
                    }
                    depth += 1;
                    word.clear();
                }
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                    word.clear();
                }
                c if c.is_alphanumeric() || c == '_' => word.push(c),
                _ => word.clear(),
            }
        }
    }
    found
}

#[test]
fn documented_paths_are_exactly_the_routes() {
    let doc = doc();
    assert_eq!(doc["openapi"].as_str().map(|v| v.starts_with("3.1")), Some(true), "OpenAPI 3.1");
    assert_eq!(documented(&doc), routes(), "openapi.json paths vs api::ROUTES");
    assert_eq!(routes_in_router_source(), routes(), "api::router's .route(...) calls vs api::ROUTES");
}

/// Resolves a `$ref` (also chains of them) inside the document.
fn resolve<'a>(doc: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let target = doc.pointer(reference.trim_start_matches('#'));
            resolve(doc, target.unwrap_or_else(|| panic!("dangling $ref {reference}")))
        }
        None => node,
    }
}

#[test]
fn the_document_is_self_consistent() {
    let doc = doc();
    // Every $ref resolves.
    fn refs(doc: &Value, node: &Value) {
        match node {
            Value::Object(map) => {
                if map.contains_key("$ref") {
                    resolve(doc, node);
                }
                map.values().for_each(|v| refs(doc, v));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(doc, v)),
            _ => {}
        }
    }
    refs(&doc, &doc);
    let schemes = doc["components"]["securitySchemes"].as_object().expect("security schemes");
    for name in ["apiKey", "adminToken"] {
        assert_eq!(schemes[name]["type"], "http", "{name}");
        assert_eq!(schemes[name]["scheme"], "bearer", "{name}");
    }
    for (method, path) in routes() {
        let op = &doc["paths"][&path][method.to_lowercase()];
        let here = format!("{method} {path}");
        assert!(op["operationId"].is_string(), "{here}: operationId");
        // Path templates declare their parameters.
        for name in path.split('{').skip(1).map(|s| &s[..s.find('}').expect("}")]) {
            let declared = op["parameters"].as_array().into_iter().flatten().any(|p| {
                let p = resolve(&doc, p);
                p["in"] == "path" && p["name"] == name && p["required"] == true
            });
            assert!(declared, "{here}: path parameter {name} not declared");
        }
        // Authenticated operations document their authentication failures; API-key ones
        // document the rate limit with its Retry-After.
        let security: Vec<String> = op["security"]
            .as_array()
            .or(doc["security"].as_array())
            .into_iter()
            .flatten()
            .flat_map(|s| s.as_object().expect("requirement").keys().cloned())
            .collect();
        let responses = op["responses"].as_object().unwrap_or_else(|| panic!("{here}: responses"));
        if security.iter().any(|s| s == "apiKey") {
            for status in ["401", "429"] {
                assert!(responses.contains_key(status), "{here}: documents {status}");
            }
            let retry_after = &resolve(&doc, &responses["429"])["headers"]["Retry-After"];
            assert!(retry_after.is_object(), "{here}: 429 documents Retry-After");
        }
        if security.iter().any(|s| s == "adminToken") {
            for status in ["401", "403"] {
                assert!(responses.contains_key(status), "{here}: documents {status}");
            }
        }
        // A JSON request body: its schema is closed (the server denies unknown fields), and
        // the body failures are documented.
        if let Some(body) = op.get("requestBody") {
            let schema = resolve(&doc, &body["content"]["application/json"]["schema"]);
            assert_eq!(schema["additionalProperties"], false, "{here}: request schema is closed");
            for status in ["400", "413", "415", "422"] {
                assert!(responses.contains_key(status), "{here}: documents {status}");
            }
        }
        // Every error answer is the shared Error schema, with an example per code.
        for (status, response) in responses {
            let response = resolve(&doc, response);
            if status.starts_with('4') || status.starts_with('5') {
                let content = &response["content"]["application/json"];
                assert_eq!(content["schema"]["$ref"], "#/components/schemas/Error", "{here} {status}");
                assert!(!error_codes(&doc, response).is_empty(), "{here} {status}: codes listed as examples");
            }
        }
    }
    // The webhooks: the batch body and the three Standard Webhooks headers.
    let hook = &doc["webhooks"]["events"]["post"];
    assert_eq!(
        hook["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/WebhookBatch"
    );
    let headers: BTreeSet<&str> =
        hook["parameters"].as_array().expect("headers").iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(headers, BTreeSet::from(["webhook-id", "webhook-timestamp", "webhook-signature"]));
    let mapping = doc["components"]["schemas"]["WebhookEvent"]["discriminator"]["mapping"]
        .as_object()
        .expect("mapping");
    let types: BTreeSet<&str> = mapping.keys().map(String::as_str).collect();
    assert_eq!(types, WebhookEvent::TYPES.into_iter().collect::<BTreeSet<_>>());
}

/// One event of every type the daemon sends, encoded as the outbox stores it. The `match`
/// is exhaustive, so a new event type does not compile until it has a sample here.
fn sample_events() -> Vec<Value> {
    let puid = "q3Rz1Y7oGk0Xv4Pw2mHk9A";
    let samples = [
        WebhookEvent::Presence {
            puid: puid.into(),
            status: "online".into(),
            message: "lunch".into(),
            seq: 1_767_225_600_123_456,
            at: 1_767_225_600_123,
        },
        WebhookEvent::Grant { puid: puid.into(), state: "alice".into(), at: 1 },
        WebhookEvent::Revoke { puid: puid.into(), at: 2 },
        WebhookEvent::Notification {
            id: "4503599627370497".into(),
            puid: puid.into(),
            outcome: "taken".into(),
            at: 3,
        },
        WebhookEvent::Reset { at: 4 },
        WebhookEvent::Ping { at: 5 },
    ];
    let mut kinds = BTreeSet::new();
    let events = samples
        .iter()
        .map(|event| {
            match event {
                WebhookEvent::Presence { .. }
                | WebhookEvent::Grant { .. }
                | WebhookEvent::Revoke { .. }
                | WebhookEvent::Notification { .. }
                | WebhookEvent::Reset { .. }
                | WebhookEvent::Ping { .. } => kinds.insert(event.kind().expect("a sent type")),
                WebhookEvent::Unknown => unreachable!("the daemon sends no unknown events"),
            };
            let json = presenced::testing::outbound::encode(event).expect("encodes").json;
            serde_json::from_slice(&json).expect("JSON")
        })
        .collect();
    assert_eq!(kinds, WebhookEvent::TYPES.into_iter().collect(), "a sample per type");
    events
}

#[test]
fn every_event_type_matches_its_documented_schema() {
    let doc = doc();
    let schema = json!({"$ref": "#/components/schemas/WebhookEvent"});
    for event in sample_events() {
        assert_valid(&doc, &schema, &event, "webhook event");
        // The schema for its own type, by the discriminator.
        let kind = event["type"].as_str().expect("type");
        let mapped =
            json!({"$ref": doc["components"]["schemas"]["WebhookEvent"]["discriminator"]["mapping"][kind]});
        assert_valid(&doc, &mapped, &event, kind);
        let required: BTreeSet<&str> = resolve(&doc, &mapped)["required"]
            .as_array()
            .expect("required")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let sent: BTreeSet<&str> = event.as_object().expect("object").keys().map(String::as_str).collect();
        assert_eq!(sent, required, "{kind}: the daemon sends exactly the required fields");
    }
}

/// The codes `Error.error.code` lists in its description, in backticks.
fn codes_in_error_schema(doc: &Value) -> BTreeSet<String> {
    let description =
        doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["description"]
            .as_str()
            .expect("the code's description");
    description.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

#[test]
fn the_error_codes_are_exactly_the_documented_ones() {
    let doc = doc();
    let codes: BTreeSet<String> = ApiErrorCode::ALL.iter().map(|code| code.as_str().to_owned()).collect();
    assert_eq!(codes.len(), ApiErrorCode::ALL.len(), "ApiErrorCode::ALL lists a code twice");
    // Both directions: every code answered is documented, every documented code exists.
    assert_eq!(codes_in_error_schema(&doc), codes, "openapi.json's Error codes vs ApiErrorCode");
    // And every operation's examples use real codes.
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            for (status, response) in op["responses"].as_object().into_iter().flatten() {
                for code in error_codes(&doc, response) {
                    assert!(codes.contains(&code), "{method} {path} {status}: example code {code}");
                }
            }
        }
    }
}

/// The error codes a documented error response lists (its examples).
fn error_codes(doc: &Value, response: &Value) -> BTreeSet<String> {
    let response = resolve(doc, response);
    response["content"]["application/json"]["examples"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, example)| example["value"]["error"]["code"].as_str().map(str::to_owned))
        .collect()
}

/// Checks `value` against a schema, strictly: an object field the schema does not document
/// is an error too, so the document cannot fall behind what the daemon sends. Covers the
/// keywords openapi.json uses.
fn validate(doc: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    for sub in schema["allOf"].as_array().into_iter().flatten() {
        validate(doc, sub, value, at, errors);
    }
    if let Some(options) = schema["oneOf"].as_array() {
        let matching = options
            .iter()
            .filter(|option| {
                let mut errors = Vec::new();
                validate(doc, option, value, at, &mut errors);
                errors.is_empty()
            })
            .count();
        if matching != 1 {
            errors.push(format!("{at}: matches {matching} of the oneOf schemas: {value}"));
        }
    }
    if let Some(expected) = schema.get("const") {
        if expected != value {
            errors.push(format!("{at}: {value} is not {expected}"));
        }
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            errors.push(format!("{at}: {value} not in {allowed:?}"));
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let is = |t: &str| match t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_u64() || value.is_i64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        other => panic!("unknown type {other}"),
    };
    if !types.is_empty() && !types.iter().any(|t| is(t)) {
        errors.push(format!("{at}: {value} is not {types:?}"));
    }
    let outside = |n: f64, low: &str, high: &str| {
        schema[low].as_f64().is_some_and(|min| n < min) || schema[high].as_f64().is_some_and(|max| n > max)
    };
    match value {
        Value::Object(map) => {
            for key in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                if !map.contains_key(key) {
                    errors.push(format!("{at}: missing {key}"));
                }
            }
            if let Some(properties) = schema["properties"].as_object() {
                for (key, field) in map {
                    match properties.get(key) {
                        Some(sub) => validate(doc, sub, field, &format!("{at}.{key}"), errors),
                        None => errors.push(format!("{at}: undocumented field {key}")),
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate(doc, sub, item, &format!("{at}[{i}]"), errors);
                }
            }
            if outside(items.len() as f64, "minItems", "maxItems") {
                errors.push(format!("{at}: {} items, outside the documented bounds", items.len()));
            }
        }
        Value::Number(n) if outside(n.as_f64().expect("finite"), "minimum", "maximum") => {
            errors.push(format!("{at}: {n} outside the documented bounds"));
        }
        Value::String(s) if outside(s.chars().count() as f64, "minLength", "maxLength") => {
            errors.push(format!("{at}: length {} outside the documented bounds", s.chars().count()));
        }
        _ => {}
    }
}

fn assert_valid(doc: &Value, schema: &Value, value: &Value, what: &str) {
    let mut errors = Vec::new();
    validate(doc, schema, value, "$", &mut errors);
    assert!(errors.is_empty(), "{what}: {value}\n  {}", errors.join("\n  "));
}

fn https_client(info: &DevInfo) -> reqwest::Client {
    presenced::credentials::https_client(&info.ca_cert).expect("https client")
}

/// What a request carries.
enum Body {
    None,
    Json(Value),
    /// Raw bytes with a content type (`None`: no Content-Type header).
    Raw(Option<&'static str>, Vec<u8>),
}

/// A client that checks every answer against the document.
struct Checker {
    doc: Value,
    http: reqwest::Client,
    base: String,
    /// Routes that answered a 2xx.
    succeeded: BTreeSet<(String, String)>,
}

impl Checker {
    fn new(info: &DevInfo) -> Checker {
        Checker { doc: doc(), http: https_client(info), base: info.https.clone(), succeeded: BTreeSet::new() }
    }

    /// Sends `method path` (an instance of the documented `template`) and checks the answer:
    /// a documented status, never the fallback's "no such route" or a 405; a JSON body that
    /// matches the documented schema; for errors, the `Error` shape with a code documented
    /// for that status. Returns the status, the headers and the parsed JSON body.
    async fn call(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        bearer: Option<&str>,
        body: Body,
    ) -> (StatusCode, HeaderMap, Value) {
        let here = format!("{method} {path}");
        let mut request = self
            .http
            .request(Method::from_bytes(method.as_bytes()).expect("method"), format!("{}{path}", self.base));
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        request = match body {
            Body::None => request,
            Body::Json(value) => request.json(&value),
            Body::Raw(Some(content_type), bytes) => request.header("content-type", content_type).body(bytes),
            Body::Raw(None, bytes) => request.body(bytes),
        };
        let response = request.send().await.unwrap_or_else(|e| panic!("{here}: {e}"));
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let json: Value =
            if headers.get("content-type").is_some_and(|t| t.as_bytes().starts_with(b"application/json")) {
                serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{here}: JSON content type, but {e}: {text}"))
            } else {
                Value::Null
            };
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{here}: 405 for a documented route: {text}");
        assert!(
            !(status == StatusCode::NOT_FOUND && json["error"]["message"] == "no such route"),
            "{here}: the router's fallback answered for a documented route"
        );
        let op = &self.doc["paths"][template][method.to_lowercase()];
        assert!(op.is_object(), "{method} {template} is not documented");
        let responses = &op["responses"];
        let class = format!("{}XX", status.as_u16() / 100);
        let documented = [status.as_str(), class.as_str(), "default"]
            .into_iter()
            .find_map(|key| responses.get(key))
            .unwrap_or_else(|| panic!("{here}: status {status} is not documented: {text}"));
        let documented = resolve(&self.doc, documented).clone();
        match documented["content"].as_object().and_then(|c| c.iter().next()) {
            Some((content_type, media)) => {
                let actual =
                    headers.get("content-type").map(|t| t.to_str().expect("ascii")).unwrap_or_default();
                assert!(
                    actual.starts_with(content_type.as_str()),
                    "{here}: content type {actual}, documented {content_type}"
                );
                if content_type == "application/json" {
                    assert_valid(&self.doc, &media["schema"], &json, &here);
                }
            }
            None => assert!(text.is_empty(), "{here}: {status} is documented without a body, got {text}"),
        }
        if status.is_client_error() || status.is_server_error() {
            assert_valid(&self.doc, &json!({"$ref": "#/components/schemas/Error"}), &json, &here);
            let code = json["error"]["code"].as_str().expect("code").to_owned();
            let codes = error_codes(&self.doc, &documented);
            assert!(codes.contains(&code), "{here}: {status} {code} is not among the documented {codes:?}");
        }
        if status.is_success() {
            self.succeeded.insert((method.to_owned(), template.to_owned()));
        }
        (status, headers, json)
    }

    /// [`call`](Self::call), asserting the status and, for errors, the code.
    async fn expect(
        &mut self,
        (method, template, path): (&str, &str, &str),
        bearer: Option<&str>,
        body: Body,
        status: u16,
        code: Option<&str>,
    ) -> Value {
        let (actual, _, json) = self.call(method, template, path, bearer, body).await;
        assert_eq!(actual.as_u16(), status, "{method} {path}: {json}");
        if let Some(code) = code {
            assert_eq!(json["error"]["code"], code, "{method} {path}");
        }
        json
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_is_served_as_documented() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = TestDaemon::start(dir.path()).await;
    let admin = daemon.info.admin_token.clone();
    let admin = Some(admin.as_str());
    let mut api = Checker::new(&daemon.info);

    // Operator routes.
    api.expect(("GET", "/healthz", "/healthz"), None, Body::None, 200, None).await;
    api.expect(("GET", "/metrics", "/metrics"), None, Body::None, 200, None).await;
    let served = api.expect(("GET", "/openapi.json", "/openapi.json"), None, Body::None, 200, None).await;
    assert_eq!(served, doc(), "/openapi.json serves openapi.json");

    // Admin routes, with the dev admin token.
    let apps = "/v1/admin/apps";
    let hook = json!({"name": "route-check", "webhook_url": "http://127.0.0.1:9/webhook"});
    let created = api.expect(("POST", apps, apps), admin, Body::Json(hook.clone()), 201, None).await;
    let app_id = created["app_id"].as_str().expect("app_id").to_owned();
    let key = created["api_key"].as_str().expect("api_key").to_owned();
    let key = Some(key.as_str());
    let list = api.expect(("GET", apps, apps), admin, Body::None, 200, None).await;
    assert_eq!(list["apps"][0]["app_id"], app_id.as_str());
    let one = format!("{apps}/{app_id}");
    api.expect(("GET", "/v1/admin/apps/{id}", &one), admin, Body::None, 200, None).await;
    let rotate = format!("{one}/rotate-secret");
    let rotated = api
        .expect(("POST", "/v1/admin/apps/{id}/rotate-secret", &rotate), admin, Body::None, 200, None)
        .await;
    assert_ne!(rotated["webhook_secret"], created["webhook_secret"]);
    let disable = format!("{one}/disable");
    let disabled =
        api.expect(("POST", "/v1/admin/apps/{id}/disable", &disable), admin, Body::None, 200, None).await;
    assert_eq!(disabled["disabled"], true);
    let enable = format!("{one}/enable");
    let enabled =
        api.expect(("POST", "/v1/admin/apps/{id}/enable", &enable), admin, Body::None, 200, None).await;
    assert_eq!(enabled["disabled"], false);
    let log = format!("{one}/deliveries");
    let deliveries =
        api.expect(("GET", "/v1/admin/apps/{id}/deliveries", &log), admin, Body::None, 200, None).await;
    assert_eq!(deliveries["app_id"], app_id.as_str());
    let stats = api.expect(("GET", "/v1/admin/stats", "/v1/admin/stats"), admin, Body::None, 200, None).await;
    assert_eq!(stats["outboxes"][0]["app_id"], app_id.as_str());

    // AppService routes, with the app's API key.
    let unknown = "/v1/presence/AAAAAAAAAAAAAAAAAAAAAA";
    let presence = api.expect(("GET", "/v1/presence/{puid}", unknown), key, Body::None, 200, None).await;
    assert_eq!(
        presence,
        json!({"puid": "AAAAAAAAAAAAAAAAAAAAAA", "status": "offline", "message": "", "since": null, "seq": null})
    );
    let (a, b) = ("AAAAAAAAAAAAAAAAAAAAAA", "BBBBBBBBBBBBBBBBBBBBBB");
    let query = ("POST", "/v1/presence/query", "/v1/presence/query");
    let answer = api.expect(query, key, Body::Json(json!({"puids": [a, b]})), 200, None).await;
    assert_eq!(answer["presence"].as_array().map(Vec::len), Some(2));
    let ping = ("POST", "/v1/webhooks/ping", "/v1/webhooks/ping");
    let queued = api.expect(ping, key, Body::None, 202, None).await;
    let own = ("GET", "/v1/deliveries", "/v1/deliveries");
    // The ping waits in the outbox once committed (the receiver at port 9 refuses it), and
    // its `at` is the oldest waiting.
    let log = tokio::time::timeout(WAIT, async {
        loop {
            let log = api.expect(own, key, Body::None, 200, None).await;
            if log["outbox_depth"].as_u64() >= Some(1) {
                return log;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the ping in the outbox");
    assert_eq!(log["app_id"], app_id.as_str());
    assert_eq!(log["oldest_waiting_at"], queued["at"], "{log} {queued}");
    let create = ("POST", "/v1/notifications", "/v1/notifications");
    let note =
        json!({"to": [a, a, b], "title": "hi", "data": {"k": 1}, "ttl_ms": 5_000, "mode": "first-accept"});
    let sent = api.expect(create, key, Body::Json(note), 201, None).await;
    assert_eq!(sent["recipients"].as_array().map(Vec::len), Some(2), "repeated recipients count once");
    assert_eq!(sent["recipients"][0]["outcome"], "undeliverable", "unknown PUIDs are undeliverable at once");
    let id = sent["id"].as_str().expect("id");
    let get = format!("/v1/notifications/{id}");
    let read = api.expect(("GET", "/v1/notifications/{id}", &get), key, Body::None, 200, None).await;
    assert_eq!(read, sent);
    // The spellings schemathesis found the document allows: a whole number with a zero
    // fraction (JSON Schema's `integer`), and null for the optional fields.
    let spelled = json!({"to": ["AAAAAAAAAAAAAAAAAAAAAA"], "title": "t", "ttl_ms": 5_000.0, "mode": null, "data": null});
    let sent = api.expect(create, key, Body::Json(spelled), 201, None).await;
    assert_eq!(sent["expires_at"].as_u64(), sent["created_at"].as_u64().map(|at| at + 5_000));
    assert_eq!(sent["mode"], "all");
    let defaults = json!({"to": ["AAAAAAAAAAAAAAAAAAAAAA"], "title": "t", "ttl_ms": null});
    let sent = api.expect(create, key, Body::Json(defaults), 201, None).await;
    assert_eq!(sent["expires_at"].as_u64(), sent["created_at"].as_u64().map(|at| at + 30_000));

    // Authentication failures.
    let presence = ("GET", "/v1/presence/{puid}", unknown);
    api.expect(presence, None, Body::None, 401, Some("unauthenticated")).await;
    api.expect(presence, Some("pk_nope"), Body::None, 401, Some("invalid_api_key")).await;
    api.expect(query, None, Body::Json(json!({"puids": []})), 401, Some("unauthenticated")).await;
    api.expect(create, Some("pk_nope"), Body::None, 401, Some("invalid_api_key")).await;
    api.expect(("GET", "/v1/notifications/{id}", &get), None, Body::None, 401, Some("unauthenticated")).await;
    api.expect(("GET", apps, apps), Some("wrong"), Body::None, 401, Some("unauthenticated")).await;
    api.expect(own, None, Body::None, 401, Some("unauthenticated")).await;
    api.expect(ping, Some("pk_nope"), Body::None, 401, Some("invalid_api_key")).await;
    let stats = ("GET", "/v1/admin/stats", "/v1/admin/stats");
    api.expect(stats, Some("wrong"), Body::None, 401, Some("unauthenticated")).await;
    api.expect(("GET", apps, apps), None, Body::None, 401, Some("unauthenticated")).await;

    // Body failures, on every route that takes a body.
    let too_big = serde_json::to_vec(&json!({"puids": vec!["x".repeat(60); 3_000]})).expect("json");
    for (route, bearer) in [(query, key), (create, key), (("POST", apps, apps), admin)] {
        api.expect(
            route,
            bearer,
            Body::Raw(Some("application/json"), b"{".to_vec()),
            400,
            Some("invalid_json"),
        )
        .await;
        api.expect(route, bearer, Body::Raw(None, b"{}".to_vec()), 415, Some("unsupported_media_type")).await;
        api.expect(
            route,
            bearer,
            Body::Raw(Some("text/plain"), b"{}".to_vec()),
            415,
            Some("unsupported_media_type"),
        )
        .await;
        api.expect(
            route,
            bearer,
            Body::Raw(Some("application/json"), too_big.clone()),
            413,
            Some("payload_too_large"),
        )
        .await;
        api.expect(route, bearer, Body::Json(json!({"unknown": 1})), 422, Some("invalid_request")).await;
        api.expect(route, bearer, Body::Json(json!([])), 422, Some("invalid_request")).await;
    }

    // Validation failures.
    let puids: Vec<String> = (0..1_001).map(|i| format!("p{i}")).collect();
    api.expect(query, key, Body::Json(json!({"puids": puids})), 422, Some("invalid_request")).await;
    api.expect(query, key, Body::Json(json!({"puids": "a"})), 422, Some("invalid_request")).await;
    let not_puid = ("GET", "/v1/presence/{puid}", "/v1/presence/no-such-puid");
    api.expect(not_puid, key, Body::None, 400, Some("invalid_puid")).await;
    api.expect(query, key, Body::Json(json!({"puids": [a, "b"]})), 422, Some("invalid_puid")).await;
    api.expect(query, key, Body::Json(json!({"puids": [a, ""]})), 422, Some("invalid_puid")).await;
    let bad_notes = [
        (json!({"to": [a, "b"], "title": "t"}), "invalid_puid"),
        (json!({"to": ["a"], "title": "t", "ttl_ms": 4_999}), "ttl_out_of_range"),
        (json!({"to": ["a"], "title": "t", "ttl_ms": 600_001}), "ttl_out_of_range"),
        (json!({"to": [], "title": "t"}), "invalid_request"),
        (json!({"to": [a, ""], "title": "t"}), "invalid_puid"),
        (json!({"to": ["a"]}), "invalid_request"),
        (json!({"to": ["a"], "title": "t".repeat(129)}), "invalid_request"),
        (json!({"to": ["a"], "title": "t", "body": "b".repeat(1_025)}), "invalid_request"),
        (json!({"to": ["a"], "title": "t", "data": "d".repeat(4_100)}), "invalid_request"),
        (json!({"to": ["a"], "title": "t", "mode": "any"}), "invalid_request"),
        (json!({"to": ["a"], "title": "t", "ttl_ms": -1}), "invalid_request"),
        (json!({"to": ["a"], "title": "t", "ttl_ms": 5_000.5}), "invalid_request"),
        (json!({"to": ["a"], "title": "t", "ttl_ms": 1e300}), "ttl_out_of_range"),
    ];
    for (note, code) in bad_notes {
        api.expect(create, key, Body::Json(note), 422, Some(code)).await;
    }
    for body in [json!({"name": " ", "webhook_url": "http://127.0.0.1:9/"}), json!({"name": "n"})] {
        api.expect(("POST", apps, apps), admin, Body::Json(body), 422, Some("invalid_request")).await;
    }
    for url in ["not a url", "ftp://127.0.0.1/hook"] {
        let body = json!({"name": "n", "webhook_url": url});
        api.expect(("POST", apps, apps), admin, Body::Json(body), 422, Some("invalid_webhook_url")).await;
    }

    // Not found: ids that do not exist, are malformed, or belong to another app.
    let other = api.expect(("POST", apps, apps), admin, Body::Json(hook), 201, None).await;
    let other_key = other["api_key"].as_str().expect("api_key");
    let notification = "/v1/notifications/{id}";
    api.expect(("GET", notification, &get), Some(other_key), Body::None, 404, Some("not_found")).await;
    for path in ["/v1/notifications/1", "/v1/notifications/x", "/v1/notifications/-1"] {
        api.expect(("GET", notification, path), key, Body::None, 404, Some("not_found")).await;
    }
    let missing = "/v1/admin/apps/app_missing";
    api.expect(("GET", "/v1/admin/apps/{id}", missing), admin, Body::None, 404, Some("not_found")).await;
    api.expect(("DELETE", "/v1/admin/apps/{id}", missing), admin, Body::None, 404, Some("not_found")).await;
    let path = format!("{missing}/rotate-secret");
    api.expect(
        ("POST", "/v1/admin/apps/{id}/rotate-secret", &path),
        admin,
        Body::None,
        404,
        Some("not_found"),
    )
    .await;
    let path = format!("{missing}/enable");
    api.expect(("POST", "/v1/admin/apps/{id}/enable", &path), admin, Body::None, 404, Some("not_found"))
        .await;
    let path = format!("{missing}/disable");
    api.expect(("POST", "/v1/admin/apps/{id}/disable", &path), admin, Body::None, 404, Some("not_found"))
        .await;
    let path = format!("{missing}/deliveries");
    api.expect(("GET", "/v1/admin/apps/{id}/deliveries", &path), admin, Body::None, 404, Some("not_found"))
        .await;

    let path = format!("{missing}/rotate-key");
    api.expect(("POST", "/v1/admin/apps/{id}/rotate-key", &path), admin, Body::None, 404, Some("not_found"))
        .await;

    // A new API key: the old one is refused at once, the new one answers, the app is the same.
    let rotate_key = format!("{one}/rotate-key");
    let rotated = api
        .expect(("POST", "/v1/admin/apps/{id}/rotate-key", &rotate_key), admin, Body::None, 200, None)
        .await;
    assert_eq!(rotated["app_id"], app_id.as_str());
    let new_key = rotated["api_key"].as_str().expect("api_key").to_owned();
    assert!(new_key.starts_with("pk_") && Some(new_key.as_str()) != key, "{new_key}");
    api.expect(presence, key, Body::None, 401, Some("invalid_api_key")).await;
    api.expect(presence, Some(new_key.as_str()), Body::None, 200, None).await;
    let key = Some(new_key.as_str());

    // Removing the app last: its key stops working at once.
    api.expect(("DELETE", "/v1/admin/apps/{id}", &one), admin, Body::None, 204, None).await;
    api.expect(presence, key, Body::None, 401, Some("invalid_api_key")).await;

    assert_eq!(api.succeeded, routes(), "every route answered a real request with a 2xx");

    // The general answers: a method a path does not list is 405, an unknown path 404, both
    // in the Error shape.
    for (path, item) in api.doc["paths"].clone().as_object().expect("paths") {
        let concrete = path.replace("{puid}", "p").replace("{id}", &app_id);
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            if item.get(method.to_lowercase()).is_some() {
                continue;
            }
            let response = api
                .http
                .request(
                    Method::from_bytes(method.as_bytes()).expect("method"),
                    format!("{}{concrete}", api.base),
                )
                .send()
                .await
                .expect("send");
            assert_eq!(response.status(), 405, "{method} {concrete}");
            let body: Value = response.json().await.expect("JSON error");
            assert_valid(&api.doc, &json!({"$ref": "#/components/schemas/Error"}), &body, "405");
            assert_eq!(body["error"]["code"], "method_not_allowed", "{method} {concrete}");
        }
    }
    for path in ["/", "/v1", "/v1/presence", "/v1/presence/a/b", "/v2/presence/query", "/v1/admin/apps/x/y"] {
        let response = api.http.get(format!("{}{path}", api.base)).send().await.expect("send");
        assert_eq!(response.status(), 404, "{path}");
        let body: Value = response.json().await.expect("JSON error");
        assert_valid(&api.doc, &json!({"$ref": "#/components/schemas/Error"}), &body, "404");
        assert_eq!(body["error"]["code"], "not_found");
    }
    daemon.daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rate_limit_answers_429_with_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layer = SettingsLayer { api_rate: Some(1), api_burst: Some(2), ..settings(dir.path()) };
    let daemon = TestDaemon::start_with(layer).await;
    let mut api = Checker::new(&daemon.info);
    let apps = "/v1/admin/apps";
    let body = json!({"name": "busy", "webhook_url": "http://127.0.0.1:9/webhook"});
    let created =
        api.expect(("POST", apps, apps), Some(&daemon.info.admin_token), Body::Json(body), 201, None).await;
    let key = created["api_key"].as_str().expect("api_key");
    let route = ("GET", "/v1/presence/{puid}", "/v1/presence/AAAAAAAAAAAAAAAAAAAAAA");
    api.expect(route, Some(key), Body::None, 200, None).await;
    api.expect(route, Some(key), Body::None, 200, None).await;
    let (status, headers, json) = api.call(route.0, route.1, route.2, Some(key), Body::None).await;
    assert_eq!(status, 429, "{json}");
    assert_eq!(json["error"]["code"], "rate_limited");
    let retry_after: u64 = headers["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!(retry_after >= 1);
    let query = ("POST", "/v1/presence/query", "/v1/presence/query");
    api.expect(query, Some(key), Body::Json(json!({"puids": []})), 429, Some("rate_limited")).await;
    daemon.daemon.shutdown().await;
}

/// A webhook receiver on loopback that hands every request to the test.
async fn receiver() -> (String, tokio::sync::mpsc::UnboundedReceiver<(HeaderMap, Bytes)>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let _ = tx.send((headers, body));
            async { axum::http::StatusCode::NO_CONTENT }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_match_the_documented_payloads() {
    let doc = doc();
    let (url, mut hooks) = receiver().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = TestDaemon::start(dir.path()).await;
    let mut api = Checker::new(&daemon.info);
    let apps = "/v1/admin/apps";
    let body = json!({"name": "hooks", "webhook_url": url});
    let created =
        api.expect(("POST", apps, apps), Some(&daemon.info.admin_token), Body::Json(body), 201, None).await;
    let app_id = created["app_id"].as_str().expect("app_id").to_owned();
    let key = created["api_key"].as_str().expect("api_key").to_owned();
    let secret = WebhookSecret::parse(created["webhook_secret"].as_str().expect("secret")).expect("whsec_");

    // A device that lets the app see it, authorizes it, answers a notification, then revokes.
    let mut client = Client::connect(daemon.options("alice", "phone", &[&app_id])).await.expect("connect");
    assert!(matches!(next_client_event(&mut client).await, Event::Up { .. }));
    client.authorize(app_id.clone(), "alice-state".into()).await.expect("authorize");
    let puid = loop {
        if let Event::Authorized { puid, .. } = next_client_event(&mut client).await {
            break puid;
        }
    };
    let create = ("POST", "/v1/notifications", "/v1/notifications");
    let note = json!({"to": [puid, "AAAAAAAAAAAAAAAAAAAAAA"], "title": "hello", "ttl_ms": 60_000});
    api.expect(create, Some(&key), Body::Json(note), 201, None).await;
    let id = loop {
        if let Event::Notification { id, .. } = next_client_event(&mut client).await {
            break id;
        }
    };
    client.accept(id).await.expect("accept");
    api.expect(("POST", "/v1/webhooks/ping", "/v1/webhooks/ping"), Some(&key), Body::None, 202, None).await;

    let mut seen = BTreeSet::new();
    let mut ids = BTreeSet::new();
    let wanted =
        ["presence", "grant", "notification:accepted", "notification:undeliverable", "revoke", "ping"];
    let mut revoked = false;
    while !wanted.iter().all(|w| seen.contains(*w)) {
        let (headers, body) = tokio::time::timeout(WAIT, hooks.recv())
            .await
            .unwrap_or_else(|_| panic!("webhooks so far {seen:?}, waiting for {wanted:?}"))
            .expect("receiver running");
        // The documented headers, and a signature that verifies.
        for param in doc["webhooks"]["events"]["post"]["parameters"].as_array().expect("headers") {
            let name = param["name"].as_str().expect("name");
            let value = headers.get(name).unwrap_or_else(|| panic!("header {name}")).to_str().expect("text");
            let value = if param["schema"]["type"] == "integer" {
                json!(value.parse::<u64>().unwrap_or_else(|_| panic!("{name}: {value}")))
            } else {
                json!(value)
            };
            assert_valid(&doc, &param["schema"], &value, name);
        }
        assert!(headers["content-type"].to_str().expect("ascii").starts_with("application/json"));
        secret.verify_headers(&headers, &body, DEFAULT_TOLERANCE).expect("the signature verifies");
        ids.insert(headers["webhook-id"].to_str().expect("ascii").to_owned());
        // The documented body.
        let batch: Value = serde_json::from_slice(&body).expect("JSON body");
        assert_valid(&doc, &json!({"$ref": "#/components/schemas/WebhookBatch"}), &batch, "webhook body");
        assert_eq!(batch["app_id"], app_id.as_str());
        // The typed contract reads every event, and writes the very bytes received.
        let typed: WebhookBatch<'_> = serde_json::from_slice(&body).expect("a WebhookBatch");
        assert!(typed.events.iter().all(|e| e.kind().is_some()), "only known types: {batch}");
        assert_eq!(serde_json::to_vec(&typed).expect("encodes"), body, "byte for byte");
        for event in batch["events"].as_array().expect("events") {
            if event["type"] != "ping" {
                assert_eq!(
                    event["puid"].as_str().map(|p| p == puid || p == "AAAAAAAAAAAAAAAAAAAAAA"),
                    Some(true),
                    "{event}"
                );
            }
            let kind = event["type"].as_str().expect("type").to_owned();
            seen.insert(match event["outcome"].as_str() {
                Some(outcome) => format!("{kind}:{outcome}"),
                None => kind,
            });
        }
        if seen.contains("notification:accepted") && !revoked {
            client.revoke(app_id.clone()).await.expect("revoke");
            revoked = true;
        }
    }
    // Every POST received is in the delivery log, delivered with the receiver's 204 (the
    // log may lag the receiver by the moment between its answer and the record).
    let own = ("GET", "/v1/deliveries", "/v1/deliveries");
    let logged = tokio::time::timeout(WAIT, async {
        loop {
            let log = api.expect(own, Some(&key), Body::None, 200, None).await;
            let delivered: BTreeSet<String> = log["deliveries"]
                .as_array()
                .expect("deliveries")
                .iter()
                .filter(|d| d["result"] == "delivered" && d["status"] == 204 && d["next_retry_at"].is_null())
                .filter_map(|d| d["webhook_id"].as_str().map(str::to_owned))
                .collect();
            if ids.is_subset(&delivered) {
                return log;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("every delivery in the log");
    assert!(logged["deliveries"][0]["at"].as_u64() >= logged["deliveries"][1]["at"].as_u64(), "newest first");
    client.close().await;
    daemon.daemon.shutdown().await;
}
