//! The projection core shared by the streaming projector and the backfill (docs/architecture.md).
//!
//! [`apply`] takes a batch of source document states, upserts them into the version-guarded
//! source mirror (`cdc.source_doc`), computes every star row the changed documents affect and
//! recomputes exactly those rows with set-based SQL reading the mirror's JSON. The star schema
//! is therefore a pure function of the mirror (THE LAW), except archived rows of documents
//! deleted or detached from their report, whose `archived_at` is the wall time of the event
//! that deleted or detached them. [`reproject_all`] rebuilds every star row from the mirror.
//!
//! The caller owns the transaction: one per batch, committed before the deliveries are acked.
//! The SQL lives in `src/project/sql/*.sql`.

mod error;
mod rules;
mod sanitize;
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
pub use rules::{RULES_VERSION, RulesState, check_at_start, record_rules_version, rules_state};
pub use sanitize::Adjustment;
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
pub type DocJson = Box<RawValue>;

/// Serialize a document body.
pub fn doc_json(v: &serde_json::Value) -> DocJson {
    // A `Value` always serializes (its map keys are strings).
    serde_json::value::to_raw_value(v).expect("a JSON value serializes")
}

impl From<&ChangeEvent> for SourceDoc {
    /// A delete becomes a tombstone. An update whose looked-up document is `null` is not a
    /// delete: it carries no state, so [`apply`] leaves the mirror as it is (the delete event
    /// that follows it in the stream does the work).
    fn from(e: &ChangeEvent) -> Self {
        let deleted = e.op == Op::Delete;
        SourceDoc {
            entity: e.entity,
            key: e.key.clone(),
            version: e.version(),
            wall_time: e.wall_time,
            doc: if deleted {
                None
            } else {
                e.doc.as_ref().map(doc_json)
            },
            deleted,
        }
    }
}

/// Which versions may change the mirror, and how the projection lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Streaming: only strictly newer versions change the mirror (re-deliveries are no-ops).
    /// Takes the projection lock exclusive.
    Newer,
    /// Backfill: an equal version is applied again (a re-run recomputes its rows). Takes the
    /// projection lock shared: the backfill's own workers load independent collections side
    /// by side, while streaming batches wait for them (and they for it).
    NewerOrEqual,
    /// Backfill, versions as [`Guard::NewerOrEqual`], under the projection lock that the
    /// caller's session already holds exclusive (a backfill loading one collection on several
    /// connections at once): takes no lock.
    NewerOrEqualHeld,
}

/// What one call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Documents that changed the mirror.
    pub applied: u64,
    /// Documents ignored: older (or, for [`Guard::Newer`], equal) versions, duplicates within
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
    /// PostgreSQL and left out ([`apply_isolated`]).
    pub quarantined: BTreeSet<(String, String)>,
}

impl ApplyStats {
    /// Add another call's adjustments to these.
    pub fn merge_adjusted(&mut self, other: &ApplyStats) {
        for (k, n) in &other.adjusted {
            *self.adjusted.entry(k.clone()).or_default() += n;
        }
        self.quarantined.extend(other.quarantined.iter().cloned());
    }
}

/// Project a batch inside the caller's transaction.
///
/// A derived row that PostgreSQL rejects fails the whole call (class
/// [`ErrorClass::Poison`]): [`apply_isolated`] then quarantines the documents whose rows fail.
pub async fn apply(
    tx: &Transaction<'_>,
    pipeline: &Pipeline,
    docs: &[SourceDoc],
    mode: Guard,
) -> Result<ApplyStats, ProjectError> {
    apply_inner(tx, pipeline, docs, mode, false).await
}

/// The one isolation routine of the projector and the backfill: [`apply`] in a savepoint;
/// when PostgreSQL rejects a derived row, again in another with each derivation statement in
/// a savepoint of its own: when one fails on the data, the source documents whose own rows it
/// rejects are found (by halving the statement's keys), recorded in `cdc.quarantine` and left
/// out (their earlier rows are archived or removed like any row no longer derivable), and
/// everything else applies: their daily report, their siblings, the rest of the batch. A
/// Poison error then (a document the mirror itself cannot hold) leaves the transaction as it
/// was before the call, for the caller to isolate the documents by halving the batch.
pub async fn apply_isolated(
    tx: &mut Transaction<'_>,
    pipeline: &Pipeline,
    docs: &[SourceDoc],
    mode: Guard,
) -> Result<ApplyStats, ProjectError> {
    match in_savepoint(tx, pipeline, docs, mode, false).await {
        Err(e) if e.class() == ErrorClass::Poison => {
            in_savepoint(tx, pipeline, docs, mode, true).await
        }
        done => done,
    }
}

/// One attempt of [`apply_isolated`]: committed when it succeeds, rolled back when it fails.
async fn in_savepoint(
    tx: &mut Transaction<'_>,
    pipeline: &Pipeline,
    docs: &[SourceDoc],
    mode: Guard,
    quarantine: bool,
) -> Result<ApplyStats, ProjectError> {
    let sp = tx
        .savepoint("cdc_apply")
        .await
        .map_err(ProjectError::pg("savepoint"))?;
    match apply_inner(&sp, pipeline, docs, mode, quarantine).await {
        Ok(stats) => {
            sp.commit().await.map_err(ProjectError::pg("savepoint"))?;
            Ok(stats)
        }
        Err(e) => {
            // (a Poison error leaves the transaction usable; after any other the caller
            // abandons it)
            if e.class() == ErrorClass::Poison {
                sp.rollback().await.map_err(ProjectError::pg("savepoint"))?;
            }
            Err(e)
        }
    }
}

async fn apply_inner(
    tx: &Transaction<'_>,
    pipeline: &Pipeline,
    docs: &[SourceDoc],
    mode: Guard,
    quarantine: bool,
) -> Result<ApplyStats, ProjectError> {
    let started = Instant::now();
    let (batch, skipped) = dedupe(docs)?;
    let mut stats = ApplyStats {
        stale: skipped,
        ..ApplyStats::default()
    };
    let lock = match mode {
        Guard::Newer => sql::LOCK_EXCLUSIVE,
        Guard::NewerOrEqual => sql::LOCK_SHARED,
        Guard::NewerOrEqualHeld => "SELECT 1",
    };
    tx.batch_execute(&format!("{lock}; {}", sql::SCRATCH))
        .await
        .map_err(ProjectError::pg("scratch"))?;
    if !batch.is_empty() {
        let t0 = Instant::now();
        let storable = storable(&batch, &mut stats);
        stats.changed = upsert_mirror(tx, &batch, &storable, mode).await?;
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
        let ctx = Ctx::new(pipeline);
        // The entities that may have affected keys so far: a statement none of whose source
        // entities is here would find nothing (a child chunk of a backfill skips them all).
        let mut present: BTreeSet<&str> = stats.changed.iter().map(|(e, _)| e.as_str()).collect();
        for step in sql::MIRROR_STEPS.iter() {
            if step.sources.iter().any(|e| present.contains(e)) {
                ctx.run(tx, step, "mirror").await?;
            }
        }
        for step in sql::AFFECTED_STEPS.iter() {
            let (from, to) = sql::closure_entities(step.label);
            if from.iter().any(|e| present.contains(e)) {
                ctx.run(tx, step, "affected").await?;
                present.extend(to);
            }
        }
        derive(tx, &ctx, &mut stats, quarantine).await?;
        cut_values(tx, &mut stats, true).await?;
        sync_quarantine(tx, pipeline).await?;
    }
    record(pipeline, &stats, started);
    Ok(stats)
}

/// Bring `cdc.quarantine` up to date after a derivation (and its gauge, when it changed).
async fn sync_quarantine(tx: &Transaction<'_>, pipeline: &Pipeline) -> Result<(), ProjectError> {
    let changed: i64 = tx
        .query_one(sql::QUARANTINE_SYNC, &[])
        .await
        .map_err(ProjectError::pg("cdc.quarantine"))?
        .get(0);
    // The gauge is set when the quarantine changed, and on a pipeline's first apply in this
    // process (every entity then has its series, 0 where nothing is quarantined).
    static SEEDED: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());
    let first = SEEDED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(pipeline.name.clone());
    if changed > 0 || first {
        let counts = quarantined(tx)
            .await
            .map_err(ProjectError::pg("cdc.quarantine"))?;
        set_quarantine_gauge(pipeline, &counts);
    }
    Ok(())
}

/// Documents in `cdc.quarantine`, by entity.
pub async fn quarantined(
    client: &impl tokio_postgres::GenericClient,
) -> Result<BTreeMap<String, i64>, tokio_postgres::Error> {
    Ok(client
        .query(sql::QUARANTINE_COUNTS, &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// `cdc_project_quarantined_documents` for every entity (0 where none is quarantined).
pub fn set_quarantine_gauge(pipeline: &Pipeline, counts: &BTreeMap<String, i64>) {
    for e in Entity::ALL {
        let n = counts.get(e.as_str()).copied().unwrap_or(0);
        metrics::gauge!(m::PROJECT_QUARANTINED_DOCUMENTS,
            m::LABEL_PIPELINE => pipeline.name.clone(), m::LABEL_ENTITY => e.as_str())
        .set(n as f64);
    }
}

/// Literal markers of what [`sanitize`] changes, looked for in a document's JSON text before
/// parsing it (almost no document has one).
const UNSTORABLE_MARKERS: [&str; 6] = [
    "\\u0000",
    "\"$numberDouble\"",
    "\"$numberDecimal\":\"NaN",
    "\"$numberDecimal\":\"Inf",
    "\"$numberDecimal\":\"-",
    "\"$date\":{",
];

/// Per document of the batch, its storable body when [`sanitize`] had to change it (`None`:
/// store it as it is). Each change is counted and logged once, never with the value.
/// A document's JSON text as the mirror stores it, with what was changed, when that differs
/// from the text (almost never: see [`sanitize`]).
pub fn storable_form(raw: &str) -> Option<(serde_json::Value, Vec<Adjustment>)> {
    if !UNSTORABLE_MARKERS.iter().any(|m| raw.contains(m)) {
        return None;
    }
    let mut v: serde_json::Value = serde_json::from_str(raw).ok()?;
    let changes = sanitize::sanitize(&mut v);
    (!changes.is_empty()).then_some((v, changes))
}

fn storable(batch: &[&SourceDoc], stats: &mut ApplyStats) -> Vec<Option<DocJson>> {
    batch
        .iter()
        .map(|d| {
            let (v, changes) = storable_form(d.doc.as_deref()?.get())?;
            let mut seen = BTreeSet::new();
            for a in &changes {
                if seen.insert((a.field.as_str(), a.kind)) {
                    *stats
                        .adjusted
                        .entry(("cdc.source_doc".into(), a.field.clone(), a.kind.into()))
                        .or_default() += 1;
                    tracing::warn!(entity = d.entity.as_str(), key = %d.key, field = %a.field,
                        adjustment = a.kind, original_length = a.original_length,
                        "a value the mirror cannot store was adjusted");
                }
            }
            Some(doc_json(&v))
        })
        .collect()
}

/// Count and log the text values this call cut to their column's width (`{{fit}}`).
async fn cut_values(
    tx: &Transaction<'_>,
    stats: &mut ApplyStats,
    log: bool,
) -> Result<(), ProjectError> {
    let rows = tx
        .query(sql::ADJUSTED, &[])
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
pub async fn mirror_holds_children(
    client: &impl tokio_postgres::GenericClient,
) -> Result<bool, tokio_postgres::Error> {
    Ok(client.query_one(sql::ANY_CHILD.as_str(), &[]).await?.get(0))
}

/// Rebuild every star row derivable from the mirror alone (after a schema or rule change).
/// Rows whose documents are no longer derivable are archived or deleted as in [`apply`];
/// rows of documents the mirror never saw are left alone.
pub async fn reproject_all(
    tx: &Transaction<'_>,
    pipeline: &Pipeline,
) -> Result<ApplyStats, ProjectError> {
    reproject(tx, pipeline, None).await
}

/// The source entities whose documents derive `tables` (star table names, from the entity
/// catalog): a reprojection of those entities' documents rebuilds these tables, and every
/// other table derived from the same documents (e.g. `fact_trucking` with
/// `fact_material_shipment`). `Err` names an unknown table.
pub fn entities_of_tables(tables: &[String]) -> Result<Vec<Entity>, String> {
    let mut out = BTreeSet::new();
    for t in tables {
        let Some(e) = crate::model::owner(t) else {
            return Err(format!(
                "unknown star table {t:?} (known: {})",
                crate::model::star_tables().join(", ")
            ));
        };
        out.insert(e);
    }
    Ok(out.into_iter().collect())
}

/// Rebuild the star rows derived from the mirror's documents of `entities` (every entity when
/// `None`), as [`reproject_all`] does, under the projection lock held exclusive (readers see
/// the old rows until the caller commits). A document whose rows PostgreSQL rejects is
/// quarantined and everything else is rebuilt (as the projector does).
pub async fn reproject(
    tx: &Transaction<'_>,
    pipeline: &Pipeline,
    entities: Option<&[Entity]>,
) -> Result<ApplyStats, ProjectError> {
    let started = Instant::now();
    let stats = rederive(tx, pipeline, entities, Target::Live).await?;
    record(pipeline, &stats, started);
    Ok(stats)
}

/// Derive every star row of the mirror afresh into the star tables the session's search path
/// resolves to: `verify` shadows them with empty temporary tables of the same names. Takes no
/// projection lock and leaves `cdc.quarantine` alone (the documents whose rows PostgreSQL
/// rejects are only returned in [`ApplyStats::quarantined`]); the caller rolls back.
pub async fn derive_afresh(
    tx: &Transaction<'_>,
    pipeline: &Pipeline,
) -> Result<ApplyStats, ProjectError> {
    rederive(tx, pipeline, None, Target::Scratch).await
}

/// Where a re-derivation writes: the live star tables (exclusive projection lock, quarantine
/// kept up to date) or the scratch tables of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Live,
    Scratch,
}

/// Re-derive the rows of the mirror's documents of `entities` (all when `None`).
async fn rederive(
    tx: &Transaction<'_>,
    pipeline: &Pipeline,
    entities: Option<&[Entity]>,
    target: Target,
) -> Result<ApplyStats, ProjectError> {
    let mut stats = ApplyStats::default();
    let lock = match target {
        Target::Live => sql::LOCK_EXCLUSIVE,
        Target::Scratch => "SELECT 1",
    };
    tx.batch_execute(&format!("{lock}; {}", sql::SCRATCH))
        .await
        .map_err(ProjectError::pg("scratch"))?;
    match entities {
        None => tx.batch_execute(sql::AFFECT_ALL).await,
        Some(list) => {
            let names: Vec<&str> = list.iter().map(|e| e.as_str()).collect();
            tx.execute(
                &format!("{} WHERE entity = ANY($1)", sql::AFFECT_ALL),
                &[&names],
            )
            .await
            .map(|_| ())
        }
    }
    .map_err(ProjectError::pg("affected"))?;
    let ctx = Ctx::new(pipeline);
    let pg = ProjectError::pg("reproject savepoint");
    tx.batch_execute("SAVEPOINT cdc_reproject")
        .await
        .map_err(pg)?;
    match derive(tx, &ctx, &mut stats, false).await {
        Ok(()) => tx
            .batch_execute("RELEASE SAVEPOINT cdc_reproject")
            .await
            .map_err(ProjectError::pg("reproject savepoint"))?,
        Err(e) if e.class() == ErrorClass::Poison => {
            tx.batch_execute(
                "ROLLBACK TO SAVEPOINT cdc_reproject; RELEASE SAVEPOINT cdc_reproject",
            )
            .await
            .map_err(ProjectError::pg("reproject savepoint"))?;
            stats = ApplyStats::default();
            derive(tx, &ctx, &mut stats, true).await?;
        }
        Err(e) => return Err(e),
    }
    cut_values(tx, &mut stats, target == Target::Live).await?;
    if target == Target::Live {
        sync_quarantine(tx, pipeline).await?;
    }
    Ok(stats)
}

/// Keep the highest version per (entity, key); drop updates that carry no document.
/// Returns the kept documents and how many were dropped.
fn dedupe(docs: &[SourceDoc]) -> Result<(Vec<&SourceDoc>, u64), ProjectError> {
    let mut latest: BTreeMap<(Entity, &str), &SourceDoc> = BTreeMap::new();
    let mut dropped = 0u64;
    for d in docs {
        if d.key.is_empty() {
            return Err(ProjectError::InvalidDoc {
                entity: d.entity.as_str(),
                key: String::new(),
                reason: "empty _id",
            });
        }
        if !d.deleted && d.doc.is_none() {
            dropped += 1;
            continue;
        }
        match latest.entry((d.entity, d.key.as_str())) {
            btree_map::Entry::Vacant(v) => {
                v.insert(d);
            }
            btree_map::Entry::Occupied(mut o) => {
                dropped += 1;
                if d.version > o.get().version {
                    o.insert(d);
                }
            }
        }
    }
    Ok((latest.into_values().collect(), dropped))
}

/// One UNNEST upsert of the whole batch; returns how many documents changed the mirror.
async fn upsert_mirror(
    tx: &Transaction<'_>,
    batch: &[&SourceDoc],
    storable: &[Option<DocJson>],
    mode: Guard,
) -> Result<BTreeSet<(Entity, String)>, ProjectError> {
    let entity: Vec<&str> = batch.iter().map(|d| d.entity.as_str()).collect();
    let key: Vec<&str> = batch.iter().map(|d| d.key.as_str()).collect();
    let ct_t: Vec<i64> = batch
        .iter()
        .map(|d| i64::from(d.version.cluster_time.t))
        .collect();
    let ct_i: Vec<i64> = batch
        .iter()
        .map(|d| i64::from(d.version.cluster_time.i))
        .collect();
    let ordinal: Vec<i64> = batch.iter().map(|d| i64::from(d.version.ordinal)).collect();
    let wall: Vec<DateTime<Utc>> = batch.iter().map(|d| d.wall_time).collect();
    let doc: Vec<Option<Json<&RawValue>>> = batch
        .iter()
        .zip(storable)
        .map(|(d, fixed)| fixed.as_deref().or(d.doc.as_deref()).map(Json))
        .collect();
    let deleted: Vec<bool> = batch.iter().map(|d| d.deleted).collect();
    let or_equal = mode != Guard::Newer;
    let params: [(&(dyn ToSql + Sync), Type); 9] = [
        (&entity, Type::TEXT_ARRAY),
        (&key, Type::TEXT_ARRAY),
        (&ct_t, Type::INT8_ARRAY),
        (&ct_i, Type::INT8_ARRAY),
        (&ordinal, Type::INT8_ARRAY),
        (&wall, Type::TIMESTAMPTZ_ARRAY),
        (&doc, Type::JSONB_ARRAY),
        (&deleted, Type::BOOL_ARRAY),
        (&or_equal, Type::BOOL),
    ];
    let rows = tx
        .query_typed(&sql::MIRROR_UPSERT.sql, &params)
        .await
        .map_err(ProjectError::pg("mirror"))?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let entity: Entity = r.get::<_, &str>(0).parse().ok()?;
            Some((entity, r.get::<_, String>(1)))
        })
        .collect())
}

/// Parameters shared by every derivation statement: the report time zone and this call's
/// `synced_at` stamp. An upsert stamps the rows it derived with it; a row of an affected
/// document left unstamped was not derivable, and is archived or deleted. Archiving stamps
/// `now()` (the transaction's start, always earlier than this stamp), so an archived row
/// never looks derived to a later step.
struct Ctx {
    tz: String,
    stamp: DateTime<Utc>,
}

impl Ctx {
    fn new(pipeline: &Pipeline) -> Ctx {
        Ctx {
            tz: pipeline.report_timezone.name().to_string(),
            stamp: Utc::now(),
        }
    }

    /// Run one statement; returns the rows it wrote (its row count, or the count it selects).
    async fn run(
        &self,
        tx: &Transaction<'_>,
        stmt: &sql::Stmt,
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
            label = stmt.label,
            rows = n,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "projection statement"
        );
        Ok(n)
    }
}

/// Run the derivation statements whose source entity has affected keys (the others would
/// find nothing to do).
async fn derive(
    tx: &Transaction<'_>,
    ctx: &Ctx,
    stats: &mut ApplyStats,
    quarantine: bool,
) -> Result<(), ProjectError> {
    let affected: BTreeMap<String, u64> = tx
        .query(sql::AFFECTED_ENTITIES, &[])
        .await
        .map_err(ProjectError::pg("affected"))?
        .iter()
        .map(|r| (r.get(0), u64::try_from(r.get::<_, i64>(1)).unwrap_or(0)))
        .collect();
    // Rows written by each table's first statement (its upsert).
    let mut upserted: BTreeMap<&str, u64> = BTreeMap::new();
    for stmt in sql::DERIVE_STEPS.iter() {
        let needed = stmt.sources.as_slice();
        if !needed.iter().any(|e| affected.contains_key(*e)) {
            continue;
        }
        // A table's second statement archives or removes the rows of affected keys its upsert
        // did not derive (stamp): none are left when the upsert wrote one row per affected
        // key of its entity.
        if let (Some(&n), [e]) = (upserted.get(stmt.label), needed)
            && affected.get(*e) == Some(&n)
        {
            continue;
        }
        let n = if quarantine {
            run_quarantining(tx, ctx, stmt, needed, stats).await?
        } else {
            ctx.run(tx, stmt, stmt.label).await?
        };
        upserted.entry(stmt.label).or_insert(n);
        if n > 0 && !stmt.label.starts_with("ctx:") && !stmt.label.starts_with("placeholder:") {
            *stats.rows_written.entry(stmt.label).or_default() += n;
        }
    }
    Ok(())
}

/// Run `stmt` in a savepoint. When it fails on the data, find the documents of its entity
/// whose rows it rejects, quarantine them, and run it again without them (their keys stay
/// affected, so the table's next statement archives or removes their earlier rows).
async fn run_quarantining(
    tx: &Transaction<'_>,
    ctx: &Ctx,
    stmt: &sql::Stmt,
    needed: &[&str],
    stats: &mut ApplyStats,
) -> Result<u64, ProjectError> {
    let [entity] = needed else {
        return ctx.run(tx, stmt, stmt.label).await;
    };
    let exec = |sql: &'static str| async move {
        tx.batch_execute(sql)
            .await
            .map_err(ProjectError::pg("quarantine savepoint"))
    };
    loop {
        exec("SAVEPOINT cdc_stmt").await?;
        let e = match ctx.run(tx, stmt, stmt.label).await {
            Ok(n) => {
                exec("RELEASE SAVEPOINT cdc_stmt").await?;
                // Quarantined keys of this entity leave the statement's input only.
                tx.execute(
                    "INSERT INTO pg_temp.cdc_affected (entity, key)
                     SELECT entity, key FROM pg_temp.cdc_quarantined WHERE entity = $1
                     ON CONFLICT DO NOTHING",
                    &[entity],
                )
                .await
                .map_err(ProjectError::pg("quarantine"))?;
                return Ok(n);
            }
            Err(e) if e.class() == ErrorClass::Poison => e,
            Err(e) => return Err(e),
        };
        exec("ROLLBACK TO SAVEPOINT cdc_stmt; RELEASE SAVEPOINT cdc_stmt").await?;
        let keys: Vec<String> = tx
            .query(
                "SELECT key FROM pg_temp.cdc_affected WHERE entity = $1 ORDER BY key",
                &[entity],
            )
            .await
            .map_err(ProjectError::pg("quarantine"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let culprits = culprits(tx, ctx, stmt, entity, keys).await?;
        if culprits.is_empty() {
            return Err(e);
        }
        let reason = e.to_string();
        for key in &culprits {
            tracing::warn!(entity, key = %key, reason = %reason,
                "document quarantined: its rows are rejected by PostgreSQL and left out");
            stats.quarantined.insert((entity.to_string(), key.clone()));
        }
        tx.execute(
            "WITH q AS (
                 INSERT INTO pg_temp.cdc_quarantined (entity, key, reason)
                 SELECT $1, k, $3 FROM unnest($2::text[]) AS k ON CONFLICT DO NOTHING)
             , c AS (DELETE FROM pg_temp.cdc_ctx WHERE entity = $1 AND key = ANY($2))
             DELETE FROM pg_temp.cdc_affected WHERE entity = $1 AND key = ANY($2)",
            &[entity, &culprits, &reason],
        )
        .await
        .map_err(ProjectError::pg("quarantine"))?;
    }
}

/// The keys (of `entity`, among `keys`, with which `stmt` fails) whose own rows `stmt` rejects:
/// halves are tried in savepoints, each with only its keys as input, down to single keys. Keys
/// that fail only together are all returned.
async fn culprits(
    tx: &Transaction<'_>,
    ctx: &Ctx,
    stmt: &sql::Stmt,
    entity: &str,
    keys: Vec<String>,
) -> Result<Vec<String>, ProjectError> {
    let mut out = Vec::new();
    let mut failing = vec![keys];
    while let Some(set) = failing.pop() {
        if set.len() <= 1 {
            out.extend(set);
            continue;
        }
        let (a, b) = set.split_at(set.len() / 2);
        let (fa, fb) = (
            fails_with(tx, ctx, stmt, entity, a).await?,
            fails_with(tx, ctx, stmt, entity, b).await?,
        );
        match (fa, fb) {
            (false, false) => out.extend(set),
            _ => {
                if fa {
                    failing.push(a.to_vec());
                }
                if fb {
                    failing.push(b.to_vec());
                }
            }
        }
    }
    Ok(out)
}

/// Whether `stmt` fails on the data with only `keys` of `entity` as its input (everything is
/// rolled back).
async fn fails_with(
    tx: &Transaction<'_>,
    ctx: &Ctx,
    stmt: &sql::Stmt,
    entity: &str,
    keys: &[String],
) -> Result<bool, ProjectError> {
    let pg = ProjectError::pg("quarantine probe");
    tx.batch_execute("SAVEPOINT cdc_probe").await.map_err(pg)?;
    let keys = keys.to_vec();
    tx.execute(
        "WITH c AS (DELETE FROM pg_temp.cdc_ctx WHERE entity = $1 AND NOT key = ANY($2))
         DELETE FROM pg_temp.cdc_affected WHERE entity = $1 AND NOT key = ANY($2)",
        &[&entity, &keys],
    )
    .await
    .map_err(ProjectError::pg("quarantine probe"))?;
    let r = ctx.run(tx, stmt, stmt.label).await;
    tx.batch_execute("ROLLBACK TO SAVEPOINT cdc_probe; RELEASE SAVEPOINT cdc_probe")
        .await
        .map_err(ProjectError::pg("quarantine probe"))?;
    match r {
        Ok(_) => Ok(false),
        Err(e) if e.class() == ErrorClass::Poison => Ok(true),
        Err(e) => Err(e),
    }
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
