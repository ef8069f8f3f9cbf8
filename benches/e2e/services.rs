//! The harness's private services: a vhost, a PostgreSQL database migrated by the release
//! binary, the daemon as a child process, and what /proc says about it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio_postgres::Client;

/// A private vhost and database, removed on drop.
pub struct Private {
    pub vhost: String,
    pub db: String,
}

fn psql(db: &str, sql: &str) {
    let ok = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-q",
            "-d",
            db,
            "-c",
            sql,
        ])
        .stdout(Stdio::null())
        .status()
        .expect("psql");
    assert!(ok.success(), "psql {sql}");
}

impl Private {
    /// Create the vhost and the database, then migrate it with the daemon's binary.
    pub fn create() -> Private {
        let id = std::process::id();
        let p = Private {
            vhost: format!("cdc-e2e-{id}"),
            db: format!("cdc_e2e_{id}"),
        };
        crate::process::rabbitmqctl(&["add_vhost", &p.vhost]);
        crate::process::rabbitmqctl(&[
            "set_permissions",
            "-p",
            &p.vhost,
            "guest",
            ".*",
            ".*",
            ".*",
        ]);
        psql("postgres", &format!("CREATE DATABASE \"{}\"", p.db));
        let ok = daemon_cmd(&p, "")
            .args(["migrate", "--pipeline", "pipeline/paving.toml"])
            .stdout(Stdio::null())
            .status()
            .expect("bowmark-cdc migrate");
        assert!(ok.success(), "bowmark-cdc migrate");
        p
    }

    pub fn amqp_uri(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.vhost)
    }

    pub async fn pg(&self) -> Client {
        let (c, conn) = tokio_postgres::connect(
            &format!("host=127.0.0.1 user=postgres dbname={}", self.db),
            tokio_postgres::NoTls,
        )
        .await
        .expect("connect to PostgreSQL");
        tokio::spawn(conn);
        c
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        crate::process::rabbitmqctl(&["delete_vhost", &self.vhost]);
        psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.db),
        );
    }
}

fn daemon_cmd(p: &Private, mongo_uri: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bowmark-cdc"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("POSTGRES_HOST", "127.0.0.1")
        .env("POSTGRES_USER", "postgres")
        .env("POSTGRES_DB", &p.db)
        .env("RABBITMQ_VHOST", &p.vhost)
        .env("MONGO_URI", mongo_uri)
        .env("CDC_HTTP_LISTEN", "127.0.0.1:0")
        // (as the image sets them: see the Dockerfile)
        .env("MALLOC_MMAP_THRESHOLD_", "131072")
        .env("MALLOC_TRIM_THRESHOLD_", "131072")
        .env(
            "RUST_LOG",
            std::env::var("CDC_E2E_DAEMON_LOG").unwrap_or_else(|_| "warn".into()),
        );
    c
}

/// The daemon's log (warnings: the values cut to their column), appended to under target/.
pub fn log_file() -> Stdio {
    let path = format!("{}/e2e-daemon.log", target_dir());
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_or(Stdio::inherit(), Stdio::from)
}

/// `target/`, or `CARGO_TARGET_DIR`.
pub fn target_dir() -> String {
    std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| format!("{}/target", env!("CARGO_MANIFEST_DIR")))
}

/// The pipeline file the daemon runs: `pipeline/paving.toml`, or `CDC_E2E_PIPELINE` (a copy
/// with other `[projector]` or `[capture]` settings, to compare them).
pub fn pipeline_file() -> String {
    std::env::var("CDC_E2E_PIPELINE").unwrap_or_else(|_| "pipeline/paving.toml".into())
}

/// `bowmark-cdc run --role all` as a separate process, stopped with SIGTERM on drop.
pub struct Daemon {
    child: Child,
}

impl Daemon {
    pub fn start(p: &Private, mongo_uri: &str) -> Daemon {
        let child = daemon_cmd(p, mongo_uri)
            .args(["run", "--role", "all", "--pipeline"])
            .arg(pipeline_file())
            .stdout(Stdio::null())
            .stderr(log_file())
            .spawn()
            .expect("spawn bowmark-cdc run");
        Daemon { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM and wait for the exit.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate();
        }
    }
}

/// CPU and memory of a process from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// utime + stime, µs.
    pub cpu_us: f64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

pub fn clk_tck() -> f64 {
    crate::process::clk_tck() as f64
}

pub fn sample(pid: u32, tck: f64) -> ProcSample {
    let s = crate::process::proc_stat(pid);
    ProcSample {
        cpu_us: s.cpu_ticks as f64 * 1e6 / tck,
        rss_kib: s.rss_kib,
        hwm_kib: s.hwm_kib,
    }
}

/// Wait until `check` holds, polling every `every`, for at most `limit`.
pub async fn wait_for<F, Fut>(limit: Duration, every: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end {
        if check().await {
            return true;
        }
        tokio::time::sleep(every).await;
    }
    false
}

/// The daemon's HTTP port (it listens on `127.0.0.1:0`): its listening socket in /proc.
pub fn http_port(pid: u32) -> Option<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let tcp = std::fs::read_to_string("/proc/net/tcp").ok()?;
    tcp.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // local_address(1) st(3) inode(9); 0A = LISTEN
        (f.get(3) == Some(&"0A") && f.get(9).is_some_and(|i| inodes.iter().any(|x| x == i)))
            .then(|| u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok())
            .flatten()
    })
}

/// Sums over labels of the daemon's `/metrics` series whose names end in `_sum`, `_count` or
/// `_total` (histograms and counters).
pub async fn scrape(port: u16) -> std::collections::BTreeMap<String, f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut out = std::collections::BTreeMap::new();
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return out;
    };
    let req = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let mut body = String::new();
    if s.write_all(req.as_bytes()).await.is_err() || s.read_to_string(&mut body).await.is_err() {
        return out;
    }
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        if ["_sum", "_count", "_total"]
            .iter()
            .any(|s| name.ends_with(s))
            && let Ok(v) = value.parse::<f64>()
        {
            *out.entry(name.to_string()).or_default() += v;
        }
    }
    out
}

/// CPU µs (utime+stime) of every live process, summed by command name (`postgres`,
/// `beam.smp`, `bowmark-cdc`, this harness with its in-process mongosim, …), and the machine's
/// busy and total µs from /proc/stat.
pub fn cpu_by_command(tck: f64) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        *out.entry(comm).or_default() += (t(11) + t(12)) * 1e6 / tck;
    }
    if let Some(cpu) = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().next().map(str::to_string))
    {
        let v: Vec<f64> = cpu
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let total: f64 = v.iter().sum();
        let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
        out.insert("(machine busy)".into(), (total - idle) * 1e6 / tck);
        out.insert("(machine total)".into(), total * 1e6 / tck);
    }
    out
}

/// Per command, the share of one core it used between two `cpu_by_command` readings, for the
/// commands above 2 %.
pub fn cpu_split(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
    secs: f64,
) -> serde_json::Value {
    let mut v: Vec<(String, f64)> = after
        .iter()
        .map(|(k, a)| {
            (
                k.clone(),
                (a - before.get(k).copied().unwrap_or(0.0)) / 1e6 / secs,
            )
        })
        .filter(|(k, c)| *c >= 0.02 && k != "(machine total)")
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    serde_json::Value::Object(
        v.into_iter()
            .map(|(k, c)| (k, serde_json::json!((c * 100.0).round() / 100.0)))
            .collect(),
    )
}
