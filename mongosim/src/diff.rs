//! Pipeline-style updates (`u: [{$set: ...}, ...]`) and their `updateDescription`, which a
//! server derives by comparing the document before and after: changed fields (recursing
//! into sub-documents and arrays element by element), removed fields, and arrays cut
//! shorter (`truncatedArrays: [{field, newSize}]`).

use bson::{Bson, Document, doc};

use crate::expr;
use crate::state::CmdError;

/// Apply an update pipeline (`$set`/`$addFields`, `$unset`, `$project`, `$replaceRoot`,
/// `$replaceWith`) to `before`.
pub fn pipeline_update(before: &Document, stages: &[Bson]) -> Result<Document, CmdError> {
    let mut d = before.clone();
    for s in stages {
        let Some(st) = s.as_document() else {
            return Err(CmdError::new(
                14,
                "each update pipeline stage must be an object",
            ));
        };
        match expr::reshape(&d, st)? {
            Some(next) => d = next,
            None => {
                return Err(CmdError::new(
                    72,
                    format!(
                        "{} is not allowed to be used within an update",
                        st.keys().next().map_or("", String::as_str)
                    ),
                ));
            }
        }
    }
    if d.get("_id") != before.get("_id") {
        return Err(CmdError::new(
            66,
            "Performing an update on the path '_id' would modify the immutable field '_id'",
        ));
    }
    Ok(d)
}

#[derive(Default)]
struct Delta {
    updated: Document,
    removed: Vec<Bson>,
    truncated: Vec<Bson>,
}

fn join(prefix: &str, k: &str) -> String {
    if prefix.is_empty() {
        k.to_string()
    } else {
        format!("{prefix}.{k}")
    }
}

fn diff_value(path: String, b: &Bson, a: &Bson, out: &mut Delta) {
    match (b, a) {
        _ if b == a => {}
        (Bson::Document(b), Bson::Document(a)) => diff_doc(&path, b, a, out),
        (Bson::Array(b), Bson::Array(a)) => {
            if a.len() < b.len() {
                out.truncated.push(Bson::Document(
                    doc! {"field": &path, "newSize": a.len() as i32},
                ));
            }
            for (i, av) in a.iter().enumerate() {
                let p = format!("{path}.{i}");
                match b.get(i) {
                    Some(bv) => diff_value(p, bv, av, out),
                    None => {
                        out.updated.insert(p, av.clone());
                    }
                }
            }
        }
        _ => {
            out.updated.insert(path, a.clone());
        }
    }
}

fn diff_doc(prefix: &str, b: &Document, a: &Document, out: &mut Delta) {
    for (k, av) in a {
        let path = join(prefix, k);
        match b.get(k) {
            Some(bv) => diff_value(path, bv, av, out),
            None => {
                out.updated.insert(path, av.clone());
            }
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        out.removed.push(Bson::String(join(prefix, k)));
    }
}

/// `{updatedFields, removedFields, truncatedArrays}` between two versions of a document.
pub fn describe(before: &Document, after: &Document) -> Document {
    let mut d = Delta::default();
    diff_doc("", before, after, &mut d);
    doc! {"updatedFields": d.updated, "removedFields": d.removed, "truncatedArrays": d.truncated}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shorter_array_is_truncated_not_updated() {
        let b = doc! {"_id": 1, "a": 1, "array": ["foo", {"a": "bar"}, 1, 2, 3]};
        let a = pipeline_update(
            &b,
            &[Bson::Document(
                doc! {"$set": {"array": ["foo", {"a": "bar"}]}},
            )],
        )
        .unwrap();
        assert_eq!(
            describe(&b, &a),
            doc! {"updatedFields": {}, "removedFields": [], "truncatedArrays": [{"field": "array", "newSize": 2}]}
        );
    }
}
