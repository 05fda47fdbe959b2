//! What lets devices notice a restart at once: an endpoint configuration that the next
//! process of the same daemon reproduces.
//!
//! A device whose daemon died (`kill -9`, a crash, a host reboot) keeps sending heartbeats
//! on a connection nobody remembers. The new process answers such packets with a QUIC
//! stateless reset, but the device honours it only if it carries the token the old process
//! announced, `HMAC(reset key, connection id)`; and quinn sends one only for connection ids
//! that its generator recognizes as its own. With quinn's defaults both keys are random per
//! process, so the device would wait for its idle timeout (many minutes) before
//! reconnecting. Here both come from one secret derived from the daemon's PUID secret
//! ([`crate::puid::PuidKey::derive_secret`]): the first heartbeat after a restart ends
//! the dead connection, and the device reconnects, resuming in 0-RTT with the durable TLS
//! sessions ([`super::sessions`]).

use std::sync::Arc;

use quinn::EndpointConfig;
use quinn_proto::HashedConnectionIdGenerator;
use ring::hmac;

/// The label under which the endpoint secret is derived from the PUID secret.
pub(crate) const SECRET_LABEL: &str = "presence quic endpoint v1";

/// An endpoint configuration whose stateless reset tokens and connection ids depend only
/// on `secret`. Connection ids are quinn's default kind (a random nonce and a keyed hash
/// over it, so that resets go only to ids the endpoint issued), with the key derived too.
pub(crate) fn endpoint_config(secret: &[u8; 32]) -> EndpointConfig {
    let reset = hmac::Key::new(hmac::HMAC_SHA256, &derive(secret, b"stateless reset"));
    let cid_key = cid_key(secret);
    let mut config = EndpointConfig::new(Arc::new(reset));
    config.cid_generator(move || Box::new(HashedConnectionIdGenerator::from_key(cid_key)));
    config
}

fn cid_key(secret: &[u8; 32]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&derive(secret, b"connection id")[..8]);
    u64::from_le_bytes(bytes)
}

fn derive(secret: &[u8; 32], purpose: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), purpose);
    let mut key = [0u8; 32];
    key.copy_from_slice(&tag.as_ref()[..32]);
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn_proto::ConnectionIdGenerator;

    #[test]
    fn keys_depend_on_the_secret_only() {
        assert_eq!(derive(&[1; 32], b"a"), derive(&[1; 32], b"a"));
        assert_ne!(derive(&[1; 32], b"a"), derive(&[1; 32], b"b"));
        assert_ne!(derive(&[1; 32], b"a"), derive(&[2; 32], b"a"));
        // What the endpoint's factory builds: ids of one process validate in the next.
        let key = cid_key(&[1; 32]);
        assert_ne!(key, cid_key(&[2; 32]));
        let mut old = HashedConnectionIdGenerator::from_key(key);
        let restarted = HashedConnectionIdGenerator::from_key(key);
        let other = HashedConnectionIdGenerator::from_key(key ^ 1);
        let ids: Vec<_> = (0..20).map(|_| old.generate_cid()).collect();
        assert!(ids.iter().all(|id| restarted.validate(id).is_ok()));
        assert!(ids.iter().filter(|id| other.validate(id).is_ok()).count() < 2);
    }
}
