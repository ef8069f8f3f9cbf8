//! What a valid MongoDB document can hold but the mirror's `jsonb` cannot, made storable before
//! the document enters the mirror (a total projection: docs/projection.md).
//!
//! - `\u0000` in a string or a field name (PostgreSQL text cannot hold it): removed;
//! - a double or Decimal128 NaN or ±Infinity: `null` (counts as missing, as the legacy's
//!   `value || null` did);
//! - a date PostgreSQL cannot hold (before 4713 BC, after 294276 AD): `null`.
//!
//! Each change is reported with the top-level field it was found under, never the value.

use serde_json::Value;

/// Milliseconds since the epoch that PostgreSQL's `timestamptz` holds (4713 BC to 294276 AD).
const PG_MIN_MS: i64 = -210_866_803_200_000;
const PG_MAX_MS: i64 = 9_224_318_015_999_000;

/// One change made to a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adjustment {
    /// The document's top-level field holding the value.
    pub field: String,
    /// `nul_removed`, `not_finite` or `date_out_of_range`.
    pub kind: &'static str,
    /// Characters of the original text (for `nul_removed`).
    pub original_length: Option<usize>,
}

/// Make the document storable; returns what changed.
pub(crate) fn sanitize(doc: &mut Value) -> Vec<Adjustment> {
    let mut out = Vec::new();
    if let Value::Object(o) = doc {
        let fields: Vec<String> = o.keys().cloned().collect();
        for k in fields {
            let Some(mut v) = o.remove(&k) else { continue };
            let name = if k.contains('\0') {
                let clean = k.replace('\0', "");
                out.push(Adjustment {
                    field: clean.clone(),
                    kind: "nul_removed",
                    original_length: Some(k.chars().count()),
                });
                clean
            } else {
                k
            };
            walk(&mut v, &name, &mut out);
            o.insert(name, v);
        }
    } else {
        walk(doc, "", &mut out);
    }
    out
}

fn walk(v: &mut Value, field: &str, out: &mut Vec<Adjustment>) {
    match v {
        Value::String(s) if s.contains('\0') => {
            out.push(Adjustment {
                field: field.to_string(),
                kind: "nul_removed",
                original_length: Some(s.chars().count()),
            });
            s.retain(|c| c != '\0');
        }
        Value::Array(a) => a.iter_mut().for_each(|e| walk(e, field, out)),
        Value::Object(o) => {
            if let Some(kind) = special(o) {
                out.push(Adjustment {
                    field: field.to_string(),
                    kind,
                    original_length: None,
                });
                *v = Value::Null;
                return;
            }
            if o.keys().any(|k| k.contains('\0')) {
                let taken = std::mem::take(o);
                for (k, e) in taken {
                    if k.contains('\0') {
                        out.push(Adjustment {
                            field: field.to_string(),
                            kind: "nul_removed",
                            original_length: Some(k.chars().count()),
                        });
                    }
                    o.insert(k.replace('\0', ""), e);
                }
            }
            o.values_mut().for_each(|e| walk(e, field, out));
        }
        _ => {}
    }
}

/// An extended-JSON value the mirror cannot use: a non-finite number or an unstorable date.
fn special(o: &serde_json::Map<String, Value>) -> Option<&'static str> {
    if o.len() != 1 {
        return None;
    }
    let (k, v) = o.iter().next()?;
    match (k.as_str(), v) {
        ("$numberDouble" | "$numberDecimal", Value::String(s)) => {
            let s = s.trim_start_matches(['-', '+']);
            (s.eq_ignore_ascii_case("nan")
                || s.eq_ignore_ascii_case("infinity")
                || s.eq_ignore_ascii_case("inf"))
            .then_some("not_finite")
        }
        ("$date", Value::Object(d)) => match d.get("$numberLong") {
            Some(Value::String(ms)) => match ms.parse::<i64>() {
                Ok(ms) if (PG_MIN_MS..=PG_MAX_MS).contains(&ms) => None,
                _ => Some("date_out_of_range"),
            },
            _ => None,
        },
        ("$date", Value::Number(n)) => match n.as_i64() {
            Some(ms) if (PG_MIN_MS..=PG_MAX_MS).contains(&ms) => None,
            _ => Some("date_out_of_range"),
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn clean_documents_are_left_alone() {
        let mut d = json!({"name": "x", "rates": [{"rate": 1.5, "date": {"$date": "2022-01-01T00:00:00Z"}}],
                           "q": {"$numberDecimal": "12.50"}, "old": {"$date": {"$numberLong": "-1000"}}});
        let before = d.clone();
        assert!(sanitize(&mut d).is_empty());
        assert_eq!(d, before);
    }

    #[test]
    fn nul_non_finite_numbers_and_unstorable_dates_are_made_storable() {
        let mut d = json!({
            "jobTitle": "Lab\u{0}our",
            "rates": [{"rate": {"$numberDouble": "NaN"}}, {"rate": {"$numberDouble": "-Infinity"}}],
            "cost": {"$numberDecimal": "Infinity"},
            "date": {"$date": {"$numberLong": "9223372036854775807"}},
            "a\u{0}b": 1
        });
        let adj = sanitize(&mut d);
        assert_eq!(
            d,
            json!({"jobTitle": "Labour", "rates": [{"rate": null}, {"rate": null}],
                   "cost": null, "date": null, "ab": 1})
        );
        let kinds: Vec<(&str, &str)> = adj.iter().map(|a| (a.field.as_str(), a.kind)).collect();
        assert!(kinds.contains(&("jobTitle", "nul_removed")));
        assert!(kinds.contains(&("rates", "not_finite")));
        assert!(kinds.contains(&("cost", "not_finite")));
        assert!(kinds.contains(&("date", "date_out_of_range")));
        assert!(kinds.contains(&("ab", "nul_removed")));
        let title = adj
            .iter()
            .find(|a| a.field == "jobTitle")
            .expect("jobTitle adjusted");
        assert_eq!(title.original_length, Some(7));
    }
}
