//! The backfill's bookkeeping in PostgreSQL: the run (`cdc.backfill_run`: source and pre-scan
//! change-stream position), one resumable checkpoint per collection (`cdc.backfill_progress`),
//! the per-pipeline advisory lock, and the handoff into the capture checkpoint
//! (`cdc.checkpoint`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::{Client, GenericClient};

use crate::event::ClusterTime;

/// Class id of the backfill's advisory locks (the second key is `hashtext(pipeline)`).
const LOCK_CLASS: i32 = crate::locks::BACKFILL_CLASS;

/// Where a backfill reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Mongo,
    Dump,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Mongo => "mongo",
            SourceKind::Dump => "dump",
        }
    }

    /// The stored name (`cdc.backfill_run.source`, checked by the table).
    fn parse(s: &str) -> SourceKind {
        if s == "dump" {
            SourceKind::Dump
        } else {
            SourceKind::Mongo
        }
    }
}

/// Where one collection stands in the current run (`cdc.backfill_progress.status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum CollectionState {
    /// Started, not finished (also a collection not started yet).
    #[default]
    Running,
    /// Every document read and committed, vanished ones tombstoned.
    Complete,
    /// The dump has no data for it.
    Missing,
}

impl CollectionState {
    pub fn as_str(self) -> &'static str {
        match self {
            CollectionState::Running => "running",
            CollectionState::Complete => "complete",
            CollectionState::Missing => "missing",
        }
    }

    fn parse(s: &str) -> CollectionState {
        match s {
            "complete" => CollectionState::Complete,
            "missing" => CollectionState::Missing,
            _ => CollectionState::Running,
        }
    }

    /// Nothing left to do for the collection in this run.
    pub(crate) fn settled(self) -> bool {
        self != CollectionState::Running
    }
}

/// A change-stream position: the opaque resume token and the cluster time read with it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamPosition {
    pub resume_token: Value,
    pub cluster_time: ClusterTime,
}

/// The current backfill of a pipeline.
#[derive(Debug, Clone)]
pub struct Run {
    pub source: SourceKind,
    pub source_name: String,
    pub position: Option<StreamPosition>,
    pub started_at: DateTime<Utc>,
    /// Every watched collection completed under this run.
    pub finished: bool,
}

/// One collection's checkpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub state: CollectionState,
    pub last_id: Option<Value>,
    pub byte_offset: u64,
    pub docs_done: u64,
    pub docs_total: Option<u64>,
    pub docs_skipped: u64,
    pub rows_written: BTreeMap<String, u64>,
}

/// Where a completed chunk ends.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ResumeAt {
    LastId(Value),
    Offset(u64),
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Are the backfill tables there? (`bowmark-cdc migrate` creates them.)
pub(crate) async fn schema_present(c: &Client) -> Result<bool, tokio_postgres::Error> {
    let row = c
        .query_one(
            "SELECT to_regclass('cdc.backfill_progress') IS NOT NULL \
                AND to_regclass('cdc.source_doc') IS NOT NULL \
                AND to_regclass('cdc.checkpoint') IS NOT NULL",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// Take the pipeline's backfill lock for this session; `false` when another backfill holds it.
pub async fn try_lock(c: &Client, pipeline: &str) -> Result<bool, tokio_postgres::Error> {
    let row = c
        .query_one(
            "SELECT pg_try_advisory_lock($1, hashtext($2))",
            &[&LOCK_CLASS, &pipeline],
        )
        .await?;
    Ok(row.get(0))
}

pub(crate) async fn load_run(
    c: &Client,
    pipeline: &str,
) -> Result<Option<Run>, tokio_postgres::Error> {
    let row = c
        .query_opt(
            "SELECT source, source_name, resume_token, cluster_time_t, cluster_time_i, started_at, \
                    finished_at IS NOT NULL \
             FROM cdc.backfill_run WHERE pipeline = $1",
            &[&pipeline],
        )
        .await?;
    Ok(row.map(|r| {
        let token: Option<Value> = r.get(2);
        let t: Option<i64> = r.get(3);
        let i: Option<i64> = r.get(4);
        let position = match (token, t, i) {
            (Some(resume_token), Some(t), Some(i)) => Some(StreamPosition {
                resume_token,
                cluster_time: ClusterTime {
                    t: u32::try_from(t).unwrap_or(0),
                    i: u32::try_from(i).unwrap_or(0),
                },
            }),
            _ => None,
        };
        Run {
            source: SourceKind::parse(r.get(0)),
            source_name: r.get(1),
            position,
            started_at: r.get(5),
            finished: r.get(6),
        }
    }))
}

/// Forget the pipeline's backfill (its run and every collection checkpoint).
pub async fn reset(c: &Client, pipeline: &str) -> Result<(), tokio_postgres::Error> {
    c.execute(
        "DELETE FROM cdc.backfill_run WHERE pipeline = $1",
        &[&pipeline],
    )
    .await?;
    Ok(())
}

/// Record a new run; returns its start time (the wall time stamped on its documents).
pub(crate) async fn start_run(
    c: &Client,
    pipeline: &str,
    source: SourceKind,
    source_name: &str,
    position: Option<&StreamPosition>,
) -> Result<DateTime<Utc>, tokio_postgres::Error> {
    let token = position.map(|p| &p.resume_token);
    let t = position.map(|p| i64::from(p.cluster_time.t));
    let i = position.map(|p| i64::from(p.cluster_time.i));
    let row = c
        .query_one(
            "INSERT INTO cdc.backfill_run \
               (pipeline, source, source_name, resume_token, cluster_time_t, cluster_time_i) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING started_at",
            &[&pipeline, &source.as_str(), &source_name, &token, &t, &i],
        )
        .await?;
    Ok(row.get(0))
}

/// Mark the run finished (and whether its position was handed to the capture).
pub(crate) async fn finish_run(
    c: &Client,
    pipeline: &str,
    handed_off: bool,
) -> Result<(), tokio_postgres::Error> {
    c.execute(
        "UPDATE cdc.backfill_run SET finished_at = now(), \
           handed_off_at = CASE WHEN $2 THEN now() ELSE handed_off_at END \
         WHERE pipeline = $1",
        &[&pipeline, &handed_off],
    )
    .await?;
    Ok(())
}

/// Every collection checkpoint of the pipeline's current run.
pub(crate) async fn load_progress(
    c: &Client,
    pipeline: &str,
) -> Result<BTreeMap<String, Progress>, tokio_postgres::Error> {
    let rows = c
        .query(
            "SELECT collection, status, last_id, byte_offset, docs_done, docs_total, \
                    docs_skipped, rows_written \
             FROM cdc.backfill_progress WHERE pipeline = $1",
            &[&pipeline],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let rows_written: Value = r.get(7);
            let rows_written = rows_written
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default();
            (
                r.get(0),
                Progress {
                    state: CollectionState::parse(r.get(1)),
                    last_id: r.get(2),
                    byte_offset: to_u64(r.get(3)),
                    docs_done: to_u64(r.get(4)),
                    docs_total: r.get::<_, Option<i64>>(5).map(to_u64),
                    docs_skipped: to_u64(r.get(6)),
                    rows_written,
                },
            )
        })
        .collect())
}

/// Create (or update the total and status of) a collection's checkpoint.
pub(crate) async fn begin_collection(
    c: &Client,
    pipeline: &str,
    collection: &str,
    state: CollectionState,
    total: Option<u64>,
) -> Result<(), tokio_postgres::Error> {
    let total = total.map(to_i64);
    let status = state.as_str();
    c.execute(
        "INSERT INTO cdc.backfill_progress (pipeline, collection, status, docs_total) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (pipeline, collection) DO UPDATE SET status = EXCLUDED.status, \
           docs_total = EXCLUDED.docs_total, updated_at = now(), \
           finished_at = CASE WHEN EXCLUDED.status = 'running' THEN NULL ELSE now() END",
        &[&pipeline, &collection, &status, &total],
    )
    .await?;
    Ok(())
}

/// Advance a collection's checkpoint past a chunk, with the collection's cumulative figures:
/// call inside the chunk's transaction.
pub(crate) async fn record_chunk(
    c: &impl GenericClient,
    pipeline: &str,
    collection: &str,
    at: &ResumeAt,
    p: &Progress,
) -> Result<(), tokio_postgres::Error> {
    let (last_id, offset) = match at {
        ResumeAt::LastId(v) => (Some(v), None),
        ResumeAt::Offset(o) => (None, Some(to_i64(*o))),
    };
    let rows = serde_json::to_value(&p.rows_written).unwrap_or(Value::Null);
    c.execute(
        "UPDATE cdc.backfill_progress SET \
           last_id = COALESCE($3, last_id), byte_offset = COALESCE($4, byte_offset), \
           docs_done = $5, docs_skipped = $6, rows_written = $7, updated_at = now() \
         WHERE pipeline = $1 AND collection = $2",
        &[
            &pipeline,
            &collection,
            &last_id,
            &offset,
            &to_i64(p.docs_done),
            &to_i64(p.docs_skipped),
            &rows,
        ],
    )
    .await?;
    Ok(())
}

/// Mark a collection complete.
pub(crate) async fn complete_collection(
    c: &Client,
    pipeline: &str,
    collection: &str,
) -> Result<(), tokio_postgres::Error> {
    c.execute(
        "UPDATE cdc.backfill_progress SET status = 'complete', finished_at = now(), \
           updated_at = now() WHERE pipeline = $1 AND collection = $2",
        &[&pipeline, &collection],
    )
    .await?;
    Ok(())
}

/// A live mirror document a scan did not see.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Unseen {
    pub key: String,
    /// Its `_id` as the mirror holds it (relaxed extended JSON), when the document has one.
    pub id: Option<Value>,
}

/// An entity's live mirror documents older than `before`: documents the mirror holds that a
/// full scan at `before` did not see (deleted in MongoDB before the scan, or not loaded).
pub(crate) async fn unseen(
    c: &Client,
    entity: &str,
    before: ClusterTime,
) -> Result<Vec<Unseen>, tokio_postgres::Error> {
    let rows = c
        .query(
            "SELECT key, doc -> '_id' FROM cdc.source_doc WHERE entity = $1 AND NOT deleted \
               AND (ct_t, ct_i, ordinal) < ($2, $3, 0) ORDER BY key",
            &[&entity, &i64::from(before.t), &i64::from(before.i)],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| Unseen {
            key: r.get(0),
            id: r.get(1),
        })
        .collect())
}

/// Live mirror documents per entity of `entities`.
pub(crate) async fn mirror_counts(
    c: &Client,
    entities: &[&str],
) -> Result<BTreeMap<String, u64>, tokio_postgres::Error> {
    let rows = c
        .query(
            "SELECT entity, count(*) FROM cdc.source_doc \
             WHERE entity = ANY ($1) AND NOT deleted GROUP BY entity",
            &[&entities],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.get(0), to_u64(r.get(1))))
        .collect())
}

/// What the handoff did to the capture checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Handoff {
    /// The pre-scan position is now the capture checkpoint.
    Stored(ClusterTime),
    /// The capture checkpoint was already at or past the pre-scan position; left alone.
    KeptNewer(ClusterTime),
}

/// Store the pre-scan position as the capture checkpoint unless the stored one is newer or
/// equal (compared by cluster time; a checkpoint without one is replaced).
pub async fn hand_off(
    c: &Client,
    pipeline: &str,
    pos: &StreamPosition,
) -> Result<Handoff, tokio_postgres::Error> {
    let store = crate::checkpoint::CheckpointStore::new(c);
    Ok(
        match store
            .hand_off(pipeline, &pos.resume_token, pos.cluster_time)
            .await?
        {
            None => Handoff::Stored(pos.cluster_time),
            Some(kept) => Handoff::KeptNewer(kept),
        },
    )
}
