//! A backfill run from start to handoff: options, the pipeline's backfill lock, the guards,
//! resuming an unfinished run of the same source, the bulk-load bookkeeping around the load,
//! and the handoff of the pre-scan position to the capture.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::config::{Pipeline, Settings};
use crate::event::Version;

use super::schedule::{self, Shared, Task};
use super::store::{self, Run, SourceKind};
use super::summary::{BackfillSummary, CheckpointOutcome};
use super::{BackfillError, BackfillOptions, DocStamp, defer, guard, mongo, progress, select};

/// How long to wait for another backfill's lock before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Where this run reads from.
pub(super) enum Source {
    Dump(PathBuf),
    Mongo { scan: mongodb::Client },
}

impl Source {
    pub fn kind(&self) -> SourceKind {
        match self {
            Source::Dump(_) => SourceKind::Dump,
            Source::Mongo { .. } => SourceKind::Mongo,
        }
    }
}

/// Run a backfill to completion: `Ok` only when every selected collection is complete
/// (a dump's missing collections count as complete and are reported).
///
/// An unfinished earlier run of the same source is continued (with its recorded position);
/// a finished one is replaced by a new run. Callers recovering from lost change-stream
/// history (the capture's `history_lost = "backfill"` policy) must pass `restart: true`, so
/// the position handed off is taken now rather than inherited from an old, unfinished run.
pub async fn run_backfill(
    settings: &Settings,
    opts: BackfillOptions,
) -> Result<BackfillSummary, BackfillError> {
    let started = Instant::now();
    let p = &settings.pipeline;
    let selected = select(p, &opts.collections)?;
    let mut client = connect_pg(settings).await?;
    if !store::schema_present(&client).await? {
        return Err(BackfillError::NotMigrated {
            database: settings.postgres.database.clone(),
        });
    }
    lock(&client, &p.name).await?;
    let (source, source_name, stream_client) = match &opts.from_dump {
        Some(dir) => {
            std::fs::read_dir(dir).map_err(|source| BackfillError::DumpDir {
                dir: dir.clone(),
                source,
            })?;
            (Source::Dump(dir.clone()), dir.display().to_string(), None)
        }
        None => {
            let uri = settings.mongo_uri.expose();
            let scan = mongo::connect(uri, true).await?;
            let stream = mongo::connect(uri, false).await?;
            (
                Source::Mongo { scan },
                p.mongo_database.clone(),
                Some(stream),
            )
        }
    };
    let unfinished = if opts.restart {
        None
    } else {
        unfinished_run(&client, p, &source, &source_name).await?
    };
    // Nothing is written before the guards pass.
    guard::watched_collections_exist(p, &source).await?;
    let deletes = guard::deletes(&client, p, &source, &selected, opts.allow_deletes).await?;
    let run = match unfinished {
        Some(run) => run,
        None => {
            // A finished run (or, with --restart, any) is forgotten: this invocation is a new one.
            store::reset(&client, &p.name).await?;
            if opts.restart {
                tracing::info!(pipeline = %p.name, "--restart: earlier backfill progress forgotten");
            }
            start_run(&client, p, &source, &source_name, stream_client.as_ref()).await?
        }
    };
    if source.kind() == SourceKind::Dump {
        tracing::info!(pipeline = %p.name, "dump source: cdc.checkpoint will be left alone \
            (a dump has no change-stream position)");
    }
    let stamp = DocStamp {
        version: run
            .position
            .as_ref()
            .map(|pos| Version {
                cluster_time: pos.cluster_time,
                ordinal: 0,
            })
            .unwrap_or(Version::ZERO),
        wall_time: run.started_at,
    };
    let shared = Shared::new(
        settings,
        &source,
        stamp,
        run.position.clone(),
        opts.shutdown.clone(),
        progress::Progress::new(&p.name, opts.progress),
        deletes,
    );
    let mut earlier = store::load_progress(&client, &p.name).await?;
    let queue: Vec<Task> = selected
        .into_iter()
        .map(|s| Task {
            earlier: earlier.remove(&s.collection),
            collection: s.collection,
            entity: s.entity,
        })
        .collect();
    // The children's context reads the report links by key: a killed run's deferred key is
    // rebuilt before anything else loads.
    defer::restore(&mut client, Some(&[defer::LINKS]))
        .await
        .map_err(BackfillError::Rebuild)?;
    let result = schedule::load_all(&shared, &mut client, queue).await;
    shared.progress().clear();
    // Rebuilt whatever the outcome (a failed or interrupted run leaves the schema whole); only a
    // killed run leaves them to the next run or `migrate`.
    let rebuilt = defer::restore(&mut client, None)
        .await
        .map_err(BackfillError::Rebuild);
    if let (Err(load), Err(rebuild)) = (&result, &rebuilt) {
        tracing::error!(pipeline = %p.name, error = ?rebuild,
            "the run failed ({load}) and so did rebuilding the dropped indexes and foreign keys; \
             the next backfill or `bowmark-cdc migrate` rebuilds them");
    }
    let collections = result?;
    rebuilt?;
    let checkpoint = hand_off(&client, p, run.position.as_ref()).await?;
    tracing::info!(pipeline = %p.name, outcome = %checkpoint, "backfill complete");
    Ok(BackfillSummary {
        pipeline: p.name.clone(),
        source: source.kind(),
        source_name,
        collections,
        checkpoint,
        duration: started.elapsed(),
    })
}

/// Take the pipeline's backfill lock, waiting up to [`LOCK_WAIT`]: the session of a killed
/// backfill holds it until PostgreSQL notices the dead connection.
async fn lock(client: &Client, pipeline: &str) -> Result<(), BackfillError> {
    let deadline = Instant::now() + LOCK_WAIT;
    let mut logged = false;
    while !store::try_lock(client, pipeline).await? {
        if Instant::now() >= deadline {
            return Err(BackfillError::Locked {
                pipeline: pipeline.to_string(),
            });
        }
        if !logged {
            tracing::info!(
                pipeline,
                wait_secs = LOCK_WAIT.as_secs(),
                "another backfill of this pipeline holds the lock; waiting"
            );
            logged = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

pub(super) async fn connect_pg(settings: &Settings) -> Result<Client, BackfillError> {
    let cfg = settings
        .postgres
        .pg_config()
        .map_err(BackfillError::Config)?;
    crate::pg::command_session(&cfg, &settings.postgres.tls, "backfill")
        .await
        .map_err(|source| BackfillError::Connect {
            database: settings.postgres.database.clone(),
            source,
        })
}

/// The pipeline's unfinished run, to continue, when it read the same source; an unfinished run
/// of another source stops this one (nothing is written).
async fn unfinished_run(
    client: &Client,
    p: &Pipeline,
    source: &Source,
    source_name: &str,
) -> Result<Option<Run>, BackfillError> {
    let describe = |kind: SourceKind, name: &str| format!("{} {name}", kind.as_str());
    let Some(run) = store::load_run(client, &p.name)
        .await?
        .filter(|r| !r.finished)
    else {
        return Ok(None);
    };
    if run.source != source.kind() || run.source_name != source_name {
        return Err(BackfillError::SourceChanged {
            pipeline: p.name.clone(),
            was: describe(run.source, &run.source_name),
            now: describe(source.kind(), source_name),
        });
    }
    tracing::info!(pipeline = %p.name, source = %run.source.as_str(),
        started_at = %run.started_at,
        "continuing the unfinished backfill started earlier (--restart starts over)");
    Ok(Some(run))
}

/// Start a new run, taking the change-stream position first for a live source.
async fn start_run(
    client: &Client,
    p: &Pipeline,
    source: &Source,
    source_name: &str,
    stream_client: Option<&mongodb::Client>,
) -> Result<Run, BackfillError> {
    let position = match stream_client {
        Some(c) => Some(mongo::position(c, &p.mongo_database).await?),
        None => None,
    };
    if let Some(pos) = &position {
        tracing::info!(pipeline = %p.name, cluster_time_t = pos.cluster_time.t,
            cluster_time_i = pos.cluster_time.i, "change-stream position recorded before the scan");
    }
    let started_at = store::start_run(
        client,
        &p.name,
        source.kind(),
        source_name,
        position.as_ref(),
    )
    .await?;
    Ok(Run {
        source: source.kind(),
        source_name: source_name.to_string(),
        position,
        started_at,
        finished: false,
    })
}

/// Store the pre-scan position as the capture checkpoint once every watched collection is
/// complete under this run.
async fn hand_off(
    client: &Client,
    p: &Pipeline,
    position: Option<&store::StreamPosition>,
) -> Result<CheckpointOutcome, BackfillError> {
    let name = &p.name;
    let progress = store::load_progress(client, name).await?;
    let not_yet: Vec<String> = p
        .collections
        .keys()
        .filter(|c| progress.get(*c).is_none_or(|p| !p.state.settled()))
        .cloned()
        .collect();
    let Some(pos) = position else {
        if not_yet.is_empty() {
            store::finish_run(client, name, false).await?;
            crate::project::record_rules_version(client, name).await?;
        }
        return Ok(CheckpointOutcome::DumpLeftAlone);
    };
    if !not_yet.is_empty() {
        return Ok(CheckpointOutcome::Deferred { not_yet });
    }
    let outcome = match store::hand_off(client, name, pos).await? {
        store::Handoff::Stored(ct) => CheckpointOutcome::Stored(ct),
        store::Handoff::KeptNewer(stored) => CheckpointOutcome::KeptNewer {
            stored,
            pre_scan: pos.cluster_time,
        },
    };
    store::finish_run(client, name, true).await?;
    // Every star row is now derived by this binary's rules.
    crate::project::record_rules_version(client, name).await?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::store::CollectionState;

    #[test]
    fn a_collection_is_settled_once_complete_or_missing() {
        assert!(!CollectionState::Running.settled());
        assert!(CollectionState::Complete.settled());
        assert!(CollectionState::Missing.settled());
    }
}
