//! One batch taken from the queue: decoded into events and dead letters, then, once committed,
//! logged and counted.

use chrono::Utc;
use lapin::message::Delivery;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::config::Pipeline;
use crate::metrics as m;
use crate::project::SourceDoc;

use super::apply::Applied;
use super::batch::{decode_source, is_legacy_sync_message};
use super::dlq::{self, DeadLetter};

/// A batch decoded: the events to apply (with their delivery index) and the undecodable.
pub(super) struct Flush {
    pub docs: Vec<SourceDoc>,
    doc_delivery: Vec<usize>,
    undecodable: Vec<(usize, DeadLetter)>,
    /// Legacy sync messages acknowledged without effect.
    ignored_legacy: u64,
    newest_wall: Option<chrono::DateTime<Utc>>,
}

impl Flush {
    pub fn decode(pipeline: &Pipeline, deliveries: &[Delivery]) -> Flush {
        let mut f = Flush {
            docs: Vec::with_capacity(deliveries.len()),
            doc_delivery: Vec::with_capacity(deliveries.len()),
            undecodable: Vec::new(),
            ignored_legacy: 0,
            newest_wall: None,
        };
        for (i, d) in deliveries.iter().enumerate() {
            let amqp_type = d.properties.kind().as_ref().map(|t| t.as_str());
            if is_legacy_sync_message(&d.data, amqp_type) {
                f.ignored_legacy += 1;
                continue;
            }
            match decode_source(&d.data, &pipeline.name) {
                Ok((doc, wall_time)) => {
                    f.newest_wall = f.newest_wall.max(Some(wall_time));
                    f.docs.push(doc);
                    f.doc_delivery.push(i);
                }
                Err(dl) => f.undecodable.push((i, dl)),
            }
        }
        f
    }

    /// Every message to dead-letter, in delivery order, logged by id and reason.
    pub fn dead_letters<'a>(
        &'a self,
        deliveries: &'a [Delivery],
        applied: &'a Applied,
    ) -> Vec<(&'a Delivery, &'a DeadLetter)> {
        let mut out: Vec<(usize, &DeadLetter)> = self
            .undecodable
            .iter()
            .map(|(i, dl)| (*i, dl))
            .chain(
                applied
                    .rejected
                    .iter()
                    .map(|(j, dl)| (self.doc_delivery[*j], dl)),
            )
            .collect();
        out.sort_by_key(|(i, _)| *i);
        out.into_iter()
            .map(|(i, dl)| {
                let d = &deliveries[i];
                warn!(message_id = %dlq::message_id(d), routing_key = %d.routing_key,
                      reason = dl.reason.as_str(), error = %dl.error, "projector: dead-lettering message");
                (d, dl)
            })
            .collect()
    }

    pub fn record(
        &self,
        pipeline: &Pipeline,
        applied: &Applied,
        letters: &[(&Delivery, &DeadLetter)],
        started: Instant,
    ) {
        let p = || pipeline.name.clone();
        let count = |entity: &'static str, outcome: &'static str, n: u64| {
            metrics::counter!(m::PROJECTOR_EVENTS_APPLIED_TOTAL, m::LABEL_PIPELINE => p(),
                m::LABEL_ENTITY => entity, m::LABEL_OUTCOME => outcome)
            .increment(n);
        };
        for (e, n) in &applied.fresh {
            count(e.as_str(), m::OUTCOME_APPLIED, *n);
        }
        for (e, n) in &applied.stale {
            count(e.as_str(), m::OUTCOME_STALE, *n);
        }
        count(
            m::ENTITY_LEGACY,
            m::OUTCOME_IGNORED_LEGACY,
            self.ignored_legacy,
        );
        for (_, dl) in &self.undecodable {
            count(m::ENTITY_UNKNOWN, m::OUTCOME_DEAD_LETTERED, 1);
            metrics::counter!(m::PROJECTOR_DEAD_LETTERED_TOTAL, m::LABEL_PIPELINE => p(),
                m::LABEL_REASON => dl.reason.as_str())
            .increment(1);
        }
        for (j, dl) in &applied.rejected {
            count(self.docs[*j].entity.as_str(), m::OUTCOME_DEAD_LETTERED, 1);
            metrics::counter!(m::PROJECTOR_DEAD_LETTERED_TOTAL, m::LABEL_PIPELINE => p(),
                m::LABEL_REASON => dl.reason.as_str())
            .increment(1);
        }
        let events = self.docs.len() + self.undecodable.len() + self.ignored_legacy as usize;
        metrics::histogram!(m::PROJECTOR_BATCH_EVENTS, m::LABEL_PIPELINE => p())
            .record(events as f64);
        metrics::histogram!(m::PROJECTOR_BATCH_DURATION_SECONDS, m::LABEL_PIPELINE => p())
            .record(started.elapsed().as_secs_f64());
        if let Some(wall) = self.newest_wall {
            metrics::gauge!(m::PROJECTOR_LAST_EVENT_TIMESTAMP, m::LABEL_PIPELINE => p())
                .set(wall.timestamp_millis() as f64 / 1000.0);
        }
        debug!(
            events,
            applied = applied.stats.applied,
            stale = applied.stats.stale,
            dead_lettered = letters.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "projector: batch committed and acked"
        );
    }
}
