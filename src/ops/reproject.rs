//! `bowmark-cdc reproject`: rebuild the star rows from the `cdc` source mirror alone (no
//! MongoDB), in one transaction under the projection lock held exclusive, like a streaming
//! batch: the daemon's batches wait for it, and readers see the old rows until it commits.

use std::collections::BTreeMap;
use std::fmt;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use crate::config::Settings;
use crate::event::Entity;
use crate::project::{self, RULES_VERSION};

use super::{OpsError, connect_pg, require_tables};

/// What to rebuild.
#[derive(Debug, Clone, Default)]
pub struct ReprojectOptions {
    /// Only these star tables (and the tables derived from the same source documents); every
    /// table when empty. A partial reprojection does not record the rules version.
    pub tables: Vec<String>,
    /// A spinner on stderr while it runs (when stderr is a terminal).
    pub progress: bool,
}

/// The result of a reprojection.
#[derive(Debug, Clone, PartialEq)]
pub struct ReprojectSummary {
    pub pipeline: String,
    /// The tables asked for (empty: all).
    pub tables: Vec<String>,
    /// The source entities whose documents were reprojected.
    pub entities: Vec<Entity>,
    /// Mirror documents read (tombstones included).
    pub documents: u64,
    /// Star rows inserted, updated, archived or deleted, by table.
    pub rows_written: BTreeMap<String, u64>,
    /// Values adjusted so that no row is rejected, by `table.column (adjustment)`.
    pub adjusted: BTreeMap<String, u64>,
    /// Documents whose rows PostgreSQL rejects: quarantined, their rows left out.
    pub quarantined: Vec<(String, String)>,
    /// The rules version recorded (a complete reprojection only).
    pub rules_recorded: Option<i32>,
    pub duration: Duration,
}

/// Rebuild the star rows of the pipeline's database from its mirror; commit; record the rules
/// version when every table was rebuilt.
pub async fn run_reproject(
    settings: &Settings,
    opts: &ReprojectOptions,
) -> Result<ReprojectSummary, OpsError> {
    let started = Instant::now();
    let p = &settings.pipeline;
    let entities = if opts.tables.is_empty() {
        None
    } else {
        Some(project::entities_of_tables(&opts.tables).map_err(OpsError::Usage)?)
    };
    let mut client = connect_pg(settings).await?;
    require_tables(
        &client,
        settings,
        &["cdc.source_doc", "cdc.quarantine", "cdc.projection_rules"],
    )
    .await?;
    let names: Vec<&str> = entities.iter().flatten().map(|e| e.as_str()).collect();
    let documents: i64 = client
        .query_one(
            "SELECT count(*) FROM cdc.source_doc WHERE $1::text[] = '{}' OR entity = ANY($1)",
            &[&names],
        )
        .await
        .map_err(OpsError::pg("cdc.source_doc"))?
        .get(0);
    let spinner = (opts.progress && std::io::stderr().is_terminal()).then(|| {
        let s = indicatif::ProgressBar::new_spinner();
        s.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        s.set_message(format!(
            "reprojecting {documents} mirror documents of {} (waiting for the projection lock, then one transaction)",
            p.name
        ));
        s.enable_steady_tick(Duration::from_millis(200));
        s
    });
    tracing::info!(pipeline = %p.name, documents, tables = ?opts.tables, "reprojection started");
    let result = async {
        let tx = client.transaction().await.map_err(OpsError::pg("begin"))?;
        let stats = project::reproject(&tx, p, entities.as_deref())
            .await
            .map_err(OpsError::Project)?;
        let rules = if entities.is_none() {
            project::record_rules_version(&tx, &p.name)
                .await
                .map_err(OpsError::pg("cdc.projection_rules"))?;
            Some(RULES_VERSION)
        } else {
            None
        };
        tx.commit().await.map_err(OpsError::pg("commit"))?;
        Ok::<_, OpsError>((stats, rules))
    }
    .await;
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    let (stats, rules_recorded) = result?;
    let summary = ReprojectSummary {
        pipeline: p.name.clone(),
        tables: opts.tables.clone(),
        entities: entities.unwrap_or_default(),
        documents: u64::try_from(documents).unwrap_or(0),
        rows_written: stats
            .rows_written
            .iter()
            .map(|(t, n)| (t.to_string(), *n))
            .collect(),
        adjusted: stats
            .adjusted
            .iter()
            .map(|((t, c, k), n)| (format!("{t}.{c} ({k})"), *n))
            .collect(),
        quarantined: stats.quarantined.iter().cloned().collect(),
        rules_recorded,
        duration: started.elapsed(),
    };
    tracing::info!(pipeline = %p.name, documents, rows = summary.total_rows(),
        elapsed_s = summary.duration.as_secs_f64(), "reprojection committed");
    Ok(summary)
}

impl ReprojectSummary {
    pub(crate) fn total_rows(&self) -> u64 {
        self.rows_written.values().sum()
    }
}

impl fmt::Display for ReprojectSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scope = if self.tables.is_empty() {
            "every star table".to_string()
        } else {
            format!(
                "{} (documents of {})",
                self.tables.join(", "),
                self.entities
                    .iter()
                    .map(|e| e.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        writeln!(
            f,
            "reproject {}: {} from {} mirror documents in {:.1}s",
            self.pipeline,
            scope,
            self.documents,
            self.duration.as_secs_f64()
        )?;
        writeln!(f, "{:<28} {:>12}", "table", "rows written")?;
        for (t, n) in &self.rows_written {
            writeln!(f, "{t:<28} {n:>12}")?;
        }
        writeln!(f, "{:<28} {:>12}", "total", self.total_rows())?;
        if !self.adjusted.is_empty() {
            writeln!(
                f,
                "values adjusted so that no row is rejected (documents, by table.column):"
            )?;
            for (k, n) in &self.adjusted {
                writeln!(f, "  {k:<48} {n:>8}")?;
            }
        }
        if !self.quarantined.is_empty() {
            writeln!(
                f,
                "quarantined (rows rejected by PostgreSQL, left out; see cdc.quarantine):"
            )?;
            for (entity, key) in &self.quarantined {
                writeln!(f, "  {entity} {key}")?;
            }
        }
        match self.rules_recorded {
            Some(v) => writeln!(f, "projection rules version {v} recorded"),
            None => writeln!(
                f,
                "projection rules version not recorded: only some tables were rebuilt"
            ),
        }
    }
}
