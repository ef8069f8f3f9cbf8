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

/// Counter {pipeline, collection, op}: changes read from the change stream and normalized.
pub const CAPTURE_EVENTS_CAPTURED: &str = "cdc_capture_events_captured_total";
/// Counter {pipeline, collection, op}: events handed to RabbitMQ.
pub const CAPTURE_EVENTS_PUBLISHED: &str = "cdc_capture_events_published_total";
/// Counter {pipeline, collection, op}: events the broker confirmed (`Ack`, not returned).
pub const CAPTURE_EVENTS_CONFIRMED: &str = "cdc_capture_events_confirmed_total";
/// Histogram {pipeline}: seconds from publish to the broker's confirm.
pub const CAPTURE_CONFIRM_LATENCY: &str = "cdc_capture_confirm_latency_seconds";
/// Gauge {pipeline}: publishes awaiting their confirm.
pub const CAPTURE_CONFIRMS_IN_FLIGHT: &str = "cdc_capture_confirms_in_flight";
/// Gauge {pipeline}: now minus the wall time of the last confirmed event (0 when idle).
pub const CAPTURE_SOURCE_LAG: &str = "cdc_capture_source_lag_seconds";
/// Gauge {pipeline}: seconds since the stored checkpoint was last at the stream's position.
pub const CAPTURE_CHECKPOINT_AGE: &str = "cdc_capture_checkpoint_age_seconds";
/// Counter {pipeline, error_type}: change streams reopened from the checkpoint after an error.
pub const CAPTURE_RESUMES: &str = "cdc_capture_resumes_total";
/// Counter {pipeline, error_type}: capture errors (transient and fatal).
pub const CAPTURE_ERRORS: &str = "cdc_capture_errors_total";
/// Gauge {pipeline}: 1 while this replica holds the capture lock and tails, 0 on standby.
pub const CAPTURE_LEADER: &str = "cdc_capture_leader";

// --- projector -------------------------------------------------------------------------------

// --- backfill --------------------------------------------------------------------------------

/// Describe every metric once, so `/metrics` carries HELP lines.
pub fn describe() {
    describe_capture();
    describe_projector();
    describe_backfill();
}

fn describe_capture() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        CAPTURE_EVENTS_CAPTURED,
        Unit::Count,
        "Changes read from the MongoDB change stream and normalized, by collection and op"
    );
    describe_counter!(
        CAPTURE_EVENTS_PUBLISHED,
        Unit::Count,
        "Events published to RabbitMQ (confirm pending), by collection and op"
    );
    describe_counter!(
        CAPTURE_EVENTS_CONFIRMED,
        Unit::Count,
        "Events confirmed by RabbitMQ (ack, not returned), by collection and op"
    );
    describe_histogram!(
        CAPTURE_CONFIRM_LATENCY,
        Unit::Seconds,
        "Seconds from publishing an event to the broker's confirm"
    );
    describe_gauge!(
        CAPTURE_CONFIRMS_IN_FLIGHT,
        Unit::Count,
        "Published events awaiting their publisher confirm"
    );
    describe_gauge!(
        CAPTURE_SOURCE_LAG,
        Unit::Seconds,
        "Now minus the MongoDB wall time of the last confirmed event (0 when idle)"
    );
    describe_gauge!(
        CAPTURE_CHECKPOINT_AGE,
        Unit::Seconds,
        "Seconds since the stored checkpoint last matched the change stream's position"
    );
    describe_counter!(
        CAPTURE_RESUMES,
        Unit::Count,
        "Change streams reopened from the checkpoint after an error, by error_type"
    );
    describe_counter!(CAPTURE_ERRORS, Unit::Count, "Capture errors, by error_type");
    describe_gauge!(
        CAPTURE_LEADER,
        "1 while this replica holds the capture lock and tails the stream, 0 on standby"
    );
}

fn describe_projector() {}

fn describe_backfill() {}
