//! The webhook targets: Standard Webhooks secrets and signatures
//! (`presenced::testing::webhook::secret`) and the webhook URL policy (`presenced::testing::webhook::guard`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use presenced::testing::webhook::guard::{UrlPolicy, is_public, parse_cidr};
use presenced::testing::webhook::secret::{VerifyError, WebhookSecret};
use url::{Host, Url};

use crate::input::{Input, Script};

/// A secret for programs whose own secret text does not parse.
const FALLBACK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Parses a secret (what an AppService pastes into its receiver, and what the store keeps),
/// then verifies a fuzzed message with it, as a receiver does.
///
/// A secret that parses prints back to a secret equal to it; whatever the daemon signs
/// verifies; a message accepted has a timestamp within the tolerance.
pub fn webhook_secret(data: &[u8]) {
    let mut input = Input::new(data);
    let text = input.short_text();
    let secret = match WebhookSecret::parse(&text) {
        Ok(secret) => {
            let printed = secret.to_string();
            assert_eq!(WebhookSecret::parse(&printed).as_ref(), Ok(&secret), "{printed} round-trips");
            secret
        }
        Err(_) => WebhookSecret::parse(FALLBACK_SECRET).expect("fallback secret"),
    };
    let msg_id = input.short_text();
    let timestamp = input.short_text();
    let signature_len = usize::from(input.u16());
    let signature = input.text(signature_len);
    let tolerance = Duration::from_secs(u64::from(input.u32()));
    let now = input.u64();
    let body = input.bytes(usize::MAX);
    let verdict = secret.verify_at(&msg_id, &timestamp, &signature, body, tolerance, now);
    if verdict.is_ok() {
        let sent: u64 = timestamp.trim().parse().expect("an accepted timestamp is a number");
        assert!(sent.abs_diff(now) <= tolerance.as_secs(), "accepted outside the tolerance");
    }
    if let Ok(sent) = timestamp.trim().parse::<u64>() {
        let own = secret.sign(&msg_id, sent, body);
        assert_eq!(secret.verify_at(&msg_id, &timestamp, &own, body, tolerance, sent), Ok(()));
        let rotated = format!("{signature} {own}");
        let verdict = secret.verify_at(&msg_id, &timestamp, &rotated, body, tolerance, now);
        let in_window = sent.abs_diff(now) <= tolerance.as_secs();
        assert_eq!(verdict.is_ok(), in_window, "one good entry among several is enough: {verdict:?}");
        if !in_window {
            assert!(matches!(verdict, Err(VerifyError::OutsideTolerance { .. })));
        }
    }
}

/// Parses an operator allow-list and a webhook URL and judges it as registration does,
/// without DNS: a host name under the strict policy stops at the checks made before any
/// lookup (the fuzzer must not send queries).
///
/// A CIDR that parses prints back to itself and contains its network address; an address
/// and its IPv4-mapped IPv6 form are judged alike; validation agrees with the connect-time
/// check and never accepts an address the policy does not permit.
pub fn webhook_url(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let dev = flags & 1 == 1;
    let mut allow = Vec::new();
    for _ in 0..(flags >> 1) % 4 {
        let text = input.short_text();
        if let Ok(cidr) = parse_cidr(&text) {
            assert_eq!(parse_cidr(&cidr.to_string()).ok(), Some(cidr), "{cidr} round-trips");
            assert!(cidr.contains(cidr.network()), "{cidr} contains its network");
        }
        allow.push(text);
    }
    let v4 = Ipv4Addr::from(input.u32());
    assert_eq!(is_public(IpAddr::V4(v4)), is_public(IpAddr::V6(v4.to_ipv6_mapped())), "{v4}");
    let v6 = Ipv6Addr::from(u128::from(input.u64()) << 64 | u128::from(input.u64()));
    let _ = is_public(IpAddr::V6(v6));
    let Ok(policy) = UrlPolicy::new(dev, &allow) else { return };
    let text = input.rest_text();
    let Ok(url) = Url::parse(text.trim()) else {
        assert!(policy.validate(&text).is_err(), "an unparsable URL is refused");
        return;
    };
    let early = policy.check_target(&url);
    let needs_dns = !dev && matches!(url.host(), Some(Host::Domain(_)));
    if needs_dns {
        return;
    }
    let validated = policy.validate(&text);
    assert_eq!(validated.is_ok(), early.is_ok(), "{text:?}: {validated:?} but {early:?}");
    if let Ok(accepted) = validated {
        assert!(policy.check_target(&accepted).is_ok(), "the accepted URL passes at connect time");
        assert!(accepted.scheme() == "https" || dev, "{accepted}: https outside dev mode");
        let addr = match accepted.host() {
            Some(Host::Ipv4(a)) => Some(IpAddr::V4(a)),
            Some(Host::Ipv6(a)) => Some(IpAddr::V6(a)),
            _ => None,
        };
        if let Some(addr) = addr {
            assert!(policy.permits(addr), "{accepted}: {addr} is not permitted");
        }
    }
}

/// Seed programs for [`webhook_secret`]: the specification's example, a rotation, refusals.
pub fn secret_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let message = |secret: &str, id: &str, timestamp: &str, signature: &str, now: u64, body: &str| {
        Script::new()
            .short_text(secret)
            .short_text(id)
            .short_text(timestamp)
            .u16(signature.len() as u16)
            .bytes(signature.as_bytes())
            .u32(300)
            .u64(now)
            .bytes(body.as_bytes())
            .build()
    };
    let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    let signature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    let body = r#"{"test": 2432232314}"#;
    vec![
        ("specification_example", message(FALLBACK_SECRET, id, "1614265330", signature, 1_614_265_330, body)),
        (
            "rotation",
            message(
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                id,
                "1614265330",
                &format!("v1,bm9wZQ== v2,x {signature}"),
                1_614_265_400,
                body,
            ),
        ),
        ("stale", message(FALLBACK_SECRET, id, "1614265330", signature, 1_614_275_330, body)),
        ("not_base64", message("whsec_***", id, "soon", "v1", 0, "")),
    ]
}

/// Seed programs for [`webhook_url`]: strict, allow-listed and dev policies, with the
/// spellings of private addresses the guard must see through.
pub fn url_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let policy = |dev: bool, allow: &[&str], url: &str| {
        let flags = u8::from(dev) | (allow.len() as u8) << 1;
        let script = allow.iter().fold(Script::new().u8(flags), |s, cidr| s.short_text(cidr));
        script.u32(0x7f00_0001).u64(0x2001_0db8_0000_0000).u64(1).bytes(url.as_bytes()).build()
    };
    vec![
        ("public_literal", policy(false, &[], "https://8.8.8.8/hook")),
        ("public_v6", policy(false, &[], "https://[2606:4700:4700::1111]:8443/hook")),
        ("loopback_decimal", policy(false, &[], "https://2130706433/hook")),
        ("loopback_hex", policy(false, &[], "https://0x7f000001/hook")),
        ("mapped_loopback", policy(false, &[], "https://[::ffff:127.0.0.1]/hook")),
        ("metadata", policy(false, &[], "https://169.254.169.254/latest/meta-data")),
        ("plain_http", policy(false, &[], "http://8.8.8.8/hook")),
        (
            "allow_listed",
            policy(false, &["10.1.2.3/8", "fd00::/8", "192.168.1.10"], "https://10.9.8.7:9443/hook"),
        ),
        ("bad_cidr", policy(false, &["10.0.0.0/33"], "https://8.8.8.8/")),
        ("dev_http_name", policy(true, &[], "http://localhost:9000/hook")),
        ("not_a_url", policy(true, &[], "mailto:a@b.c")),
    ]
}
