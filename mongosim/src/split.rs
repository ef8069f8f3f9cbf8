//! `$changeStreamSplitLargeEvent`: an event larger than the event limit is cut into
//! fragments as a server does. Every fragment carries its own resume token (the event's
//! position plus the fragment index) and `splitEvent: {fragment, of}` (1-based); the other
//! top-level fields are ordered by (encoded size, name) and packed greedily, so the first
//! fragment holds as many fields as possible. Sub-documents are never split.

use bson::{Bson, Document, doc};

use crate::oplog::encode;
use crate::state::CmdError;

/// Room a server keeps above the user limit for its own documents (BSONObjMaxInternalSize
/// is 16 MiB + 16 KiB): an event up to `limit + INTERNAL_SLACK` bytes is still returned
/// whole when the pipeline has no split stage.
pub const INTERNAL_SLACK: usize = 16 * 1024;

pub const STAGE: &str = "$changeStreamSplitLargeEvent";

/// Validate the stage's position and spec within the stages after `$changeStream`.
/// Returns whether the pipeline ends with it.
pub fn parse(stages: &[Bson]) -> Result<bool, CmdError> {
    let mut found = false;
    for (i, s) in stages.iter().enumerate() {
        let Some(spec) = s.as_document().and_then(|d| d.get(STAGE)) else {
            continue;
        };
        if !matches!(spec, Bson::Document(d) if d.is_empty()) {
            return Err(CmdError::new(
                7182800,
                "$changeStreamSplitLargeEvent spec should be an empty object",
            ));
        }
        if i + 1 != stages.len() {
            return Err(CmdError::new(
                7182802,
                "$changeStreamSplitLargeEvent must be the last stage in the pipeline",
            ));
        }
        found = true;
    }
    Ok(found)
}

/// The error a server gives for an event too large to return (code 10334).
pub fn too_large(size: usize, limit: usize, id: &Bson) -> CmdError {
    CmdError::new(
        10334,
        format!(
            "BSONObj size: {size} (0x{size:X}) is invalid. Size must be between 0 and {limit}({}MB) First element: _id: {id}",
            limit / (1024 * 1024)
        ),
    )
}

/// Encoded size of one element `key: value`.
fn element_size(key: &str, v: &Bson) -> usize {
    let mut d = Document::new();
    d.insert(key, v.clone());
    encode(&d).len() - 5
}

/// Split the encoded event `ev` into fragments of at most `max_fragment` bytes, dropping the
/// first `skip`. `token(k)` is the resume token of fragment `k` (0-based).
pub fn split(
    ev: &[u8],
    max_fragment: usize,
    skip: usize,
    token: impl Fn(u32) -> Document,
) -> Result<Vec<Vec<u8>>, CmdError> {
    let doc = Document::from_reader(ev)
        .map_err(|e| CmdError::new(1, format!("cannot decode event: {e}")))?;
    let mut fields: Vec<(usize, String, Bson)> = doc
        .into_iter()
        .filter(|(k, _)| k != "_id")
        .map(|(k, v)| (element_size(&k, &v), k, v))
        .collect();
    if fields.is_empty() {
        return Err(CmdError::new(
            7182502,
            "Cannot split an empty event or an event containing solely '_id' field",
        ));
    }
    fields.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut frags: Vec<(Document, usize)> = Vec::new();
    let mut it = fields.into_iter().peekable();
    while it.peek().is_some() {
        let n = frags.len() as u32;
        let mut f = doc! {
            "_id": token(n),
            "splitEvent": {"fragment": n as i32 + 1, "of": 0},
        };
        let mut size = encode(&f).len();
        loop {
            let Some((sz, k, v)) = it.next() else { break };
            f.insert(k, v);
            size += sz;
            match it.peek() {
                Some((next, _, _)) if size + next <= max_fragment => {}
                _ => break,
            }
        }
        if size > max_fragment {
            return Err(CmdError::new(
                7182500,
                format!(
                    "Splitting change event failed: fragment size {size} is greater than maximum allowed fragment size {max_fragment}"
                ),
            ));
        }
        frags.push((f, size));
    }
    let total = frags.len() as i32;
    Ok(frags
        .into_iter()
        .enumerate()
        .skip(skip)
        .map(|(i, (mut f, _))| {
            f.insert("splitEvent", doc! {"fragment": i as i32 + 1, "of": total});
            encode(&f)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_packed_smallest_first_and_numbered() {
        let ev = doc! {
            "_id": {"_data": "82"},
            "operationType": "insert",
            "fullDocument": {"big": "x".repeat(300)},
            "fullDocumentBeforeChange": {"big": "y".repeat(300)},
        };
        let frags = split(&encode(&ev), 400, 0, |k| doc! {"_data": format!("82{k}")}).unwrap();
        let frags: Vec<Document> = frags
            .iter()
            .map(|b| Document::from_reader(&b[..]).unwrap())
            .collect();
        assert_eq!(frags.len(), 2);
        assert_eq!(
            frags[0].get_document("splitEvent").unwrap(),
            &doc! {"fragment": 1, "of": 2}
        );
        assert!(frags[0].contains_key("operationType"));
        assert!(frags[0].contains_key("fullDocument"));
        assert!(frags[1].contains_key("fullDocumentBeforeChange"));
        assert_eq!(
            frags[1].get_document("_id").unwrap(),
            &doc! {"_data": "821"}
        );
        let skipped = split(&encode(&ev), 400, 1, |k| doc! {"_data": format!("82{k}")}).unwrap();
        assert_eq!(skipped.len(), 1);
    }
}
