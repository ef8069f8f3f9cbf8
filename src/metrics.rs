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

// --- backfill --------------------------------------------------------------------------------

/// Describe every metric once, so `/metrics` carries HELP lines.
pub fn describe() {
    describe_capture();
    describe_projector();
    describe_backfill();
}

fn describe_capture() {}

fn describe_projector() {}

fn describe_backfill() {}
