//! THE LAW (docs/architecture.md) as a property: random create/update/delete histories over a small
//! universe of linked documents, streamed with duplicates and stale re-deliveries, end in the
//! same star rows as a fresh database given only the final state of each document.
//! Rows compare by natural key and content (surrogate ids and synced_at ignored, FK uuids
//! mapped back to mongo ids); archived rows that only the streamed database holds are allowed.

use std::collections::BTreeMap;

use bowmark_cdc::event::Entity;
use bowmark_cdc::project::{SourceDoc, Versions};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use serde_json::{Value, json};

use super::Harness;
use super::seed::{date, delete, oid, oids, upsert};

use crate::support::star_tables;

const J: [&str; 2] = ["7000000000000000000000a1", "7000000000000000000000a2"];
const TR: [&str; 2] = ["7000000000000000000000b1", "7000000000000000000000b2"];
const C: [&str; 2] = ["7000000000000000000000c1", "7000000000000000000000c2"];
const E: [&str; 2] = ["7000000000000000000000d1", "7000000000000000000000d2"];
const V: &str = "7000000000000000000000e1";
const M: &str = "7000000000000000000000f1";
const S: &str = "700000000000000000000101";
const JM: &str = "700000000000000000000201";
const I: [&str; 2] = ["700000000000000000000501", "700000000000000000000502"];
const R: [&str; 3] = [
    "700000000000000000000301",
    "700000000000000000000302",
    "700000000000000000000303",
];
const EW: [&str; 2] = ["700000000000000000000401", "700000000000000000000402"];
const VW: &str = "700000000000000000000403";
const MS: [&str; 3] = [
    "700000000000000000000404",
    "700000000000000000000405",
    "700000000000000000000406",
];
const P: &str = "700000000000000000000407";

/// Every document of the universe: (entity, key). Indexes below 12 are never deleted.
fn universe() -> Vec<(Entity, &'static str)> {
    vec![
        (Entity::Jobsite, J[0]),
        (Entity::Jobsite, J[1]),
        (Entity::Crew, C[0]),
        (Entity::Crew, C[1]),
        (Entity::Employee, E[0]),
        (Entity::Employee, E[1]),
        (Entity::Vehicle, V),
        (Entity::Material, M),
        (Entity::Company, S),
        (Entity::JobsiteMaterial, JM),
        (Entity::Invoice, I[0]),
        (Entity::Invoice, I[1]),
        (Entity::DailyReport, R[0]),
        (Entity::DailyReport, R[1]),
        (Entity::DailyReport, R[2]),
        (Entity::EmployeeWork, EW[0]),
        (Entity::EmployeeWork, EW[1]),
        (Entity::VehicleWork, VW),
        (Entity::MaterialShipment, MS[0]),
        (Entity::MaterialShipment, MS[1]),
        (Entity::MaterialShipment, MS[2]),
        (Entity::Production, P),
    ]
}
/// Every document may be deleted: dimensions too (their rows are archived or kept, never
/// cascaded), which leaves dangling references as production has them.
const FIRST_DELETABLE: usize = 0;
/// Keys no document of the universe has: references to them dangle from the start (a deleted
/// crew, employee, material, company or jobsite material, as ~3 % of production reports have).
const GONE_CREW: &str = "7000000000000000000000c9";
const GONE_EMPLOYEE: &str = "7000000000000000000000d9";
const GONE_JM: &str = "700000000000000000000209";
const GONE_MATERIAL: &str = "7000000000000000000000f9";
const GONE_COMPANY: &str = "700000000000000000000109";

/// Free text as production holds it, by variant: ordinary, over-long and padded (wider than
/// any legacy column), empty, or missing (`None`).
fn text(v: u32, ordinary: &str) -> Option<String> {
    match v % 6 {
        1 => Some(format!("{} {}", ordinary.repeat(40), " ".repeat(30))),
        2 => Some(String::new()),
        3 => None,
        _ => Some(ordinary.to_string()),
    }
}

/// A number as the app stores it, by variant: int, double, Decimal128, or NaN.
fn number(v: u32, n: u32) -> Value {
    match v % 7 {
        1 => json!(f64::from(n) + 0.25),
        2 => json!({ "$numberDecimal": format!("{n}.50") }),
        5 => json!({ "$numberDouble": "NaN" }),
        _ => json!(n),
    }
}

/// Set `field` to `text(v, ordinary)`, or leave it out when that is missing.
fn set_text(doc: &mut Value, field: &str, v: u32, ordinary: &str) {
    if let Some(t) = text(v, ordinary) {
        doc[field] = json!(t);
    }
}
const CHILDREN: [(&str, &str); 7] = [
    ("employeeWork", EW[0]),
    ("employeeWork", EW[1]),
    ("vehicleWork", VW),
    ("materialShipment", MS[0]),
    ("materialShipment", MS[1]),
    ("materialShipment", MS[2]),
    ("production", P),
];

fn d(day: &str, time: &str) -> Value {
    date(&format!("{day}T{time}Z"))
}

/// The document of `key` in variant `v` (children of a report picked by `mask`).
fn make(entity: Entity, key: &str, v: u8, mask: u8) -> Value {
    let v = u32::from(v);
    let mut doc = match entity {
        Entity::Jobsite => {
            let n = usize::from(key == J[1]);
            json!({
                "name": text(v / 2, &format!("Jobsite {n} v{v}")), "jobcode": text(v, &format!("J-{n}")),
                "active": v % 5 != 0,
                "materials": if v % 2 == n as u32 { oids(&[JM]) } else { json!([]) },
                "revenueInvoices": if v % 3 == 0 { oids(&[I[0]]) } else { json!([]) },
                "expenseInvoices": if v % 3 == 1 { oids(&[I[1]]) } else { json!([]) },
                "truckingRates": [{ "_id": oid(TR[n]), "title": format!("Tandem {n}"), "rates": [
                    { "_id": oid("7000000000000000000009a1"), "date": d("2022-01-01", "00:00:00"),
                      "rate": 100 + 10 * (v % 3), "type": if v % 2 == 0 { "Hour" } else { "Quantity" } },
                    { "_id": oid("7000000000000000000009a2"), "date": d("2022-03-01", "00:00:00"),
                      "rate": 150, "type": "Hour" }]}]
            })
        }
        Entity::Crew => {
            let mut c = json!({ "name": key });
            set_text(
                &mut c,
                "type",
                v,
                ["Base", "Paving", "Form/Line Setting"][(v % 3) as usize],
            );
            c
        }
        Entity::Employee => {
            // Two rates on one date (same instant or not), in either order.
            let same_day = if v % 2 == 0 { "00:00:00" } else { "13:00:00" };
            let mut rates = vec![
                json!({ "_id": oid("7000000000000000000009b1"), "date": d("2022-01-01", "00:00:00"), "rate": number(v, 20 + v % 7) }),
                json!({ "_id": oid("7000000000000000000009b3"), "date": d("2022-01-01", same_day), "rate": 33 }),
                json!({ "_id": oid("7000000000000000000009b2"), "date": d("2022-03-01", "00:00:00"), "rate": 40 }),
            ];
            if v % 3 == 0 {
                rates.swap(0, 1);
            }
            let mut e =
                json!({ "name": key, "rates": if v % 4 == 3 { json!([]) } else { json!(rates) } });
            set_text(&mut e, "jobTitle", v, "Operator");
            e
        }
        Entity::Vehicle => {
            let mut t = json!({ "name": "Truck",
                "rates": [{ "_id": oid("7000000000000000000009c1"), "date": d("2022-01-01", "00:00:00"), "rate": 80 + v % 9 }] });
            set_text(&mut t, "vehicleCode", v, "T-1");
            set_text(&mut t, "vehicleType", v / 2, "Tandem");
            t
        }
        Entity::Material => json!({ "name": format!("Gravel v{v}") }),
        Entity::Company => json!({ "name": "Supplier" }),
        Entity::JobsiteMaterial => json!({
            "material": oid(if v % 5 == 4 { GONE_MATERIAL } else { M }),
            "supplier": oid(if v % 7 == 6 { GONE_COMPANY } else { S }),
            "quantity": number(v, 100), "unit": text(v, "t"),
            "costType": if v % 3 == 0 { "rate" } else { "invoice" },
            "rates": [{ "_id": oid("7000000000000000000009d1"), "date": d("2022-01-01", "00:00:00"), "rate": 10 + v % 5 }],
            "invoices": (match v % 4 { 0 => json!([]), 1 => oids(&[I[0]]), 2 => oids(&[I[1]]), _ => oids(&I) })
        }),
        Entity::Invoice => json!({
            "company": oid(if v % 5 == 4 { GONE_COMPANY } else { S }),
            "invoiceNumber": format!("INV-{v}"), "cost": number(v, 100 * (v % 7 + 1)),
            "internal": v % 3 == 0, "accrual": v % 5 == 0, "description": text(v, "Monthly"),
            "date": if v % 3 == 0 { d("2022-03-10", "00:00:00") } else { d("2022-02-10", "00:00:00") }
        }),
        Entity::DailyReport => {
            let mut r = json!({
                "jobsite": oid(J[(v % 2) as usize]),
                "crew": oid([C[0], C[1], GONE_CREW][((v / 2) % 3) as usize]),
                "date": if (v / 4) % 4 == 0 { d("2022-03-02", "07:00:00") } else { d("2022-02-23", "07:00:00") },
                "approved": v % 3 != 0, "payrollComplete": false, "archived": v % 7 == 0,
                "employeeWork": [], "vehicleWork": [], "materialShipment": [], "production": []
            });
            for (bit, (field, child)) in CHILDREN.iter().enumerate() {
                if mask & (1 << bit) != 0
                    && let Some(a) = r[*field].as_array_mut()
                {
                    a.push(oid(child));
                }
            }
            r
        }
        Entity::EmployeeWork => {
            let (s, e) = if v % 3 == 0 {
                ("22:00:00", "06:00:00")
            } else {
                ("07:00:00", "15:30:00")
            };
            let mut w = json!({ "employee": oid([E[0], E[1], GONE_EMPLOYEE][(v % 3) as usize]),
                                "startTime": d("2022-02-23", s), "endTime": d("2022-02-23", e) });
            set_text(&mut w, "jobTitle", v / 3, "Op");
            if v % 5 == 4 {
                w["archivedAt"] = d("2022-04-01", "00:00:00");
            }
            w
        }
        Entity::VehicleWork => {
            // (a billion hours overflow the column: the document is quarantined)
            let hours = if v % 11 == 10 {
                json!(1e9)
            } else {
                number(v, v % 4)
            };
            let mut w = json!({ "vehicle": oid(V), "hours": hours });
            set_text(&mut w, "jobTitle", v / 2, "Haul");
            w
        }
        Entity::MaterialShipment => {
            let mut s = json!({ "quantity": number(v / 3, v % 5 + 1), "noJobsiteMaterial": v % 4 == 3,
                                "startTime": d("2022-02-23", "08:00:00"), "endTime": d("2022-02-23", "09:30:00") });
            if v % 4 == 3 {
                set_text(&mut s, "shipmentType", v / 4, "Sand");
                set_text(&mut s, "supplier", v / 5, "Pit");
                set_text(&mut s, "unit", v / 6, "m3");
            } else {
                s["jobsiteMaterial"] = oid(if v % 10 == 9 { GONE_JM } else { JM });
                let tr = (v / 4) % 3;
                s["vehicleObject"] = if tr < 2 {
                    let mut o = json!({ "truckingRateId": oid(TR[tr as usize]) });
                    set_text(&mut o, "source", v / 5, "Co");
                    set_text(&mut o, "vehicleType", v / 6, "Tandem");
                    set_text(&mut o, "vehicleCode", v / 7, "T");
                    o
                } else {
                    Value::Null
                };
            }
            if v % 6 == 5 {
                s["archivedAt"] = d("2022-04-01", "00:00:00");
            }
            s
        }
        Entity::Production => {
            let mut p = json!({ "jobTitle": "Paving", "quantity": number(v, v), "unit": "t",
                "startTime": d("2022-02-23", "07:00:00"), "endTime": d("2022-02-23", "12:00:00") });
            set_text(&mut p, "description", v / 2, "Lift 1");
            set_text(&mut p, "unit", v / 3, "t");
            p
        }
        _ => json!({}),
    };
    doc["_id"] = oid(key);
    doc
}

#[derive(Debug, Clone)]
enum Write {
    Upsert { doc: usize, v: u8, mask: u8 },
    Delete { doc: usize },
}

fn write() -> impl Strategy<Value = Write> {
    let n = universe().len();
    prop_oneof![
        4 => (0..n, any::<u8>(), any::<u8>()).prop_map(|(doc, v, mask)| Write::Upsert { doc, v, mask }),
        1 => (FIRST_DELETABLE..n).prop_map(|doc| Write::Delete { doc }),
    ]
}

/// The history (every document created first, then the random writes) as source docs with
/// increasing versions.
fn history(writes: &[Write]) -> Vec<SourceDoc> {
    let u = universe();
    let mut out: Vec<SourceDoc> = u
        .iter()
        .enumerate()
        .map(|(n, (e, k))| upsert(*e, k, make(*e, k, n as u8, 0x7f), n as u32 + 1))
        .collect();
    for w in writes {
        let t = out.len() as u32 + 1;
        out.push(match *w {
            Write::Upsert { doc, v, mask } => {
                upsert(u[doc].0, u[doc].1, make(u[doc].0, u[doc].1, v, mask), t)
            }
            Write::Delete { doc } => delete(u[doc].0, u[doc].1, t),
        });
    }
    out
}

use bowmark_cdc::ops::verify::star;
pub use bowmark_cdc::ops::verify::star::Star;

/// Every star row of a database by natural key (the rule `verify` applies: foreign keys mapped
/// to the referenced `mongo_id`, surrogate ids and `synced_at` dropped), with whether the row
/// is retired.
pub async fn star_of(client: &tokio_postgres::Client) -> Star {
    star::read(client, "public").await.expect("star rows")
}

/// The law, as `verify` checks it: every fresh row is in the streamed database with the same
/// content, and the streamed database holds no other live row. Allowed: retired rows only in
/// the streamed database (archived rows of deleted or detached documents; rows kept or left
/// unreferenced), and the archived row of a deleted document where a fresh projection holds
/// its placeholder. `Err` describes the first drifted row.
pub fn compare(streamed: &Star, fresh: &Star) -> Result<(), String> {
    for t in star::compare(streamed, fresh, 1) {
        if let Some(r) = t.rows.first() {
            let content = |s: &Star| {
                s.get(&t.table)
                    .and_then(|rows| rows.get(&r.key))
                    .map_or("-".to_string(), |row| row.content.clone())
            };
            return Err(format!(
                "{} {}: {:?} (columns {:?}); streamed {} fresh {}",
                t.table,
                r.key,
                r.drift,
                r.columns,
                content(streamed),
                content(fresh)
            ));
        }
    }
    Ok(())
}

/// The quarantined documents (entity, key).
async fn quarantine(h: &Harness) -> Vec<(String, String)> {
    h.rows("SELECT entity, key FROM cdc.quarantine ORDER BY 1, 2", &[])
        .await
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Empty both databases between cases (cheaper than creating two per case).
async fn reset(h: &Harness) {
    let tables = star_tables().join(", ");
    h.client
        .batch_execute(&format!(
            "TRUNCATE cdc.source_doc, cdc.report_child, cdc.quarantine, {tables} CASCADE"
        ))
        .await
        .expect("truncate");
}

async fn check(
    streamed: &mut Harness,
    fresh: &mut Harness,
    writes: Vec<Write>,
    redeliver: Vec<(usize, usize)>,
    batch_sizes: Vec<usize>,
) -> Result<(), String> {
    let hist = history(&writes);
    // The delivered stream: each write, plus stale re-deliveries of earlier ones.
    let mut stream: Vec<SourceDoc> = Vec::new();
    for (n, doc) in hist.iter().enumerate() {
        stream.push(doc.clone());
        for (at, back) in &redeliver {
            if *at % hist.len() == n {
                stream.push(hist[n.saturating_sub(*back % (n + 1))].clone());
            }
        }
    }
    reset(streamed).await;
    // The law holds after every few batches too, not only at the end: the mirror then holds,
    // per document, the newest version delivered so far.
    let mut seen: BTreeMap<(Entity, String), SourceDoc> = BTreeMap::new();
    let mut rest: &[SourceDoc] = &stream;
    let mut sizes = batch_sizes.iter().cycle();
    let mut batches = 0usize;
    while !rest.is_empty() {
        let k = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
        streamed.apply(&rest[..k]).await;
        for d in &rest[..k] {
            let newer = seen
                .get(&(d.entity, d.key.clone()))
                .is_none_or(|s| s.version < d.version);
            if newer {
                seen.insert((d.entity, d.key.clone()), d.clone());
            }
        }
        rest = &rest[k..];
        batches += 1;
        if batches.is_multiple_of(6) || rest.is_empty() {
            // The fresh database: only the current state of each live document, once.
            reset(fresh).await;
            let finals: Vec<SourceDoc> = seen.values().filter(|d| !d.deleted).cloned().collect();
            fresh.project(&finals, Versions::NewerOrEqual).await;
            compare(
                &star_of(&streamed.client).await,
                &star_of(&fresh.client).await,
            )
            .map_err(|e| format!("after {batches} batches: {e}"))?;
            // The stream quarantines the documents a fresh projection quarantines, and only
            // the overflowing vehicle works: every other value of the universe is storable.
            let (sq, fq) = (quarantine(streamed).await, quarantine(fresh).await);
            if let Some(q) = sq.iter().find(|(e, _)| e != "vehicle_work") {
                return Err(format!("after {batches} batches: {q:?} quarantined"));
            }
            if sq != fq {
                return Err(format!(
                    "after {batches} batches: quarantine streamed {sq:?} != fresh {fq:?}"
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn the_streamed_star_equals_a_fresh_projection_of_the_final_state() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (streamed, fresh) = rt.block_on(async { (Harness::new().await, Harness::new().await) });
    let config = ProptestConfig {
        cases: 24,
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let dbs = std::cell::RefCell::new((streamed, fresh));
    let strategy = (
        prop::collection::vec(write(), 1..40),
        prop::collection::vec((0usize..64, 1usize..20), 0..8),
        prop::collection::vec(1usize..6, 1..6),
    );
    let result = runner.run(&strategy, |(writes, redeliver, batch_sizes)| {
        let mut dbs = dbs.borrow_mut();
        let (streamed, fresh) = &mut *dbs;
        rt.block_on(check(streamed, fresh, writes, redeliver, batch_sizes))
            .map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    drop(dbs);
}
