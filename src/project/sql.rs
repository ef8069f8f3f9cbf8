//! The projection's SQL around the plan (`super::plan`): locks, scratch tables, the quarantine
//! and adjustment queries, and the templates of the plan's statements.
//!
//! Templates shared by several statements expand in place:
//! - `{{ctx ENTITY}}`: the daily-report child context query (`sql/ctx.sql` stores it in
//!   `pg_temp.cdc_ctx` once per apply for every fact statement);
//! - `{{archive TABLE ENTITY FIELD}}`: archive the TABLE rows of affected children that were
//!   not derived by this apply;
//! - `{{rates ENTITY}}`: rewrite `dim_ENTITY_rate` from the document's `rates[]`;
//! - `{{archive_dim TABLE ENTITY}}`: soft-archive the TABLE rows of deleted documents;
//! - `{{work_dims ENTITY ALIAS}}`: the CTEs ALIAS (the live dim rows the work items in CTE `x`
//!   reference) and `r` (their rate periods);
//! - `{{derived TABLE ENTITY}}`: the TABLE rows this apply derived for affected ENTITY keys;
//! - `{{report_children}}`: the children entities with their report arrays, as `f(child, field)`;
//! - `{{child_entities}}`: the children entities, for `IN`;
//! - `{{drop_rates ENTITY}}`: the rate rows of deleted ENTITY documents;
//! - `{{placeholder TABLE COLUMN}}`: placeholder rows of TABLE for the missing ids in column
//!   COLUMN of CTE `refs`;
//! - `{{fit TABLE COLUMN KEY EXPR}}`: the text EXPR cut to TABLE.COLUMN's width (the cut noted
//!   with the document KEY), so that no text value rejects its row.

use std::sync::LazyLock;

use crate::model;

/// Key of the transaction-scoped advisory lock that serializes projections on one database
/// ([`crate::locks`]).
pub const PROJECT_LOCK_KEY: i64 = crate::locks::PROJECT;

/// The projection lock, taken first in every projection transaction: derivations read across
/// documents, so two concurrent projections (the streaming projector and a backfill) could
/// each miss the other's uncommitted changes and leave a stale row. Streaming takes it
/// exclusive; backfill chunks take it shared, because a backfill runs side by side only
/// collections whose derivations are independent (the daily-report children).
pub(crate) const LOCK_EXCLUSIVE: &str = "SELECT pg_advisory_xact_lock(7093019249801849602)";
pub(crate) const LOCK_SHARED: &str = "SELECT pg_advisory_xact_lock_shared(7093019249801849602)";

/// Per-transaction scratch tables (created once per session, emptied at commit).
///
/// JIT is off for the projection's transaction: the statements are planned against row
/// estimates of whole collections, so their costs cross `jit_above_cost` (and the inlining /
/// optimization thresholds) even when the affected set is a few rows, and compiling them cost
/// up to ~0.9 s per statement, far more than executing them.
pub(crate) const SCRATCH: &str = "
SET LOCAL jit = off;
CREATE TEMP TABLE IF NOT EXISTS cdc_changed (
    entity text NOT NULL, key text NOT NULL, old_doc jsonb, doc jsonb, PRIMARY KEY (entity, key)
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS cdc_affected (
    entity text NOT NULL, key text NOT NULL, PRIMARY KEY (entity, key)
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS cdc_ctx (
    entity text NOT NULL, key text NOT NULL, doc jsonb NOT NULL, report_key text NOT NULL,
    jobsite_key text NOT NULL, rts timestamptz NOT NULL, daily_report_id uuid NOT NULL,
    jobsite_id uuid NOT NULL, crew_id uuid NOT NULL, work_date date NOT NULL,
    crew_type text NOT NULL
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS cdc_adjusted (
    tbl text NOT NULL, col text NOT NULL, doc_key text, adjustment text NOT NULL,
    original_length int NOT NULL
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS cdc_width AS
    SELECT table_name::text AS tbl, column_name::text AS col, character_maximum_length::int AS w
    FROM information_schema.columns
    WHERE character_maximum_length IS NOT NULL
      -- the table the projection's unqualified names resolve to (the search path's)
      AND to_regclass(quote_ident(table_name))
          = to_regclass(quote_ident(table_schema) || '.' || quote_ident(table_name));
CREATE TEMP TABLE IF NOT EXISTS cdc_quarantined (
    entity text NOT NULL, key text NOT NULL, reason text NOT NULL, PRIMARY KEY (entity, key)
) ON COMMIT DELETE ROWS;
DELETE FROM pg_temp.cdc_changed;
DELETE FROM pg_temp.cdc_quarantined;
DELETE FROM pg_temp.cdc_affected;
DELETE FROM pg_temp.cdc_ctx;
DELETE FROM pg_temp.cdc_adjusted;
";

/// The quarantine after an apply: documents that derived (affected, not quarantined now) leave
/// it; the documents this apply quarantined enter it (or have their version and reason
/// updated, keeping when they were first seen). Returns how many entries changed.
pub(crate) const QUARANTINE_SYNC: &str = "
WITH gone AS (
    DELETE FROM cdc.quarantine q
    USING pg_temp.cdc_affected a
    WHERE q.entity = a.entity AND q.key = a.key
      AND NOT EXISTS (SELECT 1 FROM pg_temp.cdc_quarantined x
                      WHERE x.entity = q.entity AND x.key = q.key)
    RETURNING 1
), came AS (
    INSERT INTO cdc.quarantine AS q (entity, key, ct_t, ct_i, ordinal, reason)
    SELECT x.entity, x.key, s.ct_t, s.ct_i, s.ordinal, x.reason
    FROM pg_temp.cdc_quarantined x
    JOIN cdc.source_doc s ON s.entity = x.entity AND s.key = x.key
    ON CONFLICT (entity, key) DO UPDATE SET
        ct_t = EXCLUDED.ct_t, ct_i = EXCLUDED.ct_i, ordinal = EXCLUDED.ordinal,
        reason = EXCLUDED.reason, last_seen = now()
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone) + (SELECT count(*) FROM came)";

/// Quarantined documents by entity.
pub(crate) const QUARANTINE_COUNTS: &str =
    "SELECT entity, count(*) FROM cdc.quarantine GROUP BY entity";

/// The text values this apply cut to their column's width (`cdc.fit_slow`), one row per
/// document and column.
pub(crate) const ADJUSTED: &str = "SELECT tbl, col, adjustment, doc_key, max(original_length)
    FROM pg_temp.cdc_adjusted GROUP BY tbl, col, adjustment, doc_key ORDER BY 1, 2, 4";

/// The entities with affected keys, with how many each.
pub(crate) const AFFECTED_ENTITIES: &str =
    "SELECT entity, count(*) FROM pg_temp.cdc_affected GROUP BY entity";

/// Every mirror key is affected: the input of `reproject_all`.
pub(crate) const AFFECT_ALL: &str =
    "INSERT INTO pg_temp.cdc_affected (entity, key) SELECT entity, key FROM cdc.source_doc";

pub(super) fn expand(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(at) = rest.find("{{") {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 2..];
        let end = tail
            .find("}}")
            .expect("unterminated {{…}} in projection SQL");
        let args: Vec<&str> = tail[..end].split_whitespace().collect();
        out.push_str(&match args.as_slice() {
            ["ctx", entity] => child_ctx(entity),
            ["report_children"] => report_children(),
            ["child_entities"] => child_entities(),
            ["archive", table, entity, field] => archive_children(table, entity, field),
            ["rates", entity] => rates(entity),
            ["archive_dim", table, entity] => archive_dim(table, entity),
            ["work_dims", entity, alias] => work_dims(entity, alias),
            ["derived", table, entity] => derived(table, entity),
            ["fit", table, column, key, expr @ ..] => fit(table, column, key, &expr.join(" ")),
            ["placeholder", table, column] => placeholder(table, column),
            ["drop_rates", entity] => drop_rates(entity),
            other => panic!("unknown template {other:?} in projection SQL"),
        });
        rest = &tail[end + 2..];
    }
    out.push_str(rest);
    out
}

/// The placeholder row of each dimension a reference may miss: its columns and their values
/// (beside `mongo_id`, the missing id, and `synced_at`).
const PLACEHOLDERS: [(&str, &str, &str); 6] = [
    ("dim_jobsite", "name, active", "'(missing jobsite)', false"),
    ("dim_crew", "name, type", "'(missing crew)', 'Unknown'"),
    ("dim_employee", "name", "'(missing employee)'"),
    (
        "dim_vehicle",
        "name, vehicle_code, vehicle_type",
        "'(missing vehicle)', 'noCode', 'Unknown'",
    ),
    ("dim_material", "name", "'(missing material)'"),
    ("dim_company", "name", "'(missing company)'"),
];

/// The name every placeholder row's name starts with.
pub const PLACEHOLDER_NAME_PREFIX: &str = "(missing ";

/// A `RETURNING 1` data-modifying CTE body: a TABLE placeholder row for every id in column
/// COLUMN of CTE `refs` that has no row yet (its document is gone or never existed). The
/// document, when it appears, overwrites the row in place. Only ObjectId-shaped ids: anything
/// else is no reference.
fn placeholder(table: &str, column: &str) -> String {
    let (_, cols, vals) = PLACEHOLDERS
        .iter()
        .find(|(t, _, _)| *t == table)
        .unwrap_or_else(|| panic!("no placeholder row for {table}"));
    format!(
        "INSERT INTO {table} (mongo_id, {cols}, synced_at)
    SELECT DISTINCT r.{column}, {vals}, $2 FROM refs r
    WHERE r.{column} ~ '^[0-9a-f]{{24}}$'
    ON CONFLICT (mongo_id) DO NOTHING
    RETURNING 1"
    )
}

/// EXPR (text) cut to the width of TABLE.COLUMN, as PostgreSQL's information schema gives it
/// (`pg_temp.cdc_width`, read once per session), so that a long value never rejects its row.
/// A value that fits costs a comparison; a cut one calls `cdc.fit_slow`, which notes the cut
/// (table, column, the document KEY, the original length) for [`ADJUSTED`].
fn fit(table: &str, column: &str, key: &str, expr: &str) -> String {
    let width = format!(
        "COALESCE((SELECT fw.w FROM pg_temp.cdc_width fw WHERE fw.tbl = '{table}' AND fw.col = '{column}'), 2147483647)"
    );
    format!(
        "(CASE WHEN COALESCE(length({expr}), 0) <= {width} THEN ({expr}) \
         ELSE cdc.fit_slow({expr}, {width}, '{table}', '{column}', {key}) END)"
    )
}

/// The TABLE rows this apply derived for affected ENTITY keys, as `(entity, key, id)`: each
/// looked up by key (a plain join let the planner, misled by a table it last saw empty, scan
/// every row per affected key).
fn derived(table: &str, entity: &str) -> String {
    format!(
        "SELECT a.entity, a.key, t0.id
    FROM pg_temp.cdc_affected a
    CROSS JOIN LATERAL (SELECT t1.id FROM {table} t1
                        WHERE t1.mongo_id = a.key AND t1.synced_at = $2 OFFSET 0) t0
    WHERE a.entity = '{entity}'"
    )
}

/// Two CTEs for the work items of CTE `x` (with their dimension key as `dim_key`): ALIAS, each
/// referenced `dim_ENTITY` row once (the document's, or its placeholder or archived row when
/// the document is gone); and `r`, their rate periods (none when the document is gone):
/// each calendar date of the document's `rates[]` with its rate (of the rates dated that day,
/// the latest instant; equal instants, the one listed last) from that date until the next
/// one, as `(id, from_d, to_d, rate)` with `to_d` NULL for the current one. A work item's rate
/// is the period holding its work date (none before the first rate): one join instead of an
/// ordered lookup per row.
fn work_dims(entity: &str, alias: &str) -> String {
    format!(
        "{alias} AS MATERIALIZED (
    SELECT d0.id, d0.mongo_id FROM dim_{entity} d0
    WHERE d0.mongo_id IN (SELECT DISTINCT dim_key FROM x)
), r AS MATERIALIZED (
    SELECT p.id, p.from_d, p.rate,
           lead(p.from_d) OVER (PARTITION BY p.id ORDER BY p.from_d) AS to_d
    FROM (SELECT DISTINCT ON ({alias}.id, q.d) {alias}.id, q.d AS from_d, q.rate
          FROM {alias}
          CROSS JOIN LATERAL (SELECT s0.doc FROM cdc.source_doc s0
                              WHERE s0.entity = '{entity}' AND s0.key = {alias}.mongo_id OFFSET 0) s
          CROSS JOIN LATERAL jsonb_array_elements(cdc.arr(s.doc -> 'rates')) WITH ORDINALITY AS re(v, n)
          CROSS JOIN LATERAL (SELECT cdc.ts(re.v -> 'date') AS ts, cdc.num(re.v -> 'rate') AS rate
                              OFFSET 0) q0
          CROSS JOIN LATERAL (SELECT cdc.day(q0.ts, $1) AS d, q0.rate) q
          WHERE q0.ts IS NOT NULL AND q0.rate IS NOT NULL
          ORDER BY {alias}.id, q.d, q0.ts DESC, re.n DESC) p
)"
    )
}

/// `(VALUES …) AS f(child, field)`: the report children and their arrays (from the entity
/// catalog), as a relation.
fn report_children() -> String {
    let rows: Vec<String> = model::report_children()
        .map(|(e, f)| format!("('{e}', '{f}')"))
        .collect();
    format!("(VALUES {}) AS f(child, field)", rows.join(", "))
}

/// `('employee_work', …)`: the report children's entities, for `IN`.
fn child_entities() -> String {
    let names: Vec<String> = model::report_children()
        .map(|(e, _)| format!("'{e}'"))
        .collect();
    format!("({})", names.join(", "))
}

/// Whether the mirror holds any daily-report child (none before a first load reaches them).
pub(crate) static ANY_CHILD: LazyLock<String> = LazyLock::new(|| {
    expand("SELECT EXISTS (SELECT 1 FROM cdc.source_doc WHERE entity IN {{child_entities}})")
});

/// The TABLE rows of affected ENTITY children that this apply did not stamp (not derivable any
/// more), archived at the wall time of the event that deleted or detached them (the report
/// listed them in FIELD).
fn archive_children(table: &str, entity: &str, field: &str) -> String {
    format!(
        "
UPDATE {table} t
SET archived_at = cdc.detach_time('{entity}', t.mongo_id, '{field}', dr.mongo_id),
    synced_at = now()
FROM pg_temp.cdc_affected a, dim_daily_report dr
WHERE a.entity = '{entity}' AND t.mongo_id = a.key AND dr.id = t.daily_report_id
  AND t.synced_at IS DISTINCT FROM $2 AND t.archived_at IS NULL
"
    )
}

/// `dim_ENTITY_rate` mirrors the `rates[]` of every ENTITY row this apply derived (README difference 6).
fn rates(entity: &str) -> String {
    let derived = derived(&format!("dim_{entity}"), entity);
    format!(
        "
WITH t AS MATERIALIZED (
    {derived}
), gone AS (
    DELETE FROM dim_{entity}_rate r
    USING t
    WHERE r.{entity}_id = t.id
)
INSERT INTO dim_{entity}_rate ({entity}_id, mongo_id, rate, effective_date, synced_at)
SELECT t.id, NULL, cdc.num(e.v -> 'rate'), cdc.day(cdc.ts(e.v -> 'date'), $1), $2
FROM t
CROSS JOIN LATERAL (SELECT s0.* FROM cdc.source_doc s0 WHERE s0.entity = t.entity AND s0.key = t.key OFFSET 0) s
CROSS JOIN LATERAL jsonb_array_elements(cdc.arr(s.doc -> 'rates')) AS e(v)
WHERE cdc.num(e.v -> 'rate') IS NOT NULL AND cdc.ts(e.v -> 'date') IS NOT NULL
"
    )
}

/// The `dim_ENTITY_rate` rows of deleted ENTITY documents (a `RETURNING 1` data-modifying CTE
/// body): the rates mirror the document's `rates[]`, and it has none any more.
fn drop_rates(entity: &str) -> String {
    format!(
        "DELETE FROM dim_{entity}_rate r
    USING pg_temp.cdc_affected a, cdc.source_doc s, dim_{entity} t
    WHERE a.entity = '{entity}' AND s.entity = a.entity AND s.key = a.key AND s.deleted
      AND t.mongo_id = a.key AND r.{entity}_id = t.id
    RETURNING 1"
    )
}

/// The TABLE rows of deleted ENTITY documents, archived at the deleting event's wall time
/// (a `RETURNING 1` data-modifying CTE body).
fn archive_dim(table: &str, entity: &str) -> String {
    format!(
        "
    UPDATE {table} t SET archived_at = s.deleted_at, synced_at = now()
    FROM pg_temp.cdc_affected a CROSS JOIN LATERAL (SELECT s0.* FROM cdc.source_doc s0 WHERE s0.entity = a.entity AND s0.key = a.key OFFSET 0) s
    WHERE a.entity = '{entity}' AND s.deleted AND t.mongo_id = a.key AND t.archived_at IS NULL
    RETURNING 1
"
    )
}

/// Each affected live child of ENTITY with its parent report (the lowest-key live report
/// whose array lists it, from `cdc.report_child`) when that report is derivable (it has its
/// `dim_daily_report` row): the rows of `pg_temp.cdc_ctx`. A report's context is looked up once
/// for all of its children.
fn child_ctx(entity: &str) -> String {
    format!(
        "
    WITH kids AS MATERIALIZED (
        SELECT a.entity, a.key, COALESCE(c.doc, w.doc) AS doc, p.key AS report_key
        FROM pg_temp.cdc_affected a
        -- A changed child's state is in cdc_changed; the others' are looked up. A lateral
        -- OFFSET 0 subquery drives every lookup from the affected keys: as a plain join the
        -- planner (with stale or missing statistics on the mirror) could hash-join the whole
        -- collection.
        LEFT JOIN pg_temp.cdc_changed c ON c.entity = a.entity AND c.key = a.key
        LEFT JOIN LATERAL (
            SELECT w0.doc FROM cdc.source_doc w0
            WHERE c.key IS NULL AND w0.entity = a.entity AND w0.key = a.key AND NOT w0.deleted
            OFFSET 0) w ON true
        CROSS JOIN LATERAL (
            SELECT min(rc.report_key) AS key FROM cdc.report_child rc
            WHERE rc.entity = '{entity}' AND rc.child_key = a.key
        ) p
        WHERE a.entity = '{entity}' AND COALESCE(c.doc, w.doc) IS NOT NULL AND p.key IS NOT NULL
    ), reports AS MATERIALIZED (
        SELECT k.report_key, cdc.oid(r.doc -> 'jobsite') AS jobsite_key, r.rts,
               dr.id AS daily_report_id, dr.jobsite_id, dr.crew_id, dr.report_date AS work_date,
               COALESCE(NULLIF(c.type, ''), 'Unknown') AS crew_type
        FROM (SELECT DISTINCT report_key FROM kids) k
        CROSS JOIN LATERAL (
            SELECT r0.doc, cdc.ts(r0.doc -> 'date') AS rts FROM cdc.source_doc r0
            WHERE r0.entity = 'daily_report' AND r0.key = k.report_key OFFSET 0) r
        -- Looked up per report: a join scanned every report's row for each chunk.
        CROSS JOIN LATERAL (
            SELECT dr0.id, dr0.jobsite_id, dr0.crew_id, dr0.report_date FROM dim_daily_report dr0
            WHERE dr0.mongo_id = k.report_key OFFSET 0) dr
        JOIN dim_crew c ON c.id = dr.crew_id
        WHERE r.rts IS NOT NULL
    )
    SELECT k.entity, k.key, k.doc, k.report_key, r.jobsite_key, r.rts, r.daily_report_id,
           r.jobsite_id, r.crew_id, r.work_date, r.crew_type
    FROM kids k JOIN reports r ON r.report_key = k.report_key
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_statements_take_the_projection_lock() {
        assert!(LOCK_EXCLUSIVE.contains(&format!("pg_advisory_xact_lock({PROJECT_LOCK_KEY})")));
        assert!(LOCK_SHARED.contains(&format!("_lock_shared({PROJECT_LOCK_KEY})")));
    }
}
