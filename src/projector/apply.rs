//! One batch, one PostgreSQL transaction. The batch is applied inside a savepoint; when the
//! projection says Poison (a row PostgreSQL rejects), the savepoint is rolled back and the batch
//! is applied again with the documents whose own rows fail quarantined
//! ([`project::apply_isolated`]): their report, siblings and the rest of the batch commit.
//! Only what still fails (a document the mirror cannot hold) is bisected until the culprit
//! events stand alone; they are returned as dead letters and every other event commits in the
//! same transaction.

use std::collections::BTreeMap;

use deadpool_postgres::Pool;
use futures_util::future::BoxFuture;
use tokio_postgres::Transaction;

use crate::config::Pipeline;
use crate::event::Entity;
use crate::project::{self, ApplyStats, ErrorClass, Guard, SourceDoc};

use super::dlq::{DeadLetter, Reason};
use super::error::{ProjectorError, error_chain};

/// What became of each event of a committed batch.
#[derive(Debug, Default)]
pub struct Applied {
    pub stats: ApplyStats,
    /// Events that changed the mirror, by entity.
    pub fresh: BTreeMap<Entity, u64>,
    /// Events ignored as stale (older or equal version, superseded in the batch, vanished).
    pub stale: BTreeMap<Entity, u64>,
    /// Index into the batch's docs, and why PostgreSQL rejected it.
    pub rejected: Vec<(usize, DeadLetter)>,
}

/// Apply `docs` in one transaction and commit. Nothing is acked here: the caller acks after
/// this returns `Ok`.
pub async fn apply_batch(
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
    let mut out = Applied::default();
    bisect(&mut tx, pipeline, docs, 0, &mut out).await?;
    let fresh = fresh_flags(docs, &out.stats);
    tx.commit().await.map_err(ProjectorError::pg("commit"))?;
    let rejected: Vec<usize> = out.rejected.iter().map(|(i, _)| *i).collect();
    for (i, d) in docs.iter().enumerate() {
        if rejected.contains(&i) {
            continue;
        }
        let slot = if fresh[i] {
            &mut out.fresh
        } else {
            &mut out.stale
        };
        *slot.entry(d.entity).or_default() += 1;
    }
    Ok(out)
}

/// Isolate `doc`, whose projection keeps timing out even alone: store it in the mirror and
/// quarantine it without deriving its rows ([`project::quarantine_underived`]), in one
/// transaction.
pub async fn isolate(
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
    let mut out = Applied::default();
    let slot = if stats.applied > 0 {
        &mut out.fresh
    } else {
        &mut out.stale
    };
    *slot.entry(doc.entity).or_default() += 1;
    out.stats = stats;
    Ok(out)
}

/// Add `part`, the outcome of `docs[offset..]`'s prefix applied on its own, to `into`.
pub fn absorb(into: &mut Applied, part: Applied, offset: usize) {
    merge(&mut into.stats, part.stats);
    for (e, n) in part.fresh {
        *into.fresh.entry(e).or_default() += n;
    }
    for (e, n) in part.stale {
        *into.stale.entry(e).or_default() += n;
    }
    into.rejected
        .extend(part.rejected.into_iter().map(|(i, dl)| (i + offset, dl)));
}

/// Apply `docs` in a savepoint; on Poison roll it back and split, down to single events.
fn bisect<'a, 't>(
    tx: &'a mut Transaction<'t>,
    pipeline: &'a Pipeline,
    docs: &'a [SourceDoc],
    offset: usize,
    out: &'a mut Applied,
) -> BoxFuture<'a, Result<(), ProjectorError>>
where
    't: 'a,
{
    Box::pin(async move {
        if docs.is_empty() {
            return Ok(());
        }
        // (documents whose own rows fail are quarantined; what still fails is isolated to its
        // events)
        match project::apply_isolated(tx, pipeline, docs, Guard::Newer).await {
            Ok(stats) => {
                merge(&mut out.stats, stats);
                Ok(())
            }
            Err(e) if e.class() == ErrorClass::Poison => {
                if docs.len() == 1 {
                    out.rejected
                        .push((offset, DeadLetter::new(Reason::Rejected, error_chain(&e))));
                    return Ok(());
                }
                let mid = docs.len() / 2;
                bisect(tx, pipeline, &docs[..mid], offset, out).await?;
                bisect(tx, pipeline, &docs[mid..], offset + mid, out).await
            }
            Err(e) => Err(e.into()),
        }
    })
}

fn merge(into: &mut ApplyStats, s: ApplyStats) {
    into.merge_adjusted(&s);
    into.applied += s.applied;
    into.stale += s.stale;
    into.changed.extend(s.changed);
    for (table, n) in s.rows_written {
        *into.rows_written.entry(table).or_default() += n;
    }
}

/// Which docs changed the mirror: the newest of their key in the batch, carrying state, whose
/// key the projection reports as changed (for the per-entity metrics).
fn fresh_flags(docs: &[SourceDoc], stats: &ApplyStats) -> Vec<bool> {
    let mut newest: BTreeMap<(Entity, &str), usize> = BTreeMap::new();
    for (i, d) in docs.iter().enumerate() {
        if !d.deleted && d.doc.is_none() {
            continue;
        }
        let slot = newest.entry((d.entity, d.key.as_str())).or_insert(i);
        if d.version > docs[*slot].version {
            *slot = i;
        }
    }
    let mut fresh = vec![false; docs.len()];
    for ((entity, key), i) in newest {
        fresh[i] = stats.changed.contains(&(entity, key.to_string()));
    }
    fresh
}
