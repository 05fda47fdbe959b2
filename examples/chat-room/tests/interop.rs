//! Interoperability: `standardwebhooks`, the reference Rust implementation of Standard
//! Webhooks, verifies what the daemon's own signer ([`WebhookSecret`]) produces, and the
//! daemon verifies what the library signs. The same secret text works in both.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use presenced::testing::webhook::secret::{
    DEFAULT_TOLERANCE, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, Signer, WebhookSecret,
};
use standardwebhooks::Webhook;

const BODY: &[u8] = br#"{"app_id":"app_x","events":[{"type":"presence","puid":"p","status":"online","message":"","seq":1,"at":2}]}"#;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

fn headers(id: &str, timestamp: u64, signature: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_ID, id.parse().expect("id"));
    headers.insert(HEADER_TIMESTAMP, timestamp.to_string().parse().expect("timestamp"));
    headers.insert(HEADER_SIGNATURE, signature.parse().expect("signature"));
    headers
}

#[test]
fn the_reference_library_verifies_the_daemons_signatures() {
    for _ in 0..64 {
        let secret = WebhookSecret::generate();
        let library = Webhook::new(&secret.to_string()).expect("the library reads a whsec_ secret");
        let (id, at) = ("msg_2xTtdq0rQzZ1cOlnFvL5Pg", now());
        let signature = secret.sign(id, at, BODY);
        library.verify(BODY, &headers(id, at, &signature)).expect("the library verifies");
        assert_eq!(library.sign(id, at as i64, BODY).expect("sign"), signature, "byte for byte");

        // And it refuses what it should: another body, id, timestamp or key.
        assert!(library.verify(b"{}", &headers(id, at, &signature)).is_err());
        assert!(library.verify(BODY, &headers("msg_other", at, &signature)).is_err());
        assert!(library.verify(BODY, &headers(id, at - 1, &signature)).is_err());
        let other = WebhookSecret::generate().sign(id, at, BODY);
        assert!(library.verify(BODY, &headers(id, at, &other)).is_err());
        // A stale timestamp is a replay, even with a valid signature.
        let old = at - 600;
        assert!(library.verify(BODY, &headers(id, old, &secret.sign(id, old, BODY))).is_err());
    }
}

#[test]
fn the_daemon_verifies_the_reference_librarys_signatures() {
    let secret = WebhookSecret::generate();
    let library = Webhook::new(&secret.to_string()).expect("secret");
    let at = now();
    let signature = library.sign("msg_1", at as i64, BODY).expect("sign");
    secret.verify_headers(&headers("msg_1", at, &signature), BODY, DEFAULT_TOLERANCE).expect("verifies");
}

#[test]
fn both_sign_the_specifications_example_alike() {
    // The example published with the Standard Webhooks specification.
    let text = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let (id, at, body) = ("msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, br#"{"test": 2432232314}"#);
    let expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    assert_eq!(WebhookSecret::parse(text).expect("secret").sign(id, at, body), expected);
    assert_eq!(Webhook::new(text).expect("secret").sign(id, at as i64, body).expect("sign"), expected);
}

#[test]
fn the_reference_library_verifies_a_rotation_overlaps_two_signatures_with_either_secret() {
    let (old, new) = (WebhookSecret::generate(), WebhookSecret::generate());
    let (id, at) = ("msg_rotation", now());
    let expires_ms = at * 1000 + 60_000;
    let signer = Signer::new(new.clone(), Some((old.clone(), expires_ms)));
    let during = signer.header(id, at, BODY, at * 1000);
    for secret in [&old, &new] {
        let library = Webhook::new(&secret.to_string()).expect("secret");
        library.verify(BODY, &headers(id, at, &during)).expect("either secret verifies both signatures");
    }
    let after = signer.header(id, at, BODY, expires_ms);
    Webhook::new(&new.to_string())
        .expect("secret")
        .verify(BODY, &headers(id, at, &after))
        .expect("new verifies");
    assert!(Webhook::new(&old.to_string()).expect("secret").verify(BODY, &headers(id, at, &after)).is_err());
}
