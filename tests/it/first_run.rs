//! A new user's first run (issue 19): `scripts/run-local.sh` finds its binaries wherever cargo
//! put them and checks its ports before any work; `run` reports a busy port, a wrong login and
//! an unreachable dependency with the cause; a mongodump's output folder is accepted; the
//! documentation stands alone.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bson::{doc, oid::ObjectId};

use crate::support::{self, StderrTail, TestVhost, cdc_bin, migrated_db, project_root};

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Run `cmd`, killing it after `limit`: (output, whether it finished in time).
fn run_with_limit(mut cmd: Command, limit: Duration) -> (Output, bool) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    let mut in_time = true;
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            in_time = false;
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (child.wait_with_output().unwrap(), in_time)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run_local() -> Command {
    let mut c = Command::new("bash");
    c.arg(project_root().join("scripts/run-local.sh"))
        .current_dir(project_root())
        // Plan only: never build or start anything from a test.
        .env("RUN_LOCAL_DRY_RUN", "1")
        .env_remove("MONGO_URI")
        .env_remove("CDC_HTTP_LISTEN");
    c
}

#[test]
fn run_local_runs_the_binaries_from_cargo_target_dir() {
    // Given CARGO_TARGET_DIR pointing away from ./target, and free ports
    let target = tempfile::tempdir().unwrap();
    for (profile, dir) in [("release", "release"), ("dev", "debug")] {
        let mut cmd = run_local();
        cmd.env("CARGO_TARGET_DIR", target.path())
            .env("PROFILE", profile)
            .env("CDC_HTTP_LISTEN", format!("127.0.0.1:{}", free_port()))
            .env("MONGOSIM_LISTEN", format!("127.0.0.1:{}", free_port()));
        // When run-local.sh plans the run
        let (out, in_time) = run_with_limit(cmd, Duration::from_secs(60));
        let stderr = text(&out.stderr);
        assert!(in_time && out.status.success(), "{stderr}");
        // Then the binaries it runs are the ones cargo builds into CARGO_TARGET_DIR
        let expected = target.path().join(dir).join("bowmark-cdc");
        assert!(
            stderr.contains(&format!("binaries {}", expected.display())),
            "PROFILE={profile}: {stderr}"
        );
    }
}

#[test]
fn run_local_stops_on_a_busy_port_before_any_work() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    for (var, other) in [
        ("CDC_HTTP_LISTEN", "MONGOSIM_LISTEN"),
        ("MONGOSIM_LISTEN", "CDC_HTTP_LISTEN"),
    ] {
        // Given a port already in use
        let mut cmd = run_local();
        cmd.env(var, format!("127.0.0.1:{port}"))
            .env(other, format!("127.0.0.1:{}", free_port()));
        // When run-local.sh starts
        let (out, in_time) = run_with_limit(cmd, Duration::from_secs(60));
        let stderr = text(&out.stderr);
        // Then it stops at once, before the services, the build or migrate, naming the port
        // and the variable that changes it
        assert!(in_time && !out.status.success(), "{var}: {stderr}");
        assert!(stderr.contains(&format!("port {port}")), "{var}: {stderr}");
        assert!(stderr.contains(var), "{var}: {stderr}");
        assert!(
            !stderr.contains("dry run") && !stderr.contains("services:"),
            "{stderr}"
        );
    }
}

#[test]
fn run_stops_on_a_busy_http_port_before_connecting_to_anything() {
    // Given the HTTP port taken, and PostgreSQL pointed at a closed port (retried forever if
    // `run` got that far)
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let mut cmd = cdc_bin();
    cmd.args([
        "run",
        "--pipeline",
        "pipeline/paving.toml",
        "--role",
        "project",
    ])
    .env("CDC_HTTP_LISTEN", format!("127.0.0.1:{port}"))
    .env("POSTGRES_PORT", free_port().to_string());
    // When the daemon starts
    let (out, in_time) = run_with_limit(cmd, Duration::from_secs(20));
    let stderr = text(&out.stderr);
    // Then it exits 1 at once, naming the port and CDC_HTTP_LISTEN
    assert!(in_time, "still running after 20 s: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("port {port} is already in use")),
        "{stderr}"
    );
    assert!(stderr.contains("CDC_HTTP_LISTEN"), "{stderr}");
    assert!(!stderr.contains("PostgreSQL not reachable"), "{stderr}");
}

fn postgres_up() -> bool {
    let host = std::env::var("TEST_POSTGRES_HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("TEST_POSTGRES_PORT").unwrap_or_else(|_| "5432".into());
    let up = std::net::TcpStream::connect(format!("{host}:{port}")).is_ok();
    if !up {
        eprintln!("SKIP: PostgreSQL is not reachable at {host}:{port} (scripts/services.sh)");
    }
    up
}

#[test]
fn run_with_a_wrong_postgres_user_fails_at_start_with_the_servers_message() {
    if !postgres_up() {
        return;
    }
    let mut cmd = cdc_bin();
    cmd.args([
        "run",
        "--pipeline",
        "pipeline/paving.toml",
        "--role",
        "project",
    ])
    .env("CDC_HTTP_LISTEN", "127.0.0.1:0")
    .env("POSTGRES_USER", "nobody");
    let (out, in_time) = run_with_limit(cmd, Duration::from_secs(30));
    let stderr = text(&out.stderr);
    assert!(in_time, "retried instead of failing: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("role \\\"nobody\\\" does not exist")
            || stderr.contains("role \"nobody\" does not exist"),
        "the server's message: {stderr}"
    );
    assert!(stderr.contains("POSTGRES_USER"), "what to fix: {stderr}");
}

#[tokio::test]
async fn run_with_a_wrong_rabbitmq_password_fails_at_start_with_the_brokers_message() {
    if !postgres_up() {
        return;
    }
    let db = migrated_db().await;
    let vhost = TestVhost::new();
    let mut cmd = cdc_bin();
    cmd.args([
        "run",
        "--pipeline",
        "pipeline/paving.toml",
        "--role",
        "project",
    ])
    .envs(support::child_env(&db, Some(&vhost), None))
    .env("RABBITMQ_PASSWORD", "not-the-password");
    let (out, in_time) =
        tokio::task::spawn_blocking(move || run_with_limit(cmd, Duration::from_secs(30)))
            .await
            .unwrap();
    let stderr = text(&out.stderr);
    assert!(in_time, "retried instead of failing: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("ACCESS_REFUSED"),
        "the broker's message: {stderr}"
    );
    assert!(
        stderr.contains("RABBITMQ_PASSWORD"),
        "what to fix: {stderr}"
    );
}

/// SIGTERM a child and wait (at most 30 s) for its exit code.
fn terminate(child: &mut std::process::Child) -> Option<i32> {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn error_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("\"level\":\"ERROR\"") || l.contains(" ERROR "))
        .collect()
}

#[tokio::test]
async fn readyz_names_only_the_unreachable_dependency_with_its_cause() {
    // Given a projector whose broker is up and whose PostgreSQL port is closed
    let vhost = TestVhost::new();
    let mut child = cdc_bin()
        .args([
            "run",
            "--pipeline",
            "pipeline/paving.toml",
            "--role",
            "project",
        ])
        .env("CDC_HTTP_LISTEN", "127.0.0.1:0")
        .env("RABBITMQ_VHOST", &vhost.name)
        .env("POSTGRES_PORT", free_port().to_string())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let tail = StderrTail::start(&mut child);
    let addr = tail.http_addr();
    // Then /readyz names PostgreSQL, with the cause, and nothing else as disconnected
    let body = support::eventually(
        "readyz naming postgres",
        Duration::from_secs(30),
        || async {
            let (code, body) = support::http_get(addr, "/readyz").await;
            (code == 503
                && body.contains("postgres disconnected (")
                && !body.contains("broker not checked"))
            .then_some(body)
        },
    )
    .await;
    assert!(body.contains("refused"), "the cause: {body}");
    assert!(!body.contains("broker"), "the broker is up: {body}");
    // And the log says why it retries
    let log = tail.text();
    assert!(log.contains("PostgreSQL not reachable yet"), "{log}");
    assert!(log.contains("refused"), "{log}");
    // And a shutdown while waiting is clean
    let code = tokio::task::spawn_blocking(move || terminate(&mut child))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{}", tail.text());
}

#[tokio::test]
async fn a_clean_shutdown_logs_no_error() {
    // Given a running projector
    let db = migrated_db().await;
    let vhost = TestVhost::new();
    let mut child = cdc_bin()
        .args([
            "run",
            "--pipeline",
            "pipeline/paving.toml",
            "--role",
            "project",
        ])
        .envs(support::child_env(&db, Some(&vhost), None))
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let tail = StderrTail::start(&mut child);
    let addr = tail.http_addr();
    support::eventually("a ready projector", Duration::from_secs(30), || async {
        let (code, _) = support::http_get(addr, "/readyz").await;
        (code == 200).then_some(())
    })
    .await;
    // When it is stopped
    let code = tokio::task::spawn_blocking(move || terminate(&mut child))
        .await
        .unwrap();
    // Then it exits 0 and logs no ERROR
    let log = tail.text();
    assert_eq!(code, Some(0), "{log}");
    assert!(error_lines(&log).is_empty(), "{log}");
}

/// A mongodump-style output folder: `root/paving/companies.bson` with `n` companies.
fn write_dump(root: &Path, database: &str, n: usize) -> PathBuf {
    let dir = root.join(database);
    std::fs::create_dir_all(&dir).unwrap();
    let mut bytes = Vec::new();
    for i in 0..n {
        let d = doc! {"_id": ObjectId::new(), "name": format!("Company {i}")};
        bytes.extend(bson::serialize_to_vec(&d).unwrap());
    }
    std::fs::write(dir.join("companies.bson"), bytes).unwrap();
    std::fs::write(dir.join("companies.metadata.json"), b"{}").unwrap();
    dir
}

#[tokio::test]
async fn backfill_from_dump_accepts_mongodumps_output_folder() {
    // Given mongodump's output folder (OUT/paving/*.bson), not the database folder
    let db = migrated_db().await;
    let out = tempfile::tempdir().unwrap();
    let paving = write_dump(out.path(), "paving", 3);
    write_dump(out.path(), "concrete", 1);
    // When it is backfilled
    let (output, in_time) = backfill_from(&db, out.path(), Duration::from_secs(120)).await;
    let stderr = text(&output.stderr);
    // Then the paving folder is read, and the user is told so
    assert!(in_time && output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "reading the mongodump folder {}",
            paving.display()
        )),
        "{stderr}"
    );
    let client = db.client().await;
    let n: i64 = client
        .query_one("SELECT count(*) FROM dim_company", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3, "the paving companies, not the concrete one");

    // And a folder holding neither .bson files nor a paving folder is refused, saying what it holds
    let other = tempfile::tempdir().unwrap();
    write_dump(other.path(), "concrete", 1);
    let (output, _) = backfill_from(&db, other.path(), Duration::from_secs(60)).await;
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("no \"paving\" folder"), "{stderr}");
    assert!(stderr.contains("concrete"), "{stderr}");
}

/// `bowmark-cdc backfill --pipeline pipeline/paving.toml --from-dump DIR` into `db`, killed
/// after `limit`: its output, and whether it ended in time.
async fn backfill_from(db: &support::TestDb, dir: &Path, limit: Duration) -> (Output, bool) {
    let mut cmd = cdc_bin();
    cmd.args([
        "backfill",
        "--pipeline",
        "pipeline/paving.toml",
        "--from-dump",
    ])
    .arg(dir)
    .envs(support::child_env(db, None, None));
    tokio::task::spawn_blocking(move || run_with_limit(cmd, limit))
        .await
        .unwrap()
}

fn mongosim_binary() -> Option<PathBuf> {
    // target/<profile>/deps/it-<hash> -> target/<profile>/mongosim
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("mongosim");
    if bin.exists() {
        return Some(bin);
    }
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "-q", "-p", "mongosim", "--bin", "mongosim"])
        .current_dir(project_root())
        .status()
        .ok()?;
    (status.success() && bin.exists()).then_some(bin)
}

#[test]
fn mongosim_loads_mongodumps_output_folder_and_says_what_it_loaded() {
    let Some(bin) = mongosim_binary() else {
        eprintln!("SKIP: the mongosim binary is not built (cargo build -p mongosim)");
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let paving = write_dump(out.path(), "paving", 2);
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--load-dump"])
        .arg(format!("paving={}", out.path().display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut uri = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut uri)
        .unwrap();
    assert!(uri.starts_with("mongodb://"), "{uri}");
    assert_eq!(terminate(&mut child), Some(0));
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stderr.contains(&format!(
            "loaded 2 documents in 1 collections into paving from {}",
            paving.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("paving.companies: 2"), "{stderr}");
}

#[test]
fn the_documentation_stands_alone() {
    // README.md, docs/ and mongosim/README.md cite nothing outside the repository.
    let root = project_root();
    let mut files = vec![root.join("README.md"), root.join("mongosim/README.md")];
    for e in std::fs::read_dir(root.join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            files.push(p);
        }
    }
    let mut found = Vec::new();
    for f in &files {
        let body = std::fs::read_to_string(f).unwrap();
        for (i, line) in body.lines().enumerate() {
            if line.contains("../shared")
                || line.contains("DESIGN §")
                || line.contains("spec-") && line.contains(".md")
            {
                found.push(format!("{}:{}: {line}", f.display(), i + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "references outside the repository:\n{}",
        found.join("\n")
    );
    // And the links to docs/ resolve
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(readme.contains("docs/mongosim.md") && root.join("docs/mongosim.md").is_file());
}
