//! One tailing session: open the stream at the checkpoint, publish with a bounded confirm
//! window, advance the checkpoint behind confirms, and stop on the first error.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use metrics::{Counter, Gauge, Histogram};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::CaptureStage;
use super::error::CaptureError;
use super::leader::{LEASE_PING, Lease};
use super::stream::{Item, classify, open_stream, read_stream, token_from_json};
use crate::checkpoint::{CheckpointStore, Position, Tracker};
use crate::event::{ChangeEvent, Op};
use crate::health::Dependency;
use crate::metrics as m;
use crate::publish::{PublishError, Publisher};

/// How often the checkpoint may be written, the broker and lock checked, gauges refreshed.
const TICK: Duration = Duration::from_secs(1);
/// How long a graceful stop waits for outstanding confirms.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A confirm (or an idle position) resolved, with what it covers.
struct Done {
    pos: Position,
    counted: Option<(Counter, std::time::SystemTime)>,
    published_at: Instant,
    confirmed_at: Instant,
    /// An empty batch the server held for its await time: the stream was read up to now.
    /// (A reopened stream's first empty positions come at once, from the aggregate, before
    /// any getMore: a change too large to read, for one, fails only the getMore after them.)
    waited: bool,
    result: Result<(), PublishError>,
}

type Pending = FuturesOrdered<Pin<Box<dyn Future<Output = Done> + Send>>>;

/// Run one session until shutdown (`Ok`) or an error.
pub(super) async fn tail(
    stage: &CaptureStage,
    mongo: &mongodb::Client,
    lease: &Lease,
    shutdown: &CancellationToken,
) -> Result<(), CaptureError> {
    let p = &stage.settings.pipeline;
    let store = CheckpointStore::new(&lease.client);
    let checkpoint = store
        .load(&p.name)
        .await
        .map_err(CaptureError::Checkpoint)?;
    let conn_name = format!("bowmark-cdc capture {}", p.name);
    let connect = Publisher::connect(
        &stage.settings.rabbitmq,
        p,
        &conn_name,
        !stage.exchange_declared.load(Ordering::Relaxed),
    );
    // (a broker under an alarm may hold the topology's declarations)
    let publisher = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        c = connect => c,
    }
    .inspect_err(|e| {
        stage
            .health
            .set_failed(Dependency::Broker, crate::cause::chain(e))
    })?;
    stage.exchange_declared.store(true, Ordering::Relaxed);
    stage.health.set_connected(Dependency::Broker, true);
    let opened = match &checkpoint {
        Some(cp) => match token_from_json(&p.name, &cp.resume_token) {
            Ok(token) => open_stream(p, mongo, Some(token)).await,
            Err(e) => Err(e),
        },
        None => open_stream(p, mongo, None).await,
    };
    let stream = match opened {
        Ok(stream) => stream,
        Err(e) => {
            stage.health.set_connected(Dependency::Mongo, false);
            publisher.close().await;
            return Err(e);
        }
    };
    stage.health.set_connected(Dependency::Mongo, true);
    match &checkpoint {
        Some(cp) => tracing::info!(pipeline = %p.name, last_event = ?cp.event_id,
            "change stream resumed from the checkpoint"),
        None => tracing::info!(pipeline = %p.name,
            "no checkpoint: the change stream starts now; earlier changes are not captured \
             (run `bowmark-cdc backfill` to load them)"),
    }
    let (tx, rx) = mpsc::channel(256);
    let reader = tokio::spawn(read_stream(stream, Arc::new(p.clone()), tx));
    let mut s = Session::new(stage, lease, &publisher, checkpoint);
    let mut pending = Pending::new();
    let mut rx = rx;
    let result = s.run(&mut rx, &mut pending, shutdown).await;
    let result = match result {
        Ok(()) => s.drain(&mut pending, &mut rx).await,
        Err(e @ (CaptureError::Invalidated { .. } | CaptureError::HistoryLost { .. })) => {
            let _ = s.drain(&mut pending, &mut rx).await;
            Err(e)
        }
        Err(e) => {
            let _ = s.write_checkpoint().await;
            Err(e)
        }
    };
    reader.abort();
    publisher.close().await;
    if matches!(
        result,
        Err(CaptureError::Publish(_) | CaptureError::BrokerClosed)
    ) {
        stage.health.set_connected(Dependency::Broker, false);
    }
    result
}

/// Per-collection/op counters, created once.
struct OpCounters {
    captured: Counter,
    published: Counter,
    confirmed: Counter,
}

struct Session<'a> {
    stage: &'a CaptureStage,
    lease: &'a Lease,
    publisher: &'a Publisher,
    tracker: Tracker,
    window: usize,
    counters: HashMap<(String, Op), OpCounters>,
    latency: Histogram,
    in_flight: Gauge,
    lag: Gauge,
    event_ts: Gauge,
    checkpoint_ts: Gauge,
    /// When the newest confirmed empty batch was read (the stream had nothing newer).
    idle_at: Option<std::time::SystemTime>,
    /// When the previous stream item arrived.
    last_read: Instant,
    last_ping: Instant,
    /// Whether the broker was blocking publishing at the last tick.
    blocked: bool,
}

impl<'a> Session<'a> {
    fn new(
        stage: &'a CaptureStage,
        lease: &'a Lease,
        publisher: &'a Publisher,
        stored: Option<crate::checkpoint::Checkpoint>,
    ) -> Self {
        let name = stage.settings.pipeline.name.clone();
        let g = |n: &'static str| metrics::gauge!(n, m::LABEL_PIPELINE => name.clone());
        Session {
            stage,
            lease,
            publisher,
            tracker: Tracker::resume_from(stored),
            window: stage.settings.pipeline.capture.confirm_window,
            counters: HashMap::new(),
            latency: metrics::histogram!(m::CAPTURE_CONFIRM_LATENCY, m::LABEL_PIPELINE => name.clone()),
            in_flight: g(m::CAPTURE_CONFIRMS_IN_FLIGHT),
            lag: g(m::CAPTURE_SOURCE_LAG),
            event_ts: g(m::CAPTURE_LAST_EVENT_TIMESTAMP),
            checkpoint_ts: g(m::CAPTURE_CHECKPOINT_TIMESTAMP),
            idle_at: None,
            last_read: Instant::now(),
            last_ping: Instant::now(),
            blocked: false,
        }
    }

    async fn run(
        &mut self,
        rx: &mut mpsc::Receiver<Item>,
        pending: &mut Pending,
        shutdown: &CancellationToken,
    ) -> Result<(), CaptureError> {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let lost = self.lease.lost().clone();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                _ = lost.cancelled() => return Err(CaptureError::LeaseLost),
                Some(done) = pending.next(), if !pending.is_empty() => self.handle_confirm(done)?,
                _ = tick.tick() => self.handle_tick(pending.len()).await?,
                item = rx.recv(), if pending.len() < self.window => self.handle_item(item, pending).await?,
            }
        }
    }

    fn handle_confirm(&mut self, done: Done) -> Result<(), CaptureError> {
        done.result?;
        if let Some((confirmed, wall)) = done.counted {
            confirmed.increment(1);
            self.latency.record(
                done.confirmed_at
                    .duration_since(done.published_at)
                    .as_secs_f64(),
            );
            let lag = std::time::SystemTime::now()
                .duration_since(wall)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            self.lag.set(lag);
            self.event_ts.set(unix_seconds(wall));
        } else {
            self.lag.set(0.0);
            if done.waited {
                self.idle_at = Some(std::time::SystemTime::now() - done.published_at.elapsed());
            }
        }
        self.tracker.confirmed(done.pos);
        Ok(())
    }

    async fn handle_item(
        &mut self,
        item: Option<Item>,
        pending: &mut Pending,
    ) -> Result<(), CaptureError> {
        let p = &self.stage.settings.pipeline;
        let since_last = std::mem::replace(&mut self.last_read, Instant::now()).elapsed();
        match item {
            None => Err(CaptureError::StreamEnded),
            Some(Item::Event(e)) => {
                tracing::trace!(pipeline = %p.name, event_id = %e.id, "publishing");
                self.publish(*e, pending).await
            }
            Some(Item::Idle(token)) => {
                tracing::trace!(pipeline = %p.name, in_flight = pending.len(), "idle batch");
                let now = Instant::now();
                let waited = since_last * 2 >= Duration::from_millis(p.capture.max_await_ms);
                pending.push_back(Box::pin(std::future::ready(Done {
                    pos: Position::Idle { token },
                    counted: None,
                    published_at: now,
                    confirmed_at: now,
                    waited,
                    result: Ok(()),
                })));
                Ok(())
            }
            Some(Item::Stop(reason)) => Err(CaptureError::Invalidated {
                pipeline: p.name.clone(),
                file: p.file.display().to_string(),
                reason,
            }),
            Some(Item::Failed(e)) => {
                self.stage.health.set_connected(Dependency::Mongo, false);
                Err(classify(p, e))
            }
            Some(Item::Malformed(m)) => Err(CaptureError::Malformed(m)),
        }
    }

    async fn publish(&mut self, e: ChangeEvent, pending: &mut Pending) -> Result<(), CaptureError> {
        self.lease.valid()?;
        let name = &self.stage.settings.pipeline.name;
        let c = self
            .counters
            .entry((e.ns.coll.clone(), e.op))
            .or_insert_with(|| {
                let c = |n: &'static str| {
                    metrics::counter!(n, m::LABEL_PIPELINE => name.clone(),
                        m::LABEL_COLLECTION => e.ns.coll.clone(), m::LABEL_OP => e.op.as_str())
                };
                OpCounters {
                    captured: c(m::CAPTURE_EVENTS_CAPTURED),
                    published: c(m::CAPTURE_EVENTS_PUBLISHED),
                    confirmed: c(m::CAPTURE_EVENTS_CONFIRMED),
                }
            });
        c.captured.increment(1);
        let mut confirm = Box::pin(self.publisher.publish(&e)?);
        // Queue the frames now, in stream order; under a broker alarm the future waits in
        // `pending` (bounded by the confirm window), never in this loop.
        let early = futures_util::poll!(confirm.as_mut());
        c.published.increment(1);
        let confirmed = c.confirmed.clone();
        let wall: std::time::SystemTime = e.wall_time.into();
        let pos = Position::Event {
            cluster_time: e.cluster_time,
            id: e.id,
            token: e.resume_token,
        };
        let published_at = Instant::now();
        pending.push_back(Box::pin(async move {
            let result = match early {
                std::task::Poll::Ready(r) => r,
                std::task::Poll::Pending => confirm.await,
            };
            Done {
                pos,
                counted: Some((confirmed, wall)),
                published_at,
                confirmed_at: Instant::now(),
                waited: false,
                result,
            }
        }));
        Ok(())
    }

    async fn handle_tick(&mut self, in_flight: usize) -> Result<(), CaptureError> {
        self.in_flight.set(in_flight as f64);
        if !self.publisher.is_connected() {
            return Err(CaptureError::BrokerClosed);
        }
        self.report_blocked(in_flight);
        if self.last_ping.elapsed() >= LEASE_PING {
            self.last_ping = Instant::now();
            self.lease.check().await?;
        }
        self.write_checkpoint().await?;
        if in_flight == 0 && !self.tracker.has_open_group() {
            // Every change read is confirmed and stored, up to the last empty batch.
            if let Some(at) = self.idle_at {
                self.advance_covered(unix_seconds(at));
            }
        }
        Ok(())
    }

    /// Readiness while the broker blocks publishing (a memory or disk alarm): the capture
    /// stays responsive (lease, checkpoint, SIGTERM) and publishes again when it clears.
    fn report_blocked(&mut self, in_flight: usize) {
        let blocked = self.publisher.is_blocked();
        if blocked == self.blocked {
            return;
        }
        self.blocked = blocked;
        let name = &self.stage.settings.pipeline.name;
        if blocked {
            tracing::warn!(pipeline = %name, in_flight, "broker blocked: RabbitMQ blocks \
                publishing (a memory or disk alarm); the capture waits and resumes when it clears");
            self.stage.health.set_failed(
                Dependency::Broker,
                "broker blocked: RabbitMQ raised a memory or disk alarm; publishing waits",
            );
        } else {
            tracing::info!(pipeline = %name, "broker unblocked: publishing again");
            self.stage.health.set_connected(Dependency::Broker, true);
        }
    }

    /// Store the safe checkpoint if it moved.
    async fn write_checkpoint(&mut self) -> Result<(), CaptureError> {
        self.lease.valid()?;
        let Some(cp) = self.tracker.take_changed() else {
            return Ok(());
        };
        let name = &self.stage.settings.pipeline.name;
        CheckpointStore::new(&self.lease.client)
            .save(name, &cp)
            .await
            .map_err(CaptureError::Checkpoint)?;
        if let Some(ct) = cp.cluster_time {
            self.advance_covered(f64::from(ct.t));
        }
        tracing::debug!(pipeline = %name, last_event = ?cp.event_id, "checkpoint stored");
        Ok(())
    }

    /// Export the time the stored checkpoint covers the stream up to, never backward: it
    /// only moves on progress a session shows, so sessions that fail at once leave it to age.
    fn advance_covered(&mut self, unix: f64) {
        let covered = &self.stage.covered;
        // Non-negative floats order like their bits.
        let before = covered.fetch_max(unix.to_bits(), Ordering::Relaxed);
        if unix > f64::from_bits(before) {
            self.checkpoint_ts.set(unix);
        }
    }

    /// Graceful stop: wait (bounded) for outstanding confirms, close the last event group if
    /// the stream shows it is complete, then store the checkpoint.
    async fn drain(
        &mut self,
        pending: &mut Pending,
        rx: &mut mpsc::Receiver<Item>,
    ) -> Result<(), CaptureError> {
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        let name = self.stage.settings.pipeline.name.clone();
        let mut confirmed_all = true;
        while !pending.is_empty() {
            match tokio::time::timeout_at(deadline, pending.next()).await {
                Ok(Some(done)) => {
                    if let Err(err) = self.handle_confirm(done) {
                        tracing::warn!(pipeline = %name, error = %err,
                            "a confirm failed while stopping; the checkpoint stays before it");
                        confirmed_all = false;
                        break;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(pipeline = %name, outstanding = pending.len(),
                        "confirms still outstanding at the stop deadline; they will be re-published");
                    confirmed_all = false;
                    break;
                }
            }
        }
        if confirmed_all && self.tracker.has_open_group() {
            self.close_open_group(rx).await;
        }
        self.write_checkpoint().await?;
        tracing::info!(pipeline = %name, "capture stopped; checkpoint stored");
        Ok(())
    }

    /// Look at the next stream item (not publishing it): an empty batch or an event of
    /// another cluster time proves the last confirmed group complete.
    async fn close_open_group(&mut self, rx: &mut mpsc::Receiver<Item>) {
        let wait = Duration::from_millis(self.stage.settings.pipeline.capture.max_await_ms)
            + Duration::from_millis(500);
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(Item::Idle(token))) => self.tracker.confirmed(Position::Idle { token }),
            Ok(Some(Item::Event(e))) => self.tracker.next_group_seen(e.cluster_time),
            _ => {}
        }
    }
}

fn unix_seconds(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
