//! The backfill's result: per collection what was read, skipped and written, and what happened
//! to the capture checkpoint; printed as a table at the end of a run.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::event::{ClusterTime, Entity};

use super::store::SourceKind;

/// Examples of rejected documents kept per collection for the summary.
pub(crate) const MAX_REJECTED_EXAMPLES: usize = 5;

/// How a collection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CollectionStatus {
    /// Every document was projected in this run (possibly continuing an earlier one).
    Complete,
    /// An earlier run completed it; nothing was read.
    AlreadyComplete,
    /// The dump has no data for it (reason); nothing to do.
    Missing(&'static str),
}

impl fmt::Display for CollectionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CollectionStatus::Complete => f.write_str("complete"),
            CollectionStatus::AlreadyComplete => f.write_str("complete (earlier run)"),
            CollectionStatus::Missing(_) => f.write_str("MISSING"),
        }
    }
}

/// Why a document read was not projected (also the `reason` label of
/// `cdc_backfill_documents_skipped_total`). In the summary's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SkipReason {
    /// The document has no `_id`.
    NoId,
    /// Its rows are rejected by PostgreSQL: recorded in `cdc.quarantine`.
    Quarantined,
    /// PostgreSQL rejects the document itself.
    Rejected,
    /// The mirror holds a newer version (a streamed change won).
    Stale,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NoId => "no_id",
            SkipReason::Quarantined => "quarantined",
            SkipReason::Rejected => "rejected",
            SkipReason::Stale => "stale",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A document PostgreSQL rejected: its `_id` and the reason (no values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub key: String,
    pub reason: String,
}

/// One collection's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionSummary {
    pub collection: String,
    pub entity: Entity,
    pub status: CollectionStatus,
    /// Documents an earlier, interrupted run had already completed.
    pub resumed_from: u64,
    /// Documents read in this run.
    pub read: u64,
    /// Documents completed in total (earlier runs included), and the expected total.
    pub done: u64,
    pub total: Option<u64>,
    /// Documents read in this run but not projected, by reason.
    pub skipped: BTreeMap<SkipReason, u64>,
    /// A few rejected documents.
    pub rejected: Vec<Rejected>,
    /// Mirror documents absent from a full live scan, tombstoned (deleted in MongoDB).
    pub vanished: u64,
    /// Star rows written in this run, by table.
    pub rows_written: BTreeMap<String, u64>,
    /// Values adjusted so that no row is rejected, by `table.column (adjustment)`.
    pub adjusted: BTreeMap<String, u64>,
    pub duration: Duration,
}

impl CollectionSummary {
    pub fn new(collection: &str, entity: Entity, status: CollectionStatus) -> Self {
        CollectionSummary {
            collection: collection.to_string(),
            entity,
            status,
            resumed_from: 0,
            read: 0,
            done: 0,
            total: None,
            skipped: BTreeMap::new(),
            rejected: Vec::new(),
            vanished: 0,
            rows_written: BTreeMap::new(),
            adjusted: BTreeMap::new(),
            duration: Duration::ZERO,
        }
    }

    pub(crate) fn docs_per_sec(&self) -> f64 {
        let s = self.duration.as_secs_f64();
        if s > 0.0 { self.read as f64 / s } else { 0.0 }
    }
}

/// What the run did to the capture checkpoint (`cdc.checkpoint`).
#[derive(Debug, Clone, PartialEq)]
pub enum CheckpointOutcome {
    /// The pre-scan position is now the capture checkpoint.
    Stored(ClusterTime),
    /// The stored checkpoint was already at or past the pre-scan position.
    KeptNewer {
        stored: ClusterTime,
        pre_scan: ClusterTime,
    },
    /// Not every watched collection is backfilled under this run yet: left alone.
    Deferred { not_yet: Vec<String> },
    /// A dump has no stream position: left alone.
    DumpLeftAlone,
}

impl fmt::Display for CheckpointOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckpointOutcome::Stored(ct) => write!(
                f,
                "capture checkpoint set to the pre-scan position (cluster time {}.{}): \
                 the change stream resumes from there without a gap",
                ct.t, ct.i
            ),
            CheckpointOutcome::KeptNewer { stored, pre_scan } => write!(
                f,
                "capture checkpoint left at {}.{}: it is not older than the pre-scan \
                 position {}.{}",
                stored.t, stored.i, pre_scan.t, pre_scan.i
            ),
            CheckpointOutcome::Deferred { not_yet } => write!(
                f,
                "capture checkpoint left alone: not every watched collection is backfilled \
                 yet ({})",
                not_yet.join(", ")
            ),
            CheckpointOutcome::DumpLeftAlone => f.write_str(
                "capture checkpoint (cdc.checkpoint) left alone: a dump has no change-stream \
                 position; start the daemon from its own checkpoint, or backfill from MongoDB \
                 for a gap-free handoff",
            ),
        }
    }
}

/// The result of a complete backfill.
#[derive(Debug, Clone, PartialEq)]
pub struct BackfillSummary {
    pub pipeline: String,
    pub source: SourceKind,
    pub source_name: String,
    pub collections: Vec<CollectionSummary>,
    pub checkpoint: CheckpointOutcome,
    pub duration: Duration,
}

impl BackfillSummary {
    /// Star rows written in this run, by table, over every collection.
    pub fn rows_written(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for c in &self.collections {
            for (t, n) in &c.rows_written {
                *out.entry(t.clone()).or_default() += n;
            }
        }
        out
    }

    /// Values adjusted in this run, by `table.column (adjustment)`, over every collection.
    pub fn adjusted(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for c in &self.collections {
            for (t, n) in &c.adjusted {
                *out.entry(t.clone()).or_default() += n;
            }
        }
        out
    }

    pub fn missing(&self) -> Vec<(&str, &'static str)> {
        self.collections
            .iter()
            .filter_map(|c| match c.status {
                CollectionStatus::Missing(r) => Some((c.collection.as_str(), r)),
                _ => None,
            })
            .collect()
    }
}

fn join_counts<K: fmt::Display>(m: &BTreeMap<K, u64>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl fmt::Display for BackfillSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let read: u64 = self.collections.iter().map(|c| c.read).sum();
        let secs = self.duration.as_secs_f64();
        writeln!(
            f,
            "backfill {} from {} {}: {} documents read in {:.1}s ({:.0} docs/s)",
            self.pipeline,
            self.source.as_str(),
            self.source_name,
            read,
            secs,
            if secs > 0.0 { read as f64 / secs } else { 0.0 }
        )?;
        writeln!(
            f,
            "{:<18} {:<22} {:>9} {:>9} {:>19} {:>8} {:>9} {:>8}  rows written",
            "collection",
            "status",
            "resumed",
            "read",
            "done/total",
            "skipped",
            "duration",
            "docs/s"
        )?;
        for c in &self.collections {
            let total = c.total.map(|t| t.to_string()).unwrap_or_else(|| "?".into());
            let skipped: u64 = c.skipped.values().sum();
            writeln!(
                f,
                "{:<18} {:<22} {:>9} {:>9} {:>19} {:>8} {:>8.1}s {:>8.0}  {}",
                c.collection,
                c.status.to_string(),
                c.resumed_from,
                c.read,
                format!("{}/{}", c.done, total),
                skipped,
                c.duration.as_secs_f64(),
                c.docs_per_sec(),
                join_counts(&c.rows_written)
            )?;
            if skipped > 0 {
                writeln!(f, "{:<18}   skipped: {}", "", join_counts(&c.skipped))?;
            }
            for r in &c.rejected {
                writeln!(f, "{:<18}   rejected {}: {}", "", r.key, r.reason)?;
            }
            if c.vanished > 0 {
                writeln!(
                    f,
                    "{:<18}   {} mirror document(s) no longer in MongoDB: marked deleted",
                    "", c.vanished
                )?;
            }
        }
        for (coll, why) in self.missing() {
            writeln!(f, "missing in the source: {coll} ({why})")?;
        }
        writeln!(f, "rows written: {}", join_counts(&self.rows_written()))?;
        let adjusted = self.adjusted();
        if !adjusted.is_empty() {
            writeln!(
                f,
                "values adjusted so that no row is rejected (documents, by table.column):"
            )?;
            for (k, n) in &adjusted {
                writeln!(f, "  {k:<48} {n:>8}")?;
            }
        }
        writeln!(f, "{}", self.checkpoint)
    }
}
