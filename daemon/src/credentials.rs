//! The daemon's secrets: TLS certificate and key, token-verification keys, PUID secret and
//! admin token; created on first run in `--dev` mode, read from named files otherwise (the
//! admin token is created in the data directory in both modes).
//!
//! Dev layout in the data directory (created once, reused after):
//!
//! ```text
//! tls/cert.pem          self-signed for localhost, 127.0.0.1, ::1 (clients trust it as CA)
//! tls/key.pem           its private key
//! token-signing.pk8     Ed25519 PKCS#8 key that signs dev device tokens
//! jwks.json             the matching public key, what the daemon verifies against
//! puid-secret           32 random bytes, base64
//! admin-token           bearer token for the admin API
//! dev.json              what a local client needs (addresses, CA path, admin token)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::auth::{TokenSigner, TokenVerifier};
use crate::puid::PuidKey;
use crate::settings::Credentials;

/// Key id of the dev token-signing key.
pub const DEV_KID: &str = "presenced-dev";

/// Everything secret the daemon runs with.
pub struct Secrets {
    /// Certificate chain for QUIC and HTTPS.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// Its private key.
    pub key: PrivateKeyDer<'static>,
    /// Verifies device tokens.
    pub verifier: TokenVerifier,
    /// Derives PUIDs.
    pub puid_key: PuidKey,
    /// Admin API bearer token, when configured.
    pub admin_token: Option<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets").finish_non_exhaustive()
    }
}

/// `dev.json`: what a local client, the CLI and tests need to reach a dev daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevInfo {
    /// QUIC address devices connect to.
    pub quic: SocketAddr,
    /// HTTPS base URL of the API.
    pub https: String,
    /// PEM file clients trust for both.
    pub ca_cert: PathBuf,
    /// Admin API bearer token.
    pub admin_token: String,
    /// The dev token-signing key (PKCS#8 DER).
    pub token_key: PathBuf,
}

impl DevInfo {
    /// Reads `dev.json` from a data directory.
    pub fn load(data_dir: &Path) -> Result<DevInfo> {
        let path = data_dir.join("dev.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {} (has `presenced serve --dev` run?)", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("invalid {}", path.display()))
    }
}

/// The dev token signer of a data directory, creating its key on first use.
pub fn dev_signer(data_dir: &Path) -> Result<TokenSigner> {
    let path = data_dir.join("token-signing.pk8");
    if !path.exists() {
        create_dir(data_dir)?;
        let pkcs8 = TokenSigner::generate_pkcs8()?;
        write_secret(&path, &pkcs8)?;
    }
    let pkcs8 = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    TokenSigner::from_pkcs8(DEV_KID, &pkcs8).with_context(|| format!("{} is unusable", path.display()))
}

/// Loads the secrets `credentials` names, creating dev ones in `data_dir` first in `--dev`
/// mode (the admin token lives in `data_dir` in both modes).
pub fn load(credentials: &Credentials, data_dir: &Path) -> Result<Secrets> {
    match credentials {
        Credentials::Dev => load_dev(data_dir),
        Credentials::Files { tls_cert, tls_key, jwks: jwks_path, puid_secret_file } => {
            let (cert_chain, key) = read_tls(tls_cert, tls_key)?;
            let jwks = std::fs::read_to_string(jwks_path)
                .with_context(|| format!("cannot read {}", jwks_path.display()))?;
            let verifier = TokenVerifier::from_jwks_json(&jwks)
                .with_context(|| format!("{} is unusable", jwks_path.display()))?;
            let puid_key = read_puid_key(puid_secret_file)?;
            create_dir(data_dir)?;
            let admin_token = Some(admin_token(data_dir)?);
            Ok(Secrets { cert_chain, key, verifier, puid_key, admin_token })
        }
    }
}

fn load_dev(dir: &Path) -> Result<Secrets> {
    create_dir(dir)?;
    let tls_dir = dir.join("tls");
    let (cert_path, key_path) = (tls_dir.join("cert.pem"), tls_dir.join("key.pem"));
    if !cert_path.exists() || !key_path.exists() {
        create_dir(&tls_dir)?;
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
        let certified = rcgen::generate_simple_self_signed(names).context("cannot create dev certificate")?;
        std::fs::write(&cert_path, certified.cert.pem())?;
        write_secret(&key_path, certified.signing_key.serialize_pem().as_bytes())?;
    }
    let (cert_chain, key) = read_tls(&cert_path, &key_path)?;
    let signer = dev_signer(dir)?;
    let jwks_path = dir.join("jwks.json");
    if !jwks_path.exists() {
        std::fs::write(&jwks_path, serde_json::to_string_pretty(&signer.jwks())?)?;
    }
    let jwks = std::fs::read_to_string(&jwks_path)?;
    let verifier = TokenVerifier::from_jwks_json(&jwks)
        .with_context(|| format!("{} is unusable", jwks_path.display()))?;
    let secret_path = dir.join("puid-secret");
    if !secret_path.exists() {
        write_secret(&secret_path, B64.encode(random::<32>()?).as_bytes())?;
    }
    let puid_key = read_puid_key(&secret_path)?;
    let admin_token = Some(admin_token(dir)?);
    Ok(Secrets { cert_chain, key, verifier, puid_key, admin_token })
}

/// The admin API's bearer token, `<data-dir>/admin-token`, created on first run in dev and
/// production alike (readable by its owner only); operators read it from there.
fn admin_token(dir: &Path) -> Result<String> {
    let path = dir.join("admin-token");
    if !path.exists() {
        let token =
            format!("adm_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random::<24>()?));
        write_secret(&path, token.as_bytes())?;
    }
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .trim()
        .to_owned())
}

/// Writes `dev.json` for the addresses the daemon actually bound.
pub fn write_dev_info(dir: &Path, quic: SocketAddr, https: SocketAddr, admin_token: &str) -> Result<DevInfo> {
    let dir = std::fs::canonicalize(dir)?;
    let info = DevInfo {
        quic: loopback_for(quic),
        https: format!("https://{}", loopback_for(https)),
        ca_cert: dir.join("tls/cert.pem"),
        admin_token: admin_token.to_owned(),
        token_key: dir.join("token-signing.pk8"),
    };
    // It holds the admin token: owner-only, and replaced atomically on every start.
    let temporary = dir.join("dev.json.tmp");
    let _ = std::fs::remove_file(&temporary);
    write_secret(&temporary, serde_json::to_string_pretty(&info)?.as_bytes())?;
    std::fs::rename(&temporary, dir.join("dev.json"))?;
    Ok(info)
}

/// A wildcard listen address is reached locally through loopback.
fn loopback_for(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) if v4.ip().is_unspecified() => SocketAddr::from(([127, 0, 0, 1], v4.port())),
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, v6.port()))
        }
        other => other,
    }
}

/// Reads a PEM certificate chain and private key.
pub fn read_tls(cert: &Path, key: &Path) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let certs = read_certs(cert)?;
    let mut reader = std::io::BufReader::new(
        std::fs::File::open(key).with_context(|| format!("cannot open {}", key.display()))?,
    );
    let key = rustls_pemfile::private_key(&mut reader)
        .with_context(|| format!("invalid key PEM {}", key.display()))?
        .with_context(|| format!("no private key in {}", key.display()))?;
    Ok((certs, key))
}

/// Reads every certificate in a PEM file; clients use it for their trust roots.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let mut reader = std::io::BufReader::new(
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
    );
    let certs = rustls_pemfile::certs(&mut reader)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("invalid certificate PEM {}", path.display()))?;
    if certs.is_empty() {
        bail!("no certificate in {}", path.display());
    }
    Ok(certs)
}

fn read_puid_key(path: &Path) -> Result<PuidKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let secret = B64.decode(text.trim()).with_context(|| format!("{} is not base64", path.display()))?;
    PuidKey::new(&secret).with_context(|| format!("{} is unusable", path.display()))
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    SystemRandom::new().fill(&mut bytes).map_err(|_| anyhow::anyhow!("no system randomness"))?;
    Ok(bytes)
}

/// Creates a directory (and its parents) readable by its owner only: the data directory
/// holds keys, secrets and the database.
pub fn create_dir(dir: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).with_context(|| format!("cannot create {}", dir.display()))
}

/// Writes a file readable by its owner only.
fn write_secret(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path).with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents)?;
    Ok(())
}

/// An HTTPS client that trusts exactly the certificates in the PEM file `ca` (the dev
/// daemon's `tls/cert.pem`, or an operator's private CA): for the admin CLI, tools and
/// tests that talk to a daemon whose certificate no public CA signed.
pub fn https_client(ca: &Path) -> Result<reqwest::Client> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(ca)? {
        roots.add(cert).context("unusable CA certificate")?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(reqwest::Client::builder().tls_backend_preconfigured(tls).build()?)
}

/// rustls needs a process-wide crypto provider; both ends use ring.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
