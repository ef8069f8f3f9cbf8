//! Profiling helper (not a benchmark): applies backfill-sized and streaming batches to the
//! database the `project` bench leaves behind (`BENCH_KEEP_DB=1`), with auto_explain on so
//! every statement's plan and timing lands in the PostgreSQL log (PROFILE_EXPLAIN_MS, default
//! 0 = all). Run: `cargo run --example project_profile -- [backfill_batches] [stream_batches]`.

use std::path::Path;
use std::time::Instant;

use bowmark_cdc::config::Pipeline;
use bowmark_cdc::event::Entity;
use bowmark_cdc::project::{self, Lock, SourceDoc, Versions};
use chrono::Utc;
use serde_json::json;
use tokio_postgres::NoTls;

#[path = "../benches/support/project_workload.rs"]
mod workload;
use workload::*;

#[tokio::main]
async fn main() {
    // RUST_LOG=bowmark_cdc::project=debug prints each statement's elapsed time.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let backfills = args.first().copied().unwrap_or(3);
    let streams = args.get(1).copied().unwrap_or(3);
    let reports_per_chunk: u64 = std::env::var("PROFILE_REPORTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(45);
    let stream_size: u64 = std::env::var("PROFILE_STREAM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let db = std::env::var("PROFILE_DB").unwrap_or_else(|_| "cdc_bench_project".into());
    let (mut c, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 user=postgres dbname={db} application_name=project_profile"),
        NoTls,
    )
    .await
    .expect("connect");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let pipeline =
        Pipeline::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline/paving.toml"))
            .expect("pipeline");
    if let Ok(ms) = std::env::var("PROFILE_EXPLAIN_MS") {
        c.batch_execute(&format!(
            "LOAD 'auto_explain'; SET auto_explain.log_min_duration = {ms};
            SET auto_explain.log_analyze = on; SET auto_explain.log_buffers = on;
            SET auto_explain.log_nested_statements = off;"
        ))
        .await
        .expect("auto_explain");
    }
    let row = c
        .query_one(
            "SELECT count(*) FROM cdc.source_doc WHERE entity = 'daily_report'",
            &[],
        )
        .await
        .expect("count");
    let existing: i64 = row.get(0);
    // New report numbers above anything the bench wrote; versions above anything applied.
    let max_t: i64 = c
        .query_one("SELECT COALESCE(max(ct_t), 0) FROM cdc.source_doc", &[])
        .await
        .expect("max")
        .get(0);
    let mut g = Gen {
        t: u32::try_from(max_t).unwrap_or(0) + 1,
    };
    let mut next = 10_000_000 + (Utc::now().timestamp() as u64 % 1_000_000) * 100;
    println!("reports in mirror: {existing}");
    for _ in 0..backfills {
        let docs: Vec<SourceDoc> = (0..reports_per_chunk)
            .flat_map(|_| {
                next += 1;
                g.report(next)
            })
            .collect();
        let t = Instant::now();
        let mut tx = c.transaction().await.expect("begin");
        let st = project::project(
            &mut tx,
            &pipeline,
            &docs,
            Versions::NewerOrEqual,
            Lock::Shared,
        )
        .await
        .expect("apply")
        .stats;
        tx.commit().await.expect("commit");
        let el = t.elapsed();
        println!(
            "backfill {} docs: {:.1} ms ({:.0} docs/s) applied={}",
            docs.len(),
            el.as_secs_f64() * 1e3,
            docs.len() as f64 / el.as_secs_f64(),
            st.applied
        );
    }
    // PROFILE_EMPLOYEE_RATE=n: change employee 0's rates n times (re-costs all its work).
    let rate_changes: u64 = std::env::var("PROFILE_EMPLOYEE_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    for n in 0..rate_changes {
        let rates = json!([{ "date": { "$date": "2022-01-01T00:00:00Z" }, "rate": 30 + n },
                           { "date": { "$date": "2023-06-01T00:00:00Z" }, "rate": 35 + n }]);
        let docs = vec![g.doc(
            Entity::Employee,
            key(3, 0),
            json!({ "name": "E0", "rates": rates }),
        )];
        let t = Instant::now();
        let mut tx = c.transaction().await.expect("begin");
        let st = project::project(&mut tx, &pipeline, &docs, Versions::Newer, Lock::Exclusive)
            .await
            .expect("apply")
            .stats;
        tx.commit().await.expect("commit");
        println!(
            "employee rate change: {:.1} ms, rows written {:?}",
            t.elapsed().as_secs_f64() * 1e3,
            st.rows_written
        );
    }
    let works = (existing as u64).min(2000) * 4;
    for it in 0..streams {
        let docs: Vec<SourceDoc> = (0..stream_size)
            .map(|n| {
                let w = (it * stream_size + n) % works;
                g.doc(
                    Entity::EmployeeWork,
                    key(10, w),
                    json!({
                "employee": oid(&key(3, w % EMPLOYEES)), "jobTitle": "Op",
                "startTime": at(w / 4, 7), "endTime": at(w / 4, 17) }),
                )
            })
            .collect();
        let t = Instant::now();
        let mut tx = c.transaction().await.expect("begin");
        let t_apply = Instant::now();
        let st = project::project(&mut tx, &pipeline, &docs, Versions::Newer, Lock::Exclusive)
            .await
            .expect("apply")
            .stats;
        let apply_ms = t_apply.elapsed().as_secs_f64() * 1e3;
        let t_commit = Instant::now();
        tx.commit().await.expect("commit");
        let commit_ms = t_commit.elapsed().as_secs_f64() * 1e3;
        let el = t.elapsed();
        println!(
            "stream {} updates: {:.1} ms ({:.0} ev/s; apply {apply_ms:.1} ms, commit {commit_ms:.1} ms) applied={}",
            docs.len(),
            el.as_secs_f64() * 1e3,
            docs.len() as f64 / el.as_secs_f64(),
            st.applied
        );
    }
}
