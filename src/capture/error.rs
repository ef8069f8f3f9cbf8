//! The capture's errors and the one place that classifies them.

use crate::capture::leader::LeaderError;
use crate::capture::normalize::{Malformed, StopReason};
use crate::config::ConfigError;
use crate::publish::PublishError;

/// How the capture reacts to an error (the project-wide classification): `Transient` reopens
/// the stream from the checkpoint after a backoff; `Poison` (a change the capture cannot read)
/// and `Fatal` stop the capture (the daemon then exits non-zero, except for history lost under
/// `history_lost = "fail"`, where it stays up, unready). A change is never skipped silently.
pub use crate::project::ErrorClass;

/// Everything that can end a capture session.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("MongoDB change stream failed: {0}")]
    Mongo(#[source] mongodb::error::Error),
    #[error(
        "change stream history lost for pipeline {pipeline}: the checkpoint's resume point is no \
         longer in MongoDB's oplog (code 286), so changes were missed. Recover with \
         `bowmark-cdc backfill --pipeline {file}` (it re-snapshots the collections and stores a \
         fresh checkpoint), then start the capture again"
    )]
    HistoryLost {
        pipeline: String,
        file: String,
        #[source]
        source: mongodb::error::Error,
    },
    #[error(
        "change stream of pipeline {pipeline} stopped at {reason}: the watched data changed \
         outside the change stream, so the mirror would diverge from MongoDB. The capture cannot \
         continue past it and published nothing after it (the checkpoint stays before it). \
         Check the database, then run `bowmark-cdc backfill --pipeline {file} --restart \
         --allow-deletes` (it re-snapshots the collections and stores a checkpoint after it) \
         and start the capture again; with history_lost = \"backfill\" in {file} the capture \
         re-snapshots by itself"
    )]
    Invalidated {
        pipeline: String,
        file: String,
        reason: StopReason,
    },
    #[error(
        "the re-snapshot of pipeline {pipeline} after {cause} (history_lost = \"backfill\") \
         failed; run `bowmark-cdc backfill --pipeline {file} --restart` by hand, then start the \
         capture again"
    )]
    Resnapshot {
        pipeline: String,
        file: String,
        cause: crate::capture::ResnapshotCause,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("stored checkpoint of pipeline {pipeline} is not a resume token: {message}")]
    BadCheckpoint { pipeline: String, message: String },
    #[error("publishing to RabbitMQ failed: {0}")]
    Publish(#[from] PublishError),
    #[error("RabbitMQ channel or connection closed")]
    BrokerClosed,
    #[error("writing the checkpoint to PostgreSQL failed: {0}")]
    Checkpoint(#[source] tokio_postgres::Error),
    #[error("capture lock: {0}")]
    Leader(#[from] LeaderError),
    #[error("the capture lock session to PostgreSQL was lost; stopped tailing")]
    LeaseLost,
    #[error("the change stream ended without an error")]
    StreamEnded,
    #[error("{0}; the capture stops rather than skip it")]
    Malformed(#[from] Malformed),
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// An error that retrying does not heal (a login refused, a resume token rejected), met
    /// [`GIVE_UP_AFTER`] times in a row.
    #[error(
        "capture of pipeline {pipeline} stopped after {attempts} attempts in a row failed the \
         same way ({error_type}), which retrying does not heal: {advice}. Last error: {source}"
    )]
    GaveUp {
        pipeline: String,
        attempts: u32,
        error_type: &'static str,
        advice: String,
        #[source]
        source: Box<CaptureError>,
    },
}

/// How many attempts in a row may fail with an error retrying does not heal
/// ([`CaptureError::unhealing`]) before the capture stops.
pub const GIVE_UP_AFTER: u32 = 5;

impl CaptureError {
    /// The reviewed classification of every error.
    pub fn class(&self) -> ErrorClass {
        match self {
            CaptureError::Mongo(_)
            | CaptureError::Publish(_)
            | CaptureError::BrokerClosed
            | CaptureError::Checkpoint(_)
            | CaptureError::Leader(_)
            | CaptureError::LeaseLost
            | CaptureError::StreamEnded => ErrorClass::Transient,
            CaptureError::Malformed(_) => ErrorClass::Poison,
            CaptureError::HistoryLost { .. }
            | CaptureError::Invalidated { .. }
            | CaptureError::Resnapshot { .. }
            | CaptureError::BadCheckpoint { .. }
            | CaptureError::Config(_)
            | CaptureError::GaveUp { .. } => ErrorClass::Fatal,
        }
    }

    /// The bounded `error_type` metric label.
    /// (Every value is in `metrics::CAPTURE_ERROR_TYPES`, whose counters start at 0.)
    pub fn error_type(&self) -> &'static str {
        match self {
            CaptureError::Mongo(e) => mongo_error_type(e),
            CaptureError::StreamEnded => "mongo",
            CaptureError::HistoryLost { .. } => "history_lost",
            CaptureError::Invalidated { .. } => "invalidated",
            CaptureError::Resnapshot { .. } => "backfill",
            CaptureError::Config(_) => "config",
            CaptureError::BadCheckpoint { .. } => "bad_checkpoint",
            CaptureError::Publish(PublishError::Nacked { .. }) => "nack",
            CaptureError::Publish(PublishError::Returned { .. }) => "returned",
            CaptureError::Publish(_) | CaptureError::BrokerClosed => "broker",
            CaptureError::Checkpoint(_) | CaptureError::Leader(_) => "postgres",
            CaptureError::LeaseLost => "lease_lost",
            CaptureError::Malformed(_) => "malformed",
            CaptureError::GaveUp { error_type, .. } => error_type,
        }
    }

    /// What to do about an error that retrying does not heal (a login or a permission MongoDB
    /// refuses, a resume token it rejects); `None` for an error a retry may heal. `file` is
    /// the pipeline file, `database` the watched MongoDB database.
    pub fn unhealing(&self, file: &str, database: &str) -> Option<String> {
        match self.error_type() {
            "mongo_auth" => Some(format!(
                "MongoDB refuses the capture's login or its change stream (authentication failed \
                 or not authorized). Check the user and password in the MongoDB connection \
                 string (MONGO_URI) and that the user may run a change stream on database \
                 {database} (the `changeStream` and `find` actions, e.g. the `read` role), then \
                 start the daemon again"
            )),
            "resume_rejected" => Some(format!(
                "MongoDB rejects the checkpoint's resume token (ChangeStreamFatalError, code \
                 280): the capture cannot continue from it. Run `bowmark-cdc backfill --pipeline \
                 {file} --restart` (it re-snapshots the collections and stores a fresh \
                 checkpoint), then start the daemon again"
            )),
            _ => None,
        }
    }
}

/// The server error code of a MongoDB error, if it is a command error.
pub(crate) fn mongo_code(err: &mongodb::error::Error) -> Option<i32> {
    match err.kind.as_ref() {
        mongodb::error::ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

/// The class of a MongoDB error, for the metric label: the ones a capture can loop on without
/// healing (a login refused, a resume token the server rejects, an event over 16 MiB) apart
/// from the rest (network, elections, timeouts).
fn mongo_error_type(err: &mongodb::error::Error) -> &'static str {
    if matches!(
        err.kind.as_ref(),
        mongodb::error::ErrorKind::Authentication { .. }
    ) {
        return "mongo_auth";
    }
    match mongo_code(err) {
        Some(AUTHENTICATION_FAILED | UNAUTHORIZED) => "mongo_auth",
        Some(CHANGE_STREAM_FATAL) => "resume_rejected",
        Some(BSON_OBJECT_TOO_LARGE) => "event_too_large",
        _ => "mongo",
    }
}

const UNAUTHORIZED: i32 = 13;
const AUTHENTICATION_FAILED: i32 = 18;
/// ChangeStreamFatalError: the resume token is not (or no longer) acceptable.
const CHANGE_STREAM_FATAL: i32 = 280;
/// BSONObjectTooLarge: a change event over the 16 MiB document limit.
const BSON_OBJECT_TOO_LARGE: i32 = 10334;

/// ChangeStreamHistoryLost.
pub(crate) const HISTORY_LOST: i32 = 286;
