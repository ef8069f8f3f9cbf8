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
    /// Its message names the SQLSTATE, table, column and constraint, never row values
    /// (PostgreSQL's DETAIL, "Failing row contains (…)", is left out).
    #[error("projection step {step} failed: {}", describe_pg(error))]
    Postgres {
        step: &'static str,
        error: tokio_postgres::Error,
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
        move |error| ProjectError::Postgres { step, error }
    }

    /// The one reviewed classification of projector failures.
    pub fn class(&self) -> ErrorClass {
        match self {
            ProjectError::InvalidDoc { .. } => ErrorClass::Poison,
            ProjectError::Postgres { error, .. } => classify_pg(error),
        }
    }
}

/// A PostgreSQL error without row values: the SQLSTATE, the message with quoted values
/// redacted (identifiers of the table, column, constraint and schema are kept), and where
/// PostgreSQL names them, the table, column and constraint. Not the DETAIL or the hint.
pub fn describe_pg(e: &tokio_postgres::Error) -> String {
    let Some(db) = e.as_db_error() else {
        // No server error: an I/O or protocol failure, which carries no row values.
        return match std::error::Error::source(e) {
            Some(inner) => format!("{e}: {inner}"),
            None => e.to_string(),
        };
    };
    let names: Vec<&str> = [
        db.schema(),
        db.table(),
        db.column(),
        db.constraint(),
        db.datatype(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut out = format!(
        "SQLSTATE {}: {}",
        db.code().code(),
        redact(db.message(), &names)
    );
    for (what, v) in [
        ("table", db.table()),
        ("column", db.column()),
        ("constraint", db.constraint()),
    ] {
        if let Some(v) = v {
            out.push_str(&format!("; {what} {v}"));
        }
    }
    out
}

/// `message` with every double-quoted part that is not one of `names` replaced by `"…"`, and
/// anything after `: ` in an input-syntax message (PostgreSQL quotes the value there).
fn redact(message: &str, names: &[&str]) -> String {
    let mut out = String::with_capacity(message.len());
    let mut parts = message.split('"');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    let mut quoted = true;
    for part in parts {
        if quoted {
            out.push('"');
            out.push_str(if names.contains(&part) { part } else { "…" });
            out.push('"');
        } else {
            out.push_str(part);
        }
        quoted = !quoted;
    }
    out
}

/// The one classification of PostgreSQL errors: connection loss, serialization failures,
/// deadlocks, lock timeouts, cancels and classes 08/53/57 are transient; data and constraint
/// errors (classes 22, 23) are poison; anything else is fatal.
pub fn classify_pg(e: &tokio_postgres::Error) -> ErrorClass {
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
    fn quoted_values_are_redacted_and_identifiers_kept() {
        assert_eq!(
            redact(r#"invalid input syntax for type numeric: "12 tonnes""#, &[]),
            r#"invalid input syntax for type numeric: "…""#
        );
        assert_eq!(
            redact(
                r#"null value in column "job_title" of relation "fact_employee_work" violates not-null constraint"#,
                &["fact_employee_work", "job_title"]
            ),
            r#"null value in column "job_title" of relation "fact_employee_work" violates not-null constraint"#
        );
        assert_eq!(
            redact("value too long for type character varying(255)", &[]),
            "value too long for type character varying(255)"
        );
    }

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
