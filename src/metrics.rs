//! Metric names and their descriptions, in one place (documented in `docs/METRICS.md`).
//! Names follow `cdc_<stage>_<noun>_<unit>`; labels come from bounded sets only.

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Label names (bounded sets only: never ids).
pub(crate) const LABEL_PIPELINE: &str = "pipeline";
pub(crate) const LABEL_COLLECTION: &str = "collection";
pub(crate) const LABEL_ENTITY: &str = "entity";
pub(crate) const LABEL_OP: &str = "op";
pub(crate) const LABEL_OUTCOME: &str = "outcome";
pub(crate) const LABEL_ERROR_TYPE: &str = "error_type";
pub(crate) const LABEL_TABLE: &str = "table";
pub(crate) const LABEL_REASON: &str = "reason";
pub(crate) const LABEL_COLUMN: &str = "column";
pub(crate) const LABEL_ADJUSTMENT: &str = "adjustment";

// --- capture ---------------------------------------------------------------------------------

/// Counter {pipeline, collection, op}: changes read from the change stream and normalized.
pub(crate) const CAPTURE_EVENTS_CAPTURED: &str = "cdc_capture_events_captured_total";
/// Counter {pipeline, collection, op}: events handed to RabbitMQ.
pub(crate) const CAPTURE_EVENTS_PUBLISHED: &str = "cdc_capture_events_published_total";
/// Counter {pipeline, collection, op}: events the broker confirmed (`Ack`, not returned).
pub(crate) const CAPTURE_EVENTS_CONFIRMED: &str = "cdc_capture_events_confirmed_total";
/// Histogram {pipeline}: seconds from publish to the broker's confirm.
pub(crate) const CAPTURE_CONFIRM_LATENCY: &str = "cdc_capture_confirm_latency_seconds";
/// Gauge {pipeline}: publishes awaiting their confirm.
pub(crate) const CAPTURE_CONFIRMS_IN_FLIGHT: &str = "cdc_capture_confirms_in_flight";
/// Gauge {pipeline}: now minus the wall time of the last confirmed event (0 when idle).
pub(crate) const CAPTURE_SOURCE_LAG: &str = "cdc_capture_source_lag_seconds";
/// Gauge {pipeline}: MongoDB wall time (Unix seconds) of the last confirmed event; 0 until this
/// process confirmed one. With [`PROJECTOR_LAST_EVENT_TIMESTAMP`]: how far (in event time) the
/// projector is behind the capture.
pub(crate) const CAPTURE_LAST_EVENT_TIMESTAMP: &str = "cdc_capture_last_event_timestamp_seconds";
/// Gauge {pipeline}: Unix time up to which the stored checkpoint covers the change stream: now
/// when every change read is confirmed and stored (caught up, idle or busy), else the cluster
/// time of the stored checkpoint's last event; 0 until this process stored or confirmed one.
/// A timestamp, so that its age (`time() - …`) grows while the capture is stuck or frozen.
pub(crate) const CAPTURE_CHECKPOINT_TIMESTAMP: &str = "cdc_capture_checkpoint_timestamp_seconds";
/// Counter {pipeline, error_type}: change streams reopened from the checkpoint after an error.
pub(crate) const CAPTURE_RESUMES: &str = "cdc_capture_resumes_total";
/// Counter {pipeline, error_type}: capture errors (transient and fatal).
pub(crate) const CAPTURE_ERRORS: &str = "cdc_capture_errors_total";
/// Gauge {pipeline}: 1 while this replica holds the capture lock and tails, 0 on standby.
pub(crate) const CAPTURE_LEADER: &str = "cdc_capture_leader";
/// Gauge {pipeline}: 1 while the capture is stopped because the change stream's history after
/// the checkpoint is gone (`history_lost = "fail"`); the process stays up, unready.
pub(crate) const CAPTURE_HISTORY_LOST: &str = "cdc_capture_history_lost";

// --- projector -------------------------------------------------------------------------------

/// Source documents that changed the mirror (version newer than the stored one).
pub(crate) const PROJECTOR_DOCS_APPLIED_TOTAL: &str = "cdc_projector_docs_applied_total";
/// Source documents ignored: an older or equal version, a duplicate in the batch, or an
/// update whose looked-up document was gone.
pub(crate) const PROJECTOR_DOCS_STALE_TOTAL: &str = "cdc_projector_docs_stale_total";
/// Star rows inserted, updated, archived or deleted, by table (label `table`).
pub(crate) const PROJECTOR_ROWS_WRITTEN_TOTAL: &str = "cdc_projector_rows_written_total";
/// Time to project one batch into the mirror and the star schema (inside the transaction).
pub(crate) const PROJECTOR_APPLY_DURATION_SECONDS: &str = "cdc_projector_apply_duration_seconds";
/// Events taken from the queue, by entity and outcome (`applied`, `stale`, `dead_lettered`).
pub(crate) const PROJECTOR_EVENTS_APPLIED_TOTAL: &str = "cdc_projector_events_applied_total";
/// Messages published to the dead-letter queue, by reason.
pub(crate) const PROJECTOR_DEAD_LETTERED_TOTAL: &str = "cdc_projector_dead_lettered_total";
/// Events per committed batch.
pub(crate) const PROJECTOR_BATCH_EVENTS: &str = "cdc_projector_batch_events";
/// Time from taking a batch to acking it (decode, transaction, dead letters, ack).
pub(crate) const PROJECTOR_BATCH_DURATION_SECONDS: &str = "cdc_projector_batch_duration_seconds";
/// MongoDB wall time (Unix seconds) of the newest event of the last committed batch; 0 until
/// this process committed one. A timestamp, so that `time() - …` keeps growing when the
/// projector is stuck.
pub(crate) const PROJECTOR_LAST_EVENT_TIMESTAMP: &str =
    "cdc_projector_last_event_timestamp_seconds";
/// Messages ready in the projector queue (sampled every few seconds).
pub(crate) const PROJECTOR_QUEUE_MESSAGES: &str = "cdc_projector_queue_messages";
/// Messages in the dead-letter queue (sampled every few seconds).
pub(crate) const PROJECTOR_DEAD_LETTER_QUEUE_MESSAGES: &str =
    "cdc_projector_dead_letter_queue_messages";
/// Batch retries and broker reconnects after a transient failure, by `error_type`.
pub(crate) const PROJECTOR_RETRIES_TOTAL: &str = "cdc_projector_retries_total";

/// Counter {pipeline, table, column, adjustment}: values the projection changed so that a
/// valid document's rows are never rejected (`truncated`: text cut to its column's width;
/// `nul_removed`, `not_finite`, `date_out_of_range`: made storable in the mirror, where
/// `table` is `cdc.source_doc` and `column` the document's top-level field).
pub(crate) const PROJECT_VALUES_ADJUSTED_TOTAL: &str = "cdc_project_values_adjusted_total";
/// Gauge {pipeline, entity}: source documents whose own rows PostgreSQL rejected, left out of
/// the star schema and listed in `cdc.quarantine` until a newer version applies.
pub(crate) const PROJECT_QUARANTINED_DOCUMENTS: &str = "cdc_project_quarantined_documents";

// --- verify ----------------------------------------------------------------------------------

/// Gauge {pipeline}: documents and star rows that drifted in the last `verify` run.
pub(crate) const VERIFY_DRIFT_ROWS: &str = "cdc_verify_drift_rows";
/// Gauge {pipeline}: when the last `verify` run finished (the daemon's start when none has).
pub(crate) const VERIFY_LAST_RUN_TIMESTAMP: &str = "cdc_verify_last_run_timestamp_seconds";

/// `outcome` values of [`PROJECTOR_EVENTS_APPLIED_TOTAL`].
pub(crate) const OUTCOME_APPLIED: &str = "applied";
pub(crate) const OUTCOME_STALE: &str = "stale";
pub(crate) const OUTCOME_DEAD_LETTERED: &str = "dead_lettered";
/// A legacy sync message (`{mongoId, action, timestamp}`, no `type`) from the Node producers
/// running beside the daemon during a migration: the capture sees the same write, so it is
/// acknowledged and counted, not dead-lettered.
pub(crate) const OUTCOME_IGNORED_LEGACY: &str = "ignored_legacy";
pub(crate) const ENTITY_LEGACY: &str = "legacy";
/// `entity` value of a message whose entity could not be read.
pub(crate) const ENTITY_UNKNOWN: &str = "unknown";

/// Histogram buckets of every `*_seconds` histogram.
pub(crate) const SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets of [`PROJECTOR_BATCH_EVENTS`].
pub(crate) const BATCH_EVENTS_BUCKETS: [f64; 10] =
    [1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

// --- backfill --------------------------------------------------------------------------------

/// Documents of a collection the backfill has completed (committed), including earlier runs
/// of a resumed backfill (labels `pipeline`, `collection`).
pub(crate) const BACKFILL_DOCUMENTS_DONE: &str = "cdc_backfill_documents_done";
/// Documents of a collection to backfill: the dump's count, or the server's estimate (a gauge,
/// so no `_total` suffix).
pub(crate) const BACKFILL_DOCUMENTS_EXPECTED: &str = "cdc_backfill_documents_expected";

// --- process ---------------------------------------------------------------------------------

/// Gauge {pipeline, version}: always 1; the version of the running binary.
pub(crate) const BUILD_INFO: &str = "cdc_build_info";
pub(crate) const LABEL_VERSION: &str = "version";
/// Documents the backfill read but did not project, by `reason` (`no_id`, `rejected`,
/// `stale`).
pub(crate) const BACKFILL_DOCUMENTS_SKIPPED_TOTAL: &str = "cdc_backfill_documents_skipped_total";

/// The `error_type` values of the capture's error and resume counters.
pub(crate) const CAPTURE_ERROR_TYPES: [&str; 15] = [
    "mongo",
    "mongo_auth",
    "resume_rejected",
    "event_too_large",
    "history_lost",
    "invalidated",
    "backfill",
    "config",
    "bad_checkpoint",
    "nack",
    "returned",
    "broker",
    "postgres",
    "lease_lost",
    "malformed",
];

/// The `error_type` values of [`PROJECTOR_RETRIES_TOTAL`].
pub(crate) const PROJECTOR_ERROR_TYPES: [&str; 6] = [
    "broker",
    "consumer_ended",
    "dead_letter_refused",
    "postgres_pool",
    "postgres",
    "projection",
];

/// Register the counters of a pipeline's roles with every value of their bounded label sets
/// at 0: a counter created on its first increment has no earlier sample, so `increase()` would
/// never see its first event (the first dead letter, the first lost history).
/// Also sets [`BUILD_INFO`] (the backfill calls it with neither role).
pub fn zero(pipeline: &str, capture: bool, project: bool) {
    let p = || pipeline.to_string();
    metrics::gauge!(BUILD_INFO, LABEL_PIPELINE => p(), LABEL_VERSION => env!("CARGO_PKG_VERSION"))
        .set(1.0);
    if capture {
        // A standby exports the leader's series too: absent would silence "no leader".
        metrics::gauge!(CAPTURE_LEADER, LABEL_PIPELINE => p()).set(0.0);
        metrics::gauge!(CAPTURE_HISTORY_LOST, LABEL_PIPELINE => p()).set(0.0);
        metrics::gauge!(CAPTURE_CHECKPOINT_TIMESTAMP, LABEL_PIPELINE => p()).set(0.0);
        metrics::gauge!(CAPTURE_LAST_EVENT_TIMESTAMP, LABEL_PIPELINE => p()).set(0.0);
        metrics::gauge!(CAPTURE_CONFIRMS_IN_FLIGHT, LABEL_PIPELINE => p()).set(0.0);
        metrics::gauge!(CAPTURE_SOURCE_LAG, LABEL_PIPELINE => p()).set(0.0);
        for t in CAPTURE_ERROR_TYPES {
            metrics::counter!(CAPTURE_ERRORS, LABEL_PIPELINE => p(), LABEL_ERROR_TYPE => t)
                .increment(0);
            metrics::counter!(CAPTURE_RESUMES, LABEL_PIPELINE => p(), LABEL_ERROR_TYPE => t)
                .increment(0);
        }
    }
    if project {
        metrics::gauge!(PROJECTOR_LAST_EVENT_TIMESTAMP, LABEL_PIPELINE => p()).set(0.0);
        metrics::gauge!(PROJECTOR_QUEUE_MESSAGES, LABEL_PIPELINE => p()).set(0.0);
        metrics::gauge!(PROJECTOR_DEAD_LETTER_QUEUE_MESSAGES, LABEL_PIPELINE => p()).set(0.0);
        for r in crate::projector::dlq::Reason::ALL {
            metrics::counter!(PROJECTOR_DEAD_LETTERED_TOTAL, LABEL_PIPELINE => p(),
                LABEL_REASON => r.as_str())
            .increment(0);
        }
        for t in PROJECTOR_ERROR_TYPES {
            metrics::counter!(PROJECTOR_RETRIES_TOTAL, LABEL_PIPELINE => p(),
                LABEL_ERROR_TYPE => t)
            .increment(0);
        }
        for e in crate::event::Entity::ALL {
            for o in [OUTCOME_APPLIED, OUTCOME_STALE, OUTCOME_DEAD_LETTERED] {
                metrics::counter!(PROJECTOR_EVENTS_APPLIED_TOTAL, LABEL_PIPELINE => p(),
                    LABEL_ENTITY => e.as_str(), LABEL_OUTCOME => o)
                .increment(0);
            }
        }
        for e in crate::event::Entity::ALL {
            metrics::gauge!(PROJECT_QUARANTINED_DOCUMENTS, LABEL_PIPELINE => p(),
                LABEL_ENTITY => e.as_str())
            .increment(0.0);
        }
    }
}

/// Install the process-wide Prometheus recorder: real histograms (buckets), every metric
/// described.
pub(crate) fn install_recorder() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(PROJECTOR_BATCH_EVENTS.into()),
            &BATCH_EVENTS_BUCKETS,
        )?
        .install_recorder()?;
    describe();
    Ok(handle)
}

/// `reason` values of [`BACKFILL_DOCUMENTS_SKIPPED_TOTAL`].
pub(crate) const BACKFILL_SKIP_REASONS: [&str; 3] = ["no_id", "stale", "rejected"];

/// Register a backfilled collection's skip counters at 0 (see [`zero`]).
pub(crate) fn zero_backfill(pipeline: &str, collection: &str) {
    for r in BACKFILL_SKIP_REASONS {
        metrics::counter!(BACKFILL_DOCUMENTS_SKIPPED_TOTAL, LABEL_PIPELINE => pipeline.to_string(),
            LABEL_COLLECTION => collection.to_string(), LABEL_REASON => r)
        .increment(0);
    }
}

/// Describe every metric once, so `/metrics` carries HELP lines.
pub fn describe() {
    describe_capture();
    describe_projector();
    describe_backfill();
    describe_verify();
    metrics::describe_gauge!(
        BUILD_INFO,
        "Always 1: the pipeline and version (labels) of the running bowmark-cdc binary"
    );
    process_collector().describe();
}

/// Process CPU, memory, file descriptors, threads and start time (`process_*`, as the Go
/// client names them), sampled by [`collect_process`] before each scrape.
fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: std::sync::OnceLock<metrics_process::Collector> = std::sync::OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Sample the process metrics (called by `/metrics` before rendering).
pub(crate) fn collect_process() {
    process_collector().collect();
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
        CAPTURE_LAST_EVENT_TIMESTAMP,
        Unit::Seconds,
        "MongoDB wall time (Unix) of the last confirmed event (0: none yet)"
    );
    describe_gauge!(
        CAPTURE_CHECKPOINT_TIMESTAMP,
        Unit::Seconds,
        "Unix time up to which the stored checkpoint covers the change stream (0: none yet)"
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
    describe_gauge!(
        CAPTURE_HISTORY_LOST,
        "1 while the capture is stopped because the history after its checkpoint is gone"
    );
}

fn describe_projector() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
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
    describe_counter!(
        PROJECTOR_EVENTS_APPLIED_TOTAL,
        Unit::Count,
        "Events taken from the queue, by entity and outcome (applied, stale, dead_lettered)"
    );
    describe_counter!(
        PROJECTOR_DEAD_LETTERED_TOTAL,
        Unit::Count,
        "Messages published to the dead-letter queue, by reason"
    );
    describe_histogram!(
        PROJECTOR_BATCH_EVENTS,
        Unit::Count,
        "Events per committed batch"
    );
    describe_histogram!(
        PROJECTOR_BATCH_DURATION_SECONDS,
        Unit::Seconds,
        "Time from taking a batch to acking it, commit included"
    );
    describe_gauge!(
        PROJECTOR_LAST_EVENT_TIMESTAMP,
        Unit::Seconds,
        "MongoDB wall time (Unix) of the newest event of the last committed batch (0: none yet)"
    );
    describe_gauge!(
        PROJECTOR_QUEUE_MESSAGES,
        Unit::Count,
        "Messages ready in the projector queue"
    );
    describe_gauge!(
        PROJECTOR_DEAD_LETTER_QUEUE_MESSAGES,
        Unit::Count,
        "Messages in the projector's dead-letter queue"
    );
    describe_counter!(
        PROJECT_VALUES_ADJUSTED_TOTAL,
        Unit::Count,
        "Values adjusted so that their rows are not rejected, by table, column and adjustment"
    );
    describe_gauge!(
        PROJECT_QUARANTINED_DOCUMENTS,
        Unit::Count,
        "Source documents whose rows PostgreSQL rejected, left out until a newer version, by entity"
    );
    describe_counter!(
        PROJECTOR_RETRIES_TOTAL,
        Unit::Count,
        "Batch retries and broker reconnects after transient failures, by error type"
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
        BACKFILL_DOCUMENTS_EXPECTED,
        Unit::Count,
        "Documents of a collection to backfill (dump count or server estimate)"
    );
    describe_counter!(
        BACKFILL_DOCUMENTS_SKIPPED_TOTAL,
        Unit::Count,
        "Documents the backfill read but did not project, by reason"
    );
}

fn describe_verify() {
    use metrics::{Unit, describe_gauge};
    describe_gauge!(
        VERIFY_DRIFT_ROWS,
        Unit::Count,
        "Documents and star rows that drifted in the last verify run"
    );
    describe_gauge!(
        VERIFY_LAST_RUN_TIMESTAMP,
        Unit::Seconds,
        "Unix time the last verify run finished (the daemon's start when none has)"
    );
}
