//! The real binary: `bowmark-cdc run --role capture` killed, signalled, observed over HTTP.

use super::*;

// --- the real binary: `bowmark-cdc run --role capture` -------------------------------------

/// A `bowmark-cdc run --role capture` child process for a fixture.
pub(super) struct Proc {
    pub(super) child: std::process::Child,
}

/// Run the capture until it stored a checkpoint, then stop it with SIGTERM (exit 0).
pub(super) async fn checkpoint_and_stop(fx: &Fixture, file: &tempfile::NamedTempFile) {
    let proc = Proc::start(fx, file);
    fx.wait_checkpoint().await;
    proc.signal("-TERM");
    assert!(proc.wait(WAIT).await.status.success());
}

/// The paving pipeline file, pointed at this test's MongoDB database, which holds a watched
/// collection (the capture refuses a database that holds none).
pub(super) async fn pipeline_file(fx: &Fixture) -> tempfile::NamedTempFile {
    fx.mongo
        .database(fx.m.db_name())
        .create_collection("companies")
        .await
        .expect("create a watched collection");
    let text = std::fs::read_to_string(support::project_root().join("pipeline/paving.toml"))
        .expect("pipeline/paving.toml");
    let text = text.replacen(
        "database = \"paving\"",
        &format!("database = \"{}\"", fx.m.db_name()),
        1,
    );
    let mut f = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temp pipeline file");
    std::io::Write::write_all(&mut f, text.as_bytes()).expect("write pipeline file");
    f
}

impl Proc {
    pub(super) fn start(fx: &Fixture, file: &tempfile::NamedTempFile) -> Proc {
        Proc::start_with(fx, file, std::process::Stdio::inherit())
    }

    pub(super) fn start_with(
        fx: &Fixture,
        file: &tempfile::NamedTempFile,
        stderr: std::process::Stdio,
    ) -> Proc {
        Proc::start_at(fx, file, stderr, fx.m.uri())
    }

    /// With MongoDB at `uri` (e.g. with options added to the fixture's).
    pub(super) fn start_at(
        fx: &Fixture,
        file: &tempfile::NamedTempFile,
        stderr: std::process::Stdio,
        uri: &str,
    ) -> Proc {
        Proc::start_env(fx, file, stderr, uri, Vec::new())
    }

    /// With `extra` environment on top of the fixture's (e.g. another broker).
    pub(super) fn start_env(
        fx: &Fixture,
        file: &tempfile::NamedTempFile,
        stderr: std::process::Stdio,
        uri: &str,
        extra: Vec<(String, String)>,
    ) -> Proc {
        let child = support::cdc_bin()
            .args(["run", "--role", "capture", "--pipeline"])
            .arg(file.path())
            .args(["--http-listen", "127.0.0.1:0"])
            .envs(support::child_env(&fx.db, Some(&fx.vhost), Some(uri)))
            .envs(extra)
            .env("RUST_LOG", "bowmark_cdc=info")
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn bowmark-cdc");
        Proc { child }
    }

    /// SIGKILL: no cleanup at all.
    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(super) fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    pub(super) async fn wait(mut self, within: Duration) -> std::process::Output {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                let mut stderr = Vec::new();
                if let Some(mut e) = self.child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_end(&mut stderr);
                }
                return std::process::Output {
                    status,
                    stdout: Vec::new(),
                    stderr,
                };
            }
            if start.elapsed() > within {
                let _ = self.child.kill();
                panic!("bowmark-cdc did not exit within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A capture process whose JSON log lines are watched for its HTTP address.
struct Observed {
    /// Kept so the process lives (and is killed) with this value.
    _proc: Proc,
    addr: std::net::SocketAddr,
}

impl Observed {
    async fn start(fx: &Fixture, file: &tempfile::NamedTempFile) -> Observed {
        let mut proc = Proc::start_with(fx, file, std::process::Stdio::piped());
        let stderr = proc.child.stderr.take().expect("piped stderr");
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("{line}");
                if line.contains("http listening") {
                    let addr = line
                        .split("\"addr\":\"")
                        .nth(1)
                        .and_then(|r| r.split('"').next())
                        .and_then(|a| a.parse().ok());
                    if let (Some(tx), Some(addr)) = (tx.take(), addr) {
                        let _ = tx.send(addr);
                    }
                }
            }
        });
        let addr = tokio::time::timeout(WAIT, rx)
            .await
            .expect("the http address is logged")
            .expect("log reader");
        Observed { _proc: proc, addr }
    }

    /// `GET path` → (status code, body).
    async fn get(&self, path: &str) -> (u16, String) {
        support::http_get(self.addr, path).await
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn process_killed_with_sigkill_and_restarted_delivers_every_write() {
    // Given the real binary capturing a running write load
    let fx = Fixture::new("paving").await;
    let file = pipeline_file(&fx).await;
    let mut tap = Tap::new(&fx.vhost, &["#"]).await;
    let mut proc = Proc::start(&fx, &file);
    fx.wait_checkpoint().await;
    let n = 1000u32;
    let writer = spawn_writer(fx.coll("employeeworks"), n);
    // When it is killed with SIGKILL at random points and restarted each time
    let mut all: Vec<ChangeEvent> = Vec::new();
    for _ in 0..3 {
        let pause = 300 + rand::random::<u64>() % 700;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        proc.kill9();
        all.extend(
            tap.drain(Duration::from_millis(50))
                .await
                .into_iter()
                .map(|d| d.event),
        );
        proc = Proc::start(&fx, &file);
    }
    writer.await.unwrap();
    // Then every write arrives at least once, each with one id, and no id is missing
    collect_every_write(&mut tap, &mut all, n).await;
    assert_eq!(one_id_per_write(&all).len(), n as usize);
    assert_eq!(
        all.iter()
            .map(|e| e.id.as_str())
            .collect::<BTreeSet<_>>()
            .len(),
        n as usize,
        "no write has two ids"
    );
    // And, once the last process is tailing, SIGTERM stops it cleanly (exit 0) with the
    // checkpoint at the last event
    fx.coll("employeeworks")
        .insert_one(doc! {"_id": oid(n)})
        .await
        .unwrap();
    let marker = oid(n).to_hex();
    let got = tap
        .until("the marker write", |g| {
            g.iter().any(|d| d.event.key == marker)
        })
        .await;
    proc.signal("-TERM");
    let out = proc.wait(WAIT).await;
    assert!(out.status.success(), "exit status {:?}", out.status);
    let last = got.iter().map(|d| version(&d.event)).max().unwrap();
    eventually("the final checkpoint", WAIT, || async {
        let (_, id) = fx.checkpoint().await?;
        (id.as_deref().map(version_of_id) == Some(last)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn process_on_history_loss_names_the_backfill_and_exits_non_zero_when_stopped() {
    // Given a checkpoint whose history the oplog has lost
    let fx = Fixture::new("paving").await;
    let file = pipeline_file(&fx).await;
    let _tap = Tap::new(&fx.vhost, &["#"]).await;
    checkpoint_and_stop(&fx, &file).await;
    fx.coll("crews")
        .insert_one(doc! {"_id": oid(1)})
        .await
        .unwrap();
    let Some(sim) = fx.m.sim() else {
        eprintln!("SKIP: losing oplog history needs the simulator");
        return;
    };
    sim.truncate_oplog();
    // When the capture starts
    let mut proc = Proc::start_with(&fx, &file, std::process::Stdio::piped());
    let log = support::StderrTail::start(&mut proc.child);
    // Then it tells the operator how to recover and stays up, unready (alerting), until
    // SIGTERM, which it answers with a non-zero exit
    let want = format!("bowmark-cdc backfill --pipeline {}", file.path().display());
    let stderr = eventually("the recovery command logged", WAIT, || {
        let text = log.text();
        let found = text.contains(&want);
        async move { found.then_some(text) }
    })
    .await;
    assert!(stderr.contains("286"), "{stderr}");
    proc.signal("-TERM");
    assert!(!proc.wait(WAIT).await.status.success());
}

#[tokio::test]
async fn process_pair_one_publishes_and_sigkill_hands_over_without_loss() {
    // Given two capture processes of one pipeline
    let fx = Fixture::new("paving").await;
    let file = pipeline_file(&fx).await;
    let mut tap = Tap::new(&fx.vhost, &["#"]).await;
    let first = Proc::start(&fx, &file);
    fx.wait_checkpoint().await;
    let second = Proc::start(&fx, &file);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c = fx.coll("vehicleworks");
    // Then each event is published once (only the lock holder tails)
    tap.each_insert_published_once(&c, 100, Duration::from_secs(1), "no second publisher")
        .await;
    // When the holder is killed while writes continue
    first.kill9();
    for i in 100..200u32 {
        c.insert_one(doc! {"_id": oid(i)}).await.unwrap();
    }
    // Then the standby takes over and every later write arrives
    tap.until("writes 100..200 from the standby", |g| {
        let keys: BTreeSet<&str> = g.iter().map(|d| d.event.key.as_str()).collect();
        (100..200u32).all(|i| keys.contains(oid(i).to_hex().as_str()))
    })
    .await;
    drop(second);
}

#[tokio::test]
async fn process_reports_capture_metrics_and_standby_readiness() {
    // Given an active capture process and a second one standing by
    let fx = Fixture::new("paving").await;
    let file = pipeline_file(&fx).await;
    let mut tap = Tap::new(&fx.vhost, &["#"]).await;
    let active = Observed::start(&fx, &file).await;
    fx.wait_checkpoint().await;
    let standby = Observed::start(&fx, &file).await;
    // When three employee works are inserted and one is deleted
    let c = fx.coll("employeeworks");
    for i in 0..3u32 {
        c.insert_one(doc! {"_id": oid(i)}).await.unwrap();
    }
    c.delete_one(doc! {"_id": oid(0)}).await.unwrap();
    tap.take(4).await;
    // Then /metrics counts them by collection and op, with the capture's gauges and histogram
    let metrics = eventually("confirmed counters", WAIT, || async {
        let (code, body) = active.get("/metrics").await;
        (code == 200
            && body.lines().any(|l| {
                l.starts_with("cdc_capture_events_confirmed_total{")
                    && l.contains("collection=\"employeeworks\"")
                    && l.contains("op=\"insert\"")
                    && l.ends_with(" 3")
            }))
        .then_some(body)
    })
    .await;
    for name in [
        "cdc_capture_events_captured_total",
        "cdc_capture_events_published_total",
        "cdc_capture_confirm_latency_seconds_bucket",
        "cdc_capture_source_lag_seconds",
        "cdc_capture_checkpoint_timestamp_seconds",
        "cdc_capture_confirms_in_flight",
        "cdc_capture_leader",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }
    assert!(
        metrics.contains("# HELP cdc_capture_events_confirmed_total"),
        "described"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("cdc_capture_events_confirmed_total{")
                && l.contains("op=\"delete\"")),
        "{metrics}"
    );
    // And the second replica is ready as a standby, the first as active
    let body = eventually("the standby to be ready", WAIT, || async {
        let (code, body) = standby.get("/readyz").await;
        (code == 200).then_some(body)
    })
    .await;
    assert!(body.contains("capture standby"), "{body}");
    let (code, body) = active.get("/readyz").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("active"), "{body}");
    drop(standby);
    drop(active);
}
