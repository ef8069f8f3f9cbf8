//! The checks that stop a backfill before it writes anything from the wrong source:
//!
//! - the source holds none of the watched collections (a wrong database name, a dump folder
//!   one level too high): the run stops naming the database and the collections;
//! - the run would mark more than a tenth of the mirror documents of its collections deleted
//!   (an empty source): the run stops before writing, with the counts per collection, unless
//!   `--allow-deletes`. Before the load the estimate is the mirror's count minus the source's
//!   per collection; during the load every collection's tombstones, confirmed absent in
//!   MongoDB, are taken from the same budget, so a source whose `_id`s differ is stopped too
//!   (before its first tombstone over the budget; what was loaded stays loaded).
//!
//! Only a live source tombstones; a dump never marks anything deleted.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use bson::Document;
use tokio_postgres::Client;

use crate::config::Pipeline;

use super::dump::{self, DumpEntry};
use super::run::Source;
use super::{BackfillError, Selected, mongo, store};

/// The share of the mirror a run may mark deleted without `--allow-deletes`: one in ten.
const MAX_DELETED_PER: u64 = 10;
/// Names listed in a hint before "…".
const HINT_NAMES: usize = 8;

/// Why a run would mark too much of the mirror deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteEstimate {
    /// The collections considered ("pipeline paving" or a list).
    pub scope: String,
    /// Live mirror documents of those collections.
    pub mirror: u64,
    /// Documents the run would mark deleted (at least).
    pub deleted: u64,
    pub collections: Vec<CollectionEstimate>,
    /// What the run wrote before it stopped.
    pub written: &'static str,
}

/// One collection's part of a [`DeleteEstimate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionEstimate {
    pub collection: String,
    pub mirror: u64,
    /// Documents the source holds (MongoDB's estimate), when known.
    pub source: Option<u64>,
    pub deleted: u64,
}

impl DeleteEstimate {
    /// The collections that lose documents, e.g. `invoices: 120 in the mirror, 0 in MongoDB`.
    pub(crate) fn per_collection(&self) -> String {
        self.collections
            .iter()
            .filter(|c| c.deleted > 0)
            .map(|c| match c.source {
                Some(n) => format!(
                    "{}: {} in the mirror, {n} in MongoDB",
                    c.collection, c.mirror
                ),
                None => format!(
                    "{}: {} of {} mirror documents gone from MongoDB",
                    c.collection, c.deleted, c.mirror
                ),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn too_many(deleted: u64, mirror: u64) -> bool {
    deleted.saturating_mul(MAX_DELETED_PER) > mirror
}

/// What a run may still mark deleted.
#[derive(Debug)]
pub(crate) struct Budget {
    /// `None`: no limit (`--allow-deletes`, or a dump).
    scope: Option<String>,
    mirror: BTreeMap<String, u64>,
    used: Mutex<u64>,
}

impl Budget {
    fn unlimited() -> Budget {
        Budget {
            scope: None,
            mirror: BTreeMap::new(),
            used: Mutex::new(0),
        }
    }

    /// Take `n` tombstones of `collection` from the budget, or stop the run.
    pub fn take(&self, collection: &str, n: u64) -> Result<(), BackfillError> {
        let Some(scope) = &self.scope else {
            return Ok(());
        };
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        let mirror: u64 = self.mirror.values().sum();
        if n > 0 && too_many(*used + n, mirror) {
            return Err(BackfillError::TooManyDeletes(Box::new(DeleteEstimate {
                scope: scope.clone(),
                mirror,
                deleted: *used + n,
                collections: vec![CollectionEstimate {
                    collection: collection.to_string(),
                    mirror: self.mirror.get(collection).copied().unwrap_or(0),
                    source: None,
                    deleted: n,
                }],
                written: "the documents read were loaded and none of these was marked \
                          deleted; the collection stays unfinished",
            })));
        }
        *used += n;
        Ok(())
    }
}

/// A source that holds none of the pipeline's watched collections.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{source_name} holds none of the collections pipeline {pipeline} watches ({watched}); \
     nothing was read or written. Check the database name (mongo.database in {file}, or the \
     database MONGO_URI names){hint}"
)]
pub struct NoneWatched {
    pub pipeline: String,
    /// `MongoDB database "x"` or `the dump folder y (database "x")`.
    pub source_name: String,
    pub watched: String,
    pub file: String,
    /// What the source holds instead, when that helps.
    pub hint: String,
}

impl NoneWatched {
    fn new(p: &Pipeline, source_name: String, hint: String) -> NoneWatched {
        NoneWatched {
            pipeline: p.name.clone(),
            source_name,
            watched: p.collections.keys().cloned().collect::<Vec<_>>().join(", "),
            file: p.file.display().to_string(),
            hint,
        }
    }
}

/// Whether the pipeline's MongoDB database holds at least one watched collection (`None`) or
/// not (what it holds instead). Checked before a backfill or the capture starts.
pub async fn watched_in_database(
    client: &mongodb::Client,
    p: &Pipeline,
) -> Result<Option<NoneWatched>, BackfillError> {
    let names = mongo::collection_names(client, &p.mongo_database).await?;
    if p.collections.keys().any(|w| names.contains(w)) {
        return Ok(None);
    }
    let hint = if names.is_empty() {
        "; the database is empty or does not exist".to_string()
    } else {
        format!("; it holds {}", listed(&names))
    };
    let source_name = format!("MongoDB database {:?}", p.mongo_database);
    Ok(Some(NoneWatched::new(p, source_name, hint)))
}

/// Stop unless the source holds at least one watched collection.
pub(super) async fn watched_collections_exist(
    p: &Pipeline,
    source: &Source,
) -> Result<(), BackfillError> {
    let missing = match source {
        Source::Mongo { scan } => watched_in_database(scan, p).await?,
        Source::Dump(dir) => {
            let mut present = false;
            for w in p.collections.keys() {
                present |= matches!(
                    dump::locate(dir, w).map_err(BackfillError::Dump)?,
                    DumpEntry::Data(_)
                );
            }
            let source_name = format!(
                "the dump folder {} (database {:?})",
                dir.display(),
                p.mongo_database
            );
            (!present).then(|| NoneWatched::new(p, source_name, dump_hint(dir)))
        }
    };
    match missing {
        None => Ok(()),
        Some(e) => Err(BackfillError::NoWatchedCollections(e)),
    }
}

/// What a dump folder without any watched collection holds instead.
fn dump_hint(dir: &Path) -> String {
    let Ok(read) = std::fs::read_dir(dir) else {
        return String::new();
    };
    let mut folders = Vec::new();
    let mut files = Vec::new();
    for entry in read.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            folders.push(name);
        } else if let Some(coll) = name.strip_suffix(".bson") {
            files.push(coll.to_string());
        }
    }
    folders.sort();
    files.sort();
    if !folders.is_empty() {
        format!(
            "; it holds the folders {}: pass mongodump's output folder or the database's \
             folder in it",
            listed(&folders)
        )
    } else if !files.is_empty() {
        format!("; it holds dumps of {}", listed(&files))
    } else {
        "; it holds no .bson file".to_string()
    }
}

fn listed(names: &[String]) -> String {
    let mut out = names
        .iter()
        .take(HINT_NAMES)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > HINT_NAMES {
        out.push_str(", …");
    }
    out
}

/// Estimate before the load what a live run would mark deleted: per collection the mirror's
/// live documents beyond what MongoDB holds. Stops the run when that is more than a tenth of
/// the mirror of the selected collections; else returns the budget for the load.
pub(super) async fn deletes(
    client: &Client,
    p: &Pipeline,
    source: &Source,
    selected: &[Selected],
    allow: bool,
) -> Result<Budget, BackfillError> {
    let Source::Mongo { scan } = source else {
        return Ok(Budget::unlimited());
    };
    if allow {
        return Ok(Budget::unlimited());
    }
    let entities: Vec<&str> = selected.iter().map(|s| s.entity.as_str()).collect();
    let counts = store::mirror_counts(client, &entities).await?;
    let db = scan.database(&p.mongo_database);
    let mut collections = Vec::new();
    for s in selected {
        let mirror = counts.get(s.entity.as_str()).copied().unwrap_or(0);
        let held = if mirror == 0 {
            0
        } else {
            mongo::estimated_count(&db.collection::<Document>(&s.collection)).await?
        };
        collections.push(CollectionEstimate {
            collection: s.collection.clone(),
            mirror,
            source: Some(held),
            deleted: mirror.saturating_sub(held),
        });
    }
    let scope = if selected.len() == p.collections.len() {
        format!("pipeline {}", p.name)
    } else {
        let names: Vec<String> = selected.iter().map(|s| s.collection.clone()).collect();
        names.join(", ")
    };
    let mirror: u64 = collections.iter().map(|c| c.mirror).sum();
    let deleted: u64 = collections.iter().map(|c| c.deleted).sum();
    if too_many(deleted, mirror) {
        return Err(BackfillError::TooManyDeletes(Box::new(DeleteEstimate {
            scope,
            mirror,
            deleted,
            collections,
            written: "nothing was written",
        })));
    }
    Ok(Budget {
        scope: Some(scope),
        mirror: collections
            .into_iter()
            .map(|c| (c.collection, c.mirror))
            .collect(),
        used: Mutex::new(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(mirror: u64) -> Budget {
        Budget {
            scope: Some("pipeline paving".into()),
            mirror: [("invoices".to_string(), mirror)].into(),
            used: Mutex::new(0),
        }
    }

    #[test]
    fn a_tenth_of_the_mirror_may_go_and_no_more() {
        let b = budget(100);
        b.take("invoices", 6).unwrap();
        b.take("invoices", 4).unwrap();
        let e = b.take("invoices", 1).unwrap_err().to_string();
        assert!(e.contains("refusing to mark 11 of the 100"), "{e}");
        assert!(e.contains("--allow-deletes"), "{e}");
        assert!(e.contains("invoices: 1 of 100"), "{e}");
        Budget::unlimited().take("invoices", 1_000).unwrap();
    }
}
