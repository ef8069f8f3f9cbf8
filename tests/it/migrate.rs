//! `bowmark-cdc migrate`: the legacy star schema built exactly, dbmate databases adopted, the
//! dual ledger, concurrency, and the numbers the generated columns and views give.

mod adopt;
pub mod catalog;
mod expected;
mod report_layer;
mod upgrade;

use std::process::{Command, Output, Stdio};

use bowmark_cdc::migrate::{self, MigrateError, MigrationId};
use tokio_postgres::Client;

use crate::support::{TestDb, cdc_bin, child_env, migrated_db};
use catalog::{Catalog, assert_lines, assert_same, snapshot};

/// The `cdc` bookkeeping migration of the schema area.
const BOOKKEEPING: i64 = 20261127000001;

/// Every embedded version after the four legacy ones (the bookkeeping, then later `cdc` areas).
fn cdc_versions() -> Vec<i64> {
    migrate::embedded_migrations()
        .iter()
        .map(|m| m.version)
        .filter(|v| *v >= BOOKKEEPING)
        .collect()
}

/// The newest embedded version.
fn newest() -> i64 {
    *cdc_versions().last().expect("cdc migrations")
}

/// The four legacy versions and the SQL dbmate ran for each (the bodies of our migrations).
const LEGACY: [(&str, &str); 4] = [
    (
        "20260128205200",
        include_str!(
            "../../migrations/V20260128205200__initial_fact_dimension_tables_and_views.sql"
        ),
    ),
    (
        "20260202120000",
        include_str!("../../migrations/V20260202120000__productivity_analytics.sql"),
    ),
    (
        "20260203100000",
        include_str!("../../migrations/V20260203100000__add_vehicle_type_to_material_shipment.sql"),
    ),
    (
        "20260325120000",
        include_str!(
            "../../migrations/V20260325120000__add_rate_scenario_id_to_fact_material_shipment.sql"
        ),
    ),
];

fn versions(ids: &[MigrationId]) -> Vec<i64> {
    ids.iter().map(|m| m.version).collect()
}

fn error_text(e: MigrateError) -> String {
    format!("{:#}", anyhow::Error::from(e))
}

/// The expected relations, with dbmate's ledger table when the database had one.
fn expected_relations(with_dbmate: bool) -> Vec<String> {
    let mut v = expected::lines(expected::RELATIONS);
    if with_dbmate {
        let at = v
            .iter()
            .position(|l| l.starts_with("view "))
            .expect("views");
        v.insert(at, "table public.schema_migrations".into());
        v.insert(at + 1, "  version character varying not null".into());
    }
    v
}

fn expected_constraints(with_dbmate: bool) -> Vec<String> {
    let mut v = expected::lines(expected::CONSTRAINTS);
    if with_dbmate {
        v.push("public.schema_migrations schema_migrations_pkey PRIMARY KEY (version)".into());
    }
    v.sort();
    v
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Assert the whole catalog is the legacy schema plus the `cdc` bookkeeping.
fn assert_complete_catalog(c: &Catalog, with_dbmate: bool) {
    let c = &c.contract();
    assert_lines(
        "tables and views",
        &expected_relations(with_dbmate),
        &c.relations,
    );
    assert_lines(
        "constraints",
        &expected_constraints(with_dbmate),
        &sorted(c.constraints.clone()),
    );
    assert_lines(
        "indexes",
        &sorted(expected::lines(expected::INDEXES)),
        &sorted(c.indexes.clone()),
    );
    assert_lines(
        "functions",
        &sorted(expected::lines(expected::FUNCTIONS)),
        &sorted(c.functions.clone()),
    );
    assert_lines(
        "comments",
        &sorted(expected::lines(expected::COMMENTS)),
        &sorted(c.comments.clone()),
    );
    let generated: Vec<(String, String)> = c.generated.clone();
    let want = vec![
        (
            "public.fact_employee_work.hours".to_string(),
            expected::HOURS_EXPR.to_string(),
        ),
        (
            "public.fact_employee_work.total_cost".to_string(),
            expected::EMPLOYEE_COST_EXPR.to_string(),
        ),
        (
            "public.fact_material_shipment.total_cost".to_string(),
            "(quantity * rate)".to_string(),
        ),
        (
            "public.fact_production.hours".to_string(),
            expected::HOURS_EXPR.to_string(),
        ),
        (
            "public.fact_vehicle_work.total_cost".to_string(),
            "(hours * hourly_rate)".to_string(),
        ),
    ];
    assert_eq!(
        generated, want,
        "generated column expressions must deparse exactly as the legacy schema declares them"
    );
}

async fn history(client: &Client) -> Vec<(i64, String, String, String)> {
    client
        .query(
            "SELECT version, name, applied_on, checksum FROM refinery_schema_history ORDER BY version",
            &[],
        )
        .await
        .expect("read refinery_schema_history")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

async fn dbmate_ledger(client: &Client) -> Vec<String> {
    client
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .expect("read schema_migrations")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A database as the legacy dbmate init container leaves it: the bodies of `applied` (indexes
/// into `LEGACY`) executed, and `ledger` recorded in `schema_migrations`.
async fn dbmate_db(applied: &[usize], ledger: &[&str]) -> TestDb {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute("CREATE TABLE schema_migrations (version varchar PRIMARY KEY)")
        .await
        .expect("create schema_migrations");
    for i in applied {
        c.batch_execute(LEGACY[*i].1)
            .await
            .unwrap_or_else(|e| panic!("legacy migration {}: {e}", LEGACY[*i].0));
    }
    for v in ledger {
        c.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[v])
            .await
            .expect("fill schema_migrations");
    }
    db
}
#[tokio::test]
async fn empty_database_gets_the_complete_legacy_schema_and_cdc_bookkeeping() {
    // Given an empty database
    let db = TestDb::new().await;
    // When it is migrated
    let report = migrate::run(&db.conn()).await.expect("migrate");
    // Then every version is applied in order, nothing adopted
    assert!(!report.adopted);
    assert!(report.baseline.is_empty());
    let mut all = vec![
        20260128205200,
        20260202120000,
        20260203100000,
        20260325120000,
    ];
    all.extend(cdc_versions());
    assert_eq!(versions(&report.applied), all);
    assert_eq!(report.current, Some(newest()));
    assert!(report.dbmate_recorded.is_empty());
    // And the catalog is exactly the legacy star schema plus cdc.checkpoint
    let c = db.client().await;
    assert_complete_catalog(&snapshot(&c).await, false);
}

#[tokio::test]
async fn running_again_changes_nothing() {
    // Given a migrated database
    let db = migrated_db().await;
    let c = db.client().await;
    let before = snapshot(&c).await;
    let history_before = history(&c).await;
    // When migrate runs again
    let report = migrate::run(&db.conn()).await.expect("second migrate");
    // Then it applies nothing and the catalog and history are unchanged
    assert!(report.is_up_to_date(), "{report:?}");
    assert!(report.applied.is_empty());
    assert_eq!(report.current, Some(newest()));
    assert_same(&before, &snapshot(&c).await);
    assert_eq!(history(&c).await, history_before);
}
fn migrate_command(db: &TestDb) -> Command {
    let mut cmd = cdc_bin();
    cmd.args(["migrate", "--pipeline", "pipeline/paving.toml"])
        .envs(child_env(db, None, None))
        .env_remove("POSTGRES_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn two_concurrent_migrate_processes_serialize_and_match_a_single_run() {
    // Given an empty database and two `bowmark-cdc migrate` processes started at once
    let db = TestDb::new().await;
    let first = migrate_command(&db).spawn().expect("start first migrate");
    let second = migrate_command(&db).spawn().expect("start second migrate");
    let outs =
        tokio::task::spawn_blocking(move || [first.wait_with_output(), second.wait_with_output()])
            .await
            .unwrap();
    // Then both succeed: one applies every version, the other finds it up to date
    let mut applied_by = 0;
    for out in outs {
        let out = out.expect("wait for migrate");
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}{stderr}");
        if stdout.contains("applied V20261127000001__cdc_bookkeeping") {
            applied_by += 1;
            assert!(
                stdout.contains("applied V20260128205200__initial_fact_dimension_tables_and_views"),
                "{stdout}"
            );
        } else {
            assert!(
                stdout.contains(&format!("up to date (version {})", newest())),
                "{stdout}"
            );
        }
    }
    assert_eq!(applied_by, 1, "exactly one process applies the migrations");
    // And the database equals one migrated by a single run
    let single = migrated_db().await;
    let got = snapshot(&db.client().await).await;
    let want = snapshot(&single.client().await).await;
    let got = Catalog {
        oids: Vec::new(),
        ..got
    };
    let want = Catalog {
        oids: Vec::new(),
        ..want
    };
    assert_same(&want, &got);
    assert_eq!(
        history(&db.client().await).await.len(),
        4 + cdc_versions().len()
    );
}

#[tokio::test]
async fn migrate_command_names_a_database_that_does_not_exist() {
    // Given a pipeline pointed at a database name that does not exist
    let db = TestDb::new().await;
    let missing = format!("{}_missing", db.name);
    let out = migrate_command(&db)
        .env("POSTGRES_DB", &missing)
        .output()
        .expect("run migrate");
    // Then migrate fails, naming the database and the reason
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(!stdout.contains("applied"), "{stdout}");
    assert!(
        stderr.contains(&format!(
            "cannot connect to PostgreSQL database \"{missing}\""
        )),
        "{stderr}"
    );
    assert!(stderr.contains("does not exist"), "{stderr}");
}
