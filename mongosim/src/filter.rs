//! Query filters: equality (with array membership), comparison operators, `$in`/`$nin`,
//! `$exists`, `$and`/`$or`/`$nor`, `$not`, `$size`, `$elemMatch`, implicit AND, dotted paths.

use std::cmp::Ordering;

use bson::{Bson, Document};

use crate::order::{bson_eq, cmp_bson, type_class};

/// A filter the simulator cannot evaluate (reported as BadValue, code 2).
#[derive(Debug)]
pub struct FilterError(pub String);

/// The values found at a dotted path, descending into arrays as MongoDB does.
/// Missing paths yield nothing.
pub fn values_at<'a>(doc: &'a Document, path: &str) -> Vec<&'a Bson> {
    let mut out = Vec::new();
    let parts: Vec<&str> = path.split('.').collect();
    if let Some(v) = doc.get(parts[0]) {
        descend(v, &parts[1..], &mut out);
    }
    out
}

fn descend<'a>(v: &'a Bson, rest: &[&str], out: &mut Vec<&'a Bson>) {
    if rest.is_empty() {
        out.push(v);
        return;
    }
    match v {
        Bson::Document(d) => {
            if let Some(n) = d.get(rest[0]) {
                descend(n, &rest[1..], out);
            }
        }
        Bson::Array(a) => {
            if let Ok(i) = rest[0].parse::<usize>()
                && let Some(n) = a.get(i)
            {
                descend(n, &rest[1..], out);
            }
            for e in a {
                if let Bson::Document(d) = e
                    && let Some(n) = d.get(rest[0])
                {
                    descend(n, &rest[1..], out);
                }
            }
        }
        _ => {}
    }
}

/// Does `doc` match `filter`?
pub fn matches(doc: &Document, filter: &Document) -> Result<bool, FilterError> {
    for (k, cond) in filter {
        if !match_clause(doc, k, cond)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn sub_filters(cond: &Bson, op: &str) -> Result<Vec<Document>, FilterError> {
    match cond {
        Bson::Array(a) if !a.is_empty() => a
            .iter()
            .map(|f| match f {
                Bson::Document(d) => Ok(d.clone()),
                _ => Err(FilterError(format!("{op} entries must be objects"))),
            })
            .collect(),
        _ => Err(FilterError(format!("{op} must be a nonempty array"))),
    }
}

fn match_clause(doc: &Document, key: &str, cond: &Bson) -> Result<bool, FilterError> {
    match key {
        "$and" => {
            for f in sub_filters(cond, key)? {
                if !matches(doc, &f)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        "$or" => {
            for f in sub_filters(cond, key)? {
                if matches(doc, &f)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        "$nor" => {
            for f in sub_filters(cond, key)? {
                if matches(doc, &f)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        "$comment" => Ok(true),
        k if k.starts_with('$') => Err(FilterError(format!("unknown top level operator: {k}"))),
        path => {
            let vals = values_at(doc, path);
            match cond {
                Bson::Document(ops) if is_operator_doc(ops) => {
                    for (op, arg) in ops {
                        if !match_op(&vals, op, arg, ops)? {
                            return Ok(false);
                        }
                    }
                    Ok(true)
                }
                other => Ok(eq_match(&vals, other)),
            }
        }
    }
}

fn is_operator_doc(d: &Document) -> bool {
    d.keys().next().is_some_and(|k| k.starts_with('$'))
}

/// Equality: a value equals, or an array value contains, the operand; null matches missing.
fn eq_match(vals: &[&Bson], want: &Bson) -> bool {
    if vals.is_empty() {
        return matches!(want, Bson::Null);
    }
    vals.iter().any(|v| {
        bson_eq(v, want) || matches!(v, Bson::Array(a) if a.iter().any(|e| bson_eq(e, want)))
    })
}

/// Comparison within the same type class only (MongoDB's type bracketing).
fn cmp_match(vals: &[&Bson], want: &Bson, ok: fn(Ordering) -> bool) -> bool {
    let test = |v: &Bson| type_class(v) == type_class(want) && ok(cmp_bson(v, want));
    if vals.is_empty() {
        return matches!(want, Bson::Null) && ok(Ordering::Equal);
    }
    vals.iter()
        .any(|v| test(v) || matches!(v, Bson::Array(a) if a.iter().any(test)))
}

fn match_op(vals: &[&Bson], op: &str, arg: &Bson, all: &Document) -> Result<bool, FilterError> {
    Ok(match op {
        "$eq" => eq_match(vals, arg),
        "$ne" => !eq_match(vals, arg),
        "$gt" => cmp_match(vals, arg, |o| o == Ordering::Greater),
        "$gte" => cmp_match(vals, arg, |o| o != Ordering::Less),
        "$lt" => cmp_match(vals, arg, |o| o == Ordering::Less),
        "$lte" => cmp_match(vals, arg, |o| o != Ordering::Greater),
        "$in" | "$nin" => {
            let Bson::Array(opts) = arg else {
                return Err(FilterError(format!("{op} needs an array")));
            };
            let hit = opts.iter().any(|w| eq_match(vals, w));
            if op == "$in" { hit } else { !hit }
        }
        "$exists" => {
            let want = match arg {
                Bson::Boolean(b) => *b,
                other => crate::order::as_f64(other).is_some_and(|n| n != 0.0),
            };
            want != vals.is_empty()
        }
        "$size" => {
            let n = crate::order::as_f64(arg).unwrap_or(-1.0);
            vals.iter()
                .any(|v| matches!(v, Bson::Array(a) if a.len() as f64 == n))
        }
        "$not" => match arg {
            Bson::Document(ops) => {
                let mut all_ok = true;
                for (o, a) in ops {
                    all_ok &= match_op(vals, o, a, ops)?;
                }
                !all_ok
            }
            _ => return Err(FilterError("$not needs an object".into())),
        },
        "$elemMatch" => {
            let Bson::Document(f) = arg else {
                return Err(FilterError("$elemMatch needs an object".into()));
            };
            let mut hit = false;
            for v in vals {
                if let Bson::Array(a) = v {
                    for e in a {
                        hit |= match e {
                            Bson::Document(d) if !is_operator_doc(f) => matches(d, f)?,
                            other => {
                                let mut ok = true;
                                for (o, a2) in f {
                                    ok &= match_op(&[other], o, a2, f)?;
                                }
                                ok
                            }
                        };
                    }
                }
            }
            hit
        }
        "$type" => {
            let names: Vec<&Bson> = match arg {
                Bson::Array(a) => a.iter().collect(),
                o => vec![o],
            };
            vals.iter()
                .any(|v| names.iter().any(|n| type_matches(v, n)))
        }
        "$options" if all.contains_key("$regex") => true,
        "$regex" => {
            return Err(FilterError(
                "$regex is not supported by the simulator".into(),
            ));
        }
        other => return Err(FilterError(format!("unknown operator: {other}"))),
    })
}

/// `$type`: every BSON type by alias or number, and `"number"` for the numeric ones.
fn type_matches(v: &Bson, name: &Bson) -> bool {
    let t = match v {
        Bson::Double(_) => ("double", 1),
        Bson::String(_) => ("string", 2),
        Bson::Document(_) => ("object", 3),
        Bson::Array(_) => ("array", 4),
        Bson::Binary(_) => ("binData", 5),
        Bson::Undefined => ("undefined", 6),
        Bson::ObjectId(_) => ("objectId", 7),
        Bson::Boolean(_) => ("bool", 8),
        Bson::DateTime(_) => ("date", 9),
        Bson::Null => ("null", 10),
        Bson::RegularExpression(_) => ("regex", 11),
        Bson::DbPointer(_) => ("dbPointer", 12),
        Bson::JavaScriptCode(_) => ("javascript", 13),
        Bson::Symbol(_) => ("symbol", 14),
        Bson::JavaScriptCodeWithScope(_) => ("javascriptWithScope", 15),
        Bson::Int32(_) => ("int", 16),
        Bson::Timestamp(_) => ("timestamp", 17),
        Bson::Int64(_) => ("long", 18),
        Bson::Decimal128(_) => ("decimal", 19),
        Bson::MinKey => ("minKey", -1),
        Bson::MaxKey => ("maxKey", 127),
    };
    match name {
        Bson::String(s) => s == t.0 || (s == "number" && type_class(v) == 10),
        n => crate::order::as_f64(n).is_some_and(|x| x as i32 == t.1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, oid::ObjectId};

    #[test]
    fn array_membership_and_ranges() {
        let oid = ObjectId::new();
        let d = doc! {"_id": 5, "employeeWork": [ObjectId::new(), oid], "a": {"b": 3}};
        assert!(matches(&d, &doc! {"employeeWork": oid}).unwrap());
        assert!(matches(&d, &doc! {"_id": {"$gt": 2, "$lte": 9}}).unwrap());
        assert!(!matches(&d, &doc! {"_id": {"$gt": "a"}}).unwrap());
        assert!(matches(&d, &doc! {"a.b": {"$in": [1, 3]}}).unwrap());
        assert!(matches(&d, &doc! {"missing": null}).unwrap());
        assert!(matches(&d, &doc! {"$or": [{"x": 1}, {"a.b": 3.0}]}).unwrap());
        assert!(!matches(&d, &doc! {"a.b": {"$exists": false}}).unwrap());
    }

    #[test]
    fn comparisons_bracket_by_type_and_type_names_reach_past_them() {
        let oid = ObjectId::new();
        // `$gt` on a number matches numbers only, whatever their BSON type.
        assert!(matches(&doc! {"_id": 7_i64}, &doc! {"_id": {"$gt": 2.5}}).unwrap());
        assert!(!matches(&doc! {"_id": "7"}, &doc! {"_id": {"$gt": 2}}).unwrap());
        assert!(!matches(&doc! {"_id": oid}, &doc! {"_id": {"$gt": "z"}}).unwrap());
        // The later type classes, by name, as a scan in `_id` order asks for them.
        let later = doc! {"$or": [{"_id": {"$gt": "b"}}, {"_id": {"$type": ["objectId", "bool", "maxKey"]}}]};
        assert!(matches(&doc! {"_id": "c"}, &later).unwrap());
        assert!(matches(&doc! {"_id": oid}, &later).unwrap());
        assert!(matches(&doc! {"_id": Bson::MaxKey}, &later).unwrap());
        assert!(!matches(&doc! {"_id": "a"}, &later).unwrap());
        assert!(!matches(&doc! {"_id": 9}, &later).unwrap());
        assert!(
            matches(
                &doc! {"_id": Bson::Symbol("s".into())},
                &doc! {"_id": {"$type": "symbol"}}
            )
            .unwrap()
        );
    }
}
