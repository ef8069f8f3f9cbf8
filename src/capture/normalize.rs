//! Pure normalization of a raw change-stream document (the whole change event, read with
//! `T = Document`) into the v1 [`ChangeEvent`]. No I/O here.

use bson::{Bson, Document};
use chrono::{DateTime, Utc};

use crate::config::Pipeline;
use crate::event::{ChangeEvent, ClusterTime, Namespace, Op, Txn};

/// What one raw change means for the capture.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Normalized {
    /// A data change of a watched collection, ready to publish.
    Event(Box<ChangeEvent>),
    /// The stream cannot continue past this change (drop, rename, dropDatabase, invalidate).
    Stop(StopReason),
    /// Not ours (another database or an unwatched collection): nothing to publish.
    Skip,
}

/// Why the stream stopped; the operator message names the operation and namespace(s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopReason {
    pub operation: String,
    pub namespace: String,
    /// A rename's target namespace (`$out` is a rename of `tmp.agg_out.<uuid>` onto it).
    pub to: Option<String>,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` of {}", self.operation, self.namespace)?;
        if let Some(to) = &self.to {
            write!(f, " to {to}")?;
            if self.namespace.contains(".tmp.agg_out.") {
                f.write_str(" (an aggregation's `$out` replacing it)")?;
            }
        }
        Ok(())
    }
}

/// A change document we cannot read: never skipped silently.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed change event: {0}")]
pub struct Malformed(pub String);

/// Numbers the events that share a cluster time, in stream order (the event's ordinal).
#[derive(Debug, Default, Clone)]
pub(crate) struct Ordinals {
    last: Option<ClusterTime>,
    next: u32,
}

impl Ordinals {
    /// The ordinal of the next event of cluster time `ct`.
    pub(crate) fn assign(&mut self, ct: ClusterTime) -> u32 {
        if self.last == Some(ct) {
            self.next += 1;
        } else {
            self.last = Some(ct);
            self.next = 0;
        }
        self.next
    }
}

/// The operation types the capture publishes.
pub(crate) const DATA_OPS: [&str; 4] = ["insert", "update", "replace", "delete"];
/// The operation types that end the stream with an explained stop.
pub(crate) const STOP_OPS: [&str; 4] = ["drop", "rename", "dropDatabase", "invalidate"];

/// The `$match` stage of the pipeline's database-level stream: the data changes, drops and
/// renames of the watched collections, a rename (or `$out`) onto one, and the database's end.
pub(crate) fn match_stage(pipeline: &Pipeline) -> Document {
    let colls: Vec<Bson> = pipeline
        .collections
        .keys()
        .map(|c| Bson::String(c.clone()))
        .collect();
    let watched_ops: Vec<Bson> = DATA_OPS
        .iter()
        .chain(["drop", "rename"].iter())
        .map(|s| Bson::String((*s).to_string()))
        .collect();
    bson::doc! {
        "$match": {
            "$or": [
                { "ns.coll": { "$in": colls.clone() }, "operationType": { "$in": watched_ops } },
                { "operationType": "rename", "to.db": &pipeline.mongo_database,
                  "to.coll": { "$in": colls } },
                { "operationType": { "$in": ["dropDatabase", "invalidate"] } },
            ]
        }
    }
}

/// Relaxed extended JSON of a BSON value (`$oid`, ISO `$date`, plain numbers).
pub fn relaxed(value: Bson) -> serde_json::Value {
    value.into_relaxed_extjson()
}

/// Normalize one raw change. `ordinals` is advanced only for published events.
pub(crate) fn normalize(
    pipeline: &Pipeline,
    raw: &Document,
    ordinals: &mut Ordinals,
) -> Result<Normalized, Malformed> {
    let operation = raw
        .get_str("operationType")
        .map_err(|_| Malformed("operationType is missing or not a string".into()))?;
    let (db, coll) = namespace(raw);
    let op = match operation {
        "insert" => Op::Insert,
        "update" => Op::Update,
        "replace" => Op::Replace,
        "delete" => Op::Delete,
        other if STOP_OPS.contains(&other) => return Ok(stop(pipeline, raw, other)),
        _ => return Ok(Normalized::Skip),
    };
    let (Some(db), Some(coll)) = (db, coll) else {
        return Err(Malformed(format!(
            "{operation} event without ns.db/ns.coll"
        )));
    };
    if db != pipeline.mongo_database {
        return Ok(Normalized::Skip);
    }
    let Some(entity) = pipeline.entity_of(coll) else {
        return Ok(Normalized::Skip);
    };
    let token = match raw.get("_id") {
        Some(Bson::Document(d)) => relaxed(Bson::Document(d.clone())),
        _ => return Err(Malformed("_id (resume token) is missing".into())),
    };
    let cluster_time = match raw.get("clusterTime") {
        Some(Bson::Timestamp(ts)) => ClusterTime {
            t: ts.time,
            i: ts.increment,
        },
        _ => {
            return Err(Malformed(
                "clusterTime is missing or not a Timestamp".into(),
            ));
        }
    };
    let wall_time = wall_time(raw, cluster_time);
    let key = document_key(raw)?;
    let doc = match (op, raw.get("fullDocument")) {
        (Op::Delete, _) | (_, None | Some(Bson::Null)) => None,
        (_, Some(Bson::Document(d))) => Some(relaxed(Bson::Document(d.clone()))),
        (_, Some(_)) => return Err(Malformed("fullDocument is not a document".into())),
    };
    let (changed, removed) = update_description(raw);
    let ordinal = ordinals.assign(cluster_time);
    Ok(Normalized::Event(Box::new(ChangeEvent {
        v: 1,
        id: ChangeEvent::make_id(&pipeline.name, cluster_time, ordinal),
        pipeline: pipeline.name.clone(),
        entity,
        op,
        action: op.action(),
        ns: Namespace {
            db: db.to_string(),
            coll: coll.to_string(),
        },
        mongo_id: key.clone(),
        key,
        cluster_time,
        ordinal,
        wall_time,
        doc,
        changed,
        removed,
        txn: txn(raw),
        resume_token: token,
        timestamp: wall_time,
    })))
}

/// A drop, rename, dropDatabase or invalidate: a stop when it touches a watched collection
/// (a rename on either side) or the database, else nothing of ours.
fn stop(pipeline: &Pipeline, raw: &Document, operation: &str) -> Normalized {
    let (db, coll) = namespace(raw);
    let to = raw
        .get_document("to")
        .ok()
        .and_then(|t| Some((t.get_str("db").ok()?, t.get_str("coll").ok()?)));
    let ours = |db: Option<&str>, coll: Option<&str>| {
        db.is_none_or(|d| d == pipeline.mongo_database)
            && coll.is_none_or(|c| pipeline.entity_of(c).is_some())
    };
    let touches = match operation {
        "rename" => ours(db, coll) || to.is_some_and(|(d, c)| ours(Some(d), Some(c))),
        _ => ours(db, coll),
    };
    if !touches {
        return Normalized::Skip;
    }
    Normalized::Stop(StopReason {
        operation: operation.to_string(),
        namespace: match coll {
            Some(c) => format!("{}.{c}", db.unwrap_or("?")),
            None => db.unwrap_or(&pipeline.mongo_database).to_string(),
        },
        to: to.map(|(d, c)| format!("{d}.{c}")),
    })
}

fn namespace(raw: &Document) -> (Option<&str>, Option<&str>) {
    match raw.get_document("ns") {
        Ok(ns) => (ns.get_str("db").ok(), ns.get_str("coll").ok()),
        Err(_) => (None, None),
    }
}

/// `wallTime` (MongoDB 6.0+), else the cluster time's seconds.
fn wall_time(raw: &Document, ct: ClusterTime) -> DateTime<Utc> {
    match raw.get("wallTime") {
        Some(Bson::DateTime(d)) => d.to_chrono(),
        _ => DateTime::from_timestamp(i64::from(ct.t), 0).unwrap_or_default(),
    }
}

/// The document's `_id` as its mirror key ([`crate::event::mongo_key`]).
fn document_key(raw: &Document) -> Result<String, Malformed> {
    let id = raw
        .get_document("documentKey")
        .ok()
        .and_then(|k| k.get("_id"))
        .ok_or_else(|| Malformed("documentKey._id is missing".into()))?;
    Ok(crate::event::mongo_key(id))
}

fn update_description(raw: &Document) -> (Vec<String>, Vec<String>) {
    let Ok(desc) = raw.get_document("updateDescription") else {
        return (Vec::new(), Vec::new());
    };
    let changed = desc
        .get_document("updatedFields")
        .map(|f| f.keys().cloned().collect())
        .unwrap_or_default();
    let removed = desc
        .get_array("removedFields")
        .map(|a| {
            a.iter()
                .filter_map(|b| b.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    (changed, removed)
}

/// `{lsid, txn_number}` for changes made in a transaction: the session id as a UUID string.
fn txn(raw: &Document) -> Option<Txn> {
    let txn_number = match raw.get("txnNumber")? {
        Bson::Int64(n) => *n,
        Bson::Int32(n) => i64::from(*n),
        _ => return None,
    };
    let lsid = raw.get_document("lsid").ok()?;
    let lsid = match lsid.get("id") {
        Some(Bson::Binary(b)) if b.bytes.len() == 16 => uuid::Uuid::from_slice(&b.bytes)
            .map(|u| u.to_string())
            .unwrap_or_default(),
        _ => relaxed(Bson::Document(lsid.clone())).to_string(),
    };
    Some(Txn { lsid, txn_number })
}

#[cfg(test)]
mod tests;
