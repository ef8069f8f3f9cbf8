//! End-to-end capture load harness: change stream → confirmed publish, through the real
//! `bowmark-cdc run --role capture` binary, `mongosim`, a real RabbitMQ vhost (a bound queue that
//! nobody consumes) and a real PostgreSQL database. Prints events/s, CPU µs per event and the
//! capture process's peak RSS.
//!
//! `cargo bench --bench capture_load` (events: `CDC_BENCH_EVENTS`, default 50000). Needs the
//! services of `scripts/services.sh` (PostgreSQL 127.0.0.1:5432 trust auth, RabbitMQ guest).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bowmark_cdc::config::{PostgresConn, Secret};
use bson::{doc, oid::ObjectId};
use lapin::{Connection, ConnectionProperties};

#[path = "support/process.rs"]
mod process;

use process::{clk_tck, rabbitmqctl};

/// CPU ticks so far and peak RSS (KiB) of a process.
fn proc_stat(pid: u32) -> (u64, u64) {
    let s = process::proc_stat(pid);
    (s.cpu_ticks, s.hwm_kib)
}

fn pg(db: &str) -> PostgresConn {
    PostgresConn {
        host: "127.0.0.1".into(),
        port: 5432,
        user: "postgres".into(),
        password: Secret::new(""),
        database: db.into(),
        url: None,
        tls: Default::default(),
    }
}

async fn pg_exec(db: &str, sql: &str) {
    let (c, conn) = pg(db)
        .pg_config()
        .unwrap()
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.batch_execute(sql).await.unwrap();
}

async fn has_checkpoint(db: &str) -> bool {
    let (c, conn) = pg(db)
        .pg_config()
        .unwrap()
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.query_opt("SELECT 1 FROM cdc.checkpoint", &[])
        .await
        .unwrap()
        .is_some()
}

fn spawn_capture(db: &str, vhost: &str, uri: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_bowmark-cdc"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "run",
            "--pipeline",
            "pipeline/paving.toml",
            "--role",
            "capture",
        ])
        .args(["--http-listen", "127.0.0.1:0"])
        .env("POSTGRES_HOST", "127.0.0.1")
        .env("POSTGRES_USER", "postgres")
        .env("POSTGRES_DB", db)
        .env("RABBITMQ_VHOST", vhost)
        .env("MONGO_URI", uri)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn bowmark-cdc")
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench());
}

async fn bench() {
    let n: u32 = std::env::var("CDC_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let id = std::process::id();
    let vhost = format!("cdc-bench-{id}");
    let db = format!("cdc_bench_{id}");
    rabbitmqctl(&["add_vhost", &vhost]);
    rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
    pg_exec("postgres", &format!("CREATE DATABASE \"{db}\"")).await;
    bowmark_cdc::migrate::run(&pg(&db)).await.expect("migrate");
    let sim = mongosim::Sim::start().await;

    // The capture declares the pipeline topology at start: the projector's quorum queue
    // `cdc.projector` bound `#`, which nobody consumes here.
    let amqp = Connection::connect(
        &format!("amqp://guest:guest@127.0.0.1:5672/{vhost}"),
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let ch = amqp.create_channel().await.unwrap();

    // A watched collection must exist before the capture starts (it refuses a database that
    // holds none): one document written before the checkpoint, never captured.
    sim.insert_raw(
        "paving",
        "employeeworks",
        [doc! {"_id": ObjectId::new(), "i": -1_i64, "hours": 8.5, "jobTitle": "Operator"}],
    )
    .unwrap();
    // Start once to store a checkpoint, stop, then write the whole load while it is down.
    let mut child = spawn_capture(&db, &vhost, &sim.uri());
    while !has_checkpoint(&db).await {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    let docs = (0..n).map(
        |i| doc! {"_id": ObjectId::new(), "i": i as i64, "hours": 8.5, "jobTitle": "Operator"},
    );
    sim.insert_raw("paving", "employeeworks", docs).unwrap();

    // Measure: restart and wait until every event is confirmed into the idle queue.
    let start = Instant::now();
    let mut child = spawn_capture(&db, &vhost, &sim.uri());
    let pid = child.id();
    let (mut cpu, mut hwm) = (0, 0);
    let mut first: Option<(Instant, u32)> = None;
    loop {
        let depth = bowmark_cdc::topology::depth(&ch, "cdc.projector")
            .await
            .unwrap();
        (cpu, hwm) = proc_stat(pid).max((cpu, hwm));
        if depth > 0 && first.is_none() {
            first = Some((Instant::now(), depth));
        }
        if depth >= n {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "stalled at {depth}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let end = Instant::now();
    let elapsed = end.duration_since(start);
    let (cpu_now, hwm_now) = proc_stat(pid);
    let cpu_ticks = cpu.max(cpu_now);
    let hwm = hwm.max(hwm_now);
    let cpu_us = cpu_ticks as f64 * 1e6 / clk_tck() as f64;
    println!("capture_load: {n} events in {:.2} s", elapsed.as_secs_f64());
    println!(
        "  throughput     {:.0} events/s (change stream → confirmed publish, incl. process start)",
        n as f64 / elapsed.as_secs_f64()
    );
    if let Some((t, d)) = first {
        println!(
            "  steady state   {:.0} events/s (from the first confirmed event on)",
            f64::from(n - d) / end.duration_since(t).as_secs_f64().max(1e-9)
        );
    }
    println!(
        "  capture CPU    {:.1} µs/event (user+sys of the capture process, {} ticks)",
        cpu_us / n as f64,
        cpu_ticks
    );
    println!(
        "  capture RSS    {:.1} MiB peak (VmHWM)",
        hwm as f64 / 1024.0
    );

    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let _ = child.wait();
    let _ = amqp.close(200, "bench done".into()).await;
    rabbitmqctl(&["delete_vhost", &vhost]);
    pg_exec(
        "postgres",
        &format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"),
    )
    .await;
}
