//! Metric names and their descriptions, in one place (documented in `docs/METRICS.md`).
//! Names follow `cdc_<stage>_<noun>_<unit>`; labels come from bounded sets only.

/// Label names (bounded sets only: never ids).
pub const LABEL_PIPELINE: &str = "pipeline";
pub const LABEL_STAGE: &str = "stage";
pub const LABEL_COLLECTION: &str = "collection";
pub const LABEL_ENTITY: &str = "entity";
pub const LABEL_OP: &str = "op";
pub const LABEL_OUTCOME: &str = "outcome";
pub const LABEL_ERROR_TYPE: &str = "error_type";
pub const LABEL_TABLE: &str = "table";
pub const LABEL_REASON: &str = "reason";

// --- capture ---------------------------------------------------------------------------------

// --- projector -------------------------------------------------------------------------------

/// Source documents that changed the mirror (version newer than the stored one).
pub const PROJECTOR_DOCS_APPLIED_TOTAL: &str = "cdc_projector_docs_applied_total";
/// Source documents ignored: an older or equal version, a duplicate in the batch, or an
/// update whose looked-up document was gone.
pub const PROJECTOR_DOCS_STALE_TOTAL: &str = "cdc_projector_docs_stale_total";
/// Star rows inserted, updated, archived or deleted, by table (label `table`).
pub const PROJECTOR_ROWS_WRITTEN_TOTAL: &str = "cdc_projector_rows_written_total";
/// Time to project one batch into the mirror and the star schema (inside the transaction).
pub const PROJECTOR_APPLY_DURATION_SECONDS: &str = "cdc_projector_apply_duration_seconds";

// --- backfill --------------------------------------------------------------------------------

/// Documents of a collection the backfill has completed (committed), including earlier runs
/// of a resumed backfill (labels `pipeline`, `collection`).
pub const BACKFILL_DOCUMENTS_DONE: &str = "cdc_backfill_documents_done";
/// Documents of a collection to backfill: the dump's count, or the server's estimate.
pub const BACKFILL_DOCUMENTS_TOTAL: &str = "cdc_backfill_documents_total";
/// Documents the backfill read but did not project, by `reason` (`no_id`, `rejected`,
/// `stale`).
pub const BACKFILL_DOCUMENTS_SKIPPED_TOTAL: &str = "cdc_backfill_documents_skipped_total";

/// Describe every metric once, so `/metrics` carries HELP lines.
pub fn describe() {
    describe_capture();
    describe_projector();
    describe_backfill();
}

fn describe_capture() {}

fn describe_projector() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(
        PROJECTOR_DOCS_APPLIED_TOTAL,
        Unit::Count,
        "Source documents that changed the projector's mirror"
    );
    describe_counter!(
        PROJECTOR_DOCS_STALE_TOTAL,
        Unit::Count,
        "Source documents ignored as stale, duplicate or vanished"
    );
    describe_counter!(
        PROJECTOR_ROWS_WRITTEN_TOTAL,
        Unit::Count,
        "Star rows written by the projection, by table"
    );
    describe_histogram!(
        PROJECTOR_APPLY_DURATION_SECONDS,
        Unit::Seconds,
        "Time to project one batch (mirror upsert and star rows)"
    );
}

fn describe_backfill() {
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_gauge!(
        BACKFILL_DOCUMENTS_DONE,
        Unit::Count,
        "Documents of a collection the backfill has committed"
    );
    describe_gauge!(
        BACKFILL_DOCUMENTS_TOTAL,
        Unit::Count,
        "Documents of a collection to backfill (dump count or server estimate)"
    );
    describe_counter!(
        BACKFILL_DOCUMENTS_SKIPPED_TOTAL,
        Unit::Count,
        "Documents the backfill read but did not project, by reason"
    );
}
