//! Projection throughput against a real PostgreSQL (127.0.0.1:5432, user postgres, or
//! TEST_POSTGRES_HOST/PORT/USER): documents per second through `project::apply` for a
//! backfill-sized batch (500 new documents of a realistic mix) and for streaming batches of
//! 1 and 100 updates. Run: `cargo bench --bench project`.

use std::path::Path;
use std::time::{Duration, Instant};

use bowmark_cdc::config::Pipeline;
use bowmark_cdc::event::{ClusterTime, Entity, Version};
use bowmark_cdc::project::{self, Guard, SourceDoc};
use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use tokio_postgres::{Client, NoTls};

const EMPLOYEES: u64 = 50;
const VEHICLES: u64 = 20;
const JOBSITES: u64 = 10;
const CREWS: u64 = 5;
const JMS: u64 = 20;

fn key(kind: u64, n: u64) -> String {
    format!("{kind:04x}{n:020x}")
}

fn oid(k: &str) -> Value {
    json!({ "$oid": k })
}

fn day(n: u64) -> Value {
    let d = chrono::NaiveDate::from_ymd_opt(2023, 1, 1).unwrap_or_default()
        + chrono::Days::new(n % 365);
    json!({ "$date": format!("{d}T07:00:00Z") })
}

fn at(n: u64, hour: u64) -> Value {
    let d = chrono::NaiveDate::from_ymd_opt(2023, 1, 1).unwrap_or_default()
        + chrono::Days::new(n % 365);
    json!({ "$date": format!("{d}T{:02}:00:00Z", hour % 24) })
}

struct Gen {
    t: u32,
}

impl Gen {
    fn doc(&mut self, entity: Entity, key: String, doc: Value) -> SourceDoc {
        self.t += 1;
        SourceDoc {
            entity,
            key,
            version: Version {
                cluster_time: ClusterTime { t: self.t, i: 0 },
                ordinal: 0,
            },
            wall_time: Utc::now(),
            doc: Some(doc),
            deleted: false,
        }
    }

    fn dimensions(&mut self) -> Vec<SourceDoc> {
        let rates = json!([{ "date": { "$date": "2022-01-01T00:00:00Z" }, "rate": 30 },
                           { "date": { "$date": "2023-06-01T00:00:00Z" }, "rate": 35 }]);
        let mut out = vec![
            self.doc(Entity::Material, key(1, 0), json!({ "name": "Gravel" })),
            self.doc(Entity::Company, key(2, 0), json!({ "name": "Supplier" })),
        ];
        for n in 0..EMPLOYEES {
            out.push(self.doc(
                Entity::Employee,
                key(3, n),
                json!({ "name": format!("E{n}"), "rates": rates }),
            ));
        }
        for n in 0..VEHICLES {
            out.push(self.doc(
                Entity::Vehicle,
                key(4, n),
                json!({ "name": format!("V{n}"), "vehicleCode": "X", "rates": rates }),
            ));
        }
        for n in 0..CREWS {
            out.push(self.doc(
                Entity::Crew,
                key(5, n),
                json!({ "name": format!("C{n}"), "type": "Paving" }),
            ));
        }
        for n in 0..JMS {
            let cost_type = if n % 4 == 0 { "invoice" } else { "rate" };
            out.push(self.doc(
                Entity::JobsiteMaterial,
                key(6, n),
                json!({
                "material": oid(&key(1, 0)), "supplier": oid(&key(2, 0)), "quantity": 100,
                "unit": "t", "costType": cost_type, "rates": rates, "invoices": [] }),
            ));
        }
        for n in 0..JOBSITES {
            let materials: Vec<Value> = (0..JMS)
                .filter(|m| m % JOBSITES == n)
                .map(|m| oid(&key(6, m)))
                .collect();
            out.push(self.doc(Entity::Jobsite, key(7, n), json!({
                "name": format!("J{n}"), "active": true, "materials": materials,
                "truckingRates": [{ "_id": oid(&key(8, n)), "title": "Tandem",
                    "rates": [{ "date": { "$date": "2022-01-01T00:00:00Z" }, "rate": 120, "type": "Hour" }] }] })));
        }
        out
    }

    /// One daily report with 4 employee works, 2 vehicle works, 3 shipments, 1 production:
    /// 11 documents.
    fn report(&mut self, r: u64) -> Vec<SourceDoc> {
        let ew: Vec<String> = (0..4).map(|i| key(10, r * 4 + i)).collect();
        let vw: Vec<String> = (0..2).map(|i| key(11, r * 2 + i)).collect();
        let ms: Vec<String> = (0..3).map(|i| key(12, r * 3 + i)).collect();
        let pr = key(13, r);
        let mut out = Vec::new();
        for (i, k) in ew.iter().enumerate() {
            out.push(self.doc(
                Entity::EmployeeWork,
                k.clone(),
                json!({
                "employee": oid(&key(3, (r + i as u64) % EMPLOYEES)), "jobTitle": "Op",
                "startTime": at(r, 7), "endTime": at(r, 15 + i as u64) }),
            ));
        }
        for k in &vw {
            out.push(self.doc(
                Entity::VehicleWork,
                k.clone(),
                json!({ "vehicle": oid(&key(4, r % VEHICLES)), "hours": 6.5 }),
            ));
        }
        for (i, k) in ms.iter().enumerate() {
            out.push(self.doc(Entity::MaterialShipment, k.clone(), json!({
                "quantity": 12.5, "jobsiteMaterial": oid(&key(6, (r + i as u64) % JMS)),
                "startTime": at(r, 8), "endTime": at(r, 10),
                "vehicleObject": { "truckingRateId": oid(&key(8, r % JOBSITES)), "vehicleType": "Tandem" } })));
        }
        out.push(self.doc(Entity::Production, pr.clone(), json!({
            "jobTitle": "Paving", "quantity": 150, "unit": "t", "startTime": at(r, 7), "endTime": at(r, 15) })));
        let ids = |ks: &[String]| Value::Array(ks.iter().map(|k| oid(k)).collect());
        out.push(self.doc(
            Entity::DailyReport,
            key(14, r),
            json!({
            "date": day(r), "jobsite": oid(&key(7, r % JOBSITES)), "crew": oid(&key(5, r % CREWS)),
            "approved": true, "employeeWork": ids(&ew), "vehicleWork": ids(&vw),
            "materialShipment": ids(&ms), "production": [oid(&pr)] }),
        ));
        out
    }
}

async fn connect(db: &str) -> Client {
    let host = std::env::var("TEST_POSTGRES_HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("TEST_POSTGRES_PORT").unwrap_or_else(|_| "5432".into());
    let user = std::env::var("TEST_POSTGRES_USER").unwrap_or_else(|_| "postgres".into());
    let (c, conn) = tokio_postgres::connect(
        &format!("host={host} port={port} user={user} dbname={db}"),
        NoTls,
    )
    .await
    .expect("connect to PostgreSQL");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    c
}

async fn fresh_db(name: &str) -> Client {
    let admin = connect("postgres").await;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .expect("drop db");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create db");
    let c = connect(name).await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("migrations")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    for f in files {
        c.batch_execute(&std::fs::read_to_string(f).expect("sql"))
            .await
            .expect("migration");
    }
    c
}

async fn apply(c: &mut Client, p: &Pipeline, docs: &[SourceDoc], guard: Guard) -> Duration {
    let start = Instant::now();
    let tx = c.transaction().await.expect("begin");
    project::apply(&tx, p, docs, guard).await.expect("apply");
    tx.commit().await.expect("commit");
    start.elapsed()
}

fn bench(cr: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pipeline =
        Pipeline::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline/paving.toml"))
            .expect("pipeline");
    let mut c = rt.block_on(fresh_db("cdc_bench_project"));
    let mut g = Gen { t: 0 };
    let dims = g.dimensions();
    rt.block_on(apply(&mut c, &pipeline, &dims, Guard::NewerOrEqual));
    // A base of 2,000 reports (22,000 documents) so lookups run against a populated mirror.
    let mut next_report = 0u64;
    let base: u64 = std::env::var("BENCH_BASE_REPORTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    for _ in 0..base / 50 {
        let docs: Vec<SourceDoc> = (0..50)
            .flat_map(|_| {
                next_report += 1;
                g.report(next_report)
            })
            .collect();
        rt.block_on(apply(&mut c, &pipeline, &docs, Guard::NewerOrEqual));
    }
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
                total += rt.block_on(apply(&mut c, &pipeline, &docs, Guard::NewerOrEqual));
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
                    total += rt.block_on(apply(&mut c, &pipeline, &docs, Guard::Newer));
                }
                total
            })
        });
    }
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
