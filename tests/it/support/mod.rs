//! Test support: a private PostgreSQL database and RabbitMQ vhost per test, dropped afterwards.
//!
//! The services are the ones `scripts/services.sh` starts: PostgreSQL on 127.0.0.1:5432
//! (trust auth; override with `TEST_POSTGRES_HOST/PORT/USER`) and RabbitMQ on 127.0.0.1:5672
//! (guest/guest). Vhosts are created with `rabbitmqctl`, which must be on PATH.

#![allow(dead_code)]

pub mod broker;
pub mod mongo;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bowmark_cdc::config::{Pipeline, PostgresConn, RabbitConn, Secret, Settings};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short unique name for this test's database or vhost.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}_{}_{n}_{nanos:x}", std::process::id())
}

/// The project root (where `Cargo.toml` is).
pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared` beside the project root, if present (fixtures and specs).
pub fn shared_dir() -> Option<PathBuf> {
    let p = project_root().join("..").join("shared");
    p.is_dir().then_some(p)
}

/// The fixtures folder of the legacy dev dump, or `None` with a printed reason.
pub fn fixtures(tenant: &str) -> Option<PathBuf> {
    match shared_dir() {
        Some(s) => Some(s.join("fixtures").join("bowmark-dev").join(tenant)),
        None => {
            eprintln!(
                "SKIP: ../shared is absent, so the bowmark-dev {tenant} fixtures cannot be read"
            );
            None
        }
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// Connection settings of the test PostgreSQL server for a database.
pub fn pg_conn(database: &str) -> PostgresConn {
    PostgresConn {
        host: env_or("TEST_POSTGRES_HOST", "127.0.0.1"),
        port: env_or("TEST_POSTGRES_PORT", "5432")
            .parse()
            .expect("TEST_POSTGRES_PORT"),
        user: env_or("TEST_POSTGRES_USER", "postgres"),
        password: Secret::new(env_or("TEST_POSTGRES_PASSWORD", "")),
        database: database.to_string(),
        url: None,
        tls: Default::default(),
    }
}

/// Connect to a database of the test server.
pub async fn pg_connect(database: &str) -> tokio_postgres::Client {
    let cfg = pg_conn(database).pg_config().expect("pg config");
    let (client, conn) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot connect to PostgreSQL at {}: {e}; run scripts/services.sh",
                pg_conn(database).host
            )
        });
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A private PostgreSQL database, dropped (with its connections) when this value drops.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let name = unique_name("cdc_test");
        let admin = pg_connect("postgres").await;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create test database");
        TestDb { name }
    }

    pub fn conn(&self) -> PostgresConn {
        pg_conn(&self.name)
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        pg_connect(&self.name).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop from a thread of its own: Drop may run inside or outside a runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let admin = pg_connect("postgres").await;
                let _ = admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await;
            });
        })
        .join();
    }
}

/// A private database with every embedded migration applied by `bowmark_cdc::migrate::run`.
pub async fn migrated_db() -> TestDb {
    let db = TestDb::new().await;
    if let Err(e) = bowmark_cdc::migrate::run(&db.conn()).await {
        panic!(
            "migrate test database {}: {:#}",
            db.name,
            anyhow::Error::from(e)
        );
    }
    db
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl must be on PATH (scripts/services.sh)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private RabbitMQ vhost with full permissions for guest, deleted when this value drops.
pub struct TestVhost {
    pub name: String,
}

impl TestVhost {
    pub fn new() -> TestVhost {
        let name = unique_name("cdc-test");
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        TestVhost { name }
    }

    pub fn conn(&self) -> RabbitConn {
        RabbitConn {
            host: "127.0.0.1".into(),
            port: 5672,
            user: "guest".into(),
            password: Secret::new("guest"),
            vhost: self.name.clone(),
            url: None,
            tls: false,
            ca: None,
            hosts: Default::default(),
        }
    }

    /// Set a policy on this vhost only (`rabbitmqctl set_policy -p <vhost>`).
    pub fn set_policy(&self, policy: &bowmark_cdc::topology::Policy) {
        let args = policy.rabbitmqctl_args(&self.name);
        rabbitmqctl(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }

    pub async fn connect(&self) -> lapin::Connection {
        lapin::Connection::connect(
            self.conn().uri().expose(),
            lapin::ConnectionProperties::default(),
        )
        .await
        .expect("connect to RabbitMQ; run scripts/services.sh")
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.name])
            .output();
    }
}

/// The project's pipeline file for a business line.
pub fn pipeline(name: &str) -> Pipeline {
    Pipeline::load(&project_root().join("pipeline").join(format!("{name}.toml")))
        .expect("pipeline file")
}

/// Settings for a pipeline, pointed at this test's database, vhost and MongoDB.
pub fn settings(
    pipeline: Pipeline,
    db: &TestDb,
    vhost: Option<&TestVhost>,
    mongo_uri: Option<&str>,
) -> Settings {
    let mut env = BTreeMap::new();
    let pg = db.conn();
    env.insert("POSTGRES_HOST".into(), pg.host.clone());
    env.insert("POSTGRES_PORT".into(), pg.port.to_string());
    env.insert("POSTGRES_USER".into(), pg.user.clone());
    env.insert("POSTGRES_DB".into(), db.name.clone());
    if let Some(v) = vhost {
        env.insert("RABBITMQ_VHOST".into(), v.name.clone());
    }
    if let Some(u) = mongo_uri {
        env.insert("MONGO_URI".into(), u.to_string());
    }
    Settings::resolve(pipeline, &env).expect("settings")
}

/// Environment variables that point a `bowmark-cdc` child process at this test's services.
pub fn child_env(
    db: &TestDb,
    vhost: Option<&TestVhost>,
    mongo_uri: Option<&str>,
) -> Vec<(String, String)> {
    let pg = db.conn();
    let mut v = vec![
        ("POSTGRES_HOST".to_string(), pg.host.clone()),
        ("POSTGRES_PORT".to_string(), pg.port.to_string()),
        ("POSTGRES_USER".to_string(), pg.user.clone()),
        ("POSTGRES_DB".to_string(), db.name.clone()),
        // Never the pipeline's fixed port: tests run side by side.
        ("CDC_HTTP_LISTEN".to_string(), "127.0.0.1:0".to_string()),
    ];
    if let Some(vh) = vhost {
        v.push(("RABBITMQ_VHOST".into(), vh.name.clone()));
    }
    if let Some(u) = mongo_uri {
        v.push(("MONGO_URI".into(), u.to_string()));
    }
    v
}

/// The built `bowmark-cdc` binary.
pub fn cdc_bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bowmark-cdc"));
    c.current_dir(project_root());
    c
}

/// Poll `check` until it yields `Some`, or panic with `what` after `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET path` from a process's HTTP port (HTTP/1.0, connection closed): (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect http");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("send request");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read response");
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, body.to_string())
}

/// A child process's stderr (JSON log lines), read on a thread: every line is kept, and the
/// HTTP address it logs (`"addr"`) is handed over.
pub struct StderrTail {
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    addr: std::sync::mpsc::Receiver<std::net::SocketAddr>,
}

impl StderrTail {
    pub fn start(child: &mut std::process::Child) -> StderrTail {
        use std::io::{BufRead, BufReader};
        let stderr = child.stderr.take().expect("the child's stderr is piped");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, addr) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(a) = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v.get("addr")?.as_str()?.parse().ok())
                {
                    let _ = tx.send(a);
                }
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        StderrTail { log, addr }
    }

    /// The HTTP address the process logged; panics with its log after 30 s.
    pub fn http_addr(&self) -> std::net::SocketAddr {
        self.addr
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "the process never logged its HTTP address:\n{}",
                    self.text()
                )
            })
    }

    pub fn text(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }
}

/// Every star table the projection writes: what comparisons of two databases cover.
pub fn star_tables() -> Vec<&'static str> {
    bowmark_cdc::model::star_tables()
}
