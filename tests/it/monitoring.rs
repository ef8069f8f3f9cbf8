//! The monitoring as an operator runs it: a local Prometheus (Debian's `prometheus` package,
//! its own config, port and storage in a temporary folder) loads `k8s/monitoring/rules.yaml`
//! and scrapes a running daemon and a running backfill; every dashboard panel's and every
//! alert's expression is then evaluated through its HTTP API.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bowmark_cdc::project::PROJECT_LOCK_KEY;
use bson::doc;
use serde_json::Value;

use crate::backfill::temp_pipeline;
use crate::backfill::workload::{Shape, Workload};
use crate::support::mongo::TestMongo;
use crate::support::{self, StderrTail, TestVhost, eventually};

const WAIT: Duration = Duration::from_secs(60);
/// Grafana's `$__rate_interval` at a 1 s scrape interval.
const RATE_INTERVAL: &str = "30s";

/// A Prometheus server of this test: scrapes the targets written to its file-SD files every
/// second, evaluates the alert rules every second.
struct LocalPrometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl LocalPrometheus {
    /// `None` (with the reason printed) when Prometheus is not installed.
    fn start(jobs: &[&str]) -> Option<LocalPrometheus> {
        if Command::new("prometheus")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!(
                "SKIP monitoring: the prometheus server is not installed (scripts/services.sh \
                 installs it; apt-get install prometheus)"
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let rules = support::project_root().join("k8s/monitoring/rules.yaml");
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\nscrape_configs:\n",
            rules.display()
        );
        for job in jobs {
            let file = dir.path().join(format!("{job}.json"));
            std::fs::write(&file, "[]").expect("write targets");
            config.push_str(&format!(
                "  - job_name: {job}\n    file_sd_configs:\n      - files: [{}]\n        \
                 refresh_interval: 1s\n",
                file.display()
            ));
        }
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write config");
        let addr = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn prometheus");
        Some(LocalPrometheus { child, addr, dir })
    }

    async fn wait_ready(&self) {
        let addr = self.addr;
        eventually("prometheus ready", WAIT, || async move {
            let ok = tokio::net::TcpStream::connect(addr).await.is_ok()
                && support::http_get(addr, "/-/ready").await.0 == 200;
            ok.then_some(())
        })
        .await;
    }

    /// Scrape `target` as job `job` (file-based service discovery, picked up within seconds).
    fn scrape(&self, job: &str, target: SocketAddr) {
        let file = self.dir.path().join(format!("{job}.json"));
        let tmp = self.dir.path().join(format!("{job}.json.tmp"));
        std::fs::write(&tmp, format!("[{{\"targets\": [\"{target}\"]}}]")).expect("targets");
        std::fs::rename(&tmp, &file).expect("replace targets");
    }

    /// `GET /api/v1/<path>` → the `data` of a successful answer.
    async fn api(&self, path: &str) -> Value {
        let (code, body) = support::http_get(self.addr, &format!("/api/v1/{path}")).await;
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("prometheus answered {code} {body}: {e}"));
        assert_eq!(v["status"], "success", "{path}: {body}");
        v["data"].clone()
    }

    /// The instant vector (or scalar) of `expr` at Unix time `at`.
    async fn query(&self, expr: &str, at: f64) -> Vec<Value> {
        let q: String = url::form_urlencoded::byte_serialize(expr.as_bytes()).collect();
        let data = self.api(&format!("query?query={q}&time={at:.3}")).await;
        match data["resultType"].as_str() {
            Some("vector") | Some("matrix") => {
                data["result"].as_array().cloned().unwrap_or_default()
            }
            _ => vec![data["result"].clone()],
        }
    }
}

impl Drop for LocalPrometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// An alert expression that returns a sample wherever its series exist: every comparison
/// becomes a `bool` comparison (outside label matchers and strings), so a healthy pipeline
/// still answers.
fn returning_data(expr: &str) -> String {
    let mut out = String::new();
    let (mut braces, mut quoted) = (0usize, false);
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        out.push(c);
        match c {
            '"' => quoted = !quoted,
            '{' if !quoted => braces += 1,
            '}' if !quoted => braces = braces.saturating_sub(1),
            '=' | '!' | '>' | '<' if !quoted && braces == 0 => {
                let two = chars.get(i + 1) == Some(&'=');
                if (c == '=' || c == '!') && !two {
                    i += 1;
                    continue;
                }
                if two {
                    out.push('=');
                    i += 1;
                }
                let rest: String = chars[i + 1..].iter().collect();
                if !rest.trim_start().starts_with("bool") {
                    out.push_str(" bool");
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Every query of the dashboard: (panel title, expression with Grafana's variables replaced).
fn dashboard_queries() -> Vec<(String, String)> {
    let path = support::project_root().join("k8s/monitoring/dashboard.json");
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard.json"))
            .expect("dashboard json");
    let mut out = Vec::new();
    let mut stack: Vec<Value> = dash["panels"].as_array().cloned().unwrap_or_default();
    while let Some(p) = stack.pop() {
        stack.extend(p["panels"].as_array().cloned().unwrap_or_default());
        for t in p["targets"].as_array().cloned().unwrap_or_default() {
            let expr = t["expr"].as_str().unwrap_or_default();
            let expr = expr
                .replace("$__rate_interval", RATE_INTERVAL)
                .replace("$__interval", RATE_INTERVAL)
                .replace("$pipeline", "paving");
            out.push((p["title"].as_str().unwrap_or_default().to_string(), expr));
        }
    }
    assert!(out.len() > 20, "dashboard queries: {out:?}");
    out
}

/// Given a daemon (capture and projector) that streamed changes and a live backfill that made
/// progress, both scraped by a local Prometheus with the project's alert rules, then every
/// rule evaluates without error, and every panel's and every alert's expression returns data
/// (alerts with their comparisons as `bool`, so a healthy pipeline answers too), except the
/// alerts on kube-state-metrics series, which exist only in a cluster (promtool tests them).
#[tokio::test]
async fn a_local_prometheus_scraping_the_daemon_and_a_backfill_answers_every_panel_and_alert() {
    let Some(prom) = LocalPrometheus::start(&["bowmark-cdc-daemon", "bowmark-cdc-backfill"]) else {
        return;
    };
    // Given a MongoDB holding a workload, and a daemon tailing it
    let m = TestMongo::start().await;
    Workload::generate(11, Shape::small(60))
        .insert(&m.db())
        .await
        .expect("insert workload");
    let db = support::migrated_db().await;
    let vhost = TestVhost::new();
    let tp = temp_pipeline("paving", Some(m.db_name()), Some(20));
    let mut daemon = spawn(
        &tp.path,
        &["run", "--role", "all"],
        &db,
        Some(&vhost),
        m.uri(),
    );
    let daemon_log = StderrTail::start(&mut daemon.0);
    let daemon_addr = daemon_log.http_addr();
    prom.wait_ready().await;
    prom.scrape("bowmark-cdc-daemon", daemon_addr);
    eventually("the daemon ready", WAIT, || async {
        (support::http_get(daemon_addr, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    // When changes stream through capture and projector (new employee works; every
    // employee renamed, which rewrites their dimension rows)
    let works = m.db().collection::<bson::Document>("employeeworks");
    for i in 0..5u8 {
        works
            .insert_one(doc! {"_id": bson::oid::ObjectId::from_bytes([i; 12]), "jobTitle": "x"})
            .await
            .expect("insert");
    }
    m.db()
        .collection::<bson::Document>("employees")
        .update_many(doc! {}, doc! {"$set": {"name": "Renamed"}})
        .await
        .expect("rename employees");
    eventually("the projector's writes scraped", WAIT, || async {
        let at = now_unix();
        let rows = prom
            .query(
                r#"cdc_projector_rows_written_total{job="bowmark-cdc-daemon"} > 0"#,
                at,
            )
            .await;
        let applied = prom
            .query("cdc_projector_last_event_timestamp_seconds > 0", at)
            .await;
        let captured = prom
            .query("cdc_capture_last_event_timestamp_seconds > 0", at)
            .await;
        (!rows.is_empty() && !applied.is_empty() && !captured.is_empty()).then_some(())
    })
    .await;
    // And a live backfill starts, held at its first chunk, then makes progress while scraped
    let holder = db.client().await;
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&PROJECT_LOCK_KEY])
        .await
        .expect("hold the projection lock");
    let mut backfill = spawn(&tp.path, &["backfill"], &db, None, m.uri());
    let backfill_log = StderrTail::start(&mut backfill.0);
    let backfill_addr = backfill_log.http_addr();
    prom.scrape("bowmark-cdc-backfill", backfill_addr);
    eventually("the held backfill scraped", WAIT, || async {
        let v = prom
            .query("cdc_backfill_documents_expected > 0", now_unix())
            .await;
        (!v.is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    holder
        .execute("SELECT pg_advisory_unlock($1)", &[&PROJECT_LOCK_KEY])
        .await
        .expect("release");
    // (held again at its next chunk, so that it is still running when queried)
    tokio::time::sleep(Duration::from_millis(300)).await;
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&PROJECT_LOCK_KEY])
        .await
        .expect("hold the projection lock again");
    let at = eventually("backfill progress scraped", WAIT, || async {
        let at = now_unix();
        let v = prom
            .query("deriv(cdc_backfill_documents_done[5m]) > 0", at)
            .await;
        (!v.is_empty()).then_some(at)
    })
    .await;
    assert!(
        backfill.0.try_wait().expect("try_wait").is_none(),
        "the backfill ended before it was queried:\n{}",
        backfill_log.text()
    );
    // And both expositions pass `promtool check metrics` (names, HELP, no gauge named _total)
    for addr in [daemon_addr, backfill_addr] {
        promtool_check_metrics(&support::http_get(addr, "/metrics").await.1);
    }

    // Then every rule evaluates without error
    let rules = eventually("every rule evaluated", WAIT, || async {
        let groups = prom.api("rules").await["groups"].clone();
        let rules: Vec<Value> = groups
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        rules
            .iter()
            .all(|r| r["health"] != "unknown")
            .then_some(rules)
    })
    .await;
    assert!(rules.len() >= 15, "rules loaded: {}", rules.len());
    for r in &rules {
        assert_eq!(r["health"], "ok", "rule {}: {}", r["name"], r["lastError"]);
    }
    // And every alert's expression returns data, except on kube-state-metrics series
    let mut missing = Vec::new();
    let mut cluster_only = Vec::new();
    for r in rules.iter().filter(|r| r["type"] == "alerting") {
        let (name, expr) = (
            r["name"].as_str().unwrap_or(""),
            r["query"].as_str().unwrap_or(""),
        );
        if expr.contains("kube_") && !expr.contains("cdc_") {
            cluster_only.push(name);
            continue;
        }
        if prom.query(&returning_data(expr), at).await.is_empty() {
            missing.push(format!("alert {name}: {}", returning_data(expr)));
        }
    }
    // And every panel's expression returns data
    for (title, expr) in dashboard_queries() {
        if prom.query(&expr, at).await.is_empty() {
            missing.push(format!("panel '{title}': {expr}"));
        }
    }
    assert!(
        missing.is_empty(),
        "no data for:\n{}\n(daemon log:\n{})",
        missing.join("\n"),
        daemon_log.text()
    );
    eprintln!(
        "alerts on kube-state-metrics series only (no cluster here; promtool tests them): {}",
        cluster_only.join(", ")
    );
    assert_eq!(
        cluster_only.len(),
        4,
        "the cluster-only alerts changed: {cluster_only:?}"
    );
    holder
        .execute("SELECT pg_advisory_unlock($1)", &[&PROJECT_LOCK_KEY])
        .await
        .expect("release");
    drop(backfill);
    drop(daemon);
}

/// `promtool check metrics` on a `/metrics` page (promtool comes with Prometheus).
fn promtool_check_metrics(metrics: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (installed with prometheus)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(metrics.as_bytes())
        .expect("write metrics");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `bowmark-cdc` child process, killed when dropped.
struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(
    pipeline: &Path,
    args: &[&str],
    db: &support::TestDb,
    vhost: Option<&TestVhost>,
    mongo_uri: &str,
) -> Spawned {
    let child = support::cdc_bin()
        .args(args)
        .arg("--pipeline")
        .arg(pipeline)
        .envs(support::child_env(db, vhost, Some(mongo_uri)))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bowmark-cdc");
    Spawned(child)
}

#[test]
fn comparisons_become_bool_outside_matchers() {
    assert_eq!(
        returning_data(r#"max(a{x!="y", z=~"w"}) > 60 and on (p) (b == 1)"#),
        r#"max(a{x!="y", z=~"w"}) > bool 60 and on (p) (b == bool 1)"#
    );
    assert_eq!(returning_data("a >= bool 1"), "a >= bool 1");
    assert_eq!(returning_data("a != 1"), "a != bool 1");
}

/// The value of the series `name{labels…}` containing `label` on a `/metrics` page.
fn sample(metrics: &str, name: &str, label: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn checkpoint_stored(db: &support::TestDb) -> bool {
    let c = db.client().await;
    c.query_opt(
        "SELECT 1 FROM cdc.checkpoint WHERE pipeline = 'paving'",
        &[],
    )
    .await
    .ok()
    .flatten()
    .is_some()
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
}

async fn exit_status(child: &mut Child) -> std::process::ExitStatus {
    eventually("the process to exit", WAIT, || {
        let s = child.try_wait().expect("try_wait");
        async move { s }
    })
    .await
}

/// A MongoDB holding one crew, a migrated database, a vhost and the paving pipeline file
/// pointed at them: what a `run --role capture` process needs.
struct CaptureRig {
    m: TestMongo,
    db: support::TestDb,
    vhost: TestVhost,
    tp: crate::backfill::TempPipeline,
}

impl CaptureRig {
    async fn new() -> CaptureRig {
        let m = TestMongo::start().await;
        let db = support::migrated_db().await;
        let vhost = TestVhost::new();
        let tp = temp_pipeline("paving", Some(m.db_name()), None);
        m.db()
            .collection::<bson::Document>("crews")
            .insert_one(doc! {"name": "a"})
            .await
            .expect("insert");
        CaptureRig { m, db, vhost, tp }
    }

    /// A capture process, its log and its HTTP address.
    fn start(&self) -> (Spawned, StderrTail, SocketAddr) {
        let args = ["run", "--role", "capture"];
        let mut p = spawn(
            &self.tp.path,
            &args,
            &self.db,
            Some(&self.vhost),
            self.m.uri(),
        );
        let log = StderrTail::start(&mut p.0);
        let addr = log.http_addr();
        (p, log, addr)
    }

    async fn wait_checkpoint(&self) {
        eventually("a checkpoint", WAIT, || async {
            checkpoint_stored(&self.db).await.then_some(())
        })
        .await;
    }
}

/// Given a capture whose checkpoint fell off the oplog, under `history_lost = "fail"`, then
/// the process does not exit into a restart loop that no scrape sees: it stays up, unready,
/// naming the backfill, with `cdc_capture_history_lost` 1 and the error counted; SIGTERM then
/// ends it with exit 1.
#[tokio::test]
async fn history_lost_under_policy_fail_keeps_the_process_up_unready_and_alerting() {
    let rig = CaptureRig::new().await;
    let Some(sim) = rig.m.sim() else {
        eprintln!("SKIP: losing oplog history needs the simulator");
        return;
    };
    // A capture that stored its checkpoint and stopped
    let (mut first, _log, _) = rig.start();
    rig.wait_checkpoint().await;
    sigterm(&first.0);
    assert!(exit_status(&mut first.0).await.success());
    // When the oplog loses the history after it
    let crews = rig.m.db().collection::<bson::Document>("crews");
    crews.insert_one(doc! {"name": "b"}).await.expect("insert");
    sim.truncate_oplog();
    let (mut second, log, addr) = rig.start();
    // Then /readyz says what failed and what to do, and /metrics shows it
    let body = eventually("the capture failed", WAIT, || async move {
        let (code, body) = support::http_get(addr, "/readyz").await;
        (code == 503 && body.contains("capture failed")).then_some(body)
    })
    .await;
    assert!(
        body.contains("history lost") && body.contains("bowmark-cdc backfill --pipeline"),
        "{body}"
    );
    let (_, metrics) = support::http_get(addr, "/metrics").await;
    let p = "pipeline=\"paving\"";
    assert_eq!(
        sample(&metrics, "cdc_capture_history_lost", p),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "cdc_capture_errors_total",
            "error_type=\"history_lost\""
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "cdc_capture_leader", p),
        Some(0.0),
        "{metrics}"
    );
    // And it is still up a while later; SIGTERM ends it with exit 1
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        second.0.try_wait().expect("try_wait").is_none(),
        "{}",
        log.text()
    );
    assert_eq!(support::http_get(addr, "/readyz").await.0, 503);
    sigterm(&second.0);
    assert_eq!(
        exit_status(&mut second.0).await.code(),
        Some(1),
        "{}",
        log.text()
    );
}

/// Given a capture tailing and caught up, when MongoDB refuses every getMore of the stream with
/// an authentication error (expired credentials) while it still opens streams, then the capture reconnects in a loop, each
/// error counted as `mongo_auth`, and its checkpoint timestamp stops moving, so the checkpoint
/// age grows (it no longer restarts at zero with every reconnect).
#[tokio::test]
async fn a_capture_looping_on_a_refused_login_counts_it_and_its_checkpoint_ages() {
    let rig = CaptureRig::new().await;
    if rig.m.sim().is_none() {
        eprintln!("SKIP: failing commands on purpose needs the simulator");
        return;
    }
    let m = &rig.m;
    let (_capture, _log, addr) = rig.start();
    let ts = |metrics: &str| {
        sample(
            metrics,
            "cdc_capture_checkpoint_timestamp_seconds",
            "pipeline=\"paving\"",
        )
    };
    // Caught up: the timestamp follows the clock
    eventually("the checkpoint timestamp near now", WAIT, || async move {
        let (_, metrics) = support::http_get(addr, "/metrics").await;
        ts(&metrics).filter(|t| now_unix() - t < 5.0).map(|_| ())
    })
    .await;
    // When every getMore is refused (each reopened stream fails at its first getMore)
    m.fail_command(
        bson::bson!("alwaysOn"),
        doc! {
            "failCommands": ["getMore"],
            "errorCode": 18,
            "appName": "bowmark-cdc-capture-paving",
        },
    )
    .await;
    let errors = |metrics: &str| {
        sample(
            metrics,
            "cdc_capture_errors_total",
            "error_type=\"mongo_auth\"",
        )
        .unwrap_or(0.0)
    };
    let (frozen, first_errors) = eventually("two refused logins", WAIT, || async move {
        let (_, metrics) = support::http_get(addr, "/metrics").await;
        (errors(&metrics) >= 2.0).then(|| (ts(&metrics), errors(&metrics)))
    })
    .await;
    // Then the errors keep coming while the timestamp stays where it was
    let (later, more_errors) = eventually("more refused logins", WAIT, || async move {
        let (_, metrics) = support::http_get(addr, "/metrics").await;
        (errors(&metrics) > first_errors + 1.0).then(|| (ts(&metrics), errors(&metrics)))
    })
    .await;
    m.fail_command_off().await;
    assert!(more_errors > first_errors);
    assert_eq!(
        later, frozen,
        "the checkpoint timestamp moved without progress"
    );
    let age = now_unix() - later.expect("a checkpoint timestamp");
    assert!(age > 1.0, "checkpoint age {age} s after the reconnect loop");
}

/// Given two capture processes of one pipeline, then the standby exports the leader's series
/// at 0 (not absent), the leader at 1: "no capture leader" is a sum that can be 0.
#[tokio::test]
async fn a_standby_exports_the_leader_series_at_zero() {
    let rig = CaptureRig::new().await;
    let (_first, _first_log, first_addr) = rig.start();
    rig.wait_checkpoint().await;
    let (_second, _second_log, second_addr) = rig.start();
    let body = eventually("the second replica standing by", WAIT, || async move {
        let (code, body) = support::http_get(second_addr, "/readyz").await;
        (code == 200 && body.contains("capture standby")).then_some(body)
    })
    .await;
    let leader = |metrics: &str| sample(metrics, "cdc_capture_leader", "pipeline=\"paving\"");
    let (_, standby) = support::http_get(second_addr, "/metrics").await;
    let (_, active) = support::http_get(first_addr, "/metrics").await;
    assert_eq!(leader(&standby), Some(0.0), "{body}\n{standby}");
    assert_eq!(leader(&active), Some(1.0), "{active}");
    assert_eq!(
        sample(&standby, "cdc_capture_history_lost", "pipeline=\"paving\""),
        Some(0.0),
        "{standby}"
    );
}
