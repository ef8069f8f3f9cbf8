//! One collection's lifecycle in a run: skip it when an earlier run completed it, open its
//! reader after its checkpoint, put its tables in bulk load, load its chunks ([`super::schedule`]),
//! tombstone the mirror documents MongoDB no longer has, mark it complete and rebuild its
//! indexes.

use std::sync::Arc;
use std::time::Instant;

use bson::Document;
use tokio::sync::mpsc;
use tokio_postgres::Client;

use crate::event::Entity;
use crate::model;
use crate::project::{self, Lock, SourceDoc, Versions};

use super::chunk::Tally;
use super::dump::{self, DumpError};
use super::run::Source;
use super::schedule::{Load, Task, Worker, side_by_side};
use super::store::{self, CollectionState, StreamPosition};
use super::summary::{CollectionStatus, CollectionSummary};
use super::{BackfillError, defer, mongo};

/// Chunks read ahead of the one being projected (bounds memory).
const READ_AHEAD: usize = 1;

/// A collection's reader, once opened.
enum Opened {
    /// The dump has no data for it (the reason).
    Missing(&'static str),
    Reading {
        rx: mpsc::Receiver<Result<super::chunk::Chunk, BackfillError>>,
        total: u64,
    },
}

impl Worker<'_> {
    /// Backfill one collection from its checkpoint (if any) to the end; `extra` connections
    /// share its chunks when it is the daily reports' first load.
    pub(super) async fn collection(
        &mut self,
        task: Task,
        extra: &mut [Client],
    ) -> Result<CollectionSummary, BackfillError> {
        let started = Instant::now();
        let Task {
            collection: coll,
            entity,
            earlier,
        } = task;
        let coll = coll.as_str();
        let name = self.run.pipeline.name.clone();
        if let Some(prev) = earlier
            .as_ref()
            .filter(|p| p.state == CollectionState::Complete)
        {
            let mut s = CollectionSummary::new(coll, entity, CollectionStatus::AlreadyComplete);
            s.resumed_from = prev.docs_done;
            s.done = prev.docs_done;
            s.total = prev.docs_total;
            return Ok(s);
        }
        let mut checkpoint = earlier.unwrap_or_default();
        let (rx, total) = match self.open(coll, entity, &checkpoint).await? {
            Opened::Missing(reason) => {
                store::begin_collection(
                    self.client,
                    &name,
                    coll,
                    CollectionState::Missing,
                    Some(0),
                )
                .await?;
                tracing::warn!(pipeline = %name, collection = coll, reason,
                    "collection has no data in the dump: nothing to backfill");
                let mut s = CollectionSummary::new(coll, entity, CollectionStatus::Missing(reason));
                s.total = Some(0);
                return Ok(s);
            }
            Opened::Reading { rx, total } => (rx, total),
        };
        store::begin_collection(
            self.client,
            &name,
            coll,
            CollectionState::Running,
            Some(total),
        )
        .await?;
        if !side_by_side(entity) {
            self.defer(coll, defer::bulk_tables(entity)).await?;
        }
        checkpoint.docs_total = Some(total);
        let mut summary = CollectionSummary::new(coll, entity, CollectionStatus::Complete);
        summary.resumed_from = checkpoint.docs_done;
        self.run
            .progress()
            .start(coll, checkpoint.docs_done, Some(total));
        let load = Arc::new(Load::new(
            coll,
            rx,
            Tally {
                checkpoint,
                summary,
            },
        ));
        let result = if !extra.is_empty() && self.hold_exclusive().await? {
            tracing::info!(pipeline = %name, collection = coll, connections = extra.len() + 1,
                "no child in the mirror yet: the reports load side by side");
            defer::defer(self.client, &[defer::LINKS], true).await?;
            let result = self.drain_parallel(extra, &load).await;
            let rebuilt = defer::restore(self.client, Some(&[defer::LINKS]))
                .await
                .map_err(BackfillError::Rebuild);
            self.release_exclusive().await?;
            rebuilt?;
            result
        } else if model::model(entity).splits {
            // Open to the other connections once they run out of collections.
            self.load_splitting(&load).await
        } else {
            self.drain(&load, Lock::Shared).await
        };
        let Tally {
            checkpoint,
            mut summary,
        } = load.tally();
        if let Err(e) = result {
            self.run.progress().finish(coll, "stopped");
            return Err(BackfillError::Collection {
                collection: coll.to_string(),
                done: checkpoint.docs_done,
                total: total.to_string(),
                source: Box::new(e),
            });
        }
        if let Some(pos) = self.run.position.clone() {
            summary.vanished = self
                .tombstone_vanished(coll, entity, &pos, &mut summary)
                .await?;
        }
        store::complete_collection(self.client, &name, coll).await?;
        defer::restore(self.client, Some(defer::bulk_tables(entity)))
            .await
            .map_err(BackfillError::Rebuild)?;
        self.run.progress().finish(coll, "complete");
        summary.done = checkpoint.docs_done;
        summary.total = Some(total.max(checkpoint.docs_done));
        summary.duration = started.elapsed();
        Ok(summary)
    }

    /// Put the empty ones of `tables` in bulk load for `what` ([`defer::defer`]).
    pub(super) async fn defer(&mut self, what: &str, tables: &[&str]) -> Result<(), BackfillError> {
        let deferred = defer::defer(self.client, tables, false).await?;
        if !deferred.is_empty() {
            tracing::info!(pipeline = %self.run.pipeline.name, collection = what,
                tables = deferred.join(","),
                "bulk load: non-unique indexes and foreign keys of empty tables dropped until \
                 the collection is loaded");
        }
        Ok(())
    }

    /// Start reading a collection after its checkpoint.
    async fn open(
        &self,
        coll: &str,
        entity: Entity,
        checkpoint: &store::Progress,
    ) -> Result<Opened, BackfillError> {
        let chunk = self.run.pipeline.backfill.chunk_size;
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let stamp = self.run.stamp;
        match self.run.source {
            Source::Dump(dir) => {
                let file = match dump::locate(dir, coll).map_err(BackfillError::Dump)? {
                    dump::DumpEntry::Missing { reason } => return Ok(Opened::Missing(reason)),
                    dump::DumpEntry::Data(f) => f,
                };
                let offset = checkpoint.byte_offset;
                let done = checkpoint.docs_done;
                let (reader, remaining) = tokio::task::spawn_blocking(move || {
                    let mut r = dump::DumpReader::open(&file, offset)?;
                    let n = r.count_remaining()?;
                    Ok::<_, DumpError>((r, n))
                })
                .await
                .map_err(|_| BackfillError::Interrupted)?
                .map_err(BackfillError::Dump)?;
                tokio::task::spawn_blocking(move || {
                    dump::produce(reader, entity, chunk, stamp, tx)
                });
                Ok(Opened::Reading {
                    rx,
                    total: done + remaining,
                })
            }
            Source::Mongo { scan } => {
                let c = scan
                    .database(&self.run.pipeline.mongo_database)
                    .collection::<Document>(coll);
                let total = mongo::estimated_count(&c).await?.max(checkpoint.docs_done);
                tokio::spawn(mongo::scan(
                    c,
                    entity,
                    chunk,
                    checkpoint.last_id.clone(),
                    stamp,
                    tx,
                ));
                Ok(Opened::Reading { rx, total })
            }
        }
    }

    /// After a full live scan: mirror documents of the entity older than the pre-scan
    /// position were not seen by the scan. Those MongoDB confirms it no longer has were
    /// deleted: tombstone them. A document the scan did not load (PostgreSQL rejected it) is
    /// still in MongoDB and keeps its mirror state.
    async fn tombstone_vanished(
        &mut self,
        coll: &str,
        entity: Entity,
        pos: &StreamPosition,
        s: &mut CollectionSummary,
    ) -> Result<u64, BackfillError> {
        let Source::Mongo { scan } = self.run.source else {
            return Ok(0);
        };
        let unseen = store::unseen(self.client, entity.as_str(), pos.cluster_time).await?;
        if unseen.is_empty() {
            return Ok(0);
        }
        let c = scan
            .database(&self.run.pipeline.mongo_database)
            .collection::<Document>(coll);
        let gone = mongo::absent(&c, unseen).await?;
        self.run.deletes.take(coll, gone.len() as u64)?;
        let mut n = 0;
        for part in gone.chunks(self.run.pipeline.backfill.chunk_size) {
            let docs: Vec<SourceDoc> = part
                .iter()
                .map(|k| SourceDoc {
                    entity,
                    key: k.clone(),
                    version: self.run.stamp.version,
                    wall_time: self.run.stamp.wall_time,
                    doc: None,
                    deleted: true,
                })
                .collect();
            let mut tx = self.client.transaction().await?;
            let stats = project::project(
                &mut tx,
                self.run.pipeline,
                &docs,
                Versions::NewerOrEqual,
                Lock::Shared,
            )
            .await
            .map_err(BackfillError::Project)?
            .stats;
            tx.commit().await?;
            n += stats.applied;
            for (t, c) in &stats.rows_written {
                *s.rows_written.entry((*t).to_string()).or_default() += c;
            }
        }
        if n > 0 {
            tracing::info!(
                collection = coll,
                documents = n,
                "mirror documents no longer in MongoDB marked deleted"
            );
        }
        Ok(n)
    }
}
