//! The backfill Job against a real PostgreSQL: from the legacy dev dumps (`../shared`
//! fixtures), from corrupt dumps, killed and resumed, restarted, locked, and from a live
//! MongoDB (the simulator) with the change-stream handoff.

pub mod workload;

mod dump;
mod guards;
mod live;
mod metrics;
mod resume;

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::support::{self, TestDb};

/// A pipeline file in a temporary folder: `pipeline/<name>.toml` with the Mongo database and
/// the backfill chunk size replaced.
pub struct TempPipeline {
    /// Kept so the folder lives as long as the pipeline file is used.
    pub _dir: tempfile::TempDir,
    pub path: PathBuf,
}

pub fn temp_pipeline(
    name: &str,
    mongo_db: Option<&str>,
    chunk_size: Option<usize>,
) -> TempPipeline {
    let src = support::project_root()
        .join("pipeline")
        .join(format!("{name}.toml"));
    let mut text = std::fs::read_to_string(&src).expect("pipeline file");
    if let Some(db) = mongo_db {
        text = text.replace(
            &format!("[mongo]\ndatabase = \"{name}\""),
            &format!("[mongo]\ndatabase = \"{db}\""),
        );
        assert!(
            text.contains(db),
            "pipeline/{name}.toml: [mongo] database not replaced"
        );
    }
    if let Some(n) = chunk_size {
        text.push_str(&format!("\n[backfill]\nchunk_size = {n}\n"));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write pipeline");
    TempPipeline { _dir: dir, path }
}

/// Run `bowmark-cdc backfill --pipeline <file> <args>` against `db` to completion.
pub fn run_cli(db: &TestDb, pipeline: &Path, mongo_uri: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = support::cdc_bin();
    cmd.arg("backfill")
        .arg("--pipeline")
        .arg(pipeline)
        .args(args);
    for (k, v) in support::child_env(db, None, mongo_uri) {
        cmd.env(k, v);
    }
    cmd.output().expect("run bowmark-cdc backfill")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Panic with both streams unless the run exited 0.
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "backfill failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// A fresh database backfilled by `bowmark-cdc backfill` (paving pipeline) from the MongoDB at
/// `mongo_uri`, or from what `args` name (`--from-dump DIR`): what the star schema should be
/// for that source. Panics unless the run succeeds; returns its output too.
pub async fn fresh_backfill(mongo_uri: Option<&str>, args: &[&str]) -> (TestDb, Output) {
    let fresh = support::migrated_db().await;
    let pipeline = support::project_root().join("pipeline/paving.toml");
    let env = support::child_env(&fresh, None, mongo_uri);
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    // (blocking on the child in the blocking pool: a simulator may run on the test's runtime)
    let out = tokio::task::spawn_blocking(move || {
        support::cdc_bin()
            .arg("backfill")
            .arg("--pipeline")
            .arg(pipeline)
            .args(args)
            .envs(env)
            .output()
            .expect("run bowmark-cdc backfill")
    })
    .await
    .unwrap();
    assert_success(&out);
    (fresh, out)
}

pub async fn count(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .get(0)
}

/// Every star row by content (surrogate ids, foreign keys by uuid and `synced_at` removed,
/// foreign keys replaced by the referenced `mongo_id` where the table has one), plus the
/// mirror, sorted: two databases holding the same state give equal vectors.
pub async fn content(c: &tokio_postgres::Client) -> Vec<String> {
    let mut out = Vec::new();
    for t in support::star_tables() {
        let sql = format!(
            "SELECT '{t} ' || (to_jsonb(x) - 'id' - 'synced_at' \
                - 'jobsite_id' - 'crew_id' - 'employee_id' - 'vehicle_id' - 'company_id' \
                - 'material_id' - 'supplier_id' - 'daily_report_id' \
                - 'jobsite_material_id' - 'archived_at')::text FROM {t} x"
        );
        for r in c
            .query(&sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        {
            out.push(r.get::<_, String>(0));
        }
    }
    for r in c
        .query(
            "SELECT entity || ' ' || key || ' ' || deleted::text || ' ' || \
                    COALESCE(doc::text, 'null') FROM cdc.source_doc",
            &[],
        )
        .await
        .expect("mirror")
    {
        out.push(r.get::<_, String>(0));
    }
    out.sort();
    out
}

/// The summary row of a collection in the printed table.
pub fn summary_row<'a>(stdout: &'a str, coll: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(coll))
        .unwrap_or_else(|| panic!("no summary row for {coll} in:\n{stdout}"))
}

/// The numeric columns (`resumed`, `read`) of a collection's summary row.
pub fn resumed_and_read(stdout: &str, coll: &str) -> (u64, u64) {
    let row = summary_row(stdout, coll);
    let cols: Vec<&str> = row.split_whitespace().collect();
    // collection, status (1 word for "complete"), resumed, read, done/total, ...
    let nums: Vec<u64> = cols.iter().skip(1).filter_map(|c| c.parse().ok()).collect();
    (nums[0], nums[1])
}
