//! One batch, one PostgreSQL transaction, through the projection's one entry point
//! ([`project::project`]): documents whose own rows PostgreSQL rejects are quarantined and the
//! rest of the batch commits; a document the mirror cannot hold is returned as a dead letter.

use std::collections::BTreeMap;

use deadpool_postgres::Pool;

use crate::config::Pipeline;
use crate::event::Entity;
use crate::project::{self, ApplyStats, DocOutcome, Lock, Projected, SourceDoc, Versions};

use super::dlq::{DeadLetter, Reason};
use super::error::ProjectorError;

/// What became of each event of a committed batch.
#[derive(Debug, Default)]
pub struct Applied {
    pub stats: ApplyStats,
    /// Events that changed the mirror (quarantined ones included), by entity.
    pub fresh: BTreeMap<Entity, u64>,
    /// Events ignored as stale (older or equal version, superseded in the batch, vanished).
    pub stale: BTreeMap<Entity, u64>,
    /// Index into the batch's docs, and why PostgreSQL rejected it.
    pub rejected: Vec<(usize, DeadLetter)>,
}

impl Applied {
    fn of(docs: &[SourceDoc], p: Projected) -> Applied {
        Applied {
            fresh: p.count_by_entity(docs, |o| {
                matches!(o, DocOutcome::Applied | DocOutcome::Quarantined)
            }),
            stale: p.count_by_entity(docs, |o| *o == DocOutcome::Stale),
            rejected: p
                .rejected()
                .map(|(i, why)| (i, DeadLetter::new(Reason::Rejected, why)))
                .collect(),
            stats: p.stats,
        }
    }

    /// Add `part`, the outcome of `docs[offset..]`'s prefix applied on its own.
    pub(crate) fn absorb(&mut self, part: Applied, offset: usize) {
        self.stats.merge(part.stats);
        for (e, n) in part.fresh {
            *self.fresh.entry(e).or_default() += n;
        }
        for (e, n) in part.stale {
            *self.stale.entry(e).or_default() += n;
        }
        self.rejected
            .extend(part.rejected.into_iter().map(|(i, dl)| (i + offset, dl)));
    }
}

/// Apply `docs` in one transaction and commit. Nothing is acked here: the caller acks after
/// this returns `Ok`.
pub(crate) async fn apply_batch(
    pool: &Pool,
    pipeline: &Pipeline,
    docs: &[SourceDoc],
) -> Result<Applied, ProjectorError> {
    if docs.is_empty() {
        return Ok(Applied::default());
    }
    let mut client = pool.get().await.map_err(ProjectorError::Pool)?;
    let mut tx = client
        .transaction()
        .await
        .map_err(ProjectorError::pg("begin"))?;
    let projected =
        project::project(&mut tx, pipeline, docs, Versions::Newer, Lock::Exclusive).await?;
    tx.commit().await.map_err(ProjectorError::pg("commit"))?;
    Ok(Applied::of(docs, projected))
}

/// Isolate `doc`, whose projection keeps timing out even alone: store it in the mirror and
/// quarantine it without deriving its rows ([`project::quarantine_underived`]), in one
/// transaction.
pub(crate) async fn isolate(
    pool: &Pool,
    pipeline: &Pipeline,
    doc: &SourceDoc,
    reason: &str,
) -> Result<Applied, ProjectorError> {
    let mut client = pool.get().await.map_err(ProjectorError::Pool)?;
    let tx = client
        .transaction()
        .await
        .map_err(ProjectorError::pg("begin"))?;
    let stats = project::quarantine_underived(&tx, pipeline, doc, reason).await?;
    tx.commit().await.map_err(ProjectorError::pg("commit"))?;
    let outcome = if stats.applied > 0 {
        DocOutcome::Quarantined
    } else {
        DocOutcome::Stale
    };
    let projected = Projected {
        stats,
        docs: vec![outcome],
    };
    Ok(Applied::of(std::slice::from_ref(doc), projected))
}
