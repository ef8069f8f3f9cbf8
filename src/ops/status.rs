//! `bowmark-cdc status`: one screen on a pipeline, from PostgreSQL and the broker only (the
//! daemon may be running or not): the capture leader, the checkpoint and its age, the projector
//! and dead-letter queue depths, quarantined documents, the last backfill, deferred indexes and
//! foreign keys, migrations, and whether the star rows were derived by the current projection
//! rules. [`Status::problems`] lists what needs an operator.

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

fn counts(m: &BTreeMap<String, i64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The session holding the capture's advisory lock (`pg_try_advisory_lock(bigint)`: `classid`
/// holds the key's high 32 bits, `objid` its low 32 bits, `objsubid` 1).
async fn capture_leader(
    client: &Client,
    pipeline: &str,
) -> Result<Option<CaptureLeader>, OpsError> {
    let key = u64::from_ne_bytes(leader::lock_key(pipeline).to_ne_bytes());
    let (hi, lo) = ((key >> 32) as i64, (key & 0xffff_ffff) as i64);
    let row = client
        .query_opt(
            "SELECT l.pid, a.application_name, host(a.client_addr), a.client_hostname, \
                    a.backend_start \
             FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND l.classid::bigint = $1 AND l.objid::bigint = $2 \
             LIMIT 1",
            &[&hi, &lo],
        )
        .await
        .map_err(OpsError::pg("pg_locks"))?;
    Ok(row.map(|r| CaptureLeader {
        pid: r.get(0),
        application_name: r.get::<_, Option<String>>(1).filter(|s| !s.is_empty()),
        client_addr: r.get(2),
        client_hostname: r.get(3),
        session_started_at: r.get(4),
    }))
}

async fn checkpoint(
    client: &Client,
    pipeline: &str,
    now: DateTime<Utc>,
) -> Result<Option<CheckpointInfo>, OpsError> {
    let Some(cp) = CheckpointStore::new(client)
        .load(pipeline)
        .await
        .map_err(OpsError::pg("cdc.checkpoint"))?
    else {
        return Ok(None);
    };
    let updated_at: DateTime<Utc> = client
        .query_one(
            "SELECT updated_at FROM cdc.checkpoint WHERE pipeline = $1",
            &[&pipeline],
        )
        .await
        .map_err(OpsError::pg("cdc.checkpoint"))?
        .get(0);
    Ok(Some(CheckpointInfo {
        cluster_time: cp.cluster_time.map(|c| format!("{}.{}", c.t, c.i)),
        cluster_time_age_secs: cp.cluster_time.map(|c| now.timestamp() - i64::from(c.t)),
        event_id: cp.event_id,
        updated_at,
        age_secs: (now - updated_at).num_seconds().max(0),
    }))
}

async fn backfill(client: &Client, pipeline: &str) -> Result<Option<BackfillInfo>, OpsError> {
    let Some(run) = client
        .query_opt(
            "SELECT source, source_name, started_at, finished_at FROM cdc.backfill_run \
             WHERE pipeline = $1",
            &[&pipeline],
        )
        .await
        .map_err(OpsError::pg("cdc.backfill_run"))?
    else {
        return Ok(None);
    };
    let collections = client
        .query(
            "SELECT collection, status, docs_done, docs_total, updated_at, finished_at \
             FROM cdc.backfill_progress WHERE pipeline = $1 ORDER BY started_at, collection",
            &[&pipeline],
        )
        .await
        .map_err(OpsError::pg("cdc.backfill_progress"))?
        .iter()
        .map(|r| BackfillCollection {
            collection: r.get(0),
            status: r.get(1),
            done: r.get(2),
            total: r.get(3),
            updated_at: r.get(4),
            finished_at: r.get(5),
        })
        .collect();
    Ok(Some(BackfillInfo {
        source: run.get(0),
        source_name: run.get(1),
        started_at: run.get(2),
        finished_at: run.get(3),
        collections,
    }))
}

async fn migrations(client: &Client) -> Result<MigrationsInfo, OpsError> {
    let embedded = migrate::embedded_migrations();
    let present: bool = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&migrate::HISTORY_TABLE],
        )
        .await
        .map_err(OpsError::pg("catalog"))?
        .get(0);
    let applied: Vec<i64> = if present {
        client
            .query(
                &format!("SELECT version::bigint FROM {}", migrate::HISTORY_TABLE),
                &[],
            )
            .await
            .map_err(OpsError::pg(migrate::HISTORY_TABLE))?
            .iter()
            .map(|r| r.get(0))
            .collect()
    } else {
        Vec::new()
    };
    let latest = embedded
        .iter()
        .rfind(|m| applied.contains(&m.version))
        .map(|m| m.to_string());
    let pending = embedded
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .map(|m| m.to_string())
        .collect();
    Ok(MigrationsInfo {
        applied: applied.len(),
        embedded: embedded.len(),
        latest,
        pending,
    })
}

/// A queue's depth and consumers by passive declare (on a channel of its own: a missing queue
/// closes the channel).
async fn queue_info(conn: &lapin::Connection, name: &str) -> Result<QueueInfo, OpsError> {
    let ch = conn
        .create_channel()
        .await
        .map_err(OpsError::broker("open channel"))?;
    let declared = ch
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    let info = match declared {
        Ok(q) => QueueInfo {
            name: name.to_string(),
            messages: Some(q.message_count()),
            consumers: Some(q.consumer_count()),
        },
        Err(e) if is_not_found(&e) => QueueInfo {
            name: name.to_string(),
            messages: None,
            consumers: None,
        },
        Err(e) => return Err(OpsError::broker("passive queue declare")(e)),
    };
    let _ = ch.close(200, "bye".into()).await;
    Ok(info)
}

fn is_not_found(e: &lapin::Error) -> bool {
    let text = e.to_string();
    text.contains("NOT_FOUND") || text.contains("404") || text.contains("no queue")
}

fn when(t: &DateTime<Utc>, now: &DateTime<Utc>) -> String {
    format!(
        "{} ({} ago)",
        t.format("%Y-%m-%d %H:%M:%SZ"),
        human_duration((*now - *t).num_seconds())
    )
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let now = &self.checked_at;
        writeln!(
            f,
            "pipeline {} (database {}, vhost {})",
            self.pipeline, self.database, self.vhost
        )?;
        match &self.capture_leader {
            Some(l) => {
                let who = [
                    l.application_name.clone(),
                    l.client_hostname.clone(),
                    l.client_addr.clone(),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", ");
                write!(f, "capture leader     backend pid {}", l.pid)?;
                if !who.is_empty() {
                    write!(f, " ({who})")?;
                }
                if let Some(t) = &l.session_started_at {
                    write!(f, ", session since {}", when(t, now))?;
                }
                writeln!(f)?;
            }
            None => writeln!(
                f,
                "capture leader     none (no session holds the capture lock)"
            )?,
        }
        match &self.checkpoint {
            Some(c) => {
                write!(f, "checkpoint         written {}", when(&c.updated_at, now))?;
                if let (Some(ct), Some(age)) = (&c.cluster_time, c.cluster_time_age_secs) {
                    write!(
                        f,
                        "; last event cluster time {ct} ({} ago)",
                        human_duration(age)
                    )?;
                }
                writeln!(f)?;
            }
            None => writeln!(f, "checkpoint         none")?,
        }
        for (label, q) in [
            ("projector queue", &self.queue),
            ("dead letters", &self.dead_letter_queue),
        ] {
            match (q.messages, q.consumers) {
                (Some(m), Some(c)) => writeln!(
                    f,
                    "{label:<18} {}: {m} message(s) ready, {c} consumer(s)",
                    q.name
                )?,
                _ => writeln!(f, "{label:<18} {}: not declared yet", q.name)?,
            }
        }
        if self.quarantined.is_empty() {
            writeln!(f, "quarantine         none")?;
        } else {
            writeln!(f, "quarantine         {}", counts(&self.quarantined))?;
        }
        match &self.backfill {
            None => writeln!(f, "last backfill      none")?,
            Some(b) => {
                write!(
                    f,
                    "last backfill      from {} {}, started {}",
                    b.source,
                    b.source_name,
                    when(&b.started_at, now)
                )?;
                match &b.finished_at {
                    Some(t) => writeln!(f, ", finished {}", when(t, now))?,
                    None => writeln!(f, ", not finished")?,
                }
                for c in &b.collections {
                    let total = c.total.map(|t| t.to_string()).unwrap_or_else(|| "?".into());
                    writeln!(
                        f,
                        "  {:<20} {:<9} {:>19}  {}",
                        c.collection,
                        c.status,
                        format!("{}/{}", c.done, total),
                        when(c.finished_at.as_ref().unwrap_or(&c.updated_at), now)
                    )?;
                }
            }
        }
        if self.deferred_ddl.is_empty() {
            writeln!(f, "deferred DDL       none")?;
        } else {
            writeln!(f, "deferred DDL       {} pending", self.deferred_ddl.len())?;
            for d in &self.deferred_ddl {
                writeln!(f, "  {} {} on {}", d.kind, d.name, d.table)?;
            }
        }
        write!(
            f,
            "migrations         {} of {} applied",
            self.migrations.embedded - self.migrations.pending.len(),
            self.migrations.embedded
        )?;
        match &self.migrations.latest {
            Some(l) => writeln!(f, " (latest {l})")?,
            None => writeln!(f)?,
        }
        match (
            self.rules.state,
            self.rules.recorded,
            &self.rules.recorded_at,
        ) {
            (_, Some(v), Some(at)) => writeln!(
                f,
                "projection rules   version {v} recorded {} (this binary: {}{})",
                when(at, now),
                self.rules.current,
                if v < self.rules.current {
                    ", OUTDATED"
                } else {
                    ", current"
                }
            )?,
            ("empty", ..) => writeln!(
                f,
                "projection rules   no star rows derived yet (this binary: {})",
                self.rules.current
            )?,
            _ => writeln!(
                f,
                "projection rules   not recorded: rows derived before the rules were tracked \
                 (this binary: {})",
                self.rules.current
            )?,
        }
        if self.problems.is_empty() {
            writeln!(f, "healthy")
        } else {
            writeln!(f, "NEEDS AN OPERATOR:")?;
            for p in &self.problems {
                writeln!(f, "  - {p}")?;
            }
            Ok(())
        }
    }
}
