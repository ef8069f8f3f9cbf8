//! `bowmark-cdc migrate`: the legacy star schema built exactly, dbmate databases adopted, the
//! dual ledger, concurrency, and the numbers the generated columns and views give.

mod catalog;
mod expected;

use std::process::{Command, Output, Stdio};

use bowmark_cdc::migrate::{self, MigrateError, MigrationId};
use tokio_postgres::Client;

use crate::support::{TestDb, cdc_bin, child_env, migrated_db};
use catalog::{Catalog, assert_lines, assert_same, snapshot};

const BOOKKEEPING: i64 = 20261127000001;

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
        "generated column expressions must deparse exactly as spec §1.7"
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
    assert_eq!(
        versions(&report.applied),
        vec![
            20260128205200,
            20260202120000,
            20260203100000,
            20260325120000,
            BOOKKEEPING
        ]
    );
    assert_eq!(report.current, Some(BOOKKEEPING));
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
    assert_eq!(report.current, Some(BOOKKEEPING));
    assert_same(&before, &snapshot(&c).await);
    assert_eq!(history(&c).await, history_before);
}

#[tokio::test]
async fn dbmate_database_is_adopted_and_only_the_new_version_applied() {
    // Given a database the four legacy dbmate migrations built, holding data
    let db = dbmate_db(&[0, 1, 2, 3], &LEGACY.map(|(v, _)| v)).await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO dim_jobsite (mongo_id, name, jobcode) VALUES ('legacyjobsite', 'Kept', 'K1')",
    )
    .await
    .unwrap();
    let before = snapshot(&c).await;
    // When migrate runs
    let report = migrate::run(&db.conn()).await.expect("migrate");
    // Then it records the four legacy versions as the baseline and applies only the bookkeeping
    assert!(report.adopted);
    assert_eq!(
        versions(&report.baseline),
        LEGACY.map(|(v, _)| v.parse::<i64>().unwrap()).to_vec()
    );
    assert_eq!(versions(&report.applied), vec![BOOKKEEPING]);
    assert_eq!(report.dbmate_recorded, vec![BOOKKEEPING]);
    // And every legacy object is untouched (same definitions, same oids), data kept
    let after = snapshot(&c).await;
    assert_same(
        &before,
        &after.without(&["public.refinery_schema_history", "cdc.checkpoint"]),
    );
    let kept: String = c
        .query_one(
            "SELECT name FROM dim_jobsite WHERE mongo_id = 'legacyjobsite'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, "Kept");
    // And the result is the complete schema, with the new version in both ledgers
    assert_complete_catalog(&after, true);
    assert_eq!(
        dbmate_ledger(&c).await,
        vec![
            "20260128205200",
            "20260202120000",
            "20260203100000",
            "20260325120000",
            "20261127000001"
        ]
    );
    assert_eq!(history(&c).await.len(), 5);
    // And the recorded baseline checksums match the embedded migrations: a rerun is clean
    let again = migrate::run(&db.conn()).await.expect("rerun");
    assert!(again.is_up_to_date(), "{again:?}");
    assert!(again.dbmate_recorded.is_empty());
}

#[tokio::test]
async fn partially_migrated_dbmate_database_gets_the_remaining_versions() {
    // Given a database dbmate migrated only up to 20260202120000
    let db = dbmate_db(&[0, 1], &[LEGACY[0].0, LEGACY[1].0]).await;
    // When migrate runs
    let report = migrate::run(&db.conn()).await.expect("migrate");
    // Then the two are adopted and the rest applied, in order
    assert!(report.adopted);
    assert_eq!(
        versions(&report.baseline),
        vec![20260128205200, 20260202120000]
    );
    assert_eq!(
        versions(&report.applied),
        vec![20260203100000, 20260325120000, BOOKKEEPING]
    );
    assert_eq!(
        report.dbmate_recorded,
        vec![20260203100000, 20260325120000, BOOKKEEPING]
    );
    // And the schema is exactly the legacy one (vehicle_type and rate_scenario_id last)
    let c = db.client().await;
    assert_complete_catalog(&snapshot(&c).await, true);
}

#[tokio::test]
async fn dbmate_ledger_with_a_gap_is_refused_and_left_untouched() {
    // Given a dbmate ledger that records 20260203100000 but not the older 20260202120000
    let db = dbmate_db(&[0, 2], &[LEGACY[0].0, LEGACY[2].0]).await;
    let c = db.client().await;
    let before = snapshot(&c).await;
    // When migrate runs
    let err = migrate::run(&db.conn())
        .await
        .expect_err("a gap must be refused");
    // Then it explains what is missing and what to do, and changes nothing
    let text = error_text(err);
    assert!(
        text.contains("20260202120000") && text.contains("dbmate up"),
        "{text}"
    );
    assert_same(&before, &snapshot(&c).await);
}

#[tokio::test]
async fn edited_applied_migration_is_refused() {
    // Given a migrated database whose recorded checksum of one version differs from the binary's
    let db = migrated_db().await;
    let c = db.client().await;
    c.batch_execute(
        "UPDATE refinery_schema_history SET checksum = '1' WHERE version = 20260202120000",
    )
    .await
    .unwrap();
    // When migrate runs
    let err = migrate::run(&db.conn())
        .await
        .expect_err("divergent must fail");
    // Then it names the divergent version
    let text = error_text(err);
    assert!(
        text.contains("V20260202120000__productivity_analytics") && text.contains("different"),
        "{text}"
    );
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
                stdout.contains("up to date (version 20261127000001)"),
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
    assert_eq!(history(&db.client().await).await.len(), 5);
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

/// One daily report (dated 2022-02-23) on its own jobsite, crew and employee; returns the
/// ids as text: (jobsite, report, crew, employee).
async fn seed_report(c: &Client, tag: &str, approved: bool) -> [String; 4] {
    let row = c
        .query_one(
            "WITH j AS (INSERT INTO dim_jobsite (mongo_id, name, jobcode)
                        VALUES ($1::text || 'j', 'Jobsite ' || $1::text, $1::text) RETURNING id),
                  cr AS (INSERT INTO dim_crew (mongo_id, name, type)
                        VALUES ($1::text || 'c', 'Crew ' || $1::text, 'Base') RETURNING id),
                  e AS (INSERT INTO dim_employee (mongo_id, name)
                        VALUES ($1::text || 'e', 'Employee ' || $1::text) RETURNING id),
                  dr AS (INSERT INTO dim_daily_report (mongo_id, jobsite_id, crew_id, report_date, approved)
                        SELECT $1::text || 'd', j.id, cr.id, DATE '2022-02-23', $2 FROM j, cr
                        RETURNING id, jobsite_id, crew_id)
             SELECT dr.jobsite_id::text, dr.id::text, dr.crew_id::text, e.id::text FROM dr, e",
            &[&tag, &approved],
        )
        .await
        .expect("seed daily report");
    [row.get(0), row.get(1), row.get(2), row.get(3)]
}

/// An employee-work fact; returns (hours, total_cost) as PostgreSQL prints them.
async fn employee_work(
    c: &Client,
    ids: &[String; 4],
    mongo_id: &str,
    start: &str,
    end: &str,
    rate: &str,
) -> (String, String) {
    let row = c
        .query_one(
            "INSERT INTO fact_employee_work (mongo_id, daily_report_id, jobsite_id, employee_id,
                 crew_id, crew_type, work_date, start_time, end_time, job_title, hourly_rate)
             VALUES ($1, $2::text::uuid, $3::text::uuid, $4::text::uuid, $5::text::uuid, 'Base',
                 DATE '2022-02-23', $6::text::timestamptz, $7::text::timestamptz, 'Foreman',
                 $8::text::numeric)
             RETURNING hours::text, total_cost::text",
            &[
                &mongo_id, &ids[1], &ids[0], &ids[3], &ids[2], &start, &end, &rate,
            ],
        )
        .await
        .expect("insert employee work");
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn generated_columns_compute_the_legacy_values() {
    let db = migrated_db().await;
    let c = db.client().await;
    let ids = seed_report(&c, "gen", true).await;
    // 07:00 → 15:20 at 25: hours rounded to 8.33, cost from the unrounded hours
    assert_eq!(
        employee_work(
            &c,
            &ids,
            "ew1",
            "2022-02-23T07:00:00Z",
            "2022-02-23T15:20:00Z",
            "25"
        )
        .await,
        ("8.33".to_string(), "208.33".to_string())
    );
    // 22:00 → 06:00 recorded on one day: an overnight shift, +24 h
    assert_eq!(
        employee_work(
            &c,
            &ids,
            "ew2",
            "2022-02-23T22:00:00Z",
            "2022-02-23T06:00:00Z",
            "30"
        )
        .await,
        ("8.00".to_string(), "240.00".to_string())
    );
    // 22:00 day 1 → 06:00 day 3: a 32 h span is kept as it is
    assert_eq!(
        employee_work(
            &c,
            &ids,
            "ew3",
            "2022-02-23T22:00:00Z",
            "2022-02-25T06:00:00Z",
            "10"
        )
        .await,
        ("32.00".to_string(), "320.00".to_string())
    );
    // fact_production.hours uses the same overnight rule
    let prod: String = c
        .query_one(
            "INSERT INTO fact_production (mongo_id, daily_report_id, jobsite_id, crew_id, crew_type,
                 work_date, job_title, quantity, unit, start_time, end_time)
             VALUES ('prod1', $1::text::uuid, $2::text::uuid, $3::text::uuid, 'Base',
                 DATE '2022-02-23', 'Grading', 150, 'tonnes',
                 TIMESTAMPTZ '2022-02-23T22:00:00Z', TIMESTAMPTZ '2022-02-23T06:00:00Z')
             RETURNING hours::text",
            &[&ids[1], &ids[0], &ids[2]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(prod, "8.00");
    // fact_vehicle_work.total_cost = hours × hourly_rate
    let vehicle_cost: String = c
        .query_one(
            "WITH v AS (INSERT INTO dim_vehicle (mongo_id, name, vehicle_code)
                        VALUES ('veh1', 'G-25', 'G-25') RETURNING id)
             INSERT INTO fact_vehicle_work (mongo_id, daily_report_id, jobsite_id, vehicle_id,
                 crew_id, crew_type, work_date, hours, hourly_rate)
             SELECT 'vw1', $1::text::uuid, $2::text::uuid, v.id, $3::text::uuid, 'Base',
                 DATE '2022-02-23', 2.5, 85.50 FROM v
             RETURNING total_cost::text",
            &[&ids[1], &ids[0], &ids[2]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(vehicle_cost, "213.75");
    // fact_material_shipment.total_cost = quantity × rate, rounded to cents
    let shipment_cost: String = c
        .query_one(
            "WITH m AS (INSERT INTO dim_material (mongo_id, name) VALUES ('mat1', 'Gravel') RETURNING id),
                  co AS (INSERT INTO dim_company (mongo_id, name) VALUES ('co1', 'Supplier') RETURNING id),
                  jm AS (INSERT INTO dim_jobsite_material (mongo_id, jobsite_id, material_id,
                             supplier_id, quantity, unit, cost_type)
                         SELECT 'jm1', $2::text::uuid, m.id, co.id, 100, 'tonnes', 'rate' FROM m, co
                         RETURNING id)
             INSERT INTO fact_material_shipment (mongo_id, daily_report_id, jobsite_id,
                 jobsite_material_id, crew_id, crew_type, work_date, quantity, unit, rate)
             SELECT 'ms1', $1::text::uuid, $2::text::uuid, jm.id, $3::text::uuid, 'Base',
                 DATE '2022-02-23', 12.5, 'tonnes', 10.33 FROM jm
             RETURNING total_cost::text",
            &[&ids[1], &ids[0], &ids[2]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(shipment_cost, "129.13");
}

#[tokio::test]
async fn jobsite_daily_summary_counts_approved_work_of_one_jobsite_only() {
    // Given two employee-work rows on one approved report (07:00–15:00Z at 25, 08:00–14:00Z
    // at 30), a row on another jobsite's approved report, and one on an unapproved report
    let db = migrated_db().await;
    let c = db.client().await;
    let a = seed_report(&c, "a", true).await;
    let b = seed_report(&c, "b", true).await;
    let u = seed_report(&c, "u", false).await;
    employee_work(
        &c,
        &a,
        "a1",
        "2022-02-23T07:00:00Z",
        "2022-02-23T15:00:00Z",
        "25",
    )
    .await;
    employee_work(
        &c,
        &a,
        "a2",
        "2022-02-23T08:00:00Z",
        "2022-02-23T14:00:00Z",
        "30",
    )
    .await;
    employee_work(
        &c,
        &b,
        "b1",
        "2022-02-23T07:00:00Z",
        "2022-02-23T17:00:00Z",
        "50",
    )
    .await;
    employee_work(
        &c,
        &u,
        "u1",
        "2022-02-23T07:00:00Z",
        "2022-02-23T15:00:00Z",
        "25",
    )
    .await;
    // When the report layer is read
    let summary = |jobsite: String| {
        let c = &c;
        async move {
            c.query(
                "SELECT jobsite_name::text, employee_hours::text, employee_cost::text,
                        total_cost::text, crew_types::text
                   FROM jobsite_daily_summary WHERE jobsite_id = $1::text::uuid",
                &[&jobsite],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (0..5)
                    .map(|i| r.get::<_, String>(i))
                    .collect::<Vec<String>>()
            })
            .collect::<Vec<_>>()
        }
    };
    // Then jobsite A has 14 hours and 380.00 of labour, untouched by jobsite B
    assert_eq!(
        summary(a[0].clone()).await,
        vec![vec!["Jobsite a", "14.00", "380.00", "380.00", "{Base}"]]
    );
    assert_eq!(
        summary(b[0].clone()).await,
        vec![vec!["Jobsite b", "10.00", "500.00", "500.00", "{Base}"]]
    );
    // And the unapproved report gives no day at all
    assert!(summary(u[0].clone()).await.is_empty());
    // And the financial summary and the period function agree
    let row = c
        .query_one(
            "SELECT employee_hours::text, employee_cost::text, net_income::text, days_worked
               FROM jobsite_period_summary($1::text::uuid, DATE '2022-02-01', DATE '2022-02-28')",
            &[&a[0]],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2),
            row.get::<_, i64>(3)
        ),
        ("14.00".into(), "380.00".into(), "-380.00".into(), 1)
    );
    let days: i64 = c
        .query_one("SELECT count(*) FROM jobsite_daily_financial_summary", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(days, 2);
}
