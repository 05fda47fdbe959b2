//! Device tokens: compact JWTs signed with EdDSA (Ed25519), verified against a JWKS.
//!
//! Any identity provider that can sign an Ed25519 JWT can issue device tokens; the daemon
//! only needs its public keys as a JWKS file. In `--dev` mode the daemon is such an issuer
//! itself ([`TokenSigner`], used by `presenced token`). The verifier is strict: `alg` must
//! be `EdDSA` (no `none`, no algorithm confusion), `aud` must contain `presence`, `exp` must
//! lie ahead, and `sub` and the device claim `did` must be present and bounded.
//!
//! "Ahead" allows the configured leeway (`token_leeway_secs`, PROTOCOL.md §9.8): the token
//! issuer's clock and the daemon's are never quite the same, so a token is refused once
//! `now >= exp + leeway` and a session it opened ends at `exp + leeway`, both from the one
//! [`TokenVerifier`] so that the handshake and the session agree.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use presence_protocol::limits::{MAX_DEVICE_ID_LEN, MAX_TOKEN_LEN};
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::settings::DEFAULT_TOKEN_LEEWAY_SECS;

/// The audience every device token must name.
pub const AUDIENCE: &str = "presence";
/// Longest user id (`sub`) accepted, in bytes.
pub const MAX_USER_LEN: usize = 256;

/// Why a token was refused. The payloads are typed so that callers and tests can tell the
/// refusals apart without reading messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts with JSON header and claims.
    #[error("malformed token: {0}")]
    Malformed(Malformation),
    /// The header's `alg` is not `EdDSA`.
    #[error("unsupported token algorithm {alg:?}")]
    Algorithm {
        /// The header's `alg`, as the token gave it (bounded by the token's length).
        alg: String,
    },
    /// No key in the JWKS matches the header's `kid`.
    #[error("no verification key for kid {kid:?}")]
    UnknownKey {
        /// The header's `kid`; `None` when it named none and the JWKS has several keys.
        kid: Option<String>,
    },
    /// The header has `crit`: it names extensions the token must not be accepted without
    /// understanding, and the daemon understands none (RFC 7515 §4.1.11).
    #[error("token header names critical extensions (crit) this server does not understand")]
    CriticalHeader,
    /// The signature does not verify.
    #[error("bad token signature")]
    Signature,
    /// `aud` does not contain `presence`.
    #[error("token audience is not {AUDIENCE:?}")]
    Audience,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` lies in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// A required claim is missing, empty or too long.
    #[error("token claim {0} missing or invalid")]
    Claim(Claim),
}

/// How a token failed to parse, before any key was tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformation {
    /// Longer than [`MAX_TOKEN_LEN`].
    #[error("too long")]
    TooLong,
    /// Not exactly three dot-separated parts.
    #[error("expected three parts")]
    Parts,
    /// The header or the claims are not base64url.
    #[error("base64url")]
    Base64,
    /// The header or the claims are not the expected JSON.
    #[error("json")]
    Json,
    /// The signature part is not base64url.
    #[error("signature encoding")]
    SignatureEncoding,
}

/// A claim every device token must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Claim {
    /// `sub`: the user, 1 to [`MAX_USER_LEN`] bytes.
    #[error("sub")]
    Sub,
    /// `did`: the device, 1 to [`MAX_DEVICE_ID_LEN`] bytes.
    #[error("did")]
    Did,
}

/// Why key material (a JWKS, an Ed25519 key) is unusable: start-up errors, each with its
/// cause as the [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The JWKS is not JSON of the JWKS shape.
    #[error("invalid JWKS")]
    Jwks(#[source] serde_json::Error),
    /// An Ed25519 key in the JWKS has no `x`.
    #[error("JWKS Ed25519 key without x")]
    MissingX,
    /// An Ed25519 key's `x` is not base64url.
    #[error("JWKS Ed25519 key x is not base64url")]
    XEncoding(#[source] base64::DecodeError),
    /// An Ed25519 key's `x` does not decode to 32 bytes.
    #[error("JWKS Ed25519 key x is {len} bytes, not 32")]
    XLength {
        /// The decoded length.
        len: usize,
    },
    /// The JWKS holds no Ed25519 (`OKP`) key at all.
    #[error("JWKS holds no Ed25519 (OKP) key")]
    NoKey,
    /// The system could not generate a key (no randomness; ring says no more).
    #[error("cannot generate an Ed25519 key")]
    Generate,
    /// A stored PKCS#8 document is not an Ed25519 key pair. ring's reason is a payload, not
    /// a source: without its `std` feature it is no `std::error::Error`.
    #[error("invalid Ed25519 key: {0}")]
    Pkcs8(ring::error::KeyRejected),
}

/// A JWKS file: `{"keys": [...]}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Jwks {
    /// The keys.
    pub keys: Vec<Jwk>,
}

/// One JSON Web Key; only `OKP` / `Ed25519` keys are used, others are skipped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Jwk {
    /// Key type; `OKP` for Ed25519.
    pub kty: String,
    /// Curve; `Ed25519`.
    #[serde(default)]
    pub crv: Option<String>,
    /// The public key, base64url.
    #[serde(default)]
    pub x: Option<String>,
    /// Key id, matched against the token header's `kid`.
    #[serde(default)]
    pub kid: Option<String>,
    /// Algorithm, `EdDSA` when present.
    #[serde(default)]
    pub alg: Option<String>,
    /// Intended use, `sig` when present.
    #[serde(default, rename = "use")]
    pub use_: Option<String>,
}

/// The claims the daemon reads from a device token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceClaims {
    /// The user.
    pub sub: String,
    /// The device id; must match the `Hello`.
    pub did: String,
    /// Audience: a string or a list of strings.
    pub aud: Audience,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Not before, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// JWT `aud`: one string or several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// A single audience.
    One(String),
    /// Several audiences.
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, wanted: &str) -> bool {
        match self {
            Audience::One(aud) => aud == wanted,
            Audience::Many(auds) => auds.iter().any(|aud| aud == wanted),
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    /// Extensions the receiver must understand (RFC 7515 §4.1.11). The daemon understands
    /// none, so a token that has the parameter at all is refused.
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// Verifies device tokens against the public keys of a JWKS.
#[derive(Debug)]
pub struct TokenVerifier {
    keys: HashMap<Option<String>, UnparsedPublicKey<Vec<u8>>>,
    /// Clock skew tolerated on `exp` and `nbf`, seconds.
    leeway_secs: u64,
}

impl TokenVerifier {
    /// Builds a verifier from JWKS JSON; fails if it holds no usable Ed25519 key.
    pub fn from_jwks_json(json: &str) -> Result<TokenVerifier, KeyError> {
        let jwks: Jwks = serde_json::from_str(json).map_err(KeyError::Jwks)?;
        let mut keys = HashMap::new();
        for jwk in jwks.keys {
            if jwk.kty != "OKP" || jwk.crv.as_deref() != Some("Ed25519") {
                continue;
            }
            let x = jwk.x.as_deref().ok_or(KeyError::MissingX)?;
            let raw = B64URL.decode(x).map_err(KeyError::XEncoding)?;
            if raw.len() != 32 {
                return Err(KeyError::XLength { len: raw.len() });
            }
            keys.insert(jwk.kid, UnparsedPublicKey::new(&ED25519, raw));
        }
        if keys.is_empty() {
            return Err(KeyError::NoKey);
        }
        Ok(TokenVerifier { keys, leeway_secs: DEFAULT_TOKEN_LEEWAY_SECS })
    }

    /// This verifier with another clock-skew leeway (the `token_leeway_secs` setting);
    /// sub-second parts are ignored, as JWT times are whole seconds.
    pub fn with_leeway(mut self, leeway: Duration) -> TokenVerifier {
        self.leeway_secs = leeway.as_secs();
        self
    }

    /// How long a token this verifier accepted at `now_ms` (Unix milliseconds) keeps its
    /// session open: until `exp` plus the same leeway `verify` allowed, to the millisecond,
    /// so a token accepted at the edge of its expiry is not closed the moment its session
    /// starts, and none outlives `exp + leeway`.
    pub fn valid_for(&self, claims: &DeviceClaims, now_ms: u64) -> Duration {
        let end_ms = claims.exp.saturating_add(self.leeway_secs).saturating_mul(1_000);
        Duration::from_millis(end_ms.saturating_sub(now_ms))
    }

    /// Verifies `token` at Unix time `now` and returns its claims.
    pub fn verify(&self, token: &str, now: u64) -> Result<DeviceClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed(Malformation::TooLong));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed(Malformation::Parts));
        };
        let signed = &token[..header.len() + 1 + claims.len()];
        let header: Header = decode_json(header)?;
        if header.alg != "EdDSA" {
            return Err(TokenError::Algorithm { alg: header.alg });
        }
        if header.crit.is_some() {
            return Err(TokenError::CriticalHeader);
        }
        let key = match self.keys.get(&header.kid) {
            Some(key) => key,
            // A token without kid may use the only key there is.
            None if header.kid.is_none() && self.keys.len() == 1 => {
                self.keys.values().next().ok_or(TokenError::UnknownKey { kid: None })?
            }
            None => return Err(TokenError::UnknownKey { kid: header.kid }),
        };
        let signature =
            B64URL.decode(signature).map_err(|_| TokenError::Malformed(Malformation::SignatureEncoding))?;
        key.verify(signed.as_bytes(), &signature).map_err(|_| TokenError::Signature)?;
        let claims: DeviceClaims = decode_json(claims)?;
        if !claims.aud.contains(AUDIENCE) {
            return Err(TokenError::Audience);
        }
        if claims.exp.saturating_add(self.leeway_secs) <= now {
            return Err(TokenError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| nbf > now.saturating_add(self.leeway_secs)) {
            return Err(TokenError::NotYetValid);
        }
        if claims.sub.is_empty() || claims.sub.len() > MAX_USER_LEN {
            return Err(TokenError::Claim(Claim::Sub));
        }
        if claims.did.is_empty() || claims.did.len() > MAX_DEVICE_ID_LEN {
            return Err(TokenError::Claim(Claim::Did));
        }
        Ok(claims)
    }
}

fn decode_json<T: for<'de> Deserialize<'de>>(part: &str) -> Result<T, TokenError> {
    let bytes = B64URL.decode(part).map_err(|_| TokenError::Malformed(Malformation::Base64))?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed(Malformation::Json))
}

/// Signs device tokens with an Ed25519 key (the `--dev` issuer).
pub struct TokenSigner {
    kid: String,
    key: Ed25519KeyPair,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// A fresh key as PKCS#8 DER, for storing.
    pub fn generate_pkcs8() -> Result<Vec<u8>, KeyError> {
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map(|doc| doc.as_ref().to_vec())
            .map_err(|_| KeyError::Generate)
    }

    /// Loads a PKCS#8 DER key.
    pub fn from_pkcs8(kid: &str, pkcs8: &[u8]) -> Result<TokenSigner, KeyError> {
        let key = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(KeyError::Pkcs8)?;
        Ok(TokenSigner { kid: kid.to_owned(), key })
    }

    /// The JWKS that verifies this signer's tokens.
    pub fn jwks(&self) -> Jwks {
        Jwks {
            keys: vec![Jwk {
                kty: "OKP".into(),
                crv: Some("Ed25519".into()),
                x: Some(B64URL.encode(self.key.public_key().as_ref())),
                kid: Some(self.kid.clone()),
                alg: Some("EdDSA".into()),
                use_: Some("sig".into()),
            }],
        }
    }

    /// Signs arbitrary claims (tests use this to make wrong-audience tokens).
    pub fn sign<C: Serialize>(&self, claims: &C) -> String {
        let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": self.kid});
        let header = B64URL.encode(header.to_string());
        let claims = B64URL.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signing_input = format!("{header}.{claims}");
        let signature = B64URL.encode(self.key.sign(signing_input.as_bytes()));
        format!("{signing_input}.{signature}")
    }

    /// Mints a device token for `user` and `device`, valid for `ttl_secs` from `now`.
    pub fn mint(&self, user: &str, device: &str, now: u64, ttl_secs: u64) -> String {
        self.sign(&DeviceClaims {
            sub: user.into(),
            did: device.into(),
            aud: Audience::One(AUDIENCE.into()),
            exp: now.saturating_add(ttl_secs),
            nbf: None,
            iat: Some(now),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> TokenSigner {
        TokenSigner::from_pkcs8("k1", &TokenSigner::generate_pkcs8().expect("key")).expect("signer")
    }

    fn verifier(signer: &TokenSigner) -> TokenVerifier {
        let json = serde_json::to_string(&signer.jwks()).expect("json");
        TokenVerifier::from_jwks_json(&json).expect("jwks")
    }

    #[test]
    fn a_token_with_crit_is_refused_even_when_signed() {
        let signer = signer();
        let verifier = verifier(&signer);
        let now = 1_000;
        let claims = DeviceClaims {
            sub: "alice".into(),
            did: "phone".into(),
            aud: Audience::One(AUDIENCE.into()),
            exp: now + 60,
            nbf: None,
            iat: Some(now),
        };
        for crit in [serde_json::json!(["exp"]), serde_json::json!(["b64"]), serde_json::json!([])] {
            let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": signer.kid, "crit": crit});
            let header = B64URL.encode(header.to_string());
            let body = B64URL.encode(serde_json::to_vec(&claims).expect("claims"));
            let input = format!("{header}.{body}");
            let token = format!("{input}.{}", B64URL.encode(signer.key.sign(input.as_bytes())));
            assert_eq!(verifier.verify(&token, now), Err(TokenError::CriticalHeader), "crit {crit}");
        }
        // The same claims without crit verify: only the header made the difference.
        assert!(verifier.verify(&signer.sign(&claims), now).is_ok());
    }

    #[test]
    fn minted_token_verifies() {
        let signer = signer();
        let token = signer.mint("alice", "phone", 1_000, 60);
        let claims = verifier(&signer).verify(&token, 1_010).expect("valid");
        assert_eq!((claims.sub.as_str(), claims.did.as_str(), claims.exp), ("alice", "phone", 1_060));
    }

    #[test]
    fn refusals_are_specific() {
        let signer = signer();
        let verifier = verifier(&signer);
        let token = signer.mint("alice", "phone", 1_000, 60);
        assert_eq!(verifier.verify(&token, 1_000 + 60 + DEFAULT_TOKEN_LEEWAY_SECS), Err(TokenError::Expired));
        let forged = verifier.verify(&signer_token_from(&other_signer(), "alice"), 1_000);
        assert_eq!(forged, Err(TokenError::Signature));
        let wrong_aud =
            signer.sign(&serde_json::json!({"sub": "a", "did": "d", "aud": "other", "exp": 2_000}));
        assert_eq!(verifier.verify(&wrong_aud, 1_000), Err(TokenError::Audience));
        let mut tampered = token.clone();
        tampered.insert(token.find('.').expect("dot") + 3, 'A');
        assert!(verifier.verify(&tampered, 1_000).is_err());
        assert_eq!(verifier.verify("a.b", 1_000), Err(TokenError::Malformed(Malformation::Parts)));
        let not_json = format!("{}.b.c", B64URL.encode("not json"));
        assert_eq!(verifier.verify(&not_json, 1_000), Err(TokenError::Malformed(Malformation::Json)));
        assert_eq!(verifier.verify("*.b.c", 1_000), Err(TokenError::Malformed(Malformation::Base64)));
        let none_alg = format!("{}.{}.", B64URL.encode(r#"{"alg":"none"}"#), B64URL.encode("{}"));
        assert_eq!(verifier.verify(&none_alg, 1_000), Err(TokenError::Algorithm { alg: "none".into() }));
        let other_kid =
            format!("{}.{}.", B64URL.encode(r#"{"alg":"EdDSA","kid":"k9"}"#), B64URL.encode("{}"));
        assert_eq!(
            verifier.verify(&other_kid, 1_000),
            Err(TokenError::UnknownKey { kid: Some("k9".into()) })
        );
        let no_sub =
            signer.sign(&serde_json::json!({"sub": "", "did": "d", "aud": "presence", "exp": 2_000}));
        assert_eq!(verifier.verify(&no_sub, 1_000), Err(TokenError::Claim(Claim::Sub)));
    }

    #[test]
    fn unusable_key_material_says_why() {
        let refused = |jwks: &str| TokenVerifier::from_jwks_json(jwks).expect_err("refused");
        assert!(matches!(refused("{"), KeyError::Jwks(_)));
        assert!(matches!(refused(r#"{"keys":[]}"#), KeyError::NoKey));
        assert!(matches!(refused(r#"{"keys":[{"kty":"OKP","crv":"Ed25519"}]}"#), KeyError::MissingX));
        assert!(matches!(
            refused(r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"*"}]}"#),
            KeyError::XEncoding(_)
        ));
        let short = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAAA"}]}"#;
        assert!(matches!(refused(short), KeyError::XLength { len: 3 }));
        let error = TokenSigner::from_pkcs8("k", b"not a key").expect_err("refused");
        assert!(matches!(error, KeyError::Pkcs8(_)));
        let jwks = TokenVerifier::from_jwks_json("{").expect_err("refused");
        assert!(std::error::Error::source(&jwks).is_some(), "the JSON error is kept as the cause");
    }

    #[test]
    fn extreme_times_do_not_overflow() {
        let signer = signer();
        let verifier = verifier(&signer);
        let forever = signer.mint("alice", "phone", u64::MAX - 5, u64::MAX);
        assert_eq!(verifier.verify(&forever, 1_000).expect("valid").exp, u64::MAX);
        let claims =
            serde_json::json!({"sub": "a", "did": "d", "aud": "presence", "exp": u64::MAX, "nbf": u64::MAX});
        let future = signer.sign(&claims);
        assert_eq!(verifier.verify(&future, 1_000), Err(TokenError::NotYetValid));
        assert_eq!(verifier.verify(&future, u64::MAX), Err(TokenError::Expired));
    }

    #[test]
    fn the_leeway_is_exact_and_configurable() {
        let signer = signer();
        let token = signer.mint("alice", "phone", 1_000, 60);
        let verifier = verifier(&signer).with_leeway(Duration::from_secs(10));
        // Accepted up to the last second before exp + leeway, refused from it on.
        let claims = verifier.verify(&token, 1_069).expect("inside the leeway");
        assert_eq!(verifier.valid_for(&claims, 1_069_250), Duration::from_millis(750));
        assert_eq!(verifier.verify(&token, 1_070), Err(TokenError::Expired));
        let strict = self::verifier(&signer).with_leeway(Duration::ZERO);
        assert_eq!(strict.verify(&token, 1_060), Err(TokenError::Expired));
        let claims = strict.verify(&token, 1_059).expect("valid");
        assert_eq!(strict.valid_for(&claims, 1_059_000), Duration::from_secs(1));
        let later = signer.sign(
            &serde_json::json!({"sub": "a", "did": "d", "aud": "presence", "exp": 2_000, "nbf": 1_010}),
        );
        assert!(verifier.verify(&later, 1_000).is_ok(), "nbf within the leeway");
        assert_eq!(verifier.verify(&later, 999), Err(TokenError::NotYetValid));
    }

    fn other_signer() -> TokenSigner {
        // Same kid, different key: a forgery attempt.
        signer()
    }

    fn signer_token_from(signer: &TokenSigner, user: &str) -> String {
        signer.mint(user, "phone", 1_000, 60)
    }
}
