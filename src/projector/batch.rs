//! Batching by count, bytes and linger time, and decoding a delivery into a v1 event. Pure.

use std::time::Duration;

use tokio::time::Instant;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

use crate::config::Pipeline;
use crate::event::{ChangeEvent, Entity};
use crate::project::SourceDoc;

use super::dlq::{DeadLetter, Reason};

/// Slots reserved up front, whatever `batch_max_events` says.
const MAX_PREALLOCATED: usize = 4096;

/// When a batch is flushed: whichever limit is reached first.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_events: usize,
    pub max_bytes: usize,
    pub linger: Duration,
}

impl Limits {
    pub fn of(pipeline: &Pipeline) -> Limits {
        Limits {
            max_events: pipeline.projector.batch_max_events,
            max_bytes: pipeline.projector.batch_max_bytes,
            linger: pipeline.linger(),
        }
    }
}

/// Items waiting to be applied together; the first one starts the linger clock.
#[derive(Debug)]
pub struct Batch<T> {
    items: Vec<T>,
    bytes: usize,
    deadline: Option<Instant>,
    limits: Limits,
}

impl<T> Batch<T> {
    pub fn new(limits: Limits) -> Batch<T> {
        Batch {
            items: Vec::with_capacity(limits.max_events.min(MAX_PREALLOCATED)),
            bytes: 0,
            deadline: None,
            limits,
        }
    }

    pub fn push(&mut self, item: T, bytes: usize) {
        if self.items.is_empty() {
            self.deadline = Some(Instant::now() + self.limits.linger);
        }
        self.items.push(item);
        self.bytes += bytes;
    }

    /// Count or byte limit reached: flush now.
    pub(crate) fn is_full(&self) -> bool {
        self.items.len() >= self.limits.max_events || self.bytes >= self.limits.max_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// When the linger time of a non-empty batch runs out.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Empty the batch, returning its items in arrival order.
    pub fn take(&mut self) -> Vec<T> {
        self.bytes = 0;
        self.deadline = None;
        let capacity = self.limits.max_events.min(MAX_PREALLOCATED);
        std::mem::replace(&mut self.items, Vec::with_capacity(capacity))
    }
}

/// Whether a delivery is a legacy sync message (`{mongoId, action, timestamp}` with no `type`
/// property and no `v`), published by the Node producers while they still run.
pub(crate) fn is_legacy_sync_message(body: &[u8], amqp_type: Option<&str>) -> bool {
    if amqp_type.is_some() {
        return false;
    }
    let Ok(serde_json::Value::Object(o)) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    !o.contains_key("v")
        && o.get("mongoId").is_some_and(|v| v.is_string())
        && o.get("action").is_some_and(|v| v.is_string())
}

/// Decode a message body into the source document it carries and its event's wall time, or
/// say why it can never apply (the reasons of [`decode`], which the failing body is given to).
pub(crate) fn decode_source(
    body: &[u8],
    pipeline: &str,
) -> Result<(SourceDoc, DateTime<Utc>), DeadLetter> {
    // The document stays the JSON text it arrived in: no tree of values is built for it (that
    // was a sixth of the daemon's CPU per event in a profile of the catch-up).
    match serde_json::from_slice::<ChangeEvent<Box<RawValue>>>(body) {
        Ok(mut e) if e.v == 1 && e.pipeline == pipeline => {
            let doc = e.doc.take();
            Ok((SourceDoc::of_event(&e, doc), e.wall_time))
        }
        // Not a valid event of this pipeline: the strict decoder says why (or, should it
        // read what this one cannot, decodes it).
        _ => decode(body, pipeline).map(|ev| (SourceDoc::from(&ev), ev.wall_time)),
    }
}

/// Decode a message body into a v1 event of this pipeline, or say why it can never apply.
pub fn decode(body: &[u8], pipeline: &str) -> Result<ChangeEvent, DeadLetter> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| DeadLetter::new(Reason::BadJson, format!("body is not JSON: {e}")))?;
    match value.get("v").and_then(serde_json::Value::as_u64) {
        Some(1) => {}
        other => {
            return Err(DeadLetter::new(
                Reason::UnsupportedVersion,
                format!("expected \"v\": 1, found {other:?}"),
            ));
        }
    }
    if let Some(entity) = value.get("entity").and_then(serde_json::Value::as_str)
        && let Err(e) = entity.parse::<Entity>()
    {
        return Err(DeadLetter::new(Reason::UnknownEntity, e.to_string()));
    }
    let event: ChangeEvent = serde_json::from_value(value).map_err(|e| {
        DeadLetter::new(Reason::InvalidEvent, format!("not a v1 change event: {e}"))
    })?;
    if event.pipeline != pipeline {
        return Err(DeadLetter::new(
            Reason::WrongPipeline,
            format!(
                "event of pipeline {:?} on the queue of pipeline {pipeline:?}",
                event.pipeline
            ),
        ));
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(n: usize, bytes: usize) -> Limits {
        Limits {
            max_events: n,
            max_bytes: bytes,
            linger: Duration::from_millis(50),
        }
    }

    #[test]
    fn batch_is_full_at_count_or_bytes_and_take_resets_it() {
        let mut b = Batch::new(limits(3, 100));
        assert!(b.deadline().is_none());
        b.push(1, 10);
        assert!(b.deadline().is_some() && !b.is_full());
        b.push(2, 10);
        b.push(3, 10);
        assert!(b.is_full());
        assert_eq!(b.take(), vec![1, 2, 3]);
        assert!(b.is_empty() && b.deadline().is_none());
        b.push(4, 100);
        assert!(b.is_full(), "a byte limit alone fills the batch");
    }

    fn body(v: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    fn good() -> serde_json::Value {
        serde_json::json!({
            "v": 1, "id": "paving:1.0.0", "pipeline": "paving", "entity": "employee",
            "op": "insert", "action": "created", "ns": {"db": "paving", "coll": "employees"},
            "key": "621664550000000000000001", "cluster_time": {"t": 1, "i": 0}, "ordinal": 0,
            "wall_time": "2026-11-27T04:15:03.120Z", "doc": {"name": "A"},
            "resume_token": {"_data": "00"}, "mongoId": "621664550000000000000001",
            "timestamp": "2026-11-27T04:15:03.120Z"
        })
    }

    #[test]
    fn decode_accepts_a_v1_event_and_names_each_poison_reason() {
        assert!(decode(&body(good()), "paving").is_ok());
        let reason = |b: Vec<u8>| decode(&b, "paving").unwrap_err().reason;
        assert_eq!(reason(b"{not json".to_vec()), Reason::BadJson);
        let mut v2 = good();
        v2["v"] = 2.into();
        assert_eq!(reason(body(v2)), Reason::UnsupportedVersion);
        let legacy = serde_json::json!({"mongoId": "x", "action": "updated"});
        assert_eq!(reason(body(legacy.clone())), Reason::UnsupportedVersion);
        assert!(is_legacy_sync_message(&body(legacy.clone()), None));
        assert!(!is_legacy_sync_message(
            &body(legacy),
            Some("bowmark.cdc.v1")
        ));
        assert!(!is_legacy_sync_message(&body(good()), None));
        assert!(!is_legacy_sync_message(b"{not json", None));
        let mut unknown = good();
        unknown["entity"] = "spaceship".into();
        assert_eq!(reason(body(unknown)), Reason::UnknownEntity);
        let mut broken = good();
        broken["cluster_time"] = "yesterday".into();
        assert_eq!(reason(body(broken)), Reason::InvalidEvent);
        assert_eq!(
            decode(&body(good()), "concrete").unwrap_err().reason,
            Reason::WrongPipeline
        );
    }

    /// The decoder the projector uses (the document kept as text) reads every event as the
    /// strict one does, and gives the same reason for every body it cannot apply.
    #[test]
    fn decode_source_reads_what_decode_reads_and_rejects_for_the_same_reasons() {
        let mut delete = good();
        delete["op"] = "delete".into();
        delete["action"] = "deleted".into();
        let mut null_doc = good();
        null_doc["op"] = "update".into();
        null_doc["action"] = "updated".into();
        null_doc["doc"] = serde_json::Value::Null;
        let mut escaped = good();
        escaped["key"] = "a\"b\\c\u{e9}".into();
        escaped["doc"] = serde_json::json!({"z": "line\nbreak", "a": [1, 2.5, null], "t": "\u{0}"});
        for v in [good(), delete, null_doc, escaped] {
            let strict = decode(&body(v.clone()), "paving").expect("a valid event");
            let (doc, wall) = decode_source(&body(v), "paving").expect("a valid event");
            let expected = SourceDoc::from(&strict);
            assert_eq!(wall, strict.wall_time);
            assert_eq!(
                (
                    doc.entity,
                    &doc.key,
                    doc.version,
                    doc.wall_time,
                    doc.deleted
                ),
                (
                    expected.entity,
                    &expected.key,
                    expected.version,
                    expected.wall_time,
                    expected.deleted
                )
            );
            let parse = |d: &Option<Box<RawValue>>| {
                d.as_ref()
                    .map(|r| serde_json::from_str::<serde_json::Value>(r.get()).unwrap())
            };
            assert_eq!(parse(&doc.doc), parse(&expected.doc));
        }
        let mut bad_action = good();
        bad_action["action"] = "exploded".into();
        let mut no_ns = good();
        no_ns.as_object_mut().unwrap().remove("ns");
        let mut v2 = good();
        v2["v"] = 2.into();
        let mut unknown = good();
        unknown["entity"] = "spaceship".into();
        for b in [
            b"{not json".to_vec(),
            body(bad_action),
            body(no_ns),
            body(v2),
            body(unknown),
        ] {
            assert_eq!(
                decode_source(&b, "paving").unwrap_err().reason,
                decode(&b, "paving").unwrap_err().reason
            );
        }
        assert_eq!(
            decode_source(&body(good()), "concrete").unwrap_err().reason,
            Reason::WrongPipeline
        );
    }
}
