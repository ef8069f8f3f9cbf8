//! `mongosim`: a wire-level MongoDB simulator posing as the primary of a one-member replica
//! set, for tests, the load harness and demos. The real `mongodb` driver talks to it over
//! TCP (OP_MSG). It keeps documents in memory in BSON order, records every write in an
//! oplog, serves change streams with resume tokens, and injects faults (`failCommand`,
//! step-down, oplog truncation) with the real server's semantics.
//!
//! ```no_run
//! # async fn demo() {
//! let sim = mongosim::Sim::start().await;
//! let client = mongodb::Client::with_uri_str(sim.uri()).await.unwrap();
//! # }
//! ```

mod codec;
mod crud;
mod cursors;
mod dump;
mod failpoint;
mod filter;
mod oplog;
pub mod order;
mod server;
mod split;
mod state;
mod streams;
mod topology;
mod txn;
mod update;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bson::{Document, Timestamp};
use tokio::sync::watch;

pub use dump::{DumpCounts, read_dump_documents};
pub use failpoint::Fault;
pub use state::CmdError;

use state::{Shared, SharedRef, State};

/// Simulator settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Replica-set name (`setName`), default `rs0`.
    pub set_name: String,
    /// Keep at most this many oplog entries (older history is lost: error 286).
    pub oplog_window: Option<usize>,
    /// Advertise `topologyVersion` and hold awaitable hellos (the driver then streams).
    pub streaming_hello: bool,
    /// Address to bind; default `127.0.0.1:0`.
    pub listen: SocketAddr,
    /// Add `_typeBits` to every other resume token (opaque extra field, as real servers do).
    pub token_type_bits: bool,
    /// Largest change event returned whole: 16 MiB (BSONObjMaxUserSize) as on a server.
    /// Above it `$changeStreamSplitLargeEvent` splits the event; without that stage an event
    /// above this plus 16 KiB (the server's internal slack) fails the getMore with 10334
    /// (BSONObjectTooLarge). Tests lower it to split small events.
    pub max_event_bytes: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            set_name: "rs0".into(),
            oplog_window: None,
            streaming_hello: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token_type_bits: false,
            max_event_bytes: 16 * 1024 * 1024,
        }
    }
}

/// A running simulator. Dropping it shuts the server down.
pub struct Sim {
    shared: SharedRef,
    addr: SocketAddr,
}

pub(crate) fn step_down_locked(shared: &SharedRef, st: &mut State, d: Duration) {
    let d = d.min(Duration::from_secs(86_400));
    st.topo.step_down(d);
    let s = shared.clone();
    shared.runtime.spawn(async move {
        tokio::time::sleep(d + Duration::from_millis(1)).await;
        s.lock().topo.is_primary();
        s.notify();
    });
}

impl Sim {
    /// Start with the default configuration on `127.0.0.1:0`. Panics if it cannot bind.
    pub async fn start() -> Sim {
        Sim::start_with(SimConfig::default())
            .await
            .expect("mongosim: cannot bind 127.0.0.1:0")
    }

    /// Start with a configuration.
    pub async fn start_with(config: SimConfig) -> std::io::Result<Sim> {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let (changed, _) = watch::channel(0u64);
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(config)),
            changed,
            shutdown,
            host: format!("{}:{}", addr.ip(), addr.port()),
            process_id: bson::oid::ObjectId::new(),
            runtime: tokio::runtime::Handle::current(),
        });
        tokio::spawn(server::accept_loop(shared.clone(), listener));
        Ok(Sim { shared, addr })
    }

    /// `mongodb://127.0.0.1:PORT/?replicaSet=<set>`.
    pub fn uri(&self) -> String {
        let set = self.shared.lock().config.set_name.clone();
        format!("mongodb://{}/?replicaSet={set}", self.shared.host)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Insert documents as a write by another client would: into the collection and the
    /// oplog (change streams see them). Returns the first error (e.g. 11000), if any.
    pub fn insert_raw(
        &self,
        db: &str,
        coll: &str,
        docs: impl IntoIterator<Item = Document>,
    ) -> Result<(), CmdError> {
        let mut st = self.shared.lock();
        st.coll_mut(db, coll);
        let mut r = Ok(());
        for d in docs {
            if let Err(e) = crud::insert_one(&mut st, db, coll, d, None) {
                r = Err(e);
                break;
            }
        }
        drop(st);
        self.shared.notify();
        r
    }

    /// Load a mongodump folder into `db` (no change events). Returns per-collection counts.
    pub fn load_dump(&self, db: &str, dir: &Path) -> std::io::Result<DumpCounts> {
        let colls = dump::read_dump(dir)?;
        Ok(dump::install(&mut self.shared.lock(), db, colls))
    }

    /// The documents of a collection in `_id` order (a test peek, not through the wire).
    pub fn documents(&self, db: &str, coll: &str) -> Vec<Document> {
        self.shared
            .lock()
            .coll(db, coll)
            .map(|c| c.docs.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Lose all oplog history up to now (resuming from before now gives 286).
    pub fn truncate_oplog(&self) {
        self.shared.lock().oplog.truncate();
        self.shared.notify();
    }

    /// Keep at most `entries` oplog entries (`None`: unlimited).
    pub fn set_oplog_window(&self, entries: impl Into<Option<usize>>) {
        let mut st = self.shared.lock();
        st.oplog.window = entries.into();
        st.oplog.enforce_window();
        drop(st);
        self.shared.notify();
    }

    /// Step down for `d`: hello reports a secondary, writes fail with 10107 +
    /// RetryableWriteError, change-stream getMores with 11602 + ResumableChangeStreamError.
    pub fn step_down(&self, d: Duration) {
        let mut st = self.shared.lock();
        step_down_locked(&self.shared, &mut st, d);
        drop(st);
        self.shared.notify();
    }

    /// Is the member primary right now?
    pub fn is_primary(&self) -> bool {
        self.shared.lock().topo.is_primary()
    }

    /// Apply `fault` to the next command named `cmd` (e.g. "getMore", "insert").
    pub fn fail_next(&self, cmd: &str, fault: Fault) {
        self.shared.lock().faults.push((cmd.to_string(), fault));
    }

    /// Hold every command named `cmd` (before it runs) until the guard is dropped.
    pub fn stall(&self, cmd: &str) -> StallGuard {
        self.shared.lock().stalled.insert(cmd.to_string());
        StallGuard {
            shared: self.shared.clone(),
            cmd: cmd.to_string(),
        }
    }

    /// Every command received, in order (kind-0 bodies, including `$db`, `lsid`, ...).
    pub fn command_log(&self) -> Vec<Document> {
        self.shared
            .lock()
            .log
            .iter()
            .map(|l| l.body.clone())
            .collect()
    }

    /// Commands named `name`, in order.
    pub fn commands_named(&self, name: &str) -> Vec<Document> {
        self.shared
            .lock()
            .log
            .iter()
            .filter(|l| l.body.keys().next().is_some_and(|k| k == name))
            .map(|l| l.body.clone())
            .collect()
    }

    /// `(server connection id, command)` pairs, in order.
    pub fn command_log_with_connections(&self) -> Vec<(u32, Document)> {
        self.shared
            .lock()
            .log
            .iter()
            .map(|l| (l.conn, l.body.clone()))
            .collect()
    }

    pub fn clear_command_log(&self) {
        self.shared.lock().log.clear();
    }

    /// The current cluster time (the latest oplog timestamp).
    pub fn cluster_time(&self) -> Timestamp {
        self.shared.lock().clock
    }

    /// Number of open cursors.
    pub fn open_cursors(&self) -> usize {
        self.shared.lock().cursors.len()
    }

    /// Stop accepting and close every connection.
    pub fn shutdown(&self) {
        let _ = self.shared.shutdown.send(true);
    }
}

/// Releases a stalled command name when dropped (see [`Sim::stall`]).
pub struct StallGuard {
    shared: SharedRef,
    cmd: String,
}

impl Drop for StallGuard {
    fn drop(&mut self) {
        self.shared.lock().stalled.remove(&self.cmd);
        self.shared.notify();
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.shutdown();
    }
}
