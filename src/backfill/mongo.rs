//! The live MongoDB source: the change-stream position taken before scanning, and a scan of
//! one collection in `_id` ranges.
//!
//! Each chunk is its own short query, `find {_id: {$gt: last}}` sorted by `_id` with a limit,
//! drained completely before the chunk is projected, so no cursor sits idle while PostgreSQL
//! works (the server kills cursors idle for 10 minutes) and every chunk restarts from its
//! checkpoint alone. No skip/limit paging.

use std::time::Duration;

use bson::{Bson, Document, doc};
use futures_util::TryStreamExt;
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection};
use tokio::sync::mpsc;

use super::store::{ResumeAt, StreamPosition};
use super::{BackfillError, Chunk, DocStamp};
use crate::event::{ClusterTime, Entity};

/// Documents per server batch inside one chunk's query.
const MAX_BATCH: u32 = 1000;
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
pub async fn estimated_count(coll: &Collection<Document>) -> Result<u64, BackfillError> {
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
    after: Option<&Bson>,
    limit: usize,
) -> Result<Vec<Document>, BackfillError> {
    let filter = match after {
        Some(id) => doc! {"_id": {"$gt": id.clone()}},
        None => doc! {},
    };
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
