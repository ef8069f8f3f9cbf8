//! One chunk: the documents read from the source, projected and committed with the
//! collection's checkpoint in one transaction, in its collection's reading order. Transient
//! failures retry the whole chunk with [`Backoff`]; documents PostgreSQL rejects are isolated
//! by halving and reported, the rest of the chunk applies.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bson::{Bson, Document};
use tokio::sync::watch;
use tokio_postgres::Transaction;

use crate::config::Pipeline;
use crate::event::Entity;
use crate::metrics as m;
use crate::project::{self, ErrorClass, Lock, ProjectError, SourceDoc, Versions};
use crate::retry::Backoff;

use super::schedule::Worker;
use super::store::{self, ResumeAt};
use super::summary::{self, CollectionSummary, Rejected, SkipReason};
use super::{BackfillError, DocStamp};

/// Attempts for a chunk that fails transiently (serialization failure, deadlock).
const CHUNK_ATTEMPTS: u32 = 5;
/// Delays between attempts: from 400 ms, doubling, capped at 3.2 s, jittered.
const RETRY_MIN: Duration = Duration::from_millis(400);
const RETRY_MAX: Duration = Duration::from_millis(3200);

/// A chunk of one collection as read from the source, and where it ends.
pub(crate) struct Chunk {
    pub docs: Vec<SourceDoc>,
    /// Documents read (projected or not).
    pub read: u64,
    /// Documents without an `_id` (skipped).
    pub no_id: u64,
    pub at: ResumeAt,
}

impl Chunk {
    pub fn new(at: ResumeAt) -> Chunk {
        Chunk {
            docs: Vec::new(),
            read: 0,
            no_id: 0,
            at,
        }
    }

    /// Add a raw document as a source state (relaxed extended JSON).
    pub fn push(&mut self, entity: Entity, mut d: Document, stamp: &DocStamp) {
        self.read += 1;
        let Some(key) = d.get("_id").map(key_of) else {
            self.no_id += 1;
            return;
        };
        let doc = project::doc_json(&Bson::Document(std::mem::take(&mut d)).into_relaxed_extjson());
        self.docs.push(SourceDoc {
            entity,
            key,
            version: stamp.version,
            wall_time: stamp.wall_time,
            doc: Some(doc),
            deleted: false,
        });
    }
}

/// A document's mirror key ([`crate::event::mongo_key`], shared with the capture).
pub(super) fn key_of(id: &Bson) -> String {
    crate::event::mongo_key(id)
}

/// A collection's checkpoint figures and summary while it loads.
#[derive(Debug, Clone)]
pub(super) struct Tally {
    pub checkpoint: store::Progress,
    pub summary: CollectionSummary,
}

/// Commit turns of a collection loaded on several connections: chunk `seq` commits after
/// chunk `seq - 1`.
pub(super) struct Turns(watch::Sender<u64>);

impl Turns {
    pub fn new() -> Turns {
        Turns(watch::Sender::new(0))
    }

    pub async fn wait(&self, seq: u64) {
        // The sender lives as long as every waiter: this cannot fail.
        let _ = self.0.subscribe().wait_for(|t| *t == seq).await;
    }

    fn pass(&self, seq: u64) {
        self.0.send_replace(seq + 1);
    }
}

/// A chunk's place in its collection's commit order.
#[derive(Clone, Copy)]
pub(super) struct Turn<'a> {
    pub turns: &'a Turns,
    pub seq: u64,
}

/// What projecting one chunk did.
#[derive(Debug, Default)]
struct Outcome {
    stats: project::ApplyStats,
    /// Documents PostgreSQL rejected.
    rejected: Vec<Rejected>,
}

impl Outcome {
    fn of(docs: &[SourceDoc], p: project::Projected) -> Outcome {
        Outcome {
            rejected: p
                .rejected()
                .map(|(i, why)| Rejected {
                    key: docs[i].key.clone(),
                    reason: why.to_string(),
                })
                .collect(),
            stats: p.stats,
        }
    }

    /// Add this chunk to a collection's cumulative checkpoint figures.
    fn add_to(&self, chunk: &Chunk, p: &mut store::Progress) {
        p.docs_done += chunk.read;
        p.docs_skipped += chunk.no_id + self.stats.stale + self.rejected.len() as u64;
        for (t, n) in &self.stats.rows_written {
            *p.rows_written.entry((*t).to_string()).or_default() += n;
        }
        match &chunk.at {
            ResumeAt::LastId(v) => p.last_id = Some(v.clone()),
            ResumeAt::Offset(o) => p.byte_offset = *o,
        }
    }
}

impl Worker<'_> {
    /// One transaction: project the chunk (isolating rejected documents) and advance the
    /// collection's checkpoint after the chunks before it. Transient failures retry the whole
    /// chunk.
    pub(super) async fn commit_chunk(
        &mut self,
        coll: &str,
        chunk: Chunk,
        tally: &Mutex<Tally>,
        lock: Lock,
        turn: Turn<'_>,
    ) -> Result<(), BackfillError> {
        let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let tx = self.client.transaction().await?;
            match project_chunk(tx, self.run.pipeline, coll, &chunk, tally, lock, turn).await {
                Ok(outcome) => {
                    {
                        let mut t = tally.lock().unwrap_or_else(PoisonError::into_inner);
                        self.account(coll, &chunk, outcome, &mut t);
                        self.run.progress().advance(coll, t.checkpoint.docs_done);
                    }
                    turn.turns.pass(turn.seq);
                    return Ok(());
                }
                Err(e)
                    if attempt < CHUNK_ATTEMPTS
                        && e.class() == ErrorClass::Transient
                        && !self.client.is_closed() =>
                {
                    tracing::warn!(collection = coll, attempt, error = %e,
                        "chunk failed transiently; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => return Err(BackfillError::Project(e)),
            }
        }
    }

    /// Fold a committed chunk into the checkpoint copy, the summary and the metrics.
    fn account(&self, coll: &str, chunk: &Chunk, outcome: Outcome, tally: &mut Tally) {
        outcome.add_to(chunk, &mut tally.checkpoint);
        let s = &mut tally.summary;
        s.read += chunk.read;
        let mut skip = |reason: SkipReason, n: u64| {
            if n > 0 {
                *s.skipped.entry(reason).or_default() += n;
                metrics::counter!(m::BACKFILL_DOCUMENTS_SKIPPED_TOTAL,
                    m::LABEL_PIPELINE => self.run.pipeline.name.clone(),
                    m::LABEL_COLLECTION => coll.to_string(), m::LABEL_REASON => reason.as_str())
                .increment(n);
            }
        };
        skip(SkipReason::NoId, chunk.no_id);
        skip(SkipReason::Stale, outcome.stats.stale);
        skip(SkipReason::Rejected, outcome.rejected.len() as u64);
        for (entity, key) in &outcome.stats.quarantined {
            tracing::warn!(entity = %entity, key = %key,
                "document quarantined: its rows are rejected by PostgreSQL (see cdc.quarantine)");
        }
        if !outcome.stats.quarantined.is_empty() {
            *s.skipped.entry(SkipReason::Quarantined).or_default() +=
                outcome.stats.quarantined.len() as u64;
        }
        for ((t, c, a), n) in &outcome.stats.adjusted {
            *s.adjusted.entry(format!("{t}.{c} ({a})")).or_default() += n;
        }
        for (t, n) in &outcome.stats.rows_written {
            *s.rows_written.entry((*t).to_string()).or_default() += n;
        }
        for r in outcome.rejected {
            tracing::warn!(collection = coll, key = %r.key, reason = %r.reason,
                "document rejected by PostgreSQL; skipped");
            if s.rejected.len() < summary::MAX_REJECTED_EXAMPLES {
                s.rejected.push(r);
            }
        }
    }
}

/// Project a chunk and record its checkpoint in `tx` after the chunks before it, then commit.
async fn project_chunk(
    mut tx: Transaction<'_>,
    pipeline: &Pipeline,
    coll: &str,
    chunk: &Chunk,
    tally: &Mutex<Tally>,
    lock: Lock,
    turn: Turn<'_>,
) -> Result<Outcome, ProjectError> {
    let projected =
        project::project(&mut tx, pipeline, &chunk.docs, Versions::NewerOrEqual, lock).await?;
    let outcome = Outcome::of(&chunk.docs, projected);
    turn.turns.wait(turn.seq).await;
    let mut next = tally
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .checkpoint
        .clone();
    outcome.add_to(chunk, &mut next);
    let pg = |error| ProjectError::Postgres {
        step: "backfill checkpoint",
        error,
    };
    store::record_chunk(&tx, &pipeline.name, coll, &chunk.at, &next)
        .await
        .map_err(pg)?;
    tx.commit().await.map_err(pg)?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    use crate::event::Version;

    #[test]
    fn a_chunk_keys_documents_by_hex_id_and_skips_those_without_one() {
        let stamp = DocStamp {
            version: Version::ZERO,
            wall_time: Utc::now(),
        };
        let oid = bson::oid::ObjectId::new();
        let mut c = Chunk::new(ResumeAt::Offset(0));
        c.push(
            Entity::Crew,
            bson::doc! {"_id": oid, "name": "Base"},
            &stamp,
        );
        c.push(Entity::Crew, bson::doc! {"name": "no id"}, &stamp);
        assert_eq!((c.read, c.no_id, c.docs.len()), (2, 1, 1));
        assert_eq!(c.docs[0].key, oid.to_hex());
        let doc: serde_json::Value =
            serde_json::from_str(c.docs[0].doc.as_ref().unwrap().get()).unwrap();
        assert_eq!(doc["_id"]["$oid"], oid.to_hex());
    }
}
