//! Sessions: multi-document transactions (writes applied in place with an undo log; their
//! oplog entries are published at commit under ONE cluster time) and retryable-write dedup.

use bson::{Bson, Document};

use crate::order::Key;
use crate::state::{CmdError, State, Txn, TxnCtx, TxnState};

/// The session id bytes of `lsid.id`.
pub fn session_key(cmd: &Document) -> Option<Vec<u8>> {
    match cmd.get_document("lsid").ok()?.get("id")? {
        Bson::Binary(b) => Some(b.bytes.clone()),
        other => Some(other.to_string().into_bytes()),
    }
}

pub fn txn_number(cmd: &Document) -> Option<i64> {
    match cmd.get("txnNumber") {
        Some(Bson::Int64(n)) => Some(*n),
        Some(Bson::Int32(n)) => Some(*n as i64),
        _ => None,
    }
}

fn no_such(n: i64) -> CmdError {
    CmdError::new(
        251,
        format!("Transaction with {{ txnNumber: {n} }} has been aborted."),
    )
    .label("TransientTransactionError")
}

/// The transaction context of a command with `autocommit: false` (opening it on
/// `startTransaction: true`).
pub fn context(st: &mut State, cmd: &Document) -> Result<Option<TxnCtx>, CmdError> {
    if cmd.get_bool("autocommit").ok() != Some(false) {
        return Ok(None);
    }
    let (Some(session), Some(number)) = (session_key(cmd), txn_number(cmd)) else {
        return Err(CmdError::bad_value(
            "autocommit:false needs lsid and txnNumber",
        ));
    };
    if cmd.get_bool("startTransaction").unwrap_or(false) {
        let lsid = cmd.get_document("lsid").cloned().unwrap_or_default();
        st.txns.insert(
            session.clone(),
            Txn {
                number,
                lsid,
                state: TxnState::Active,
                pending: vec![],
                undo: vec![],
            },
        );
    } else {
        match st.txns.get(&session) {
            Some(t) if t.number == number && t.state == TxnState::Active => {}
            Some(t) if t.number == number && t.state == TxnState::Committed => {
                return Err(CmdError::new(256, "Transaction has been committed"));
            }
            _ => return Err(no_such(number)),
        }
    }
    Ok(Some(TxnCtx { session, number }))
}

/// `commitTransaction`: publish the pending entries with one shared cluster time.
pub fn commit(st: &mut State, cmd: &Document) -> Result<Document, CmdError> {
    let (Some(session), Some(number)) = (session_key(cmd), txn_number(cmd)) else {
        return Err(CmdError::bad_value(
            "commitTransaction needs lsid and txnNumber",
        ));
    };
    let Some(t) = st.txns.get_mut(&session) else {
        return Err(no_such(number));
    };
    if t.number != number {
        return Err(no_such(number));
    }
    match t.state {
        TxnState::Committed => return Ok(Document::new()),
        TxnState::Aborted => return Err(no_such(number)),
        TxnState::Active => {}
    }
    t.state = TxnState::Committed;
    let pending = std::mem::take(&mut t.pending);
    let lsid = t.lsid.clone();
    t.undo.clear();
    if pending.is_empty() {
        return Ok(Document::new());
    }
    let ts = st.tick();
    for mut e in pending {
        e.ts = ts;
        e.txn = Some((lsid.clone(), number));
        st.oplog.append(e);
    }
    Ok(Document::new())
}

/// `abortTransaction`: undo the transaction's writes.
pub fn abort(st: &mut State, cmd: &Document) -> Result<Document, CmdError> {
    let (Some(session), Some(number)) = (session_key(cmd), txn_number(cmd)) else {
        return Err(CmdError::bad_value(
            "abortTransaction needs lsid and txnNumber",
        ));
    };
    let Some(t) = st.txns.get_mut(&session) else {
        return Err(no_such(number));
    };
    if t.number != number || t.state != TxnState::Active {
        return Err(no_such(number));
    }
    t.state = TxnState::Aborted;
    t.pending.clear();
    let undo = std::mem::take(&mut t.undo);
    for u in undo.into_iter().rev() {
        let c = st.coll_mut(&u.db, &u.coll);
        match u.before {
            Some(d) => {
                c.docs.insert(Key(u.key), d);
            }
            None => {
                c.docs.remove(&Key(u.key));
            }
        }
    }
    Ok(Document::new())
}
