//! The backfill stage (docs/architecture.md): load every watched collection from a live MongoDB or a
//! mongodump folder through the same mirror and derivation code as streamed events
//! ([`crate::project::apply`]), in chunks, one PostgreSQL transaction per chunk.
//!
//! - **Order**: dimension collections first, then invoices, daily reports and their children.
//!   The derivation does not depend on it; it only avoids recomputation.
//! - **Versions**: dump documents carry [`Version::ZERO`] (older than any streamed event);
//!   live documents carry the cluster time read before the scan. The version guard
//!   ([`Guard::NewerOrEqual`]) lets streamed changes win, so a backfill and the daemon may run
//!   against one database at once.
//! - **Resumable**: each chunk's transaction also advances that collection's checkpoint
//!   (`cdc.backfill_progress`: last `_id` or dump byte offset); a killed run continues from
//!   the last committed chunk, `--restart` starts over. An advisory lock keeps two backfills of
//!   one pipeline apart.
//! - **Handoff** (live source): the change-stream position is recorded before scanning and,
//!   once every watched collection is complete, stored as the capture checkpoint unless that is
//!   already newer. Mirror documents a full scan no longer finds were deleted before the scan:
//!   they are tombstoned, so deletes in a lost stretch of history are not missed. A dump source
//!   leaves `cdc.checkpoint` alone and says so.

mod defer;
pub(crate) mod dump;
pub(crate) mod mongo;
mod progress;
mod store;
mod summary;

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bson::{Bson, Document};
use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use tokio::sync::{mpsc, watch};
use tokio_postgres::{Client, Transaction};
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Pipeline, Settings};
use crate::event::{Entity, Version};
use crate::metrics as m;
use crate::project::{self, ErrorClass, Guard, ProjectError, SourceDoc};

pub use dump::DumpError;
pub use progress::ProgressMode;
pub use store::{SourceKind, StreamPosition};
pub use summary::{BackfillSummary, CheckpointOutcome, CollectionStatus, CollectionSummary};

use store::{ResumeAt, Run};

/// Chunks read ahead of the one being projected (bounds memory).
const READ_AHEAD: usize = 1;
/// Attempts for a chunk that fails transiently (serialization failure, deadlock).
const CHUNK_ATTEMPTS: u32 = 5;
const RETRY_BASE: Duration = Duration::from_millis(200);
/// How long to wait for another backfill's lock before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// What to backfill and how.
#[derive(Debug, Clone, Default)]
pub struct BackfillOptions {
    /// Read this mongodump folder instead of MongoDB (`MONGO_URI`).
    pub from_dump: Option<PathBuf>,
    /// Only these watched collections (empty: all).
    pub collections: Vec<String>,
    /// Forget earlier progress and start over.
    pub restart: bool,
    pub progress: ProgressMode,
    /// Cancelled on SIGTERM: the run stops after the chunk in flight commits.
    pub shutdown: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error(
        "unknown collection {name:?}: pipeline {pipeline} watches {watched} \
         (see [mongo.collections] in {file})"
    )]
    UnknownCollection {
        name: String,
        pipeline: String,
        watched: String,
        file: String,
    },
    #[error("configuration")]
    Config(#[source] ConfigError),
    #[error("cannot connect to PostgreSQL database {database}")]
    Connect {
        database: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("PostgreSQL")]
    Postgres(#[source] tokio_postgres::Error),
    #[error(
        "database {database} has no cdc backfill tables: run `bowmark-cdc migrate --pipeline …` first"
    )]
    NotMigrated { database: String },
    #[error(
        "another backfill of pipeline {pipeline} is running against this database (advisory lock \
         held); wait for it to finish or stop it"
    )]
    Locked { pipeline: String },
    #[error(
        "pipeline {pipeline} has an unfinished backfill from {was}; this run reads {now}. Run it \
         again with the same source to resume, or pass --restart to start over"
    )]
    SourceChanged {
        pipeline: String,
        was: String,
        now: String,
    },
    #[error("MongoDB")]
    Mongo(#[source] mongodb::error::Error),
    #[error("MongoDB did not report an operationTime (is it a replica set?)")]
    NoClusterTime,
    #[error("MongoDB did not return a change-stream resume token (is it a replica set?)")]
    NoResumeToken,
    #[error("the backfill checkpoint of {collection} holds an unreadable _id; use --restart")]
    BadCheckpoint { collection: String },
    #[error("cannot read the dump folder {dir}")]
    DumpDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("dump")]
    Dump(#[source] DumpError),
    #[error("projection")]
    Project(#[source] ProjectError),
    #[error("interrupted")]
    Interrupted,
    #[error(
        "rebuilding the indexes and foreign keys dropped for the bulk load (cdc.deferred_ddl); \
         run the backfill again or `bowmark-cdc migrate` to retry"
    )]
    Rebuild(#[source] tokio_postgres::Error),
    #[error(
        "collection {collection} stopped after {done} of {total} documents; run the same command \
         again to continue from there"
    )]
    Collection {
        collection: String,
        done: u64,
        total: String,
        #[source]
        source: Box<BackfillError>,
    },
}

impl From<tokio_postgres::Error> for BackfillError {
    fn from(e: tokio_postgres::Error) -> Self {
        BackfillError::Postgres(e)
    }
}

/// Rebuild the indexes and foreign keys that an interrupted bulk load left dropped
/// (`cdc.deferred_ddl`); returns how many were rebuilt.
pub async fn rebuild_deferred(client: &mut Client) -> Result<usize, tokio_postgres::Error> {
    defer::restore(client, None).await
}

/// The version and wall time stamped on every document of a run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DocStamp {
    pub version: Version,
    pub wall_time: DateTime<Utc>,
}

/// A chunk of one collection as read from the source, and where it ends.
pub(crate) struct Chunk {
    pub docs: Vec<SourceDoc>,
    /// Documents read (projected or not).
    pub read: u64,
    /// Documents without an `_id` (skipped).
    pub no_id: u64,
    pub at: ResumeAt,
}

impl Chunk {
    pub fn new(at: ResumeAt) -> Chunk {
        Chunk {
            docs: Vec::new(),
            read: 0,
            no_id: 0,
            at,
        }
    }

    /// Add a raw document as a source state (relaxed extended JSON).
    pub fn push(&mut self, entity: Entity, mut d: Document, stamp: &DocStamp) {
        self.read += 1;
        let key = match d.get("_id") {
            Some(Bson::ObjectId(oid)) => oid.to_hex(),
            Some(Bson::String(s)) => s.clone(),
            Some(other) => other.clone().into_relaxed_extjson().to_string(),
            None => {
                self.no_id += 1;
                return;
            }
        };
        let doc = project::doc_json(&Bson::Document(std::mem::take(&mut d)).into_relaxed_extjson());
        self.docs.push(SourceDoc {
            entity,
            key,
            version: stamp.version,
            wall_time: stamp.wall_time,
            doc: Some(doc),
            deleted: false,
        });
    }
}

/// Backfill order rank: the dimensions the daily reports read, the reports, then the rest
/// side by side ([`load_all`]): jobsite materials, invoices and material shipments one after
/// the other (the shipments' costs read the other two), beside the other children. Those go
/// last: their chunks [`splits`] across connections, so the connection that runs out of
/// collections first can take some of the last ones.
fn rank(e: Entity) -> u8 {
    crate::model::model(e).rank
}

/// The collections to backfill, in backfill order; `names` (empty: all) must be watched.
pub fn select(p: &Pipeline, names: &[String]) -> Result<Vec<(String, Entity)>, BackfillError> {
    let mut out: Vec<(String, Entity)> = Vec::new();
    for n in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let Some(e) = p.entity_of(n) else {
            return Err(BackfillError::UnknownCollection {
                name: n.to_string(),
                pipeline: p.name.clone(),
                watched: p.collections.keys().cloned().collect::<Vec<_>>().join(", "),
                file: p.file.display().to_string(),
            });
        };
        if !out.iter().any(|(c, _)| c == n) {
            out.push((n.to_string(), e));
        }
    }
    if out.is_empty() {
        out = p.collections.iter().map(|(c, e)| (c.clone(), *e)).collect();
    }
    out.sort_by_key(|(c, e)| (rank(*e), c.clone()));
    Ok(out)
}

/// Where this run reads from.
enum Source {
    Dump(PathBuf),
    Mongo { scan: mongodb::Client },
}

impl Source {
    fn kind(&self) -> SourceKind {
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
    if opts.restart {
        store::reset(&client, &p.name).await?;
        tracing::info!(pipeline = %p.name, "--restart: earlier backfill progress forgotten");
    }
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
    let run = prepare_run(&client, p, &source, &source_name, stream_client.as_ref()).await?;
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
    let progress = Mutex::new(progress::Progress::new(&p.name, opts.progress));
    let open = Mutex::new(Vec::new());
    let mut job = Job {
        pipeline: p,
        client: &mut client,
        source: &source,
        stamp,
        position: run.position.clone(),
        shutdown: opts.shutdown.clone(),
        progress: &progress,
        open: &open,
    };
    let mut earlier = store::load_progress(job.client, &p.name).await?;
    let mut queue: VecDeque<Task> = selected
        .iter()
        .map(|(coll, entity)| (coll.clone(), *entity, earlier.remove(coll)))
        .collect();
    // The children's context reads the report links by key: a killed run's deferred key is
    // rebuilt before anything else loads.
    defer::restore(job.client, Some(&[defer::LINKS]))
        .await
        .map_err(BackfillError::Rebuild)?;
    let result = load_all(&mut job, settings, &mut queue).await;
    job.progress().clear();
    // Rebuilt whatever the outcome (a failed or interrupted run leaves the schema whole); only a
    // killed run leaves them to the next run or `migrate`.
    let rebuilt = defer::restore(job.client, None)
        .await
        .map_err(BackfillError::Rebuild);
    if let (Err(load), Err(rebuild)) = (&result, &rebuilt) {
        tracing::error!(pipeline = %p.name, error = ?rebuild,
            "the run failed ({load}) and so did rebuilding the dropped indexes and foreign keys; \
             the next backfill or `bowmark-cdc migrate` rebuilds them");
    }
    let collections = result?;
    rebuilt?;
    let checkpoint = job.hand_off().await?;
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

/// A collection to load: its name, entity and earlier progress.
type Task = (String, Entity, Option<store::Progress>);

/// Load every queued collection in order; those after the daily reports (the tail of the
/// queue) load side by side on `backfill.workers` connections: the jobsite materials, invoices
/// and material shipments one after the other on one, each other child collection on the
/// next free one. They derive disjoint star tables from reports and dimensions that are
/// already loaded (and none of them changes what another derives), so their chunks may
/// commit in any order; the projection lock, taken shared by backfill chunks, still keeps the
/// streaming projector (which takes it exclusive) out while they run.
async fn load_all(
    job: &mut Job<'_>,
    settings: &Settings,
    queue: &mut VecDeque<Task>,
) -> Result<Vec<CollectionSummary>, BackfillError> {
    let mut done = Vec::new();
    let workers = settings.pipeline.backfill.workers;
    let mut clients = Vec::new();
    for _ in 1..workers {
        clients.push(connect_pg(settings).await?);
    }
    while queue.front().is_some_and(|t| !side_by_side(t.1)) {
        let Some((coll, entity, prev)) = queue.pop_front() else {
            break;
        };
        let extra = if entity == Entity::DailyReport {
            &mut clients[..]
        } else {
            &mut []
        };
        done.push(job.collection(&coll, entity, prev, extra).await?);
    }
    // The children's tables go into bulk load at once, before any child chunk runs: dropping
    // a foreign key waits for every transaction reading the table it references, and every
    // child chunk reads the daily reports.
    let tables: Vec<&str> = queue
        .iter()
        .filter(|t| t.2.as_ref().is_none_or(|p| p.status != "complete"))
        .flat_map(|t| defer::bulk_tables(t.1).iter().copied())
        .collect();
    job.defer("the daily-report children", &tables).await?;
    let mut chains: VecDeque<Vec<(usize, Task)>> = VecDeque::new();
    let mut chain = Vec::new();
    for (place, task) in std::mem::take(queue).into_iter().enumerate() {
        if chained(task.1) {
            chain.push((place, task));
        } else {
            chains.push_back(vec![(place, task)]);
        }
    }
    if !chain.is_empty() {
        // First: the longest, and its chunks do not split.
        chains.push_front(chain);
    }
    clients.truncate(chains.len().saturating_sub(1));
    let shared = Mutex::new(chains);
    let mut siblings: Vec<Job<'_>> = clients.iter_mut().map(|c| job.sibling(c)).collect();
    let mut runs = vec![drain_queue(job, &shared).boxed()];
    runs.extend(siblings.iter_mut().map(|j| drain_queue(j, &shared).boxed()));
    let mut loaded: Vec<(usize, CollectionSummary)> = futures_util::future::try_join_all(runs)
        .await?
        .into_iter()
        .flatten()
        .collect();
    loaded.sort_by_key(|(n, _)| *n);
    done.extend(loaded.into_iter().map(|(_, s)| s));
    Ok(done)
}

/// A collection loading: its reader and the next chunk's number, the commit turns of its
/// chunks and its checkpoint figures, shared by the connections that take its chunks.
struct Load {
    coll: String,
    feed: tokio::sync::Mutex<(mpsc::Receiver<Result<Chunk, BackfillError>>, u64)>,
    turns: Turns,
    acc: Mutex<Acc>,
    /// The reader is done: no chunk is left to take.
    read: AtomicBool,
}

impl Load {
    /// Once the reader is done: wait until every chunk taken has committed (another
    /// connection may still be committing one).
    async fn settled(&self) {
        let taken = self.feed.lock().await.1;
        self.turns.wait(taken).await;
    }
}

fn lock_open(open: &Mutex<Vec<Arc<Load>>>) -> MutexGuard<'_, Vec<Arc<Load>>> {
    open.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether a collection's chunks may load side by side with each other (on connections that
/// ran out of collections): each derives only its own documents' rows, from reports and
/// dimensions no chunk writes. Not the material shipments: a shipment's invoice-month rate
/// depends on the other shipments of its month.
fn splits(e: Entity) -> bool {
    crate::model::model(e).splits
}

/// Ranked after the daily reports: loads beside the other such collections ([`load_all`]).
fn side_by_side(e: Entity) -> bool {
    rank(e) > rank(Entity::DailyReport)
}

/// Of the collections loaded side by side, those loaded one after the other on one
/// connection: a shipment's cost reads its jobsite material and the invoices of its month
/// (loaded first, each shipment is derived once).
fn chained(e: Entity) -> bool {
    crate::model::model(e).chained
}

/// One worker: load the next queued collections (one after the other) until none is left.
/// Each summary keeps its place in the queue, so the final summary lists collections in
/// backfill order.
async fn drain_queue(
    job: &mut Job<'_>,
    queue: &Mutex<VecDeque<Vec<(usize, Task)>>>,
) -> Result<Vec<(usize, CollectionSummary)>, BackfillError> {
    let mut out = Vec::new();
    loop {
        let next = queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front();
        let Some(chain) = next else {
            break;
        };
        for (place, (coll, entity, prev)) in chain {
            out.push((place, job.collection(&coll, entity, prev, &mut []).await?));
        }
    }
    // No collection left to start: take chunks of those still being read, until none is left.
    loop {
        let open = lock_open(job.open)
            .iter()
            .find(|l| !l.read.load(Ordering::Acquire))
            .cloned();
        let Some(load) = open else {
            return Ok(out);
        };
        tracing::info!(pipeline = %job.pipeline.name, collection = load.coll,
            "no collection left to start: this connection takes chunks of one still loading");
        job.drain(&load, Guard::NewerOrEqual).await?;
    }
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

async fn connect_pg(settings: &Settings) -> Result<Client, BackfillError> {
    let cfg = settings
        .postgres
        .pg_config()
        .map_err(BackfillError::Config)?;
    let (client, conn) = crate::pg::connect(&cfg, &settings.postgres.tls)
        .await
        .map_err(|source| BackfillError::Connect {
            database: settings.postgres.database.clone(),
            source,
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::error!(error = %e, "PostgreSQL connection closed");
        }
    });
    // The projection's `CREATE TEMP TABLE IF NOT EXISTS` notices are noise in a Job's log.
    client
        .batch_execute("SET client_min_messages TO warning")
        .await?;
    Ok(client)
}

/// Continue the pipeline's unfinished run from the same source, or start a new one (taking
/// the change-stream position first for a live source).
async fn prepare_run(
    client: &Client,
    p: &Pipeline,
    source: &Source,
    source_name: &str,
    stream_client: Option<&mongodb::Client>,
) -> Result<Run, BackfillError> {
    let describe = |kind: &str, name: &str| format!("{kind} {name}");
    if let Some(run) = store::load_run(client, &p.name).await? {
        if run.finished {
            // The last backfill completed: this invocation is a new one.
            store::reset(client, &p.name).await?;
        } else if run.source != source.kind().as_str() || run.source_name != source_name {
            return Err(BackfillError::SourceChanged {
                pipeline: p.name.clone(),
                was: describe(&run.source, &run.source_name),
                now: describe(source.kind().as_str(), source_name),
            });
        } else {
            tracing::info!(pipeline = %p.name, source = %run.source,
                started_at = %run.started_at,
                "continuing the unfinished backfill started earlier (--restart starts over)");
            return Ok(run);
        }
    }
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
        source: source.kind().as_str().to_string(),
        source_name: source_name.to_string(),
        position,
        started_at,
        finished: false,
    })
}

/// One run in progress (one per PostgreSQL connection).
struct Job<'a> {
    pipeline: &'a Pipeline,
    client: &'a mut Client,
    source: &'a Source,
    stamp: DocStamp,
    position: Option<StreamPosition>,
    shutdown: CancellationToken,
    progress: &'a Mutex<progress::Progress>,
    /// The collections loading now whose chunks another connection may take ([`splits`]).
    open: &'a Mutex<Vec<Arc<Load>>>,
}

impl<'a> Job<'a> {
    /// Another worker of this run, on its own connection.
    fn sibling<'b>(&self, client: &'b mut Client) -> Job<'b>
    where
        'a: 'b,
    {
        Job {
            pipeline: self.pipeline,
            client,
            source: self.source,
            stamp: self.stamp,
            position: self.position.clone(),
            shutdown: self.shutdown.clone(),
            progress: self.progress,
            open: self.open,
        }
    }

    fn progress(&self) -> MutexGuard<'a, progress::Progress> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Backfill one collection from its checkpoint (if any) to the end.
    async fn collection(
        &mut self,
        coll: &str,
        entity: Entity,
        prev: Option<store::Progress>,
        extra: &mut [Client],
    ) -> Result<CollectionSummary, BackfillError> {
        let started = Instant::now();
        let name = self.pipeline.name.clone();
        if let Some(prev) = prev.as_ref().filter(|p| p.status == "complete") {
            let mut s = CollectionSummary::new(coll, entity, CollectionStatus::AlreadyComplete);
            s.resumed_from = prev.docs_done;
            s.done = prev.docs_done;
            s.total = prev.docs_total;
            return Ok(s);
        }
        let mut cum = prev.unwrap_or_default();
        let (rx, total) = match self.open(coll, entity, &cum).await? {
            Opened::Missing(reason) => {
                store::begin_collection(self.client, &name, coll, "missing", Some(0)).await?;
                tracing::warn!(pipeline = %name, collection = coll, reason,
                    "collection has no data in the dump: nothing to backfill");
                let mut s = CollectionSummary::new(coll, entity, CollectionStatus::Missing(reason));
                s.total = Some(0);
                return Ok(s);
            }
            Opened::Reading { rx, total } => (rx, total),
        };
        store::begin_collection(self.client, &name, coll, "running", Some(total)).await?;
        if !side_by_side(entity) {
            self.defer(coll, defer::bulk_tables(entity)).await?;
        }
        cum.docs_total = Some(total);
        let mut s = CollectionSummary::new(coll, entity, CollectionStatus::Complete);
        s.resumed_from = cum.docs_done;
        self.progress().start(coll, cum.docs_done, Some(total));
        let load = Arc::new(Load {
            coll: coll.to_string(),
            feed: tokio::sync::Mutex::new((rx, 0)),
            turns: Turns(watch::Sender::new(0)),
            acc: Mutex::new((cum, s)),
            read: AtomicBool::new(false),
        });
        let result = if !extra.is_empty() && self.hold_exclusive().await? {
            tracing::info!(pipeline = %name, collection = coll, connections = extra.len() + 1,
                "no child in the mirror yet: the reports load side by side");
            defer::defer(self.client, &[defer::LINKS], true).await?;
            let result = self.drain_parallel(extra, &load).await;
            let rebuilt = defer::restore(self.client, Some(&[defer::LINKS]))
                .await
                .map_err(BackfillError::Rebuild);
            self.release_exclusive().await?;
            rebuilt?;
            result
        } else if splits(entity) {
            // Open to the other connections once they run out of collections.
            lock_open(self.open).push(Arc::clone(&load));
            let result = self.drain(&load, Guard::NewerOrEqual).await;
            lock_open(self.open).retain(|l| !Arc::ptr_eq(l, &load));
            if result.is_ok() {
                load.settled().await;
            }
            result
        } else {
            self.drain(&load, Guard::NewerOrEqual).await
        };
        let (cum, mut s) = load
            .acc
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Err(e) = result {
            self.progress().finish(coll, "stopped");
            return Err(BackfillError::Collection {
                collection: coll.to_string(),
                done: cum.docs_done,
                total: total.to_string(),
                source: Box::new(e),
            });
        }
        if let Some(pos) = self.position.clone() {
            s.vanished = self.tombstone_vanished(coll, entity, &pos, &mut s).await?;
        }
        store::complete_collection(self.client, &name, coll).await?;
        defer::restore(self.client, Some(defer::bulk_tables(entity)))
            .await
            .map_err(BackfillError::Rebuild)?;
        self.progress().finish(coll, "complete");
        s.done = cum.docs_done;
        s.total = Some(total.max(cum.docs_done));
        s.duration = started.elapsed();
        Ok(s)
    }

    /// Put the empty ones of `tables` in bulk load for `what` ([`defer::defer`]).
    async fn defer(&mut self, what: &str, tables: &[&str]) -> Result<(), BackfillError> {
        let deferred = defer::defer(self.client, tables, false).await?;
        if !deferred.is_empty() {
            tracing::info!(pipeline = %self.pipeline.name, collection = what,
                tables = deferred.join(","),
                "bulk load: non-unique indexes and foreign keys of empty tables dropped until \
                 the collection is loaded");
        }
        Ok(())
    }

    /// Start reading a collection after its checkpoint.
    async fn open(
        &self,
        coll: &str,
        entity: Entity,
        cum: &store::Progress,
    ) -> Result<Opened, BackfillError> {
        let chunk = self.pipeline.backfill.chunk_size;
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let stamp = self.stamp;
        match self.source {
            Source::Dump(dir) => {
                let file = match dump::locate(dir, coll).map_err(BackfillError::Dump)? {
                    dump::DumpEntry::Missing { reason } => return Ok(Opened::Missing(reason)),
                    dump::DumpEntry::Data(f) => f,
                };
                let offset = cum.byte_offset;
                let done = cum.docs_done;
                let (reader, remaining) = tokio::task::spawn_blocking(move || {
                    let mut r = dump::DumpReader::open(&file, offset)?;
                    let n = r.count_remaining()?;
                    Ok::<_, DumpError>((r, n))
                })
                .await
                .map_err(|_| BackfillError::Interrupted)?
                .map_err(BackfillError::Dump)?;
                tokio::task::spawn_blocking(move || {
                    dump::produce(reader, entity, chunk, stamp, tx)
                });
                Ok(Opened::Reading {
                    rx,
                    total: done + remaining,
                })
            }
            Source::Mongo { scan } => {
                let c = scan
                    .database(&self.pipeline.mongo_database)
                    .collection::<Document>(coll);
                let total = mongo::estimated_count(&c).await?.max(cum.docs_done);
                tokio::spawn(mongo::scan(
                    c,
                    entity,
                    chunk,
                    cum.last_id.clone(),
                    stamp,
                    tx,
                ));
                Ok(Opened::Reading { rx, total })
            }
        }
    }

    /// Take the collection's next chunk, project it and commit it with its checkpoint in its
    /// turn, until the reader is done. Other connections may take chunks of the same
    /// collection meanwhile ([`Job::drain_parallel`], [`drain_queue`]).
    async fn drain(&mut self, load: &Load, guard: Guard) -> Result<(), BackfillError> {
        loop {
            let (seq, chunk) = {
                let mut f = load.feed.lock().await;
                let Some(chunk) = self.next_chunk(&mut f.0).await? else {
                    load.read.store(true, Ordering::Release);
                    return Ok(());
                };
                f.1 += 1;
                (f.1 - 1, chunk)
            };
            self.commit_chunk(
                &load.coll,
                chunk,
                &load.acc,
                guard,
                Some((&load.turns, seq)),
            )
            .await?;
        }
    }

    /// The reader's next chunk; `None` at the end of the collection.
    async fn next_chunk(
        &self,
        rx: &mut mpsc::Receiver<Result<Chunk, BackfillError>>,
    ) -> Result<Option<Chunk>, BackfillError> {
        let next = tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => return Err(BackfillError::Interrupted),
            c = rx.recv() => c,
        };
        next.transpose()
    }

    /// Take the projection lock exclusive for this session when the daily reports' chunks may
    /// load side by side: no child is in the mirror yet (the first load of a database). Such
    /// chunks derive only their own reports' rows, from dimensions no chunk writes; holding
    /// the lock keeps the streaming projector from adding children meanwhile. Returns whether
    /// the lock is held.
    async fn hold_exclusive(&mut self) -> Result<bool, BackfillError> {
        self.client
            .execute("SELECT pg_advisory_lock($1)", &[&project::PROJECT_LOCK_KEY])
            .await?;
        let children = project::mirror_holds_children(&*self.client).await?;
        if children {
            self.release_exclusive().await?;
        }
        Ok(!children)
    }

    async fn release_exclusive(&mut self) -> Result<(), BackfillError> {
        self.client
            .execute(
                "SELECT pg_advisory_unlock($1)",
                &[&project::PROJECT_LOCK_KEY],
            )
            .await?;
        Ok(())
    }

    /// [`Job::drain`] on this connection and on `extra` at once, under the projection lock
    /// this session holds ([`Job::hold_exclusive`]). Chunks commit in reading order, so the
    /// checkpoint always covers a prefix of the collection.
    async fn drain_parallel(
        &mut self,
        extra: &mut [Client],
        load: &Load,
    ) -> Result<(), BackfillError> {
        let mut siblings: Vec<Job<'_>> = extra.iter_mut().map(|c| self.sibling(c)).collect();
        let mut runs = vec![self.drain(load, Guard::NewerOrEqualHeld).boxed()];
        runs.extend(
            siblings
                .iter_mut()
                .map(|j| j.drain(load, Guard::NewerOrEqualHeld).boxed()),
        );
        futures_util::future::try_join_all(runs).await?;
        Ok(())
    }

    /// One transaction: project the chunk (isolating rejected documents) and advance the
    /// collection's checkpoint, after the chunks before it when `turn` is given. Transient
    /// failures retry the whole chunk.
    async fn commit_chunk(
        &mut self,
        coll: &str,
        chunk: Chunk,
        acc: &Mutex<Acc>,
        guard: Guard,
        turn: Option<(&Turns, u64)>,
    ) -> Result<(), BackfillError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let tx = self.client.transaction().await?;
            match project_chunk(tx, self.pipeline, coll, &chunk, acc, guard, turn).await {
                Ok(outcome) => {
                    {
                        let mut a = acc.lock().unwrap_or_else(PoisonError::into_inner);
                        let (cum, s) = &mut *a;
                        self.account(coll, &chunk, outcome, cum, s);
                        self.progress().advance(coll, cum.docs_done);
                    }
                    if let Some((t, seq)) = turn {
                        t.pass(seq);
                    }
                    return Ok(());
                }
                Err(e)
                    if attempt < CHUNK_ATTEMPTS
                        && e.class() == ErrorClass::Transient
                        && !self.client.is_closed() =>
                {
                    tracing::warn!(collection = coll, attempt, error = %e,
                        "chunk failed transiently; retrying");
                    tokio::time::sleep(RETRY_BASE * 2u32.pow(attempt)).await;
                }
                Err(e) => return Err(BackfillError::Project(e)),
            }
        }
    }

    /// Fold a committed chunk into the checkpoint copy, the summary and the metrics.
    fn account(
        &self,
        coll: &str,
        chunk: &Chunk,
        outcome: Outcome,
        cum: &mut store::Progress,
        s: &mut CollectionSummary,
    ) {
        outcome.add_to(chunk, cum);
        s.read += chunk.read;
        let mut skip = |reason: &'static str, n: u64| {
            if n > 0 {
                *s.skipped.entry(reason).or_default() += n;
                metrics::counter!(m::BACKFILL_DOCUMENTS_SKIPPED_TOTAL,
                    m::LABEL_PIPELINE => self.pipeline.name.clone(),
                    m::LABEL_COLLECTION => coll.to_string(), m::LABEL_REASON => reason)
                .increment(n);
            }
        };
        skip("no_id", chunk.no_id);
        skip("stale", outcome.stats.stale);
        skip("rejected", outcome.rejected.len() as u64);
        for (entity, key) in &outcome.stats.quarantined {
            tracing::warn!(entity = %entity, key = %key,
                "document quarantined: its rows are rejected by PostgreSQL (see cdc.quarantine)");
        }
        if !outcome.stats.quarantined.is_empty() {
            *s.skipped.entry("quarantined").or_default() += outcome.stats.quarantined.len() as u64;
        }
        for ((t, c, a), n) in &outcome.stats.adjusted {
            *s.adjusted.entry(format!("{t}.{c} ({a})")).or_default() += n;
        }
        for (t, n) in &outcome.stats.rows_written {
            *s.rows_written.entry((*t).to_string()).or_default() += n;
        }
        for r in outcome.rejected {
            tracing::warn!(collection = coll, key = %r.0, reason = %r.1,
                "document rejected by PostgreSQL; skipped");
            if s.rejected.len() < summary::MAX_REJECTED_EXAMPLES {
                s.rejected.push(r);
            }
        }
    }

    /// After a full live scan: mirror documents of the entity older than the pre-scan
    /// position were not seen, so MongoDB no longer has them. Tombstone them.
    async fn tombstone_vanished(
        &mut self,
        coll: &str,
        entity: Entity,
        pos: &StreamPosition,
        s: &mut CollectionSummary,
    ) -> Result<u64, BackfillError> {
        let keys = store::vanished_keys(self.client, entity.as_str(), pos.cluster_time).await?;
        let mut n = 0;
        for part in keys.chunks(self.pipeline.backfill.chunk_size) {
            let docs: Vec<SourceDoc> = part
                .iter()
                .map(|k| SourceDoc {
                    entity,
                    key: k.clone(),
                    version: self.stamp.version,
                    wall_time: self.stamp.wall_time,
                    doc: None,
                    deleted: true,
                })
                .collect();
            let tx = self.client.transaction().await?;
            let stats = project::apply(&tx, self.pipeline, &docs, Guard::NewerOrEqual)
                .await
                .map_err(BackfillError::Project)?;
            tx.commit().await?;
            n += stats.applied;
            for (t, c) in &stats.rows_written {
                *s.rows_written.entry((*t).to_string()).or_default() += c;
            }
        }
        if n > 0 {
            tracing::info!(
                collection = coll,
                documents = n,
                "mirror documents no longer in MongoDB marked deleted"
            );
        }
        Ok(n)
    }

    /// Store the pre-scan position as the capture checkpoint once every watched collection is
    /// complete under this run.
    async fn hand_off(&mut self) -> Result<CheckpointOutcome, BackfillError> {
        let name = self.pipeline.name.clone();
        let progress = store::load_progress(self.client, &name).await?;
        let not_yet: Vec<String> = self
            .pipeline
            .collections
            .keys()
            .filter(|c| {
                progress
                    .get(*c)
                    .is_none_or(|p| p.status != "complete" && p.status != "missing")
            })
            .cloned()
            .collect();
        let Some(pos) = self.position.clone() else {
            if not_yet.is_empty() {
                store::finish_run(self.client, &name, false).await?;
                crate::project::record_rules_version(&*self.client, &name).await?;
            }
            return Ok(CheckpointOutcome::DumpLeftAlone);
        };
        if !not_yet.is_empty() {
            return Ok(CheckpointOutcome::Deferred { not_yet });
        }
        let outcome = match store::hand_off(self.client, &name, &pos).await? {
            store::Handoff::Stored(ct) => CheckpointOutcome::Stored(ct),
            store::Handoff::KeptNewer(stored) => CheckpointOutcome::KeptNewer {
                stored,
                pre_scan: pos.cluster_time,
            },
        };
        store::finish_run(self.client, &name, true).await?;
        // Every star row is now derived by this binary's rules.
        crate::project::record_rules_version(&*self.client, &name).await?;
        Ok(outcome)
    }
}

/// Project a chunk and record its checkpoint in `tx` (after the chunks before it, when
/// `turn` is given), then commit.
async fn project_chunk(
    mut tx: Transaction<'_>,
    pipeline: &Pipeline,
    coll: &str,
    chunk: &Chunk,
    acc: &Mutex<Acc>,
    guard: Guard,
    turn: Option<(&Turns, u64)>,
) -> Result<Outcome, ProjectError> {
    let outcome = apply_isolating(&mut tx, pipeline, &chunk.docs, guard).await?;
    if let Some((t, seq)) = turn {
        t.wait(seq).await;
    }
    let mut next = acc.lock().unwrap_or_else(PoisonError::into_inner).0.clone();
    outcome.add_to(chunk, &mut next);
    let pg = |error| ProjectError::Postgres {
        step: "backfill checkpoint",
        error,
    };
    store::record_chunk(&tx, &pipeline.name, coll, &chunk.at, &next)
        .await
        .map_err(pg)?;
    tx.commit().await.map_err(pg)?;
    Ok(outcome)
}

/// A collection's checkpoint figures and summary while it loads.
type Acc = (store::Progress, CollectionSummary);

/// Commit turns of a collection loaded on several connections: chunk `seq` commits after
/// chunk `seq - 1`.
struct Turns(watch::Sender<u64>);

impl Turns {
    async fn wait(&self, seq: u64) {
        // The sender lives as long as every waiter: this cannot fail.
        let _ = self.0.subscribe().wait_for(|t| *t == seq).await;
    }

    fn pass(&self, seq: u64) {
        self.0.send_replace(seq + 1);
    }
}

enum Opened {
    Missing(&'static str),
    Reading {
        rx: mpsc::Receiver<Result<Chunk, BackfillError>>,
        total: u64,
    },
}

/// What projecting one chunk did.
#[derive(Debug, Default)]
struct Outcome {
    stats: project::ApplyStats,
    /// Documents PostgreSQL rejected: `_id` and reason.
    rejected: Vec<(String, String)>,
}

impl Outcome {
    fn merge(&mut self, other: Outcome) {
        self.stats.applied += other.stats.applied;
        self.stats.stale += other.stats.stale;
        self.stats.merge_adjusted(&other.stats);
        for (t, n) in other.stats.rows_written {
            *self.stats.rows_written.entry(t).or_default() += n;
        }
        self.rejected.extend(other.rejected);
    }

    /// Add this chunk to a collection's cumulative checkpoint figures.
    fn add_to(&self, chunk: &Chunk, p: &mut store::Progress) {
        p.docs_done += chunk.read;
        p.docs_skipped += chunk.no_id + self.stats.stale + self.rejected.len() as u64;
        for (t, n) in &self.stats.rows_written {
            *p.rows_written.entry((*t).to_string()).or_default() += n;
        }
        match &chunk.at {
            ResumeAt::LastId(v) => p.last_id = Some(v.clone()),
            ResumeAt::Offset(o) => p.byte_offset = *o,
        }
    }
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Project `docs` inside a savepoint; when PostgreSQL rejects the data (a poison error),
/// bisect to isolate the documents it rejects and project the rest.
fn apply_isolating<'a, 'b: 'a>(
    tx: &'a mut Transaction<'b>,
    pipeline: &'a Pipeline,
    docs: &'a [SourceDoc],
    guard: Guard,
) -> BoxFut<'a, Result<Outcome, ProjectError>> {
    Box::pin(async move {
        // (documents whose own rows fail are quarantined; what still fails is bisected)
        match project::apply_isolated(tx, pipeline, docs, guard).await {
            Ok(stats) => Ok(Outcome {
                stats,
                rejected: Vec::new(),
            }),
            Err(e) if e.class() == ErrorClass::Poison => {
                if let [one] = docs {
                    return Ok(Outcome {
                        stats: project::ApplyStats::default(),
                        rejected: vec![(one.key.clone(), reason(&e))],
                    });
                }
                let (a, b) = docs.split_at(docs.len() / 2);
                let mut out = apply_isolating(tx, pipeline, a, guard).await?;
                out.merge(apply_isolating(tx, pipeline, b, guard).await?);
                Ok(out)
            }
            Err(e) => Err(e),
        }
    })
}

/// A short reason for a rejected document: the step and PostgreSQL's message (no values).
fn reason(e: &ProjectError) -> String {
    match e {
        ProjectError::Postgres { step, error } => {
            format!("{step}: {}", project::describe_pg(error))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline() -> Pipeline {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        Pipeline::load(&root.join("pipeline/paving.toml")).unwrap()
    }

    #[test]
    fn dimensions_come_first_then_reports_then_the_rest() {
        let order: Vec<String> = select(&pipeline(), &[])
            .unwrap()
            .into_iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(
            order,
            [
                "companies",
                "materials",
                "crews",
                "employees",
                "vehicles",
                "jobsites",
                "systems",
                "dailyreports",
                "jobsiteMaterials",
                "invoices",
                "materialshipments",
                "employeeworks",
                "vehicleworks",
                "productions"
            ]
        );
    }

    #[test]
    fn an_unknown_collection_is_named_in_the_error() {
        let e = select(&pipeline(), &["invoices".into(), "employes".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"employes\""), "{e}");
        assert!(e.contains("employees"), "{e}");
        let picked = select(&pipeline(), &["productions".into(), "crews".into()]).unwrap();
        assert_eq!(picked[0].0, "crews");
    }

    #[test]
    fn a_chunk_keys_documents_by_hex_id_and_skips_those_without_one() {
        let stamp = DocStamp {
            version: Version::ZERO,
            wall_time: Utc::now(),
        };
        let oid = bson::oid::ObjectId::new();
        let mut c = Chunk::new(ResumeAt::Offset(0));
        c.push(
            Entity::Crew,
            bson::doc! {"_id": oid, "name": "Base"},
            &stamp,
        );
        c.push(Entity::Crew, bson::doc! {"name": "no id"}, &stamp);
        assert_eq!((c.read, c.no_id, c.docs.len()), (2, 1, 1));
        assert_eq!(c.docs[0].key, oid.to_hex());
        let doc: serde_json::Value =
            serde_json::from_str(c.docs[0].doc.as_ref().unwrap().get()).unwrap();
        assert_eq!(doc["_id"]["$oid"], oid.to_hex());
    }
}
