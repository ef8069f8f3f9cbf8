//! The projection plan: typed steps built from the SQL files in `sql/`.
//!
//! A file holds plain SQL statements, each introduced by a line `-- @step KIND ARGS`:
//!
//! | KIND | ARGS | what the statement does |
//! |---|---|---|
//! | `mirror` | table | keeps what the mirror holds beside the documents (`cdc.report_child`) |
//! | `closure` | `FROM,… -> TO,…` | adds affected keys of the TO entities for affected FROM keys |
//! | `placeholder` | entity \[`unused`\] | placeholder rows for the entity's missing references (or removes unused ones) |
//! | `upsert` | star table | derives the table's rows of affected keys (stamped with `synced_at`) |
//! | `cleanup` | star table | archives or removes the rows of affected keys its upsert did not derive |
//! | `archive_deleted` | | archives the dimension rows of deleted documents |
//! | `context` | child entity | the report context of affected children (`pg_temp.cdc_ctx`) |
//!
//! Which entities' affected keys a step reads comes from its kind and the entity catalog
//! (`crate::model`); a step none of whose source entities has affected keys is skipped, and a
//! cleanup is skipped when its upsert derived a row for every affected key of its entity. The
//! fully expanded plan is committed as `src/project/plan.sql` (a test keeps it current) so that
//! reviewers and psql read the real SQL.

use std::sync::LazyLock;

use super::sql::expand;
use crate::event::Entity;
use crate::model;

/// What a step does (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    Mirror,
    Closure {
        from: Vec<&'static str>,
        to: Vec<&'static str>,
    },
    Placeholder,
    Upsert,
    Cleanup,
    ArchiveDeleted,
    Context,
}

/// One statement of the projection.
#[derive(Debug)]
pub(crate) struct Step {
    pub kind: Kind,
    /// Its marker's text after `@step` (`upsert dim_crew`): the step's name in logs and
    /// errors.
    pub name: &'static str,
    /// The table written: a star table for upserts and cleanups, `cdc.*` for mirror steps.
    pub table: Option<&'static str>,
    /// The entities whose affected keys it reads.
    pub sources: Vec<&'static str>,
    pub sql: String,
}

impl Step {
    /// The key of the rows-written metric and summary: the table written (`dim_*` for the
    /// archive of deleted dimension documents); `None` for steps that write no star row of
    /// their own (closure, context, placeholders, mirror).
    pub(crate) fn rows_label(&self) -> Option<&'static str> {
        match self.kind {
            Kind::Upsert | Kind::Cleanup => self.table,
            Kind::ArchiveDeleted => Some(ARCHIVED_DIMENSIONS),
            _ => None,
        }
    }
}

/// The rows-written label of the archive of deleted dimension documents.
pub(crate) const ARCHIVED_DIMENSIONS: &str = "dim_*";

const MIRROR: &str = include_str!("sql/mirror.sql");
const AFFECTED: &str = include_str!("sql/affected.sql");
const DIMS: &str = include_str!("sql/dims.sql");
const REPORTS: &str = include_str!("sql/reports.sql");
const CTX: &str = include_str!("sql/ctx.sql");
const FACTS_WORK: &str = include_str!("sql/facts_work.sql");
const FACTS_SHIPMENT: &str = include_str!("sql/facts_shipment.sql");
const FACTS_INVOICE: &str = include_str!("sql/facts_invoice.sql");

/// The mirror upsert (the first statement of sql/mirror.sql).
pub(crate) static MIRROR_UPSERT: LazyLock<Step> = LazyLock::new(|| {
    split(MIRROR)
        .into_iter()
        .next()
        .expect("sql/mirror.sql starts with the upsert")
});

/// What the mirror keeps beside the documents (the report-child links), after the upsert.
pub(crate) static MIRROR_STEPS: LazyLock<Vec<Step>> =
    LazyLock::new(|| split(MIRROR).into_iter().skip(1).collect());

/// The affected-set closure, in order.
pub(crate) static AFFECTED_STEPS: LazyLock<Vec<Step>> = LazyLock::new(|| split(AFFECTED));

/// The derivation, in dependency order: dimensions, reports and jobsite materials, the child
/// context, facts.
pub(crate) static DERIVE_STEPS: LazyLock<Vec<Step>> = LazyLock::new(|| {
    [
        DIMS,
        REPORTS,
        CTX,
        FACTS_WORK,
        FACTS_SHIPMENT,
        FACTS_INVOICE,
    ]
    .into_iter()
    .flat_map(split)
    .collect()
});

const MARKER: &str = "-- @step ";

fn split(file: &'static str) -> Vec<Step> {
    let mut out = Vec::new();
    let mut rest = file;
    while let Some(at) = rest.find(MARKER) {
        let body = &rest[at + MARKER.len()..];
        let eol = body.find('\n').unwrap_or(body.len());
        let name = body[..eol].trim();
        let body = &body[eol..];
        let end = body.find(MARKER).unwrap_or(body.len());
        out.push(step(name, expand(&body[..end])));
        rest = &body[end..];
    }
    out
}

/// A step from its marker text; panics on a marker that does not name a known kind, table or
/// entity (a test builds every step).
fn step(name: &'static str, sql: String) -> Step {
    let (kind, args) = name.split_once(' ').unwrap_or((name, ""));
    let entity = |s: &str| -> &'static str {
        s.parse::<Entity>()
            .unwrap_or_else(|_| panic!("@step {name}: {s:?} is not an entity"))
            .as_str()
    };
    let star_table = |t: &'static str| -> (&'static str, Vec<&'static str>) {
        let owner = model::owner(t)
            .unwrap_or_else(|| panic!("@step {name}: {t:?} is not a star table of the catalog"));
        (t, vec![owner.as_str()])
    };
    let (kind, table, sources) = match kind {
        // (the document upsert reads the batch; the links, the changed reports)
        "mirror" if args == "cdc.source_doc" => (Kind::Mirror, Some(args), vec![]),
        "mirror" => (Kind::Mirror, Some(args), vec![Entity::DailyReport.as_str()]),
        "closure" => {
            let (from, to) = args
                .split_once(" -> ")
                .unwrap_or_else(|| panic!("@step {name}: not `closure FROM,… -> TO,…`"));
            let from: Vec<&str> = from.split(',').map(entity).collect();
            let to: Vec<&str> = to.split(',').map(entity).collect();
            let sources = from.clone();
            (Kind::Closure { from, to }, None, sources)
        }
        "placeholder" => {
            let e = args.split(' ').next().unwrap_or(args);
            (Kind::Placeholder, None, vec![entity(e)])
        }
        "context" => (Kind::Context, None, vec![entity(args)]),
        "upsert" => {
            let (t, s) = star_table(args);
            (Kind::Upsert, Some(t), s)
        }
        "cleanup" => {
            let (t, s) = star_table(args);
            (Kind::Cleanup, Some(t), s)
        }
        "archive_deleted" => (
            Kind::ArchiveDeleted,
            None,
            model::CATALOG
                .iter()
                .filter(|m| m.archives_on_delete)
                .map(|m| m.entity.as_str())
                .collect(),
        ),
        other => panic!("@step {name}: unknown kind {other:?}"),
    };
    Step {
        kind,
        name,
        table,
        sources,
        sql,
    }
}

/// The whole plan, fully expanded, as committed in `src/project/plan.sql`.
#[cfg(test)]
fn snapshot() -> String {
    use std::fmt::Write as _;
    let mut out = String::from(
        "-- The projection plan, fully expanded from src/project/sql/*.sql (generated: a test\n\
         -- keeps it current; `UPDATE_PLAN_SNAPSHOT=1 cargo test plan` rewrites it).\n\
         -- In the affected-set and derivation steps $1 is the report time zone, $2 the synced_at stamp.\n",
    );
    let parts: [(&str, Vec<&Step>); 3] = [
        (
            "mirror",
            std::iter::once(&*MIRROR_UPSERT)
                .chain(MIRROR_STEPS.iter())
                .collect(),
        ),
        ("affected set", AFFECTED_STEPS.iter().collect()),
        ("derivation", DERIVE_STEPS.iter().collect()),
    ];
    for (part, steps) in parts {
        let _ = write!(out, "\n-- ===== {part} =====\n");
        for s in steps {
            let reads = if s.sources.is_empty() {
                "the batch".to_string()
            } else {
                format!("affected keys of {}", s.sources.join(", "))
            };
            let _ = write!(
                out,
                "\n-- @step {} (reads {reads})\n{}\n",
                s.name,
                s.sql.trim()
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The projection SQL and the entity catalog agree: every star table of the catalog is
    /// written by an upsert step of it, each upsert and cleanup writes its table, and every
    /// report child has its context step.
    #[test]
    fn the_sql_and_the_entity_catalog_agree() {
        for t in model::star_tables() {
            let steps: Vec<&Step> = DERIVE_STEPS.iter().filter(|s| s.table == Some(t)).collect();
            assert!(
                steps.iter().any(|s| s.kind == Kind::Upsert),
                "no upsert step derives {t}"
            );
            for s in steps {
                let writes = [
                    format!("INSERT INTO {t} "),
                    format!("UPDATE {t} "),
                    format!("DELETE FROM {t} "),
                ];
                assert!(
                    writes.iter().any(|w| s.sql.contains(w.as_str())),
                    "step {} does not write {t}",
                    s.name
                );
            }
        }
        for (child, _) in model::report_children() {
            assert!(
                DERIVE_STEPS
                    .iter()
                    .any(|s| s.kind == Kind::Context && s.sources == [child.as_str()]),
                "no context step for {child}"
            );
        }
        // A cleanup follows its table's upsert.
        for (n, s) in DERIVE_STEPS.iter().enumerate() {
            if s.kind == Kind::Cleanup {
                assert!(
                    DERIVE_STEPS[..n]
                        .iter()
                        .any(|u| u.kind == Kind::Upsert && u.table == s.table),
                    "{} before its upsert",
                    s.name
                );
            }
        }
    }

    #[test]
    fn every_file_splits_into_typed_expanded_steps() {
        assert!(MIRROR_UPSERT.sql.contains("INSERT INTO cdc.source_doc"));
        assert_eq!(AFFECTED_STEPS.len(), 8);
        assert_eq!(MIRROR_STEPS.len(), 2);
        for s in AFFECTED_STEPS.iter() {
            let Kind::Closure { from, to } = &s.kind else {
                panic!("{} in sql/affected.sql is not a closure step", s.name);
            };
            for e in from.iter().chain(to) {
                assert!(
                    s.sql.contains(&format!("'{e}'")),
                    "{e} unused in {}",
                    s.name
                );
            }
        }
        assert!(DERIVE_STEPS.len() >= 20);
        for s in MIRROR_STEPS
            .iter()
            .chain(&*AFFECTED_STEPS)
            .chain(&*DERIVE_STEPS)
        {
            assert!(!s.sources.is_empty(), "{} reads no entity", s.name);
            assert!(!s.sql.contains("{{"), "unexpanded template in {}", s.name);
            assert!(!s.sql.contains("@step"));
        }
    }

    /// `src/project/plan.sql` is the plan as it runs.
    #[test]
    fn the_committed_plan_snapshot_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/project/plan.sql");
        let now = snapshot();
        if std::env::var_os("UPDATE_PLAN_SNAPSHOT").is_some() {
            std::fs::write(path, &now).expect("write the plan snapshot");
            return;
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == now,
            "src/project/plan.sql is out of date: run `UPDATE_PLAN_SNAPSHOT=1 cargo test plan` \
             and review the diff"
        );
    }
}
