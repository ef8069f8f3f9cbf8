//! `bowmark-cdc status`: one screen on a pipeline, from PostgreSQL and the broker only (the
//! daemon may be running or not): the capture leader, the checkpoint and its age, the projector
//! and dead-letter queue depths, quarantined documents, the last backfill, deferred indexes and
//! foreign keys, migrations, and whether the star rows were derived by the current projection
//! rules. [`Status::problems`] lists what needs an operator.

mod read;
mod render;

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde::Serialize;
use tokio_postgres::Client;

use crate::capture::leader;
use crate::checkpoint::CheckpointStore;
use crate::config::Settings;
use crate::migrate;
use crate::project::{self, RULES_VERSION, RulesState};

use super::{OpsError, close_broker, connect_broker, connect_pg, human_duration, require_tables};
use read::{backfill, capture_leader, checkpoint, migrations, queue_info};
use render::counts;

/// The checkpoint age (since it was last written) above which the capture needs an operator,
/// when neither the command line nor the pipeline sets one.
pub const DEFAULT_MAX_CHECKPOINT_AGE_SECS: u64 = 300;

/// The session holding a pipeline's capture lock.
#[derive(Debug, Clone, Serialize)]
pub struct CaptureLeader {
    pub pid: i32,
    /// `bowmark-cdc capture <host>` when the session set it.
    pub application_name: Option<String>,
    pub client_addr: Option<String>,
    pub client_hostname: Option<String>,
    /// When the lock's session started (the lock is taken right after it connects).
    pub session_started_at: Option<DateTime<Utc>>,
}

/// The capture checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointInfo {
    /// `t.i` of the last event covered, if any.
    pub cluster_time: Option<String>,
    /// Seconds since that cluster time (how old the newest captured change is).
    pub cluster_time_age_secs: Option<i64>,
    pub event_id: Option<String>,
    pub updated_at: DateTime<Utc>,
    /// Seconds since the checkpoint was last written.
    pub age_secs: i64,
}

/// One queue of the pipeline.
#[derive(Debug, Clone, Serialize)]
pub struct QueueInfo {
    pub name: String,
    /// Messages ready; `None` when the queue is not declared yet.
    pub messages: Option<u32>,
    pub consumers: Option<u32>,
}

/// One collection's backfill checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct BackfillCollection {
    pub collection: String,
    pub status: String,
    pub done: i64,
    pub total: Option<i64>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// The pipeline's current (or last) backfill.
#[derive(Debug, Clone, Serialize)]
pub struct BackfillInfo {
    pub source: String,
    pub source_name: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub collections: Vec<BackfillCollection>,
}

/// An index or foreign key dropped by a bulk backfill and not rebuilt yet.
#[derive(Debug, Clone, Serialize)]
pub struct DeferredDdl {
    pub table: String,
    pub name: String,
    pub kind: String,
    pub deferred_at: DateTime<Utc>,
}

/// Migrations applied to the database.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationsInfo {
    pub applied: usize,
    pub embedded: usize,
    pub latest: Option<String>,
    /// Embedded migrations not applied yet.
    pub pending: Vec<String>,
}

/// Which rules derived the star rows.
#[derive(Debug, Clone, Serialize)]
pub struct RulesInfo {
    /// This binary's rules version.
    pub current: i32,
    /// The recorded one (`None`: never recorded).
    pub recorded: Option<i32>,
    pub recorded_at: Option<DateTime<Utc>>,
    /// `current`, `outdated`, `unknown` (rows derived before the rules were tracked) or
    /// `empty` (no star row derived yet).
    pub state: &'static str,
}

/// Everything `status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub pipeline: String,
    pub database: String,
    pub vhost: String,
    pub checked_at: DateTime<Utc>,
    pub capture_leader: Option<CaptureLeader>,
    pub checkpoint: Option<CheckpointInfo>,
    pub max_checkpoint_age_secs: u64,
    pub queue: QueueInfo,
    pub dead_letter_queue: QueueInfo,
    /// Quarantined documents by entity.
    pub quarantined: BTreeMap<String, i64>,
    pub backfill: Option<BackfillInfo>,
    pub deferred_ddl: Vec<DeferredDdl>,
    pub migrations: MigrationsInfo,
    pub rules: RulesInfo,
    /// What needs an operator (empty: healthy).
    pub problems: Vec<String>,
    pub healthy: bool,
}

/// Gather the status of the pipeline. `Err` only when PostgreSQL or the broker cannot be
/// reached (or read).
pub async fn status(settings: &Settings, max_checkpoint_age_secs: u64) -> Result<Status, OpsError> {
    let p = &settings.pipeline;
    let client = connect_pg(settings).await?;
    require_tables(
        &client,
        settings,
        &[
            "cdc.checkpoint",
            "cdc.source_doc",
            "cdc.quarantine",
            "cdc.backfill_progress",
            "cdc.deferred_ddl",
            "cdc.projection_rules",
        ],
    )
    .await?;
    let now: DateTime<Utc> = client
        .query_one("SELECT now()", &[])
        .await
        .map_err(OpsError::pg("now"))?
        .get(0);
    let capture_leader = capture_leader(&client, &p.name).await?;
    let checkpoint = checkpoint(&client, &p.name, now).await?;
    let quarantined = project::quarantined(&client)
        .await
        .map_err(OpsError::pg("cdc.quarantine"))?;
    let backfill = backfill(&client, &p.name).await?;
    let deferred_ddl = client
        .query(
            "SELECT table_name, name, kind, deferred_at FROM cdc.deferred_ddl ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(OpsError::pg("cdc.deferred_ddl"))?
        .iter()
        .map(|r| DeferredDdl {
            table: r.get(0),
            name: r.get(1),
            kind: r.get(2),
            deferred_at: r.get(3),
        })
        .collect::<Vec<_>>();
    let migrations = migrations(&client).await?;
    let rules = match project::rules_state(&client, &p.name)
        .await
        .map_err(OpsError::pg("cdc.projection_rules"))?
    {
        RulesState::Recorded { version, at } => RulesInfo {
            current: RULES_VERSION,
            recorded: Some(version),
            recorded_at: Some(at),
            state: if version < RULES_VERSION {
                "outdated"
            } else {
                "current"
            },
        },
        RulesState::Empty => RulesInfo {
            current: RULES_VERSION,
            recorded: None,
            recorded_at: None,
            state: "empty",
        },
        RulesState::Unknown => RulesInfo {
            current: RULES_VERSION,
            recorded: None,
            recorded_at: None,
            state: "unknown",
        },
    };
    drop(client);

    let conn = connect_broker(settings, "status").await?;
    let queues = async {
        Ok::<_, OpsError>((
            queue_info(&conn, &p.queue).await?,
            queue_info(&conn, &p.dead_letter_queue).await?,
        ))
    }
    .await;
    close_broker(&conn).await;
    let (queue, dead_letter_queue) = queues?;

    let mut s = Status {
        pipeline: p.name.clone(),
        database: settings.postgres.database.clone(),
        vhost: settings.rabbitmq.vhost.clone(),
        checked_at: now,
        capture_leader,
        checkpoint,
        max_checkpoint_age_secs,
        queue,
        dead_letter_queue,
        quarantined,
        backfill,
        deferred_ddl,
        migrations,
        rules,
        problems: Vec::new(),
        healthy: true,
    };
    s.problems = s.find_problems();
    s.healthy = s.problems.is_empty();
    Ok(s)
}

impl Status {
    /// What needs an operator, one line each.
    fn find_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(n) = self.dead_letter_queue.messages.filter(|n| *n > 0) {
            out.push(format!(
                "{n} dead letter(s) in {}: inspect them with `bowmark-cdc dlq list`, then replay \
                 or purge",
                self.dead_letter_queue.name
            ));
        }
        let quarantined: i64 = self.quarantined.values().sum();
        if quarantined > 0 {
            out.push(format!(
                "{quarantined} quarantined document(s) ({}): their star rows are left out; \
                 reasons in cdc.quarantine",
                counts(&self.quarantined)
            ));
        }
        match &self.checkpoint {
            None => out.push(
                "no capture checkpoint: the capture never stored a change-stream position"
                    .to_string(),
            ),
            Some(c) if c.age_secs > self.max_checkpoint_age_secs as i64 => out.push(format!(
                "capture checkpoint last written {} ago (threshold {}s): is the capture running \
                 and the stream moving?",
                human_duration(c.age_secs),
                self.max_checkpoint_age_secs
            )),
            Some(_) => {}
        }
        match self.rules.state {
            "outdated" => out.push(format!(
                "star rows derived by projection rules version {} (this binary has {}): run \
                 `bowmark-cdc reproject`",
                self.rules.recorded.unwrap_or_default(),
                self.rules.current
            )),
            "unknown" => out.push(format!(
                "star rows derived before projection rules were tracked (this binary has \
                 version {}): run `bowmark-cdc reproject`",
                self.rules.current
            )),
            _ => {}
        }
        if !self.deferred_ddl.is_empty() {
            let mut tables: Vec<&str> =
                self.deferred_ddl.iter().map(|d| d.table.as_str()).collect();
            tables.dedup();
            out.push(format!(
                "{} index(es)/foreign key(s) dropped by an unfinished bulk backfill are not \
                 rebuilt ({}): run the backfill again or `bowmark-cdc migrate`",
                self.deferred_ddl.len(),
                tables.join(", ")
            ));
        }
        if !self.migrations.pending.is_empty() {
            out.push(format!(
                "{} migration(s) not applied ({}): run `bowmark-cdc migrate`",
                self.migrations.pending.len(),
                self.migrations.pending.join(", ")
            ));
        }
        out
    }
}
