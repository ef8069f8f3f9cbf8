//! `bowmark-cdc verify` as an operator runs it: clean after a backfill (from MongoDB and from a
//! dump), and naming the collection or table, the key and the field or column when a source
//! document, a mirror document or a star row is changed behind the pipeline's back; `reproject`
//! then repairs the star. Each run is recorded and exported by the daemon.

use std::process::{Output, Stdio};
use std::time::Duration;

use bson::doc;
use serde_json::Value;

use crate::backfill::workload::{Shape, Workload};
use crate::backfill::{TempPipeline, assert_success, run_cli, temp_pipeline, text};
use crate::support::mongo::TestMongo;
use crate::support::{self, TestDb, eventually};

/// `bowmark-cdc ARGS --pipeline FILE` against `db` (and MongoDB at `mongo_uri`).
fn cdc(db: &TestDb, tp: &TempPipeline, mongo_uri: Option<&str>, args: &[&str]) -> Output {
    support::cdc_bin()
        .args(args)
        .arg("--pipeline")
        .arg(&tp.path)
        .envs(support::child_env(db, None, mongo_uri))
        .output()
        .expect("run bowmark-cdc")
}

fn explain(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    )
}

/// Run `verify ARGS --json`; the exit code and the parsed report.
fn verify_json(
    db: &TestDb,
    tp: &TempPipeline,
    mongo_uri: Option<&str>,
    args: &[&str],
) -> (Option<i32>, Value) {
    let mut all = vec!["verify", "--json"];
    all.extend_from_slice(args);
    let out = cdc(db, tp, mongo_uri, &all);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("verify --json printed no JSON ({e}):\n{}", explain(&out)));
    (out.status.code(), report)
}

/// The drifted entries of one collection (source against mirror) or table (mirror against
/// star) in a JSON report: (key, drift, fields or columns).
fn drifted(report: &Value, part: &str, name: &str) -> Vec<(String, String, Vec<String>)> {
    let (list, name_field, items, cols) = match part {
        "collections" => ("collections", "collection", "docs", "fields"),
        _ => ("tables", "table", "rows", "columns"),
    };
    report[list]
        .as_array()
        .expect("list")
        .iter()
        .filter(|e| e[name_field] == name)
        .flat_map(|e| e[items].as_array().cloned().unwrap_or_default())
        .map(|d| {
            (
                d["key"].as_str().unwrap_or_default().to_string(),
                d["drift"].as_str().unwrap_or_default().to_string(),
                d[cols]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c.as_str().map(str::to_string))
                    .collect(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_is_clean_after_a_backfill_and_names_what_drifted_behind_its_back_until_repaired() {
    // Given a production-shaped workload in MongoDB (the simulator), backfilled
    let m = TestMongo::start().await;
    let w = Workload::generate(11, Shape::small(16));
    w.insert(&m.db()).await.expect("insert workload");
    let db = support::migrated_db().await;
    let tp = temp_pipeline("paving", Some(m.db_name()), Some(50));
    let uri = m.uri().to_string();
    let out = tokio::task::block_in_place(|| run_cli(&db, &tp.path, Some(&uri), &[]));
    assert_success(&out);

    // When verify runs against MongoDB, then it is clean, with every collection counted
    let (code, report) =
        tokio::task::block_in_place(|| verify_json(&db, &tp, Some(&uri), &["--settle", "1"]));
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["drift"], 0, "{report:#}");
    assert_eq!(report["source"], "mongodb");
    let employees = report["collections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["collection"] == "employees")
        .expect("employees compared");
    assert_eq!(employees["source_docs"], w.count("employees") as u64);
    assert_eq!(employees["mirror_docs"], w.count("employees") as u64);
    let tables = report["tables"].as_array().unwrap();
    assert!(
        tables
            .iter()
            .any(|t| t["table"] == "fact_employee_work" && t["live_rows"].as_u64() > Some(0)),
        "{report:#}"
    );

    // And when a star row, a mirror document and a source document are changed behind the
    // pipeline's back
    let c = db.client().await;
    let employee: String = c
        .query_one(
            "SELECT mongo_id FROM dim_employee ORDER BY mongo_id LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    c.execute(
        "UPDATE dim_employee SET job_title = 'tampered' WHERE mongo_id = $1",
        &[&employee],
    )
    .await
    .unwrap();
    let vehicle: String = c
        .query_one(
            "SELECT key FROM cdc.source_doc WHERE entity = 'vehicle' ORDER BY key LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    c.execute(
        "UPDATE cdc.source_doc SET doc = jsonb_set(doc, '{name}', '\"renamed in the mirror\"') \
         WHERE entity = 'vehicle' AND key = $1",
        &[&vehicle],
    )
    .await
    .unwrap();
    let company = w.collections["companies"][0].get_object_id("_id").unwrap();
    m.db()
        .collection::<bson::Document>("companies")
        .update_one(
            doc! {"_id": company},
            doc! {"$set": {"name": "renamed at the source"}},
        )
        .await
        .expect("update the source");

    // Then verify exits 1 and names each: the table, key and column of the star row...
    let (code, report) =
        tokio::task::block_in_place(|| verify_json(&db, &tp, Some(&uri), &["--settle", "1"]));
    assert_eq!(code, Some(1), "{report:#}");
    let star = drifted(&report, "tables", "dim_employee");
    assert_eq!(
        star,
        vec![(employee.clone(), "differs".into(), vec!["job_title".into()])],
        "{report:#}"
    );
    // ...the mirror document that no longer matches its source (and the star row derived
    // from the old one)...
    let docs = drifted(&report, "collections", "vehicles");
    assert_eq!(
        docs,
        vec![(vehicle.clone(), "differs".into(), vec!["name".into()])],
        "{report:#}"
    );
    assert!(
        drifted(&report, "tables", "dim_vehicle")
            .iter()
            .any(|(k, d, cols)| k == &vehicle && d == "differs" && cols == &["name"]),
        "{report:#}"
    );
    // ...and the source document the mirror never saw change
    let docs = drifted(&report, "collections", "companies");
    assert_eq!(
        docs,
        vec![(company.to_hex(), "differs".into(), vec!["name".into()])],
        "{report:#}"
    );
    // And the text report says the same to a person
    let out =
        tokio::task::block_in_place(|| cdc(&db, &tp, Some(&uri), &["verify", "--settle", "0"]));
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    let printed = text(&out.stdout);
    assert!(
        printed.contains(&format!(
            "Differs dim_employee {employee} (columns: job_title)"
        )),
        "{printed}"
    );
    assert!(printed.contains("reproject"), "{printed}");

    // When the operator reprojects, then the star row is repaired (from the mirror as it is)
    let out = tokio::task::block_in_place(|| cdc(&db, &tp, None, &["reproject"]));
    assert!(out.status.success(), "{}", explain(&out));
    let (code, report) =
        tokio::task::block_in_place(|| verify_json(&db, &tp, None, &["--no-source"]));
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["source"], "none");

    // And a backfill brings the mirror back to the source: verify is clean again
    let out = tokio::task::block_in_place(|| run_cli(&db, &tp.path, Some(&uri), &["--restart"]));
    assert_success(&out);
    let (code, report) =
        tokio::task::block_in_place(|| verify_json(&db, &tp, Some(&uri), &["--settle", "1"]));
    assert_eq!(code, Some(0), "{report:#}");

    // And every run is recorded, the last one clean
    let runs: Vec<(i64, String)> = c
        .query(
            "SELECT drift_rows, source FROM cdc.verify_run ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(runs.len(), 5, "{runs:?}");
    assert!(runs[1].0 >= 4, "{runs:?}");
    assert_eq!(runs[4], (0, "mongodb".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_against_a_dump_names_a_missing_and_an_unexpected_document_and_the_daemon_exports_the_last_run()
 {
    // Given a workload backfilled from a mongodump folder
    let w = Workload::generate(12, Shape::small(8));
    let dir = tempfile::tempdir().expect("temp dir");
    w.write_dump(dir.path()).expect("write dump");
    let db = support::migrated_db().await;
    let tp = temp_pipeline("paving", None, Some(50));
    let dump = dir.path().to_str().unwrap().to_string();
    let out = tokio::task::block_in_place(|| run_cli(&db, &tp.path, None, &["--from-dump", &dump]));
    assert_success(&out);
    let (code, report) =
        tokio::task::block_in_place(|| verify_json(&db, &tp, None, &["--from-dump", &dump]));
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["source"], "dump");

    // When one mirror document is deleted and a stray one added
    let c = db.client().await;
    let gone: String = c
        .query_one(
            "DELETE FROM cdc.source_doc WHERE key = (SELECT min(key) FROM cdc.source_doc \
             WHERE entity = 'material') AND entity = 'material' RETURNING key",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    c.execute(
        "INSERT INTO cdc.source_doc (entity, key, ct_t, ct_i, ordinal, wall_time, doc, deleted) \
         VALUES ('material', 'ffffffffffffffffffffffff', 0, 0, 0, now(), \
                 '{\"_id\": {\"$oid\": \"ffffffffffffffffffffffff\"}, \"name\": \"stray\"}', false)",
        &[],
    )
    .await
    .unwrap();

    // Then verify names both, with --max-keys bounding the list but not the counts
    let (code, report) = tokio::task::block_in_place(|| {
        verify_json(&db, &tp, None, &["--from-dump", &dump, "--max-keys", "5"])
    });
    assert_eq!(code, Some(1), "{report:#}");
    let mut docs = drifted(&report, "collections", "materials");
    docs.sort();
    assert_eq!(
        docs,
        vec![
            (gone.clone(), "missing".into(), vec![]),
            (
                "ffffffffffffffffffffffff".into(),
                "unexpected".into(),
                vec![]
            ),
        ],
        "{report:#}"
    );
    // (the stray document derives a material row the live star lacks)
    assert!(
        drifted(&report, "tables", "dim_material")
            .iter()
            .any(|(k, d, _)| k == "ffffffffffffffffffffffff" && d == "missing"),
        "{report:#}"
    );
    let drift = report["drift"].as_u64().unwrap();
    let (_, bounded) = tokio::task::block_in_place(|| {
        verify_json(&db, &tp, None, &["--from-dump", &dump, "--max-keys", "0"])
    });
    assert_eq!(bounded["drift"].as_u64(), Some(drift));
    assert!(drifted(&bounded, "collections", "materials").is_empty());

    // And the daemon exports the last run's drift and time
    let vhost = support::TestVhost::new();
    let mut daemon = support::cdc_bin()
        .args(["run", "--role", "project", "--pipeline"])
        .arg(&tp.path)
        .envs(support::child_env(&db, Some(&vhost), None))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the daemon");
    let tail = support::StderrTail::start(&mut daemon);
    let addr = tail.http_addr();
    let line = eventually("cdc_verify_drift_rows", Duration::from_secs(60), || async {
        let (_, body) = support::http_get(addr, "/metrics").await;
        body.lines()
            .find(|l| l.starts_with("cdc_verify_drift_rows{"))
            .map(str::to_string)
    })
    .await;
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(line.ends_with(&format!(" {drift}")), "{line}");
}

/// `bowmark-cdc verify --legacy-db URL --pipeline pipeline/paving.toml` against `ours`.
fn verify_legacy(ours: &TestDb, legacy: &TestDb, json: bool) -> Output {
    let c = legacy.conn();
    let url = format!(
        "postgres://{}@{}:{}/{}",
        c.user, c.host, c.port, legacy.name
    );
    let mut cmd = support::cdc_bin();
    cmd.args([
        "verify",
        "--pipeline",
        "pipeline/paving.toml",
        "--legacy-db",
        &url,
    ])
    .envs(support::child_env(ours, None, None));
    if json {
        cmd.arg("--json");
    }
    cmd.output().expect("run bowmark-cdc verify --legacy-db")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_comparison_explains_each_difference_of_the_legacy_rules_and_names_the_rest() {
    use crate::project::Harness;
    use crate::project::seed::{
        BASE_FOREMAN_1, EMPLOYEE_WORK_1, INVOICE_MATERIAL_1, JOBSITE_2, OFFICE_ADMIN, PRODUCTION_1,
        SUPPLIER,
    };
    // Given the legacy scenario projected by this pipeline
    let mut ours = Harness::new().await;
    ours.seed().await;
    // And a reporting database holding what the legacy sync's rules derive from the same
    // documents: the same rows, except where the legacy rules differ
    let mut legacy = Harness::new().await;
    legacy.seed().await;
    legacy
        .client
        .batch_execute(&format!(
            "
            -- its consumer wrote the material invoice as an expense too (difference 3)
            INSERT INTO fact_invoice (mongo_id, jobsite_id, company_id, invoice_date, direction,
                                      invoice_type, invoice_number, amount)
            SELECT '{INVOICE_MATERIAL_1}', j.id, c.id, '2022-02-01', 'expense', 'external',
                   'INV-SYNC-001', 500
            FROM dim_jobsite j, dim_company c
            WHERE j.mongo_id = '{JOBSITE_2}' AND c.mongo_id = '{SUPPLIER}';
            -- dimensions were created only when a fact referenced them (difference 5)
            DELETE FROM dim_employee WHERE mongo_id = '{OFFICE_ADMIN}';
            -- a stale rate row was kept (difference 6)
            INSERT INTO dim_employee_rate (employee_id, rate, effective_date)
            SELECT id, 18, '2020-01-01' FROM dim_employee WHERE mongo_id = '{BASE_FOREMAN_1}';
            -- the rate was frozen when the work was synced (difference 8)
            UPDATE fact_employee_work SET hourly_rate = 20 WHERE mongo_id = '{EMPLOYEE_WORK_1}';
            -- and one difference no rule explains
            UPDATE fact_production SET quantity = 149 WHERE mongo_id = '{PRODUCTION_1}';
            "
        ))
        .await
        .expect("derive the legacy rows");

    // When the operator compares the two databases
    let out = tokio::task::block_in_place(|| verify_legacy(&ours.db, &legacy.db, true));

    // Then the unexplained difference is named with its table, key and column, exit 1
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit {:?}\n{}\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["unexplained"], 1, "{report:#}");
    let table = |name: &str| {
        report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} compared: {report:#}"))
    };
    let production = table("fact_production");
    assert_eq!(
        production["rows"],
        serde_json::json!([{"key": PRODUCTION_1, "side": "differs", "columns": ["quantity"]}])
    );
    // And every other difference is explained by its number in the README
    let explained = |name: &str, why: &str| table(name)["explained"][why].as_u64();
    assert_eq!(
        explained(
            "fact_invoice",
            "3 material invoices are not fact_invoice rows"
        ),
        Some(1)
    );
    assert_eq!(explained("dim_employee", "5 dimensions are eager"), Some(1));
    assert_eq!(
        explained(
            "dim_employee_rate",
            "6 rate tables mirror the current rates"
        ),
        Some(1)
    );
    assert_eq!(
        explained(
            "fact_employee_work",
            "8 changes propagate (rates, costs, archiving)"
        ),
        Some(1)
    );
    assert_eq!(table("fact_employee_work")["unexplained"], 0);

    // When the unexplained difference is gone, then the comparison passes, in text too
    legacy
        .client
        .execute(
            "UPDATE fact_production SET quantity = 150 WHERE mongo_id = $1",
            &[&PRODUCTION_1],
        )
        .await
        .unwrap();
    let out = tokio::task::block_in_place(|| verify_legacy(&ours.db, &legacy.db, false));
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let printed = text(&out.stdout);
    assert!(
        printed.starts_with("legacy database against ours: 4 differences explained, 0 unexplained"),
        "{printed}"
    );
}
