//! `backfill --from-dump`: the legacy dev dumps, corrupt files, unknown collections.

use std::collections::BTreeSet;
use std::path::Path;

use bson::Document;

use super::{assert_success, count, run_cli, temp_pipeline, text};
use crate::support;

/// Documents in a dump's `<coll>.bson` (0 when absent).
fn dump_docs(dir: &Path, coll: &str) -> Vec<Document> {
    let Ok(bytes) = std::fs::read(dir.join(format!("{coll}.bson"))) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= bytes.len() {
        let n = i32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        out.push(Document::from_reader(&bytes[at..at + n]).expect("fixture document"));
        at += n;
    }
    out
}

/// Jobsite materials some jobsite's `materials[]` claims (the others have no jobsite, so no
/// `dim_jobsite_material` row: its `jobsite_id` is NOT NULL).
fn claimed_jobsite_materials(dir: &Path) -> usize {
    let claimed: BTreeSet<_> = dump_docs(dir, "jobsites")
        .iter()
        .flat_map(|j| j.get_array("materials").cloned().unwrap_or_default())
        .map(|id| id.to_string())
        .collect();
    dump_docs(dir, "jobsiteMaterials")
        .iter()
        .filter(|m| {
            m.get("_id")
                .is_some_and(|id| claimed.contains(&id.to_string()))
        })
        .count()
}

/// Given the legacy dev dump of a business line, when it is backfilled through the real
/// binary, then it exits 0, reports the collections without data, and every dimension
/// document has its row and the jobsite-linked invoices their facts.
async fn backfill_fixture(tenant: &str, invoices: i64) {
    let Some(dir) = support::fixtures(tenant) else {
        return;
    };
    let db = support::migrated_db().await;
    let out = run_cli(
        &db,
        &support::project_root()
            .join("pipeline")
            .join(format!("{tenant}.toml")),
        None,
        &["--from-dump", dir.to_str().unwrap()],
    );
    assert_success(&out);
    let stdout = text(&out.stdout);
    let expected_missing: Vec<&str> = match tenant {
        "paving" => vec![
            "dailyreports",
            "employeeworks",
            "vehicleworks",
            "materialshipments",
        ],
        _ => vec!["dailyreports", "employeeworks"],
    };
    for coll in &expected_missing {
        assert!(
            stdout.contains(&format!("missing in the source: {coll} (no .bson file")),
            "{coll} not reported missing:\n{stdout}"
        );
    }
    assert!(stdout.contains("cdc.checkpoint) left alone"), "{stdout}");
    let c = db.client().await;
    for (table, coll) in [
        ("dim_company", "companies"),
        ("dim_employee", "employees"),
        ("dim_vehicle", "vehicles"),
        ("dim_jobsite", "jobsites"),
        ("dim_material", "materials"),
        ("dim_crew", "crews"),
    ] {
        let want = dump_docs(&dir, coll).len() as i64;
        assert!(want > 0, "fixture {coll} is empty");
        let got = count(&c, &format!("SELECT count(*) FROM {table}")).await;
        assert_eq!(got, want, "{table} rows vs {coll} documents");
    }
    assert_eq!(
        count(&c, "SELECT count(*) FROM dim_jobsite_material").await,
        claimed_jobsite_materials(&dir) as i64,
        "dim_jobsite_material: one row per jobsite material a jobsite claims"
    );
    assert_eq!(
        count(&c, "SELECT count(*) FROM fact_invoice").await,
        invoices
    );
    assert_eq!(
        count(&c, "SELECT count(*) FROM cdc.checkpoint").await,
        0,
        "a dump leaves the capture checkpoint alone"
    );
    let incomplete = count(
        &c,
        "SELECT count(*) FROM cdc.backfill_progress WHERE status NOT IN ('complete', 'missing')",
    )
    .await;
    assert_eq!(incomplete, 0);
}

#[tokio::test]
async fn paving_dev_dump_gives_every_dimension_row_and_6238_invoice_facts() {
    backfill_fixture("paving", 6_238).await;
}

#[tokio::test]
async fn concrete_dev_dump_gives_every_dimension_row_and_4314_invoice_facts() {
    backfill_fixture("concrete", 4_314).await;
}

/// Byte offsets at which each document of a `.bson` file starts.
fn starts(bytes: &[u8]) -> Vec<usize> {
    let mut v = Vec::new();
    let mut at = 0;
    while at + 4 <= bytes.len() {
        v.push(at);
        at += i32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    }
    v
}

/// Given a dump whose invoices.bson was cut short (or garbled) in its 11th document, when it
/// is backfilled, then the run fails naming the file and that document's byte offset.
#[tokio::test]
async fn a_truncated_or_garbled_bson_fails_naming_the_file_and_byte_offset() {
    let Some(fixtures) = support::fixtures("paving") else {
        return;
    };
    let db = support::migrated_db().await;
    let pipeline = support::project_root().join("pipeline/paving.toml");
    let bytes = std::fs::read(fixtures.join("invoices.bson")).expect("fixture");
    let at = starts(&bytes);
    let broken_doc = at[10];

    let cut = tempfile::tempdir().unwrap();
    std::fs::write(cut.path().join("invoices.bson"), &bytes[..broken_doc + 20]).unwrap();
    let out = run_cli(
        &db,
        &pipeline,
        None,
        &[
            "--from-dump",
            cut.path().to_str().unwrap(),
            "--collections",
            "invoices",
        ],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("invoices.bson"), "{err}");
    assert!(
        err.contains(&format!("truncated at byte offset {broken_doc}")),
        "{err}"
    );

    let garbled = tempfile::tempdir().unwrap();
    let mut g = bytes.clone();
    g[broken_doc + 4] = 0x7f; // not a BSON element type
    std::fs::write(garbled.path().join("invoices.bson"), &g).unwrap();
    let out = run_cli(
        &db,
        &pipeline,
        None,
        &[
            "--from-dump",
            garbled.path().to_str().unwrap(),
            "--collections",
            "invoices",
            "--restart",
        ],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("invoices.bson"), "{err}");
    assert!(
        err.contains(&format!("corrupt document at byte offset {broken_doc}")),
        "{err}"
    );
    assert!(err.contains("run the same command again"), "{err}");
}

/// Given `--collections` naming a collection the pipeline does not watch, then the run fails
/// before touching anything and names it.
#[tokio::test]
async fn an_unknown_collection_is_named() {
    let db = support::migrated_db().await;
    let p = temp_pipeline("paving", None, None);
    let out = run_cli(
        &db,
        &p.path,
        None,
        &[
            "--from-dump",
            "/nonexistent",
            "--collections",
            "invoices,employes",
        ],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("unknown collection \"employes\""), "{err}");
    let c = db.client().await;
    assert_eq!(count(&c, "SELECT count(*) FROM cdc.backfill_run").await, 0);
}

/// Given a database whose tables belong to the migration role, when a role that may only read
/// and write them backfills a generated dump, then the bulk load is skipped with a warning (it
/// cannot alter the tables) and the load gives the same rows as the owner's, schema untouched.
#[tokio::test]
async fn a_role_that_does_not_own_the_tables_loads_without_the_bulk_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    super::workload::Workload::generate(23, super::workload::Shape::realistic(60))
        .write_dump(dir.path())
        .expect("write dump");
    let dump = dir.path().to_str().unwrap();
    let p = temp_pipeline("paving", None, Some(50));

    let db = support::migrated_db().await;
    let c = db.client().await;
    let role = format!("{}_writer", db.name);
    c.batch_execute(&format!(
        "CREATE ROLE \"{role}\" LOGIN;
         GRANT USAGE ON SCHEMA public, cdc TO \"{role}\";
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public, cdc TO \"{role}\";
         GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public, cdc TO \"{role}\";"
    ))
    .await
    .expect("create a writer role");
    let out = support::cdc_bin()
        .args(["backfill", "--pipeline"])
        .arg(&p.path)
        .args(["--from-dump", dump])
        .envs(support::child_env(&db, None, None))
        .env("POSTGRES_USER", &role)
        .output()
        .expect("run backfill");
    c.batch_execute(&format!("DROP OWNED BY \"{role}\"; DROP ROLE \"{role}\""))
        .await
        .expect("drop the writer role");
    assert_success(&out);
    assert!(
        text(&out.stderr).contains("bulk load unavailable"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(count(&c, "SELECT count(*) FROM cdc.deferred_ddl").await, 0);

    let owner = support::migrated_db().await;
    assert_success(&run_cli(&owner, &p.path, None, &["--from-dump", dump]));
    assert_eq!(
        super::content(&c).await,
        super::content(&owner.client().await).await,
        "the writer's load equals the owner's"
    );
}

/// Given a generated dump whose dimensions and reports a first run loaded, when a second run
/// loads employee and vehicle work side by side, then the connection that finishes the
/// vehicle work (half the documents) takes chunks of the employee work still loading, every
/// document is read once, and the rows equal a single full run's.
#[tokio::test]
async fn a_connection_with_no_collection_left_takes_chunks_of_one_still_loading() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = super::workload::Workload::generate(22, super::workload::Shape::realistic(400));
    w.write_dump(dir.path()).expect("write dump");
    let dump = dir.path().to_str().unwrap();
    let p = temp_pipeline("paving", None, Some(20));

    let split = support::migrated_db().await;
    let rest = "companies,materials,crews,employees,vehicles,jobsites,systems,dailyreports,\
                jobsiteMaterials,invoices,materialshipments,productions";
    let first = run_cli(
        &split,
        &p.path,
        None,
        &["--from-dump", dump, "--collections", rest],
    );
    assert_success(&first);
    let works = "employeeworks,vehicleworks";
    let second = run_cli(
        &split,
        &p.path,
        None,
        &["--from-dump", dump, "--collections", works],
    );
    assert_success(&second);
    let log = text(&second.stderr);
    assert!(
        log.lines()
            .any(|l| l.contains("takes chunks of one still loading")
                && l.contains("\"collection\":\"employeeworks\"")),
        "the connection done with vehicleworks helped with employeeworks:\n{log}"
    );
    let stdout = text(&second.stdout);
    for coll in ["employeeworks", "vehicleworks"] {
        assert_eq!(
            super::resumed_and_read(&stdout, coll),
            (0, w.count(coll) as u64),
            "{coll} read once:\n{stdout}"
        );
    }

    let whole = support::migrated_db().await;
    assert_success(&run_cli(&whole, &p.path, None, &["--from-dump", dump]));
    assert_eq!(
        super::content(&split.client().await).await,
        super::content(&whole.client().await).await,
        "loaded in two runs, with shared chunks, differs from one run"
    );
}
