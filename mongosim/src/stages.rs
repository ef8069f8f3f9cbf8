//! The stages a change-stream pipeline may hold after `$changeStream`, as a server checks
//! and runs them: `$match`, `$project`, `$addFields`, `$set`, `$unset`, `$replaceRoot`,
//! `$replaceWith`, `$redact` (refused by the simulator) and a final
//! `$changeStreamSplitLargeEvent`. Any field of the event may be used or rewritten; an
//! event whose `_id` (its resume token) the pipeline changed fails the stream with 280.

use bson::{Bson, Document};

use crate::state::CmdError;
use crate::{expr, filter, split};

pub const ID_MODIFIED: &str = "Encountered an event whose _id field, which contains the resume token, was modified by the pipeline. Modifying the _id field of an event makes it impossible to resume the stream from that point. Only transformations that retain the unmodified _id field are allowed.";

/// Stages a server knows but does not allow in a change stream.
const NOT_IN_CHANGE_STREAM: &[&str] = &[
    "$group",
    "$sort",
    "$limit",
    "$skip",
    "$count",
    "$lookup",
    "$unwind",
    "$facet",
    "$out",
    "$merge",
    "$sample",
    "$bucket",
    "$bucketAuto",
    "$graphLookup",
    "$unionWith",
    "$sortByCount",
    "$geoNear",
    "$densify",
    "$fill",
    "$setWindowFields",
    "$documents",
    "$collStats",
    "$indexStats",
    "$currentOp",
    "$listSessions",
    "$planCacheStats",
    "$changeStream",
];

const ALLOWED: &[&str] = &[
    "$match",
    "$project",
    "$addFields",
    "$set",
    "$unset",
    "$replaceRoot",
    "$replaceWith",
];

/// Check the stages after `$changeStream` (the split stage is validated by `split::parse`
/// and left out). Errors as a server: 40324 for an unknown stage name, 280 for a stage not
/// allowed in a change stream.
pub fn parse(stages: &[Bson]) -> Result<Vec<Document>, CmdError> {
    let mut out = Vec::new();
    for s in stages {
        let Some(d) = s.as_document() else {
            return Err(CmdError::new(
                14,
                "Each element of the 'pipeline' array must be an object",
            ));
        };
        let Some(name) = d.keys().next() else {
            return Err(CmdError::new(
                40323,
                "A pipeline stage specification object must contain exactly one field.",
            ));
        };
        if d.len() != 1 {
            return Err(CmdError::new(
                40323,
                "A pipeline stage specification object must contain exactly one field.",
            ));
        }
        if name == split::STAGE {
            continue;
        }
        if ALLOWED.contains(&name.as_str()) {
            out.push(d.clone());
        } else if NOT_IN_CHANGE_STREAM.contains(&name.as_str()) || name == "$redact" {
            return Err(CmdError::new(
                280,
                format!(
                    "Illegal $changeStream pipeline stage: {name} is not allowed in a $changeStream pipeline"
                ),
            ));
        } else {
            return Err(CmdError::new(
                40324,
                format!(
                    "Unrecognized pipeline stage name: '{}'",
                    name.trim_start_matches('$')
                ),
            ));
        }
    }
    Ok(out)
}

/// Run the stages over one event. `None` when a `$match` dropped it; error 280 when the
/// result no longer carries the event's own `_id`.
pub fn apply(stages: &[Document], raw: Vec<u8>) -> Result<Option<Vec<u8>>, CmdError> {
    if stages.is_empty() {
        return Ok(Some(raw));
    }
    let mut ev = Document::from_reader(&raw[..])
        .map_err(|e| CmdError::new(1, format!("cannot decode event: {e}")))?;
    let id = ev.get("_id").cloned();
    for st in stages {
        if let Ok(m) = st.get_document("$match") {
            if !filter::matches(&ev, m).map_err(|e| CmdError::bad_value(e.0))? {
                return Ok(None);
            }
        } else if let Some(next) = expr::reshape(&ev, st)? {
            ev = next;
        }
    }
    if ev.get("_id") != id.as_ref() {
        return Err(CmdError::new(280, ID_MODIFIED));
    }
    Ok(Some(crate::oplog::encode(&ev)))
}
