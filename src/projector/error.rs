//! The projector stage's one error type and its classification (retry, dead-letter or stop).

use crate::project::{ErrorClass, ProjectError};

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    /// An AMQP operation failed (connection, channel, declare, consume, ack, publish).
    #[error("RabbitMQ {op} failed")]
    Broker {
        op: &'static str,
        #[source]
        source: lapin::Error,
    },
    /// The broker cancelled our consumer (queue deleted, node shutdown) or the channel closed.
    #[error("the consumer on queue {queue} ended")]
    ConsumerEnded { queue: String },
    /// The broker did not take a dead-lettered message (nack or returned).
    #[error("dead-letter queue {queue} refused message {message_id}: {detail}")]
    DeadLetterRefused {
        queue: String,
        message_id: String,
        detail: String,
    },
    /// No PostgreSQL connection could be taken from the pool.
    #[error("PostgreSQL connection pool")]
    Pool(#[source] deadpool_postgres::PoolError),
    /// A transaction statement (begin, savepoint, commit) failed. The message names the
    /// SQLSTATE, table, column and constraint, never row values.
    #[error("PostgreSQL {op} failed: {}", crate::project::describe_pg(error))]
    Postgres {
        op: &'static str,
        error: tokio_postgres::Error,
    },
    /// The projection itself failed.
    #[error(transparent)]
    Project(#[from] ProjectError),
}

impl ProjectorError {
    pub(crate) fn broker(op: &'static str) -> impl FnOnce(lapin::Error) -> ProjectorError {
        move |source| ProjectorError::Broker { op, source }
    }

    pub(crate) fn pg(op: &'static str) -> impl FnOnce(tokio_postgres::Error) -> ProjectorError {
        move |error| ProjectorError::Postgres { op, error }
    }

    /// The one reviewed classification of the stage's failures. Poison is decided per message
    /// (see `batch::decode` and the bisection in `apply`); at this level only the projection
    /// itself can say Poison.
    pub fn class(&self) -> ErrorClass {
        match self {
            ProjectorError::Broker { source, .. } => classify_amqp(source),
            ProjectorError::ConsumerEnded { .. } | ProjectorError::DeadLetterRefused { .. } => {
                ErrorClass::Transient
            }
            ProjectorError::Pool(_) => ErrorClass::Transient,
            ProjectorError::Postgres { error, .. } => classify_pg(error),
            ProjectorError::Project(e) => e.class(),
        }
    }

    /// A PostgreSQL statement or lock timeout (SQLSTATE 57014 `query_canceled`, from
    /// `statement_timeout` or a cancel; 55P03 `lock_not_available`, from `lock_timeout`):
    /// transient, but a batch that keeps meeting it is split, down to the one document.
    pub(crate) fn is_timeout(&self) -> bool {
        let error = match self {
            ProjectorError::Postgres { error, .. }
            | ProjectorError::Project(ProjectError::Postgres { error, .. }) => error,
            _ => return false,
        };
        error.code().is_some_and(|c| {
            *c == tokio_postgres::error::SqlState::QUERY_CANCELED
                || *c == tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE
        })
    }

    /// A bounded label for metrics and logs (every value is in
    /// `metrics::PROJECTOR_ERROR_TYPES`, whose counters start at 0).
    pub fn error_type(&self) -> &'static str {
        match self {
            ProjectorError::Broker { .. } => "broker",
            ProjectorError::ConsumerEnded { .. } => "consumer_ended",
            ProjectorError::DeadLetterRefused { .. } => "dead_letter_refused",
            ProjectorError::Pool(_) => "postgres_pool",
            ProjectorError::Postgres { .. } => "postgres",
            ProjectorError::Project(_) => "projection",
        }
    }
}

/// Broker failures are transient (the connection is rebuilt, the cause logged) except those no
/// retry can fix: inequivalent queue arguments (a queue declared by hand with other settings).
/// Access refused once running (a rotated password, a permission withdrawn) is retried like
/// PostgreSQL's login failures; at start the runtime stops on it with the server's message.
fn classify_amqp(e: &lapin::Error) -> ErrorClass {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => match amqp.get_id() {
            406 => ErrorClass::Fatal,
            _ => ErrorClass::Transient,
        },
        lapin::ErrorKind::InvalidProtocolVersion(_)
        | lapin::ErrorKind::NoDefaultRuntime
        | lapin::ErrorKind::AuthProviderError(_) => ErrorClass::Fatal,
        _ => ErrorClass::Transient,
    }
}

/// BEGIN, SAVEPOINT and COMMIT failures: the one classification of PostgreSQL errors
/// ([`crate::project::classify_pg`]), where a data error outside the projection (no document
/// to pin it to) means a broken database.
fn classify_pg(e: &tokio_postgres::Error) -> ErrorClass {
    match crate::project::classify_pg(e) {
        ErrorClass::Poison => ErrorClass::Fatal,
        c => c,
    }
}

/// An error and its sources on one line (logs and the dead-letter header): [`crate::cause::chain`].
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    crate::cause::chain(e)
}
