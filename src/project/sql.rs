//! The projection's SQL, kept in `sql/*.sql` and split into statements at first use.
//!
//! A file holds statements each introduced by a line `-- @stmt LABEL`, where LABEL is the star
//! table the statement writes (`-` for bookkeeping). `{{ctx ENTITY FIELD}}` expands to the
//! daily-report child context shared by every fact statement.

use std::sync::LazyLock;

/// One statement of the projection.
#[derive(Debug)]
pub(crate) struct Stmt {
    pub label: &'static str,
    pub sql: String,
}

const MIRROR: &str = include_str!("sql/mirror.sql");
const AFFECTED: &str = include_str!("sql/affected.sql");
const DIMS: &str = include_str!("sql/dims.sql");
const REPORTS: &str = include_str!("sql/reports.sql");
const FACTS_WORK: &str = include_str!("sql/facts_work.sql");
const FACTS_SHIPMENT: &str = include_str!("sql/facts_shipment.sql");
const FACTS_INVOICE: &str = include_str!("sql/facts_invoice.sql");

/// The mirror upsert (one statement).
pub(crate) static MIRROR_UPSERT: LazyLock<Stmt> = LazyLock::new(|| {
    split(MIRROR)
        .into_iter()
        .next()
        .expect("sql/mirror.sql holds one statement")
});

/// The affected-set closure, in order.
pub(crate) static AFFECTED_STEPS: LazyLock<Vec<Stmt>> = LazyLock::new(|| split(AFFECTED));

/// The derivation, in dependency order: dimensions, reports and jobsite materials, facts.
pub(crate) static DERIVE_STEPS: LazyLock<Vec<Stmt>> = LazyLock::new(|| {
    [DIMS, REPORTS, FACTS_WORK, FACTS_SHIPMENT, FACTS_INVOICE]
        .into_iter()
        .flat_map(split)
        .collect()
});

/// Per-transaction scratch tables (created once per session, emptied at commit).
pub(crate) const SCRATCH: &str = "
CREATE TEMP TABLE IF NOT EXISTS cdc_changed (
    entity text NOT NULL, key text NOT NULL, old_doc jsonb, PRIMARY KEY (entity, key)
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS cdc_affected (
    entity text NOT NULL, key text NOT NULL, PRIMARY KEY (entity, key)
) ON COMMIT DELETE ROWS;
DELETE FROM pg_temp.cdc_changed;
DELETE FROM pg_temp.cdc_affected;
";

/// Every mirror key is affected: the input of `reproject_all`.
pub(crate) const AFFECT_ALL: &str =
    "INSERT INTO pg_temp.cdc_affected (entity, key) SELECT entity, key FROM cdc.source_doc";

fn split(file: &'static str) -> Vec<Stmt> {
    let mut out = Vec::new();
    let mut rest = file;
    while let Some(at) = rest.find("-- @stmt ") {
        let body = &rest[at + "-- @stmt ".len()..];
        let eol = body.find('\n').unwrap_or(body.len());
        let label = body[..eol].trim();
        let body = &body[eol..];
        let end = body.find("-- @stmt ").unwrap_or(body.len());
        out.push(Stmt {
            label,
            sql: expand(&body[..end]),
        });
        rest = &body[end..];
    }
    out
}

fn expand(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(at) = rest.find("{{ctx ") {
        out.push_str(&rest[..at]);
        let tail = &rest[at + "{{ctx ".len()..];
        let end = tail
            .find("}}")
            .expect("unterminated {{ctx}} in projection SQL");
        let mut args = tail[..end].split_whitespace();
        let (entity, field) = (args.next().unwrap_or(""), args.next().unwrap_or(""));
        out.push_str(&child_ctx(entity, field));
        rest = &tail[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Each affected live child of ENTITY with its parent report (the lowest-key live report
/// whose FIELD array lists it) when that report is derivable (its jobsite and crew are live).
fn child_ctx(entity: &str, field: &str) -> String {
    format!(
        "
    SELECT w.key, w.doc, p.key AS report_key, r.doc AS rdoc, cdc.ts(r.doc -> 'date') AS rts,
           dr.id AS daily_report_id, dr.jobsite_id, dr.crew_id, dr.report_date AS work_date,
           COALESCE(NULLIF(c.type, ''), 'Unknown') AS crew_type
    FROM pg_temp.cdc_affected a
    JOIN cdc.source_doc w ON w.entity = a.entity AND w.key = a.key
    CROSS JOIN LATERAL (
        SELECT r0.key FROM cdc.source_doc r0
        WHERE r0.entity = 'daily_report' AND r0.doc -> '{field}' @> cdc.oid_probe(w.key)
        ORDER BY r0.key LIMIT 1
    ) p
    JOIN cdc.source_doc r ON r.entity = 'daily_report' AND r.key = p.key
    JOIN dim_daily_report dr ON dr.mongo_id = p.key
    JOIN dim_crew c ON c.id = dr.crew_id
    WHERE a.entity = '{entity}' AND NOT w.deleted AND w.doc IS NOT NULL
      AND cdc.ts(r.doc -> 'date') IS NOT NULL
      AND cdc.is_live('jobsite', cdc.oid(r.doc -> 'jobsite'))
      AND cdc.is_live('crew', cdc.oid(r.doc -> 'crew'))
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_splits_into_labelled_expanded_statements() {
        assert!(MIRROR_UPSERT.sql.contains("INSERT INTO cdc.source_doc"));
        assert_eq!(AFFECTED_STEPS.len(), 9);
        assert!(DERIVE_STEPS.len() >= 20);
        for s in AFFECTED_STEPS.iter().chain(DERIVE_STEPS.iter()) {
            assert!(!s.label.is_empty());
            assert!(!s.sql.contains("{{"), "unexpanded template in {}", s.label);
            assert!(!s.sql.contains("@stmt"));
        }
    }
}
