//! The daemon's memory and CPU, from `/proc/PID` or, failing that, from `/metrics`.
//!
//! `/proc/PID/status` gives the resident set (`VmRSS`) and `/proc/PID/stat` the user and
//! system CPU time of all the process's threads together, in clock ticks. The tick is
//! `USER_HZ`, which Linux fixes at 100 on every architecture it exports to user space
//! (`sysconf(_SC_CLK_TCK)` reports the same), so no `libc` call is needed to read it.
//!
//! Two machine-wide readings put the daemon's figures in context, since the generator and
//! the daemon share the machine (and, here, other people's builds may too):
//! `/proc/stat` gives the CPU time of every process together ([`read_machine_cpu`]), and
//! `/proc/net/udp` and `/proc/net/udp6` give each UDP socket's receive-buffer drops
//! ([`udp_drops`]), which is where a QUIC handshake or a status ping is lost on loopback.
//!
//! Without a PID the tool asks the daemon's `/metrics` for the conventional Prometheus
//! process metrics (`process_resident_memory_bytes`, `process_cpu_seconds_total`); a daemon
//! that does not export them gets `null` in the report rather than a guess.

use std::time::Instant;

use serde::Serialize;

/// Linux's `USER_HZ`: the unit of the CPU times in `/proc/PID/stat`.
pub const USER_HZ: f64 = 100.0;

/// One reading of a process's resources.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    /// Resident set size, bytes.
    pub rss_bytes: u64,
    /// User plus system CPU time so far, seconds.
    pub cpu_seconds: f64,
    /// When it was taken.
    pub at: Instant,
}

impl ProcSample {
    /// Average CPU use between `self` and a later sample, as a percentage of one core.
    pub fn cpu_percent_until(&self, later: &ProcSample) -> Option<f64> {
        let wall = later.at.checked_duration_since(self.at)?.as_secs_f64();
        (wall > 0.0).then(|| ((later.cpu_seconds - self.cpu_seconds) / wall * 1_000.0).round() / 10.0)
    }
}

/// Where daemon figures come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `/proc/PID` (`--daemon-pid`).
    Proc,
    /// The daemon's `/metrics` process metrics.
    Metrics,
}

/// Reads `/proc/PID/status` and `/proc/PID/stat`.
pub fn read_proc(pid: u32) -> std::io::Result<ProcSample> {
    let at = Instant::now();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let rss_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| invalid("no VmRSS in /proc/PID/status"))?;
    Ok(ProcSample {
        rss_bytes: rss_kib * 1024,
        cpu_seconds: cpu_ticks(&stat).ok_or_else(|| invalid("bad /proc/PID/stat"))? as f64 / USER_HZ,
        at,
    })
}

/// `utime + stime` from a `/proc/PID/stat` (or `/proc/PID/task/TID/stat`) line. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted from the last `)`.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15 (1-based).
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// Reads the process metrics from Prometheus text, if both are there.
pub fn from_metrics(text: &str) -> Option<ProcSample> {
    let value = |name: &str| {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?;
            rest.strip_prefix(' ')?.trim().parse::<f64>().ok()
        })
    };
    let rss = value("process_resident_memory_bytes")?;
    let cpu = value("process_cpu_seconds_total")?;
    Some(ProcSample { rss_bytes: rss as u64, cpu_seconds: cpu, at: Instant::now() })
}

/// Samples the daemon by whichever means is available.
#[derive(Debug, Clone)]
pub struct DaemonProbe {
    pid: Option<u32>,
    metrics: Option<(reqwest::Client, String)>,
}

impl DaemonProbe {
    /// A probe reading `/proc/pid` when a PID is given, else `metrics_url` with `client`.
    pub fn new(pid: Option<u32>, client: reqwest::Client, metrics_url: String) -> DaemonProbe {
        DaemonProbe { pid, metrics: Some((client, metrics_url)) }
    }

    /// A probe for a process of this machine only.
    pub fn pid(pid: u32) -> DaemonProbe {
        DaemonProbe { pid: Some(pid), metrics: None }
    }

    /// One sample, and where it came from; `None` when neither source has the figures.
    pub async fn sample(&self) -> Option<(ProcSample, Source)> {
        if let Some(pid) = self.pid {
            return read_proc(pid).ok().map(|sample| (sample, Source::Proc));
        }
        let (client, url) = self.metrics.as_ref()?;
        let text = client.get(url).send().await.ok()?.text().await.ok()?;
        from_metrics(&text).map(|sample| (sample, Source::Metrics))
    }
}

/// CPU time of the whole machine, from the first line of `/proc/stat`.
#[derive(Debug, Clone, Copy)]
pub struct MachineCpu {
    /// Time spent not idle (everything but `idle` and `iowait`), summed over cores, seconds.
    pub busy_seconds: f64,
    /// When it was taken.
    pub at: Instant,
}

impl MachineCpu {
    /// Average machine CPU use until a later reading, as a percentage of one core (so a
    /// fully busy 2-core machine reads 200).
    pub fn cpu_percent_until(&self, later: &MachineCpu) -> Option<f64> {
        let wall = later.at.checked_duration_since(self.at)?.as_secs_f64();
        (wall > 0.0).then(|| ((later.busy_seconds - self.busy_seconds) / wall * 1_000.0).round() / 10.0)
    }
}

/// Reads `/proc/stat`.
pub fn read_machine_cpu() -> std::io::Result<MachineCpu> {
    let at = Instant::now();
    let stat = std::fs::read_to_string("/proc/stat")?;
    machine_busy_ticks(&stat)
        .map(|ticks| MachineCpu { busy_seconds: ticks as f64 / USER_HZ, at })
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad /proc/stat"))
}

/// Busy ticks from the aggregate `cpu` line: user, nice, system, irq, softirq, steal (guest
/// time is already inside user and nice).
fn machine_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    Some(field(0) + field(1) + field(2) + field(5) + field(6) + field(7))
}

/// Receive-buffer drops so far, summed over the UDP sockets (IPv4 and IPv6) bound to any of
/// `ports`; `None` when `/proc/net/udp` cannot be read. The counter lives as long as the
/// socket, so callers subtract two readings.
pub fn udp_drops(ports: &[u16]) -> Option<u64> {
    let v4 = std::fs::read_to_string("/proc/net/udp").ok()?;
    let v6 = std::fs::read_to_string("/proc/net/udp6").unwrap_or_default();
    Some(socket_drops(&v4, ports) + socket_drops(&v6, ports))
}

/// Sums the last column (`drops`) of the lines whose local port is in `ports`.
fn socket_drops(table: &str, ports: &[u16]) -> u64 {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            let drops: u64 = fields.last()?.parse().ok()?;
            ports.contains(&port).then_some(drops)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let sample = read_proc(std::process::id()).expect("own /proc entry");
        assert!(sample.rss_bytes > 0);
    }

    #[test]
    fn stat_fields_count_from_the_last_parenthesis() {
        let stat = "42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(cpu_ticks(stat), Some(300));
    }

    #[test]
    fn machine_busy_skips_idle_and_iowait() {
        let stat = "cpu  100 5 50 9000 30 2 3 1 0 0\ncpu0 50 2 25 4500 15 1 1 0 0 0\n";
        assert_eq!(machine_busy_ticks(stat), Some(100 + 5 + 50 + 2 + 3 + 1));
        assert!(read_machine_cpu().is_ok());
    }

    #[test]
    fn drops_are_summed_per_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n \
             1: 0100007F:3861 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0000000000000000 48\n \
             2: 0100007F:A573 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 2 2 0000000000000000 7\n";
        assert_eq!(socket_drops(table, &[0x3861]), 48);
        assert_eq!(socket_drops(table, &[0x3861, 0xA573]), 55);
        assert_eq!(socket_drops(table, &[1]), 0);
    }

    #[test]
    fn metrics_need_both_process_metrics() {
        let text = "# HELP x\nprocess_resident_memory_bytes 1048576\nprocess_cpu_seconds_total 2.5\n";
        let sample = from_metrics(text).expect("both present");
        assert_eq!((sample.rss_bytes, sample.cpu_seconds), (1_048_576, 2.5));
        assert!(from_metrics("presence_sessions 3\n").is_none());
    }
}
