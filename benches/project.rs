//! Projection throughput against a real PostgreSQL (127.0.0.1:5432, user postgres, or
//! TEST_POSTGRES_HOST/PORT/USER): documents per second through `project::project` for a
//! backfill-sized batch (500 new documents of a realistic mix) and for streaming batches of
//! 1 and 100 updates. Run: `cargo bench --bench project`.

use std::path::Path;
use std::time::{Duration, Instant};

use bowmark_cdc::config::Pipeline;
use bowmark_cdc::event::Entity;
use bowmark_cdc::project::{self, Lock, SourceDoc, Versions};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use tokio_postgres::Client;

#[path = "support/project_workload.rs"]
mod workload;
use workload::*;

/// One batch through the projection's entry point: the backfill's version rule and lock
/// (`Versions::NewerOrEqual`) or the projector's (`Versions::Newer`).
async fn apply(c: &mut Client, p: &Pipeline, docs: &[SourceDoc], versions: Versions) -> Duration {
    let lock = match versions {
        Versions::Newer => Lock::Exclusive,
        Versions::NewerOrEqual => Lock::Shared,
    };
    let start = Instant::now();
    let mut tx = c.transaction().await.expect("begin");
    project::project(&mut tx, p, docs, versions, lock)
        .await
        .expect("apply");
    tx.commit().await.expect("commit");
    start.elapsed()
}

struct Loader<'a> {
    rt: &'a tokio::runtime::Runtime,
    pipeline: &'a Pipeline,
}

impl Loader<'_> {
    /// Load `n` more reports after `next`, 50 per call; the i-th employee work of report r is
    /// by employee `employee(r, i)`.
    fn reports(
        &mut self,
        c: &mut Client,
        g: &mut Gen,
        next: &mut u64,
        n: u64,
        employee: impl Fn(u64, u64) -> u64,
    ) {
        for _ in 0..n / 50 {
            let docs: Vec<SourceDoc> = (0..50)
                .flat_map(|_| {
                    *next += 1;
                    let r = *next;
                    g.report_by(r, |i| employee(r, i))
                })
                .collect();
            self.rt
                .block_on(apply(c, self.pipeline, &docs, Versions::NewerOrEqual));
        }
    }
}

fn bench(cr: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pipeline =
        Pipeline::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline/paving.toml"))
            .expect("pipeline");
    let mut c = rt.block_on(fresh_db("cdc_bench_project"));
    let mut g = Gen { t: 0 };
    let dims = g.dimensions();
    rt.block_on(apply(&mut c, &pipeline, &dims, Versions::NewerOrEqual));
    // A base of 2,000 reports (22,000 documents) so lookups run against a populated mirror.
    let mut next_report = 0u64;
    let base: u64 = std::env::var("BENCH_BASE_REPORTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let mut load = Loader {
        rt: &rt,
        pipeline: &pipeline,
    };
    load.reports(&mut c, &mut g, &mut next_report, base, |r, i| {
        (r + i) % EMPLOYEES
    });
    let mut group = cr.benchmark_group("project_apply");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));

    // Backfill: 500 new documents per call (45 reports and their children, ~495 docs).
    group.throughput(Throughput::Elements(495));
    group.bench_function("backfill_batch_495_docs", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let docs: Vec<SourceDoc> = (0..45)
                    .flat_map(|_| {
                        next_report += 1;
                        g.report(next_report)
                    })
                    .collect();
                total += rt.block_on(apply(&mut c, &pipeline, &docs, Versions::NewerOrEqual));
            }
            total
        })
    });

    // Streaming: updates of existing children (re-timed employee work), 1 and 100 per batch.
    for size in [1u64, 100] {
        group.throughput(Throughput::Elements(size));
        group.bench_function(format!("stream_batch_{size}_updates"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for it in 0..iters {
                    let docs: Vec<SourceDoc> = (0..size)
                        .map(|n| {
                            let w = (it * size + n) % (next_report * 4);
                            g.doc(
                                Entity::EmployeeWork,
                                key(10, w),
                                json!({
                            "employee": oid(&key(3, w % EMPLOYEES)), "jobTitle": "Op",
                            "startTime": at(w / 4, 7), "endTime": at(w / 4, 16) }),
                            )
                        })
                        .collect();
                    total += rt.block_on(apply(&mut c, &pipeline, &docs, Versions::Newer));
                }
                total
            })
        });
    }
    group.finish();

    // The law's costliest propagation: a rate change of an employee with 10,000 work rows
    // (2,500 more reports whose 4 employee works are all by that employee).
    let heavy = EMPLOYEES - 1;
    load.reports(&mut c, &mut g, &mut next_report, 2500, |_, _| heavy);
    let mut group = cr.benchmark_group("project_rate_change");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(10_000));
    let mut rate = 40u64;
    group.bench_function("employee_with_10000_work_rows", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                rate += 1;
                let rates = json!([{ "date": { "$date": "2022-01-01T00:00:00Z" }, "rate": rate },
                                   { "date": { "$date": "2023-06-01T00:00:00Z" }, "rate": rate + 5 }]);
                let docs = vec![g.doc(
                    Entity::Employee,
                    key(3, heavy),
                    json!({ "name": format!("E{heavy}"), "rates": rates }),
                )];
                total += rt.block_on(apply(&mut c, &pipeline, &docs, Versions::Newer));
            }
            total
        })
    });
    group.finish();
    drop(c);
    if std::env::var_os("BENCH_KEEP_DB").is_some() {
        return;
    }
    rt.block_on(async {
        let admin = connect("postgres").await;
        let _ = admin
            .batch_execute("DROP DATABASE IF EXISTS cdc_bench_project WITH (FORCE)")
            .await;
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
