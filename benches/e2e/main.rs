//! End-to-end load harness: MongoDB writes → `bowmark-cdc run --role all` (a separate
//! process) → RabbitMQ → PostgreSQL star rows, beside the broker's own publish-and-confirm
//! limit measured in the same run.
//!
//! ```text
//! cargo bench --bench e2e              # full run, ~4 minutes
//! cargo bench --bench e2e -- --quick   # smoke run, ~1 minute
//! ```
//!
//! Starts mongosim in-process, a private PostgreSQL database (migrated by the release
//! `bowmark-cdc migrate`) and RabbitMQ vhost, writes the production-shaped generated dataset
//! (`tests/it/backfill/workload.rs`) with the `mongodb` driver as the app does (children
//! before their report, rate changes, deleted children), and reports:
//! - the broker's limit: persistent messages into a quorum queue with publisher confirms;
//! - catch-up: the daemon stopped while a backlog is written, then restarted: events/s until
//!   the last report's row is committed, and as a share of the broker's limit;
//! - latency from the write of a daily report to its `dim_daily_report` row being visible
//!   (polled every 5 ms), at 100, 1,000 and 5,000 events/s held for 30 s each;
//! - the daemon's CPU µs per event (utime+stime of the process, both roles), its peak (VmHWM)
//!   and steady (median VmRSS) memory, and the queue depth over time.
//!
//! The table goes to stdout, the JSON to `target/e2e-report.json`, the daemon's log to
//! `target/e2e-daemon.log`. Needs the services of
//! `scripts/services.sh` (PostgreSQL 127.0.0.1:5432 trust auth, RabbitMQ guest, `rabbitmqctl`
//! and `psql` on the PATH).

#[path = "../../tests/it/backfill/workload.rs"]
mod workload;

mod load;
mod monitor;
#[path = "../support/process.rs"]
mod process;
mod services;

use std::time::Duration;

use mongodb::Client;
use serde_json::{Value, json};
use tokio::time::Instant;

use load::{Op, Tracker};
use monitor::{Monitor, Phase};
use services::{Daemon, Private, wait_for};

/// Sizes of a run.
struct Plan {
    backlog_reports: usize,
    hold: Duration,
    rates: [f64; 3],
    broker_messages: usize,
}

impl Plan {
    fn from_args() -> Plan {
        if std::env::args().any(|a| a == "--quick") {
            Plan {
                backlog_reports: 1_000,
                hold: Duration::from_secs(5),
                rates: [100.0, 1_000.0, 5_000.0],
                broker_messages: 20_000,
            }
        } else {
            Plan {
                backlog_reports: 6_500,
                hold: Duration::from_secs(30),
                rates: [100.0, 1_000.0, 5_000.0],
                broker_messages: 100_000,
            }
        }
    }

    /// Reports to generate: the backlog, then ~10 events per report at each rate.
    fn reports(&self) -> usize {
        let paced: f64 = self.rates.iter().map(|r| r * self.hold.as_secs_f64()).sum();
        self.backlog_reports + (paced / 9.0) as usize + 100
    }
}

/// How long the daemon's idle CPU is measured.
const IDLE: Duration = Duration::from_secs(5);

/// Size of the broker-limit messages: about a change event of a child with its document.
const BROKER_MESSAGE_BYTES: usize = 1_200;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run(Plan::from_args()));
}

async fn run(plan: Plan) {
    let started = Instant::now();
    let w = workload::Workload::generate(16, workload::Shape::realistic(plan.reports()));
    let (dims, ops) = load::plan(&w);
    let private = Private::create();
    let sim = mongosim::Sim::start().await;
    sim.insert_raw(
        "paving",
        "systems",
        w.collections["systems"].iter().cloned(),
    )
    .expect("systems");
    let client = Client::with_uri_str(sim.uri())
        .await
        .expect("mongodb client");
    let db = client.database("paving");
    let pg = private.pg().await;

    eprintln!("e2e: broker limit ({} messages)", plan.broker_messages);
    let broker = load::broker_limit(
        &private.amqp_uri(),
        plan.broker_messages,
        BROKER_MESSAGE_BYTES,
        1024,
    )
    .await;

    let daemon = Daemon::start(&private, &sim.uri());
    let ready = wait_for(
        Duration::from_secs(60),
        Duration::from_millis(50),
        || async {
            pg.query_opt("SELECT 1 FROM cdc.checkpoint", &[])
                .await
                .is_ok_and(|r| r.is_some())
        },
    )
    .await;
    assert!(ready, "the daemon stored no checkpoint within 60 s");
    let mon = Monitor::connect(&private, &sim).await;

    eprintln!("e2e: dimensions");
    for (coll, docs) in &dims {
        for chunk in docs.chunks(1000) {
            db.collection::<bson::Document>(coll)
                .insert_many(chunk.to_vec())
                .await
                .expect("insert dimensions");
        }
    }
    let employees = w.count("employees") as i64;
    let dims_in = wait_for(
        Duration::from_secs(120),
        Duration::from_millis(100),
        || async {
            pg.query_one("SELECT count(*) FROM dim_employee", &[])
                .await
                .is_ok_and(|r| r.get::<_, i64>(0) == employees)
        },
    )
    .await;
    assert!(dims_in, "dimension rows missing after 120 s");

    // Catch-up: stop, write the backlog, restart, time until the last report's row is in.
    let split = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| matches!(o, Op::Report(_)))
        .nth(plan.backlog_reports - 1)
        .map_or(ops.len(), |(i, _)| i + 1);
    let (backlog, mut rest) = ops.split_at(split);
    daemon.stop();
    eprintln!(
        "e2e: catch-up, writing a backlog of {} events",
        backlog.len()
    );
    load::write_all(&db, backlog).await.expect("write backlog");
    let mut reports_written = plan.backlog_reports as i64;
    let daemon = Daemon::start(&private, &sim.uri());
    let catch_up = mon
        .catch_up(daemon.pid(), &pg, backlog.len(), reports_written)
        .await;

    // The daemon's cost with nothing to do.
    let idle_from = services::sample(daemon.pid(), services::clk_tck());
    tokio::time::sleep(IDLE).await;
    let idle_ms_per_s = (services::sample(daemon.pid(), services::clk_tck()).cpu_us
        - idle_from.cpu_us)
        / 1e3
        / IDLE.as_secs_f64();

    let mut phases = Vec::new();
    for rate in plan.rates {
        eprintln!("e2e: {rate} events/s for {} s", plan.hold.as_secs());
        let tracker = Tracker::default();
        let phase = mon
            .paced(daemon.pid(), &pg, &tracker, rate, plan.hold, || {
                load::write_paced(&db, rest, rate, plan.hold, &tracker)
            })
            .await;
        let written = &rest[..phase.paced.written];
        reports_written += written
            .iter()
            .filter(|o| matches!(o, Op::Report(_)))
            .count() as i64;
        rest = &rest[phase.paced.written..];
        phases.push(phase);
    }
    let count: i64 = pg
        .query_one("SELECT count(*) FROM dim_daily_report", &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(-1);
    let hwm = services::sample(daemon.pid(), services::clk_tck()).hwm_kib;
    daemon.stop();
    mon.close().await;

    let report = json!({
        "quick": plan.hold < Duration::from_secs(30),
        "broker_limit_msgs_per_s": broker.round(),
        "broker_message_bytes": BROKER_MESSAGE_BYTES,
        "catch_up": catch_up.to_json(broker),
        "paced": phases.iter().map(Phase::to_json).collect::<Vec<Value>>(),
        "daemon_peak_rss_mib": hwm as f64 / 1024.0,
        "daemon_idle_cpu_ms_per_s": (idle_ms_per_s * 10.0).round() / 10.0,
        "daily_reports": {"written": reports_written, "in_postgres": count},
        "run_s": started.elapsed().as_secs_f64().round(),
    });
    monitor::print_table(&report, &catch_up, &phases, broker, hwm);
    let path = format!("{}/e2e-report.json", services::target_dir());
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&report).expect("json") + "\n",
    )
    .expect("write the JSON report");
    println!("daemon idle CPU: {idle_ms_per_s:.1} ms/s");
    println!("JSON: {path}");
    drop(sim);
}
