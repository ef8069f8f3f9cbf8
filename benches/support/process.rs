//! What the benchmarks read of a process from outside and how they set up the broker: shared by
//! `capture_load` and `e2e` (included with `#[path]`).

#![allow(dead_code)]

use std::process::{Command, Stdio};

/// Run `rabbitmqctl ARGS`; panics when it fails.
pub fn rabbitmqctl(args: &[&str]) {
    let ok = Command::new("rabbitmqctl")
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("rabbitmqctl");
    assert!(ok.success(), "rabbitmqctl {args:?}");
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 when it cannot tell).
pub fn clk_tck() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// A process's CPU time so far and its memory, from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStat {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

/// Read `/proc/PID/stat` and `/proc/PID/status` (zeros for what cannot be read).
pub fn proc_stat(pid: u32) -> ProcStat {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // after the command: state(0) … utime(11) stime(12)
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    ProcStat {
        cpu_ticks: ticks(11) + ticks(12),
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
    }
}
