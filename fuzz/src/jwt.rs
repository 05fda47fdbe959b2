//! The device-token target: JWT parsing and verification (`presenced::testing::auth`).
//!
//! A device sends its token in `Hello`; it is the first thing an unauthenticated peer can
//! make the daemon parse. The input is a small program; its first byte picks the mode:
//!
//! - 0, raw: any text as a token, against a verifier holding one key. Whatever decodes
//!   must satisfy every rule the verifier promises (an accepted token is then a forgery,
//!   which the fuzzer cannot make, so this mode mostly checks that refusals never panic).
//! - 1, signed: header and claims JSON from the input, base64url-encoded and signed with
//!   the verifier's key, so the fuzzer reaches the header and claims decoding behind the
//!   signature check. An accepted token satisfies every rule and its claims are exactly
//!   the claims JSON.
//! - 2, minted: a token minted by the daemon's own signer from fuzzed user, device and
//!   times; the verifier's answer must be exactly the one the rules give.
//! - 3, JWKS: the input as a JWKS document (what an operator configures), then a minted
//!   token against whatever verifier it builds.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use presence_protocol::limits::{MAX_DEVICE_ID_LEN, MAX_TOKEN_LEN};
use presenced::testing::auth::{
    AUDIENCE, Claim, DeviceClaims, MAX_USER_LEN, Malformation, TokenError, TokenSigner, TokenVerifier,
};
// The leeway of a verifier built by `from_jwks_json`, as the harness builds it.
use presenced::settings::DEFAULT_TOKEN_LEEWAY_SECS as LEEWAY_SECS;
use ring::signature::Ed25519KeyPair;

use crate::input::{Input, Script};

/// The key id of the one key.
const KID: &str = "fuzz";

/// The key, as the daemon's signer and as a raw ring key (to sign arbitrary headers), and
/// the verifier for it. A fresh key per process: outcomes never depend on which key it is.
struct Keys {
    signer: TokenSigner,
    raw: Ed25519KeyPair,
    verifier: TokenVerifier,
}

thread_local! {
    static KEYS: Keys = {
        let pkcs8 = TokenSigner::generate_pkcs8().expect("key");
        let signer = TokenSigner::from_pkcs8(KID, &pkcs8).expect("signer");
        let raw = Ed25519KeyPair::from_pkcs8(&pkcs8).expect("raw key");
        let jwks = serde_json::to_string(&signer.jwks()).expect("jwks");
        let verifier = TokenVerifier::from_jwks_json(&jwks).expect("verifier");
        Keys { signer, raw, verifier }
    };
}

/// Runs one program (see the module docs).
pub fn jwt(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.u8() % 4;
    let now = input.u64();
    KEYS.with(|keys| match mode {
        0 => {
            let token = input.rest_text();
            check_accepted(&keys.verifier.verify(&token, now), now, None);
        }
        1 => {
            let header_len = usize::from(input.u16());
            let header = input.bytes(header_len);
            let claims = input.bytes(usize::MAX);
            let signing_input = format!("{}.{}", B64URL.encode(header), B64URL.encode(claims));
            let signature = B64URL.encode(keys.raw.sign(signing_input.as_bytes()));
            let token = format!("{signing_input}.{signature}");
            let verdict = keys.verifier.verify(&token, now);
            check_accepted(&verdict, now, Some(claims));
        }
        2 => minted(keys, &mut input, now),
        _ => {
            let jwks = input.rest_text();
            if let Ok(verifier) = TokenVerifier::from_jwks_json(&jwks) {
                let token = keys.signer.mint("alice", "phone", now, 60);
                let _ = verifier.verify(&token, now);
            }
        }
    });
}

/// A token the daemon's signer minted gets exactly the verdict the rules give.
fn minted(keys: &Keys, input: &mut Input<'_>, now: u64) {
    let sub_len = usize::from(input.u16()) % (MAX_USER_LEN + 16);
    let sub = input.text(sub_len);
    let did = input.short_text();
    let issued = input.u64();
    let ttl = input.u64();
    let token = keys.signer.mint(&sub, &did, issued, ttl);
    let exp = issued.saturating_add(ttl);
    let expected = if token.len() > MAX_TOKEN_LEN {
        Err(TokenError::Malformed(Malformation::TooLong))
    } else if exp.saturating_add(LEEWAY_SECS) <= now {
        Err(TokenError::Expired)
    } else if sub.is_empty() || sub.len() > MAX_USER_LEN {
        Err(TokenError::Claim(Claim::Sub))
    } else if did.is_empty() || did.len() > MAX_DEVICE_ID_LEN {
        Err(TokenError::Claim(Claim::Did))
    } else {
        Ok((sub, did, exp))
    };
    let verdict = keys.verifier.verify(&token, now).map(|c| (c.sub, c.did, c.exp));
    assert_eq!(verdict, expected, "minted token verdict");
}

/// An accepted token satisfies every rule the verifier promises; with `claims`, its
/// claims are exactly that JSON.
fn check_accepted(verdict: &Result<DeviceClaims, TokenError>, now: u64, claims: Option<&[u8]>) {
    let Ok(accepted) = verdict else { return };
    assert!(accepted.exp.saturating_add(LEEWAY_SECS) > now, "expired token accepted");
    assert!(accepted.nbf.is_none_or(|nbf| nbf <= now.saturating_add(LEEWAY_SECS)), "early token accepted");
    assert!(!accepted.sub.is_empty() && accepted.sub.len() <= MAX_USER_LEN, "sub out of bounds");
    assert!(!accepted.did.is_empty() && accepted.did.len() <= MAX_DEVICE_ID_LEN, "did out of bounds");
    let audience = serde_json::to_value(&accepted.aud).expect("aud");
    let names = match &audience {
        serde_json::Value::String(one) => vec![one.as_str()],
        other => other.as_array().into_iter().flatten().filter_map(|a| a.as_str()).collect(),
    };
    assert!(names.contains(&AUDIENCE), "token for another audience accepted");
    if let Some(claims) = claims {
        let decoded: DeviceClaims = serde_json::from_slice(claims).expect("accepted claims decode");
        assert_eq!(&decoded, accepted);
    }
}

/// Seed programs: accepted and refused tokens of every mode.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let now = 1_767_225_600;
    let signed = |header: &str, claims: &str| {
        Script::new()
            .u8(1)
            .u64(now)
            .u16(header.len() as u16)
            .bytes(header.as_bytes())
            .bytes(claims.as_bytes())
    };
    let header = r#"{"alg":"EdDSA","typ":"JWT","kid":"fuzz"}"#;
    let claims = r#"{"sub":"alice","did":"phone","aud":"presence","exp":1767229200,"iat":1767225600}"#;
    let minted = |sub: &str, did: &str, issued: u64, ttl: u64| {
        Script::new()
            .u8(2)
            .u64(now)
            .u16(sub.len() as u16)
            .bytes(sub.as_bytes())
            .short_text(did)
            .u64(issued)
            .u64(ttl)
    };
    let signer = TokenSigner::from_pkcs8(KID, &TokenSigner::generate_pkcs8().expect("key")).expect("signer");
    let jwks = serde_json::to_string(&signer.jwks()).expect("jwks");
    let foreign = signer.mint("alice", "phone", now, 3_600);
    vec![
        ("raw_foreign_token", Script::new().u8(0).u64(now).bytes(foreign.as_bytes()).build()),
        ("raw_alg_none", Script::new().u8(0).u64(now).bytes(b"eyJhbGciOiJub25lIn0.e30.").build()),
        ("signed_accepted", signed(header, claims).build()),
        ("signed_no_kid_audience_list", signed(
            r#"{"alg":"EdDSA"}"#,
            r#"{"sub":"bob","did":"laptop","aud":["other","presence"],"exp":1767229200,"nbf":1767225500}"#,
        ).build()),
        ("signed_wrong_audience", signed(header, r#"{"sub":"a","did":"d","aud":"other","exp":1767229200}"#).build()),
        ("signed_hs256", signed(r#"{"alg":"HS256","kid":"fuzz"}"#, claims).build()),
        ("signed_unknown_kid", signed(r#"{"alg":"EdDSA","kid":"other"}"#, claims).build()),
        ("minted_valid", minted("alice", "phone", now, 3_600).build()),
        ("minted_expired", minted("alice", "phone", now - 7_200, 3_600).build()),
        ("minted_empty_sub", minted("", "phone", now, 60).build()),
        ("minted_forever", minted("alice", "phone", u64::MAX - 5, u64::MAX).build()),
        ("jwks", Script::new().u8(3).u64(now).bytes(jwks.as_bytes()).build()),
        ("jwks_mixed_keys", Script::new().u8(3).u64(now).bytes(
            br#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"},{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
        ).build()),
    ]
}
