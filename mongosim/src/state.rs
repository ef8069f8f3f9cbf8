//! The simulator's shared state: databases, oplog, cursors, transactions, faults, topology.
//! One `std::sync::Mutex` guards it; it is never held across an `.await`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use bson::{Bson, Document, Timestamp};
use tokio::sync::watch;

use crate::SimConfig;
use crate::cursors::Cursor;
use crate::failpoint::{FailPoint, Fault};
use crate::oplog::{Entry, Oplog};
use crate::order::Key;
use crate::topology::Topology;

/// A command error as the server reports it.
#[derive(Debug, Clone)]
pub struct CmdError {
    pub code: i32,
    pub msg: String,
    pub labels: Vec<String>,
}

impl CmdError {
    pub fn new(code: i32, msg: impl Into<String>) -> Self {
        CmdError {
            code,
            msg: msg.into(),
            labels: vec![],
        }
    }
    pub fn label(mut self, l: &str) -> Self {
        self.labels.push(l.to_string());
        self
    }
    pub fn bad_value(msg: impl Into<String>) -> Self {
        CmdError::new(2, msg)
    }
}

/// MongoDB's name for an error code.
pub fn code_name(code: i32) -> &'static str {
    match code {
        1 => "InternalError",
        2 => "BadValue",
        6 => "HostUnreachable",
        7 => "HostNotFound",
        9 => "FailedToParse",
        11 => "UserNotFound",
        14 => "TypeMismatch",
        20 => "IllegalOperation",
        26 => "NamespaceNotFound",
        28 => "PathNotViable",
        40 => "ConflictingUpdateOperators",
        43 => "CursorNotFound",
        48 => "NamespaceExists",
        50 => "MaxTimeMSExpired",
        56 => "EmptyFieldName",
        59 => "CommandNotFound",
        63 => "StaleShardVersion",
        66 => "ImmutableField",
        89 => "NetworkTimeout",
        91 => "ShutdownInProgress",
        133 => "FailedToSatisfyReadPreference",
        150 => "StaleEpoch",
        189 => "PrimarySteppedDown",
        234 => "RetryChangeStream",
        251 => "NoSuchTransaction",
        256 => "TransactionCommitted",
        260 => "InvalidResumeToken",
        262 => "ExceededTimeLimit",
        263 => "OperationNotSupportedInTransaction",
        280 => "ChangeStreamFatalError",
        286 => "ChangeStreamHistoryLost",
        9001 => "SocketException",
        10334 => "BSONObjectTooLarge",
        10107 => "NotWritablePrimary",
        11000 => "DuplicateKey",
        11600 => "InterruptedAtShutdown",
        11602 => "InterruptedDueToReplStateChange",
        13388 => "StaleConfig",
        13435 => "NotPrimaryNoSecondaryOk",
        13436 => "NotPrimaryOrSecondary",
        40324 => "Location40324",
        _ => "UnknownError",
    }
}

/// Codes whose change-stream getMore errors the server labels `ResumableChangeStreamError`.
pub const RESUMABLE_CODES: &[i32] = &[
    6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 63, 150, 13388, 234, 133,
];
/// Codes the server labels `RetryableWriteError` on retryable writes.
pub const RETRYABLE_WRITE_CODES: &[i32] = &[
    6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436,
];

/// One collection: documents ordered by `_id` in BSON order.
#[derive(Debug, Clone)]
pub struct Collection {
    pub docs: BTreeMap<Key, Document>,
    pub uuid: bson::Binary,
}

impl Collection {
    pub fn new() -> Self {
        Collection {
            docs: BTreeMap::new(),
            uuid: bson::Binary::from_uuid(bson::Uuid::new()),
        }
    }
}

impl Default for Collection {
    fn default() -> Self {
        Self::new()
    }
}

/// How to undo one write of an open transaction.
#[derive(Debug, Clone)]
pub struct Undo {
    pub db: String,
    pub coll: String,
    pub key: Bson,
    pub before: Option<Document>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnState {
    Active,
    Committed,
    Aborted,
}

/// A multi-document transaction of one session.
#[derive(Debug)]
pub struct Txn {
    pub number: i64,
    pub lsid: Document,
    pub state: TxnState,
    pub pending: Vec<Entry>,
    pub undo: Vec<Undo>,
}

/// Transaction context of the command being run.
#[derive(Debug, Clone)]
pub struct TxnCtx {
    pub session: Vec<u8>,
    pub number: i64,
}

/// One logged command.
#[derive(Debug, Clone)]
pub struct LoggedCommand {
    pub conn: u32,
    pub body: Document,
}

pub struct State {
    pub config: SimConfig,
    pub dbs: BTreeMap<String, BTreeMap<String, Collection>>,
    pub oplog: Oplog,
    pub cursors: HashMap<i64, Cursor>,
    pub next_cursor: i64,
    pub clock: Timestamp,
    pub failpoint: Option<FailPoint>,
    pub faults: Vec<(String, Fault)>,
    pub topo: Topology,
    pub retry_cache: HashMap<(Vec<u8>, i64), Document>,
    pub txns: HashMap<Vec<u8>, Txn>,
    pub log: Vec<LoggedCommand>,
    /// Commands held before running until released (`Sim::stall`, `simStallGetMore`).
    pub stalled: std::collections::HashSet<String>,
}

impl State {
    pub fn new(config: SimConfig) -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1_700_000_000);
        let oplog = Oplog {
            window: config.oplog_window,
            ..Default::default()
        };
        State {
            config,
            dbs: BTreeMap::new(),
            oplog,
            cursors: HashMap::new(),
            next_cursor: 7_000_000_001,
            clock: Timestamp {
                time: secs,
                increment: 1,
            },
            failpoint: None,
            faults: Vec::new(),
            topo: Topology::default(),
            retry_cache: HashMap::new(),
            txns: HashMap::new(),
            log: Vec::new(),
            stalled: Default::default(),
        }
    }

    /// Advance the cluster clock.
    pub fn tick(&mut self) -> Timestamp {
        if self.clock.increment == u32::MAX {
            self.clock.time += 1;
            self.clock.increment = 0;
        }
        self.clock.increment += 1;
        self.clock
    }

    pub fn coll(&self, db: &str, coll: &str) -> Option<&Collection> {
        self.dbs.get(db).and_then(|d| d.get(coll))
    }

    pub fn coll_mut(&mut self, db: &str, coll: &str) -> &mut Collection {
        self.dbs
            .entry(db.to_string())
            .or_default()
            .entry(coll.to_string())
            .or_default()
    }

    pub fn new_cursor_id(&mut self) -> i64 {
        self.next_cursor += 1;
        self.next_cursor
    }

    /// Record a write: into the open transaction, or straight into the oplog.
    /// Returns true when the oplog grew (waiters must be woken).
    pub fn record(&mut self, mut e: Entry, txn: Option<&TxnCtx>, undo: Option<Undo>) -> bool {
        if let Some(t) = txn
            && let Some(tx) = self
                .txns
                .get_mut(&t.session)
                .filter(|tx| tx.number == t.number)
        {
            if let Some(u) = undo {
                tx.undo.push(u);
            }
            tx.pending.push(e);
            return false;
        }
        e.ts = self.tick();
        self.oplog.append(e);
        true
    }

    pub fn log_command(&mut self, conn: u32, body: &Document) {
        const CAP: usize = 200_000;
        if self.log.len() >= CAP {
            self.log.drain(..CAP / 2);
        }
        self.log.push(LoggedCommand {
            conn,
            body: body.clone(),
        });
    }
}

/// State plus the wake-up channels, shared by every connection task and the `Sim` handle.
pub struct Shared {
    pub state: Mutex<State>,
    /// Bumped on every oplog append and topology change; change-stream getMores wait on it.
    pub changed: watch::Sender<u64>,
    pub shutdown: watch::Sender<bool>,
    pub host: String,
    pub process_id: bson::oid::ObjectId,
    pub runtime: tokio::runtime::Handle,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
    pub fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
    }
}

pub type SharedRef = Arc<Shared>;

/// Resolves once shutdown was requested.
pub async fn until_shutdown(rx: &mut watch::Receiver<bool>) {
    let ok = rx.wait_for(|v| *v).await.is_ok();
    if !ok {
        std::future::pending::<()>().await;
    }
}
