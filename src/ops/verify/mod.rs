//! `bowmark-cdc verify`: is the reporting database right?
//!
//! Two checks, each reported per collection or table with counts and up to `max_keys` keys:
//! - source against mirror ([`source`]): every document of MongoDB (or of a mongodump folder)
//!   is in `cdc.source_doc` with the same content, and no live mirror document is missing from
//!   the source;
//! - mirror against star ([`star`]): every star row derived afresh from the mirror, inside one
//!   snapshot, into temporary tables that shadow the star tables, compared by content with the
//!   live rows.
//!
//! It takes no lock the daemon waits for and never writes a star row; each run is recorded in
//! `cdc.verify_run`, whose latest row the daemon exports as metrics.

pub mod legacy;
pub mod source;
pub mod star;

use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::{Client, IsolationLevel};

use super::{OpsError, connect_pg, require_tables};
use crate::config::Settings;
use crate::metrics as m;
use crate::project;

pub use legacy::LegacyReport;
pub use source::{CollectionReport, SourceSpec};
pub use star::TableReport;

/// Drifted keys listed per collection or table by default.
pub const DEFAULT_MAX_KEYS: usize = 20;
/// How long drifted documents of a live source are re-checked by default, for events still in
/// flight through the broker.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(30);

/// What to verify.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The source to compare the mirror with; `None`: only the mirror against the star.
    pub source: Option<SourceSpec>,
    pub max_keys: usize,
    pub settle: Duration,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            source: Some(SourceSpec::Mongo),
            max_keys: DEFAULT_MAX_KEYS,
            settle: DEFAULT_SETTLE,
        }
    }
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub pipeline: String,
    /// `mongodb`, `dump` or `none`.
    pub source: &'static str,
    pub started_at: DateTime<Utc>,
    pub duration_secs: f64,
    /// Source against mirror, by collection (empty when the source was not compared).
    pub collections: Vec<CollectionReport>,
    /// Mirror against star, by table.
    pub tables: Vec<TableReport>,
    /// Documents whose rows PostgreSQL rejects (entity, key): a fresh projection leaves them
    /// out, as the daemon does (see `cdc.quarantine`).
    pub quarantined: Vec<(String, String)>,
    /// Drifted documents plus drifted star rows.
    pub drift: u64,
}

impl VerifyReport {
    pub fn clean(&self) -> bool {
        self.drift == 0
    }
}

/// Run both checks and record the run.
pub async fn run_verify(
    settings: &Settings,
    opts: &VerifyOptions,
) -> Result<VerifyReport, OpsError> {
    let started = Instant::now();
    let started_at = Utc::now();
    let p = &settings.pipeline;
    let mut pg = connect_pg(settings).await?;
    require_tables(&pg, settings, &["cdc.source_doc", "cdc.verify_run"]).await?;
    let collections = match &opts.source {
        Some(spec) => source::check(&pg, settings, spec, opts.max_keys, opts.settle).await?,
        None => Vec::new(),
    };
    let (tables, quarantined) = check_star(&mut pg, settings, opts.max_keys).await?;
    let drift = collections.iter().map(CollectionReport::drift).sum::<u64>()
        + tables.iter().map(TableReport::drift).sum::<u64>();
    let report = VerifyReport {
        pipeline: p.name.clone(),
        source: opts.source.as_ref().map_or("none", SourceSpec::label),
        started_at,
        duration_secs: started.elapsed().as_secs_f64(),
        collections,
        tables,
        quarantined,
        drift,
    };
    record(&pg, &report).await?;
    tracing::info!(pipeline = %p.name, drift, elapsed_s = report.duration_secs, "verify done");
    Ok(report)
}

/// The cutover comparison: the legacy sync's reporting database at `legacy_url` against the
/// pipeline's ([`legacy`]).
pub async fn run_legacy_compare(
    settings: &Settings,
    legacy_url: &str,
    max_keys: usize,
) -> Result<LegacyReport, OpsError> {
    let pg = connect_pg(settings).await?;
    require_tables(&pg, settings, &["cdc.source_doc"]).await?;
    legacy::compare_with_legacy(&pg, legacy_url, max_keys).await
}

/// Derive every star row afresh from the mirror into temporary tables of the star tables'
/// names (found first on the search path), in the same snapshot as the live rows read beside
/// them; compare; roll back.
async fn check_star(
    pg: &mut Client,
    settings: &Settings,
    max_keys: usize,
) -> Result<(Vec<TableReport>, Vec<(String, String)>), OpsError> {
    let pipeline = &settings.pipeline;
    let tables = crate::model::star_tables();
    let schema: Option<String> = pg
        .query_one(
            "SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = to_regclass($1)",
            &[&tables[0]],
        )
        .await
        .map_err(OpsError::pg("catalog"))?
        .get(0);
    let schema = schema.ok_or_else(|| OpsError::NotMigrated {
        database: settings.postgres.database.clone(),
        table: "the star tables",
    })?;
    let live = format!("\"{}\"", schema.replace('"', "\"\""));
    let tx = pg
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .start()
        .await
        .map_err(OpsError::pg("begin"))?;
    // (the first statement takes the snapshot that the derivation and the live rows share)
    let mut ddl = String::from("SELECT 1;");
    for t in &tables {
        ddl.push_str(&format!(
            "CREATE TEMP TABLE {t} (LIKE {live}.{t} INCLUDING ALL) ON COMMIT DROP;"
        ));
    }
    tx.batch_execute(&ddl)
        .await
        .map_err(OpsError::pg("scratch star tables"))?;
    tracing::info!(pipeline = %pipeline.name, "verify: deriving every star row afresh from the mirror");
    let stats = project::derive_afresh(&tx, pipeline)
        .await
        .map_err(OpsError::Project)?;
    tracing::info!(pipeline = %pipeline.name, "verify: comparing the fresh rows with the live ones");
    let live_rows = star::read(&tx, &live)
        .await
        .map_err(OpsError::pg("star rows"))?;
    let fresh_rows = star::read(&tx, "pg_temp")
        .await
        .map_err(OpsError::pg("fresh star rows"))?;
    tx.rollback().await.map_err(OpsError::pg("rollback"))?;
    Ok((
        star::compare(&live_rows, &fresh_rows, max_keys),
        stats.quarantined.into_iter().collect(),
    ))
}

async fn record(pg: &Client, report: &VerifyReport) -> Result<(), OpsError> {
    let json = serde_json::to_string(report).unwrap_or_else(|_| "{}".into());
    pg.execute(
        "INSERT INTO cdc.verify_run (pipeline, started_at, source, drift_rows, report) \
         VALUES ($1, $2, $3, $4, $5::text::jsonb)",
        &[
            &report.pipeline,
            &report.started_at,
            &report.source,
            &(report.drift as i64),
            &json,
        ],
    )
    .await
    .map_err(OpsError::pg("cdc.verify_run"))?;
    Ok(())
}

/// The daemon's export of the last verify run of `pipeline`: `cdc_verify_drift_rows` and
/// `cdc_verify_last_run_timestamp_seconds` (`since` when no run is recorded yet, so that the
/// "no verify for two days" alert counts from the daemon's start).
pub(crate) async fn export_last_run(
    client: &impl tokio_postgres::GenericClient,
    pipeline: &str,
    since: DateTime<Utc>,
) -> Result<(), tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT drift_rows, extract(epoch FROM finished_at)::float8 FROM cdc.verify_run \
             WHERE pipeline = $1 ORDER BY finished_at DESC LIMIT 1",
            &[&pipeline],
        )
        .await?;
    let (drift, at) = match row {
        Some(r) => (r.get::<_, i64>(0) as f64, r.get::<_, f64>(1)),
        None => (0.0, since.timestamp() as f64),
    };
    metrics::gauge!(m::VERIFY_DRIFT_ROWS, m::LABEL_PIPELINE => pipeline.to_string()).set(drift);
    metrics::gauge!(m::VERIFY_LAST_RUN_TIMESTAMP, m::LABEL_PIPELINE => pipeline.to_string())
        .set(at);
    Ok(())
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "verify {} ({} against mirror, mirror against star) in {:.1}s: {}",
            self.pipeline,
            self.source,
            self.duration_secs,
            if self.clean() {
                "clean".to_string()
            } else {
                format!("{} drifted", self.drift)
            }
        )?;
        if !self.collections.is_empty() {
            writeln!(f, "\nsource against mirror")?;
            writeln!(
                f,
                "{:<28} {:>9} {:>9} {:>9} {:>8} {:>10} {:>8}",
                "collection", "source", "mirror", "missing", "differs", "unexpected", "late"
            )?;
            for c in &self.collections {
                writeln!(
                    f,
                    "{:<28} {:>9} {:>9} {:>9} {:>8} {:>10} {:>8}",
                    c.collection,
                    c.source_docs,
                    c.mirror_docs,
                    c.missing,
                    c.differing,
                    c.unexpected,
                    c.left_out
                )?;
                for d in &c.docs {
                    let fields = if d.fields.is_empty() {
                        String::new()
                    } else {
                        format!(" (fields: {})", d.fields.join(", "))
                    };
                    writeln!(f, "  {:?} {} {}{fields}", d.drift, c.collection, d.key)?;
                }
            }
        }
        writeln!(f, "\nmirror against star")?;
        writeln!(
            f,
            "{:<28} {:>9} {:>9} {:>9} {:>8} {:>10} {:>8}",
            "table", "live", "fresh", "missing", "differs", "unexpected", "retired"
        )?;
        for t in &self.tables {
            writeln!(
                f,
                "{:<28} {:>9} {:>9} {:>9} {:>8} {:>10} {:>8}",
                t.table,
                t.live_rows,
                t.fresh_rows,
                t.missing,
                t.differing,
                t.unexpected,
                t.retired_only_live
            )?;
            for r in &t.rows {
                writeln!(
                    f,
                    "  {:?} {} {} (columns: {})",
                    r.drift,
                    t.table,
                    r.key,
                    r.columns.join(", ")
                )?;
            }
        }
        if !self.quarantined.is_empty() {
            writeln!(
                f,
                "\n{} quarantined documents are left out of both (see cdc.quarantine)",
                self.quarantined.len()
            )?;
        }
        if !self.clean() {
            writeln!(
                f,
                "\nTo repair: `bowmark-cdc reproject` rebuilds the star rows from the mirror; a \
                 backfill reloads the mirror from the source."
            )?;
        }
        Ok(())
    }
}
