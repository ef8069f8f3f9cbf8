//! The projection core shared by the streaming projector and the backfill (docs/architecture.md).
//!
//! [`project`] (the one entry point, with per-document outcomes) takes a batch of source document states, upserts them into the version-guarded
//! source mirror (`cdc.source_doc`), computes every star row the changed documents affect and
//! recomputes exactly those rows with set-based SQL reading the mirror's JSON. The star schema
//! is therefore a pure function of the mirror (THE LAW), except archived rows of documents
//! deleted or detached from their report, whose `archived_at` is the wall time of the event
//! that deleted or detached them. [`reproject_all`] rebuilds every star row from the mirror.
//!
//! The caller owns the transaction: one per batch, committed before the deliveries are acked.
//! The SQL lives in `src/project/sql/*.sql`.

mod error;
mod mirror;
mod outcome;
mod plan;
mod quarantine;
mod rederive;
mod rules;
mod sanitize;
mod server;
mod sql;

use std::collections::{BTreeMap, BTreeSet, btree_map};
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use serde_json::value::RawValue;
use tokio_postgres::Transaction;
use tokio_postgres::types::{Json, ToSql, Type};

use crate::config::Pipeline;
use crate::event::{ChangeEvent, Entity, Op, Version};
use crate::metrics as m;

pub use error::{ErrorClass, ProjectError, classify_pg, describe_pg};
pub use mirror::storable_form;
pub use outcome::{DocOutcome, Lock, Projected, Versions, project};
pub use quarantine::{quarantine_underived, quarantined, set_quarantine_gauge};
pub use rederive::{derive_afresh, entities_of_tables, reproject, reproject_all};
pub use rules::{RULES_VERSION, RulesState, check_at_start, record_rules_version, rules_state};
pub use sanitize::Adjustment;

use mirror::{dedupe, storable, upsert_mirror};
use quarantine::{run_quarantining, sync_quarantine};
pub use sql::{PLACEHOLDER_NAME_PREFIX, PROJECT_LOCK_KEY};

/// One source document state: the mirror's unit. Built from a [`ChangeEvent`] or from a
/// backfill scan.
#[derive(Debug, Clone)]
pub struct SourceDoc {
    pub entity: Entity,
    /// The document's `_id` as 24-char lowercase hex.
    pub key: String,
    pub version: Version,
    /// Wall time of the event (or scan) that produced this state.
    pub wall_time: DateTime<Utc>,
    /// Relaxed extended JSON text; `None` when deleted or vanished. Kept serialized: a
    /// backfill chunk of thousands of documents holds their text, not trees of small maps.
    pub doc: Option<DocJson>,
    /// A delete: the mirror keeps a tombstone and the document's rows are archived or removed.
    pub deleted: bool,
}

/// A document body as JSON text, sent to PostgreSQL as is.
pub(crate) type DocJson = Box<RawValue>;

/// Serialize a document body.
pub fn doc_json(v: &serde_json::Value) -> DocJson {
    // A `Value` always serializes (its map keys are strings).
    serde_json::value::to_raw_value(v).expect("a JSON value serializes")
}

impl SourceDoc {
    /// The mirror state `e` carries, its document (if any) as `doc`. A delete becomes a
    /// tombstone. An update whose looked-up document is `null` is not a delete: it carries no
    /// state, so [`apply`] leaves the mirror as it is (the delete event that follows it in the
    /// stream does the work).
    pub(crate) fn of_event<D>(e: &ChangeEvent<D>, doc: Option<DocJson>) -> SourceDoc {
        let deleted = e.op == Op::Delete;
        SourceDoc {
            entity: e.entity,
            key: e.key.clone(),
            version: e.version(),
            wall_time: e.wall_time,
            doc: if deleted { None } else { doc },
            deleted,
        }
    }
}

impl From<&ChangeEvent> for SourceDoc {
    fn from(e: &ChangeEvent) -> Self {
        SourceDoc::of_event(e, e.doc.as_ref().map(doc_json))
    }
}

/// What one call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Documents that changed the mirror.
    pub applied: u64,
    /// Documents ignored: older (or, under [`Versions::Newer`], equal) versions, duplicates within
    /// the batch, and updates without a document.
    pub stale: u64,
    /// Star rows inserted, updated, archived or deleted, by star table.
    pub rows_written: BTreeMap<&'static str, u64>,
    /// The documents (entity, `_id`) whose mirror state this call changed.
    pub changed: BTreeSet<(Entity, String)>,
    /// Values changed so that no row is rejected, as (table, column, adjustment) -> documents:
    /// text cut to its column's width, and what the mirror cannot store (table
    /// `cdc.source_doc`, column = the document's top-level field).
    pub adjusted: BTreeMap<(String, String, String), u64>,
    /// Documents (entity, `_id`) quarantined by this call: their rows are rejected by
    /// PostgreSQL and left out ([`project`]).
    pub quarantined: BTreeSet<(String, String)>,
}

impl ApplyStats {
    /// Add another call's figures to these: the one merge of the projector, the backfill and
    /// the isolation of rejected documents.
    pub(crate) fn merge(&mut self, other: ApplyStats) {
        self.applied += other.applied;
        self.stale += other.stale;
        for (table, n) in other.rows_written {
            *self.rows_written.entry(table).or_default() += n;
        }
        self.changed.extend(other.changed);
        for (k, n) in other.adjusted {
            *self.adjusted.entry(k).or_default() += n;
        }
        self.quarantined.extend(other.quarantined);
    }
}

/// Apply `docs` in `tx` (no isolation: a rejected row fails the call with class
/// [`ErrorClass::Poison`]); with `quarantine`, each derivation statement runs in a savepoint
/// of its own and the documents whose own rows fail are quarantined.
async fn apply_inner(
    tx: &Transaction<'_>,
    pipeline: &Pipeline,
    docs: &[SourceDoc],
    versions: Versions,
    lock: Lock,
    quarantine: bool,
) -> Result<ApplyStats, ProjectError> {
    let started = Instant::now();
    let (batch, skipped) = dedupe(docs)?;
    let mut stats = ApplyStats {
        stale: skipped,
        ..ApplyStats::default()
    };
    let lock = match lock {
        Lock::Exclusive => sql::LOCK_EXCLUSIVE,
        Lock::Shared => sql::LOCK_SHARED,
        Lock::Held => "SELECT 1",
    };
    let scratch = format!("{lock}; {}", sql::SCRATCH);
    let scratch = async {
        tx.batch_execute(&scratch)
            .await
            .map_err(ProjectError::pg("scratch"))
    };
    if batch.is_empty() {
        scratch.await?;
    } else {
        let t0 = Instant::now();
        let storable = storable(&batch, &mut stats);
        // (pipelined: the upsert is sent behind the lock and the scratch tables without waiting
        // for their answer; PostgreSQL runs them in order, and a failure of the first is the
        // error reported)
        let ((), changed) =
            tokio::try_join!(scratch, upsert_mirror(tx, &batch, &storable, versions))?;
        stats.changed = changed;
        stats.applied = stats.changed.len() as u64;
        tracing::debug!(
            docs = batch.len(),
            changed = stats.applied,
            elapsed_ms = t0.elapsed().as_secs_f64() * 1e3,
            "projection mirror upsert"
        );
        stats.stale += batch.len() as u64 - stats.applied;
    }
    if stats.applied > 0 {
        let mut ctx = Ctx::new(pipeline);
        ctx.prepared = batch.len() <= server::PREPARED_MAX_DOCS;
        // The entities that may have affected keys so far: a statement none of whose source
        // entities is here would find nothing (a child chunk of a backfill skips them all).
        let present: BTreeSet<&str> = stats.changed.iter().map(|(e, _)| e.as_str()).collect();
        let steps = if quarantine {
            server::Steps::Before
        } else {
            server::Steps::All
        };
        server::run(tx, &ctx, &present, &mut stats, steps).await?;
        if quarantine {
            derive(tx, &ctx, &mut stats, true).await?;
        }
        // (pipelined: two independent reads of this call's outcome in one round trip)
        tokio::try_join!(
            cut_values(tx, &mut stats, true),
            sync_quarantine(tx, pipeline)
        )?;
    }
    record(pipeline, &stats, started);
    Ok(stats)
}

/// Count and log the text values this call cut to their column's width (`{{fit}}`).
async fn cut_values(
    tx: &Transaction<'_>,
    stats: &mut ApplyStats,
    log: bool,
) -> Result<(), ProjectError> {
    // (typed, with no parameters: one round trip, no separate prepare)
    let rows = tx
        .query_typed(sql::ADJUSTED, &[])
        .await
        .map_err(ProjectError::pg("adjusted"))?;
    for r in rows {
        let (table, column, kind): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        let key: Option<String> = r.get(3);
        let original_length: Option<i32> = r.get(4);
        if log {
            tracing::warn!(table = %table, column = %column, key = key.as_deref().unwrap_or(""),
                original_length, adjustment = %kind, "a text value was cut to its column's width");
        }
        *stats.adjusted.entry((table, column, kind)).or_default() += 1;
    }
    Ok(())
}

/// Whether the mirror holds any daily-report child document yet.
pub(crate) async fn mirror_holds_children(
    client: &impl tokio_postgres::GenericClient,
) -> Result<bool, tokio_postgres::Error> {
    Ok(client.query_one(sql::ANY_CHILD.as_str(), &[]).await?.get(0))
}

/// Parameters shared by every derivation statement: the report time zone and this call's
/// `synced_at` stamp. An upsert stamps the rows it derived with it; a row of an affected
/// document left unstamped was not derivable, and is archived or deleted. Archiving stamps
/// `now()` (the transaction's start, always earlier than this stamp), so an archived row
/// never looks derived to a later step.
struct Ctx {
    tz: String,
    stamp: DateTime<Utc>,
    /// Run the plan as prepared statements (a small batch, [`server::PREPARED_MAX_DOCS`]).
    prepared: bool,
}

impl Ctx {
    fn new(pipeline: &Pipeline) -> Ctx {
        Ctx {
            tz: pipeline.report_timezone.name().to_string(),
            stamp: Utc::now(),
            prepared: false,
        }
    }

    /// Run one statement; returns the rows it wrote (its row count, or the count it selects).
    async fn run(
        &self,
        tx: &Transaction<'_>,
        stmt: &plan::Step,
        step: &'static str,
    ) -> Result<u64, ProjectError> {
        let params: [(&(dyn ToSql + Sync), Type); 2] =
            [(&self.tz, Type::TEXT), (&self.stamp, Type::TIMESTAMPTZ)];
        let started = Instant::now();
        let stream = tx
            .query_typed_raw(&stmt.sql, params)
            .await
            .map_err(ProjectError::pg(step))?;
        futures_util::pin_mut!(stream);
        let mut selected = None;
        while let Some(row) = stream.try_next().await.map_err(ProjectError::pg(step))? {
            selected = row.try_get::<_, i64>(0).ok();
        }
        let n = match selected {
            Some(n) => u64::try_from(n).unwrap_or(0),
            None => stream.rows_affected().unwrap_or(0),
        };
        tracing::debug!(
            step,
            name = stmt.name,
            rows = n,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "projection statement"
        );
        Ok(n)
    }
}

/// Run the derivation statements whose source entity has affected keys (the others would
/// find nothing to do): server-side in one call ([`server::run`]), or, with `quarantine`, one
/// statement at a time, each isolating the documents whose own rows PostgreSQL rejects. The
/// rules for which statements run are the same in both (`cdc.run_plan`).
async fn derive(
    tx: &Transaction<'_>,
    ctx: &Ctx,
    stats: &mut ApplyStats,
    quarantine: bool,
) -> Result<(), ProjectError> {
    if !quarantine {
        return server::run(tx, ctx, &BTreeSet::new(), stats, server::Steps::Derivation).await;
    }
    let affected: BTreeMap<String, u64> = tx
        .query(sql::AFFECTED_ENTITIES, &[])
        .await
        .map_err(ProjectError::pg("affected"))?
        .iter()
        .map(|r| (r.get(0), u64::try_from(r.get::<_, i64>(1)).unwrap_or(0)))
        .collect();
    // Rows written by each table's upsert.
    let mut upserted: BTreeMap<&str, u64> = BTreeMap::new();
    for step in plan::DERIVE_STEPS.iter() {
        let needed = step.sources.as_slice();
        if !needed.iter().any(|e| affected.contains_key(*e)) {
            continue;
        }
        // A cleanup archives or removes the rows of affected keys its upsert did not derive
        // (stamp): none are left when the upsert wrote one row per affected key of its entity.
        if step.kind == plan::Kind::Cleanup
            && let (Some(table), [e]) = (step.table, needed)
            && upserted
                .get(table)
                .is_some_and(|n| affected.get(*e) == Some(n))
        {
            continue;
        }
        let n = run_quarantining(tx, ctx, step, needed, stats).await?;
        if step.kind == plan::Kind::Upsert
            && let Some(table) = step.table
        {
            upserted.insert(table, n);
        }
        if n > 0
            && let Some(label) = step.rows_label()
        {
            *stats.rows_written.entry(label).or_default() += n;
        }
    }
    Ok(())
}

fn record(pipeline: &Pipeline, stats: &ApplyStats, started: Instant) {
    let p = pipeline.name.clone();
    metrics::counter!(m::PROJECTOR_DOCS_APPLIED_TOTAL, m::LABEL_PIPELINE => p.clone())
        .increment(stats.applied);
    metrics::counter!(m::PROJECTOR_DOCS_STALE_TOTAL, m::LABEL_PIPELINE => p.clone())
        .increment(stats.stale);
    for (table, n) in &stats.rows_written {
        metrics::counter!(m::PROJECTOR_ROWS_WRITTEN_TOTAL,
            m::LABEL_PIPELINE => p.clone(), m::LABEL_TABLE => *table)
        .increment(*n);
    }
    for ((table, column, kind), n) in &stats.adjusted {
        metrics::counter!(m::PROJECT_VALUES_ADJUSTED_TOTAL,
            m::LABEL_PIPELINE => p.clone(), m::LABEL_TABLE => table.clone(),
            m::LABEL_COLUMN => column.clone(), m::LABEL_ADJUSTMENT => kind.clone())
        .increment(*n);
    }
    metrics::histogram!(m::PROJECTOR_APPLY_DURATION_SECONDS, m::LABEL_PIPELINE => p)
        .record(started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ClusterTime;

    fn doc(key: &str, t: u32, deleted: bool, body: Option<serde_json::Value>) -> SourceDoc {
        SourceDoc {
            entity: Entity::Employee,
            key: key.into(),
            version: Version {
                cluster_time: ClusterTime { t, i: 0 },
                ordinal: 0,
            },
            wall_time: Utc::now(),
            doc: body.as_ref().map(doc_json),
            deleted,
        }
    }

    #[test]
    fn dedupe_keeps_the_highest_version_and_drops_empty_updates() {
        let j = Some(serde_json::json!({}));
        let docs = vec![
            doc("a", 2, false, j.clone()),
            doc("a", 5, true, None),
            doc("a", 3, false, j.clone()),
            doc("b", 1, false, None),
            doc("c", 1, false, j),
        ];
        let (kept, dropped) = dedupe(&docs).unwrap();
        assert_eq!(dropped, 3);
        assert_eq!(kept.len(), 2);
        assert!(kept[0].deleted && kept[0].version.cluster_time.t == 5);
        assert_eq!(kept[1].key, "c");
    }
}
