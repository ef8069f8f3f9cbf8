//! Load harness for the projector: fills a private vhost's `cdc.projector` queue with a realistic
//! mix of v1 events (dimensions, daily reports with their work items, shipments and production,
//! invoices, then edits), runs the projector stage in-process against a freshly migrated private
//! database, and reports events/s and the harness process's CPU per event (PostgreSQL's own CPU
//! is not included). Needs the local services (`scripts/services.sh`) and `rabbitmqctl`.
//!
//! ```sh
//! cargo run --example projector_load -- 1000      # daily reports; ~15 events each
//! ```

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bowmark_cdc::config::{Pipeline, Settings};
use bowmark_cdc::event::{ChangeEvent, ClusterTime, Entity, Namespace, Op};
use bowmark_cdc::health::Health;
use bowmark_cdc::projector::ProjectorStage;
use bowmark_cdc::{migrate, runtime, topology};
use chrono::{TimeZone, Utc};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Confirmation};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const EMPLOYEES: u64 = 200;
const VEHICLES: u64 = 60;
const JOBSITES: u64 = 20;
const CREWS: u64 = 10;
const MATERIALS: u64 = 10;
const COMPANIES: u64 = 5;
const JM_PER_JOBSITE: u64 = 2;

fn key(kind: u64, n: u64) -> String {
    format!("{kind:08x}{n:016x}")
}
fn oid(k: &str) -> Value {
    json!({ "$oid": k })
}
fn date(iso: &str) -> Value {
    json!({ "$date": iso })
}

/// The generated stream, in order, with strictly increasing versions.
struct Stream {
    events: Vec<ChangeEvent>,
    t: u32,
}

impl Stream {
    fn push(&mut self, entity: Entity, k: &str, op: Op, doc: Value) {
        self.t += 1;
        let ct = ClusterTime { t: self.t, i: 0 };
        let wall = Utc
            .timestamp_opt(1_764_000_000 + i64::from(self.t), 0)
            .single()
            .unwrap_or_default();
        self.events.push(ChangeEvent {
            v: 1,
            id: ChangeEvent::make_id("paving", ct, 0),
            pipeline: "paving".into(),
            entity,
            op,
            action: op.action(),
            ns: Namespace {
                db: "paving".into(),
                coll: entity.as_str().into(),
            },
            key: k.into(),
            cluster_time: ct,
            ordinal: 0,
            wall_time: wall,
            doc: Some(doc),
            changed: vec![],
            removed: vec![],
            txn: None,
            resume_token: json!({ "_data": format!("{:08X}", self.t) }),
            mongo_id: k.into(),
            timestamp: wall,
        });
    }
}

fn rates(base: u64, n: u64, rate: u64) -> Value {
    json!([
        { "_id": oid(&key(0x99, base + 2 * n)), "date": date("2020-01-01T00:00:00Z"), "rate": rate },
        { "_id": oid(&key(0x99, base + 2 * n + 1)), "date": date("2024-01-01T00:00:00Z"), "rate": rate + 5 }
    ])
}

fn dimensions(s: &mut Stream) {
    for n in 0..COMPANIES {
        let k = key(0x10, n);
        s.push(
            Entity::Company,
            &k,
            Op::Insert,
            json!({ "_id": oid(&k), "name": format!("Company {n}") }),
        );
    }
    for n in 0..MATERIALS {
        let k = key(0x11, n);
        s.push(
            Entity::Material,
            &k,
            Op::Insert,
            json!({ "_id": oid(&k), "name": format!("Material {n}") }),
        );
    }
    for n in 0..CREWS {
        let k = key(0x12, n);
        s.push(Entity::Crew, &k, Op::Insert, json!({ "_id": oid(&k), "name": format!("Crew {n}"), "type": if n % 2 == 0 { "Base" } else { "Paving" } }));
    }
    for n in 0..EMPLOYEES {
        let k = key(0x13, n);
        s.push(Entity::Employee, &k, Op::Insert, json!({ "_id": oid(&k), "name": format!("Employee {n}"), "jobTitle": "Labourer", "rates": rates(0, n, 25 + n % 10) }));
    }
    for n in 0..VEHICLES {
        let k = key(0x14, n);
        s.push(Entity::Vehicle, &k, Op::Insert, json!({ "_id": oid(&k), "name": format!("Unit {n}"), "vehicleCode": format!("U-{n}"), "vehicleType": "Tandem", "rental": false, "sourceCompany": "Bow Mark", "rates": rates(10_000, n, 80 + n % 20) }));
    }
    for j in 0..JOBSITES {
        for m in 0..JM_PER_JOBSITE {
            let n = j * JM_PER_JOBSITE + m;
            let k = key(0x15, n);
            s.push(Entity::JobsiteMaterial, &k, Op::Insert, json!({
                "_id": oid(&k), "material": oid(&key(0x11, n % MATERIALS)), "supplier": oid(&key(0x10, n % COMPANIES)),
                "quantity": 1000, "unit": "tonnes", "costType": "rate", "delivered": false,
                "rates": [{ "_id": oid(&key(0x98, n)), "date": date("2020-01-01T00:00:00Z"), "rate": 10 + m, "estimated": false }],
                "deliveredRates": [], "invoices": [] }));
        }
        let k = key(0x16, j);
        let materials: Vec<Value> = (0..JM_PER_JOBSITE)
            .map(|m| oid(&key(0x15, j * JM_PER_JOBSITE + m)))
            .collect();
        s.push(Entity::Jobsite, &k, Op::Insert, json!({
            "_id": oid(&k), "name": format!("Jobsite {j}"), "jobcode": format!("2026-{j}"), "active": true,
            "materials": materials, "revenueInvoices": [], "expenseInvoices": [],
            "truckingRates": [{ "_id": oid(&key(0x97, j)), "title": "Tandem",
                "rates": [{ "_id": oid(&key(0x96, j)), "date": date("2020-01-01T00:00:00Z"), "rate": 120, "type": "Hour" }] }] }));
    }
}

/// One daily report with 5 employee works, 3 vehicle works, 4 shipments and 1 production.
fn report(s: &mut Stream, r: u64) -> Vec<(Entity, String, Value)> {
    let day = format!("2026-{:02}-{:02}", 1 + (r / 28) % 12, 1 + r % 28);
    let (j, c) = (r % JOBSITES, r % CREWS);
    let mut children = Vec::new();
    let ids =
        |kind: u64, n: u64| -> Vec<String> { (0..n).map(|i| key(kind, r * 10 + i)).collect() };
    let (ew, vw, ms, pr) = (ids(0x20, 5), ids(0x21, 3), ids(0x22, 4), ids(0x23, 1));
    for (i, k) in ew.iter().enumerate() {
        let doc = json!({ "_id": oid(k), "startTime": date(&format!("{day}T07:00:00Z")), "endTime": date(&format!("{day}T15:00:00Z")),
                          "jobTitle": "Paving", "employee": oid(&key(0x13, (r * 5 + i as u64) % EMPLOYEES)) });
        children.push((Entity::EmployeeWork, k.clone(), doc));
    }
    for (i, k) in vw.iter().enumerate() {
        let doc = json!({ "_id": oid(k), "hours": 6, "jobTitle": "Hauling", "vehicle": oid(&key(0x14, (r * 3 + i as u64) % VEHICLES)) });
        children.push((Entity::VehicleWork, k.clone(), doc));
    }
    for (i, k) in ms.iter().enumerate() {
        let jm = key(0x15, j * JM_PER_JOBSITE + (i as u64 % JM_PER_JOBSITE));
        let doc = if i == 3 {
            json!({ "_id": oid(k), "quantity": 3, "noJobsiteMaterial": true, "shipmentType": "Gravel", "supplier": "Local", "unit": "tonnes", "vehicleObject": null })
        } else {
            json!({ "_id": oid(k), "quantity": 5 + i, "noJobsiteMaterial": false, "jobsiteMaterial": oid(&jm),
                    "startTime": date(&format!("{day}T08:00:00Z")), "endTime": date(&format!("{day}T10:00:00Z")),
                    "vehicleObject": { "source": "Company", "vehicleType": "Tandem", "vehicleCode": "T1", "truckingRateId": oid(&key(0x97, j)) } })
        };
        children.push((Entity::MaterialShipment, k.clone(), doc));
    }
    children.push((Entity::Production, pr[0].clone(), json!({ "_id": oid(&pr[0]), "jobTitle": "Paving", "quantity": 150, "unit": "tonnes",
        "startTime": date(&format!("{day}T07:00:00Z")), "endTime": date(&format!("{day}T15:00:00Z")), "description": "Lift 1" })));
    for (e, k, d) in &children {
        s.push(*e, k, Op::Insert, d.clone());
    }
    let list = |v: &[String]| Value::Array(v.iter().map(|k| oid(k)).collect());
    let rk = key(0x24, r);
    s.push(Entity::DailyReport, &rk, Op::Insert, json!({
        "_id": oid(&rk), "date": date(&format!("{day}T07:00:00Z")), "jobsite": oid(&key(0x16, j)), "crew": oid(&key(0x12, c)),
        "approved": true, "payrollComplete": false, "archived": false,
        "employeeWork": list(&ew), "vehicleWork": list(&vw), "production": list(&pr), "materialShipment": list(&ms) }));
    children
}

fn generate(reports: u64) -> (Vec<ChangeEvent>, usize) {
    let mut s = Stream {
        events: Vec::new(),
        t: 1000,
    };
    dimensions(&mut s);
    let mut edits = Vec::new();
    for r in 0..reports {
        let children = report(&mut s, r);
        // One employee work in five is edited later (end time moved an hour).
        if r % 5 == 0 {
            edits.push(children[0].clone());
        }
    }
    for (e, k, mut d) in edits {
        if let Some(end) = d.get_mut("endTime") {
            *end =
                json!({ "$date": end["$date"].as_str().unwrap_or_default().replace("T15", "T16") });
        }
        s.push(e, &k, Op::Update, d);
    }
    let distinct: std::collections::BTreeSet<(Entity, String)> =
        s.events.iter().map(|e| (e.entity, e.key.clone())).collect();
    (s.events, distinct.len())
}

fn rabbitmqctl(args: &[&str]) -> Result<()> {
    let ok = Command::new("rabbitmqctl")
        .args(args)
        .output()?
        .status
        .success();
    if !ok {
        bail!("rabbitmqctl {args:?} failed");
    }
    Ok(())
}

/// User plus system CPU seconds of this process so far (Linux, 100 Hz ticks).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|x| x.1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(11) + tick(12)) / 100.0
}

#[tokio::main]
async fn main() -> Result<()> {
    // Logs only when asked, e.g. RUST_LOG=bowmark_cdc::projector=debug for per-batch lines.
    if std::env::var_os("RUST_LOG").is_some() {
        bowmark_cdc::telemetry::init_logging();
    }
    let reports: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let tag = format!("cdc_load_{}", std::process::id());
    let mut env = BTreeMap::new();
    env.insert("POSTGRES_DB".to_string(), tag.clone());
    env.insert("RABBITMQ_VHOST".to_string(), tag.clone());
    let settings = Settings::resolve(Pipeline::load("pipeline/paving.toml".as_ref())?, &env)?;
    let (admin, admin_conn) = settings
        .postgres
        .with_database("postgres")
        .pg_config()?
        .connect(tokio_postgres::NoTls)
        .await
        .context("connect to PostgreSQL (run scripts/services.sh)")?;
    tokio::spawn(admin_conn);
    admin
        .batch_execute(&format!("CREATE DATABASE \"{tag}\""))
        .await?;
    rabbitmqctl(&["add_vhost", &tag])?;
    rabbitmqctl(&[
        "set_permissions",
        "-p",
        &tag,
        &settings.rabbitmq.user,
        ".*",
        ".*",
        ".*",
    ])?;
    let result = run(&settings, reports).await;
    let _ = rabbitmqctl(&["delete_vhost", &tag]);
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{tag}\" WITH (FORCE)"))
        .await?;
    result
}

async fn run(settings: &Settings, reports: u64) -> Result<()> {
    migrate::run(&settings.postgres).await?;
    let (events, distinct) = generate(reports);
    let bytes: usize = events
        .iter()
        .map(|e| serde_json::to_vec(e).map(|b| b.len()).unwrap_or(0))
        .sum();
    let conn = lapin::Connection::connect(
        settings.rabbitmq.uri().expose(),
        lapin::ConnectionProperties::default(),
    )
    .await?;
    let ch = conn.create_channel().await?;
    topology::declare(&ch, &settings.pipeline).await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let t_pub = Instant::now();
    for chunk in events.chunks(1000) {
        let mut confirms = Vec::with_capacity(chunk.len());
        for e in chunk {
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(e.id.as_str().into());
            confirms.push(
                ch.basic_publish(
                    settings.pipeline.exchange.as_str().into(),
                    e.routing_key().as_str().into(),
                    BasicPublishOptions::default(),
                    &serde_json::to_vec(e)?,
                    props,
                )
                .await?,
            );
        }
        for c in confirms {
            if !matches!(c.await?, Confirmation::Ack(None)) {
                bail!("publish not confirmed");
            }
        }
    }
    println!(
        "queued {} events ({} documents, {:.1} MB) in {:.1} s",
        events.len(),
        distinct,
        bytes as f64 / 1e6,
        t_pub.elapsed().as_secs_f64()
    );

    let pool = runtime::make_pool(settings)?;
    let pg = pool.get().await?;
    let stage = ProjectorStage::new(settings, pool.clone(), Health::default());
    let token = CancellationToken::new();
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let task = tokio::spawn(stage.run(token.clone()));
    loop {
        let n: i64 = pg
            .query_one("SELECT count(*) FROM cdc.source_doc", &[])
            .await?
            .get(0);
        let depth = topology::depth(&ch, &settings.pipeline.queue).await?;
        if n as usize == distinct && depth == 0 {
            break;
        }
        if t0.elapsed() > Duration::from_secs(1800) {
            bail!("not done after 30 min: {n} of {distinct} documents, {depth} queued");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (secs, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    token.cancel();
    task.await??;
    let rows: i64 = pg.query_one("SELECT (SELECT count(*) FROM fact_employee_work) + (SELECT count(*) FROM fact_vehicle_work) \
        + (SELECT count(*) FROM fact_material_shipment) + (SELECT count(*) FROM fact_trucking) + (SELECT count(*) FROM fact_production) \
        + (SELECT count(*) FROM fact_non_costed_material)", &[]).await?.get(0);
    println!(
        "applied {} events in {:.2} s: {:.0} events/s; harness CPU {:.2} s = {:.0} µs/event; {} fact rows",
        events.len(),
        secs,
        events.len() as f64 / secs,
        cpu,
        cpu * 1e6 / events.len() as f64,
        rows
    );
    drop(pg);
    let _ = conn.close(200, "bye".into()).await;
    Ok(())
}
