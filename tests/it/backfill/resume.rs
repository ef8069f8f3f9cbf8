//! Killed and resumed, restarted, and locked backfills.

use std::process::Stdio;
use std::time::Duration;

use super::{assert_success, content, count, resumed_and_read, run_cli, temp_pipeline, text};
use crate::support::{self, TestDb};

const COLLECTIONS: &str = "companies,jobsites,invoices";

/// Start the backfill of the paving dump (tiny chunks) as a child process.
fn spawn(db: &TestDb, pipeline: &std::path::Path, dump: &str) -> std::process::Child {
    let mut cmd = support::cdc_bin();
    cmd.args(["backfill", "--pipeline"])
        .arg(pipeline)
        .args(["--from-dump", dump, "--collections", COLLECTIONS])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in support::child_env(db, None, None) {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn backfill")
}

/// Wait until PostgreSQL has noticed the killed backfill's connection (its advisory lock is
/// gone), so the next run does not race the dead session's last statement.
async fn released(c: &tokio_postgres::Client) {
    support::eventually(
        "the killed backfill's lock released",
        Duration::from_secs(60),
        || async {
            let n = count(
                c,
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
             WHERE l.locktype = 'advisory' AND d.datname = current_database()",
            )
            .await;
            (n == 0).then_some(())
        },
    )
    .await;
}

/// Invoices completed so far by the running backfill.
async fn invoices_done(c: &tokio_postgres::Client) -> Option<i64> {
    c.query_opt(
        "SELECT docs_done FROM cdc.backfill_progress \
         WHERE collection = 'invoices' AND status = 'running'",
        &[],
    )
    .await
    .ok()
    .flatten()
    .map(|r| r.get(0))
}

/// Given a backfill killed (SIGKILL) in the middle of the invoices, when it is started again,
/// then it continues from the last committed chunk (the summary shows where it resumed and
/// reads only the rest), and the database equals an uninterrupted run's. `--restart` then
/// starts over from zero and changes nothing.
#[tokio::test]
async fn a_killed_backfill_continues_from_its_last_chunk_and_equals_an_uninterrupted_run() {
    let Some(dir) = support::fixtures("paving") else {
        return;
    };
    let dump = dir.to_str().unwrap();
    let p = temp_pipeline("paving", None, Some(100));

    let killed = support::migrated_db().await;
    let c = killed.client().await;
    let mut child = spawn(&killed, &p.path, dump);
    let done_at_kill =
        support::eventually("invoices half way", Duration::from_secs(120), || async {
            invoices_done(&c).await.filter(|n| *n >= 1000)
        })
        .await;
    child.kill().expect("kill");
    let _ = child.wait();
    released(&c).await;
    let after_kill = invoices_done(&c)
        .await
        .expect("invoices still running after the kill");
    assert!(
        after_kill >= done_at_kill && after_kill < 6_867,
        "{after_kill}"
    );

    let out = run_cli(
        &killed,
        &p.path,
        None,
        &["--from-dump", dump, "--collections", COLLECTIONS],
    );
    assert_success(&out);
    let stdout = text(&out.stdout);
    let (resumed, read) = resumed_and_read(&stdout, "invoices");
    assert_eq!(
        resumed as i64, after_kill,
        "resumed where the kill left it:\n{stdout}"
    );
    assert_eq!(resumed + read, 6_867, "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("companies") && l.contains("earlier run")),
        "companies were complete before the kill:\n{stdout}"
    );

    let whole = support::migrated_db().await;
    let out = run_cli(
        &whole,
        &p.path,
        None,
        &["--from-dump", dump, "--collections", COLLECTIONS],
    );
    assert_success(&out);
    let w = whole.client().await;
    assert_eq!(count(&c, "SELECT count(*) FROM fact_invoice").await, 6_238);
    assert_eq!(
        content(&c).await,
        content(&w).await,
        "resumed run differs from an uninterrupted one"
    );

    let out = run_cli(
        &killed,
        &p.path,
        None,
        &[
            "--from-dump",
            dump,
            "--collections",
            COLLECTIONS,
            "--restart",
        ],
    );
    assert_success(&out);
    let stdout = text(&out.stdout);
    assert_eq!(
        resumed_and_read(&stdout, "invoices"),
        (0, 6_867),
        "{stdout}"
    );
    assert_eq!(resumed_and_read(&stdout, "companies"), (0, 377), "{stdout}");
    assert_eq!(
        count(
            &c,
            "SELECT docs_done FROM cdc.backfill_progress WHERE collection = 'invoices'"
        )
        .await,
        6_867
    );
    assert_eq!(
        content(&c).await,
        content(&w).await,
        "--restart changed the result"
    );
}

/// Given a backfill of a pipeline in progress, when a second one starts on the same database,
/// then it refuses with a clear message instead of running alongside; and a finished backfill
/// run again without --restart has nothing left to do.
#[tokio::test]
async fn a_second_backfill_of_the_same_pipeline_is_refused_while_one_runs() {
    let Some(dir) = support::fixtures("paving") else {
        return;
    };
    let dump = dir.to_str().unwrap();
    let p = temp_pipeline("paving", None, Some(10));
    let db = support::migrated_db().await;
    let c = db.client().await;
    let mut first = spawn(&db, &p.path, dump);
    support::eventually(
        "first backfill running",
        Duration::from_secs(60),
        || async {
            (count(
                &c,
                "SELECT count(*) FROM cdc.backfill_progress WHERE status = 'running'",
            )
            .await
                > 0)
            .then_some(())
        },
    )
    .await;
    let out = run_cli(
        &db,
        &p.path,
        None,
        &["--from-dump", dump, "--collections", COLLECTIONS],
    );
    let still_running = first.try_wait().expect("try_wait").is_none();
    let _ = first.kill();
    let _ = first.wait();
    assert!(
        still_running,
        "the first backfill ended before the second started"
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("another backfill of pipeline paving is running"),
        "{err}"
    );

    // The killed first run is resumed to the end; a further run finds everything complete.
    assert_success(&run_cli(
        &db,
        &p.path,
        None,
        &["--from-dump", dump, "--collections", COLLECTIONS],
    ));
    let out = run_cli(
        &db,
        &p.path,
        None,
        &["--from-dump", dump, "--collections", COLLECTIONS],
    );
    assert_success(&out);
    let stdout = text(&out.stdout);
    assert_eq!(
        resumed_and_read(&stdout, "invoices"),
        (6_867, 0),
        "{stdout}"
    );

    // A different source while progress exists is refused unless --restart.
    let other = tempfile::tempdir().unwrap();
    let out = run_cli(
        &db,
        &p.path,
        None,
        &[
            "--from-dump",
            other.path().to_str().unwrap(),
            "--collections",
            COLLECTIONS,
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--restart"),
        "{}",
        text(&out.stderr)
    );
}

/// The schema of a database (relations, constraints, indexes), whatever objects were rebuilt.
async fn schema(c: &tokio_postgres::Client) -> Vec<String> {
    let cat = crate::migrate::catalog::snapshot(c).await;
    [cat.relations, cat.constraints, cat.indexes].concat()
}

/// The tables whose indexes and foreign keys wait in `cdc.deferred_ddl`, and whether each of
/// them is gone from the catalog meanwhile.
async fn deferred(c: &tokio_postgres::Client) -> Vec<(String, bool)> {
    c.query(
        "SELECT table_name, bool_and(NOT EXISTS (SELECT 1 FROM pg_class WHERE relname = d.name) \
                AND NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = d.name)) \
         FROM cdc.deferred_ddl d GROUP BY table_name ORDER BY table_name",
        &[],
    )
    .await
    .expect("deferred_ddl")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Given a generated dump whose four children collections load side by side, when the backfill
/// is killed while two of them are half way and started again, then each continues from its
/// own last chunk, and the database equals an uninterrupted run's. The killed run had dropped
/// the loading tables' non-unique indexes and foreign keys (bulk load) and left them recorded;
/// `migrate` rebuilds them, and every run leaves the schema as migrated.
#[tokio::test]
async fn a_backfill_killed_while_children_load_side_by_side_resumes_to_the_same_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = super::workload::Workload::generate(21, super::workload::Shape::realistic(800));
    w.write_dump(dir.path()).expect("write dump");
    let dump = dir.path().to_str().unwrap();
    let p = temp_pipeline("paving", None, Some(20));

    let killed = support::migrated_db().await;
    let c = killed.client().await;
    let mut cmd = support::cdc_bin();
    cmd.args(["backfill", "--pipeline"])
        .arg(&p.path)
        .args(["--from-dump", dump])
        .envs(support::child_env(&killed, None, None))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn backfill");
    // Two children collections committed chunks and are still running at the same time.
    let running = support::eventually(
        "two children collections loading at once",
        Duration::from_secs(120),
        || async {
            let rows = c
                .query(
                    "SELECT collection FROM cdc.backfill_progress WHERE status = 'running' \
                     AND docs_done > 0 AND collection IN \
                     ('employeeworks', 'vehicleworks', 'materialshipments', 'productions')",
                    &[],
                )
                .await
                .ok()?;
            (rows.len() >= 2).then(|| {
                rows.iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<Vec<_>>()
            })
        },
    )
    .await;
    child.kill().expect("kill");
    let _ = child.wait();
    released(&c).await;
    let fresh = schema(&support::migrated_db().await.client().await).await;
    let waiting = deferred(&c).await;
    for (coll, table) in [
        ("employeeworks", "fact_employee_work"),
        ("vehicleworks", "fact_vehicle_work"),
        ("materialshipments", "fact_material_shipment"),
        ("productions", "fact_production"),
    ] {
        if running.iter().any(|r| r == coll) {
            assert!(
                waiting.contains(&(table.to_string(), true)),
                "{table} ({coll} was loading) has its indexes and foreign keys dropped and \
                 recorded: {waiting:?}"
            );
        }
    }
    assert_ne!(
        schema(&c).await,
        fresh,
        "the killed run left tables without their indexes"
    );
    let migrate = support::cdc_bin()
        .args(["migrate", "--pipeline"])
        .arg(&p.path)
        .envs(support::child_env(&killed, None, None))
        .output()
        .expect("run migrate");
    assert_success(&migrate);
    assert!(
        text(&migrate.stdout).contains("indexes and foreign keys an interrupted bulk backfill"),
        "{}",
        text(&migrate.stdout)
    );
    assert_eq!(deferred(&c).await, vec![], "migrate rebuilt everything");
    assert_eq!(
        schema(&c).await,
        fresh,
        "migrate restored the migrated schema"
    );

    let out = run_cli(&killed, &p.path, None, &["--from-dump", dump]);
    assert_success(&out);
    let stdout = text(&out.stdout);
    for coll in &running {
        let (resumed, read) = resumed_and_read(&stdout, coll);
        assert!(resumed > 0, "{coll} resumed from its chunk:\n{stdout}");
        assert_eq!(
            (resumed + read) as usize,
            w.count(coll),
            "{coll}: resumed + read = all\n{stdout}"
        );
    }

    let whole = support::migrated_db().await;
    let out = run_cli(&whole, &p.path, None, &["--from-dump", dump]);
    assert_success(&out);
    assert!(
        text(&out.stderr).contains("the reports load side by side"),
        "a first load runs the reports on both connections:\n{}",
        text(&out.stderr)
    );
    assert_eq!(
        content(&c).await,
        content(&whole.client().await).await,
        "resumed run differs from an uninterrupted one"
    );
    assert_eq!(
        schema(&c).await,
        fresh,
        "the resumed run leaves the schema as migrated"
    );
    assert_eq!(
        schema(&whole.client().await).await,
        fresh,
        "a bulk load leaves the schema as migrated"
    );
    assert_eq!(deferred(&whole.client().await).await, vec![]);
}

/// Run the backfill of `dump` as a child process and SIGKILL it once `collection` has committed
/// a chunk and is still running; returns when PostgreSQL has released the dead session.
async fn kill_while_loading(db: &TestDb, pipeline: &std::path::Path, dump: &str, collection: &str) {
    let c = db.client().await;
    let mut child = support::cdc_bin()
        .args(["backfill", "--pipeline"])
        .arg(pipeline)
        .args(["--from-dump", dump])
        .envs(support::child_env(db, None, None))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn backfill");
    let sql = format!(
        "SELECT COALESCE(max(docs_done), 0) FROM cdc.backfill_progress \
         WHERE collection = '{collection}' AND status = 'running'"
    );
    support::eventually(
        &format!("{collection} half loaded"),
        Duration::from_secs(120),
        || async { (count(&c, &sql).await > 0).then_some(()) },
    )
    .await;
    child.kill().expect("kill");
    let _ = child.wait();
    released(&c).await;
}

/// Given a generated dump, when the backfill is killed while the daily reports load on two
/// connections (chunks committing in reading order) and started again, then the reports
/// continue from the last committed chunk and the database equals an uninterrupted run's.
#[tokio::test]
async fn a_backfill_killed_while_reports_load_side_by_side_resumes_to_the_same_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = super::workload::Workload::generate(22, super::workload::Shape::realistic(800));
    w.write_dump(dir.path()).expect("write dump");
    let dump = dir.path().to_str().unwrap();
    let p = temp_pipeline("paving", None, Some(20));

    let killed = support::migrated_db().await;
    let c = killed.client().await;
    kill_while_loading(&killed, &p.path, dump, "dailyreports").await;
    let committed = count(
        &c,
        "SELECT docs_done FROM cdc.backfill_progress WHERE collection = 'dailyreports'",
    )
    .await;
    let waiting = deferred(&c).await;
    for table in ["cdc.report_child", "dim_daily_report"] {
        assert!(
            waiting.contains(&(table.to_string(), true)),
            "{table} is loading in bulk: its keys or indexes wait in cdc.deferred_ddl: {waiting:?}"
        );
    }
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM cdc.source_doc WHERE entity = 'daily_report'"
        )
        .await,
        committed,
        "the checkpoint covers exactly the committed reports (a prefix of the dump)"
    );

    let out = run_cli(&killed, &p.path, None, &["--from-dump", dump]);
    assert_success(&out);
    let (resumed, read) = resumed_and_read(&text(&out.stdout), "dailyreports");
    assert_eq!(resumed, committed as u64);
    assert_eq!((resumed + read) as usize, w.count("dailyreports"));

    let whole = support::migrated_db().await;
    assert_success(&run_cli(&whole, &p.path, None, &["--from-dump", dump]));
    assert_eq!(
        content(&c).await,
        content(&whole.client().await).await,
        "resumed run differs from an uninterrupted one"
    );
    let fresh = schema(&support::migrated_db().await.client().await).await;
    assert_eq!(
        schema(&c).await,
        fresh,
        "the resumed run rebuilt what the killed one dropped"
    );
    assert_eq!(schema(&whole.client().await).await, fresh);
}

/// Given a backfill killed while `fact_employee_work` loads without its foreign keys, when a
/// referenced employee row is deleted meanwhile (as the daemon may delete a dimension row),
/// then `migrate` rebuilds the keys after removing the rows the ON DELETE CASCADE would have
/// removed, and the schema is as migrated.
#[tokio::test]
async fn a_rebuilt_foreign_key_first_removes_what_its_cascade_would_have() {
    let dir = tempfile::tempdir().expect("tempdir");
    super::workload::Workload::generate(24, super::workload::Shape::realistic(800))
        .write_dump(dir.path())
        .expect("write dump");
    let dump = dir.path().to_str().unwrap();
    let p = temp_pipeline("paving", None, Some(20));
    let db = support::migrated_db().await;
    let c = db.client().await;
    kill_while_loading(&db, &p.path, dump, "employeeworks").await;
    assert!(
        deferred(&c)
            .await
            .contains(&("fact_employee_work".to_string(), true)),
        "fact_employee_work loads without its foreign keys"
    );
    let employee: uuid::Uuid = c
        .query_one("SELECT employee_id FROM fact_employee_work LIMIT 1", &[])
        .await
        .expect("a loaded work row")
        .get(0);
    let referencing = "SELECT count(*) FROM fact_employee_work WHERE employee_id = $1";
    let n: i64 = c.query_one(referencing, &[&employee]).await.unwrap().get(0);
    assert!(n > 0);
    c.execute("DELETE FROM dim_employee WHERE id = $1", &[&employee])
        .await
        .expect("delete the employee row");

    let migrate = support::cdc_bin()
        .args(["migrate", "--pipeline"])
        .arg(&p.path)
        .envs(support::child_env(&db, None, None))
        .output()
        .expect("run migrate");
    assert_success(&migrate);
    let n: i64 = c.query_one(referencing, &[&employee]).await.unwrap().get(0);
    assert_eq!(n, 0, "the cascade's rows are gone");
    let fresh = schema(&support::migrated_db().await.client().await).await;
    assert_eq!(schema(&c).await, fresh);
}
