//! Standard Webhooks signing: `whsec_` secrets, `v1,` HMAC-SHA256 signatures.
//!
//! The signed content is `"{webhook-id}.{webhook-timestamp}.{body}"`, the signature is
//! `v1,` + base64 (standard alphabet, padded) of HMAC-SHA256 under the secret's bytes, and
//! the secret is written `whsec_` + base64 of those bytes. Matching this byte for byte is
//! what lets an AppService verify our webhooks with an off-the-shelf library, which is why
//! the tests reproduce the specification's published example exactly.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// The prefix that marks a Standard Webhooks secret.
pub(crate) const SECRET_PREFIX: &str = "whsec_";
/// Bytes of key material in a generated secret (the HMAC-SHA256 block size is more than
/// enough; 32 bytes matches the hash output and the common libraries' generators).
pub(crate) const SECRET_BYTES: usize = 32;
/// Header carrying the message id, stable across retries of the same content.
pub const HEADER_ID: &str = "webhook-id";
/// Header carrying the send time, Unix seconds.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Header carrying space-separated `version,signature` pairs.
pub const HEADER_SIGNATURE: &str = "webhook-signature";
/// The replay window receivers conventionally allow (the reference libraries use 5 min).
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// A secret that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The part after `whsec_` is not standard base64.
    #[error("webhook secret is not base64")]
    NotBase64(#[source] base64::DecodeError),
    /// The decoded key is empty (an HMAC under an empty key authenticates nothing).
    #[error("webhook secret is empty")]
    Empty,
}

/// Why a webhook did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// One of the three Standard Webhooks headers is absent or not text.
    #[error("missing or unreadable header {0}")]
    MissingHeader(&'static str),
    /// `webhook-timestamp` is not an integer number of seconds.
    #[error("webhook-timestamp is not Unix seconds")]
    BadTimestamp,
    /// The timestamp is further from now than the tolerance (a replay, or a bad clock).
    #[error("webhook-timestamp is {skew_secs} s away from now, beyond the tolerance")]
    OutsideTolerance {
        /// How far it was from the verifier's clock, in seconds.
        skew_secs: u64,
    },
    /// No `v1` signature in the header matches the content.
    #[error("no matching v1 signature")]
    NoMatch,
}

/// A Standard Webhooks signing secret.
///
/// `Debug` is redacted so that a secret never lands in a log line; `Display` writes the
/// `whsec_` form, which is what an operator is shown once and what the store keeps.
#[derive(Clone)]
pub struct WebhookSecret {
    bytes: Vec<u8>,
    key: hmac::Key,
}

impl WebhookSecret {
    /// A fresh secret: `SECRET_BYTES` from the operating system's CSPRNG.
    pub fn generate() -> WebhookSecret {
        let mut bytes = vec![0u8; SECRET_BYTES];
        // SystemRandom is getrandom(2) / the OS equivalent; it fails only on a system with
        // no entropy source at all, where continuing with a guessable key would be worse
        // than stopping.
        SystemRandom::new().fill(&mut bytes).expect("the system random number generator failed");
        WebhookSecret::from_bytes(bytes)
    }

    /// A secret from raw key bytes.
    fn from_bytes(bytes: Vec<u8>) -> WebhookSecret {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &bytes);
        WebhookSecret { bytes, key }
    }

    /// Parses `whsec_<base64>`. The prefix is optional, as in the reference libraries, so
    /// a receiver can paste either form.
    pub fn parse(text: &str) -> Result<WebhookSecret, SecretError> {
        let text = text.trim();
        let encoded = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
        let bytes = B64.decode(encoded).map_err(SecretError::NotBase64)?;
        if bytes.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(WebhookSecret::from_bytes(bytes))
    }

    /// The `webhook-signature` value for one message: `v1,` + base64(HMAC-SHA256).
    pub fn sign(&self, msg_id: &str, timestamp_secs: u64, body: &[u8]) -> String {
        let tag = hmac::sign(&self.key, &signed_content(msg_id, timestamp_secs, body));
        format!("v1,{}", B64.encode(tag.as_ref()))
    }

    /// Verifies a message from its header values against the current clock.
    ///
    /// `signature` may hold several space-separated entries (a sender rotating its secret
    /// signs with both); one matching `v1` entry is enough. The comparison is ring's
    /// constant-time HMAC verification, so timing reveals nothing about the expected tag.
    pub fn verify(
        &self,
        msg_id: &str,
        timestamp: &str,
        signature: &str,
        body: &[u8],
        tolerance: Duration,
    ) -> Result<(), VerifyError> {
        let now = crate::clock::Clock::system().unix_secs();
        self.verify_at(msg_id, timestamp, signature, body, tolerance, now)
    }

    /// [`verify`](Self::verify) against a given clock, Unix seconds (for tests and for
    /// receivers that keep their own time source).
    pub fn verify_at(
        &self,
        msg_id: &str,
        timestamp: &str,
        signature: &str,
        body: &[u8],
        tolerance: Duration,
        now_secs: u64,
    ) -> Result<(), VerifyError> {
        let sent: u64 = timestamp.trim().parse().map_err(|_| VerifyError::BadTimestamp)?;
        let skew_secs = sent.abs_diff(now_secs);
        if skew_secs > tolerance.as_secs() {
            return Err(VerifyError::OutsideTolerance { skew_secs });
        }
        let content = signed_content(msg_id, sent, body);
        let matched = signature
            .split(' ')
            .filter_map(|entry| entry.split_once(','))
            .filter(|(version, _)| *version == "v1")
            .filter_map(|(_, tag)| B64.decode(tag).ok())
            .any(|tag| hmac::verify(&self.key, &content, &tag).is_ok());
        if matched { Ok(()) } else { Err(VerifyError::NoMatch) }
    }

    /// Verifies a request by its `webhook-id`, `webhook-timestamp` and `webhook-signature`
    /// headers.
    pub fn verify_headers(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        tolerance: Duration,
    ) -> Result<(), VerifyError> {
        let header = |name: &'static str| {
            headers.get(name).and_then(|v| v.to_str().ok()).ok_or(VerifyError::MissingHeader(name))
        };
        self.verify(header(HEADER_ID)?, header(HEADER_TIMESTAMP)?, header(HEADER_SIGNATURE)?, body, tolerance)
    }
}

/// An app's signing keys: the current secret and, during a rotation's overlap, the
/// previous one until it expires.
///
/// Receivers that have not switched yet keep verifying while both are sent (Standard
/// Webhooks lets a header carry several signatures and a verifier accept any one), so a
/// rotation need not be a flag day. Expiry is checked each time a header is made, against
/// the caller's clock: no timer has to remove the old secret for it to stop being used.
#[derive(Debug, Clone)]
pub struct Signer {
    current: WebhookSecret,
    previous: Option<(WebhookSecret, u64)>,
}

impl Signer {
    /// The current secret, and the previous one with its expiry (Unix ms), if any.
    pub fn new(current: WebhookSecret, previous: Option<(WebhookSecret, u64)>) -> Signer {
        Signer { current, previous }
    }

    /// The `webhook-signature` value: the current secret's signature, then the previous
    /// secret's if `now_ms` is before its expiry, space-separated.
    pub fn header(&self, msg_id: &str, timestamp_secs: u64, body: &[u8], now_ms: u64) -> String {
        let mut header = self.current.sign(msg_id, timestamp_secs, body);
        if let Some((previous, _)) = self.previous.as_ref().filter(|(_, expires_ms)| now_ms < *expires_ms) {
            header.push(' ');
            header.push_str(&previous.sign(msg_id, timestamp_secs, body));
        }
        header
    }
}

/// `"{msg_id}.{timestamp}.{body}"`, the bytes the HMAC covers.
fn signed_content(msg_id: &str, timestamp_secs: u64, body: &[u8]) -> Vec<u8> {
    let prefix = format!("{msg_id}.{timestamp_secs}.");
    let mut content = Vec::with_capacity(prefix.len() + body.len());
    content.extend_from_slice(prefix.as_bytes());
    content.extend_from_slice(body);
    content
}

impl fmt::Display for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SECRET_PREFIX}{}", B64.encode(&self.bytes))
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

impl FromStr for WebhookSecret {
    type Err = SecretError;

    fn from_str(text: &str) -> Result<WebhookSecret, SecretError> {
        WebhookSecret::parse(text)
    }
}

impl PartialEq for WebhookSecret {
    /// Compares without an early exit, so equality checks do not time out the key.
    fn eq(&self, other: &WebhookSecret) -> bool {
        self.bytes.len() == other.bytes.len()
            && self.bytes.iter().zip(&other.bytes).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl Eq for WebhookSecret {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks specification's published example, as the reference
    /// libraries test it (standard-webhooks/standard-webhooks, libraries/php/tests,
    /// `testSignFunctionWorks`). Reproducing a tag computed elsewhere is the only test
    /// here that proves interoperability rather than self-consistency.
    #[test]
    fn signs_the_specification_example_exactly() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        let signature =
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, br#"{"test": 2432232314}"#);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        secret
            .verify_at(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                "1614265330",
                &signature,
                br#"{"test": 2432232314}"#,
                DEFAULT_TOLERANCE,
                1_614_265_330,
            )
            .expect("verifies");
    }

    /// The reference Rust library's own vector (libraries/rust, `test_sign`).
    #[test]
    fn signs_the_reference_rust_library_vector() {
        let secret = WebhookSecret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").expect("secret");
        assert_eq!(
            secret.sign(
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1_649_367_553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn generated_secrets_round_trip_and_differ() {
        let a = WebhookSecret::generate();
        let b = WebhookSecret::generate();
        assert_ne!(a, b);
        let text = a.to_string();
        assert!(text.starts_with("whsec_"));
        assert_eq!(B64.decode(&text[6..]).expect("base64").len(), SECRET_BYTES);
        assert_eq!(WebhookSecret::parse(&text).expect("parse"), a);
        assert_eq!(WebhookSecret::parse(&text[6..]).expect("without prefix"), a);
        assert_eq!(format!("{a:?}"), "WebhookSecret(<redacted>)");
    }

    #[test]
    fn rejects_bad_secrets() {
        assert!(matches!(WebhookSecret::parse("whsec_***"), Err(SecretError::NotBase64(_))));
        assert_eq!(WebhookSecret::parse("whsec_").unwrap_err(), SecretError::Empty);
    }

    #[test]
    fn verification_rejects_tampering_wrong_keys_and_stale_timestamps() {
        let secret = WebhookSecret::generate();
        let now = 1_700_000_000;
        let sig = secret.sign("msg_1", now, b"{}");
        let check = |id: &str, ts: &str, sig: &str, body: &[u8], at: u64| {
            secret.verify_at(id, ts, sig, body, DEFAULT_TOLERANCE, at)
        };
        assert_eq!(check("msg_1", "1700000000", &sig, b"{}", now), Ok(()));
        assert_eq!(check("msg_1", "1700000000", &sig, b"{ }", now), Err(VerifyError::NoMatch));
        assert_eq!(check("msg_2", "1700000000", &sig, b"{}", now), Err(VerifyError::NoMatch));
        assert_eq!(check("msg_1", "1700000001", &sig, b"{}", now), Err(VerifyError::NoMatch));
        assert_eq!(check("msg_1", "soon", &sig, b"{}", now), Err(VerifyError::BadTimestamp));
        assert_eq!(
            check("msg_1", "1700000000", &sig, b"{}", now + 301),
            Err(VerifyError::OutsideTolerance { skew_secs: 301 })
        );
        assert_eq!(check("msg_1", "1700000000", &sig, b"{}", now - 300), Ok(()));
        let other = WebhookSecret::generate().sign("msg_1", now, b"{}");
        assert_eq!(check("msg_1", "1700000000", &other, b"{}", now), Err(VerifyError::NoMatch));
        // Rotation: several entries, one valid; unknown versions are skipped.
        let multi = format!("v1,bm9wZQ== v2,{} {sig}", &sig[3..]);
        assert_eq!(check("msg_1", "1700000000", &multi, b"{}", now), Ok(()));
        assert_eq!(
            check("msg_1", "1700000000", &sig.replace("v1,", "v2,"), b"{}", now),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn verifies_from_headers() {
        let secret = WebhookSecret::generate();
        let now = crate::clock::Clock::system().unix_secs();
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_ID, "msg_x".parse().expect("value"));
        headers.insert(HEADER_TIMESTAMP, now.to_string().parse().expect("value"));
        headers.insert(HEADER_SIGNATURE, secret.sign("msg_x", now, b"body").parse().expect("value"));
        assert_eq!(secret.verify_headers(&headers, b"body", DEFAULT_TOLERANCE), Ok(()));
        headers.remove(HEADER_ID);
        assert_eq!(
            secret.verify_headers(&headers, b"body", DEFAULT_TOLERANCE),
            Err(VerifyError::MissingHeader(HEADER_ID))
        );
    }

    #[test]
    fn during_an_overlap_both_secrets_verify_and_after_it_only_the_new_one() {
        let (old, new) = (WebhookSecret::generate(), WebhookSecret::generate());
        let signer = Signer::new(new.clone(), Some((old.clone(), 10_000)));
        let at = 1_700_000_000;
        let check = |secret: &WebhookSecret, header: &str| {
            secret.verify_at("msg_1", &at.to_string(), header, b"{}", DEFAULT_TOLERANCE, at)
        };
        let during = signer.header("msg_1", at, b"{}", 9_999);
        assert_eq!(during.split(' ').count(), 2, "{during}");
        assert!(during.starts_with(&new.sign("msg_1", at, b"{}")), "the new signature first");
        assert_eq!(check(&old, &during), Ok(()));
        assert_eq!(check(&new, &during), Ok(()));
        let after = signer.header("msg_1", at, b"{}", 10_000);
        assert_eq!(after, new.sign("msg_1", at, b"{}"));
        assert_eq!(check(&new, &after), Ok(()));
        assert_eq!(check(&old, &after), Err(VerifyError::NoMatch));
        let single = Signer::new(new.clone(), None).header("msg_1", at, b"{}", 0);
        assert_eq!(single, new.sign("msg_1", at, b"{}"));
    }
}
