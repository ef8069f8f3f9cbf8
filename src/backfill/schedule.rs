//! The scheduler: `backfill.workers` PostgreSQL connections pulling chunks from per-collection
//! queues. Order and parallelism come from the entity catalog ([`crate::model`]):
//!
//! 1. the collections ranked up to the daily reports load one after the other on the first
//!    connection; the daily reports' chunks are taken by every connection at once when no
//!    report child is in the mirror yet (the first load of a database);
//! 2. the rest load side by side: the `chained` collections (jobsite materials, invoices,
//!    material shipments) one after the other on one connection, each other one on the next
//!    free connection; a connection that runs out of collections takes chunks of one still
//!    loading whose chunks may split (`splits`).
//!
//! Whatever the connection, a collection's chunks commit in reading order ([`Turns`]), so its
//! checkpoint always covers a prefix of the collection.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::config::{Pipeline, Settings};
use crate::event::Entity;
use crate::model;
use crate::project::{self, Lock};

use super::chunk::{Chunk, Tally, Turn, Turns};
use super::guard::Budget;
use super::progress;
use super::run::{Source, connect_pg};
use super::store::{self, CollectionState, StreamPosition};
use super::summary::CollectionSummary;
use super::{BackfillError, DocStamp, defer};

/// A collection to load, with its earlier progress.
pub(super) struct Task {
    pub collection: String,
    pub entity: Entity,
    pub earlier: Option<store::Progress>,
}

impl Task {
    fn complete(&self) -> bool {
        self.earlier
            .as_ref()
            .is_some_and(|p| p.state == CollectionState::Complete)
    }
}

/// Something with its place in backfill order (the summary lists collections in that order).
struct Placed<T> {
    place: usize,
    item: T,
}

/// Collections loaded one after the other on one connection.
struct Chain(Vec<Placed<Task>>);

/// What every connection of a run shares.
pub(super) struct Shared<'a> {
    pub settings: &'a Settings,
    pub pipeline: &'a Pipeline,
    pub source: &'a Source,
    pub stamp: DocStamp,
    pub position: Option<StreamPosition>,
    pub shutdown: CancellationToken,
    pub progress: Mutex<progress::Progress>,
    /// The collections loading now whose chunks another connection may take.
    open: Mutex<Vec<Arc<Load>>>,
    /// Mirror documents this run may still mark deleted ([`super::guard`]).
    pub deletes: Budget,
}

impl<'a> Shared<'a> {
    pub fn new(
        settings: &'a Settings,
        source: &'a Source,
        stamp: DocStamp,
        position: Option<StreamPosition>,
        shutdown: CancellationToken,
        progress: progress::Progress,
        deletes: Budget,
    ) -> Shared<'a> {
        Shared {
            settings,
            pipeline: &settings.pipeline,
            source,
            stamp,
            position,
            shutdown,
            progress: Mutex::new(progress),
            open: Mutex::new(Vec::new()),
            deletes,
        }
    }

    pub fn progress(&self) -> MutexGuard<'_, progress::Progress> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn open(&self) -> MutexGuard<'_, Vec<Arc<Load>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One connection of a run.
pub(super) struct Worker<'a> {
    pub run: &'a Shared<'a>,
    pub client: &'a mut Client,
}

/// A collection's reader and the number of the next chunk to take.
struct Feed {
    rx: mpsc::Receiver<Result<Chunk, BackfillError>>,
    taken: u64,
}

/// A collection loading: its reader, the commit turns of its chunks and its checkpoint
/// figures, shared by the connections that take its chunks.
pub(super) struct Load {
    pub coll: String,
    feed: tokio::sync::Mutex<Feed>,
    turns: Turns,
    pub tally: Mutex<Tally>,
    /// The reader is done: no chunk is left to take.
    read: AtomicBool,
}

impl Load {
    pub fn new(coll: &str, rx: mpsc::Receiver<Result<Chunk, BackfillError>>, tally: Tally) -> Load {
        Load {
            coll: coll.to_string(),
            feed: tokio::sync::Mutex::new(Feed { rx, taken: 0 }),
            turns: Turns::new(),
            tally: Mutex::new(tally),
            read: AtomicBool::new(false),
        }
    }

    /// Once the reader is done: wait until every chunk taken has committed (another
    /// connection may still be committing one).
    async fn settled(&self) {
        let taken = self.feed.lock().await.taken;
        self.turns.wait(taken).await;
    }

    pub(crate) fn tally(&self) -> Tally {
        self.tally
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Ranked after the daily reports: loads beside the other such collections.
pub(super) fn side_by_side(e: Entity) -> bool {
    model::model(e).rank > model::model(Entity::DailyReport).rank
}

/// Load every queued collection (in backfill order) on `backfill.workers` connections;
/// returns their summaries in backfill order.
pub(super) async fn load_all(
    run: &Shared<'_>,
    client: &mut Client,
    queue: Vec<Task>,
) -> Result<Vec<CollectionSummary>, BackfillError> {
    let mut done = Vec::new();
    let mut clients = Vec::new();
    for _ in 1..run.pipeline.backfill.workers {
        clients.push(connect_pg(run.settings).await?);
    }
    let mut first = Worker { run, client };
    let mut queue: VecDeque<Task> = queue.into();
    while queue.front().is_some_and(|t| !side_by_side(t.entity)) {
        let Some(task) = queue.pop_front() else {
            break;
        };
        let extra = if task.entity == Entity::DailyReport {
            &mut clients[..]
        } else {
            &mut []
        };
        done.push(first.collection(task, extra).await?);
    }
    // The side-by-side tables go into bulk load at once, before any of their chunks runs:
    // dropping a foreign key waits for every transaction reading the table it references, and
    // every child chunk reads the daily reports.
    let tables: Vec<&str> = queue
        .iter()
        .filter(|t| !t.complete())
        .flat_map(|t| defer::bulk_tables(t.entity).iter().copied())
        .collect();
    first.defer("the daily-report children", &tables).await?;
    let mut chains: VecDeque<Chain> = VecDeque::new();
    let mut chained = Vec::new();
    for (place, task) in queue.into_iter().enumerate() {
        let placed = Placed { place, item: task };
        if model::model(placed.item.entity).chained {
            chained.push(placed);
        } else {
            chains.push_back(Chain(vec![placed]));
        }
    }
    if !chained.is_empty() {
        // First: the longest, and its chunks do not split.
        chains.push_front(Chain(chained));
    }
    clients.truncate(chains.len().saturating_sub(1));
    let chains = Mutex::new(chains);
    let mut others: Vec<Worker<'_>> = clients
        .iter_mut()
        .map(|client| Worker { run, client })
        .collect();
    let mut runs = vec![first.drain_chains(&chains).boxed()];
    runs.extend(others.iter_mut().map(|w| w.drain_chains(&chains).boxed()));
    let mut loaded: Vec<Placed<CollectionSummary>> = futures_util::future::try_join_all(runs)
        .await?
        .into_iter()
        .flatten()
        .collect();
    loaded.sort_by_key(|p| p.place);
    done.extend(loaded.into_iter().map(|p| p.item));
    Ok(done)
}

impl Worker<'_> {
    /// Load the next queued chains (each one's collections one after the other) until none is
    /// left, then take chunks of collections still loading.
    async fn drain_chains(
        &mut self,
        chains: &Mutex<VecDeque<Chain>>,
    ) -> Result<Vec<Placed<CollectionSummary>>, BackfillError> {
        let mut out = Vec::new();
        loop {
            let next = chains
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop_front();
            let Some(Chain(tasks)) = next else {
                break;
            };
            for Placed { place, item } in tasks {
                let item = self.collection(item, &mut []).await?;
                out.push(Placed { place, item });
            }
        }
        // No collection left to start: take chunks of those still being read, until none is left.
        loop {
            let open = self
                .run
                .open()
                .iter()
                .find(|l| !l.read.load(Ordering::Acquire))
                .cloned();
            let Some(load) = open else {
                return Ok(out);
            };
            tracing::info!(pipeline = %self.run.pipeline.name, collection = load.coll,
                "no collection left to start: this connection takes chunks of one still loading");
            self.drain(&load, Lock::Shared).await?;
        }
    }

    /// Load a collection's chunks on this connection and, when it may split, on the
    /// connections that run out of collections.
    pub(super) async fn load_splitting(&mut self, load: &Arc<Load>) -> Result<(), BackfillError> {
        self.run.open().push(Arc::clone(load));
        let result = self.drain(load, Lock::Shared).await;
        self.run.open().retain(|l| !Arc::ptr_eq(l, load));
        if result.is_ok() {
            load.settled().await;
        }
        result
    }

    /// Take the collection's next chunk, project it and commit it with its checkpoint in its
    /// turn, until the reader is done. Other connections may take chunks of the same
    /// collection meanwhile.
    pub(super) async fn drain(&mut self, load: &Load, lock: Lock) -> Result<(), BackfillError> {
        loop {
            let (seq, chunk) = {
                let mut feed = load.feed.lock().await;
                let Some(chunk) = self.next_chunk(&mut feed.rx).await? else {
                    load.read.store(true, Ordering::Release);
                    return Ok(());
                };
                feed.taken += 1;
                (feed.taken - 1, chunk)
            };
            let turn = Turn {
                turns: &load.turns,
                seq,
            };
            self.commit_chunk(&load.coll, chunk, &load.tally, lock, turn)
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
            _ = self.run.shutdown.cancelled() => return Err(BackfillError::Interrupted),
            c = rx.recv() => c,
        };
        next.transpose()
    }

    /// Take the projection lock exclusive for this session when the daily reports' chunks may
    /// load side by side: no child is in the mirror yet (the first load of a database). Such
    /// chunks derive only their own reports' rows, from dimensions no chunk writes; holding
    /// the lock keeps the streaming projector from adding children meanwhile. Returns whether
    /// the lock is held.
    pub(super) async fn hold_exclusive(&mut self) -> Result<bool, BackfillError> {
        self.client
            .execute("SELECT pg_advisory_lock($1)", &[&project::PROJECT_LOCK_KEY])
            .await?;
        let children = project::mirror_holds_children(&*self.client).await?;
        if children {
            self.release_exclusive().await?;
        }
        Ok(!children)
    }

    pub(super) async fn release_exclusive(&mut self) -> Result<(), BackfillError> {
        self.client
            .execute(
                "SELECT pg_advisory_unlock($1)",
                &[&project::PROJECT_LOCK_KEY],
            )
            .await?;
        Ok(())
    }

    /// [`Worker::drain`] on this connection and on `extra` at once, under the projection lock
    /// this session holds ([`Worker::hold_exclusive`]).
    pub(super) async fn drain_parallel(
        &mut self,
        extra: &mut [Client],
        load: &Load,
    ) -> Result<(), BackfillError> {
        let run = self.run;
        let mut others: Vec<Worker<'_>> = extra
            .iter_mut()
            .map(|client| Worker { run, client })
            .collect();
        let mut runs = vec![self.drain(load, Lock::Held).boxed()];
        runs.extend(others.iter_mut().map(|w| w.drain(load, Lock::Held).boxed()));
        futures_util::future::try_join_all(runs).await?;
        Ok(())
    }
}
