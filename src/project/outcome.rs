//! The one projection entry point of the projector and the backfill: [`project`] applies a
//! batch of source documents in the caller's transaction, isolates what PostgreSQL rejects,
//! and says what became of each input document ([`DocOutcome`]).
//!
//! Isolation happens in two layers, both here:
//! 1. the batch is applied in a savepoint; when PostgreSQL rejects a derived row, it is
//!    applied again with each derivation statement in a savepoint of its own, and the
//!    documents whose own rows fail are quarantined (`cdc.quarantine`), their report, siblings
//!    and the rest of the batch applied;
//! 2. what still fails (a document the mirror itself cannot hold) is bisected down to single
//!    documents, which are rejected with the reason and everything else applies.

use std::collections::BTreeMap;

use futures_util::future::BoxFuture;
use tokio_postgres::Transaction;

use super::{ApplyStats, ErrorClass, ProjectError, SourceDoc, apply_inner};
use crate::config::Pipeline;
use crate::event::Entity;

/// Which versions may change the mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    /// Streaming: only strictly newer versions change the mirror (a re-delivery is a no-op).
    Newer,
    /// Backfill: an equal version is applied again (a re-run recomputes its rows), while a
    /// streamed change (always newer than the backfill's stamp) wins.
    NewerOrEqual,
}

/// How this call holds the projection lock (`locks::PROJECTION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// Streaming batches: one at a time, and not beside a backfill's loads.
    Exclusive,
    /// Backfill loads of independent collections side by side; streaming batches wait.
    Shared,
    /// The caller's session already holds it exclusive (one collection loaded on several
    /// connections at once): take nothing.
    Held,
}

/// What became of one input document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocOutcome {
    /// It changed the mirror and its rows were derived.
    Applied,
    /// It changed the mirror, but PostgreSQL rejects its rows: quarantined, its rows left out.
    Quarantined,
    /// Nothing changed: an older (or, under [`Versions::Newer`], equal) version, superseded by
    /// a newer state of its key in the same batch, or an update without a document.
    Stale,
    /// Rejected alone (the mirror cannot hold it): nothing of it was written. The reason names
    /// the step and PostgreSQL's message, never values.
    Rejected(String),
}

/// What one [`project`] call did: the statistics and one outcome per input document, in input
/// order.
#[derive(Debug, Default)]
pub struct Projected {
    pub stats: ApplyStats,
    pub docs: Vec<DocOutcome>,
}

impl Projected {
    /// Documents per entity whose outcome satisfies `pick`.
    pub(crate) fn count_by_entity(
        &self,
        docs: &[SourceDoc],
        pick: impl Fn(&DocOutcome) -> bool,
    ) -> BTreeMap<Entity, u64> {
        let mut out = BTreeMap::new();
        for (d, o) in docs.iter().zip(&self.docs) {
            if pick(o) {
                *out.entry(d.entity).or_default() += 1;
            }
        }
        out
    }

    /// The rejected documents: index into the input, and the reason.
    pub fn rejected(&self) -> impl Iterator<Item = (usize, &str)> {
        self.docs.iter().enumerate().filter_map(|(i, o)| match o {
            DocOutcome::Rejected(r) => Some((i, r.as_str())),
            _ => None,
        })
    }

    /// Append `part`, the outcome of the input documents that follow these, applied on their
    /// own (in another call or transaction).
    pub fn append(&mut self, part: Projected) {
        self.stats.merge(part.stats);
        self.docs.extend(part.docs);
    }
}

/// Project `docs` in the caller's transaction, isolating what PostgreSQL rejects (see the
/// module docs). An error is one that isolation cannot help (a lost connection, a timeout):
/// the caller abandons the transaction.
pub async fn project(
    tx: &mut Transaction<'_>,
    pipeline: &Pipeline,
    docs: &[SourceDoc],
    versions: Versions,
    lock: Lock,
) -> Result<Projected, ProjectError> {
    let mut rejected = vec![None; docs.len()];
    let stats = bisect(tx, pipeline, docs, (versions, lock), &mut rejected).await?;
    let docs = outcomes(docs, &stats, rejected);
    Ok(Projected { stats, docs })
}

/// Apply `docs` isolating quarantinable documents; on what still fails, split in halves down
/// to single documents, which are marked in `rejected`.
fn bisect<'a, 't: 'a>(
    tx: &'a mut Transaction<'t>,
    pipeline: &'a Pipeline,
    docs: &'a [SourceDoc],
    mode: (Versions, Lock),
    rejected: &'a mut [Option<String>],
) -> BoxFuture<'a, Result<ApplyStats, ProjectError>> {
    Box::pin(async move {
        if docs.is_empty() {
            return Ok(ApplyStats::default());
        }
        match apply_isolated(tx, pipeline, docs, mode).await {
            Err(e) if e.class() == ErrorClass::Poison => {
                if docs.len() == 1 {
                    rejected[0] = Some(reason(&e));
                    return Ok(ApplyStats::default());
                }
                let mid = docs.len() / 2;
                let (ra, rb) = rejected.split_at_mut(mid);
                let mut stats = bisect(tx, pipeline, &docs[..mid], mode, ra).await?;
                stats.merge(bisect(tx, pipeline, &docs[mid..], mode, rb).await?);
                Ok(stats)
            }
            done => done,
        }
    })
}

/// The batch in a savepoint; on Poison again in another, quarantining the documents whose
/// own rows fail. A Poison error then leaves the transaction as it was before the call.
async fn apply_isolated(
    tx: &mut Transaction<'_>,
    pipeline: &Pipeline,
    docs: &[SourceDoc],
    mode: (Versions, Lock),
) -> Result<ApplyStats, ProjectError> {
    match in_savepoint(tx, pipeline, docs, mode, false).await {
        Err(e) if e.class() == ErrorClass::Poison => {
            in_savepoint(tx, pipeline, docs, mode, true).await
        }
        done => done,
    }
}

/// One attempt: committed when it succeeds, rolled back when it fails on the data.
async fn in_savepoint(
    tx: &mut Transaction<'_>,
    pipeline: &Pipeline,
    docs: &[SourceDoc],
    (versions, lock): (Versions, Lock),
    quarantine: bool,
) -> Result<ApplyStats, ProjectError> {
    let sp = tx
        .savepoint("cdc_apply")
        .await
        .map_err(ProjectError::pg("savepoint"))?;
    match apply_inner(&sp, pipeline, docs, versions, lock, quarantine).await {
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

/// Why a document was rejected: the step and PostgreSQL's message, with their causes (never
/// row values).
fn reason(e: &ProjectError) -> String {
    crate::cause::chain(e)
}

/// Each document's outcome. Of the documents of one key, only the newest carrying state can
/// have changed the mirror; the others are stale.
fn outcomes(
    docs: &[SourceDoc],
    stats: &ApplyStats,
    rejected: Vec<Option<String>>,
) -> Vec<DocOutcome> {
    let mut newest: BTreeMap<(Entity, &str), usize> = BTreeMap::new();
    for (i, d) in docs.iter().enumerate() {
        if rejected[i].is_some() || (!d.deleted && d.doc.is_none()) {
            continue;
        }
        let slot = newest.entry((d.entity, d.key.as_str())).or_insert(i);
        if d.version > docs[*slot].version {
            *slot = i;
        }
    }
    let mut out: Vec<DocOutcome> = rejected
        .into_iter()
        .map(|r| r.map_or(DocOutcome::Stale, DocOutcome::Rejected))
        .collect();
    for ((entity, key), i) in newest {
        if !stats.changed.contains(&(entity, key.to_string())) {
            continue;
        }
        let quarantined = stats
            .quarantined
            .contains(&(entity.as_str().to_string(), key.to_string()));
        out[i] = if quarantined {
            DocOutcome::Quarantined
        } else {
            DocOutcome::Applied
        };
    }
    out
}
