//! Collection DDL with oplog entries (the expanded change events of `showExpandedEvents`):
//! `create` (with `changeStreamPreAndPostImages`), `collMod`, `createIndexes`,
//! `dropIndexes` and `listIndexes`. Indexes are recorded by name and never used by queries.

use std::collections::VecDeque;

use bson::{Bson, Document, doc};

use crate::crud::coll_name;
use crate::oplog::{Entry, Op};
use crate::state::{CmdError, State};

const ID_INDEX: fn() -> Document = || doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"};

/// Fields of a command that are not options (generic arguments the driver adds).
fn is_generic(k: &str) -> bool {
    k.starts_with('$')
        || matches!(
            k,
            "lsid"
                | "txnNumber"
                | "autocommit"
                | "startTransaction"
                | "writeConcern"
                | "comment"
                | "maxTimeMS"
                | "apiVersion"
                | "apiStrict"
                | "apiDeprecationErrors"
        )
}

fn images_option(cmd: &Document) -> Result<Option<bool>, CmdError> {
    match cmd.get("changeStreamPreAndPostImages") {
        None => Ok(None),
        Some(Bson::Document(d)) => d.get_bool("enabled").map(Some).map_err(|_| {
            CmdError::new(
                40414,
                "BSON field 'changeStreamPreAndPostImages.enabled' is missing but a required field",
            )
        }),
        Some(_) => Err(CmdError::new(
            14,
            "BSON field 'changeStreamPreAndPostImages' is the wrong type, expected type 'object'",
        )),
    }
}

/// Create `db.coll` (it must not exist) and record a `create` event.
fn create_coll(st: &mut State, db: &str, coll: &str, options: Document, images: bool) {
    st.coll_mut(db, coll).images = images;
    let mut desc = doc! {"idIndex": ID_INDEX()};
    for (k, v) in options {
        desc.insert(k, v);
    }
    let mut e = Entry::new(Op::Create, db, coll);
    e.desc = Some(desc);
    st.record(e, None, None);
}

pub fn create(st: &mut State, db: &str, cmd: &Document) -> Result<Document, CmdError> {
    let coll = coll_name(cmd, "create")?;
    if st.coll(db, coll).is_some() {
        return Err(CmdError::new(
            48,
            format!("Collection {db}.{coll} already exists."),
        ));
    }
    let images = images_option(cmd)?.unwrap_or(false);
    let options: Document = cmd
        .iter()
        .filter(|(k, _)| *k != "create" && !is_generic(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    create_coll(st, db, coll, options, images);
    Ok(Document::new())
}

/// `collMod`: `changeStreamPreAndPostImages` takes effect for later writes; records a
/// `modify` event with the changed options and the state before.
pub fn coll_mod(st: &mut State, db: &str, cmd: &Document) -> Result<Document, CmdError> {
    let coll = coll_name(cmd, "collMod")?.to_string();
    let images = images_option(cmd)?;
    let Some(c) = st.dbs.get_mut(db).and_then(|d| d.get_mut(&coll)) else {
        return Err(CmdError::new(26, "ns does not exist"));
    };
    let mut before = doc! {"uuid": c.uuid.clone()};
    if c.images {
        before.insert("changeStreamPreAndPostImages", doc! {"enabled": true});
    }
    if let Some(on) = images {
        c.images = on;
    }
    let desc: Document = cmd
        .iter()
        .filter(|(k, _)| *k != "collMod" && !is_generic(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut e = Entry::new(Op::Modify, db, &coll);
    e.desc = Some(desc);
    e.before_change = Some(doc! {"collectionOptions": before});
    st.record(e, None, None);
    Ok(Document::new())
}

pub fn create_indexes(st: &mut State, db: &str, cmd: &Document) -> Result<Document, CmdError> {
    let coll = coll_name(cmd, "createIndexes")?.to_string();
    let specs = cmd
        .get_array("indexes")
        .map_err(|_| CmdError::new(40414, "BSON field 'createIndexes.indexes' is missing"))?;
    let created = st.coll(db, &coll).is_none();
    if created {
        create_coll(st, db, &coll, Document::new(), false);
    }
    let before = 1 + st.coll(db, &coll).map_or(0, |c| c.indexes.len());
    for spec in specs {
        let Some(spec) = spec.as_document() else {
            return Err(CmdError::new(14, "index specification must be an object"));
        };
        let (Ok(key), Ok(name)) = (spec.get_document("key"), spec.get_str("name")) else {
            return Err(CmdError::new(
                9,
                "index specification needs 'key' and 'name'",
            ));
        };
        let mut full = doc! {"v": 2, "key": key.clone(), "name": name};
        for (k, v) in spec {
            if !matches!(k.as_str(), "key" | "name" | "v") {
                full.insert(k.clone(), v.clone());
            }
        }
        let c = st.coll_mut(db, &coll);
        if name == "_id_"
            || c.indexes
                .iter()
                .any(|i| i.get_str("name").ok() == Some(name))
        {
            continue;
        }
        c.indexes.push(full.clone());
        let mut e = Entry::new(Op::CreateIndexes, db, &coll);
        e.desc = Some(doc! {"indexes": [full]});
        st.record(e, None, None);
    }
    let after = 1 + st.coll(db, &coll).map_or(0, |c| c.indexes.len());
    Ok(doc! {
        "createdCollectionAutomatically": created,
        "numIndexesBefore": before as i32,
        "numIndexesAfter": after as i32,
    })
}

pub fn drop_indexes(st: &mut State, db: &str, cmd: &Document) -> Result<Document, CmdError> {
    let coll = coll_name(cmd, "dropIndexes")?.to_string();
    let Some(c) = st.dbs.get_mut(db).and_then(|d| d.get_mut(&coll)) else {
        return Err(CmdError::new(26, format!("ns not found {db}.{coll}")));
    };
    let was = 1 + c.indexes.len() as i32;
    let matches_spec = |i: &Document, want: &Bson| match want {
        Bson::String(n) => n == "*" || i.get_str("name").ok() == Some(n.as_str()),
        Bson::Document(k) => i.get_document("key").ok() == Some(k),
        Bson::Array(a) => a.iter().any(|n| i.get("name") == Some(n)),
        _ => false,
    };
    let want = cmd.get("index").cloned().unwrap_or(Bson::Null);
    if matches!(&want, Bson::String(n) if n == "_id_") {
        return Err(CmdError::new(72, "cannot drop _id index"));
    }
    let (gone, kept): (Vec<Document>, Vec<Document>) =
        c.indexes.drain(..).partition(|i| matches_spec(i, &want));
    c.indexes = kept;
    if gone.is_empty() && !matches!(&want, Bson::String(n) if n == "*") {
        return Err(CmdError::new(
            27,
            format!("index not found with name [{want}]"),
        ));
    }
    for i in gone {
        let mut e = Entry::new(Op::DropIndexes, db, &coll);
        e.desc = Some(doc! {"indexes": [i]});
        st.record(e, None, None);
    }
    Ok(doc! {"nIndexesWas": was})
}

pub fn list_indexes(st: &mut State, db: &str, cmd: &Document) -> Result<Document, CmdError> {
    let coll = coll_name(cmd, "listIndexes")?;
    let Some(c) = st.coll(db, coll) else {
        return Err(CmdError::new(26, format!("ns does not exist: {db}.{coll}")));
    };
    let mut idx = VecDeque::from(vec![ID_INDEX()]);
    idx.extend(c.indexes.iter().cloned());
    Ok(crate::crud::open_cursor(
        st,
        format!("{db}.$cmd.listIndexes.{coll}"),
        idx,
        usize::MAX,
        false,
    ))
}
