//! Error causes as an operator needs them: the whole source chain on one line, with the
//! server's own message (`tokio_postgres::Error` displays as just `db error`; its cause is the
//! server's `DbError`), and which failures are a wrong login rather than an outage.

use std::error::Error;

use tokio_postgres::error::{DbError, SqlState};

/// The server's message of a PostgreSQL error: `FATAL: role "x" does not exist (SQLSTATE 28000)`.
/// Not its DETAIL, which can quote row values ("Failing row contains …"): logs never carry them.
pub(crate) fn db_message(db: &DbError) -> String {
    let mut s = format!(
        "{}: {} (SQLSTATE {})",
        db.severity(),
        db.message(),
        db.code().code()
    );
    if let Some(hint) = db.hint() {
        s.push_str("; hint: ");
        s.push_str(hint);
    }
    s
}

/// `e` and every source below it, `: `-separated, on one line. A link whose text the previous
/// one already ends with is skipped (many errors print their source too), and PostgreSQL's
/// bare `db error` is replaced by the server's message.
pub fn chain(e: &(dyn Error + 'static)) -> String {
    let mut out = String::new();
    let mut link: Option<&(dyn Error + 'static)> = Some(e);
    while let Some(err) = link {
        let text = match err.downcast_ref::<DbError>() {
            Some(db) => {
                if let Some(rest) = out.strip_suffix("db error") {
                    out.truncate(rest.trim_end_matches([':', ' ']).len());
                }
                db_message(db)
            }
            None => err.to_string(),
        };
        let text = text.replace('\n', "; ");
        if !text.is_empty() && !out.ends_with(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        link = err.source();
    }
    out
}

/// The first PostgreSQL server error in `e`'s source chain.
pub(crate) fn find_db_error<'a>(e: &'a (dyn Error + 'static)) -> Option<&'a DbError> {
    let mut link: Option<&(dyn Error + 'static)> = Some(e);
    while let Some(err) = link {
        if let Some(db) = err.downcast_ref::<DbError>() {
            return Some(db);
        }
        if let Some(pg) = err.downcast_ref::<tokio_postgres::Error>()
            && let Some(db) = pg.as_db_error()
        {
            return Some(db);
        }
        link = err.source();
    }
    None
}

/// A PostgreSQL login that no retry fixes: a wrong user or password (SQLSTATE class 28),
/// a database that does not exist (3D000). Anywhere in `e`'s source chain.
pub(crate) fn is_pg_login_error(e: &(dyn Error + 'static)) -> bool {
    find_db_error(e).is_some_and(|db| {
        let code = db.code();
        code.code().starts_with("28") || *code == SqlState::INVALID_CATALOG_NAME
    })
}

/// A RabbitMQ login that no retry fixes: `ACCESS_REFUSED` (wrong user or password, 403) or
/// `NOT_ALLOWED` (no such vhost or no permission on it, 530).
pub(crate) fn is_amqp_login_error(e: &lapin::Error) -> bool {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => matches!(amqp.get_id(), 403 | 530),
        lapin::ErrorKind::AuthProviderError(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chain_skips_a_source_the_outer_message_already_shows() {
        let e = Outer(std::io::Error::other("refused"));
        assert_eq!(chain(&e), "outer: refused");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("pool")]
    struct Pool(#[source] std::io::Error);

    #[test]
    fn chain_joins_sources_on_one_line() {
        let e = Pool(std::io::Error::other("a\nb"));
        assert_eq!(chain(&e), "pool: a; b");
    }
}
