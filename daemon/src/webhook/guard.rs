//! The SSRF guard: webhooks go to the public internet, never into the operator's network.
//!
//! An AppService chooses its webhook URL, so without a guard anyone able to register an app
//! could make the daemon POST to `https://10.0.0.5/admin` or the cloud metadata service at
//! `169.254.169.254`. The rule: a webhook URL is `https` and every address its host resolves
//! to is public, unless the daemon runs in dev mode or the address is in an operator
//! allow-list of CIDRs.
//!
//! The rule is enforced twice:
//!
//! - **At registration**, [`UrlPolicy::validate`] rejects a URL whose
//!   scheme is wrong or whose host resolves to a forbidden address, so the admin gets an
//!   error at once.
//! - **At connect time**, because DNS can change after registration (DNS rebinding: a name
//!   that resolved to a public address at registration answers `127.0.0.1` later). The
//!   fan-out's HTTP client resolves every name through [`GuardedResolver`], which drops
//!   forbidden addresses, so the TCP connection can only go to an address that was checked
//!   in the same resolution. URLs whose host is an IP literal never reach a resolver, so
//!   the fan-out checks them with [`UrlPolicy::check_target`] before each delivery.
//!
//! The fan-out's client also has proxies disabled: a proxy would resolve the name itself,
//! out of the guard's sight.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::str::FromStr;
use std::sync::Arc;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// `url::ParseError`, named through the `Url` reqwest re-exports, so the daemon needs no
/// direct dependency on the `url` crate.
pub(crate) type UrlParseError = <Url as FromStr>::Err;

/// Why a webhook URL or address is refused.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// The text is not an absolute URL.
    #[error("not a valid URL")]
    InvalidUrl(#[source] UrlParseError),
    /// The scheme is not `https` (plain `http` is accepted in dev mode only).
    #[error("webhook URLs must use https, not {scheme}")]
    Scheme {
        /// The scheme given.
        scheme: String,
    },
    /// The URL has no host (`https:///x`) or an empty one.
    #[error("webhook URL has no host")]
    NoHost,
    /// The host is, or resolves to, an address that is not public and not allow-listed.
    #[error("{host} resolves to {addr}, which is not a public address (loopback, private, link-local, ...)")]
    Forbidden {
        /// The host as written in the URL.
        host: String,
        /// The first refused address.
        addr: IpAddr,
    },
    /// The name did not resolve.
    #[error("cannot resolve {host}")]
    Resolve {
        /// The name looked up.
        host: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// The name resolved to no address at all.
    #[error("{host} has no address")]
    NoAddress {
        /// The name looked up.
        host: String,
    },
    /// An allow-list entry is not a CIDR (`10.0.0.0/8`, `fd00::/8`) or a bare address.
    #[error("invalid CIDR {text:?}: {detail}")]
    InvalidCidr {
        /// The entry as given.
        text: String,
        /// What is wrong with it.
        detail: &'static str,
    },
}

/// What a log line may say about a webhook URL: its scheme, host and port, never its
/// userinfo, path, query or fragment, where an app may have put a token
/// (`https://user:pass@host/hook?key=...`). Formats lazily, so a log line filtered out
/// costs nothing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin<'a>(&'a Url);

/// The loggable part of `url`; see [`Origin`].
pub(crate) fn origin(url: &Url) -> Origin<'_> {
    Origin(url)
}

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = self.0;
        // `host_str` brackets IPv6 literals; a URL without a host (`data:...`) shows its
        // scheme only.
        match (url.host_str(), url.port_or_known_default()) {
            (Some(host), Some(port)) => write!(f, "{}://{host}:{port}", url.scheme()),
            (Some(host), None) => write!(f, "{}://{host}", url.scheme()),
            (None, _) => write!(f, "{}:", url.scheme()),
        }
    }
}

/// An address block, `addr/prefix`: one operator allow-list entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The block's first address (host bits cleared).
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `addr` is inside the block. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)
    /// matches the IPv4 block it maps, since that is where a connection to it goes.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.network, addr.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = mask_u32(self.prefix);
                u32::from(a) & mask == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = mask_u128(self.prefix);
                u128::from(a) & mask == u128::from(net)
            }
            (IpAddr::V6(net), IpAddr::V4(_)) => {
                // A v6 block written to cover mapped addresses (`::ffff:10.0.0.0/104`).
                let IpAddr::V6(raw) = addr else { return false };
                u128::from(raw) & mask_u128(self.prefix) == u128::from(net)
            }
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }
}

fn mask_u32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_u128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = GuardError;

    fn from_str(text: &str) -> Result<Cidr, GuardError> {
        parse_cidr(text)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Parses `addr/prefix` or a bare address (a /32 or /128). Host bits are cleared, so
/// `10.1.2.3/8` means `10.0.0.0/8`.
pub fn parse_cidr(text: &str) -> Result<Cidr, GuardError> {
    let invalid = |detail| GuardError::InvalidCidr { text: text.to_owned(), detail };
    let trimmed = text.trim();
    let (addr, prefix) = match trimmed.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (trimmed, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| invalid("not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p.parse::<u8>().map_err(|_| invalid("prefix is not a number"))?,
        None => max,
    };
    if prefix > max {
        return Err(invalid("prefix too long for the address family"));
    }
    let network = match addr {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask_u32(prefix))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask_u128(prefix))),
    };
    Ok(Cidr { network, prefix })
}

/// Whether an address is reachable on the public internet, and so a fair webhook target.
///
/// Refused: unspecified, "this network" (0/8), loopback, RFC 1918 private, CGNAT
/// (100.64/10), link-local, IETF protocol assignments (192.0.0/24, 2001::/23), the
/// documentation ranges (192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32,
/// 3fff::/20), benchmarking (198.18/15), the 6to4 relay anycast (192.88.99/24), multicast,
/// reserved and broadcast (240/4), unique-local (fc00::/7), and every IPv6 address outside
/// global unicast (2000::/3). IPv6 forms that embed an IPv4 address (IPv4-mapped
/// `::ffff:0:0/96`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by the embedded
/// address, since that is where the packets end up.
pub fn is_public(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => is_public_v4(a),
        IpAddr::V6(a) => is_public_v6(a),
    }
}

fn is_public_v4(addr: Ipv4Addr) -> bool {
    const REFUSED: &[(u32, u8)] = &[
        (0x0000_0000, 8),  // 0.0.0.0/8 this network, unspecified
        (0x0A00_0000, 8),  // 10.0.0.0/8 private
        (0x6440_0000, 10), // 100.64.0.0/10 CGNAT
        (0x7F00_0000, 8),  // 127.0.0.0/8 loopback
        (0xA9FE_0000, 16), // 169.254.0.0/16 link-local (cloud metadata lives here)
        (0xAC10_0000, 12), // 172.16.0.0/12 private
        (0xC000_0000, 24), // 192.0.0.0/24 IETF protocol assignments
        (0xC000_0200, 24), // 192.0.2.0/24 TEST-NET-1
        (0xC058_6300, 24), // 192.88.99.0/24 6to4 relay anycast
        (0xC0A8_0000, 16), // 192.168.0.0/16 private
        (0xC612_0000, 15), // 198.18.0.0/15 benchmarking
        (0xC633_6400, 24), // 198.51.100.0/24 TEST-NET-2
        (0xCB00_7100, 24), // 203.0.113.0/24 TEST-NET-3
        (0xE000_0000, 4),  // 224.0.0.0/4 multicast
        (0xF000_0000, 4),  // 240.0.0.0/4 reserved, 255.255.255.255 broadcast
    ];
    let bits = u32::from(addr);
    !REFUSED.iter().any(|&(net, prefix)| bits & mask_u32(prefix) == net)
}

fn is_public_v6(addr: Ipv6Addr) -> bool {
    let bits = u128::from(addr);
    if let Some(v4) = addr.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    // NAT64 well-known prefix: the IPv4 address is in the last 32 bits.
    if bits & mask_u128(96) == 0x0064_ff9b_0000_0000_0000_0000_0000_0000 {
        return is_public_v4(Ipv4Addr::from(bits as u32));
    }
    // 6to4: the IPv4 address follows the 16-bit prefix.
    if bits & mask_u128(16) == 0x2002_u128 << 112 {
        return is_public_v4(Ipv4Addr::from((bits >> 80) as u32));
    }
    // Only global unicast is public; this also refuses ::, ::1, fc00::/7, fe80::/10, ff00::/8.
    if bits & mask_u128(3) != 0x2000_u128 << 112 {
        return false;
    }
    const REFUSED: &[(u128, u8)] = &[
        (0x2001_u128 << 112, 23),     // 2001::/23 IETF assignments, Teredo
        (0x2001_0db8_u128 << 96, 32), // 2001:db8::/32 documentation
        (0x3fff_u128 << 112, 20),     // 3fff::/20 documentation
    ];
    !REFUSED.iter().any(|&(net, prefix)| bits & mask_u128(prefix) == net)
}

/// Where webhooks may go: the rule of this module, configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlPolicy {
    /// Dev mode: every address is allowed (the receiver usually runs on loopback).
    pub allow_private: bool,
    /// Dev mode: plain `http` URLs are allowed too.
    pub allow_http: bool,
    /// Blocks the operator allows although they are not public.
    pub allow_list: Vec<Cidr>,
}

impl UrlPolicy {
    /// The daemon's policy: `dev` allows everything (http and private addresses); otherwise
    /// https to public addresses and to the allow-listed CIDRs.
    pub fn new(dev: bool, allow_list: &[String]) -> Result<UrlPolicy, GuardError> {
        let allow_list = allow_list.iter().map(|c| parse_cidr(c)).collect::<Result<Vec<_>, _>>()?;
        Ok(UrlPolicy { allow_private: dev, allow_http: dev, allow_list })
    }

    /// Whether a connection to `addr` is allowed.
    pub fn permits(&self, addr: IpAddr) -> bool {
        self.allow_private || is_public(addr) || self.allow_list.iter().any(|cidr| cidr.contains(addr))
    }

    /// Checks what can be checked without DNS: the scheme, the presence of a host, and a
    /// host that is an IP literal. The fan-out calls it before every delivery, because IP
    /// literals bypass [`GuardedResolver`].
    pub fn check_target(&self, url: &Url) -> Result<(), GuardError> {
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            other => return Err(GuardError::Scheme { scheme: other.to_owned() }),
        }
        match url.host_str() {
            None | Some("") => Err(GuardError::NoHost),
            Some(host) => match literal_addr(host) {
                Some(addr) => self.check_addr(host, addr),
                None => Ok(()),
            },
        }
    }

    fn check_addr(&self, host: &str, addr: IpAddr) -> Result<(), GuardError> {
        if self.permits(addr) { Ok(()) } else { Err(GuardError::Forbidden { host: host.to_owned(), addr }) }
    }

    /// Registration-time validation: parses the URL, checks it with
    /// [`check_target`](Self::check_target), and resolves a host name to check that
    /// *every* address it has now is allowed (stricter than connect time, which only
    /// drops the forbidden ones).
    ///
    /// The lookup blocks the calling thread (it is the system resolver's
    /// `getaddrinfo`); from async code prefer [`validate_async`](Self::validate_async). In
    /// dev mode nothing is resolved: there is nothing to refuse.
    pub fn validate(&self, url: &str) -> Result<Url, GuardError> {
        let (url, name) = self.parse_and_check(url)?;
        if let Some((name, port)) = name {
            let addrs = (name.as_str(), port)
                .to_socket_addrs()
                .map_err(|source| GuardError::Resolve { host: name.clone(), source })?;
            self.check_all(&name, addrs)?;
        }
        Ok(url)
    }

    /// [`validate`](Self::validate) with tokio's resolver, which does not block the runtime.
    pub async fn validate_async(&self, url: &str) -> Result<Url, GuardError> {
        let (url, name) = self.parse_and_check(url)?;
        if let Some((name, port)) = name {
            let addrs = tokio::net::lookup_host((name.as_str(), port))
                .await
                .map_err(|source| GuardError::Resolve { host: name.clone(), source })?;
            self.check_all(&name, addrs)?;
        }
        Ok(url)
    }

    /// The parsed URL, and the name still to resolve (none for literals and in dev mode).
    fn parse_and_check(&self, text: &str) -> Result<(Url, Option<(String, u16)>), GuardError> {
        let url = Url::parse(text.trim()).map_err(GuardError::InvalidUrl)?;
        self.check_target(&url)?;
        let name = match url.host_str() {
            Some(host) if !self.allow_private && literal_addr(host).is_none() => {
                Some((host.to_owned(), url.port_or_known_default().unwrap_or(443)))
            }
            _ => None,
        };
        Ok((url, name))
    }

    fn check_all(&self, host: &str, addrs: impl Iterator<Item = SocketAddr>) -> Result<(), GuardError> {
        let mut any = false;
        for addr in addrs {
            any = true;
            self.check_addr(host, addr.ip())?;
        }
        if any { Ok(()) } else { Err(GuardError::NoAddress { host: host.to_owned() }) }
    }
}

/// The address of a URL host that is an IP literal. The URL parser has already normalized
/// every IPv4 spelling (`127.1`, `0x7f000001`, `2130706433`) to dotted decimal and writes
/// IPv6 in brackets, so this catches every literal the HTTP client would connect to
/// without a lookup.
fn literal_addr(host: &str) -> Option<IpAddr> {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => host.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

/// A reqwest resolver that resolves with the system resolver (through tokio) and keeps
/// only the addresses the policy permits; a name left with none fails to connect with a
/// [`GuardError`] as the cause.
#[derive(Debug, Clone)]
pub(crate) struct GuardedResolver {
    policy: Arc<UrlPolicy>,
}

impl GuardedResolver {
    /// A resolver enforcing `policy`.
    pub(crate) fn new(policy: Arc<UrlPolicy>) -> GuardedResolver {
        GuardedResolver { policy }
    }

    /// Resolves `host` and filters its addresses (the resolver without reqwest's types).
    pub(crate) async fn resolve_host(&self, host: &str) -> Result<Vec<SocketAddr>, GuardError> {
        let found = tokio::net::lookup_host((host, 0))
            .await
            .map_err(|source| GuardError::Resolve { host: host.to_owned(), source })?;
        let mut refused = None;
        let allowed: Vec<SocketAddr> = found
            .filter(|addr| {
                let ok = self.policy.permits(addr.ip());
                if !ok && refused.is_none() {
                    refused = Some(addr.ip());
                }
                ok
            })
            .collect();
        match (allowed.is_empty(), refused) {
            (false, _) => Ok(allowed),
            (true, Some(addr)) => Err(GuardError::Forbidden { host: host.to_owned(), addr }),
            (true, None) => Err(GuardError::NoAddress { host: host.to_owned() }),
        }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let resolver = self.clone();
        Box::pin(async move {
            let addrs = resolver.resolve_host(name.as_str()).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    #[test]
    fn classifies_ipv4() {
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "169.253.0.1",
        ] {
            assert!(is_public(ip(public)), "{public} is public");
        }
        for private in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "127.255.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(!is_public(ip(private)), "{private} is not public");
        }
    }

    #[test]
    fn classifies_ipv6_and_embedded_ipv4() {
        for public in [
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "2a00:1450::1",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(ip(public)), "{public} is public");
        }
        for private in [
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "ff0e::1",
            "2001:db8::1",
            "2001::1",
            "2001:0:4136:e378::1",
            "3fff::1",
            "100::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:a00:1::",
            "4000::1",
        ] {
            assert!(!is_public(ip(private)), "{private} is not public");
        }
    }

    #[test]
    fn parses_cidrs_and_matches_mapped_addresses() {
        let net = parse_cidr("10.1.2.3/8").expect("cidr");
        assert_eq!(net.to_string(), "10.0.0.0/8");
        assert!(net.contains(ip("10.200.0.1")));
        assert!(net.contains(ip("::ffff:10.200.0.1")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(!net.contains(ip("fd00::1")));
        let one = parse_cidr("192.168.1.10").expect("bare address");
        assert_eq!(one.prefix(), 32);
        assert!(one.contains(ip("192.168.1.10")) && !one.contains(ip("192.168.1.11")));
        let v6 = parse_cidr("fd00::/8").expect("v6");
        assert!(v6.contains(ip("fdab::1")) && !v6.contains(ip("fe80::1")) && !v6.contains(ip("10.0.0.1")));
        assert!(parse_cidr("0.0.0.0/0").expect("all").contains(ip("127.0.0.1")));
        assert!(parse_cidr("::/0").expect("all v6").contains(ip("::1")));
        for bad in ["", "10.0.0.0/33", "fd00::/129", "10.0.0/8", "10.0.0.0/x", "host/8"] {
            assert!(matches!(parse_cidr(bad), Err(GuardError::InvalidCidr { .. })), "{bad:?}");
        }
    }

    #[test]
    fn policy_permits_allow_listed_and_dev_addresses() {
        let strict = UrlPolicy::new(false, &[]).expect("policy");
        assert!(strict.permits(ip("8.8.8.8")) && !strict.permits(ip("10.0.0.1")));
        let listed = UrlPolicy::new(false, &["10.0.0.0/8".into(), "fd00::/8".into()]).expect("policy");
        assert!(
            listed.permits(ip("10.0.0.1"))
                && listed.permits(ip("fd00::1"))
                && !listed.permits(ip("127.0.0.1"))
        );
        let dev = UrlPolicy::new(true, &[]).expect("policy");
        assert!(dev.permits(ip("127.0.0.1")) && dev.permits(ip("::1")));
        assert!(matches!(UrlPolicy::new(false, &["nope".into()]), Err(GuardError::InvalidCidr { .. })));
    }

    #[test]
    fn validates_urls_without_dns() {
        let strict = UrlPolicy::new(false, &[]).expect("policy");
        let listed = UrlPolicy::new(false, &["127.0.0.0/8".into()]).expect("policy");
        let dev = UrlPolicy::new(true, &[]).expect("policy");
        assert!(strict.validate("https://8.8.8.8/hook").is_ok());
        assert!(strict.validate("https://[2606:4700:4700::1111]:8443/hook").is_ok());
        assert!(matches!(strict.validate("http://8.8.8.8/hook"), Err(GuardError::Scheme { .. })));
        assert!(matches!(dev.validate("ftp://8.8.8.8/hook"), Err(GuardError::Scheme { .. })));
        assert!(matches!(strict.validate("not a url"), Err(GuardError::InvalidUrl(_))));
        assert!(matches!(dev.validate("mailto:a@b.c"), Err(GuardError::Scheme { .. })));
        for forbidden in [
            "https://127.0.0.1/hook",
            "https://127.1/hook",
            "https://2130706433/hook",
            "https://0x7f000001/hook",
            "https://10.0.0.5/admin",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/hook",
            "https://[::ffff:127.0.0.1]/hook",
            "https://[fd00::1]/hook",
            "https://0.0.0.0/hook",
        ] {
            assert!(matches!(strict.validate(forbidden), Err(GuardError::Forbidden { .. })), "{forbidden}");
        }
        assert!(listed.validate("https://127.0.0.1:9000/hook").is_ok());
        assert!(matches!(listed.validate("https://[::1]/hook"), Err(GuardError::Forbidden { .. })));
        assert!(dev.validate("http://127.0.0.1:9000/hook").is_ok());
        assert!(dev.validate("https://localhost:9000/hook").is_ok(), "dev mode resolves nothing");
    }

    #[test]
    fn validation_resolves_names_and_refuses_private_answers() {
        let strict = UrlPolicy::new(false, &[]).expect("policy");
        // `localhost` resolves to loopback without any network.
        assert!(matches!(strict.validate("https://localhost/hook"), Err(GuardError::Forbidden { .. })));
        let listed = UrlPolicy::new(false, &["127.0.0.0/8".into(), "::1/128".into()]).expect("policy");
        assert!(listed.validate("https://localhost:8443/hook").is_ok());
    }

    #[test]
    fn an_origin_keeps_scheme_host_and_port_and_nothing_else() {
        let cases = [
            ("https://alice:s3cret@hooks.example/p/s3cret?token=s3cret#s3cret", "https://hooks.example:443"),
            ("https://hooks.example:8443/hook?key=s3cret", "https://hooks.example:8443"),
            ("http://user@127.0.0.1:9000/hook", "http://127.0.0.1:9000"),
            ("https://[::1]:9000/s3cret", "https://[::1]:9000"),
            ("https://:s3cret@[fd00::1]/", "https://[fd00::1]:443"),
            ("data:text/plain,s3cret", "data:"),
        ];
        for (url, expected) in cases {
            let parsed = Url::parse(url).expect("a URL");
            let shown = origin(&parsed).to_string();
            assert_eq!(shown, expected, "{url}");
            assert!(!shown.contains("s3cret") && !shown.contains('@'), "{url} shows {shown}");
        }
    }

    /// reqwest's errors name the URL they were for (query and userinfo included), which is
    /// why the fan-out logs `without_url()` and an [`origin`]: this checks that reqwest still
    /// behaves so, and that the stripped error and every cause in its chain do not.
    #[tokio::test]
    async fn a_reqwest_error_without_its_url_names_no_part_of_it() {
        // A port nothing listens on: the connection is refused at once.
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let url = format!("http://alice:s3cret@127.0.0.1:{port}/hook/s3cret?token=s3cret");
        let tls = rustls::ClientConfig::builder_with_provider(crate::credentials::crypto_provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let client =
            reqwest::Client::builder().tls_backend_preconfigured(tls).no_proxy().build().expect("client");
        let error = client.post(&url).send().await.expect_err("nothing listens there");
        assert!(error.to_string().contains("token=s3cret"), "reqwest names the URL: {error}");
        let error = error.without_url();
        let mut chain = vec![error.to_string()];
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            chain.push(cause.to_string());
            source = cause.source();
        }
        assert!(chain.len() > 1, "the reason is still there: {chain:?}");
        for text in &chain {
            assert!(!text.contains("s3cret") && !text.contains("alice"), "{chain:?}");
        }
    }

    #[tokio::test]
    async fn the_resolver_drops_forbidden_addresses() {
        let strict = GuardedResolver::new(Arc::new(UrlPolicy::new(false, &[]).expect("policy")));
        assert!(matches!(strict.resolve_host("localhost").await, Err(GuardError::Forbidden { .. })));
        let listed =
            GuardedResolver::new(Arc::new(UrlPolicy::new(false, &["127.0.0.0/8".into()]).expect("policy")));
        let addrs = listed.resolve_host("localhost").await.expect("resolves");
        assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback() && a.is_ipv4()));
        let strict = UrlPolicy::new(false, &[]).expect("policy");
        assert!(strict.validate_async("https://localhost/hook").await.is_err());
    }
}
