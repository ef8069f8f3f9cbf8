//! Transport and dispatch: one tokio task per connection, commands processed in order.
//! A malformed message closes that connection (logged); the server never panics on input.

use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bson::{Bson, Document, doc};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::codec::{self, FLAG_MORE_TO_COME, Message};
use crate::cursors::{self, Body, Cursor};
use crate::state::{CmdError, SharedRef, State, code_name};
use crate::{crud, ddl, failpoint, streams, topology, txn};

static REQUEST_IDS: AtomicI32 = AtomicI32::new(1);
static CONN_IDS: AtomicU32 = AtomicU32::new(1);

enum Outcome {
    Reply(Document),
    Bytes(Vec<u8>),
    Close,
}

const WRITES: &[&str] = &[
    "insert",
    "update",
    "delete",
    "findAndModify",
    "findandmodify",
];
const PRIMARY_ONLY: &[&str] = &[
    "insert",
    "update",
    "delete",
    "findAndModify",
    "findandmodify",
    "create",
    "drop",
    "dropDatabase",
    "renameCollection",
    "createIndexes",
    "dropIndexes",
    "commitTransaction",
    "abortTransaction",
];
const READS: &[&str] = &[
    "find",
    "aggregate",
    "count",
    "listCollections",
    "listIndexes",
    "distinct",
];

pub async fn accept_loop(shared: SharedRef, listener: TcpListener) {
    let mut down = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let s = shared.clone();
                    tokio::spawn(serve(s, stream));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "mongosim: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = crate::state::until_shutdown(&mut down) => break,
        }
    }
}

async fn serve(shared: SharedRef, stream: TcpStream) {
    let conn = CONN_IDS.fetch_add(1, Ordering::Relaxed);
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let mut app: Option<String> = None;
    let mut down = shared.shutdown.subscribe();
    loop {
        let msg = tokio::select! {
            m = codec::read_message(&mut rd) => m,
            _ = crate::state::until_shutdown(&mut down) => break,
        };
        let msg = match msg {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(conn, error = %e, "mongosim: bad message, closing connection");
                break;
            }
        };
        let more_to_come = msg.flags & FLAG_MORE_TO_COME != 0;
        let req = msg.request_id;
        let reply = tokio::select! {
            o = handle(&shared, conn, &mut app, msg) => o,
            _ = crate::state::until_shutdown(&mut down) => break,
        };
        match reply {
            Outcome::Close => break,
            reply @ (Outcome::Reply(_) | Outcome::Bytes(_)) => {
                if more_to_come {
                    continue;
                }
                let id = REQUEST_IDS.fetch_add(1, Ordering::Relaxed);
                let encoded = match reply {
                    Outcome::Reply(doc) => codec::encode_reply(id, req, &doc),
                    Outcome::Bytes(b) => Ok(codec::encode_reply_bytes(id, req, &b)),
                    Outcome::Close => continue,
                };
                let bytes = match encoded {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(conn, error = %e, "mongosim: cannot encode reply");
                        break;
                    }
                };
                if let Err(e) = wr.write_all(&bytes).await {
                    tracing::debug!(conn, error = %e, "mongosim: write failed");
                    break;
                }
            }
        }
    }
}

/// Add `ok`, `$clusterTime` and `operationTime` to a reply.
fn envelope(st: &State, r: Result<Document, CmdError>) -> Document {
    envelope_tv(st, r, None)
}

const NON_RESUMABLE: &str = "NonResumableChangeStreamError";

/// Does an aggregate's pipeline start with `$changeStream`?
fn is_stream_pipeline(body: &Document) -> bool {
    matches!(
        body.get_array("pipeline").ok().and_then(|p| p.first()),
        Some(Bson::Document(d)) if d.contains_key("$changeStream")
    )
}

/// State-change codes that carry `topologyVersion` in streaming mode.
const STATE_CHANGE: &[i32] = &[91, 189, 10107, 11600, 11602, 13435, 13436];

fn envelope_tv(
    st: &State,
    r: Result<Document, CmdError>,
    process_id: Option<bson::oid::ObjectId>,
) -> Document {
    let mut out = match r {
        Ok(mut d) => {
            d.insert("ok", 1.0);
            d
        }
        Err(e) => {
            let mut d = doc! {"ok": 0.0, "errmsg": e.msg.clone(), "code": e.code, "codeName": code_name(e.code)};
            let mut labels = e.labels.clone();
            // The server's NonResumableChangeStreamError category.
            if matches!(e.code, 280 | 286) && !labels.iter().any(|l| l == NON_RESUMABLE) {
                labels.push(NON_RESUMABLE.into());
            }
            if !labels.is_empty() {
                d.insert("errorLabels", labels);
            }
            if let (Some(pid), true) = (
                process_id,
                st.config.streaming_hello && STATE_CHANGE.contains(&e.code),
            ) {
                d.insert(
                    "topologyVersion",
                    doc! {"processId": pid, "counter": Bson::Int64(st.topo.counter)},
                );
            }
            d
        }
    };
    let ts = st.clock;
    out.insert(
        "$clusterTime",
        doc! {"clusterTime": ts, "signature": {"hash": bson::Binary{subtype: bson::spec::BinarySubtype::Generic, bytes: vec![0u8; 20]}, "keyId": Bson::Int64(0)}},
    );
    out.insert("operationTime", ts);
    out
}

fn reply(shared: &SharedRef, r: Result<Document, CmdError>) -> Outcome {
    let st = shared.lock();
    Outcome::Reply(envelope_tv(&st, r, Some(shared.process_id)))
}

/// Finish a command result: documents get the envelope; stream batches are assembled as bytes.
fn finish(st: &State, r: Result<Body, CmdError>, pid: bson::oid::ObjectId) -> Outcome {
    match r {
        Ok(Body::Doc(d)) => Outcome::Reply(envelope_tv(st, Ok(d), Some(pid))),
        Ok(Body::Stream {
            id,
            ns,
            batch,
            first,
            pbrt,
        }) => {
            let tail = envelope_tv(st, Ok(Document::new()), Some(pid));
            Outcome::Bytes(cursors::stream_reply_bytes(
                id, &ns, &batch, first, &pbrt, &tail,
            ))
        }
        Err(e) => Outcome::Reply(envelope_tv(st, Err(e), Some(pid))),
    }
}

async fn handle(shared: &SharedRef, conn: u32, app: &mut Option<String>, msg: Message) -> Outcome {
    let Message {
        body, sequences, ..
    } = msg;
    let name = body.keys().next().cloned().unwrap_or_default();
    let db = body.get_str("$db").unwrap_or("admin").to_string();
    shared.lock().log_command(conn, &body);

    if matches!(name.as_str(), "hello" | "isMaster" | "ismaster") {
        if let Ok(n) = body
            .get_document("client")
            .and_then(|c| c.get_document("application"))
            .and_then(|a| a.get_str("name"))
        {
            *app = Some(n.to_string());
        }
        return Outcome::Reply(hello(shared, conn, &body).await);
    }

    let action = {
        let mut st = shared.lock();
        let ctx = failpoint::Context {
            stream_getmore: name == "getMore" && cursors::is_stream_getmore(&st, &body),
            stream_aggregate: name == "aggregate" && is_stream_pipeline(&body),
            retryable_write: (WRITES.contains(&name.as_str()) && txn::txn_number(&body).is_some())
                || matches!(name.as_str(), "commitTransaction" | "abortTransaction"),
        };
        failpoint::check(&mut st, &name, app.as_deref(), ctx)
    };
    let mut close_after = false;
    if let Some(a) = action {
        if let Some(d) = a.block {
            tokio::time::sleep(d).await;
        }
        if a.close {
            return Outcome::Close;
        }
        if let Some(e) = a.error {
            return reply(shared, Err(e));
        }
        close_after = a.close_after;
    }

    // Held by `Sim::stall` / `simStallGetMore` until released.
    loop {
        let mut rx = shared.changed.subscribe();
        if !shared.lock().stalled.contains(&name) {
            break;
        }
        let mut down = shared.shutdown.subscribe();
        tokio::select! {
            _ = rx.changed() => {}
            _ = crate::state::until_shutdown(&mut down) => return Outcome::Close,
        }
    }

    let r = if name == "getMore" {
        let r = cursors::get_more(shared, &db, &body, app.as_deref()).await;
        let st = shared.lock();
        finish(&st, r, shared.process_id)
    } else {
        let mut seq = sequences;
        let docs = if seq.is_empty() {
            None
        } else {
            Some(seq.remove(0).1)
        };
        let mut st = shared.lock();
        let before = st.oplog.last_seq;
        let r = run(shared, &mut st, &name, &db, &body, docs);
        let grew = st.oplog.last_seq != before;
        let out = finish(&st, r, shared.process_id);
        drop(st);
        if grew {
            shared.notify();
        }
        out
    };
    if close_after { Outcome::Close } else { r }
}

async fn hello(shared: &SharedRef, conn: u32, body: &Document) -> Document {
    let awaitable = {
        let st = shared.lock();
        st.config.streaming_hello
    } && body.contains_key("topologyVersion")
        && body.contains_key("maxAwaitTimeMS");
    if awaitable {
        let seen = body
            .get_document("topologyVersion")
            .ok()
            .and_then(|t| t.get_i64("counter").ok())
            .unwrap_or(-1);
        let wait = body
            .get("maxAwaitTimeMS")
            .and_then(crate::order::as_f64)
            .unwrap_or(10_000.0);
        let deadline = Instant::now() + Duration::from_millis(wait.clamp(0.0, 86_400_000.0) as u64);
        loop {
            let mut rx = shared.changed.subscribe();
            {
                let mut st = shared.lock();
                st.topo.is_primary();
                if st.topo.counter != seen || Instant::now() >= deadline {
                    break;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = tokio::time::timeout(left, rx.changed()).await;
        }
    }
    let mut st = shared.lock();
    let h = topology::hello(&mut st, &shared.host, shared.process_id, conn);
    envelope(&st, Ok(h))
}

fn read_pref_primary(body: &Document) -> bool {
    match body.get_document("$readPreference") {
        Ok(rp) => rp.get_str("mode").unwrap_or("primary") == "primary",
        Err(_) => true,
    }
}

fn run(
    shared: &SharedRef,
    st: &mut State,
    name: &str,
    db: &str,
    body: &Document,
    seq: Option<Vec<Document>>,
) -> Result<Body, CmdError> {
    if !st.topo.is_primary() {
        if PRIMARY_ONLY.contains(&name) {
            let mut e = CmdError::new(10107, "not primary");
            if (WRITES.contains(&name) && txn::txn_number(body).is_some())
                || matches!(name, "commitTransaction" | "abortTransaction")
            {
                e = e.label("RetryableWriteError");
            }
            return Err(e);
        }
        if READS.contains(&name) && read_pref_primary(body) {
            return Err(CmdError::new(13435, "not primary and secondaryOk=false"));
        }
    }
    let ctx = txn::context(st, body)?;
    // Retryable writes: a repeated (lsid, txnNumber) returns the recorded reply.
    let retry_key = match (WRITES.contains(&name), &ctx) {
        (true, None) => txn::session_key(body).zip(txn::txn_number(body)),
        _ => None,
    };
    if let Some(k) = &retry_key
        && let Some(prev) = st.retry_cache.get(k)
    {
        return Ok(Body::Doc(prev.clone()));
    }
    let c = ctx.as_ref();
    let r = match name {
        "ping" | "endSessions" | "killSessions" | "refreshSessions" | "killAllSessions" => {
            Ok(Document::new())
        }
        "buildInfo" | "buildinfo" => Ok(doc! {
            "version": "7.0.0-mongosim", "versionArray": [7, 0, 0, 0], "gitVersion": "mongosim",
            "bits": 64, "maxBsonObjectSize": 16 * 1024 * 1024, "simulator": true,
        }),
        "getParameter" => Ok(doc! {"featureCompatibilityVersion": {"version": "7.0"}}),
        "serverStatus" => Ok(
            doc! {"host": shared.host.clone(), "version": "7.0.0-mongosim", "process": "mongosim", "simulator": true},
        ),
        "insert" => crud::insert(st, db, body, seq, c),
        "update" => crud::update(st, db, body, seq, c),
        "delete" => crud::delete(st, db, body, seq, c),
        "findAndModify" | "findandmodify" => crud::find_and_modify(st, db, body, c),
        "find" => crud::find(st, db, body),
        "count" => crud::count(st, db, body),
        "aggregate" => return aggregate(st, db, body),
        "killCursors" => cursors::kill_cursors(st, body),
        "listCollections" => crud::list_collections(st, db, body),
        "listDatabases" => crud::list_databases(st, body),
        "create" => ddl::create(st, db, body),
        "drop" => crud::drop(st, db, body),
        "dropDatabase" => crud::drop_database(st, db),
        "renameCollection" => crud::rename_collection(st, body),
        "createIndexes" => ddl::create_indexes(st, db, body),
        "listIndexes" => ddl::list_indexes(st, db, body),
        "dropIndexes" => ddl::drop_indexes(st, db, body),
        "collMod" => ddl::coll_mod(st, db, body),
        "commitTransaction" => txn::commit(st, body),
        "abortTransaction" => txn::abort(st, body),
        "configureFailPoint" => failpoint::configure(st, body),
        "simTruncateOplog" => {
            st.oplog.truncate();
            Ok(doc! {"floor": st.oplog.floor as i64})
        }
        "simSetOplogWindow" => {
            st.oplog.window = body
                .get("entries")
                .and_then(crate::order::as_f64)
                .map(|n| n as usize);
            st.oplog.enforce_window();
            Ok(doc! {"floor": st.oplog.floor as i64})
        }
        "simStallGetMore" => {
            if body.get_bool("on").unwrap_or(true) {
                st.stalled.insert("getMore".into());
            } else {
                st.stalled.remove("getMore");
                shared.notify();
            }
            Ok(Document::new())
        }
        "simStepDown" => {
            let secs = body
                .get("secs")
                .and_then(crate::order::as_f64)
                .unwrap_or(1.0);
            crate::step_down_locked(
                shared,
                st,
                Duration::from_secs_f64(secs.clamp(0.0, 86_400.0)),
            );
            Ok(Document::new())
        }
        other => Err(CmdError::new(59, format!("no such command: '{other}'"))),
    };
    if let (Some(k), Ok(reply)) = (retry_key, &r) {
        st.retry_cache.insert(k, reply.clone());
    }
    r.map(Body::Doc)
}

fn aggregate(st: &mut State, db: &str, body: &Document) -> Result<Body, CmdError> {
    let pipeline = body
        .get_array("pipeline")
        .map_err(|_| CmdError::bad_value("aggregate needs a pipeline"))?;
    if !is_stream_pipeline(body) {
        if !matches!(body.get("aggregate"), Some(Bson::String(_))) {
            return Err(CmdError::new(
                40324,
                "database-level aggregate supports only $changeStream in the simulator",
            ));
        }
        return crud::aggregate(st, db, body, pipeline).map(Body::Doc);
    }
    let target = body.get("aggregate").cloned().unwrap_or(Bson::Null);
    let mut cur = streams::open(st, db, &target, pipeline)?;
    let batch = body
        .get_document("cursor")
        .ok()
        .and_then(|c| c.get("batchSize"))
        .and_then(crate::order::as_f64)
        .map(|n| n as usize)
        .unwrap_or(101);
    let ns = match &cur.coll {
        Some(c) => format!("{db}.{c}"),
        None => format!("{db}.$cmd.aggregate"),
    };
    let events = streams::scan(st, &mut cur, batch, cursors::MAX_BATCH_BYTES)?;
    let pbrt = streams::pbrt(st, &cur);
    let id = if cur.invalidated {
        0
    } else {
        let id = st.new_cursor_id();
        st.cursors.insert(
            id,
            Cursor::Stream {
                ns: ns.clone(),
                cur,
            },
        );
        id
    };
    Ok(Body::Stream {
        id,
        ns,
        batch: events,
        first: true,
        pbrt,
    })
}
