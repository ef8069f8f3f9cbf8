//! A linked Bow-Mark workload as `SourceDoc`s (dimensions, daily reports with their children,
//! edits), and a freshly migrated database to apply it to; shared by `benches/project.rs`,
//! `examples/project_profile.rs` and `examples/plan_server_side.rs`.

#![allow(dead_code)]

use bowmark_cdc::event::{ClusterTime, Entity, Version};
use bowmark_cdc::project::SourceDoc;
use chrono::Utc;
use serde_json::{Value, json};
use tokio_postgres::{Client, NoTls};

pub const EMPLOYEES: u64 = 50;
pub const VEHICLES: u64 = 20;
pub const JOBSITES: u64 = 10;
pub const CREWS: u64 = 5;
pub const JMS: u64 = 20;

pub fn key(kind: u64, n: u64) -> String {
    format!("{kind:04x}{n:020x}")
}

pub fn oid(k: &str) -> Value {
    json!({ "$oid": k })
}

pub fn day(n: u64) -> Value {
    let d = chrono::NaiveDate::from_ymd_opt(2023, 1, 1).unwrap_or_default()
        + chrono::Days::new(n % 365);
    json!({ "$date": format!("{d}T07:00:00Z") })
}

pub fn at(n: u64, hour: u64) -> Value {
    let d = chrono::NaiveDate::from_ymd_opt(2023, 1, 1).unwrap_or_default()
        + chrono::Days::new(n % 365);
    json!({ "$date": format!("{d}T{:02}:00:00Z", hour % 24) })
}

pub struct Gen {
    pub t: u32,
}

impl Gen {
    pub fn doc(&mut self, entity: Entity, key: String, doc: Value) -> SourceDoc {
        self.t += 1;
        SourceDoc {
            entity,
            key,
            version: Version {
                cluster_time: ClusterTime { t: self.t, i: 0 },
                ordinal: 0,
            },
            wall_time: Utc::now(),
            doc: Some(bowmark_cdc::project::doc_json(&doc)),
            deleted: false,
        }
    }

    pub fn dimensions(&mut self) -> Vec<SourceDoc> {
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
    pub fn report(&mut self, r: u64) -> Vec<SourceDoc> {
        self.report_by(r, |i| (r + i) % EMPLOYEES)
    }

    /// [`Gen::report`] whose `i`-th employee work is by employee `employee(i)`.
    pub fn report_by(&mut self, r: u64, employee: impl Fn(u64) -> u64) -> Vec<SourceDoc> {
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
                "employee": oid(&key(3, employee(i as u64))), "jobTitle": "Op",
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

/// A connection to `db` (127.0.0.1:5432, user postgres, or TEST_POSTGRES_HOST/PORT/USER).
pub async fn connect(db: &str) -> Client {
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

/// A new, migrated database `name` (dropped first if it exists).
pub async fn fresh_db(name: &str) -> Client {
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
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
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
