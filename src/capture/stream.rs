//! The change stream of one pipeline: opened at the checkpoint (our own resume, never the
//! driver's retried one), read by a task that owns it and normalizes changes in stream order.

use std::sync::Arc;
use std::time::Duration;

use bson::{Bson, Document};
use mongodb::change_stream::ChangeStream;
use mongodb::change_stream::event::ResumeToken;
use mongodb::options::FullDocumentType;
use tokio::sync::mpsc;

use super::error::{CaptureError, HISTORY_LOST, mongo_code};
use super::normalize::{Malformed, Normalized, Ordinals, StopReason, match_stage, normalize};
use super::reassemble::{Reassembler, SPLIT_STAGE, supports_split};
use crate::config::Pipeline;
use crate::event::ChangeEvent;

/// Change events per getMore: bounds the driver's buffered batch (memory) on a backlog.
const STREAM_BATCH_SIZE: u32 = 1000;

/// What the stream reader hands to the session, in stream order.
pub(super) enum Item {
    Event(Box<ChangeEvent>),
    Idle(serde_json::Value),
    Stop(StopReason),
    Failed(mongodb::error::Error),
    Malformed(Malformed),
}

pub(super) async fn open_stream(
    p: &Pipeline,
    mongo: &mongodb::Client,
    token: Option<ResumeToken>,
) -> Result<ChangeStream<Document>, CaptureError> {
    let mut pipeline = vec![match_stage(p)];
    if split_supported(p, mongo).await {
        pipeline.push(bson::doc! {SPLIT_STAGE: {}});
    }
    let stream = mongo
        .database(&p.mongo_database)
        .watch()
        .pipeline(pipeline)
        .full_document(FullDocumentType::UpdateLookup)
        .batch_size(STREAM_BATCH_SIZE)
        .max_await_time(Duration::from_millis(p.capture.max_await_ms))
        .resume_after(token)
        .await
        .map_err(|e| classify(p, e))?;
    Ok(stream.with_type::<Document>())
}

/// Whether the server takes `$changeStreamSplitLargeEvent` (by `buildInfo`). A server that
/// cannot say is streamed without it (an event over 16 MiB then fails with 10334).
async fn split_supported(p: &Pipeline, mongo: &mongodb::Client) -> bool {
    let info = mongo
        .database("admin")
        .run_command(bson::doc! {"buildInfo": 1})
        .await;
    match info {
        Ok(info) => supports_split(&info),
        Err(e) => {
            tracing::warn!(pipeline = %p.name, error = %e, "buildInfo failed: streaming without \
                $changeStreamSplitLargeEvent (events over 16 MiB cannot be read)");
            false
        }
    }
}

pub(super) fn classify(p: &Pipeline, e: mongodb::error::Error) -> CaptureError {
    if mongo_code(&e) == Some(HISTORY_LOST) {
        CaptureError::HistoryLost {
            pipeline: p.name.clone(),
            file: p.file.display().to_string(),
            source: e,
        }
    } else {
        CaptureError::Mongo(e)
    }
}

pub(super) fn token_from_json(
    pipeline: &str,
    v: &serde_json::Value,
) -> Result<ResumeToken, CaptureError> {
    let bad = |message: String| CaptureError::BadCheckpoint {
        pipeline: pipeline.to_string(),
        message,
    };
    let b = Bson::try_from(v.clone()).map_err(|e| bad(e.to_string()))?;
    bson::deserialize_from_bson(b).map_err(|e| bad(e.to_string()))
}

fn token_to_json(t: &ResumeToken) -> Option<serde_json::Value> {
    bson::serialize_to_bson(t)
        .ok()
        .map(Bson::into_relaxed_extjson)
}

/// The reader task: owns the stream (never cancelled mid-getMore) and normalizes in order.
pub(super) async fn read_stream(
    mut stream: ChangeStream<Document>,
    p: Arc<Pipeline>,
    tx: mpsc::Sender<Item>,
) {
    let mut ordinals = Ordinals::default();
    let mut fragments = Reassembler::default();
    if let Some(t) = stream.resume_token().as_ref().and_then(token_to_json)
        && tx.send(Item::Idle(t)).await.is_err()
    {
        return;
    }
    loop {
        let item = match stream.next_if_any().await {
            Ok(Some(raw)) => match fragments.push(raw) {
                Ok(None) => continue,
                Ok(Some(raw)) => match normalize(&p, &raw, &mut ordinals) {
                    Ok(Normalized::Event(e)) => Item::Event(e),
                    Ok(Normalized::Skip) => continue,
                    Ok(Normalized::Stop(r)) => Item::Stop(r),
                    Err(m) => Item::Malformed(m),
                },
                Err(m) => Item::Malformed(m),
            },
            // Never a position inside a split event: a resume there would miss its start.
            Ok(None) if fragments.mid_event() => continue,
            Ok(None) => match stream.resume_token().as_ref().and_then(token_to_json) {
                Some(t) => Item::Idle(t),
                None => continue,
            },
            Err(e) => Item::Failed(e),
        };
        let last = matches!(item, Item::Stop(_) | Item::Failed(_) | Item::Malformed(_));
        if tx.send(item).await.is_err() || last {
            return;
        }
    }
}
