//! The cursor table (Int64 ids), find cursors over a snapshot, getMore (with awaitData waits
//! for change streams, woken by the oplog watch channel) and killCursors.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bson::{Bson, Document, doc};

use crate::oplog::{append_raw, encode};
use crate::state::{CmdError, SharedRef, State};
use crate::streams::{self, StreamCursor};

/// Reply batches stay below this many (approximate) bytes.
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug)]
pub enum Cursor {
    Find {
        ns: String,
        docs: VecDeque<Document>,
    },
    Stream {
        ns: String,
        cur: StreamCursor,
    },
}

impl Cursor {
    pub fn ns(&self) -> &str {
        match self {
            Cursor::Find { ns, .. } | Cursor::Stream { ns, .. } => ns,
        }
    }
}

/// A command result: a document, or a change-stream batch of encoded events.
pub enum Body {
    Doc(Document),
    Stream {
        id: i64,
        ns: String,
        batch: Vec<Vec<u8>>,
        first: bool,
        pbrt: Document,
    },
}

/// Assemble a change-stream cursor reply around `tail` (`ok`, `$clusterTime`, ...),
/// splicing the encoded events in without re-encoding them.
pub fn stream_reply_bytes(
    id: i64,
    ns: &str,
    batch: &[Vec<u8>],
    first: bool,
    pbrt: &Document,
    tail: &Document,
) -> Vec<u8> {
    let total: usize = batch.iter().map(|b| b.len() + 8).sum();
    let mut arr = Vec::with_capacity(total + 5);
    arr.extend_from_slice(&[0, 0, 0, 0]);
    for (i, ev) in batch.iter().enumerate() {
        arr.push(3);
        arr.extend_from_slice(i.to_string().as_bytes());
        arr.push(0);
        arr.extend_from_slice(ev);
    }
    arr.push(0);
    let len = arr.len() as i32;
    arr[0..4].copy_from_slice(&len.to_le_bytes());
    let mut cur =
        encode(&doc! {"id": Bson::Int64(id), "ns": ns, "postBatchResumeToken": pbrt.clone()});
    append_raw(
        &mut cur,
        if first { "firstBatch" } else { "nextBatch" },
        4,
        Some(&arr),
    );
    let mut top = encode(tail);
    append_raw(&mut top, "cursor", 3, Some(&cur));
    top
}

/// Rough BSON size of a value.
pub fn approx_size_bson(v: &Bson) -> usize {
    match v {
        Bson::Document(d) => approx_size(d),
        Bson::Array(a) => 5 + a.iter().map(|e| 3 + approx_size_bson(e)).sum::<usize>(),
        Bson::String(s) => 5 + s.len(),
        Bson::Binary(b) => 5 + b.bytes.len(),
        Bson::ObjectId(_) => 12,
        Bson::Decimal128(_) => 16,
        _ => 8,
    }
}

/// Rough BSON size of a document.
pub fn approx_size(d: &Document) -> usize {
    5 + d
        .iter()
        .map(|(k, v)| 2 + k.len() + approx_size_bson(v))
        .sum::<usize>()
}

/// `{cursor: {id, ns, firstBatch|nextBatch, postBatchResumeToken?}}`.
pub fn cursor_reply(
    id: i64,
    ns: &str,
    batch: Vec<Document>,
    first: bool,
    pbrt: Option<Document>,
) -> Document {
    let batch: Vec<Bson> = batch.into_iter().map(Bson::Document).collect();
    let mut c = doc! {"id": Bson::Int64(id), "ns": ns};
    c.insert(if first { "firstBatch" } else { "nextBatch" }, batch);
    if let Some(t) = pbrt {
        c.insert("postBatchResumeToken", t);
    }
    doc! {"cursor": c}
}

/// Take up to `n` documents (and the byte budget) off a find cursor's queue.
pub fn take_batch(docs: &mut VecDeque<Document>, n: usize) -> Vec<Document> {
    let mut out = Vec::new();
    let mut bytes = 0;
    while out.len() < n && bytes < MAX_BATCH_BYTES {
        let Some(d) = docs.pop_front() else { break };
        bytes += approx_size(&d);
        out.push(d);
    }
    out
}

fn batch_size(v: Option<&Bson>) -> Option<usize> {
    v.and_then(crate::order::as_f64)
        .filter(|n| *n > 0.0)
        .map(|n| n as usize)
}

fn cursor_id(cmd: &Document) -> Result<i64, CmdError> {
    match cmd.get("getMore") {
        Some(Bson::Int64(i)) => Ok(*i),
        Some(Bson::Int32(i)) => Ok(*i as i64),
        _ => Err(CmdError::new(14, "getMore must be an Int64 cursor id")),
    }
}

/// Is this getMore on a change-stream cursor?
pub fn is_stream_getmore(state: &State, cmd: &Document) -> bool {
    cursor_id(cmd)
        .ok()
        .and_then(|id| state.cursors.get(&id))
        .is_some_and(|c| matches!(c, Cursor::Stream { .. }))
}

/// `getMore`. Change-stream cursors wait up to `maxTimeMS` (default 1 s) for events.
pub async fn get_more(
    shared: &SharedRef,
    db: &str,
    cmd: &Document,
    app: Option<&str>,
) -> Result<Body, CmdError> {
    let id = cursor_id(cmd)?;
    let coll = cmd.get_str("collection").unwrap_or_default();
    let ns = format!("{db}.{coll}");
    let n = batch_size(cmd.get("batchSize")).unwrap_or(usize::MAX);
    let wait = cmd
        .get("maxTimeMS")
        .and_then(crate::order::as_f64)
        .map(|ms| Duration::from_millis(ms.clamp(0.0, 86_400_000.0) as u64))
        .unwrap_or(Duration::from_secs(1));
    let deadline = Instant::now() + wait;
    let mut first_pass = true;
    loop {
        let mut rx = shared.changed.subscribe();
        {
            let mut st = shared.lock();
            if !st.topo.is_primary() && is_stream_getmore(&st, cmd) {
                st.cursors.remove(&id);
                return Err(CmdError::new(
                    11602,
                    "operation was interrupted because of a replica set state change",
                )
                .label("ResumableChangeStreamError"));
            }
            let state: &mut State = &mut st;
            let Some(cursor) = state.cursors.get_mut(&id) else {
                return Err(CmdError::new(43, format!("cursor id {id} not found")));
            };
            if cursor.ns() != ns {
                return Err(CmdError::new(
                    13,
                    format!(
                        "Requested getMore on namespace '{ns}', but cursor belongs to a different namespace {}",
                        cursor.ns()
                    ),
                ));
            }
            let stream = matches!(cursor, Cursor::Stream { .. });
            if first_pass
                && let Some(e) = crate::failpoint::check_after_checkout(state, app, stream)
            {
                // An error while the cursor is checked out kills it.
                state.cursors.remove(&id);
                return Err(e);
            }
            first_pass = false;
            let Some(cursor) = state.cursors.get_mut(&id) else {
                return Err(CmdError::new(43, format!("cursor id {id} not found")));
            };
            match cursor {
                Cursor::Find { docs, .. } => {
                    let batch = take_batch(docs, n);
                    let done = docs.is_empty();
                    if done {
                        state.cursors.remove(&id);
                    }
                    return Ok(Body::Doc(cursor_reply(
                        if done { 0 } else { id },
                        &ns,
                        batch,
                        false,
                        None,
                    )));
                }
                Cursor::Stream { cur, .. } => {
                    let mut c = cur.clone();
                    let res = streams::scan(state, &mut c, n, MAX_BATCH_BYTES);
                    let batch = match res {
                        Ok(b) => b,
                        Err(e) => {
                            state.cursors.remove(&id);
                            return Err(e);
                        }
                    };
                    let pbrt = streams::pbrt(state, &c);
                    let invalidated = c.invalidated;
                    if let Some(Cursor::Stream { cur, .. }) = state.cursors.get_mut(&id) {
                        *cur = c;
                    }
                    if !batch.is_empty() || Instant::now() >= deadline || invalidated {
                        if invalidated {
                            state.cursors.remove(&id);
                        }
                        let rid = if invalidated { 0 } else { id };
                        return Ok(Body::Stream {
                            id: rid,
                            ns,
                            batch,
                            first: false,
                            pbrt,
                        });
                    }
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let mut down = shared.shutdown.subscribe();
        tokio::select! {
            _ = tokio::time::timeout(left, rx.changed()) => {}
            _ = crate::state::until_shutdown(&mut down) => return Err(CmdError::new(91, "The server is in quiesce mode and will shut down")),
        }
    }
}

/// `killCursors`.
pub fn kill_cursors(state: &mut State, cmd: &Document) -> Result<Document, CmdError> {
    let ids = cmd
        .get_array("cursors")
        .map_err(|_| CmdError::bad_value("killCursors needs 'cursors'"))?;
    let (mut killed, mut missing) = (Vec::new(), Vec::new());
    for id in ids {
        let id = match id {
            Bson::Int64(i) => *i,
            Bson::Int32(i) => *i as i64,
            _ => continue,
        };
        if state.cursors.remove(&id).is_some() {
            killed.push(Bson::Int64(id));
        } else {
            missing.push(Bson::Int64(id));
        }
    }
    Ok(doc! {
        "cursorsKilled": killed, "cursorsNotFound": missing,
        "cursorsAlive": [], "cursorsUnknown": [],
    })
}
