//! The plan run server-side: every statement after the mirror upsert (the report-child links,
//! the affected-set closure, the derivation) in one call of `cdc.run_plan` (migration
//! `V20261202150000`), which decides which run: a step none of whose source entities is present
//! or affected is skipped, and a cleanup whose upsert derived a row for every affected key.
//! One round trip instead of about forty: measured with
//! `cargo run --release --example plan_server_side` (docs/projection.md).
//!
//! The statements run in the caller's transaction and session, so the scratch tables, the
//! search path (verify's shadow tables) and the error classes are those of a statement sent on
//! its own. Only the isolation of rejected documents runs the derivation from the client, each
//! statement in a savepoint of its own ([`super::quarantine`]), under the same two rules.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use tokio_postgres::Transaction;
use tokio_postgres::types::{ToSql, Type};

use super::plan::{self, Kind, Step};
use super::{ApplyStats, Ctx, ProjectError};

/// The call's statement arrays, built once from the plan.
struct Args {
    steps: Vec<&'static Step>,
    stmts: Vec<&'static str>,
    selects: Vec<bool>,
    kinds: Vec<&'static str>,
    tables: Vec<Option<&'static str>>,
    sources: Vec<String>,
    targets: Vec<String>,
    /// Each statement's prepared-statement name: a hash of its text, so a changed plan (another
    /// release on the same session) never runs an old statement under a reused name.
    names: Vec<String>,
}

static ARGS: LazyLock<Args> = LazyLock::new(|| {
    let steps: Vec<&'static Step> = plan::MIRROR_STEPS
        .iter()
        .chain(plan::AFFECTED_STEPS.iter())
        .chain(plan::DERIVE_STEPS.iter())
        .collect();
    let kind = |s: &Step| match s.kind {
        Kind::Mirror | Kind::Closure { .. } => "pre",
        Kind::Upsert => "upsert",
        Kind::Cleanup => "cleanup",
        Kind::Placeholder | Kind::ArchiveDeleted | Kind::Context => "derive",
    };
    Args {
        stmts: steps.iter().map(|s| s.sql.as_str()).collect(),
        selects: steps.iter().map(|s| selects_count(&s.sql)).collect(),
        kinds: steps.iter().map(|s| kind(s)).collect(),
        tables: steps.iter().map(|s| s.table).collect(),
        sources: steps.iter().map(|s| s.sources.join(",")).collect(),
        targets: steps
            .iter()
            .map(|s| match &s.kind {
                Kind::Closure { to, .. } => to.join(","),
                _ => String::new(),
            })
            .collect(),
        names: steps.iter().map(|s| statement_name(&s.sql)).collect(),
        steps,
    }
});

/// `cdc_plan_<hash of the text>`.
fn statement_name(sql: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    sql.hash(&mut h);
    format!("cdc_plan_{:016x}", h.finish())
}

/// Batches of at most this many documents run the plan as statements prepared once per
/// session, with generic plans: planning was most of a small apply's time (a one-report batch:
/// 20 ms planned each time, 17 ms prepared, `examples/plan_server_side.rs`). Larger batches
/// (catch-up, the backfill) are planned for their own size, as a generic plan made for a small
/// one could be poor for thousands of documents.
pub(super) const PREPARED_MAX_DOCS: usize = 500;

/// Which of the plan's statements after the mirror upsert a call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Steps {
    /// The report-child links, the affected-set closure and the derivation.
    All,
    /// Only the links and the closure (the derivation then runs statement by statement,
    /// isolating rejected documents).
    Before,
    /// Only the derivation, of an affected set the caller filled.
    Derivation,
}

const CALL: &str = "SELECT step, n, ms FROM cdc.run_plan($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// Run `steps` of the plan for the `present` entities (those whose documents changed), and
/// count the rows each wrote into `stats`; with `ctx.prepared`, as statements prepared once
/// per session, with generic plans (see [`PREPARED_MAX_DOCS`]).
pub(super) async fn run(
    tx: &Transaction<'_>,
    ctx: &Ctx,
    present: &BTreeSet<&str>,
    stats: &mut ApplyStats,
    steps: Steps,
) -> Result<(), ProjectError> {
    let a = &*ARGS;
    let before = plan::MIRROR_STEPS.len() + plan::AFFECTED_STEPS.len();
    let range = match steps {
        Steps::All => 0..a.steps.len(),
        Steps::Before => 0..before,
        Steps::Derivation => before..a.steps.len(),
    };
    let present: Vec<&str> = present.iter().copied().collect();
    let (stmts, selects, kinds) = (
        &a.stmts[range.clone()],
        &a.selects[range.clone()],
        &a.kinds[range.clone()],
    );
    let (tables, sources, targets) = (
        &a.tables[range.clone()],
        &a.sources[range.clone()],
        &a.targets[range.clone()],
    );
    let names = ctx.prepared.then(|| &a.names[range.clone()]);
    // Statements prepared in this session need no text: the call asks for it (one row, step
    // -1, having run nothing) only when the session lacks one of them.
    let mut texts = (!ctx.prepared).then_some(stmts);
    let rows = loop {
        let params: [(&(dyn ToSql + Sync), Type); 10] = [
            (&ctx.tz, Type::TEXT),
            (&ctx.stamp, Type::TIMESTAMPTZ),
            (&present, Type::TEXT_ARRAY),
            (&texts, Type::TEXT_ARRAY),
            (&selects, Type::BOOL_ARRAY),
            (&kinds, Type::TEXT_ARRAY),
            (&tables, Type::TEXT_ARRAY),
            (&sources, Type::TEXT_ARRAY),
            (&targets, Type::TEXT_ARRAY),
            (&names, Type::TEXT_ARRAY),
        ];
        let rows = tx
            .query_typed(CALL, &params)
            .await
            .map_err(ProjectError::pg("plan"))?;
        if texts.is_none() && rows.first().is_some_and(|r| r.get::<_, i32>(0) < 0) {
            texts = Some(stmts);
            continue;
        }
        break rows;
    };
    for r in rows {
        let (i, n, ms): (i32, i64, f64) = (r.get(0), r.get(1), r.get(2));
        let Some(step) = usize::try_from(i)
            .ok()
            .and_then(|i| a.steps.get(range.start + i))
        else {
            continue;
        };
        let n = u64::try_from(n).unwrap_or(0);
        tracing::debug!(
            step = step.name,
            rows = n,
            elapsed_ms = ms,
            "projection statement"
        );
        if n > 0
            && let Some(label) = step.rows_label()
        {
            *stats.rows_written.entry(label).or_default() += n;
        }
    }
    Ok(())
}

/// Whether a statement's result is a count (its main command, after any `WITH` clause, is a
/// `SELECT`), as opposed to a row count: the words at parenthesis depth 0, outside quotes and
/// comments, decide.
fn selects_count(sql: &str) -> bool {
    let mut depth = 0i32;
    let mut word = String::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '-' if chars.peek() == Some(&'-') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '\'' => {
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                }
            }
            '(' => depth += 1,
            ')' => depth -= 1,
            c if depth == 0 && (c.is_ascii_alphanumeric() || c == '_') => word.push(c),
            _ => {}
        }
        let at_end = !chars
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_');
        if !word.is_empty() && at_end {
            match word.to_ascii_uppercase().as_str() {
                "SELECT" => return true,
                "INSERT" | "UPDATE" | "DELETE" | "MERGE" => return false,
                _ => {}
            }
            word.clear();
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_main_command_decides_whether_a_statement_selects_a_count() {
        assert!(selects_count(
            "WITH a AS (INSERT INTO t SELECT 1 RETURNING 1)\nSELECT count(*) FROM a"
        ));
        assert!(!selects_count(
            "WITH x AS MATERIALIZED (SELECT 1)\nINSERT INTO t (a) SELECT 'it''s (' FROM x"
        ));
        assert!(!selects_count(
            "-- SELECT\nDELETE FROM t WHERE a IN (SELECT 1)"
        ));
        assert!(!selects_count("INSERT INTO t SELECT 1 RETURNING 1"));
    }

    #[test]
    fn every_step_after_the_mirror_upsert_is_in_the_call_once_in_plan_order() {
        let a = &*ARGS;
        let n = plan::MIRROR_STEPS.len() + plan::AFFECTED_STEPS.len() + plan::DERIVE_STEPS.len();
        assert_eq!(a.steps.len(), n);
        assert!(
            a.kinds[..plan::MIRROR_STEPS.len() + plan::AFFECTED_STEPS.len()]
                .iter()
                .all(|k| *k == "pre")
        );
        assert!(
            a.kinds[plan::MIRROR_STEPS.len() + plan::AFFECTED_STEPS.len()..]
                .iter()
                .all(|k| *k != "pre")
        );
        // the statements that report a count are those the plan writes as a final SELECT
        assert!(a.selects.iter().any(|s| *s) && a.selects.iter().any(|s| !*s));
    }
}
