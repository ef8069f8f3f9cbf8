//! CRUD and namespace commands: insert, update, delete, findAndModify, find, count, plain
//! aggregate, listCollections, listDatabases, drop, dropDatabase, renameCollection (the
//! other DDL is in `ddl`).

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::ops::Bound;

use bson::{Bson, Document, doc, oid::ObjectId};

use crate::cursors::{Cursor, cursor_reply, take_batch};
use crate::filter;
use crate::oplog::{Entry, Op};
use crate::order::{Key, as_f64, cmp_bson};
use crate::state::{CmdError, State, TxnCtx, Undo};
use crate::update::{self, UpdateError};

/// The collection named by a command's `field`: a non-empty string, else error 73.
pub(crate) fn coll_name<'a>(cmd: &'a Document, field: &str) -> Result<&'a str, CmdError> {
    match cmd.get(field) {
        Some(Bson::String(s)) if !s.is_empty() => Ok(s),
        _ => Err(CmdError::new(
            73,
            format!("'{field}' must be a collection name"),
        )),
    }
}

fn upd_err(e: UpdateError) -> CmdError {
    CmdError::new(e.code, e.msg)
}

fn flt_err(e: filter::FilterError) -> CmdError {
    CmdError::bad_value(e.0)
}

fn write_error(index: usize, e: &CmdError) -> Bson {
    Bson::Document(doc! {"index": index as i32, "code": e.code, "errmsg": e.msg.clone()})
}

/// Put `_id` first (generating an ObjectId if absent).
fn with_id_first(d: Document) -> Document {
    if d.keys().next().map(|k| k == "_id").unwrap_or(false) {
        return d;
    }
    let mut out = Document::new();
    out.insert(
        "_id",
        d.get("_id")
            .cloned()
            .unwrap_or_else(|| Bson::ObjectId(ObjectId::new())),
    );
    for (k, v) in d {
        if k != "_id" {
            out.insert(k, v);
        }
    }
    out
}

fn dup_key(db: &str, coll: &str, id: &Bson) -> CmdError {
    CmdError::new(
        11000,
        format!(
            "E11000 duplicate key error collection: {db}.{coll} index: _id_ dup key: {{ _id: {id} }}"
        ),
    )
}

/// Insert one document through the oplog (shared by insert, upsert and `Sim::insert_raw`).
pub fn insert_one(
    st: &mut State,
    db: &str,
    coll: &str,
    d: Document,
    txn: Option<&TxnCtx>,
) -> Result<Bson, CmdError> {
    let d = with_id_first(d);
    let id = d.get("_id").cloned().unwrap_or(Bson::Null);
    if matches!(id, Bson::Array(_)) {
        return Err(CmdError::new(53, "The '_id' value cannot be of type array"));
    }
    let c = st.coll_mut(db, coll);
    let key = Key(id.clone());
    if c.docs.contains_key(&key) {
        return Err(dup_key(db, coll, &id));
    }
    let mut e = Entry::new(Op::Insert, db, coll);
    e.key = Some(id.clone());
    e.doc = Some(crate::oplog::encode(&d));
    c.docs.insert(key, d);
    let undo = txn.map(|_| Undo {
        db: db.into(),
        coll: coll.into(),
        key: id.clone(),
        before: None,
    });
    st.record(e, txn, undo);
    Ok(id)
}

/// A write command's statements: the OP_MSG kind-1 sequence when the driver sent one, else
/// the embedded array `field`.
fn statements(
    cmd: &Document,
    seq: Option<Vec<Document>>,
    command: &str,
    field: &str,
) -> Result<Vec<Document>, CmdError> {
    if let Some(docs) = seq {
        return Ok(docs);
    }
    let arr = cmd
        .get_array(field)
        .map_err(|_| CmdError::bad_value(format!("{command} needs '{field}'")))?;
    Ok(arr
        .iter()
        .filter_map(|b| b.as_document().cloned())
        .collect())
}

pub fn insert(
    st: &mut State,
    db: &str,
    cmd: &Document,
    seq: Option<Vec<Document>>,
    txn: Option<&TxnCtx>,
) -> Result<Document, CmdError> {
    let coll = coll_name(cmd, "insert")?.to_string();
    let docs = statements(cmd, seq, "insert", "documents")?;
    let ordered = cmd.get_bool("ordered").unwrap_or(true);
    st.coll_mut(db, &coll);
    let mut n = 0;
    let mut errors = Vec::new();
    for (i, d) in docs.into_iter().enumerate() {
        match insert_one(st, db, &coll, d, txn) {
            Ok(_) => n += 1,
            Err(e) => {
                errors.push(write_error(i, &e));
                if ordered {
                    break;
                }
            }
        }
    }
    let mut r = doc! {"n": n};
    if !errors.is_empty() {
        r.insert("writeErrors", errors);
    }
    Ok(r)
}

/// Keys of documents matching `q`, in `_id` order (fast path for `_id` equality).
fn matching_keys(
    st: &State,
    db: &str,
    coll: &str,
    q: &Document,
    first_only: bool,
) -> Result<Vec<Key>, CmdError> {
    let Some(c) = st.coll(db, coll) else {
        return Ok(vec![]);
    };
    if let Some(id) = q.get("_id") {
        let plain =
            !matches!(id, Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')));
        if plain && !matches!(id, Bson::Array(_)) {
            return Ok(match c.docs.get_key_value(&Key(id.clone())) {
                Some((k, d)) if filter::matches(d, q).map_err(flt_err)? => vec![k.clone()],
                _ => vec![],
            });
        }
    }
    let mut out = Vec::new();
    for (k, d) in &c.docs {
        if filter::matches(d, q).map_err(flt_err)? {
            out.push(k.clone());
            if first_only {
                break;
            }
        }
    }
    Ok(out)
}

/// Apply update `u` to the stored document at `key`; returns (modified, post-image).
fn update_key(
    st: &mut State,
    db: &str,
    coll: &str,
    key: &Key,
    u: &Bson,
    txn: Option<&TxnCtx>,
) -> Result<(bool, Document), CmdError> {
    let Some(before) = st.coll(db, coll).and_then(|c| c.docs.get(key)).cloned() else {
        return Ok((false, Document::new()));
    };
    let (after, op, desc) = match u {
        Bson::Document(u) if update::is_replacement(u) => (
            update::replace(&before, u).map_err(upd_err)?,
            Op::Replace,
            None,
        ),
        Bson::Document(u) => {
            let mut after = before.clone();
            let desc = update::apply_ops(&mut after, u, false).map_err(upd_err)?;
            let desc = desc.to_doc(&after);
            (after, Op::Update, Some(desc))
        }
        Bson::Array(stages) => {
            let after = crate::diff::pipeline_update(&before, stages)?;
            let desc = crate::diff::describe(&before, &after);
            (after, Op::Update, Some(desc))
        }
        _ => return Err(CmdError::new(9, "update must be a document or a pipeline")),
    };
    if after == before {
        return Ok((false, after));
    }
    st.coll_mut(db, coll)
        .docs
        .insert(key.clone(), after.clone());
    let mut e = Entry::new(op, db, coll);
    e.key = Some(key.0.clone());
    e.upd = desc;
    e.doc = Some(crate::oplog::encode(&after));
    e.pre = Some(crate::oplog::encode(&before));
    let undo = txn.map(|_| Undo {
        db: db.into(),
        coll: coll.into(),
        key: key.0.clone(),
        before: Some(before),
    });
    st.record(e, txn, undo);
    Ok((true, after))
}

/// Build and insert an upserted document; returns it.
fn upsert_doc(
    st: &mut State,
    db: &str,
    coll: &str,
    q: &Document,
    u: &Bson,
    txn: Option<&TxnCtx>,
) -> Result<Document, CmdError> {
    let seed = update::upsert_seed(q);
    let doc = match u {
        Bson::Document(u) if update::is_replacement(u) => {
            let mut d = u.clone();
            if !d.contains_key("_id")
                && let Some(id) = seed.get("_id")
            {
                d.insert("_id", id.clone());
            }
            d
        }
        Bson::Document(u) => {
            let mut d = seed;
            update::apply_ops(&mut d, u, true).map_err(upd_err)?;
            d
        }
        _ => {
            return Err(CmdError::new(
                9,
                "pipeline-style updates are not supported by the simulator",
            ));
        }
    };
    let doc = with_id_first(doc);
    insert_one(st, db, coll, doc.clone(), txn)?;
    Ok(doc)
}

pub fn update(
    st: &mut State,
    db: &str,
    cmd: &Document,
    seq: Option<Vec<Document>>,
    txn: Option<&TxnCtx>,
) -> Result<Document, CmdError> {
    let coll = coll_name(cmd, "update")?.to_string();
    let stmts = statements(cmd, seq, "update", "updates")?;
    let ordered = cmd.get_bool("ordered").unwrap_or(true);
    let (mut n, mut modified) = (0i32, 0i32);
    let mut upserted = Vec::new();
    let mut errors = Vec::new();
    for (i, s) in stmts.iter().enumerate() {
        let res: Result<(), CmdError> = (|| {
            let q = s.get_document("q").cloned().unwrap_or_default();
            let u = s
                .get("u")
                .cloned()
                .unwrap_or(Bson::Document(Document::new()));
            let multi = s.get_bool("multi").unwrap_or(false);
            if multi
                && matches!(&u, Bson::Document(d) if update::is_replacement(d) && !d.is_empty())
            {
                return Err(CmdError::new(
                    9,
                    "multi update is not supported for replacement-style update",
                ));
            }
            let keys = matching_keys(st, db, &coll, &q, !multi)?;
            if keys.is_empty() {
                if s.get_bool("upsert").unwrap_or(false) {
                    let d = upsert_doc(st, db, &coll, &q, &u, txn)?;
                    n += 1;
                    upserted.push(Bson::Document(doc! {"index": i as i32, "_id": d.get("_id").cloned().unwrap_or(Bson::Null)}));
                }
                return Ok(());
            }
            for k in keys {
                n += 1;
                if update_key(st, db, &coll, &k, &u, txn)?.0 {
                    modified += 1;
                }
            }
            Ok(())
        })();
        if let Err(e) = res {
            errors.push(write_error(i, &e));
            if ordered {
                break;
            }
        }
    }
    let mut r = doc! {"n": n, "nModified": modified};
    if !upserted.is_empty() {
        r.insert("upserted", upserted);
    }
    if !errors.is_empty() {
        r.insert("writeErrors", errors);
    }
    Ok(r)
}

fn delete_key(
    st: &mut State,
    db: &str,
    coll: &str,
    key: &Key,
    txn: Option<&TxnCtx>,
) -> Option<Document> {
    let before = st.coll_mut(db, coll).docs.remove(key)?;
    let mut e = Entry::new(Op::Delete, db, coll);
    e.key = Some(key.0.clone());
    e.pre = Some(crate::oplog::encode(&before));
    let undo = txn.map(|_| Undo {
        db: db.into(),
        coll: coll.into(),
        key: key.0.clone(),
        before: Some(before.clone()),
    });
    st.record(e, txn, undo);
    Some(before)
}

pub fn delete(
    st: &mut State,
    db: &str,
    cmd: &Document,
    seq: Option<Vec<Document>>,
    txn: Option<&TxnCtx>,
) -> Result<Document, CmdError> {
    let coll = coll_name(cmd, "delete")?.to_string();
    let stmts = statements(cmd, seq, "delete", "deletes")?;
    let ordered = cmd.get_bool("ordered").unwrap_or(true);
    let mut n = 0i32;
    let mut errors = Vec::new();
    for (i, s) in stmts.iter().enumerate() {
        let q = s.get_document("q").cloned().unwrap_or_default();
        let one = s.get("limit").and_then(as_f64).unwrap_or(0.0) == 1.0;
        match matching_keys(st, db, &coll, &q, one) {
            Ok(keys) => {
                for k in keys {
                    if delete_key(st, db, &coll, &k, txn).is_some() {
                        n += 1;
                    }
                }
            }
            Err(e) => {
                errors.push(write_error(i, &e));
                if ordered {
                    break;
                }
            }
        }
    }
    let mut r = doc! {"n": n};
    if !errors.is_empty() {
        r.insert("writeErrors", errors);
    }
    Ok(r)
}

/// Sort documents by a sort spec in BSON order (missing fields sort as null).
pub fn sort_docs(docs: &mut [Document], spec: &Document) {
    let keys: Vec<(String, bool)> = spec
        .iter()
        .map(|(k, v)| (k.clone(), as_f64(v).unwrap_or(1.0) >= 0.0))
        .collect();
    docs.sort_by(|a, b| {
        for (path, asc) in &keys {
            let va = update::get_path(a, path).cloned().unwrap_or(Bson::Null);
            let vb = update::get_path(b, path).cloned().unwrap_or(Bson::Null);
            let o = cmp_bson(&va, &vb);
            if o != Ordering::Equal {
                return if *asc { o } else { o.reverse() };
            }
        }
        Ordering::Equal
    });
}

fn truthy(v: &Bson) -> bool {
    match v {
        Bson::Boolean(b) => *b,
        Bson::Null => false,
        other => as_f64(other).map(|n| n != 0.0).unwrap_or(true),
    }
}

/// Apply an inclusion or exclusion projection (also `"$path"` renames in inclusion mode).
pub fn project(doc: &Document, spec: &Document) -> Document {
    let inclusion = spec.iter().any(|(k, v)| k != "_id" && truthy(v));
    if inclusion {
        let mut out = Document::new();
        let keep_id = spec.get("_id").map(truthy).unwrap_or(true);
        if keep_id && let Some(id) = doc.get("_id") {
            out.insert("_id", id.clone());
        }
        for (k, v) in spec {
            if k == "_id" {
                continue;
            }
            let val = match v {
                Bson::String(s) if s.starts_with('$') => update::get_path(doc, &s[1..]).cloned(),
                v if truthy(v) => update::get_path(doc, k).cloned(),
                _ => None,
            };
            if let Some(val) = val {
                set_nested(&mut out, k, val);
            }
        }
        out
    } else {
        let mut out = doc.clone();
        for (k, v) in spec {
            if !truthy(v) {
                unset_nested(&mut out, k);
            }
        }
        out
    }
}

fn set_nested(d: &mut Document, path: &str, v: Bson) {
    match path.split_once('.') {
        None => {
            d.insert(path, v);
        }
        Some((h, rest)) => {
            if !matches!(d.get(h), Some(Bson::Document(_))) {
                d.insert(h, Document::new());
            }
            if let Some(Bson::Document(sub)) = d.get_mut(h) {
                set_nested(sub, rest, v);
            }
        }
    }
}

fn unset_nested(d: &mut Document, path: &str) {
    match path.split_once('.') {
        None => {
            d.remove(path);
        }
        Some((h, rest)) => {
            if let Some(Bson::Document(sub)) = d.get_mut(h) {
                unset_nested(sub, rest);
            }
        }
    }
}

/// Documents matching `filter`, honouring sort/skip/limit; fast `_id` ranges in `_id` order.
pub fn query(
    st: &State,
    db: &str,
    coll: &str,
    flt: &Document,
    sort: Option<&Document>,
    skip: usize,
    limit: usize,
) -> Result<Vec<Document>, CmdError> {
    let Some(c) = st.coll(db, coll) else {
        return Ok(vec![]);
    };
    let id_order = match sort {
        None => true,
        Some(s) => {
            s.is_empty() || (s.len() == 1 && s.get("_id").and_then(as_f64).is_some_and(|n| n > 0.0))
        }
    };
    let mut lower = Bound::Unbounded;
    if let Some(Bson::Document(ops)) = flt.get("_id") {
        if let Some(v) = ops.get("$gte").or_else(|| ops.get("$eq")) {
            lower = Bound::Included(Key(v.clone()));
        } else if let Some(v) = ops.get("$gt") {
            lower = Bound::Excluded(Key(v.clone()));
        }
    }
    let mut out = Vec::new();
    let want = if id_order {
        skip.saturating_add(limit)
    } else {
        usize::MAX
    };
    for (_, d) in c.docs.range((lower, Bound::Unbounded)) {
        if filter::matches(d, flt).map_err(flt_err)? {
            out.push(d.clone());
            if out.len() >= want {
                break;
            }
        }
    }
    if !id_order && let Some(s) = sort {
        sort_docs(&mut out, s);
    }
    let out: Vec<Document> = out.into_iter().skip(skip).take(limit).collect();
    Ok(out)
}

fn usize_of(v: Option<&Bson>) -> Option<i64> {
    v.and_then(as_f64).map(|n| n as i64)
}

/// Register the rest of a result set as a cursor; reply with the first batch.
pub fn open_cursor(
    st: &mut State,
    ns: String,
    mut docs: VecDeque<Document>,
    batch: usize,
    single: bool,
) -> Document {
    let first = take_batch(&mut docs, batch);
    let id = if docs.is_empty() || single {
        0
    } else {
        let id = st.new_cursor_id();
        st.cursors.insert(
            id,
            Cursor::Find {
                ns: ns.clone(),
                docs,
            },
        );
        id
    };
    cursor_reply(id, &ns, first, true, None)
}

pub fn find(st: &mut State, db: &str, cmd: &Document) -> Result<Document, CmdError> {
    let coll = coll_name(cmd, "find")?.to_string();
    let flt = cmd.get_document("filter").cloned().unwrap_or_default();
    let sort = cmd.get_document("sort").ok().cloned();
    let skip = usize_of(cmd.get("skip")).unwrap_or(0).max(0) as usize;
    let lim = usize_of(cmd.get("limit")).unwrap_or(0);
    let mut single = cmd.get_bool("singleBatch").unwrap_or(false);
    if lim < 0 {
        single = true;
    }
    let limit = if lim == 0 {
        usize::MAX
    } else {
        lim.unsigned_abs() as usize
    };
    let mut docs = query(st, db, &coll, &flt, sort.as_ref(), skip, limit)?;
    if let Ok(p) = cmd.get_document("projection")
        && !p.is_empty()
    {
        docs = docs.iter().map(|d| project(d, p)).collect();
    }
    let batch = usize_of(cmd.get("batchSize"))
        .map(|b| b.max(0) as usize)
        .unwrap_or(101);
    let batch = if cmd.contains_key("batchSize") && batch == 0 {
        0
    } else {
        batch
    };
    Ok(open_cursor(
        st,
        format!("{db}.{coll}"),
        docs.into(),
        batch,
        single,
    ))
}

pub fn count(st: &State, db: &str, cmd: &Document) -> Result<Document, CmdError> {
    let coll = coll_name(cmd, "count")?;
    let flt = cmd.get_document("query").cloned().unwrap_or_default();
    let skip = usize_of(cmd.get("skip")).unwrap_or(0).max(0) as usize;
    let lim = usize_of(cmd.get("limit")).unwrap_or(0);
    let limit = if lim == 0 {
        usize::MAX
    } else {
        lim.unsigned_abs() as usize
    };
    let n = if flt.is_empty() {
        st.coll(db, coll)
            .map(|c| c.docs.len())
            .unwrap_or(0)
            .saturating_sub(skip)
            .min(limit)
    } else {
        query(st, db, coll, &flt, None, skip, limit)?.len()
    };
    Ok(doc! {"n": n as i32})
}

/// A plain (non-change-stream) aggregate: $match, $sort, $skip, $limit, $project, $count,
/// and `$group` with a constant `_id` and `$sum` accumulators (enough for countDocuments).
pub fn aggregate(
    st: &mut State,
    db: &str,
    cmd: &Document,
    pipeline: &[Bson],
) -> Result<Document, CmdError> {
    let coll = coll_name(cmd, "aggregate")?.to_string();
    let mut docs: Vec<Document> = st
        .coll(db, &coll)
        .map(|c| c.docs.values().cloned().collect())
        .unwrap_or_default();
    for stage in pipeline {
        let Bson::Document(stage) = stage else {
            return Err(CmdError::new(14, "pipeline stages must be objects"));
        };
        let Some((name, arg)) = stage.iter().next() else {
            continue;
        };
        match (name.as_str(), arg) {
            ("$match", Bson::Document(f)) => {
                let mut keep = Vec::new();
                for d in docs {
                    if filter::matches(&d, f).map_err(flt_err)? {
                        keep.push(d);
                    }
                }
                docs = keep;
            }
            ("$sort", Bson::Document(s)) => sort_docs(&mut docs, s),
            ("$skip", n) => {
                let n = as_f64(n).unwrap_or(0.0) as usize;
                docs = docs.into_iter().skip(n).collect();
            }
            ("$limit", n) => docs.truncate(as_f64(n).unwrap_or(0.0) as usize),
            ("$project", Bson::Document(p)) => docs = docs.iter().map(|d| project(d, p)).collect(),
            ("$count", Bson::String(f)) => {
                let n = docs.len() as i32;
                docs = if n > 0 {
                    vec![doc! {f.clone(): n}]
                } else {
                    vec![]
                };
            }
            ("$group", Bson::Document(g)) => {
                let id = g.get("_id").cloned().unwrap_or(Bson::Null);
                if matches!(&id, Bson::String(s) if s.starts_with('$')) {
                    return Err(CmdError::new(
                        40324,
                        "$group by a field is not supported by the simulator",
                    ));
                }
                if docs.is_empty() {
                    continue;
                }
                let mut out = doc! {"_id": id};
                for (k, acc) in g.iter().filter(|(k, _)| *k != "_id") {
                    let Some(Bson::Document(acc)) = Some(acc) else {
                        continue;
                    };
                    let Some(arg) = acc.get("$sum") else {
                        return Err(CmdError::new(
                            40324,
                            "only $sum is supported in $group by the simulator",
                        ));
                    };
                    let total: f64 = match arg {
                        Bson::String(p) if p.starts_with('$') => docs
                            .iter()
                            .filter_map(|d| update::get_path(d, &p[1..]).and_then(as_f64))
                            .sum(),
                        other => as_f64(other).unwrap_or(0.0) * docs.len() as f64,
                    };
                    let v = if total.fract() == 0.0 && total.abs() < i32::MAX as f64 {
                        Bson::Int32(total as i32)
                    } else {
                        Bson::Double(total)
                    };
                    out.insert(k.clone(), v);
                }
                docs = vec![out];
            }
            ("$out", target) => {
                out(st, db, target, std::mem::take(&mut docs))?;
            }
            (other, _) => {
                return Err(CmdError::new(
                    40324,
                    format!("Unrecognized pipeline stage name: '{other}'"),
                ));
            }
        }
    }
    let batch = cmd
        .get_document("cursor")
        .ok()
        .and_then(|c| usize_of(c.get("batchSize")))
        .map(|b| b.max(0) as usize)
        .unwrap_or(101);
    Ok(open_cursor(
        st,
        format!("{db}.{coll}"),
        docs.into(),
        batch,
        false,
    ))
}

pub fn find_and_modify(
    st: &mut State,
    db: &str,
    cmd: &Document,
    txn: Option<&TxnCtx>,
) -> Result<Document, CmdError> {
    let coll = coll_name(cmd, "findAndModify")
        .or_else(|_| coll_name(cmd, "findandmodify"))?
        .to_string();
    let q = cmd.get_document("query").cloned().unwrap_or_default();
    let sort = cmd.get_document("sort").ok().cloned();
    let remove = cmd.get_bool("remove").unwrap_or(false);
    let new = cmd.get_bool("new").unwrap_or(false);
    let upsert = cmd.get_bool("upsert").unwrap_or(false);
    let u = cmd.get("update").cloned();
    let fields = cmd.get_document("fields").ok().cloned();
    let target = query(st, db, &coll, &q, sort.as_ref(), 0, 1)?
        .into_iter()
        .next();
    let out = |v: Option<Document>| -> Bson {
        match (v, &fields) {
            (Some(d), Some(f)) if !f.is_empty() => Bson::Document(project(&d, f)),
            (Some(d), _) => Bson::Document(d),
            (None, _) => Bson::Null,
        }
    };
    if remove {
        let before = target.and_then(|d| {
            let key = Key(d.get("_id").cloned().unwrap_or(Bson::Null));
            delete_key(st, db, &coll, &key, txn)
        });
        let n = before.is_some() as i32;
        return Ok(doc! {"lastErrorObject": {"n": n}, "value": out(before)});
    }
    let Some(u) = u else {
        return Err(CmdError::new(
            9,
            "Either an update or remove=true must be specified",
        ));
    };
    match target {
        Some(before) => {
            let key = Key(before.get("_id").cloned().unwrap_or(Bson::Null));
            let (_, after) = update_key(st, db, &coll, &key, &u, txn)?;
            let after = if after.is_empty() {
                before.clone()
            } else {
                after
            };
            Ok(doc! {
                "lastErrorObject": {"n": 1, "updatedExisting": true},
                "value": out(Some(if new { after } else { before })),
            })
        }
        None if upsert => {
            let d = upsert_doc(st, db, &coll, &q, &u, txn)?;
            let id = d.get("_id").cloned().unwrap_or(Bson::Null);
            Ok(doc! {
                "lastErrorObject": {"n": 1, "updatedExisting": false, "upserted": id},
                "value": out(if new { Some(d) } else { None }),
            })
        }
        None => {
            Ok(doc! {"lastErrorObject": {"n": 0, "updatedExisting": false}, "value": Bson::Null})
        }
    }
}

pub fn list_collections(st: &mut State, db: &str, cmd: &Document) -> Result<Document, CmdError> {
    let flt = cmd.get_document("filter").cloned().unwrap_or_default();
    let name_only = cmd.get_bool("nameOnly").unwrap_or(false);
    let mut out = VecDeque::new();
    if let Some(colls) = st.dbs.get(db) {
        for (name, c) in colls {
            let full = doc! {
                "name": name, "type": "collection", "options": {},
                "info": {"readOnly": false, "uuid": c.uuid.clone()},
                "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"},
            };
            if filter::matches(&full, &flt).map_err(flt_err)? {
                out.push_back(if name_only {
                    doc! {"name": name, "type": "collection"}
                } else {
                    full
                });
            }
        }
    }
    let batch = cmd
        .get_document("cursor")
        .ok()
        .and_then(|c| usize_of(c.get("batchSize")))
        .map(|b| b as usize)
        .unwrap_or(usize::MAX);
    Ok(open_cursor(
        st,
        format!("{db}.$cmd.listCollections"),
        out,
        batch,
        false,
    ))
}

pub fn list_databases(st: &State, cmd: &Document) -> Result<Document, CmdError> {
    let name_only = cmd.get_bool("nameOnly").unwrap_or(false);
    let flt = cmd.get_document("filter").cloned().unwrap_or_default();
    let mut dbs = Vec::new();
    let mut total = 0i64;
    for (name, colls) in &st.dbs {
        let size: i64 = colls
            .values()
            .flat_map(|c| c.docs.values())
            .map(|d| crate::cursors::approx_size(d) as i64)
            .sum();
        total += size;
        let full = doc! {"name": name, "sizeOnDisk": size, "empty": colls.values().all(|c| c.docs.is_empty())};
        if filter::matches(&full, &flt).map_err(flt_err)? {
            dbs.push(Bson::Document(if name_only {
                doc! {"name": name}
            } else {
                full
            }));
        }
    }
    let mut r = doc! {"databases": dbs};
    if !name_only {
        r.insert("totalSize", total);
        r.insert("totalSizeMb", total / (1024 * 1024));
    }
    Ok(r)
}

/// Drop a collection, emitting a `drop` entry. Returns false when it did not exist.
pub fn drop_coll(st: &mut State, db: &str, coll: &str) -> bool {
    let existed = st.dbs.get_mut(db).and_then(|d| d.remove(coll)).is_some();
    if existed {
        st.record(Entry::new(Op::Drop, db, coll), None, None);
    }
    existed
}

pub fn drop(st: &mut State, db: &str, cmd: &Document) -> Result<Document, CmdError> {
    let coll = coll_name(cmd, "drop")?.to_string();
    if !drop_coll(st, db, &coll) {
        return Err(CmdError::new(26, "ns not found"));
    }
    Ok(doc! {"ns": format!("{db}.{coll}"), "nIndexesWas": 1})
}

pub fn drop_database(st: &mut State, db: &str) -> Result<Document, CmdError> {
    let colls: Vec<String> = st
        .dbs
        .get(db)
        .map(|d| d.keys().cloned().collect())
        .unwrap_or_default();
    let existed = st.dbs.contains_key(db);
    for c in &colls {
        drop_coll(st, db, c);
    }
    if existed {
        st.dbs.remove(db);
        st.record(Entry::new(Op::DropDatabase, db, ""), None, None);
    }
    Ok(doc! {"dropped": db})
}

pub fn rename_collection(st: &mut State, cmd: &Document) -> Result<Document, CmdError> {
    let from = cmd
        .get_str("renameCollection")
        .map_err(|_| CmdError::bad_value("renameCollection needs a namespace"))?;
    let to = cmd
        .get_str("to")
        .map_err(|_| CmdError::bad_value("renameCollection needs 'to'"))?;
    let split = |ns: &str| {
        ns.split_once('.')
            .map(|(a, b)| (a.to_string(), b.to_string()))
    };
    let ((fdb, fc), (tdb, tc)) = match (split(from), split(to)) {
        (Some(a), Some(b)) => (a, b),
        _ => return Err(CmdError::new(73, "invalid namespace")),
    };
    let drop_target = cmd.get_bool("dropTarget").unwrap_or(false);
    rename(st, (&fdb, &fc), (&tdb, &tc), drop_target)?;
    Ok(Document::new())
}

/// Rename `from` onto `to`, emitting one `rename` entry. With `drop_target` an existing target
/// is replaced: as on a server, its drop is part of the rename (no `drop` event of its own).
fn rename(
    st: &mut State,
    (fdb, fc): (&str, &str),
    (tdb, tc): (&str, &str),
    drop_target: bool,
) -> Result<(), CmdError> {
    if st.coll(fdb, fc).is_none() {
        return Err(CmdError::new(26, "source namespace does not exist"));
    }
    // (the replaced collection's UUID: `operationDescription.dropTarget` of expanded events)
    let mut replaced = None;
    if let Some(target) = st.coll(tdb, tc) {
        if !drop_target {
            return Err(CmdError::new(48, "target namespace exists"));
        }
        replaced = Some(target.uuid.clone());
        if let Some(d) = st.dbs.get_mut(tdb) {
            d.remove(tc);
        }
    }
    let Some(c) = st.dbs.get_mut(fdb).and_then(|d| d.remove(fc)) else {
        return Err(CmdError::new(26, "source namespace does not exist"));
    };
    st.dbs
        .entry(tdb.to_string())
        .or_default()
        .insert(tc.to_string(), c);
    let mut e = Entry::new(Op::Rename, fdb, fc);
    e.to = Some((tdb.to_string(), tc.to_string()));
    if let Some(uuid) = replaced {
        e.desc = Some(doc! {"to": {"db": tdb, "coll": tc}, "dropTarget": uuid});
    }
    st.record(e, None, None);
    Ok(())
}

/// `$out`, as a server runs it: the results are inserted into a temporary collection
/// `tmp.agg_out.<uuid>` of the target's database (insert events of that namespace), which is
/// then renamed onto the target with `dropTarget` (one `rename` event).
fn out(st: &mut State, db: &str, target: &Bson, docs: Vec<Document>) -> Result<(), CmdError> {
    let (tdb, tc) = match target {
        Bson::String(c) => (db.to_string(), c.clone()),
        Bson::Document(d) => (
            d.get_str("db").unwrap_or(db).to_string(),
            d.get_str("coll")
                .map_err(|_| CmdError::bad_value("$out needs 'coll'"))?
                .to_string(),
        ),
        _ => return Err(CmdError::bad_value("$out needs a collection name")),
    };
    let tmp = format!("tmp.agg_out.{}", bson::Uuid::new());
    st.coll_mut(&tdb, &tmp);
    for d in docs {
        insert_one(st, &tdb, &tmp, d, None)?;
    }
    rename(st, (&tdb, &tmp), (&tdb, &tc), true)
}
