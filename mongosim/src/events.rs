//! Change events as a server shapes them from oplog entries: the common fields, images
//! (`fullDocument` default / updateLookup / whenAvailable / required, and
//! `fullDocumentBeforeChange` off / whenAvailable / required, honouring the collection's
//! `changeStreamPreAndPostImages` at write time), and with `showExpandedEvents`: DDL
//! events, `collectionUUID`, `operationDescription` and `updateDescription.disambiguatedPaths`.

use bson::{Bson, Document, doc};

use crate::oplog::{Entry, Op, append_raw, encode, token};
use crate::state::{CmdError, State};
use crate::streams::StreamCursor;

fn image_missing(which: &str, e: &Entry) -> CmdError {
    CmdError::new(
        47,
        format!(
            "Change stream was configured to require a {which}-image for all update, delete and replace events, but the {which}-image was not found for event: {{operationType: \"{}\", ns: {{db: \"{}\", coll: \"{}\"}}}}",
            e.op.name(),
            e.db,
            e.coll
        ),
    )
}

/// One event as encoded BSON. The images are spliced in as raw bytes (no re-encoding).
pub fn event(state: &State, cur: &StreamCursor, e: &Entry) -> Result<Vec<u8>, CmdError> {
    let mut ev = doc! {
        "_id": with_type_bits(state, token(e.seq, false), e.seq),
        "operationType": e.op.name(),
        "clusterTime": e.ts,
        "wallTime": e.wall,
    };
    if cur.expanded
        && e.op != Op::DropDatabase
        && let Some(u) = &e.uuid
    {
        ev.insert("collectionUUID", u.clone());
    }
    if e.op == Op::DropDatabase {
        ev.insert("ns", doc! {"db": &e.db});
    } else {
        ev.insert("ns", doc! {"db": &e.db, "coll": &e.coll});
    }
    if let Some((db, coll)) = &e.to {
        ev.insert("to", doc! {"db": db, "coll": coll});
    }
    if cur.expanded {
        let desc = match (&e.desc, &e.to) {
            (Some(d), _) => Some(d.clone()),
            (None, Some((db, coll))) => Some(doc! {"to": {"db": db, "coll": coll}}),
            _ => None,
        };
        if let Some(d) = desc {
            ev.insert("operationDescription", d);
        }
        if let Some(b) = &e.before_change {
            ev.insert("stateBeforeChange", b.clone());
        }
    }
    if let Some(k) = &e.key {
        ev.insert("documentKey", doc! {"_id": k.clone()});
    }
    if let Some(u) = &e.upd {
        let mut u = u.clone();
        if cur.expanded {
            let paths = disambiguated_paths(&u, e.doc.as_deref(), e.pre.as_deref());
            u.insert("disambiguatedPaths", paths);
        }
        ev.insert("updateDescription", u);
    }
    if let Some((lsid, n)) = &e.txn {
        ev.insert("txnNumber", Bson::Int64(*n));
        ev.insert("lsid", lsid.clone());
    }
    let mut out = encode(&ev);
    match e.op {
        Op::Insert | Op::Replace => append_raw(&mut out, "fullDocument", 3, e.doc.as_deref()),
        Op::Update => match cur.full_document.as_str() {
            "updateLookup" => {
                let now = e.key.as_ref().and_then(|k| {
                    state
                        .coll(&e.db, &e.coll)
                        .and_then(|c| c.docs.get(&crate::order::Key(k.clone())))
                        .map(encode)
                });
                append_raw(&mut out, "fullDocument", 3, now.as_deref());
            }
            "whenAvailable" => {
                let post = e.doc.as_deref().filter(|_| e.images);
                append_raw(&mut out, "fullDocument", 3, post)
            }
            "required" => match e.doc.as_deref().filter(|_| e.images) {
                Some(post) => append_raw(&mut out, "fullDocument", 3, Some(post)),
                None => return Err(image_missing("post", e)),
            },
            _ => {}
        },
        _ => {}
    }
    if matches!(e.op, Op::Update | Op::Replace | Op::Delete) {
        let pre = e.pre.as_deref().filter(|_| e.images);
        match cur.before_change.as_str() {
            "whenAvailable" => append_raw(&mut out, "fullDocumentBeforeChange", 3, pre),
            "required" => match pre {
                Some(p) => append_raw(&mut out, "fullDocumentBeforeChange", 3, Some(p)),
                None => return Err(image_missing("pre", e)),
            },
            _ => {}
        }
    }
    Ok(out)
}

pub fn invalidate_event(state: &State, e: &Entry) -> Document {
    doc! {
        "_id": with_type_bits(state, token(e.seq, true), e.seq),
        "operationType": "invalidate",
        "clusterTime": e.ts,
        "wallTime": e.wall,
    }
}

/// With `SimConfig::token_type_bits`, odd positions carry `_typeBits` as real tokens
/// sometimes do, so a consumer that keeps only `_data` is caught.
pub fn with_type_bits(state: &State, mut t: Document, seq: u64) -> Document {
    if state.config.token_type_bits && seq % 2 == 1 {
        t.insert(
            "_typeBits",
            bson::Binary {
                subtype: bson::spec::BinarySubtype::Generic,
                bytes: vec![0x40],
            },
        );
    }
    t
}

/// The components of `path` in `doc`: array indexes as Int32, field names as strings.
/// `None` when the path is not ambiguous (no numeric field name).
fn components(doc: Option<&Document>, path: &str) -> Option<Vec<Bson>> {
    let mut cur = doc.map(|d| Bson::Document(d.clone()));
    let mut out = Vec::new();
    let mut ambiguous = false;
    for part in path.split('.') {
        let numeric = !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        match cur.take() {
            Some(Bson::Array(a)) if numeric => {
                let i: usize = part.parse().ok()?;
                out.push(Bson::Int32(i as i32));
                cur = a.get(i).cloned();
            }
            other => {
                ambiguous |= numeric;
                out.push(Bson::String(part.to_string()));
                cur = match other {
                    Some(Bson::Document(d)) => d.get(part).cloned(),
                    _ => None,
                };
            }
        }
    }
    ambiguous.then_some(out)
}

/// `disambiguatedPaths`: for each updated (post-image) or removed (pre-image) path with a
/// numeric field name, the path as an array of field names and array indexes.
fn disambiguated_paths(upd: &Document, post: Option<&[u8]>, pre: Option<&[u8]>) -> Document {
    let decode = |b: Option<&[u8]>| b.and_then(|b| Document::from_reader(b).ok());
    let (post, pre) = (decode(post), decode(pre));
    let mut out = Document::new();
    if let Ok(u) = upd.get_document("updatedFields") {
        for k in u.keys() {
            if let Some(c) = components(post.as_ref(), k) {
                out.insert(k.clone(), c);
            }
        }
    }
    if let Ok(r) = upd.get_array("removedFields") {
        for k in r.iter().filter_map(Bson::as_str) {
            if let Some(c) = components(pre.as_ref(), k) {
                out.insert(k.to_string(), c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_field_names_are_disambiguated_and_indexes_are_ints() {
        let d = doc! {"a": {"1": 2}, "b": [{"1": 3}], "c": [1, 2]};
        assert_eq!(
            components(Some(&d), "a.1"),
            Some(vec![Bson::String("a".into()), Bson::String("1".into())])
        );
        assert_eq!(
            components(Some(&d), "b.0.1"),
            Some(vec![
                Bson::String("b".into()),
                Bson::Int32(0),
                Bson::String("1".into())
            ])
        );
        assert_eq!(components(Some(&d), "c.1"), None, "an array index alone");
        assert_eq!(components(Some(&d), "a"), None);
    }
}
