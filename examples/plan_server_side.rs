//! Measurement (not a benchmark): the projection plan's derivation statements run four ways on
//! the same data: from the client, one round trip per statement (the projector before
//! `cdc.run_plan`); server-side by one PL/pgSQL call (`EXECUTE … USING` in a loop, as
//! `cdc.run_plan` does); from the client as statements prepared once; and from one PL/pgSQL
//! call running statements prepared once (`PREPARE`/`EXECUTE`).
//!
//! It loads a fresh database (`cdc_plan_measure`) with the project bench's workload, then for
//! each streaming batch (PLAN_REPORTS reports with their children, default 5, about 100
//! documents) projects it in a transaction and, before the commit, with the batch's affected
//! set in place, replays every derivation statement of the plan (`src/project/plan.sql`) in a
//! savepoint rolled back afterwards, once each way. Every replay sees the same state and runs
//! the same statements with the same parameters.
//!
//! Run: `cargo run --release --example plan_server_side -- [batches]`. Environment:
//! `PLAN_REPORTS` (reports per batch, default 5); `PLAN_CACHE_MODE` (the session's
//! `plan_cache_mode`, e.g. `force_generic_plan`); `PLAN_EACH=1` (each statement's median time
//! as a client round trip, dearest first; with `PLAN_EACH_PREPARED=1`, as a prepared
//! statement); `PLAN_EXPLAIN=32,36` (`EXPLAIN ANALYZE` of those statements on the first batch).

use std::time::Instant;

use bowmark_cdc::config::Pipeline;
use bowmark_cdc::project::{self, Lock, SourceDoc, Versions};
use chrono::{DateTime, Utc};
use tokio_postgres::types::{ToSql, Type};
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

const RUN_PREPARED: &str = "
CREATE OR REPLACE FUNCTION pg_temp.cdc_run_prepared(n int, tz text, stamp timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. n LOOP
        EXECUTE format('EXECUTE cdc_s%s(%L, %L)', i, tz, stamp);
    END LOOP;
END $$;";

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

/// The ways the statements are run.
#[derive(Clone, Copy)]
enum Way {
    /// From the client, one round trip per statement (the projector before `cdc.run_plan`).
    Client,
    /// One PL/pgSQL call, `EXECUTE … USING` per statement (`cdc.run_plan`).
    Server,
    /// From the client, statements prepared once on the connection.
    Prepared,
    /// One PL/pgSQL call running statements prepared once (`PREPARE` / `EXECUTE`).
    ServerPrepared,
}

const WAYS: [Way; 4] = [Way::Client, Way::Server, Way::Prepared, Way::ServerPrepared];

struct Plan {
    stmts: Vec<String>,
    prepared: Vec<tokio_postgres::Statement>,
}

/// Run the statements one way in a savepoint, roll it back, and return the milliseconds.
async fn replay(
    tx: &Transaction<'_>,
    plan: &Plan,
    way: Way,
    tz: &str,
    stamp: DateTime<Utc>,
    each: &mut [Vec<f64>],
) -> f64 {
    let typed = [
        (&tz as &(dyn ToSql + Sync), Type::TEXT),
        (&stamp, Type::TIMESTAMPTZ),
    ];
    tx.batch_execute("SAVEPOINT replay")
        .await
        .expect("savepoint");
    let t = Instant::now();
    match way {
        Way::Client => {
            // (typed parameters: one round trip per statement, as the projection sends them)
            for (s, each) in plan.stmts.iter().zip(each.iter_mut()) {
                let t = Instant::now();
                tx.query_typed(s, &typed).await.expect("statement");
                if std::env::var_os("PLAN_EACH_PREPARED").is_none() {
                    each.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        Way::Server => {
            tx.query_one(
                "SELECT pg_temp.cdc_run_plan($1, $2, $3)",
                &[&plan.stmts, &tz, &stamp],
            )
            .await
            .expect("plan function");
        }
        Way::Prepared => {
            for (s, each) in plan.prepared.iter().zip(each.iter_mut()) {
                let t = Instant::now();
                tx.query(s, &[&tz, &stamp]).await.expect("statement");
                if std::env::var_os("PLAN_EACH_PREPARED").is_some() {
                    each.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        Way::ServerPrepared => {
            let n = i32::try_from(plan.stmts.len()).expect("a few statements");
            tx.query_one(
                "SELECT pg_temp.cdc_run_prepared($1, $2, $3)",
                &[&n, &tz, &stamp],
            )
            .await
            .expect("prepared plan function");
        }
    }
    let ms = t.elapsed().as_secs_f64() * 1e3;
    tx.batch_execute("ROLLBACK TO SAVEPOINT replay")
        .await
        .expect("rollback");
    ms
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
    if let Ok(mode) = std::env::var("PLAN_CACHE_MODE") {
        c.batch_execute(&format!("SET plan_cache_mode = {mode}"))
            .await
            .expect("plan_cache_mode");
    }
    c.batch_execute(RUN_ALL).await.expect("plan function");
    let mut g = Gen { t: 1 };
    load(&mut c, &pipeline, g.dimensions()).await;
    for chunk in 0..10u64 {
        let docs = (0..50).flat_map(|r| g.report(chunk * 50 + r)).collect();
        load(&mut c, &pipeline, docs).await;
    }
    c.batch_execute(RUN_PREPARED).await.expect("function");
    let mut prepared = Vec::new();
    for (i, s) in stmts.iter().enumerate() {
        c.batch_execute(&format!("PREPARE cdc_s{}(text, timestamptz) AS {s}", i + 1))
            .await
            .expect("PREPARE");
        prepared.push(
            c.prepare_typed(s, &[Type::TEXT, Type::TIMESTAMPTZ])
                .await
                .expect("prepare"),
        );
    }
    let plan = Plan { stmts, prepared };
    let mut took: [Vec<f64>; 4] = Default::default();
    let mut rtt = vec![];
    let mut each: Vec<Vec<f64>> = vec![Vec::new(); plan.stmts.len()];
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
        // (each batch starts with another way: none always runs first)
        for k in 0..WAYS.len() {
            let w = (k + b as usize) % WAYS.len();
            took[w].push(replay(&tx, &plan, WAYS[w], &tz, stamp, &mut each).await);
        }
        if let (Some(n), 0) = (std::env::var("PLAN_EXPLAIN").ok(), b) {
            for n in n.split(',').filter_map(|n| n.parse::<usize>().ok()) {
                tx.batch_execute("SAVEPOINT explain")
                    .await
                    .expect("savepoint");
                let typed = [
                    (&tz as &(dyn ToSql + Sync), Type::TEXT),
                    (&stamp, Type::TIMESTAMPTZ),
                ];
                let rows = tx
                    .query_typed(
                        &format!("EXPLAIN (ANALYZE, BUFFERS) {}", plan.stmts[n]),
                        &typed,
                    )
                    .await
                    .expect("explain");
                for r in rows {
                    println!("{}", r.get::<_, String>(0));
                }
                tx.batch_execute("ROLLBACK TO SAVEPOINT explain")
                    .await
                    .expect("rollback");
            }
        }
        let t = Instant::now();
        for _ in 0..plan.stmts.len() {
            tx.query_typed("SELECT 1", &[]).await.expect("select 1");
        }
        rtt.push(t.elapsed().as_secs_f64() * 1e3);
        tx.commit().await.expect("commit");
    }
    let [client, server, prepared, server_prepared] = took.map(median);
    if std::env::var_os("PLAN_EACH").is_some() {
        // Each statement's median as a client round trip, dearest first, with its first line.
        let mut rows: Vec<(f64, usize)> = each.into_iter().map(median).zip(0..).collect();
        rows.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (ms, i) in rows {
            let head: String = plan.stmts[i]
                .split_whitespace()
                .take(12)
                .collect::<Vec<_>>()
                .join(" ");
            println!("{ms:7.2} ms  #{i:2}  {head}");
        }
    }
    println!(
        "{batches} batches of {docs_per_batch} documents; {} derivation statements each",
        plan.stmts.len()
    );
    println!("client round trips (before cdc.run_plan): median {client:.2} ms per batch");
    println!("one PL/pgSQL call (cdc.run_plan): median {server:.2} ms per batch");
    println!("client round trips, statements prepared once: median {prepared:.2} ms per batch");
    println!(
        "one PL/pgSQL call over statements prepared once: median {server_prepared:.2} ms per batch"
    );
    println!(
        "cdc.run_plan against the client: {:+.1} %; {} bare round trips (SELECT 1): median {:.2} ms",
        (server - client) / client * 100.0,
        plan.stmts.len(),
        median(rtt)
    );
}
