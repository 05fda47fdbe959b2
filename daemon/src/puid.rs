//! PUIDs: the pseudonymous id one app knows one user by.
//!
//! Derived, never stored: `PUID = base64url(HMAC-SHA256(secret, len(app) ‖ app ‖ user)[..16])`.
//! The length prefix keeps `("ab", "c")` and `("a", "bc")` apart. Without the daemon secret
//! two apps cannot tell whether their PUIDs name the same user, and a PUID is stable for as
//! long as the secret is, across reconnects and restarts.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use presence_protocol::Puid;
use ring::hmac;

/// Bytes of HMAC output kept: 128 bits, 22 characters of base64url.
const PUID_BYTES: usize = 16;
/// Characters of every PUID.
pub(crate) const PUID_LEN: usize = 22;

/// Whether `text` has a PUID's shape (22 characters of base64url). The API refuses other
/// strings before any lookup: the shape is public, so this tells nobody whether a user
/// exists, and it bounds what a client can make the daemon hash and hold.
pub(crate) fn is_puid(text: &str) -> bool {
    text.len() == PUID_LEN && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The keyed PUID derivation.
pub struct PuidKey(hmac::Key);

impl std::fmt::Debug for PuidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PuidKey(..)")
    }
}

/// A PUID secret under [`PuidKey::MIN_SECRET`] bytes: PUIDs derived from it could be
/// guessed, linking a user across apps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("PUID secret must be at least {min} bytes, not {len}", min = PuidKey::MIN_SECRET)]
pub struct ShortSecret {
    /// The length given.
    pub len: usize,
}

impl PuidKey {
    /// Shortest secret accepted, in bytes.
    pub const MIN_SECRET: usize = 32;

    /// A key from the daemon's secret; refuses secrets under [`Self::MIN_SECRET`] bytes.
    pub fn new(secret: &[u8]) -> Result<PuidKey, ShortSecret> {
        if secret.len() < Self::MIN_SECRET {
            return Err(ShortSecret { len: secret.len() });
        }
        Ok(PuidKey(hmac::Key::new(hmac::HMAC_SHA256, secret)))
    }

    /// The PUID of `user` for `app_id`.
    pub fn derive(&self, app_id: &str, user: &str) -> Puid {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(&(app_id.len() as u64).to_be_bytes());
        ctx.update(app_id.as_bytes());
        ctx.update(user.as_bytes());
        let tag = ctx.sign();
        let encoded = B64URL.encode(&tag.as_ref()[..PUID_BYTES]);
        // 22 characters always fit the 64-byte PUID limit.
        Puid::new(encoded).unwrap_or_default()
    }

    /// A keyed 64-bit value for one presence change of one (app, PUID): where in its time
    /// slot that app's `seq` and `at` fall (`crate::table`). Keyed, so that two apps cannot
    /// compute each other's values and match their PUIDs by equal numbers or equal gaps; the
    /// input starts with a length no app id can have, so it never collides with a PUID or
    /// [`derive_secret`](Self::derive_secret).
    pub(crate) fn spread(&self, app_id: &str, puid: &str, slot: u64, previous: u64) -> u64 {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(&(u64::MAX - 1).to_be_bytes());
        ctx.update(&(app_id.len() as u64).to_be_bytes());
        ctx.update(app_id.as_bytes());
        ctx.update(&(puid.len() as u64).to_be_bytes());
        ctx.update(puid.as_bytes());
        ctx.update(&slot.to_be_bytes());
        ctx.update(&previous.to_be_bytes());
        let mut word = [0u8; 8];
        word.copy_from_slice(&ctx.sign().as_ref()[..8]);
        u64::from_be_bytes(word)
    }

    /// A secret for another purpose (`label`), derived from the same daemon secret so that
    /// it is as stable as the PUIDs are, with no file of its own. The input starts with an
    /// all-ones length no app id can have, so it never collides with a PUID derivation.
    pub fn derive_secret(&self, label: &str) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(&u64::MAX.to_be_bytes());
        ctx.update(label.as_bytes());
        let mut secret = [0u8; 32];
        secret.copy_from_slice(&ctx.sign().as_ref()[..32]);
        secret
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_per_app_and_unlinkable_across_apps() {
        let key = PuidKey::new(&[7; 32]).expect("key");
        let again = PuidKey::new(&[7; 32]).expect("key");
        assert_eq!(key.derive("chat", "alice"), again.derive("chat", "alice"));
        assert_ne!(key.derive("chat", "alice"), key.derive("mail", "alice"));
        assert_ne!(key.derive("ab", "c"), key.derive("a", "bc"));
        assert_eq!(key.derive_secret("x"), again.derive_secret("x"));
        assert_ne!(key.derive_secret("x"), key.derive_secret("y"));
        assert_ne!(key.derive_secret("x"), PuidKey::new(&[8; 32]).expect("key").derive_secret("x"));
        assert_ne!(key.derive("chat", "alice"), PuidKey::new(&[8; 32]).expect("key").derive("chat", "alice"));
        assert_eq!(key.derive("chat", "alice").len(), PUID_LEN);
        assert!(is_puid(key.derive("chat", "alice").as_str()));
        assert!(!is_puid("no-such-puid") && !is_puid(&"A".repeat(23)) && !is_puid("AAAAAAAAAAAAAAAAAAAAA="));
        assert_eq!(PuidKey::new(&[0; 16]).err(), Some(ShortSecret { len: 16 }));
    }
}
