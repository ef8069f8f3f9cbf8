//! `verify --legacy-db URL`: the cutover aid. A reporting database written by the legacy Node
//! sync is compared with this pipeline's, table by table by `mongo_id` (rate rows by content),
//! and every difference is classified by the README's "Differences from the legacy sync";
//! what no listed difference explains is reported with its columns.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};
use tokio_postgres::Client;

use super::star::{self, Star, differing, object};
use crate::ops::OpsError;

/// A difference the README lists ("Differences from the legacy sync"), by its number there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Explained {
    /// 1: calendar dates in the pipeline's report time zone.
    CalendarDates,
    /// 2: trucking by quantity, and the overnight rule for trucking hours.
    TruckingQuantity,
    /// 3: material invoices feed their material's rate, not `fact_invoice`.
    MaterialInvoices,
    /// 4: a jobsite material's jobsite is the jobsite that claims it.
    JobsiteMaterialJobsite,
    /// 5: dimensions are eager.
    EagerDimensions,
    /// 6: rate tables mirror the current `rates[]` arrays.
    RateTables,
    /// 7: the `Unknown` crew-type fallback.
    CrewTypeFallback,
    /// 8: changes propagate (rates and costs re-derived; removed children archived).
    Propagation,
    /// 9: a row whose document the legacy never synced (missed by the legacy).
    MissedByLegacy,
    /// 12: placeholder rows for missing references.
    Placeholders,
    /// 14: the legacy's null and default rules.
    NullsAndDefaults,
    /// 16: exact decimal arithmetic (within a cent).
    ExactDecimals,
}

impl Explained {
    /// The number in the README's list.
    pub fn number(self) -> u8 {
        match self {
            Explained::CalendarDates => 1,
            Explained::TruckingQuantity => 2,
            Explained::MaterialInvoices => 3,
            Explained::JobsiteMaterialJobsite => 4,
            Explained::EagerDimensions => 5,
            Explained::RateTables => 6,
            Explained::CrewTypeFallback => 7,
            Explained::Propagation => 8,
            Explained::MissedByLegacy => 9,
            Explained::Placeholders => 12,
            Explained::NullsAndDefaults => 14,
            Explained::ExactDecimals => 16,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Explained::CalendarDates => "calendar dates in the report time zone",
            Explained::TruckingQuantity => "trucking by quantity / overnight trucking hours",
            Explained::MaterialInvoices => "material invoices are not fact_invoice rows",
            Explained::JobsiteMaterialJobsite => "a jobsite material's jobsite claims it",
            Explained::EagerDimensions => "dimensions are eager",
            Explained::RateTables => "rate tables mirror the current rates",
            Explained::CrewTypeFallback => "the Unknown crew-type fallback",
            Explained::Propagation => "changes propagate (rates, costs, archiving)",
            Explained::MissedByLegacy => "missed by the legacy",
            Explained::Placeholders => "placeholders for missing references",
            Explained::NullsAndDefaults => "the legacy's null and default rules",
            Explained::ExactDecimals => "exact decimal arithmetic",
        }
    }
}

/// Which side holds a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    OnlyLegacy,
    OnlyOurs,
    Differs,
}

/// A difference no listed rule explains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unexplained {
    pub key: String,
    pub side: Side,
    /// The columns that differ and no rule explains (every column for a one-sided row).
    pub columns: Vec<String>,
}

/// One table's comparison.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LegacyTable {
    pub table: String,
    pub legacy_rows: u64,
    pub our_rows: u64,
    pub same: u64,
    /// Differing rows by the difference that explains them (a row with several explained
    /// columns counts under each).
    pub explained: BTreeMap<String, u64>,
    pub unexplained: u64,
    /// Up to the report's key limit.
    pub rows: Vec<Unexplained>,
}

/// The comparison of a legacy database with ours.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LegacyReport {
    pub tables: Vec<LegacyTable>,
    pub unexplained: u64,
}

impl LegacyReport {
    pub(crate) fn explained_total(&self) -> u64 {
        self.tables.iter().flat_map(|t| t.explained.values()).sum()
    }
}

/// Label of an explained difference in reports: `3 material invoices are not fact_invoice rows`.
fn label(e: Explained) -> String {
    format!("{} {}", e.number(), e.describe())
}

/// Connect to the legacy database and compare it with ours (`ours`, the pipeline's).
pub(crate) async fn compare_with_legacy(
    ours: &Client,
    legacy_url: &str,
    max_keys: usize,
) -> Result<LegacyReport, OpsError> {
    let (cfg, tls) =
        crate::pg::config_from_url(legacy_url, "--legacy-db").map_err(OpsError::Usage)?;
    let database = cfg.get_dbname().unwrap_or("(default)").to_string();
    let legacy = crate::pg::command_session(&cfg, &tls, "--legacy-db")
        .await
        .map_err(|source| OpsError::Connect {
            database: format!("{database} (--legacy-db)"),
            source,
        })?;
    let theirs = star::read(&legacy, "public")
        .await
        .map_err(OpsError::pg("legacy star rows"))?;
    let mine = star::read(ours, "public")
        .await
        .map_err(OpsError::pg("star rows"))?;
    let material_invoices: BTreeSet<String> = ours
        .query(MATERIAL_INVOICES, &[])
        .await
        .map_err(OpsError::pg("cdc.source_doc"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(classify(&theirs, &mine, &material_invoices, max_keys))
}

/// Invoices listed by a live jobsite material (difference 3).
const MATERIAL_INVOICES: &str = "
SELECT DISTINCT cdc.oid(e.v)
FROM cdc.source_doc s
CROSS JOIN LATERAL jsonb_array_elements(cdc.arr(s.doc -> 'invoices')) AS e(v)
WHERE s.entity = 'jobsite_material' AND NOT s.deleted AND cdc.oid(e.v) IS NOT NULL";

/// Compare and classify (pure: the rules of the comparison).
pub(crate) fn classify(
    legacy: &Star,
    ours: &Star,
    material_invoices: &BTreeSet<String>,
    max_keys: usize,
) -> LegacyReport {
    let empty = BTreeMap::new();
    // Our placeholder rows' mongo ids (a row referencing one exists only because of it).
    let placeholders: BTreeSet<&str> = ours
        .values()
        .flat_map(|rows| rows.iter())
        .filter(|(_, r)| r.placeholder)
        .map(|(k, _)| k.as_str())
        .collect();
    let mut report = LegacyReport::default();
    let tables: BTreeSet<&String> = legacy.keys().chain(ours.keys()).collect();
    for t in tables {
        let l = legacy.get(t).unwrap_or(&empty);
        let o = ours.get(t).unwrap_or(&empty);
        let mut tr = LegacyTable {
            table: t.clone(),
            legacy_rows: l.len() as u64,
            our_rows: o.len() as u64,
            ..LegacyTable::default()
        };
        let is_rate = t.ends_with("_rate");
        let is_dim = t.starts_with("dim_") && !is_rate && t != "dim_daily_report";
        let unexplained = |tr: &mut LegacyTable, key: &str, side: Side, columns: Vec<String>| {
            tr.unexplained += 1;
            if tr.rows.len() < max_keys {
                tr.rows.push(Unexplained {
                    key: key.to_string(),
                    side,
                    columns,
                });
            }
        };
        for (k, lr) in l {
            match o.get(k) {
                Some(or) if or.content == lr.content => tr.same += 1,
                Some(or) => {
                    let (lo, oo) = (object(&lr.content), object(&or.content));
                    let mut reasons = BTreeSet::new();
                    let mut left = Vec::new();
                    for col in differing(&lo, &oo) {
                        match column_rule(t, &col, &lo, &oo) {
                            Some(e) => {
                                reasons.insert(e);
                            }
                            None => left.push(col),
                        }
                    }
                    if left.is_empty() {
                        for e in reasons {
                            *tr.explained.entry(label(e)).or_default() += 1;
                        }
                    } else {
                        unexplained(&mut tr, k, Side::Differs, left);
                    }
                }
                None => {
                    let e = if is_rate {
                        Some(Explained::RateTables)
                    } else if t == "fact_invoice" && material_invoices.contains(k) {
                        Some(Explained::MaterialInvoices)
                    } else {
                        None
                    };
                    match e {
                        Some(e) => *tr.explained.entry(label(e)).or_default() += 1,
                        None => {
                            let cols = object(&lr.content).keys().cloned().collect();
                            unexplained(&mut tr, k, Side::OnlyLegacy, cols);
                        }
                    }
                }
            }
        }
        for (k, or) in o {
            if l.contains_key(k) {
                continue;
            }
            let refs_placeholder = object(&or.content).iter().any(|(c, v)| {
                c.ends_with("_id") && v.as_str().is_some_and(|s| placeholders.contains(s))
            });
            let e = if or.placeholder || refs_placeholder {
                Explained::Placeholders
            } else if is_rate {
                Explained::RateTables
            } else if is_dim {
                Explained::EagerDimensions
            } else {
                Explained::MissedByLegacy
            };
            *tr.explained.entry(label(e)).or_default() += 1;
        }
        report.unexplained += tr.unexplained;
        report.tables.push(tr);
    }
    report
}

/// Values the app's schema gives a missing field, which the legacy left NULL.
const DEFAULTS: [&str; 5] = ["Truck", "noCode", "General", "Bow Mark", "rate"];

/// The listed difference that explains a column's values differing, if any.
fn column_rule(
    table: &str,
    col: &str,
    legacy: &Map<String, Value>,
    ours: &Map<String, Value>,
) -> Option<Explained> {
    let (l, o) = (
        legacy.get(col).unwrap_or(&Value::Null),
        ours.get(col).unwrap_or(&Value::Null),
    );
    if col == "archived_at" || col == "archived" {
        let ours_archived = !o.is_null() && o != &Value::Bool(false);
        return ours_archived.then_some(Explained::Propagation);
    }
    if col == "crew_type" && o.as_str() == Some("Unknown") {
        return Some(Explained::CrewTypeFallback);
    }
    if table == "dim_jobsite_material" && col == "jobsite_id" {
        return Some(Explained::JobsiteMaterialJobsite);
    }
    if table == "fact_trucking" && matches!(col, "hours" | "total_cost" | "rate_type") {
        return Some(Explained::TruckingQuantity);
    }
    if col.ends_with("_date") || col == "date" {
        return one_day_apart(l, o).then_some(Explained::CalendarDates);
    }
    if let (Some(a), Some(b)) = (number(l), number(o)) {
        if is_money(col) {
            return Some(if (a - b).abs() <= 0.01 {
                Explained::ExactDecimals
            } else {
                Explained::Propagation
            });
        }
        return None;
    }
    if is_money(col) || col == "estimated" || col == "delivered_rate_id" {
        return Some(Explained::Propagation);
    }
    match (l, o) {
        (Value::String(s), Value::Null) if s.is_empty() => Some(Explained::NullsAndDefaults),
        (Value::Null, Value::String(s)) if DEFAULTS.contains(&s.as_str()) => {
            Some(Explained::NullsAndDefaults)
        }
        _ => None,
    }
}

fn is_money(col: &str) -> bool {
    col.contains("rate") || col.contains("cost") || col == "amount"
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn one_day_apart(a: &Value, b: &Value) -> bool {
    let day = |v: &Value| {
        v.as_str()
            .and_then(|s| chrono::NaiveDate::parse_from_str(s.get(..10)?, "%Y-%m-%d").ok())
    };
    match (day(a), day(b)) {
        (Some(x), Some(y)) => (x - y).num_days().abs() == 1,
        _ => false,
    }
}

impl fmt::Display for LegacyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "legacy database against ours: {} differences explained, {} unexplained",
            self.explained_total(),
            self.unexplained
        )?;
        writeln!(
            f,
            "{:<28} {:>9} {:>9} {:>9} {:>11}  explained by (README \"Differences from the legacy sync\")",
            "table", "legacy", "ours", "same", "unexplained"
        )?;
        for t in &self.tables {
            let why = t
                .explained
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect::<Vec<_>>()
                .join("; ");
            writeln!(
                f,
                "{:<28} {:>9} {:>9} {:>9} {:>11}  {why}",
                t.table, t.legacy_rows, t.our_rows, t.same, t.unexplained
            )?;
            for r in &t.rows {
                writeln!(
                    f,
                    "  unexplained {:?} {} {} (columns: {})",
                    r.side,
                    t.table,
                    r.key,
                    r.columns.join(", ")
                )?;
            }
        }
        Ok(())
    }
}
