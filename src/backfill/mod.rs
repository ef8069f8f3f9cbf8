//! The backfill stage (docs/architecture.md): load every watched collection from a live MongoDB or a
//! mongodump folder through the same mirror and derivation code as streamed events
//! ([`crate::project::project`]), in chunks, one PostgreSQL transaction per chunk.
//!
//! - **Order**: from the entity catalog ([`crate::model`]): dimension collections first, then
//!   the daily reports, then the rest side by side. The derivation does not depend on it; it
//!   only avoids recomputation.
//! - **Versions**: dump documents carry [`Version::ZERO`] (older than any streamed event);
//!   live documents carry the cluster time read before the scan. The version guard
//!   ([`crate::project::Versions::NewerOrEqual`]) lets streamed changes win, so a backfill and the
//!   daemon may run against one database at once.
//! - **Resumable**: each chunk's transaction also advances that collection's checkpoint
//!   (`cdc.backfill_progress`: last `_id` or dump byte offset); a killed run continues from
//!   the last committed chunk, `--restart` starts over. An advisory lock keeps two backfills of
//!   one pipeline apart.
//! - **Handoff** (live source): the change-stream position is recorded before scanning and,
//!   once every watched collection is complete, stored as the capture checkpoint unless that is
//!   already newer. Mirror documents a full scan no longer finds, and MongoDB confirms are gone,
//!   were deleted before the scan: they are tombstoned, so deletes in a lost stretch of history
//!   are not missed. A dump source leaves `cdc.checkpoint` alone and says so.
//! - **Guards**: a run whose database holds none of the watched collections, or that would
//!   mark more than a tenth of the mirror deleted, stops before writing and says why
//!   (`guard`; `--allow-deletes` lifts the second).
//!
//! Parts: `run` (options, locks, resume, handoff), `schedule` (connections pulling chunks
//! from per-collection queues), `collection` (one collection's lifecycle), `chunk` (reading
//! and committing one chunk), the sources (`mongo`, `dump`) and the bookkeeping (`store`).

pub(crate) mod chunk;
mod collection;
mod defer;
pub(crate) mod dump;
mod error;
mod guard;
pub(crate) mod mongo;
mod progress;
mod run;
mod schedule;
mod store;
mod summary;

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::config::Pipeline;
use crate::event::{Entity, Version};

pub use defer::{pending as pending_deferred, rebuild_all as rebuild_deferred};
pub use dump::DumpError;
pub use error::BackfillError;
pub use guard::{CollectionEstimate, DeleteEstimate, NoneWatched, watched_in_database};
pub use progress::ProgressMode;
pub use run::run_backfill;
pub use store::{SourceKind, StreamPosition};
pub use summary::{
    BackfillSummary, CheckpointOutcome, CollectionStatus, CollectionSummary, Rejected, SkipReason,
};

/// What to backfill and how.
#[derive(Debug, Clone, Default)]
pub struct BackfillOptions {
    /// Read this mongodump folder instead of MongoDB (`MONGO_URI`).
    pub from_dump: Option<PathBuf>,
    /// Only these watched collections (empty: all).
    pub collections: Vec<String>,
    /// Forget earlier progress and start over.
    pub restart: bool,
    /// Mark mirror documents deleted even when more than a tenth of the mirror would go
    /// (`--allow-deletes`; see `guard`).
    pub allow_deletes: bool,
    pub progress: ProgressMode,
    /// Cancelled on SIGTERM: the run stops after the chunk in flight commits.
    pub shutdown: CancellationToken,
}

/// The version and wall time stamped on every document of a run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DocStamp {
    pub version: Version,
    pub wall_time: DateTime<Utc>,
}

/// A watched collection this run loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    pub collection: String,
    pub entity: Entity,
}

/// The collections to backfill, in backfill order (the catalog's rank, then the name);
/// `names` (empty: all) must be watched.
pub fn select(p: &Pipeline, names: &[String]) -> Result<Vec<Selected>, BackfillError> {
    let mut out: Vec<Selected> = Vec::new();
    for n in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let Some(entity) = p.entity_of(n) else {
            return Err(BackfillError::UnknownCollection {
                name: n.to_string(),
                pipeline: p.name.clone(),
                watched: p.collections.keys().cloned().collect::<Vec<_>>().join(", "),
                file: p.file.display().to_string(),
            });
        };
        if !out.iter().any(|s| s.collection == n) {
            out.push(Selected {
                collection: n.to_string(),
                entity,
            });
        }
    }
    if out.is_empty() {
        out = p
            .collections
            .iter()
            .map(|(c, e)| Selected {
                collection: c.clone(),
                entity: *e,
            })
            .collect();
    }
    out.sort_by_key(|s| (crate::model::model(s.entity).rank, s.collection.clone()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline() -> Pipeline {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        Pipeline::load(&root.join("pipeline/paving.toml")).unwrap()
    }

    #[test]
    fn dimensions_come_first_then_reports_then_the_rest() {
        let order: Vec<String> = select(&pipeline(), &[])
            .unwrap()
            .into_iter()
            .map(|s| s.collection)
            .collect();
        assert_eq!(
            order,
            [
                "companies",
                "materials",
                "crews",
                "employees",
                "vehicles",
                "jobsites",
                "systems",
                "dailyreports",
                "jobsiteMaterials",
                "invoices",
                "materialshipments",
                "employeeworks",
                "vehicleworks",
                "productions"
            ]
        );
    }

    #[test]
    fn an_unknown_collection_is_named_in_the_error() {
        let e = select(&pipeline(), &["invoices".into(), "employes".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"employes\""), "{e}");
        assert!(e.contains("employees"), "{e}");
        let picked = select(&pipeline(), &["productions".into(), "crews".into()]).unwrap();
        assert_eq!(picked[0].collection, "crews");
    }
}
