//! A real network path for tests: three network namespaces joined by veth pairs.
//!
//! ```text
//!  device ns                router ns                          server ns
//!  d0 10.77.1.2 ──veth── r0 10.77.1.1 │ r1 10.77.2.1 ──veth── s0 10.77.2.2
//!                        (forwarding, nftables masquerade out of r1,
//!                         UDP conntrack timeouts, netem or nft loss)
//! ```
//!
//! Processes run inside a namespace with `ip netns exec`; the test's own threads move into
//! one with [`Net::spawn_in`] (setns on that thread only), so an in-test webhook receiver or
//! device client gets its sockets there. Names carry the test process's id, so parallel
//! tests and parallel runs never collide; [`Drop`] deletes the namespaces (also when a test
//! panics), and [`Net::create`] first deletes those left by runs that were killed.
//!
//! Where namespaces cannot be made (not root, no `ip`, no netfilter, no netem), the
//! constructors say why and the test prints a `SKIPPED` line on the terminal (past the test
//! harness's capture) and returns.

#![allow(dead_code, unreachable_pub)]

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::thread::JoinHandle;

/// The device's address inside its namespace (behind the NAT).
pub const DEVICE_ADDR: &str = "10.77.1.2";
/// The server's address: what the device connects to.
pub const SERVER_ADDR: &str = "10.77.2.2";
/// The router's address on the server's side: the NAT's public address.
pub const NAT_ADDR: &str = "10.77.2.1";

/// Prefix of every namespace these tests make.
const PREFIX: &str = "pnt-";

/// Prints why a test is skipped, to the terminal even while the harness captures output.
pub fn skip(test: &str, reason: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

/// Runs a command; its stderr (or the spawn error) when it fails.
pub fn run(program: &str, args: &[&str]) -> Result<Output, String> {
    run_with_input(program, args, None)
}

fn run_with_input(program: &str, args: &[&str], input: Option<&str>) -> Result<Output, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input.as_bytes()).map_err(|e| format!("{program}: {e}"))?;
    }
    let output = child.wait_with_output().map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// How loss and delay were put on the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impairment {
    /// netem on both router interfaces: loss and delay each way.
    Netem,
    /// The kernel has no `sch_netem`: loss only, dropped at random by an nftables rule.
    NftLoss,
}

/// Three namespaces (device, router, server) joined by veth pairs; deleted on drop.
pub struct Net {
    /// The device's namespace.
    pub device: String,
    /// The router's namespace (NAT, loss, delay).
    pub router: String,
    /// The server's namespace.
    pub server: String,
    created: Vec<String>,
}

impl Net {
    /// Builds the topology, or says why it cannot be built here.
    pub fn create(tag: &str) -> Result<Net, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("network namespaces need root".into());
        }
        run("ip", &["-V"]).map_err(|e| format!("no `ip` (iproute2): {e}"))?;
        remove_stale();
        let name = |role: &str| format!("{PREFIX}{}-{tag}-{role}", std::process::id());
        let mut net =
            Net { device: name("dev"), router: name("rtr"), server: name("srv"), created: Vec::new() };
        for ns in [net.device.clone(), net.router.clone(), net.server.clone()] {
            run("ip", &["netns", "add", &ns]).map_err(|e| format!("cannot make a network namespace: {e}"))?;
            net.created.push(ns.clone());
            net.ip(&ns, &["link", "set", "lo", "up"])?;
        }
        let (dev, rtr, srv) = (net.device.clone(), net.router.clone(), net.server.clone());
        // Created inside the namespaces, so no name ever appears in the host's namespace.
        net.ip(&rtr, &["link", "add", "r0", "type", "veth", "peer", "name", "d0", "netns", &dev])?;
        net.ip(&rtr, &["link", "add", "r1", "type", "veth", "peer", "name", "s0", "netns", &srv])?;
        for (ns, link, addr) in [
            (&dev, "d0", format!("{DEVICE_ADDR}/24")),
            (&rtr, "r0", "10.77.1.1/24".to_owned()),
            (&rtr, "r1", format!("{NAT_ADDR}/24")),
            (&srv, "s0", format!("{SERVER_ADDR}/24")),
        ] {
            net.ip(ns, &["addr", "add", &addr, "dev", link])?;
            net.ip(ns, &["link", "set", link, "up"])?;
        }
        net.ip(&dev, &["route", "add", "default", "via", "10.77.1.1"])?;
        net.sysctl(&rtr, "net/ipv4/ip_forward", 1)?;
        Ok(net)
    }

    /// New namespaces with the device behind a masquerading NAT whose UDP bindings expire
    /// after `timeout_secs` of silence.
    pub fn behind_nat(name: &str, timeout_secs: u32) -> Result<Net, String> {
        let net = Net::create(name)?;
        net.masquerade(timeout_secs)?;
        Ok(net)
    }

    /// Masquerades the device's traffic out of the router (a new random port for every new
    /// binding, as carrier-grade NATs do) and drops idle UDP bindings after `timeout_secs`.
    pub fn masquerade(&self, timeout_secs: u32) -> Result<(), String> {
        run("nft", &["--version"]).map_err(|e| format!("no `nft` (nftables): {e}"))?;
        // The counter sees every packet the device sends through the router.
        let rules = "table ip presence_nat {\n\
             chain postrouting { type nat hook postrouting priority srcnat; policy accept;\n\
               oifname \"r1\" masquerade random,fully-random; }\n\
             chain forward { type filter hook forward priority -10; policy accept;\n\
               iifname \"r0\" counter; }\n\
             }\n";
        let args = ["netns", "exec", &self.router, "nft", "-f", "-"];
        run_with_input("ip", &args, Some(rules)).map_err(|e| format!("no netfilter NAT here: {e}"))?;
        self.set_nat_timeout(timeout_secs)
    }

    /// Sets the router's UDP binding timeout (for new and refreshed bindings).
    pub fn set_nat_timeout(&self, timeout_secs: u32) -> Result<(), String> {
        for key in ["nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream"] {
            self.sysctl(&self.router, &format!("net/netfilter/{key}"), timeout_secs)?;
        }
        Ok(())
    }

    /// Loses `loss_percent` of the packets each way and delays each by `delay_ms` (with a
    /// tenth of it as jitter): netem on both router interfaces, or, where the kernel has no
    /// netem, random drops by nftables and no delay.
    pub fn impair(&self, loss_percent: u32, delay_ms: u32) -> Result<Impairment, String> {
        let netem = |link: &str| {
            let (loss, delay, jitter) =
                (format!("{loss_percent}%"), format!("{delay_ms}ms"), format!("{}ms", delay_ms / 10));
            self.exec(
                &self.router,
                "tc",
                &["qdisc", "add", "dev", link, "root", "netem", "loss", &loss, "delay", &delay, &jitter],
            )
        };
        match netem("r0") {
            Ok(()) => {
                netem("r1")?;
                Ok(Impairment::Netem)
            }
            Err(netem_error) => {
                let rules = format!(
                    "table inet presence_loss {{\n\
                       chain forward {{ type filter hook forward priority 0; policy accept;\n\
                         numgen random mod 100 < {loss_percent} counter drop; }}\n\
                     }}\n"
                );
                let args = ["netns", "exec", &self.router, "nft", "-f", "-"];
                run_with_input("ip", &args, Some(&rules))
                    .map_err(|e| format!("neither netem ({netem_error}) nor nftables ({e})"))?;
                Ok(Impairment::NftLoss)
            }
        }
    }

    /// Packets the device has sent through the router so far (QUIC ACKs included): what a
    /// radio would have woken up for.
    pub fn device_packets(&self) -> u64 {
        run("ip", &["netns", "exec", &self.router, "nft", "list", "chain", "ip", "presence_nat", "forward"])
            .map(|out| numbers_after(&String::from_utf8_lossy(&out.stdout), "packets"))
            .unwrap_or(0)
    }

    /// Packets the impairment dropped so far (netem's or the nftables rule's count), to
    /// show that the loss really happened.
    pub fn dropped(&self, impairment: Impairment) -> u64 {
        match impairment {
            Impairment::Netem => ["r0", "r1"]
                .iter()
                .filter_map(|link| {
                    run("ip", &["netns", "exec", &self.router, "tc", "-s", "qdisc", "show", "dev", link]).ok()
                })
                .map(|out| numbers_after(&String::from_utf8_lossy(&out.stdout), "dropped"))
                .sum(),
            Impairment::NftLoss => {
                run("ip", &["netns", "exec", &self.router, "nft", "list", "table", "inet", "presence_loss"])
                    .map(|out| numbers_after(&String::from_utf8_lossy(&out.stdout), "packets"))
                    .unwrap_or(0)
            }
        }
    }

    /// Runs `f` on a new thread inside namespace `ns`: sockets it opens live there.
    pub fn spawn_in<T: Send + 'static>(
        &self,
        ns: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&file),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
    }

    /// Writes a network sysctl of namespace `ns` (`/proc/sys/net` shows the namespace of the
    /// thread that opens it), without needing the `sysctl` tool.
    fn sysctl(&self, ns: &str, key: &str, value: u32) -> Result<(), String> {
        let path = format!("/proc/sys/{key}");
        self.spawn_in(ns, move || {
            std::fs::write(&path, value.to_string()).map_err(|e| format!("{path}: {e}"))
        })
        .join()
        .map_err(|_| "sysctl thread panicked".to_owned())?
    }

    /// A command that runs `program` inside namespace `ns`.
    pub fn command(&self, ns: &str, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns, program]);
        command
    }

    fn exec(&self, ns: &str, program: &str, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["netns", "exec", ns, program];
        all.extend_from_slice(args);
        run("ip", &all).map(drop)
    }

    fn ip(&self, ns: &str, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["-n", ns];
        all.extend_from_slice(args);
        run("ip", &all).map(drop)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.created.drain(..).rev() {
            if let Err(error) = run("ip", &["netns", "del", &ns]) {
                let _ = writeln!(std::io::stderr(), "could not delete namespace {ns}: {error}");
            }
        }
    }
}

/// The sum of the numbers that follow `word` in `text` (`packets 12`, `(dropped 3,`).
fn numbers_after(text: &str, word: &str) -> u64 {
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0].trim_start_matches('(') == word)
        .filter_map(|w| w[1].trim_end_matches(',').parse::<u64>().ok())
        .sum()
}

/// Deletes the namespaces of test processes that no longer run (killed before their drop).
fn remove_stale() {
    let Ok(list) = run("ip", &["netns", "list"]) else { return };
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|rest| rest.split('-').next()) else { continue };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}
