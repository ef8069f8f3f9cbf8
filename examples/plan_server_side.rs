//! Measurement (not a benchmark): the projection plan run from the client, one round trip per
//! statement as the projector does, against the same statements run server-side by one
//! PL/pgSQL call (`EXECUTE … USING` in a loop), on the same data.
//!
//! It loads a fresh database (`cdc_plan_measure`) with the project bench's workload, then for
//! each streaming batch (PLAN_REPORTS reports with their children, default 5, about 100
//! documents) projects it in a transaction and, before the commit, with the batch's affected
//! set in place, replays every derivation statement of the plan (`src/project/plan.sql`) in a
//! savepoint rolled back afterwards: once from the client, once from PL/pgSQL. Both replays see
//! the same state and run the same statements with the same parameters.
//!
//! Run: `cargo run --release --example plan_server_side -- [batches]`.

use std::time::{Duration, Instant};

use bowmark_cdc::config::Pipeline;
use bowmark_cdc::project::{self, Lock, SourceDoc, Versions};
use chrono::{DateTime, Utc};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Transaction};

#[path = "../benches/support/project_workload.rs"]
mod workload;
use workload::*;

/// The derivation statements of the committed plan, in order.
fn derivation_statements() -> Vec<String> {
    let plan = include_str!("../src/project/plan.sql");
    let derivation = plan
        .split("-- ===== derivation =====")
        .nth(1)
        .expect("the plan has a derivation section");
    derivation
        .split("-- @step ")
        .skip(1)
        .map(|step| {
            step.lines()
                .skip(1)
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|sql| !sql.trim().is_empty())
        .collect()
}

const RUN_ALL: &str = "
CREATE OR REPLACE FUNCTION pg_temp.cdc_run_plan(stmts text[], tz text, stamp timestamptz)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE s text; n bigint; total bigint := 0;
BEGIN
    FOREACH s IN ARRAY stmts LOOP
        EXECUTE s USING tz, stamp;
        GET DIAGNOSTICS n = ROW_COUNT;
        total := total + n;
    END LOOP;
    RETURN total;
END $$;";

async fn client_side(
    c: &Transaction<'_>,
    stmts: &[String],
    tz: &str,
    stamp: DateTime<Utc>,
) -> Duration {
    let t = Instant::now();
    // (typed parameters: one round trip per statement, as the projection sends them)
    for s in stmts {
        c.query_typed(s, &[(&tz, Type::TEXT), (&stamp, Type::TIMESTAMPTZ)])
            .await
            .expect("statement");
    }
    t.elapsed()
}

async fn server_side(
    c: &Transaction<'_>,
    stmts: &[String],
    tz: &str,
    stamp: DateTime<Utc>,
) -> Duration {
    let t = Instant::now();
    c.query_one(
        "SELECT pg_temp.cdc_run_plan($1, $2, $3)",
        &[&stmts, &tz, &stamp],
    )
    .await
    .expect("plan function");
    t.elapsed()
}

/// Load `docs` as the backfill does, and commit.
async fn load(c: &mut Client, pipeline: &Pipeline, docs: Vec<SourceDoc>) {
    let mut tx = c.transaction().await.expect("begin");
    project::project(
        &mut tx,
        pipeline,
        &docs,
        Versions::NewerOrEqual,
        Lock::Shared,
    )
    .await
    .expect("load");
    tx.commit().await.expect("commit");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let batches: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(30);
    let per_batch: u64 = std::env::var("PLAN_REPORTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let pipeline = Pipeline::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline/paving.toml"),
    )
    .expect("pipeline");
    let tz = pipeline.report_timezone.name().to_string();
    // (the context and adjustment scratch tables are emptied first, as at the start of every
    // apply: the replay fills them again)
    let stmts: Vec<String> = [
        "DELETE FROM pg_temp.cdc_ctx".to_string(),
        "DELETE FROM pg_temp.cdc_adjusted".to_string(),
    ]
    .into_iter()
    .chain(derivation_statements())
    .collect();
    let mut c = fresh_db("cdc_plan_measure").await;
    c.batch_execute(RUN_ALL).await.expect("plan function");
    let mut g = Gen { t: 1 };
    load(&mut c, &pipeline, g.dimensions()).await;
    for chunk in 0..10u64 {
        let docs = (0..50).flat_map(|r| g.report(chunk * 50 + r)).collect();
        load(&mut c, &pipeline, docs).await;
    }
    let (mut rt_client, mut rt_server, mut rtt) = (vec![], vec![], vec![]);
    let mut docs_per_batch = 0;
    for b in 0..batches as u64 {
        // Edits of existing reports and their children: a streaming batch.
        let docs: Vec<SourceDoc> = (0..per_batch)
            .flat_map(|r| g.report((b * per_batch + r) % 500))
            .collect();
        docs_per_batch = docs.len();
        let mut tx = c.transaction().await.expect("begin");
        project::project(&mut tx, &pipeline, &docs, Versions::Newer, Lock::Exclusive)
            .await
            .expect("apply");
        let stamp = Utc::now();
        for server in [b % 2 == 0, b % 2 == 1] {
            tx.batch_execute("SAVEPOINT replay")
                .await
                .expect("savepoint");
            let took = if server {
                server_side(&tx, &stmts, &tz, stamp).await
            } else {
                client_side(&tx, &stmts, &tz, stamp).await
            };
            tx.batch_execute("ROLLBACK TO SAVEPOINT replay")
                .await
                .expect("rollback");
            let ms = took.as_secs_f64() * 1e3;
            if server {
                rt_server.push(ms);
            } else {
                rt_client.push(ms);
            }
        }
        let t = Instant::now();
        for _ in 0..stmts.len() {
            tx.query_typed("SELECT 1", &[]).await.expect("select 1");
        }
        rtt.push(t.elapsed().as_secs_f64() * 1e3);
        tx.commit().await.expect("commit");
    }
    let (client, server) = (median(rt_client), median(rt_server));
    println!(
        "{batches} batches of {docs_per_batch} documents; {} derivation statements each",
        stmts.len()
    );
    println!("client round trips (today):   median {client:.2} ms per batch");
    println!("one PL/pgSQL call (cdc.project): median {server:.2} ms per batch");
    println!(
        "difference: {:.2} ms ({:+.1} %); {} bare round trips (SELECT 1): median {:.2} ms",
        client - server,
        (server - client) / client * 100.0,
        stmts.len(),
        median(rtt)
    );
}
