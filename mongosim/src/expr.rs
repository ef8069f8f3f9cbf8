//! The aggregation expressions and document reshaping used by change-stream stages and
//! pipeline-style updates: field paths (`"$a.b"`, `"$$ROOT"`), `$literal`, literals, and
//! documents and arrays of expressions; `$project` (inclusion with computed fields, or
//! exclusion), `$addFields`/`$set` and `$unset` on dotted paths.

use bson::{Bson, Document};

use crate::state::CmdError;
use crate::update::get_path;

/// Evaluate an expression against `root`; `None` is "missing".
pub fn eval(root: &Document, e: &Bson) -> Result<Option<Bson>, CmdError> {
    Ok(match e {
        Bson::String(s) if s == "$$ROOT" || s == "$$CURRENT" => Some(Bson::Document(root.clone())),
        Bson::String(s) if s.starts_with("$$") => {
            return Err(CmdError::new(
                17276,
                format!("Use of undefined variable: {}", &s[2..]),
            ));
        }
        Bson::String(s) if s.starts_with('$') => get_path(root, &s[1..]).cloned(),
        Bson::Document(d) => match d.iter().next() {
            Some((k, v)) if k == "$literal" => Some(v.clone()),
            Some((k, _)) if k.starts_with('$') => {
                return Err(CmdError::new(
                    168,
                    format!("Unrecognized expression '{k}' (not supported by the simulator)"),
                ));
            }
            _ => {
                let mut out = Document::new();
                for (k, v) in d {
                    if let Some(v) = eval(root, v)? {
                        out.insert(k.clone(), v);
                    }
                }
                Some(Bson::Document(out))
            }
        },
        Bson::Array(a) => Some(Bson::Array(
            a.iter()
                .map(|x| eval(root, x).map(|v| v.unwrap_or(Bson::Null)))
                .collect::<Result<_, _>>()?,
        )),
        other => Some(other.clone()),
    })
}

/// Set `path` (dotted) in `d`, creating sub-documents (a non-document in the way is
/// replaced, as `$addFields` does).
pub fn set_path(d: &mut Document, path: &str, v: Bson) {
    match path.split_once('.') {
        None => {
            d.insert(path, v);
        }
        Some((head, rest)) => {
            if !matches!(d.get(head), Some(Bson::Document(_))) {
                d.insert(head, Document::new());
            }
            if let Some(Bson::Document(sub)) = d.get_mut(head) {
                set_path(sub, rest, v);
            }
        }
    }
}

/// Remove `path` (dotted) from `d`, if present.
pub fn unset_path(d: &mut Document, path: &str) {
    match path.split_once('.') {
        None => {
            d.remove(path);
        }
        Some((head, rest)) => {
            if let Some(Bson::Document(sub)) = d.get_mut(head) {
                unset_path(sub, rest);
            }
        }
    }
}

fn flag(v: &Bson) -> Option<bool> {
    match v {
        Bson::Boolean(b) => Some(*b),
        Bson::Int32(n) => Some(*n != 0),
        Bson::Int64(n) => Some(*n != 0),
        Bson::Double(n) => Some(*n != 0.0),
        _ => None,
    }
}

/// Flatten a projection spec: nested plain documents become dotted paths.
fn flatten(prefix: &str, spec: &Document, out: &mut Vec<(String, Bson)>) {
    for (k, v) in spec {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Bson::Document(d) if !d.keys().next().is_some_and(|k| k.starts_with('$')) => {
                flatten(&path, d, out)
            }
            other => out.push((path, other.clone())),
        }
    }
}

/// `$project`: exclusion when every field is 0/false, otherwise inclusion plus computed
/// fields (`_id` kept unless excluded).
pub fn project(root: &Document, spec: &Document) -> Result<Document, CmdError> {
    let mut fields = Vec::new();
    flatten("", spec, &mut fields);
    let exclusion = fields.iter().all(|(_, v)| flag(v) == Some(false));
    if exclusion {
        let mut out = root.clone();
        for (p, _) in &fields {
            unset_path(&mut out, p);
        }
        return Ok(out);
    }
    if fields
        .iter()
        .any(|(p, v)| p != "_id" && flag(v) == Some(false))
    {
        return Err(CmdError::new(
            31254,
            "Invalid $project :: caused by :: Cannot do exclusion on field in inclusion projection",
        ));
    }
    let mut out = Document::new();
    let id_spec = fields.iter().find(|(p, _)| p == "_id").map(|(_, v)| v);
    if id_spec.is_none()
        && let Some(id) = root.get("_id")
    {
        out.insert("_id", id.clone());
    }
    for (p, v) in &fields {
        let val = match flag(v) {
            Some(true) => get_path(root, p).cloned(),
            Some(false) => None,
            None => eval(root, v)?,
        };
        if let Some(val) = val {
            set_path(&mut out, p, val);
        }
    }
    Ok(out)
}

/// `$addFields` / `$set`.
pub fn add_fields(root: &Document, spec: &Document) -> Result<Document, CmdError> {
    let mut fields = Vec::new();
    flatten("", spec, &mut fields);
    let mut out = root.clone();
    for (p, v) in &fields {
        match eval(root, v)? {
            Some(val) => set_path(&mut out, p, val),
            None => unset_path(&mut out, p),
        }
    }
    Ok(out)
}

/// The field list of `$unset` (a string or an array of strings).
pub fn unset_fields(spec: &Bson) -> Result<Vec<String>, CmdError> {
    match spec {
        Bson::String(s) => Ok(vec![s.clone()]),
        Bson::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(String::from)
                    .ok_or_else(|| CmdError::new(31120, "$unset specification must be a string or an array containing only string values"))
            })
            .collect(),
        _ => Err(CmdError::new(
            31002,
            "$unset specification must be a string or an array",
        )),
    }
}

/// `$replaceRoot {newRoot}` / `$replaceWith`.
pub fn replace_root(root: &Document, e: &Bson) -> Result<Document, CmdError> {
    match eval(root, e)? {
        Some(Bson::Document(d)) => Ok(d),
        other => Err(CmdError::new(
            40228,
            format!(
                "'replacement document' must evaluate to an object, but resulting value was: {}",
                other.map_or("MISSING".to_string(), |v| v.to_string())
            ),
        )),
    }
}

/// Apply one reshaping stage (`$project`, `$addFields`, `$set`, `$unset`, `$replaceRoot`,
/// `$replaceWith`). `None` when the stage is not one of them.
pub fn reshape(doc: &Document, stage: &Document) -> Result<Option<Document>, CmdError> {
    let Some((name, spec)) = stage.iter().next() else {
        return Ok(None);
    };
    let spec_doc = || {
        spec.as_document()
            .ok_or_else(|| CmdError::new(15969, format!("{name} specification must be an object")))
    };
    Ok(Some(match name.as_str() {
        "$project" => project(doc, spec_doc()?)?,
        "$addFields" | "$set" => add_fields(doc, spec_doc()?)?,
        "$unset" => {
            let mut out = doc.clone();
            for f in unset_fields(spec)? {
                unset_path(&mut out, &f);
            }
            out
        }
        "$replaceRoot" => {
            let e = spec_doc()?.get("newRoot").ok_or_else(|| {
                CmdError::new(40231, "no newRoot specified for the $replaceRoot stage")
            })?;
            replace_root(doc, e)?
        }
        "$replaceWith" => replace_root(doc, spec)?,
        _ => return Ok(None),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn projections_compute_and_nest() {
        let ev = doc! {"_id": 1, "operationType": "insert", "ns": {"db": "d", "coll": "c"}};
        let p = project(
            &ev,
            &doc! {"optype": "$operationType", "ns": 1, "newField": "value"},
        )
        .unwrap();
        assert_eq!(
            p,
            doc! {"_id": 1, "optype": "insert", "ns": {"db": "d", "coll": "c"}, "newField": "value"}
        );
        let p = project(
            &ev,
            &doc! {"operationType": "insert", "ns.viewOn": "db.coll"},
        )
        .unwrap();
        assert_eq!(p.get_document("ns").unwrap(), &doc! {"viewOn": "db.coll"});
        let p = project(
            &ev,
            &doc! {"ns": {"db": "$ns.db", "coll": "$ns.coll", "viewOn": "db.coll"}},
        )
        .unwrap();
        assert_eq!(
            p.get_document("ns").unwrap(),
            &doc! {"db": "d", "coll": "c", "viewOn": "db.coll"}
        );
        let p = project(&ev, &doc! {"_id": 0}).unwrap();
        assert!(!p.contains_key("_id") && p.contains_key("ns"));
    }
}
