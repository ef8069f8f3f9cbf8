//! The projector's one error type and its classification (retry, dead-letter or stop).

use tokio_postgres::error::SqlState;

/// What to do with a batch that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Retry the same batch (connection loss, serialization failure, deadlock).
    Transient,
    /// The data can never apply: dead-letter the message(s) and keep going.
    Poison,
    /// A bug or a broken database: stop with an explained error.
    Fatal,
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    /// A statement of the projection failed; `step` names it (mirror, affected, a star table).
    #[error("projection step {step} failed")]
    Postgres {
        step: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A document key or version that PostgreSQL cannot hold.
    #[error("document {entity}:{key} cannot be stored: {reason}")]
    InvalidDoc {
        entity: &'static str,
        key: String,
        reason: &'static str,
    },
}

impl ProjectError {
    pub(crate) fn pg(step: &'static str) -> impl FnOnce(tokio_postgres::Error) -> ProjectError {
        move |source| ProjectError::Postgres { step, source }
    }

    /// The one reviewed classification of projector failures.
    pub fn class(&self) -> ErrorClass {
        match self {
            ProjectError::InvalidDoc { .. } => ErrorClass::Poison,
            ProjectError::Postgres { source, .. } => classify_pg(source),
        }
    }
}

fn classify_pg(e: &tokio_postgres::Error) -> ErrorClass {
    if e.is_closed() {
        return ErrorClass::Transient;
    }
    let Some(code) = e.code() else {
        // No SQLSTATE: an I/O or protocol error on the connection.
        return ErrorClass::Transient;
    };
    if *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::QUERY_CANCELED
    {
        return ErrorClass::Transient;
    }
    match &code.code()[..2] {
        // connection exception, insufficient resources, operator intervention (shutdown)
        "08" | "53" | "57" => ErrorClass::Transient,
        // data exception, integrity constraint violation
        "22" | "23" => ErrorClass::Poison,
        _ => ErrorClass::Fatal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_documents_are_poison() {
        let e = ProjectError::InvalidDoc {
            entity: "invoice",
            key: "x".into(),
            reason: "bad",
        };
        assert_eq!(e.class(), ErrorClass::Poison);
    }
}
