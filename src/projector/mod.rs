//! The projector stage (docs/architecture.md): consumes the pipeline's quorum queue with a bounded
//! prefetch, batches what has arrived (up to a count, bytes and an optional linger time), applies each batch in one
//! PostgreSQL transaction through [`crate::project::project`] and acks only after the commit.
//!
//! Delivery guarantee: at least once into an idempotent, version-guarded projection. A crash
//! anywhere before the ack leaves the batch unacked, so the broker redelivers it and the guard
//! turns the replay into a no-op. Messages that can never apply are published to the
//! dead-letter queue (confirmed) before they are acked. Transient failures retry the batch
//! with capped, jittered backoff; a lost channel or connection is rebuilt and re-consumed.

mod apply;
mod batch;
pub mod dlq;
mod error;
mod flush;
mod split;

use std::time::Duration;

use crate::retry::Backoff;
use deadpool_postgres::Pool;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{Pipeline, RabbitConn, Settings};
use crate::health::{Dependency, Health, RoleState, Stage};
use crate::metrics as m;
use crate::project::ErrorClass;
use crate::topology;

pub use apply::Applied;
pub use batch::{Batch, Limits, decode};
pub use dlq::{DeadLetter, Reason};
pub use error::ProjectorError;
use error::error_chain;
use flush::Flush;

/// How often the queue depths are sampled.
pub(crate) const DEPTH_EVERY: Duration = Duration::from_secs(5);
/// How long a stop waits for dead letters the broker has not confirmed (a broker alarm).
const DEAD_LETTER_GRACE: Duration = Duration::from_secs(5);
/// Bound on broker and database calls that could otherwise hang the stage at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The stage's retries: exponential from 100 ms, capped at 10 s (see `crate::retry`).
pub(crate) fn retry_policy() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
}

/// The projector: built from its dependencies, run until shutdown or a fatal error.
pub struct ProjectorStage {
    pipeline: Pipeline,
    amqp: RabbitConn,
    pool: Pool,
    health: Health,
}

impl ProjectorStage {
    pub fn new(settings: &Settings, pool: Pool, health: Health) -> ProjectorStage {
        ProjectorStage {
            pipeline: settings.pipeline.clone(),
            amqp: settings.rabbitmq.clone(),
            pool,
            health,
        }
    }

    /// Consume until `shutdown` is cancelled (returns `Ok` after a clean drain) or a fatal
    /// error. Transient failures rebuild the connection with backoff.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ProjectorError> {
        let mut delays = retry_policy();
        let result = loop {
            if shutdown.is_cancelled() {
                break Ok(());
            }
            let mut consumed = false;
            match self.session(&shutdown, &mut consumed).await {
                Ok(()) => break Ok(()),
                Err(e) if e.class() == ErrorClass::Fatal => break Err(e),
                Err(e) => {
                    if consumed {
                        delays.reset();
                    }
                    let delay = delays.next_delay();
                    self.record_retry(&e, delay, "reconnecting to the broker");
                    tokio::select! {
                        _ = shutdown.cancelled() => break Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        };
        self.health.set_state(Stage::Projector, RoleState::Stopping);
        if let Err(e) = &result {
            error!(error = %error_chain(e), error_type = e.error_type(), "projector stopped");
        }
        result
    }

    fn record_retry(&self, e: &ProjectorError, delay: Duration, action: &'static str) {
        warn!(error = %error_chain(e), error_type = e.error_type(),
              retry_in_ms = delay.as_millis() as u64, action, "projector: transient failure");
        metrics::counter!(m::PROJECTOR_RETRIES_TOTAL,
            m::LABEL_PIPELINE => self.pipeline.name.clone(), m::LABEL_ERROR_TYPE => e.error_type())
        .increment(1);
    }

    /// One broker connection: open, consume until it ends, and always close it.
    async fn session(
        &self,
        shutdown: &CancellationToken,
        consumed: &mut bool,
    ) -> Result<(), ProjectorError> {
        let props = ConnectionProperties::default()
            .with_connection_name(format!("bowmark-cdc projector {}", self.pipeline.name).into());
        let connect = crate::amqp::connect(&self.amqp, props);
        let conn = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            c = connect => c.map_err(ProjectorError::broker("connect"))?,
        };
        // Dead letters are published on a connection of their own: a broker alarm blocks a
        // connection that publishes, and must not block the consumer's acks with it.
        let dlq_props = ConnectionProperties::default().with_connection_name(
            format!("bowmark-cdc projector {} dead letters", self.pipeline.name).into(),
        );
        let dlq_conn = tokio::select! {
            _ = shutdown.cancelled() => {
                close(&conn).await;
                return Ok(());
            }
            c = crate::amqp::connect(&self.amqp, dlq_props) => match c {
                Ok(c) => c,
                Err(e) => {
                    close(&conn).await;
                    return Err(ProjectorError::broker("connect")(e));
                }
            },
        };
        let result = async {
            let worker = Worker::open(self, &conn, &dlq_conn).await?;
            self.health.set_connected(Dependency::Broker, true);
            self.health.set_state(Stage::Projector, RoleState::Active);
            info!(queue = %self.pipeline.queue, prefetch = self.pipeline.projector.prefetch,
                  "projector consuming");
            *consumed = true;
            worker.run(shutdown).await
        }
        .await;
        if result.is_err() {
            self.health.set_connected(Dependency::Broker, false);
            self.health.set_state(Stage::Projector, RoleState::Starting);
        }
        close(&dlq_conn).await;
        close(&conn).await;
        result
    }
}

/// Close the connection (lapin must be closed before the runtime shuts down).
async fn close(conn: &Connection) {
    match tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, "bye".into())).await {
        Ok(Ok(())) => debug!("broker connection closed"),
        Ok(Err(e)) => debug!(error = %e, "broker connection was already closed"),
        Err(_) => warn!("broker connection close timed out"),
    }
}

/// The consume loop of one connection.
struct Worker<'s> {
    stage: &'s ProjectorStage,
    consume_ch: Channel,
    /// On the dead-letter connection.
    publish_ch: Channel,
    dlq_status: lapin::ConnectionStatus,
    /// Whether the dead-letter connection was blocked (a broker alarm) at the last check.
    blocked: std::sync::atomic::AtomicBool,
    consumer: Consumer,
    batch: Batch<Delivery>,
    depth_every: Interval,
}

impl<'s> Worker<'s> {
    async fn open(
        stage: &'s ProjectorStage,
        conn: &Connection,
        dlq_conn: &Connection,
    ) -> Result<Worker<'s>, ProjectorError> {
        let p = &stage.pipeline;
        let publish_ch = dlq_conn
            .create_channel()
            .await
            .map_err(ProjectorError::broker("open channel"))?;
        topology::declare(&publish_ch, p)
            .await
            .map_err(ProjectorError::broker("declare topology"))?;
        publish_ch
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(ProjectorError::broker("confirm select"))?;
        let consume_ch = conn
            .create_channel()
            .await
            .map_err(ProjectorError::broker("open channel"))?;
        consume_ch
            .basic_qos(p.projector.prefetch, BasicQosOptions::default())
            .await
            .map_err(ProjectorError::broker("qos"))?;
        let consumer = consume_ch
            .basic_consume(
                p.queue.as_str().into(),
                format!("bowmark-cdc-projector-{}", p.name).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(ProjectorError::broker("consume"))?;
        let mut depth_every = tokio::time::interval(DEPTH_EVERY);
        depth_every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Worker {
            stage,
            consume_ch,
            publish_ch,
            dlq_status: dlq_conn.status().clone(),
            blocked: std::sync::atomic::AtomicBool::new(false),
            consumer,
            batch: Batch::new(Limits::of(p)),
            depth_every,
        })
    }

    async fn run(mut self, shutdown: &CancellationToken) -> Result<(), ProjectorError> {
        loop {
            let deadline = self.batch.deadline();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return self.handle_shutdown(shutdown).await,
                _ = sleep_until(deadline), if deadline.is_some() => self.handle_flush(shutdown).await?,
                _ = self.depth_every.tick() => self.handle_depth_tick().await?,
                next = self.consumer.next() => self.handle_delivery(next, shutdown).await?,
            }
        }
    }

    /// Stop intake, finish the batch in hand (or abandon it whole), return.
    async fn handle_shutdown(mut self, shutdown: &CancellationToken) -> Result<(), ProjectorError> {
        info!(
            in_batch = self.batch.len(),
            "projector: shutdown requested, stopping intake"
        );
        let tag = self.consumer.tag();
        if let Err(e) = self
            .consume_ch
            .basic_cancel(tag, BasicCancelOptions::default())
            .await
        {
            debug!(error = %e, "basic.cancel failed; closing the connection stops intake anyway");
        }
        self.handle_flush(shutdown).await
    }

    async fn handle_delivery(
        &mut self,
        next: Option<Result<Delivery, lapin::Error>>,
        shutdown: &CancellationToken,
    ) -> Result<(), ProjectorError> {
        let mut next = next;
        loop {
            match next {
                Some(Ok(d)) => {
                    let bytes = d.data.len();
                    self.batch.push(d, bytes);
                }
                Some(Err(e)) => return Err(ProjectorError::broker("consume")(e)),
                None => {
                    return Err(ProjectorError::ConsumerEnded {
                        queue: self.stage.pipeline.queue.clone(),
                    });
                }
            }
            if self.batch.is_full() {
                return self.handle_flush(shutdown).await;
            }
            // What has already arrived joins the batch without waiting: while an apply runs,
            // deliveries pile up and the next batch takes them all, so batches grow with the
            // load and an idle queue applies an event at once (linger 0).
            match self.consumer.next().now_or_never() {
                Some(more) => next = more,
                None => return Ok(()),
            }
        }
    }

    async fn handle_depth_tick(&mut self) -> Result<(), ProjectorError> {
        self.report_blocked();
        let p = &self.stage.pipeline;
        for (queue, gauge) in [
            (&p.queue, m::PROJECTOR_QUEUE_MESSAGES),
            (
                &p.dead_letter_queue,
                m::PROJECTOR_DEAD_LETTER_QUEUE_MESSAGES,
            ),
        ] {
            let n = topology::depth(&self.consume_ch, queue)
                .await
                .map_err(ProjectorError::broker("queue depth"))?;
            metrics::gauge!(gauge, m::LABEL_PIPELINE => p.name.clone()).set(f64::from(n));
        }
        Ok(())
    }

    /// Readiness while the broker blocks the dead-letter connection (a broker alarm).
    fn report_blocked(&self) {
        let blocked = self.dlq_status.blocked();
        if self
            .blocked
            .swap(blocked, std::sync::atomic::Ordering::Relaxed)
            != blocked
        {
            if blocked {
                warn!(
                    "broker blocked: RabbitMQ blocks publishing (a memory or disk alarm); \
                    dead letters wait, consuming and acks go on"
                );
                self.stage.health.set_failed(
                    Dependency::Broker,
                    "broker blocked: RabbitMQ raised a memory or disk alarm; publishing waits",
                );
            } else {
                info!("broker unblocked: publishing again");
                self.stage.health.set_connected(Dependency::Broker, true);
            }
        }
    }

    /// Apply the batch in hand, dead-letter what can never apply, then ack up to its last tag.
    async fn handle_flush(&mut self, shutdown: &CancellationToken) -> Result<(), ProjectorError> {
        let deliveries = self.batch.take();
        let Some(last) = deliveries.last() else {
            return Ok(());
        };
        let started = Instant::now();
        let flush = Flush::decode(&self.stage.pipeline, &deliveries);
        let Some(applied) = self.apply_with_retry(&flush.docs, shutdown).await? else {
            info!(
                events = deliveries.len(),
                "projector: batch abandoned at shutdown; it will be redelivered"
            );
            return Ok(());
        };
        let letters = flush.dead_letters(&deliveries, &applied);
        if !letters.is_empty() {
            let publish = dlq::publish_all(
                &self.publish_ch,
                &self.stage.pipeline.dead_letter_queue,
                &letters,
            );
            // Under a broker alarm the publish waits; SIGTERM gives it DEAD_LETTER_GRACE, then
            // abandons the batch unacked (redelivered; its commit is idempotent).
            let give_up = async {
                shutdown.cancelled().await;
                tokio::time::sleep(DEAD_LETTER_GRACE).await;
            };
            tokio::pin!(publish, give_up);
            let mut check = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    r = &mut publish => break r?,
                    _ = &mut give_up => {
                        warn!(events = deliveries.len(), "projector: dead letters not confirmed \
                            by the stop deadline (broker blocked?); the batch stays unacked and \
                            will be redelivered");
                        return Ok(());
                    }
                    _ = check.tick() => self.report_blocked(),
                }
            }
        }
        self.report_blocked();
        self.consume_ch
            .basic_ack(last.delivery_tag, BasicAckOptions { multiple: true })
            .await
            .map_err(ProjectorError::broker("ack"))?;
        self.stage.health.set_connected(Dependency::Postgres, true);
        flush.record(&self.stage.pipeline, &applied, &letters, started);
        Ok(())
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
