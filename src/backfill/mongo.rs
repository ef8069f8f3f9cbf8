//! The live MongoDB source: the change-stream position taken before scanning, a scan of one
//! collection in `_id` ranges, and the look-ups the guards and the tombstones need.
//!
//! Each chunk is its own short query, sorted by `_id` with a limit, for the `_id`s after the
//! last one read, drained completely before the chunk is projected, so no cursor sits idle
//! while PostgreSQL works (the server kills cursors idle for 10 minutes) and every chunk
//! restarts from its checkpoint alone. No skip/limit paging.
//!
//! "After the last one" follows the server's full `_id` order across BSON types (numbers <
//! strings < objects < binary < ObjectIds < booleans < dates < …): `$gt` only matches values
//! of its operand's type class (type bracketing), so each page asks for `{_id: {$gt: last}}`
//! or an `_id` of any later type class ([`after`]). A collection whose `_id`s mix ObjectIds,
//! strings and numbers is read completely, in the order of its `_id` index.

use std::time::Duration;

use bson::{Bson, Document, doc};
use futures_util::TryStreamExt;
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection};
use tokio::sync::mpsc;

use std::collections::HashSet;

use super::chunk::{Chunk, key_of};
use super::store::{ResumeAt, StreamPosition, Unseen};
use super::{BackfillError, DocStamp};
use crate::event::{ClusterTime, Entity};

/// Documents per server batch inside one chunk's query.
const MAX_BATCH: u32 = 1000;
/// `_id`s per look-up of documents the scan did not see.
const LOOKUP_BATCH: usize = 1000;
/// Time allowed to connect and answer the first command.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Connect to MongoDB. `retry_reads` is off for the client that opens the change stream
/// (docs/architecture.md: never trust the driver's own stream resume), on for the scan.
pub async fn connect(uri: &str, retry_reads: bool) -> Result<Client, BackfillError> {
    let mut opts = ClientOptions::parse(uri)
        .await
        .map_err(BackfillError::Mongo)?;
    opts.app_name = Some("bowmark-cdc backfill".into());
    opts.retry_reads = Some(retry_reads);
    opts.server_selection_timeout = Some(CONNECT_TIMEOUT);
    Client::with_options(opts).map_err(BackfillError::Mongo)
}

/// The change-stream position now: the cluster time of a `ping` (its `operationTime`), then
/// the post-batch resume token of a database change stream opened right after it. Every
/// document scanned afterwards reflects at least this position.
pub async fn position(client: &Client, database: &str) -> Result<StreamPosition, BackfillError> {
    let db = client.database(database);
    let reply = db
        .run_command(doc! {"ping": 1})
        .await
        .map_err(BackfillError::Mongo)?;
    let ts = reply
        .get_timestamp("operationTime")
        .map_err(|_| BackfillError::NoClusterTime)?;
    let stream = db.watch().await.map_err(BackfillError::Mongo)?;
    let token = stream.resume_token().ok_or(BackfillError::NoResumeToken)?;
    let resume_token = bson::serialize_to_bson(&token)
        .map(Bson::into_relaxed_extjson)
        .map_err(|_| BackfillError::NoResumeToken)?;
    Ok(StreamPosition {
        resume_token,
        cluster_time: ClusterTime {
            t: ts.time,
            i: ts.increment,
        },
    })
}

/// The collection's document count as the server estimates it (for progress only).
pub(crate) async fn estimated_count(coll: &Collection<Document>) -> Result<u64, BackfillError> {
    coll.estimated_document_count()
        .await
        .map_err(BackfillError::Mongo)
}

/// Scan `coll` after `after` (an `_id` in relaxed extended JSON) chunk by chunk into `tx`,
/// until the collection is exhausted or the receiver is gone.
pub async fn scan(
    coll: Collection<Document>,
    entity: Entity,
    chunk_size: usize,
    after: Option<serde_json::Value>,
    stamp: DocStamp,
    tx: mpsc::Sender<Result<Chunk, BackfillError>>,
) {
    let mut last = match after.map(Bson::try_from).transpose() {
        Ok(v) => v,
        Err(_) => {
            let _ = tx
                .send(Err(BackfillError::BadCheckpoint {
                    collection: coll.name().to_string(),
                }))
                .await;
            return;
        }
    };
    loop {
        let page = match read_page(&coll, last.as_ref(), chunk_size).await {
            Ok(p) => p,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let Some(last_id) = page.last().and_then(|d| d.get("_id")).cloned() else {
            return;
        };
        let full = page.len() >= chunk_size;
        let mut chunk = Chunk::new(ResumeAt::LastId(last_id.clone().into_relaxed_extjson()));
        for d in page {
            chunk.push(entity, d, &stamp);
        }
        if tx.send(Ok(chunk)).await.is_err() || !full {
            return;
        }
        last = Some(last_id);
    }
}

async fn read_page(
    coll: &Collection<Document>,
    last: Option<&Bson>,
    limit: usize,
) -> Result<Vec<Document>, BackfillError> {
    let filter = last.map(after).unwrap_or_default();
    let limit_i64 = i64::try_from(limit).unwrap_or(i64::MAX);
    let batch = u32::try_from(limit).unwrap_or(MAX_BATCH).min(MAX_BATCH);
    let cursor = coll
        .find(filter)
        .sort(doc! {"_id": 1})
        .limit(limit_i64)
        .batch_size(batch)
        .await
        .map_err(BackfillError::Mongo)?;
    cursor.try_collect().await.map_err(BackfillError::Mongo)
}

/// MongoDB's canonical type classes in sort order, each with the `$type` aliases it holds
/// (the server's `canonicalizeBSONType`).
const TYPE_CLASSES: [&[&str]; 16] = [
    &["minKey"],
    &["null", "undefined"],
    &["double", "int", "long", "decimal"],
    &["string", "symbol"],
    &["object"],
    &["array"],
    &["binData"],
    &["objectId"],
    &["bool"],
    &["date"],
    &["timestamp"],
    &["regex"],
    &["dbPointer"],
    &["javascript"],
    &["javascriptWithScope"],
    &["maxKey"],
];

/// The place of a value's type class in [`TYPE_CLASSES`].
fn type_class(v: &Bson) -> usize {
    match v {
        Bson::MinKey => 0,
        Bson::Null | Bson::Undefined => 1,
        Bson::Double(_) | Bson::Int32(_) | Bson::Int64(_) | Bson::Decimal128(_) => 2,
        Bson::String(_) | Bson::Symbol(_) => 3,
        Bson::Document(_) => 4,
        Bson::Array(_) => 5,
        Bson::Binary(_) => 6,
        Bson::ObjectId(_) => 7,
        Bson::Boolean(_) => 8,
        Bson::DateTime(_) => 9,
        Bson::Timestamp(_) => 10,
        Bson::RegularExpression(_) => 11,
        Bson::DbPointer(_) => 12,
        Bson::JavaScriptCode(_) => 13,
        Bson::JavaScriptCodeWithScope(_) => 14,
        Bson::MaxKey => 15,
    }
}

/// The filter for the `_id`s after `last` in the server's order: greater within its type
/// class, or of any later class.
fn after(last: &Bson) -> Document {
    let later: Vec<&str> = TYPE_CLASSES[type_class(last) + 1..]
        .iter()
        .flat_map(|aliases| aliases.iter().copied())
        .collect();
    let greater = doc! {"_id": {"$gt": last.clone()}};
    if later.is_empty() {
        return greater;
    }
    doc! {"$or": [greater, {"_id": {"$type": later}}]}
}

/// The names of the collections in `database` (sorted).
pub(crate) async fn collection_names(
    client: &Client,
    database: &str,
) -> Result<Vec<String>, BackfillError> {
    let mut names = client
        .database(database)
        .list_collection_names()
        .await
        .map_err(BackfillError::Mongo)?;
    names.sort();
    Ok(names)
}

/// The keys of `unseen` whose documents `coll` does not hold: looked up by the `_id` the
/// mirror recorded (or, without one, by every `_id` the key can stand for).
pub async fn absent(
    coll: &Collection<Document>,
    unseen: Vec<Unseen>,
) -> Result<Vec<String>, BackfillError> {
    let mut gone = Vec::new();
    for part in unseen.chunks(LOOKUP_BATCH) {
        let ids: Vec<Bson> = part.iter().flat_map(candidate_ids).collect();
        let found: Vec<Document> = coll
            .find(doc! {"_id": {"$in": ids}})
            .projection(doc! {"_id": 1})
            .await
            .map_err(BackfillError::Mongo)?
            .try_collect()
            .await
            .map_err(BackfillError::Mongo)?;
        let present: HashSet<String> = found
            .iter()
            .filter_map(|d| d.get("_id"))
            .map(key_of)
            .collect();
        gone.extend(
            part.iter()
                .filter(|u| !present.contains(&u.key))
                .map(|u| u.key.clone()),
        );
    }
    Ok(gone)
}

/// The `_id`s an unseen mirror document may have in MongoDB.
fn candidate_ids(u: &Unseen) -> Vec<Bson> {
    if let Some(id) = u.id.clone().and_then(|v| Bson::try_from(v).ok()) {
        return vec![id];
    }
    let mut ids = vec![Bson::String(u.key.clone())];
    if let Ok(oid) = bson::oid::ObjectId::parse_str(&u.key) {
        ids.push(Bson::ObjectId(oid));
    }
    if let Some(v) = serde_json::from_str::<serde_json::Value>(&u.key)
        .ok()
        .and_then(|v| Bson::try_from(v).ok())
    {
        ids.push(v);
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_an_object_id_come_greater_ones_and_every_later_type() {
        let oid = bson::oid::ObjectId::new();
        let f = after(&Bson::ObjectId(oid));
        let or = f.get_array("$or").unwrap();
        assert_eq!(or[0].as_document().unwrap(), &doc! {"_id": {"$gt": oid}});
        let later = or[1].as_document().unwrap().get_document("_id").unwrap();
        let later = later.get_array("$type").unwrap();
        assert!(later.contains(&Bson::from("date")) && later.contains(&Bson::from("maxKey")));
        assert!(!later.contains(&Bson::from("string")) && !later.contains(&Bson::from("objectId")));
    }

    #[test]
    fn after_a_number_come_strings_and_object_ids_but_after_max_key_nothing() {
        let f = after(&Bson::Int64(7));
        let or = f.get_array("$or").unwrap();
        let later = or[1].as_document().unwrap().get_document("_id").unwrap();
        let later = later.get_array("$type").unwrap();
        assert!(later.contains(&Bson::from("string")) && later.contains(&Bson::from("objectId")));
        assert!(!later.contains(&Bson::from("int")));
        assert_eq!(after(&Bson::MaxKey), doc! {"_id": {"$gt": Bson::MaxKey}});
    }

    #[test]
    fn an_unseen_document_is_looked_up_by_its_recorded_id_or_every_reading_of_its_key() {
        let oid = bson::oid::ObjectId::new();
        let recorded = Unseen {
            key: "5".into(),
            id: Some(serde_json::json!(5)),
        };
        assert_eq!(candidate_ids(&recorded), vec![Bson::Int32(5)]);
        let bare = Unseen {
            key: oid.to_hex(),
            id: None,
        };
        let ids = candidate_ids(&bare);
        assert!(ids.contains(&Bson::ObjectId(oid)) && ids.contains(&Bson::String(oid.to_hex())));
    }
}
