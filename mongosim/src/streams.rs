//! Change streams over the oplog: `$changeStream` options, start positions, event shapes,
//! `$match`/`$project` on events, invalidation, postBatchResumeToken and history loss (286).

use bson::{Bson, Document, doc};

use crate::filter;
use crate::oplog::{Entry, Op, append_raw, encode, fragment_token, parse_position, token};
use crate::split;
use crate::state::{CmdError, State};

pub const HISTORY_LOST: &str =
    "Resume of change stream was not possible, as the resume point may no longer be in the oplog.";

/// A change-stream cursor's position and options.
#[derive(Debug, Clone)]
pub struct StreamCursor {
    /// `None` for a cluster-wide stream (`allChangesForCluster`).
    pub db: Option<String>,
    /// `None` for a database-level stream.
    pub coll: Option<String>,
    /// Last oplog seq scanned.
    pub pos: u64,
    pub full_document: String,
    pub before_change: String,
    pub stages: Vec<Document>,
    /// The pipeline ends with `$changeStreamSplitLargeEvent`.
    pub split: bool,
    /// Fragments `0..=k` of the split event at `pos` were delivered (more may follow).
    pub frag: Option<u32>,
    /// Set once an invalidate was returned: the cursor is closed.
    pub invalidated: bool,
}

/// Parse the pipeline and find the start position. Errors 286/260/40324 as the server does.
pub fn open(
    state: &State,
    db: &str,
    target: &Bson,
    pipeline: &[Bson],
) -> Result<StreamCursor, CmdError> {
    let Some(Bson::Document(first)) = pipeline.first() else {
        return Err(CmdError::new(40324, "Unrecognized pipeline stage"));
    };
    let Ok(opts) = first.get_document("$changeStream") else {
        return Err(CmdError::new(40324, "Unrecognized pipeline stage"));
    };
    let coll = match target {
        Bson::String(s) => Some(s.clone()),
        _ => None,
    };
    let split = split::parse(&pipeline[1..])?;
    let mut stages = Vec::new();
    for s in &pipeline[1..] {
        match s {
            Bson::Document(d) if d.contains_key(split::STAGE) => {}
            Bson::Document(d)
                if d.contains_key("$match")
                    || d.contains_key("$project")
                    || d.contains_key("$addFields")
                    || d.contains_key("$set")
                    || d.contains_key("$unset") =>
            {
                stages.push(d.clone())
            }
            other => {
                return Err(CmdError::new(
                    280,
                    format!(
                        "Stage not supported by the simulator in a $changeStream pipeline: {other}"
                    ),
                ));
            }
        }
    }
    let str_opt = |k: &str, d: &str| opts.get_str(k).unwrap_or(d).to_string();
    let full_document = str_opt("fullDocument", "default");
    let before_change = str_opt("fullDocumentBeforeChange", "off");
    let oplog = &state.oplog;
    let resume = opts.get("resumeAfter").filter(|b| !matches!(b, Bson::Null));
    let start_after = opts.get("startAfter").filter(|b| !matches!(b, Bson::Null));
    let mut frag = None;
    let pos = if let Some(tok) = resume.or(start_after) {
        let p = parse_position(tok).ok_or_else(|| CmdError::new(260, "Invalid resume token"))?;
        let (seq, inv) = (p.seq, p.invalidate);
        if p.fragment.is_some() && !split {
            return Err(CmdError::new(
                280,
                "To resume from a split event, the $changeStream pipeline must include a $changeStreamSplitLargeEvent stage",
            ));
        }
        frag = p.fragment;
        if inv && resume.is_some() {
            return Err(CmdError::new(
                260,
                "Attempting to resume a change stream using 'resumeAfter' is not allowed from an invalidate notification.",
            ));
        }
        if seq < oplog.floor {
            return Err(CmdError::new(286, HISTORY_LOST));
        }
        if seq > oplog.head() {
            return Err(CmdError::new(
                280,
                "cannot resume stream; the resume token was not found.",
            ));
        }
        seq
    } else if let Some(Bson::Timestamp(t)) = opts.get("startAtOperationTime") {
        if let Some(fts) = oplog.floor_ts
            && (t.time, t.increment) <= (fts.time, fts.increment)
        {
            return Err(CmdError::new(286, HISTORY_LOST));
        }
        oplog.position_at_time(*t)
    } else {
        oplog.head()
    };
    let all = opts.get_bool("allChangesForCluster").unwrap_or(false);
    if all && db != "admin" {
        return Err(CmdError::new(
            73,
            "$changeStream may not be opened on the internal admin database",
        ));
    }
    Ok(StreamCursor {
        db: if all { None } else { Some(db.to_string()) },
        coll,
        pos,
        full_document,
        before_change,
        stages,
        split,
        frag,
        invalidated: false,
    })
}

/// One event as encoded BSON. The images are spliced in as raw bytes (no re-encoding).
fn event(state: &State, cur: &StreamCursor, e: &Entry) -> Vec<u8> {
    let mut ev = doc! {
        "_id": with_type_bits(state, token(e.seq, false), e.seq),
        "operationType": e.op.name(),
        "clusterTime": e.ts,
        "wallTime": e.wall,
    };
    if e.op == Op::DropDatabase {
        ev.insert("ns", doc! {"db": &e.db});
    } else {
        ev.insert("ns", doc! {"db": &e.db, "coll": &e.coll});
    }
    if let Some((db, coll)) = &e.to {
        ev.insert("to", doc! {"db": db, "coll": coll});
    }
    if let Some(k) = &e.key {
        ev.insert("documentKey", doc! {"_id": k.clone()});
    }
    if let Some(u) = &e.upd {
        ev.insert("updateDescription", u.clone());
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
            "whenAvailable" | "required" => {
                append_raw(&mut out, "fullDocument", 3, e.doc.as_deref())
            }
            _ => {}
        },
        _ => {}
    }
    if matches!(e.op, Op::Update | Op::Replace | Op::Delete)
        && matches!(cur.before_change.as_str(), "whenAvailable" | "required")
    {
        append_raw(&mut out, "fullDocumentBeforeChange", 3, e.pre.as_deref());
    }
    out
}

fn invalidate_event(state: &State, e: &Entry) -> Document {
    doc! {
        "_id": with_type_bits(state, token(e.seq, true), e.seq),
        "operationType": "invalidate",
        "clusterTime": e.ts,
        "wallTime": e.wall,
    }
}

/// Does this entry concern the stream, and does it invalidate it?
fn relevance(cur: &StreamCursor, e: &Entry) -> (bool, bool) {
    let Some(db) = &cur.db else {
        // A cluster-wide stream is never invalidated.
        return (true, false);
    };
    if &e.db != db {
        return (false, false);
    }
    match &cur.coll {
        None => (true, e.op == Op::DropDatabase),
        Some(c) => match e.op {
            Op::DropDatabase => (false, true),
            Op::Drop | Op::Rename => (&e.coll == c, &e.coll == c),
            _ => (&e.coll == c, false),
        },
    }
}

fn apply_stages(stages: &[Document], raw: Vec<u8>) -> Result<Option<Vec<u8>>, CmdError> {
    if stages.is_empty() {
        return Ok(Some(raw));
    }
    let mut ev = Document::from_reader(&raw[..])
        .map_err(|e| CmdError::new(1, format!("cannot decode event: {e}")))?;
    for st in stages {
        if let Ok(m) = st.get_document("$match") {
            if !filter::matches(&ev, m).map_err(|e| CmdError::bad_value(e.0))? {
                return Ok(None);
            }
        } else if let Ok(p) = st.get_document("$project") {
            ev = crate::crud::project(&ev, p);
        } else if let Ok(p) = st
            .get_document("$addFields")
            .or_else(|_| st.get_document("$set"))
        {
            for (k, v) in p {
                ev.insert(k.clone(), v.clone());
            }
        } else if let Some(u) = st.get("$unset") {
            let fields: Vec<String> = match u {
                Bson::String(s) => vec![s.clone()],
                Bson::Array(a) => a
                    .iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect(),
                _ => vec![],
            };
            for f in fields {
                ev.remove(&f);
            }
        }
    }
    Ok(Some(encode(&ev)))
}

/// The event of entry `e` after the pipeline, cut into fragments when it is too large for
/// one reply document (`$changeStreamSplitLargeEvent`), or error 10334 without that stage.
/// Empty when the entry does not concern the stream or a `$match` dropped it.
fn fragments(
    state: &State,
    cur: &StreamCursor,
    e: &Entry,
    resume: Option<u32>,
) -> Result<Vec<Vec<u8>>, CmdError> {
    let Some(ev) = apply_stages(&cur.stages, event(state, cur, e))? else {
        return Ok(vec![]);
    };
    if cur.full_document == "required" && e.op == Op::Update && e.doc.is_none() {
        return Err(CmdError::new(
            280,
            "Change stream was configured to require a post-image for all update events, but the post-image was not found",
        ));
    }
    let limit = state.config.max_event_bytes;
    let id = with_type_bits(state, token(e.seq, false), e.seq);
    if !cur.split {
        if ev.len() > limit + split::INTERNAL_SLACK {
            return Err(split::too_large(
                ev.len(),
                limit + split::INTERNAL_SLACK,
                &Bson::Document(id),
            ));
        }
        return Ok(vec![ev]);
    }
    if ev.len() <= limit {
        if resume.is_some() {
            return Err(CmdError::new(
                280,
                "Attempted to resume from a split event fragment, but the event in the resumed stream was not large enough to be split",
            ));
        }
        return Ok(vec![ev]);
    }
    let max = limit.saturating_sub(encode(&id).len());
    // Resuming after fragment k: fragment k itself must exist and is swallowed.
    let skip = resume.map_or(0, |k| k as usize);
    let mut frags = split::split(&ev, max, skip, |k| {
        with_type_bits(state, fragment_token(e.seq, k), e.seq)
    })?;
    if resume.is_some() && !frags.is_empty() {
        frags.remove(0);
    } else if resume.is_some() {
        return Err(CmdError::new(
            280,
            "Attempted to resume from a split event, but the resumed stream produced a different split. Ensure that the pipeline used to resume is the same as the original",
        ));
    }
    Ok(frags)
}

/// Scan forward from the cursor's position; at most `limit` events and about `max_bytes`
/// (a batch always takes its first event). `cur.invalidated` is set when an invalidate was
/// emitted.
pub fn scan(
    state: &State,
    cur: &mut StreamCursor,
    limit: usize,
    max_bytes: usize,
) -> Result<Vec<Vec<u8>>, CmdError> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    if cur.pos < state.oplog.floor {
        return Err(CmdError::new(286, HISTORY_LOST));
    }
    while out.len() < limit && !cur.invalidated {
        // Within a split event, resume at its next fragment.
        let (seq, resume) = match cur.frag {
            Some(k) => (cur.pos, Some(k)),
            None => (cur.pos + 1, None),
        };
        let skip = resume.map_or(0, |k| k as usize + 1);
        let Some(e) = state.oplog.get(seq) else {
            break;
        };
        let (relevant, invalidates) = relevance(cur, e);
        let frags = if relevant {
            fragments(state, cur, e, resume)?
        } else {
            vec![]
        };
        let split = frags.len() > 1 || skip > 0;
        let produced = !frags.is_empty();
        for (i, f) in frags.into_iter().enumerate() {
            if out.len() >= limit || (!out.is_empty() && bytes + f.len() > max_bytes) {
                if i > 0 {
                    cur.pos = seq;
                    cur.frag = Some((skip + i - 1) as u32);
                }
                return Ok(out);
            }
            bytes += f.len();
            out.push(f);
            if split {
                cur.pos = seq;
                cur.frag = Some((skip + i) as u32);
            }
        }
        cur.pos = seq;
        if !(split && produced) {
            // A split event keeps its last fragment's token as the position (the
            // postBatchResumeToken); the next scan moves past it.
            cur.frag = None;
        }
        if invalidates {
            out.push(encode(&invalidate_event(state, e)));
            cur.invalidated = true;
        }
    }
    Ok(out)
}

/// The postBatchResumeToken after a scan.
pub fn pbrt(state: &State, cur: &StreamCursor) -> Document {
    let t = match cur.frag {
        Some(k) => fragment_token(cur.pos, k),
        None => token(cur.pos, cur.invalidated),
    };
    with_type_bits(state, t, cur.pos)
}

/// With `SimConfig::token_type_bits`, odd positions carry `_typeBits` as real tokens
/// sometimes do, so a consumer that keeps only `_data` is caught.
fn with_type_bits(state: &State, mut t: Document, seq: u64) -> Document {
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
