//! The daemon's memory and CPU, from `/proc/PID` or, failing that, from `/metrics`.
//!
//! `/proc/PID/status` gives the resident set (`VmRSS`) and `/proc/PID/stat` the user and
//! system CPU time of all the process's threads together, in clock ticks. The tick is
//! `USER_HZ`, which Linux fixes at 100 on every architecture it exports to user space
//! (`sysconf(_SC_CLK_TCK)` reports the same), so no `libc` call is needed to read it.
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

/// `utime + stime` from a `/proc/PID/stat` line. The command name (field 2) may hold spaces
/// and parentheses, so fields are counted from the last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
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
    fn metrics_need_both_process_metrics() {
        let text = "# HELP x\nprocess_resident_memory_bytes 1048576\nprocess_cpu_seconds_total 2.5\n";
        let sample = from_metrics(text).expect("both present");
        assert_eq!((sample.rss_bytes, sample.cpu_seconds), (1_048_576, 2.5));
        assert!(from_metrics("presence_sessions 3\n").is_none());
    }
}
