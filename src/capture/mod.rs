//! The capture stage: one database-level MongoDB change stream per pipeline, normalized into v1
//! events and published with confirms to the pipeline's vhost; the checkpoint in PostgreSQL
//! advances only behind confirms (see [`crate::checkpoint`]).
//!
//! Resume is ours, not the driver's: the tailing client sets `retryReads=false` and, after any
//! stream, broker or database error, the stage reopens the stream from its own checkpoint with a
//! capped, jittered backoff (the driver's retried resume loses its token: see
//! `docs/mongosim.md`). A PostgreSQL advisory lock elects the one replica that tails
//! ([`leader`]).

// Errors carry their sources (driver and broker errors are large); they are rare.
#![allow(clippy::result_large_err)]

mod error;
pub mod leader;
pub mod normalize;
mod reassemble;
mod session;
mod stream;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::retry::Backoff;
use futures_util::future::BoxFuture;
use mongodb::Client;
use mongodb::options::ClientOptions;
use tokio_util::sync::CancellationToken;

pub use error::{CaptureError, ErrorClass, GIVE_UP_AFTER};

use crate::config::{HistoryLostPolicy, Settings};
use crate::health::{Dependency, Health, RoleState, Stage};
use crate::metrics as m;
use crate::publish::Publisher;

/// Backoff between resumes: from 250 ms, doubling, capped at 10 s, jittered.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How often a standby re-checks MongoDB and RabbitMQ, and how long each check may take.
const STANDBY_PROBE: Duration = Duration::from_secs(30);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// A session that ran this long resets the backoff.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(30);

/// What recovers under `history_lost = "backfill"` from lost change-stream history or a
/// drop, rename or `$out` of a watched collection: a re-snapshot of the watched collections
/// that stores a fresh checkpoint (taken after the cause), stopping early when the token is
/// cancelled. The runtime supplies it ([`crate::runtime::capture_stage`]).
pub(crate) type Resnapshot = Arc<
    dyn Fn(
            ResnapshotCause,
            CancellationToken,
        ) -> BoxFuture<'static, Result<(), Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + Sync,
>;

/// Why the capture re-snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResnapshotCause {
    /// The checkpoint's resume point left the oplog (code 286).
    HistoryLost,
    /// A drop, rename or `$out` replaced or removed a watched collection.
    Collection(normalize::StopReason),
}

impl std::fmt::Display for ResnapshotCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResnapshotCause::HistoryLost => f.write_str("lost change-stream history"),
            ResnapshotCause::Collection(r) => r.fmt(f),
        }
    }
}

/// The capture role of one pipeline.
pub struct CaptureStage {
    settings: Settings,
    health: Health,
    /// The exchange is declared once, by the first session that connects.
    exchange_declared: AtomicBool,
    /// `f64` bits of the exported [`m::CAPTURE_CHECKPOINT_TIMESTAMP`]: never moved backward by
    /// a later session of this process.
    covered: std::sync::atomic::AtomicU64,
    /// Run on lost history under `history_lost = "backfill"`; without it, lost history stops
    /// the capture.
    resnapshot: Option<Resnapshot>,
}

impl CaptureStage {
    pub fn new(settings: Settings, health: Health) -> CaptureStage {
        CaptureStage {
            settings,
            health,
            exchange_declared: AtomicBool::new(false),
            covered: std::sync::atomic::AtomicU64::new(0),
            resnapshot: None,
        }
    }

    /// Recover from lost history, and from a drop, rename or `$out` of a watched collection,
    /// with `resnapshot` when the pipeline's policy is `backfill`.
    pub(crate) fn on_history_lost(mut self, resnapshot: Resnapshot) -> CaptureStage {
        self.resnapshot = Some(resnapshot);
        self
    }

    /// Tail until `shutdown` is cancelled (then drain confirms, write the checkpoint and return
    /// `Ok`) or a fatal error stops the capture.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), CaptureError> {
        let pipeline = &self.settings.pipeline;
        let mongo = self.mongo_client().await.map_err(|e| self.fatal(e))?;
        let key = leader::lock_key(&pipeline.name);
        let mut backoff = new_backoff();
        let mut unhealed = Unhealed::default();
        while !shutdown.is_cancelled() {
            let lease = match self.acquire(key, &mongo, &shutdown).await {
                Ok(Some(lease)) => lease,
                Ok(None) => break,
                Err(err) => {
                    self.report(&err);
                    self.health
                        .set_failed(Dependency::Postgres, crate::cause::chain(&err));
                    sleep_or_cancel(backoff.next_delay(), &shutdown).await;
                    continue;
                }
            };
            loop {
                let started = Instant::now();
                let result = session::tail(&self, &mongo, &lease, &shutdown).await;
                let cause = result.as_ref().err().and_then(|e| self.resnapshot_cause(e));
                match (result, cause) {
                    (Ok(()), _) => {
                        self.health.set_state(Stage::Capture, RoleState::Stopping);
                        metrics::gauge!(m::CAPTURE_LEADER, m::LABEL_PIPELINE => pipeline.name.clone()).set(0.0);
                        return Ok(());
                    }
                    (Err(err), Some(cause)) => {
                        self.report(&err);
                        match self.resnapshot(cause, &shutdown).await {
                            Ok(()) => backoff.reset(),
                            // SIGTERM during the re-snapshot: its progress is kept; a restart
                            // meets the lost history again and continues it.
                            Err(_) if shutdown.is_cancelled() => break,
                            Err(e) => return Err(self.fatal(e)),
                        }
                    }
                    (Err(err), None) if err.class() != ErrorClass::Transient => {
                        return Err(self.fatal(err));
                    }
                    (Err(err), None) => {
                        // (a session that ran a while starts the counts afresh)
                        if started.elapsed() > BACKOFF_RESET_AFTER {
                            unhealed = Unhealed::default();
                            backoff.reset();
                        }
                        let err = match unhealed.count(err, pipeline) {
                            Ok(err) => err,
                            Err(gave_up) => return Err(self.fatal(gave_up)),
                        };
                        self.report(&err);
                        metrics::counter!(m::CAPTURE_RESUMES, m::LABEL_PIPELINE => pipeline.name.clone(),
                            m::LABEL_ERROR_TYPE => err.error_type()).increment(1);
                        sleep_or_cancel(backoff.next_delay(), &shutdown).await;
                        if shutdown.is_cancelled() || lease.lost().is_cancelled() {
                            break;
                        }
                    }
                }
            }
            metrics::gauge!(m::CAPTURE_LEADER, m::LABEL_PIPELINE => pipeline.name.clone()).set(0.0);
        }
        self.health.set_state(Stage::Capture, RoleState::Stopping);
        Ok(())
    }

    /// What `err` asks to re-snapshot under policy `backfill` (`None` under `fail`).
    fn resnapshot_cause(&self, err: &CaptureError) -> Option<ResnapshotCause> {
        if self.settings.pipeline.history_lost != HistoryLostPolicy::Backfill
            || self.resnapshot.is_none()
        {
            return None;
        }
        match err {
            CaptureError::HistoryLost { .. } => Some(ResnapshotCause::HistoryLost),
            CaptureError::Invalidated { reason, .. } => {
                Some(ResnapshotCause::Collection(reason.clone()))
            }
            _ => None,
        }
    }

    /// History lost, or a watched collection dropped, renamed or replaced, under policy
    /// `backfill`: the re-snapshot stores its pre-scan position (taken after the cause) as the
    /// checkpoint; tailing then resumes from there, so nothing between the cause and now is
    /// missed. The capture keeps its lease meanwhile.
    async fn resnapshot(
        &self,
        cause: ResnapshotCause,
        shutdown: &CancellationToken,
    ) -> Result<(), CaptureError> {
        let p = &self.settings.pipeline;
        let Some(resnapshot) = &self.resnapshot else {
            return Ok(());
        };
        resnapshot(cause.clone(), shutdown.clone())
            .await
            .map_err(|source| CaptureError::Resnapshot {
                pipeline: p.name.clone(),
                file: p.file.display().to_string(),
                cause,
                source,
            })
    }

    /// The tailing client: `retryReads=false` so a failed resume reaches us (see module docs).
    async fn mongo_client(&self) -> Result<Client, CaptureError> {
        let mut opts = ClientOptions::parse(self.settings.mongo_uri.expose())
            .await
            .map_err(CaptureError::Mongo)?;
        opts.retry_reads = Some(false);
        if opts.app_name.is_none() {
            opts.app_name = Some(format!(
                "bowmark-cdc-capture-{}",
                self.settings.pipeline.name
            ));
        }
        Client::with_options(opts).map_err(CaptureError::Mongo)
    }

    /// Wait for the capture lock (standby meanwhile); `None` when shut down first.
    async fn acquire(
        &self,
        key: i64,
        mongo: &Client,
        shutdown: &CancellationToken,
    ) -> Result<Option<leader::Lease>, CaptureError> {
        let name = &self.settings.pipeline.name;
        let mut announced = false;
        let mut probed: Option<Instant> = None;
        let mut session: Option<leader::Lease> = None;
        loop {
            let lease = match session.take() {
                Some(s) if !s.lost().is_cancelled() => s,
                _ => leader::Lease::connect(&self.settings.postgres).await?,
            };
            self.health.set_connected(Dependency::Postgres, true);
            if lease.try_lock(key).await? {
                self.health.set_state(Stage::Capture, RoleState::Active);
                metrics::gauge!(m::CAPTURE_LEADER, m::LABEL_PIPELINE => name.clone()).set(1.0);
                tracing::info!(pipeline = %name, lock_key = key, "capture lock acquired: this replica tails the change stream");
                return Ok(Some(lease));
            }
            session = Some(lease);
            if probed.is_none_or(|t| t.elapsed() >= STANDBY_PROBE) {
                self.probe_dependencies(mongo).await;
                probed = Some(Instant::now());
            }
            self.health.set_state(Stage::Capture, RoleState::Standby);
            if !announced {
                tracing::info!(pipeline = %name, lock_key = key, "standing by: another replica holds the capture lock");
                announced = true;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                _ = tokio::time::sleep(leader::STANDBY_POLL) => {}
            }
        }
    }

    /// A standby proves it could take over: MongoDB answers a ping and RabbitMQ accepts a
    /// connection (readiness reports both).
    async fn probe_dependencies(&self, mongo: &Client) {
        let admin = mongo.database("admin");
        let ping = admin.run_command(bson::doc! {"ping": 1});
        let mongo_up = matches!(tokio::time::timeout(PROBE_TIMEOUT, ping).await, Ok(Ok(_)));
        self.health.set_connected(Dependency::Mongo, mongo_up);
        let p = &self.settings.pipeline;
        let name = format!("bowmark-cdc capture {} (standby probe)", p.name);
        let connect = Publisher::connect(&self.settings.rabbitmq, p, &name, false);
        let broker_up = match tokio::time::timeout(PROBE_TIMEOUT, connect).await {
            Ok(Ok(publisher)) => {
                publisher.close().await;
                true
            }
            _ => false,
        };
        self.health.set_connected(Dependency::Broker, broker_up);
    }

    fn report(&self, err: &CaptureError) {
        metrics::counter!(m::CAPTURE_ERRORS, m::LABEL_PIPELINE => self.settings.pipeline.name.clone(),
            m::LABEL_ERROR_TYPE => err.error_type()).increment(1);
        tracing::warn!(pipeline = %self.settings.pipeline.name, error = %crate::cause::chain(err),
            error_type = err.error_type(), "capture interrupted; resuming from the checkpoint");
    }

    fn fatal(&self, err: CaptureError) -> CaptureError {
        metrics::counter!(m::CAPTURE_ERRORS, m::LABEL_PIPELINE => self.settings.pipeline.name.clone(),
            m::LABEL_ERROR_TYPE => err.error_type()).increment(1);
        tracing::error!(pipeline = %self.settings.pipeline.name, error = %crate::cause::chain(&err),
            error_type = err.error_type(), "capture stopped");
        self.health.set_state(Stage::Capture, RoleState::Stopping);
        err
    }
}

impl CaptureError {
    /// An error that stops the capture for good, which the daemon reports by staying up
    /// (unready, [`m::CAPTURE_HISTORY_LOST`] at 1) rather than exiting: history lost under
    /// `history_lost = "fail"` (a restart would only meet it again).
    pub(crate) fn needs_operator(&self) -> bool {
        matches!(self, CaptureError::HistoryLost { .. })
    }

    /// Report [`CaptureError::needs_operator`]'s error on `/readyz` and `/metrics`.
    pub fn hold(self: Box<Self>, settings: &Settings, health: &Health) -> Box<Self> {
        let name = &settings.pipeline.name;
        metrics::gauge!(m::CAPTURE_HISTORY_LOST, m::LABEL_PIPELINE => name.clone()).set(1.0);
        metrics::gauge!(m::CAPTURE_LEADER, m::LABEL_PIPELINE => name.clone()).set(0.0);
        health.set_stage_failed(Stage::Capture, self.to_string());
        tracing::error!(pipeline = %name, "the capture stopped for good; the process stays up, \
            unready, until it is restarted (after the backfill); the projector goes on");
        self
    }
}

/// Attempts in a row that failed with the same error retrying does not heal.
#[derive(Default)]
struct Unhealed {
    error_type: Option<&'static str>,
    attempts: u32,
}

impl Unhealed {
    /// Count a failed attempt; `Err` (the capture stops) on the [`GIVE_UP_AFTER`]th in a row
    /// that failed with the same error retrying does not heal.
    fn count(
        &mut self,
        err: CaptureError,
        p: &crate::config::Pipeline,
    ) -> Result<CaptureError, CaptureError> {
        let file = p.file.display().to_string();
        let Some(advice) = err.unhealing(&file, &p.mongo_database) else {
            *self = Unhealed::default();
            return Ok(err);
        };
        let error_type = err.error_type();
        if self.error_type != Some(error_type) {
            *self = Unhealed {
                error_type: Some(error_type),
                attempts: 0,
            };
        }
        self.attempts += 1;
        if self.attempts < GIVE_UP_AFTER {
            tracing::warn!(pipeline = %p.name, error_type, attempt = self.attempts,
                give_up_after = GIVE_UP_AFTER, advice = %advice,
                "capture error that retrying may not heal");
            return Ok(err);
        }
        Err(CaptureError::GaveUp {
            pipeline: p.name.clone(),
            attempts: self.attempts,
            error_type,
            advice,
            source: Box::new(err),
        })
    }
}

fn new_backoff() -> Backoff {
    Backoff::new(BACKOFF_MIN, BACKOFF_MAX)
}

async fn sleep_or_cancel(d: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}
