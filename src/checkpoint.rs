//! The capture checkpoint: where a pipeline's change stream resumes (`cdc.checkpoint`), and the
//! pure rule that decides how far it may advance.
//!
//! Protocol (`docs/architecture.md`, Checkpoints): the checkpoint holds the resume token of
//! the newest event whose own publisher confirm *and every earlier one* arrived, and never a
//! token inside a group of events sharing a cluster time (a transaction): a resumed stream then
//! renumbers that group exactly as before. An idle stream advances it with the post-batch resume token.

use serde_json::Value;

use crate::event::ClusterTime;

/// A stored resume position.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The change stream's resume token as relaxed extended JSON (opaque; never parsed).
    pub resume_token: Value,
    /// Cluster time of the last event covered, if the position came from an event.
    pub cluster_time: Option<ClusterTime>,
    /// Id of the last event covered, if any.
    pub event_id: Option<String>,
}

/// The checkpoint table of one PostgreSQL database (`cdc.checkpoint`, one row per pipeline).
pub struct CheckpointStore<'a> {
    client: &'a tokio_postgres::Client,
}

impl<'a> CheckpointStore<'a> {
    pub fn new(client: &'a tokio_postgres::Client) -> Self {
        CheckpointStore { client }
    }

    /// The pipeline's checkpoint, or `None` when it never ran.
    pub async fn load(&self, pipeline: &str) -> Result<Option<Checkpoint>, tokio_postgres::Error> {
        let row = self
            .client
            .query_opt(
                "SELECT resume_token, cluster_time_t, cluster_time_i, event_id \
                 FROM cdc.checkpoint WHERE pipeline = $1",
                &[&pipeline],
            )
            .await?;
        Ok(row.map(|r| {
            let t: Option<i64> = r.get(1);
            let i: Option<i64> = r.get(2);
            Checkpoint {
                resume_token: r.get(0),
                cluster_time: t.zip(i).map(|(t, i)| ClusterTime {
                    t: u32::try_from(t).unwrap_or(u32::MAX),
                    i: u32::try_from(i).unwrap_or(u32::MAX),
                }),
                event_id: r.get(3),
            }
        }))
    }

    /// Store the pipeline's checkpoint (insert or replace), never behind the stored one: a
    /// stored position with a cluster time is only replaced by one at or after it (a position
    /// without one, an idle stream's post-batch token, follows the stored one by construction).
    /// With [`CheckpointStore::hand_off`] the only writer of `cdc.checkpoint`.
    pub async fn save(&self, pipeline: &str, cp: &Checkpoint) -> Result<(), tokio_postgres::Error> {
        let t = cp.cluster_time.map(|c| i64::from(c.t));
        let i = cp.cluster_time.map(|c| i64::from(c.i));
        self.client
            .execute(
                "INSERT INTO cdc.checkpoint \
                   (pipeline, resume_token, cluster_time_t, cluster_time_i, event_id, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, now()) \
                 ON CONFLICT (pipeline) DO UPDATE SET resume_token = EXCLUDED.resume_token, \
                   cluster_time_t = EXCLUDED.cluster_time_t, \
                   cluster_time_i = EXCLUDED.cluster_time_i, \
                   event_id = EXCLUDED.event_id, updated_at = now() \
                 WHERE EXCLUDED.cluster_time_t IS NULL OR cdc.checkpoint.cluster_time_t IS NULL \
                    OR (cdc.checkpoint.cluster_time_t, cdc.checkpoint.cluster_time_i) \
                       <= (EXCLUDED.cluster_time_t, EXCLUDED.cluster_time_i)",
                &[&pipeline, &cp.resume_token, &t, &i, &cp.event_id],
            )
            .await?;
        Ok(())
    }

    /// A backfill's handoff: store `token` (the change stream's position before the scan, at
    /// `cluster_time`) as the checkpoint unless the stored one is at or after it. Returns the
    /// stored position's cluster time when it was kept (a checkpoint without one is replaced).
    pub async fn hand_off(
        &self,
        pipeline: &str,
        token: &Value,
        cluster_time: ClusterTime,
    ) -> Result<Option<ClusterTime>, tokio_postgres::Error> {
        let t = i64::from(cluster_time.t);
        let i = i64::from(cluster_time.i);
        let written = self
            .client
            .execute(
                "INSERT INTO cdc.checkpoint \
                   (pipeline, resume_token, cluster_time_t, cluster_time_i, event_id, updated_at) \
                 VALUES ($1, $2, $3, $4, NULL, now()) \
                 ON CONFLICT (pipeline) DO UPDATE SET resume_token = EXCLUDED.resume_token, \
                   cluster_time_t = EXCLUDED.cluster_time_t, \
                   cluster_time_i = EXCLUDED.cluster_time_i, event_id = NULL, updated_at = now() \
                 WHERE cdc.checkpoint.cluster_time_t IS NULL \
                    OR cdc.checkpoint.cluster_time_i IS NULL \
                    OR (cdc.checkpoint.cluster_time_t, cdc.checkpoint.cluster_time_i) < ($3, $4)",
                &[&pipeline, token, &t, &i],
            )
            .await?;
        if written == 1 {
            return Ok(None);
        }
        let kept = self.load(pipeline).await?.and_then(|c| c.cluster_time);
        Ok(Some(kept.unwrap_or(ClusterTime { t: 0, i: 0 })))
    }
}

/// One confirmed stream position, handed to [`Tracker::confirmed`] in stream order.
#[derive(Debug, Clone, PartialEq)]
pub enum Position {
    /// A published event, confirmed by the broker.
    Event {
        cluster_time: ClusterTime,
        id: String,
        token: Value,
    },
    /// A post-batch resume token after an empty batch: every earlier change is done.
    Idle { token: Value },
}

/// Decides the safe checkpoint from the in-order stream of confirmed positions.
#[derive(Debug, Default)]
pub struct Tracker {
    /// The last confirmed event; its group may still continue.
    open_group: Option<Checkpoint>,
    /// The newest position that is safe to store.
    safe: Option<Checkpoint>,
    /// Whether `safe` changed since it was last taken.
    dirty: bool,
}

impl Tracker {
    /// A tracker continuing from a stored checkpoint (which is not rewritten until it moves).
    pub(crate) fn resume_from(stored: Option<Checkpoint>) -> Tracker {
        Tracker {
            open_group: None,
            safe: stored,
            dirty: false,
        }
    }

    /// Record the next confirmed position (every earlier one is confirmed too).
    pub fn confirmed(&mut self, pos: Position) {
        match pos {
            Position::Event {
                cluster_time,
                id,
                token,
            } => {
                if let Some(open) = self.open_group.take()
                    && open.cluster_time != Some(cluster_time)
                {
                    self.set_safe(open);
                }
                self.open_group = Some(Checkpoint {
                    resume_token: token,
                    cluster_time: Some(cluster_time),
                    event_id: Some(id),
                });
            }
            Position::Idle { token } => {
                // An empty batch closes any open group: the server returned all of it.
                let last = self.open_group.take().or_else(|| self.safe.clone());
                self.set_safe(Checkpoint {
                    resume_token: token,
                    cluster_time: last.as_ref().and_then(|c| c.cluster_time),
                    event_id: last.and_then(|c| c.event_id),
                });
            }
        }
    }

    /// The stream showed an event of `cluster_time` after the confirmed ones (not published):
    /// the open group is complete if that is another cluster time.
    pub(crate) fn next_group_seen(&mut self, cluster_time: ClusterTime) {
        if let Some(open) = self.open_group.take() {
            if open.cluster_time == Some(cluster_time) {
                self.open_group = Some(open);
            } else {
                self.set_safe(open);
            }
        }
    }

    fn set_safe(&mut self, cp: Checkpoint) {
        if self.safe.as_ref() != Some(&cp) {
            self.safe = Some(cp);
            self.dirty = true;
        }
    }

    /// The safe checkpoint if it changed since the last call.
    pub(crate) fn take_changed(&mut self) -> Option<Checkpoint> {
        if self.dirty {
            self.dirty = false;
            self.safe.clone()
        } else {
            None
        }
    }

    /// Whether an event group is confirmed but not yet safe to store.
    pub(crate) fn has_open_group(&self) -> bool {
        self.open_group.is_some()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ev(t: u32, i: u32, n: u32) -> Position {
        Position::Event {
            cluster_time: ClusterTime { t, i },
            id: format!("p:{t}.{i}.{n}"),
            token: json!({ "_data": format!("{t}.{i}.{n}") }),
        }
    }

    fn token(cp: Option<Checkpoint>) -> Option<Value> {
        cp.map(|c| c.resume_token)
    }

    #[test]
    fn a_group_becomes_safe_only_when_the_next_group_starts() {
        let mut tr = Tracker::default();
        tr.confirmed(ev(1, 1, 0));
        assert_eq!(tr.take_changed(), None);
        tr.confirmed(ev(1, 1, 1));
        assert_eq!(tr.take_changed(), None, "never inside a transaction");
        tr.confirmed(ev(1, 2, 0));
        assert_eq!(token(tr.take_changed()), Some(json!({"_data": "1.1.1"})));
        assert_eq!(tr.take_changed(), None, "reported once");
    }

    #[test]
    fn a_resumed_tracker_keeps_the_stored_position_until_it_moves() {
        let stored = Checkpoint {
            resume_token: json!({"_data": "stored"}),
            cluster_time: Some(ClusterTime { t: 1, i: 1 }),
            event_id: Some("p:1.1.0".into()),
        };
        let mut tr = Tracker::resume_from(Some(stored.clone()));
        tr.confirmed(Position::Idle {
            token: json!({"_data": "stored"}),
        });
        assert_eq!(
            tr.take_changed(),
            None,
            "the same position is not rewritten"
        );
        tr.confirmed(Position::Idle {
            token: json!({"_data": "later"}),
        });
        let cp = tr.take_changed().unwrap();
        assert_eq!(cp.event_id, stored.event_id, "the last event stays named");
    }

    #[test]
    fn seeing_the_next_cluster_time_closes_a_group_at_shutdown() {
        let mut tr = Tracker::default();
        tr.confirmed(ev(3, 1, 0));
        tr.next_group_seen(ClusterTime { t: 3, i: 1 });
        assert_eq!(tr.take_changed(), None, "same transaction: still open");
        tr.next_group_seen(ClusterTime { t: 3, i: 2 });
        assert_eq!(token(tr.take_changed()), Some(json!({"_data": "3.1.0"})));
    }

    #[test]
    fn an_idle_batch_closes_the_group_and_moves_to_the_post_batch_token() {
        let mut tr = Tracker::default();
        tr.confirmed(ev(1, 1, 0));
        tr.confirmed(Position::Idle {
            token: json!({"_data": "pbrt"}),
        });
        let cp = tr.take_changed().unwrap();
        assert_eq!(cp.resume_token, json!({"_data": "pbrt"}));
        assert_eq!(cp.event_id.as_deref(), Some("p:1.1.0"));
        assert!(!tr.has_open_group());
        tr.confirmed(Position::Idle {
            token: json!({"_data": "pbrt"}),
        });
        assert_eq!(tr.take_changed(), None, "unchanged token is not rewritten");
    }
}
