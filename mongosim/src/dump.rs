//! Loading a mongodump folder (`<coll>.bson` + `<coll>.metadata.json`) into a database.
//! A collection with metadata but no (or an empty) `.bson` file is created empty.

use std::collections::BTreeMap;
use std::io::{self, BufReader, ErrorKind, Read};
use std::path::Path;

use bson::Document;

use crate::order::Key;
use crate::state::{Collection, State};

/// Documents per collection loaded from a dump folder.
pub type DumpCounts = BTreeMap<String, usize>;

fn read_bson_file(path: &Path) -> io::Result<Vec<Document>> {
    let mut r = BufReader::new(std::fs::File::open(path)?);
    let mut out = Vec::new();
    loop {
        let mut len = [0u8; 4];
        match r.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        let n = i32::from_le_bytes(len);
        if !(5..=16 * 1024 * 1024 + 16 * 1024).contains(&n) {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                format!("{}: bad document length {n}", path.display()),
            ));
        }
        let mut buf = vec![0u8; n as usize];
        buf[..4].copy_from_slice(&len);
        r.read_exact(&mut buf[4..])?;
        let d = Document::from_reader(&buf[..]).map_err(|e| {
            io::Error::new(ErrorKind::InvalidData, format!("{}: {e}", path.display()))
        })?;
        out.push(d);
    }
    Ok(out)
}

/// Read a mongodump folder: collection name -> documents (in file order). A collection
/// with metadata but no (or an empty) `.bson` file maps to an empty list.
pub fn read_dump_documents(dir: &Path) -> io::Result<BTreeMap<String, Vec<Document>>> {
    let mut names = std::collections::BTreeSet::new();
    for ent in std::fs::read_dir(dir)? {
        let name = ent?.file_name().to_string_lossy().to_string();
        if let Some(c) = name.strip_suffix(".metadata.json") {
            names.insert(c.to_string());
        } else if let Some(c) = name.strip_suffix(".bson") {
            names.insert(c.to_string());
        }
    }
    let mut out = BTreeMap::new();
    for c in names {
        let file = dir.join(format!("{c}.bson"));
        let docs = if file.exists() {
            read_bson_file(&file)?
        } else {
            Vec::new()
        };
        out.insert(c, docs);
    }
    Ok(out)
}

/// Read a dump folder into collections (no oplog entries: this is the initial data).
pub fn read_dump(dir: &Path) -> io::Result<BTreeMap<String, Collection>> {
    let mut out = BTreeMap::new();
    for (c, docs) in read_dump_documents(dir)? {
        let mut coll = Collection::new();
        for d in docs {
            let id = d.get("_id").cloned().unwrap_or(bson::Bson::Null);
            coll.docs.insert(Key(id), d);
        }
        out.insert(c, coll);
    }
    Ok(out)
}

pub fn install(st: &mut State, db: &str, colls: BTreeMap<String, Collection>) -> DumpCounts {
    let target = st.dbs.entry(db.to_string()).or_default();
    let mut counts = DumpCounts::new();
    for (name, c) in colls {
        counts.insert(name.clone(), c.docs.len());
        target.insert(name, c);
    }
    counts
}
