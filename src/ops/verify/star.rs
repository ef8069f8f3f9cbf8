//! Star rows compared by content: the rule by which the live star schema must equal a fresh
//! projection of the mirror (docs/architecture.md, "The law").
//!
//! Rows are keyed by table and `mongo_id` (rate rows, which have no natural key, by their
//! content and repeat count); surrogate ids and `synced_at` are dropped and foreign keys are
//! replaced by the `mongo_id` of the row they reference. Allowed: retired rows only in the live
//! database (archived rows of deleted or detached documents, dimension rows kept for archived
//! facts or left unreferenced, and their rates), and the archived row of a deleted document
//! where a fresh projection holds its placeholder.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;
use tokio_postgres::GenericClient;

use crate::project::PLACEHOLDER_NAME_PREFIX;

/// Star rows by table: natural key -> row.
pub type Star = BTreeMap<String, BTreeMap<String, Row>>;

/// One star row as the comparison sees it.
#[derive(Debug, Clone)]
pub struct Row {
    /// Canonical content (JSON; foreign keys as the referenced `mongo_id`).
    pub content: String,
    /// Archived, or a dimension row that no live row references any more (a deleted crew's or
    /// jobsite material's row kept for the archived facts, a placeholder nothing names now),
    /// or a rate of such a row.
    pub retired: bool,
    /// A placeholder row for a missing document (its name says so).
    pub placeholder: bool,
}

/// One row as read, before its foreign keys are mapped: its JSON text and what the retirement
/// rule needs (kept small: a large database holds hundreds of thousands of rows).
struct Raw {
    table: &'static str,
    id: Option<String>,
    mongo_id: Option<String>,
    archived: bool,
    /// A dimension row a fresh projection holds whether or not anything references it.
    eager: bool,
    /// The surrogate ids its foreign-key columns hold.
    refs: Vec<String>,
    text: String,
}

/// Every star row of `schema` (`pg_temp` for the session's temporary tables) by natural key.
pub async fn read(
    client: &impl GenericClient,
    schema: &str,
) -> Result<Star, tokio_postgres::Error> {
    use futures_util::TryStreamExt;
    let tables = crate::model::star_tables();
    let mut all: Vec<Raw> = Vec::new();
    for t in &tables {
        let sql = format!("SELECT to_jsonb(x)::text FROM {schema}.{t} x");
        let rows = client.query_raw(&sql, std::iter::empty::<i32>()).await?;
        futures_util::pin_mut!(rows);
        while let Some(r) = rows.try_next().await? {
            let text: String = r.get(0);
            // PostgreSQL's jsonb text always parses.
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let archived = v.get("archived_at").is_some_and(|a| !a.is_null())
                || v.get("archived").is_some_and(|a| a == &Value::Bool(true));
            let refs = v
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(c, _)| *c != "id" && c.ends_with("_id"))
                .filter_map(|(_, val)| val.as_str().map(str::to_string))
                .collect();
            all.push(Raw {
                table: t,
                id: v.get("id").and_then(Value::as_str).map(str::to_string),
                mongo_id: v
                    .get("mongo_id")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                archived,
                eager: eager(t, &v),
                refs,
                text,
            });
        }
    }
    let retired = retired(&all);
    // Dimension rows by surrogate id: (mongo_id, retired).
    let mut ids: BTreeMap<String, (String, bool)> = BTreeMap::new();
    let mut out = Star::new();
    for t in &tables {
        out.entry(t.to_string()).or_default();
    }
    for (n, r) in all.iter().enumerate() {
        if is_dim(r.table)
            && let (Some(id), Some(m)) = (&r.id, &r.mongo_id)
        {
            ids.insert(id.clone(), (m.clone(), retired[n]));
        }
    }
    for (n, r) in all.into_iter().enumerate() {
        let mut v: Value = serde_json::from_str(&r.text).unwrap_or(Value::Null);
        drop(r.text);
        let t = r.table;
        let Some(obj) = v.as_object_mut() else {
            continue;
        };
        obj.remove("id");
        obj.remove("synced_at");
        let mut parent_retired = false;
        for (col, val) in obj.iter_mut() {
            if col.ends_with("_id")
                && let Some((m, ret)) = val.as_str().and_then(|s| ids.get(s))
            {
                parent_retired |= *ret && t.ends_with("_rate");
                *val = Value::String(m.clone());
            }
        }
        let placeholder = obj
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| n.starts_with(PLACEHOLDER_NAME_PREFIX));
        let content = v.to_string();
        let table = out.entry(t.to_string()).or_default();
        let key = match v.get("mongo_id").and_then(Value::as_str) {
            Some(k) if !t.ends_with("_rate") => k.to_string(),
            _ => {
                let prefix = format!("{content}#");
                let n = table
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .count();
                format!("{prefix}{n}")
            }
        };
        table.insert(
            key,
            Row {
                content,
                retired: retired[n] || parent_retired,
                placeholder,
            },
        );
    }
    Ok(out)
}

fn is_dim(t: &str) -> bool {
    t.starts_with("dim_") && !t.ends_with("_rate")
}

/// Retired: archived, or (a dimension row) referenced by no live row; to a fixed point (a
/// retired jobsite material does not keep its material live).
fn retired(all: &[Raw]) -> Vec<bool> {
    let mut retired: Vec<bool> = all.iter().map(|r| r.archived).collect();
    loop {
        let mut referenced = BTreeSet::new();
        for (n, r) in all.iter().enumerate() {
            // (a rate row belongs to its dimension row: it keeps nothing live)
            if retired[n] || r.table.ends_with("_rate") {
                continue;
            }
            referenced.extend(r.refs.iter().map(String::as_str));
        }
        let mut changed = false;
        for (n, r) in all.iter().enumerate() {
            let ret = retired[n]
                || (is_dim(r.table)
                    && r.id.as_deref().is_some_and(|i| !referenced.contains(i))
                    && !r.eager);
            if ret != retired[n] {
                retired[n] = ret;
                changed = true;
            }
        }
        if !changed {
            return retired;
        }
    }
}

/// A dimension row that a fresh projection holds whether or not anything references it (the
/// dimensions are eager): every row except placeholders and jobsite materials (whose row needs
/// a jobsite). Only those may be left unreferenced in the live database.
fn eager(table: &str, v: &Value) -> bool {
    table != "dim_jobsite_material"
        && !v
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| n.starts_with(PLACEHOLDER_NAME_PREFIX))
}

/// How one row drifted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RowDrift {
    /// A fresh projection derives it; the live database lacks it.
    Missing,
    /// A live row that no fresh projection derives (and that is not retired).
    Unexpected,
    /// Both hold it with different content.
    Differs,
}

/// One drifted row, for the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DriftedRow {
    pub key: String,
    pub drift: RowDrift,
    /// The columns whose values differ (all of them for a missing or unexpected row).
    pub columns: Vec<String>,
}

/// One table's comparison.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TableReport {
    pub table: String,
    /// Live rows (retired included).
    pub live_rows: u64,
    /// Rows of the fresh projection.
    pub fresh_rows: u64,
    /// Retired live rows a fresh projection does not hold (allowed).
    pub retired_only_live: u64,
    pub missing: u64,
    pub unexpected: u64,
    pub differing: u64,
    /// Up to the report's key limit.
    pub rows: Vec<DriftedRow>,
}

impl TableReport {
    pub fn drift(&self) -> u64 {
        self.missing + self.unexpected + self.differing
    }
}

/// Compare the live star with a fresh projection, table by table, listing up to `max_keys`
/// drifted rows per table.
pub fn compare(live: &Star, fresh: &Star, max_keys: usize) -> Vec<TableReport> {
    let empty = BTreeMap::new();
    let mut out = Vec::new();
    let tables: BTreeSet<&String> = live.keys().chain(fresh.keys()).collect();
    for t in tables {
        let l = live.get(t).unwrap_or(&empty);
        let f = fresh.get(t).unwrap_or(&empty);
        let mut rep = TableReport {
            table: t.clone(),
            live_rows: l.len() as u64,
            fresh_rows: f.len() as u64,
            ..TableReport::default()
        };
        let note = |rep: &mut TableReport, key: &str, drift: RowDrift, columns: Vec<String>| {
            if rep.rows.len() < max_keys {
                rep.rows.push(DriftedRow {
                    key: display_key(key),
                    drift,
                    columns,
                });
            }
        };
        for (k, fr) in f {
            match l.get(k) {
                Some(lr) if lr.content == fr.content => {}
                Some(lr) if fr.placeholder && lr.retired => {}
                Some(lr) => {
                    rep.differing += 1;
                    note(
                        &mut rep,
                        k,
                        RowDrift::Differs,
                        differing_columns(&lr.content, &fr.content),
                    );
                }
                None => {
                    rep.missing += 1;
                    note(&mut rep, k, RowDrift::Missing, columns_of(&fr.content));
                }
            }
        }
        for (k, lr) in l {
            if f.contains_key(k) {
                continue;
            }
            if lr.retired {
                rep.retired_only_live += 1;
            } else {
                rep.unexpected += 1;
                note(&mut rep, k, RowDrift::Unexpected, columns_of(&lr.content));
            }
        }
        out.push(rep);
    }
    out
}

/// A rate row's key is its content: shown shortened.
fn display_key(key: &str) -> String {
    const MAX: usize = 120;
    if key.chars().count() <= MAX {
        key.to_string()
    } else {
        let head: String = key.chars().take(MAX).collect();
        format!("{head}…")
    }
}

/// A row's content as a JSON object (empty when it is not one).
pub(super) fn object(content: &str) -> serde_json::Map<String, Value> {
    match serde_json::from_str(content) {
        Ok(Value::Object(o)) => o,
        _ => serde_json::Map::new(),
    }
}

fn columns_of(content: &str) -> Vec<String> {
    object(content).keys().cloned().collect()
}

/// The columns whose values differ between two rows' contents.
pub(crate) fn differing_columns(a: &str, b: &str) -> Vec<String> {
    differing(&object(a), &object(b))
}

/// The keys whose values differ between two rows, in order.
pub(super) fn differing(
    a: &serde_json::Map<String, Value>,
    b: &serde_json::Map<String, Value>,
) -> Vec<String> {
    let cols: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    cols.into_iter()
        .filter(|c| a.get(*c) != b.get(*c))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(content: &str, retired: bool, placeholder: bool) -> Row {
        Row {
            content: content.to_string(),
            retired,
            placeholder,
        }
    }

    fn star(rows: &[(&str, &str, Row)]) -> Star {
        let mut s = Star::new();
        for (t, k, r) in rows {
            s.entry(t.to_string())
                .or_default()
                .insert(k.to_string(), r.clone());
        }
        s
    }

    #[test]
    fn names_the_table_key_and_columns_that_differ() {
        let live = star(&[(
            "dim_crew",
            "c1",
            row(
                r#"{"mongo_id":"c1","name":"A","type":"Base"}"#,
                false,
                false,
            ),
        )]);
        let fresh = star(&[(
            "dim_crew",
            "c1",
            row(
                r#"{"mongo_id":"c1","name":"B","type":"Base"}"#,
                false,
                false,
            ),
        )]);
        let rep = compare(&live, &fresh, 10);
        assert_eq!(rep[0].differing, 1);
        assert_eq!(rep[0].rows[0].key, "c1");
        assert_eq!(rep[0].rows[0].columns, vec!["name".to_string()]);
    }

    #[test]
    fn retired_rows_only_live_are_allowed_and_live_rows_only_live_are_not() {
        let live = star(&[
            ("dim_crew", "old", row(r#"{"mongo_id":"old"}"#, true, false)),
            (
                "dim_crew",
                "extra",
                row(r#"{"mongo_id":"extra"}"#, false, false),
            ),
            (
                "dim_crew",
                "ph",
                row(r#"{"mongo_id":"ph","archived_at":"x"}"#, true, false),
            ),
        ]);
        let fresh = star(&[
            (
                "dim_crew",
                "ph",
                row(r#"{"mongo_id":"ph","name":"(missing crew)"}"#, false, true),
            ),
            (
                "dim_crew",
                "new",
                row(r#"{"mongo_id":"new"}"#, false, false),
            ),
        ]);
        let rep = &compare(&live, &fresh, 10)[0];
        assert_eq!(
            (
                rep.retired_only_live,
                rep.unexpected,
                rep.missing,
                rep.differing
            ),
            (1, 1, 1, 0)
        );
        assert_eq!(rep.drift(), 2);
        let kinds: Vec<(&str, RowDrift)> =
            rep.rows.iter().map(|r| (r.key.as_str(), r.drift)).collect();
        assert!(kinds.contains(&("new", RowDrift::Missing)), "{kinds:?}");
        assert!(
            kinds.contains(&("extra", RowDrift::Unexpected)),
            "{kinds:?}"
        );
    }

    #[test]
    fn the_key_list_stops_at_the_limit_but_the_counts_do_not() {
        let live = Star::new();
        let fresh = star(&[
            ("t", "a", row("{}", false, false)),
            ("t", "b", row("{}", false, false)),
            ("t", "c", row("{}", false, false)),
        ]);
        let rep = &compare(&live, &fresh, 2)[0];
        assert_eq!(rep.missing, 3);
        assert_eq!(rep.rows.len(), 2);
    }
}
