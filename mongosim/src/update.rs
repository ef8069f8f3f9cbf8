//! Update documents: replacement and the operators `$set`, `$setOnInsert`, `$unset`, `$inc`,
//! `$mul`, `$min`, `$max`, `$push` (`$each`), `$pull`, `$addToSet` (`$each`), `$pop`,
//! `$rename`, `$currentDate`, on dotted paths.

use bson::{Bson, Document};

use crate::filter;
use crate::order::{as_f64, bson_eq, cmp_bson};

/// An update the simulator rejects, with MongoDB's code.
#[derive(Debug)]
pub struct UpdateError {
    pub code: i32,
    pub msg: String,
}

fn err(code: i32, msg: impl Into<String>) -> UpdateError {
    UpdateError {
        code,
        msg: msg.into(),
    }
}

/// What changed, for a change event's `updateDescription`.
#[derive(Debug, Default, Clone)]
pub struct UpdateDesc {
    pub updated: Vec<String>,
    pub removed: Vec<String>,
}

impl UpdateDesc {
    /// `{updatedFields, removedFields, truncatedArrays}` against the post-image.
    pub fn to_doc(&self, after: &Document) -> Document {
        let mut updated = Document::new();
        for p in &self.updated {
            if let Some(v) = get_path(after, p) {
                updated.insert(p.clone(), v.clone());
            }
        }
        let removed: Vec<Bson> = self.removed.iter().cloned().map(Bson::String).collect();
        bson::doc! {"updatedFields": updated, "removedFields": removed, "truncatedArrays": []}
    }
}

/// True when `u` is a replacement document rather than operators.
pub fn is_replacement(u: &Document) -> bool {
    !u.keys().next().is_some_and(|k| k.starts_with('$'))
}

/// The value at a dotted path (numeric parts index arrays), without array fan-out.
pub fn get_path<'a>(doc: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut cur: Option<&Bson> = None;
    for (i, part) in path.split('.').enumerate() {
        cur = if i == 0 {
            doc.get(part)
        } else {
            match cur? {
                Bson::Document(d) => d.get(part),
                Bson::Array(a) => a.get(part.parse::<usize>().ok()?),
                _ => None,
            }
        };
    }
    cur
}

fn slot<'a>(
    doc: &'a mut Document,
    path: &str,
    create: bool,
) -> Result<Option<&'a mut Bson>, UpdateError> {
    let parts: Vec<&str> = path.split('.').collect();
    let n = parts.len();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(err(
            56,
            format!("An empty update path is not valid: '{path}'"),
        ));
    }
    if !doc.contains_key(parts[0]) {
        if !create {
            return Ok(None);
        }
        let init = if n == 1 {
            Bson::Null
        } else {
            Bson::Document(Document::new())
        };
        doc.insert(parts[0], init);
    }
    let Some(mut cur) = doc.get_mut(parts[0]) else {
        return Ok(None);
    };
    for (i, part) in parts.iter().enumerate().skip(1) {
        let is_last = i == n - 1;
        cur = match cur {
            Bson::Document(d) => {
                if !d.contains_key(*part) {
                    if !create {
                        return Ok(None);
                    }
                    let init = if is_last {
                        Bson::Null
                    } else {
                        Bson::Document(Document::new())
                    };
                    d.insert(*part, init);
                }
                match d.get_mut(*part) {
                    Some(v) => v,
                    None => return Ok(None),
                }
            }
            Bson::Array(a) => {
                let Ok(idx) = part.parse::<usize>() else {
                    return Err(err(
                        28,
                        format!("Cannot use the part ({part}) of ({path}) to traverse the element"),
                    ));
                };
                if idx >= a.len() {
                    if idx > 1_500_000 {
                        return Err(err(
                            2,
                            format!(
                                "can't backfill array to larger than 1500000 elements: '{path}'"
                            ),
                        ));
                    }
                    if !create {
                        return Ok(None);
                    }
                    a.resize(idx + 1, Bson::Null);
                    if !is_last {
                        a[idx] = Bson::Document(Document::new());
                    }
                }
                &mut a[idx]
            }
            _ => {
                if !create {
                    return Ok(None);
                }
                return Err(err(
                    28,
                    format!("Cannot create field '{part}' in path '{path}'"),
                ));
            }
        };
    }
    Ok(Some(cur))
}

fn set_path(doc: &mut Document, path: &str, v: Bson) -> Result<(), UpdateError> {
    if let Some(s) = slot(doc, path, true)? {
        *s = v;
    }
    Ok(())
}

fn unset_path(doc: &mut Document, path: &str) -> bool {
    match path.rsplit_once('.') {
        None => doc.remove(path).is_some(),
        Some((parent, last)) => match slot(doc, parent, false) {
            Ok(Some(Bson::Document(d))) => d.remove(last).is_some(),
            Ok(Some(Bson::Array(a))) => match last.parse::<usize>() {
                Ok(i) if i < a.len() => {
                    a[i] = Bson::Null;
                    true
                }
                _ => false,
            },
            _ => false,
        },
    }
}

fn add_numbers(a: &Bson, b: &Bson, mul: bool) -> Option<Bson> {
    Some(match (a, b) {
        (Bson::Int32(x), Bson::Int32(y)) => {
            let r = if mul {
                x.checked_mul(*y)
            } else {
                x.checked_add(*y)
            };
            match r {
                Some(r) => Bson::Int32(r),
                None => Bson::Int64(if mul {
                    *x as i64 * *y as i64
                } else {
                    *x as i64 + *y as i64
                }),
            }
        }
        (Bson::Int32(_) | Bson::Int64(_), Bson::Int32(_) | Bson::Int64(_)) => {
            let x = if let Bson::Int32(v) = a {
                *v as i64
            } else if let Bson::Int64(v) = a {
                *v
            } else {
                0
            };
            let y = if let Bson::Int32(v) = b {
                *v as i64
            } else if let Bson::Int64(v) = b {
                *v
            } else {
                0
            };
            Bson::Int64(if mul {
                x.wrapping_mul(y)
            } else {
                x.wrapping_add(y)
            })
        }
        _ => {
            let (x, y) = (as_f64(a)?, as_f64(b)?);
            Bson::Double(if mul { x * y } else { x + y })
        }
    })
}

fn each_values(arg: &Bson) -> Vec<Bson> {
    match arg {
        Bson::Document(d) if d.contains_key("$each") => match d.get("$each") {
            Some(Bson::Array(a)) => a.clone(),
            _ => vec![],
        },
        other => vec![other.clone()],
    }
}

fn array_at<'a>(
    doc: &'a mut Document,
    path: &str,
    op: &str,
) -> Result<&'a mut Vec<Bson>, UpdateError> {
    let s = slot(doc, path, true)?.ok_or_else(|| err(2, "path"))?;
    if matches!(s, Bson::Null) {
        *s = Bson::Array(vec![]);
    }
    match s {
        Bson::Array(a) => Ok(a),
        _ => Err(err(
            2,
            format!("The field '{path}' must be an array but is of another type ({op})"),
        )),
    }
}

/// Apply an operator update in place. `inserting` enables `$setOnInsert`.
pub fn apply_ops(
    doc: &mut Document,
    update: &Document,
    inserting: bool,
) -> Result<UpdateDesc, UpdateError> {
    let mut desc = UpdateDesc::default();
    for (op, fields) in update {
        let Bson::Document(fields) = fields else {
            return Err(err(
                9,
                format!("Modifiers operate on fields but we found type {fields:?} instead"),
            ));
        };
        for (path, arg) in fields {
            if (path == "_id" || path.starts_with("_id.")) && (op != "$setOnInsert" || !inserting) {
                if op == "$set" && get_path(doc, path).is_some_and(|v| bson_eq(v, arg)) {
                    continue;
                }
                return Err(err(
                    66,
                    "Performing an update on the path '_id' would modify the immutable field '_id'",
                ));
            }
            let mut touched = true;
            match op.as_str() {
                "$set" => set_path(doc, path, arg.clone())?,
                "$setOnInsert" => {
                    if inserting {
                        set_path(doc, path, arg.clone())?
                    } else {
                        touched = false
                    }
                }
                "$unset" => {
                    if unset_path(doc, path) {
                        desc.removed.push(path.clone());
                    }
                    touched = false;
                }
                "$inc" | "$mul" => {
                    let cur = get_path(doc, path).cloned();
                    let base = match (&cur, op.as_str()) {
                        (Some(v), _) => v.clone(),
                        (None, "$mul") => match arg {
                            Bson::Double(_) => Bson::Double(0.0),
                            Bson::Int64(_) => Bson::Int64(0),
                            _ => Bson::Int32(0),
                        },
                        (None, _) => match arg {
                            Bson::Double(_) => Bson::Double(0.0),
                            Bson::Int64(_) => Bson::Int64(0),
                            _ => Bson::Int32(0),
                        },
                    };
                    let v = add_numbers(&base, arg, op == "$mul").ok_or_else(|| {
                        err(
                            14,
                            format!("Cannot apply {op} to a value of non-numeric type at '{path}'"),
                        )
                    })?;
                    set_path(doc, path, v)?;
                }
                "$min" | "$max" => {
                    let replace = match get_path(doc, path) {
                        None => true,
                        Some(cur) => {
                            let o = cmp_bson(arg, cur);
                            if op == "$min" { o.is_lt() } else { o.is_gt() }
                        }
                    };
                    if replace {
                        set_path(doc, path, arg.clone())?
                    } else {
                        touched = false
                    }
                }
                "$currentDate" => set_path(doc, path, Bson::DateTime(bson::DateTime::now()))?,
                "$push" => {
                    let vals = each_values(arg);
                    array_at(doc, path, op)?.extend(vals);
                }
                "$addToSet" => {
                    let vals = each_values(arg);
                    let a = array_at(doc, path, op)?;
                    for v in vals {
                        if !a.iter().any(|e| bson_eq(e, &v)) {
                            a.push(v);
                        }
                    }
                }
                "$pull" => {
                    if get_path(doc, path).is_none() {
                        touched = false;
                    } else {
                        let a = array_at(doc, path, op)?;
                        let mut keep = Vec::with_capacity(a.len());
                        for e in a.drain(..) {
                            if !pull_matches(&e, arg)? {
                                keep.push(e);
                            }
                        }
                        *a = keep;
                    }
                }
                "$pop" => {
                    if get_path(doc, path).is_some() {
                        let a = array_at(doc, path, op)?;
                        if as_f64(arg).unwrap_or(1.0) < 0.0 {
                            if !a.is_empty() {
                                a.remove(0);
                            }
                        } else {
                            a.pop();
                        }
                    }
                }
                "$rename" => {
                    let Bson::String(to) = arg else {
                        return Err(err(2, "$rename target must be a string"));
                    };
                    if let Some(v) = get_path(doc, path).cloned() {
                        unset_path(doc, path);
                        desc.removed.push(path.clone());
                        set_path(doc, to, v)?;
                        desc.updated.push(to.clone());
                    }
                    touched = false;
                }
                other => return Err(err(9, format!("Unknown modifier: {other}"))),
            }
            if touched {
                desc.updated.push(path.clone());
            }
        }
    }
    Ok(desc)
}

fn pull_matches(e: &Bson, cond: &Bson) -> Result<bool, UpdateError> {
    match cond {
        Bson::Document(c) if c.keys().next().is_some_and(|k| k.starts_with('$')) => {
            let wrapped = bson::doc! {"v": e.clone()};
            filter::matches(&wrapped, &bson::doc! {"v": c.clone()}).map_err(|e| err(2, e.0))
        }
        Bson::Document(c) => match e {
            Bson::Document(d) => filter::matches(d, c).map_err(|e| err(2, e.0)),
            _ => Ok(false),
        },
        other => Ok(bson_eq(e, other)),
    }
}

/// Replace `doc` with `replacement`, keeping `_id` first and unchanged.
pub fn replace(doc: &Document, replacement: &Document) -> Result<Document, UpdateError> {
    let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
    if let Some(new_id) = replacement.get("_id")
        && !bson_eq(new_id, &id)
    {
        return Err(err(
            66,
            "After applying the update, the (immutable) field '_id' was found to have been altered",
        ));
    }
    let mut out = Document::new();
    out.insert("_id", id);
    for (k, v) in replacement {
        if k != "_id" {
            out.insert(k.clone(), v.clone());
        }
    }
    Ok(out)
}

/// The seed document of an upsert: equality fields of the filter.
pub fn upsert_seed(filter: &Document) -> Document {
    let mut out = Document::new();
    for (k, v) in filter {
        if k.starts_with('$') {
            if k == "$and"
                && let Bson::Array(a) = v
            {
                for f in a {
                    if let Bson::Document(f) = f {
                        for (k2, v2) in upsert_seed(f) {
                            out.insert(k2, v2);
                        }
                    }
                }
            }
            continue;
        }
        let val = match v {
            Bson::Document(d) if d.keys().next().is_some_and(|x| x.starts_with('$')) => {
                match d.get("$eq") {
                    Some(e) => e.clone(),
                    None => continue,
                }
            }
            other => other.clone(),
        };
        let _ = set_path(&mut out, k, val);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn operators() {
        let mut d = doc! {"_id": 1, "n": 1, "tags": ["a"], "sub": {"x": 1}};
        let desc = apply_ops(
            &mut d,
            &doc! {"$set": {"sub.y": 2}, "$inc": {"n": 2}, "$push": {"tags": "b"},
            "$addToSet": {"tags": {"$each": ["a", "c"]}}, "$unset": {"sub.x": ""}},
            false,
        )
        .unwrap();
        assert_eq!(
            d,
            doc! {"_id": 1, "n": 3, "tags": ["a", "b", "c"], "sub": {"y": 2}}
        );
        assert_eq!(desc.removed, vec!["sub.x".to_string()]);
        apply_ops(
            &mut d,
            &doc! {"$pull": {"tags": {"$in": ["a", "c"]}}},
            false,
        )
        .unwrap();
        assert_eq!(
            d.get_array("tags").unwrap(),
            &vec![Bson::String("b".into())]
        );
    }
}
