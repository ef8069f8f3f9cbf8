//! Tests of the `mongosim` wire simulator, all through the real `mongodb` driver. They also
//! run against a real replica set when `MONGO_TEST_URI` is set (simulator-only tests skip).

mod crud;
mod dump;
mod faults;
mod split;
mod streams;

use std::time::{Duration, Instant};

use bson::Document;
use mongodb::change_stream::ChangeStream;

/// Wait up to `within` for the next event (raw document) of a stream.
/// A collection change stream with raw documents and the given getMore wait.
pub async fn watch(c: &mongodb::Collection<Document>, await_ms: u64) -> ChangeStream<Document> {
    c.watch()
        .max_await_time(Duration::from_millis(await_ms))
        .await
        .expect("open change stream")
        .with_type::<Document>()
}

pub async fn next_event(s: &mut ChangeStream<Document>, within: Duration) -> Option<Document> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match s.next_if_any().await {
            Ok(Some(ev)) => return Some(ev),
            Ok(None) => {}
            Err(e) => panic!("change stream error: {e}"),
        }
    }
    None
}

/// Like `next_event`, but returns the error instead of panicking.
pub async fn try_next_event(
    s: &mut ChangeStream<Document>,
    within: Duration,
) -> mongodb::error::Result<Option<Document>> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(ev) = s.next_if_any().await? {
            return Ok(Some(ev));
        }
    }
    Ok(None)
}

/// The `$changeStream` stage of a logged aggregate command.
pub fn change_stream_stage(cmd: &Document) -> Option<Document> {
    cmd.get_array("pipeline")
        .ok()?
        .first()?
        .as_document()?
        .get_document("$changeStream")
        .ok()
        .cloned()
}

/// The error code of a driver error, if it is a server error.
pub fn error_code(e: &mongodb::error::Error) -> Option<i32> {
    match &*e.kind {
        mongodb::error::ErrorKind::Command(c) => Some(c.code),
        mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) => {
            Some(w.code)
        }
        mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteConcernError(w)) => {
            Some(w.code)
        }
        _ => None,
    }
}
