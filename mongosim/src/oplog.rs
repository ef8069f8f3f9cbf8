//! The oplog: one entry per applied write, strictly increasing `seq` and `ts`, a truncation
//! floor (history lost below it), and opaque resume tokens `{_data: "82" + hex(seq) [+ "01"]}`.

use std::collections::VecDeque;

use bson::{Bson, DateTime, Document, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Replace,
    Delete,
    Drop,
    Rename,
    DropDatabase,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Replace => "replace",
            Op::Delete => "delete",
            Op::Drop => "drop",
            Op::Rename => "rename",
            Op::DropDatabase => "dropDatabase",
        }
    }
}

/// One oplog entry. Documents are deep-copied snapshots taken at write time.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    pub ts: Timestamp,
    pub wall: DateTime,
    pub op: Op,
    pub db: String,
    pub coll: String,
    pub key: Option<Bson>,
    /// Post-image (insert, replace, update), encoded BSON.
    pub doc: Option<Vec<u8>>,
    /// Pre-image (update, replace, delete), encoded BSON.
    pub pre: Option<Vec<u8>>,
    /// `updateDescription` for updates.
    pub upd: Option<Document>,
    /// `(lsid, txnNumber)` for writes of a committed transaction.
    pub txn: Option<(Document, i64)>,
    /// Rename target `(db, coll)`.
    pub to: Option<(String, String)>,
}

impl Entry {
    pub fn new(op: Op, db: &str, coll: &str) -> Entry {
        Entry {
            seq: 0,
            ts: Timestamp {
                time: 0,
                increment: 0,
            },
            wall: DateTime::now(),
            op,
            db: db.to_string(),
            coll: coll.to_string(),
            key: None,
            doc: None,
            pre: None,
            upd: None,
            txn: None,
            to: None,
        }
    }
}

#[derive(Debug, Default)]
pub struct Oplog {
    pub entries: VecDeque<Entry>,
    /// Highest truncated seq: positions below it have lost history.
    pub floor: u64,
    /// Cluster time of the entry at `floor`.
    pub floor_ts: Option<Timestamp>,
    /// Keep at most this many entries.
    pub window: Option<usize>,
    pub last_seq: u64,
}

impl Oplog {
    pub fn append(&mut self, mut e: Entry) {
        self.last_seq += 1;
        e.seq = self.last_seq;
        self.entries.push_back(e);
        self.enforce_window();
    }

    pub fn enforce_window(&mut self) {
        if let Some(w) = self.window {
            while self.entries.len() > w {
                if let Some(old) = self.entries.pop_front() {
                    self.floor = old.seq;
                    self.floor_ts = Some(old.ts);
                }
            }
        }
    }

    /// Drop every entry up to the head.
    pub fn truncate(&mut self) {
        if let Some(last) = self.entries.back() {
            self.floor = last.seq;
            self.floor_ts = Some(last.ts);
        }
        self.entries.clear();
    }

    pub fn head(&self) -> u64 {
        self.last_seq
    }

    /// The entry with this seq, if still retained.
    pub fn get(&self, seq: u64) -> Option<&Entry> {
        let first = self.entries.front()?.seq;
        if seq < first {
            return None;
        }
        self.entries.get((seq - first) as usize)
    }

    /// Position (last seq before) of the first entry with `ts >= t`.
    pub fn position_at_time(&self, t: Timestamp) -> u64 {
        let mut pos = self.floor;
        for e in &self.entries {
            if (e.ts.time, e.ts.increment) >= (t.time, t.increment) {
                break;
            }
            pos = e.seq;
        }
        pos
    }
}

/// Encode a document snapshot for the oplog (one contiguous buffer).
pub fn encode(d: &Document) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    if d.to_writer(&mut out).is_err() {
        out = vec![5, 0, 0, 0, 0];
    }
    out
}

/// Append an element holding an encoded document (type 3), array (type 4) or null (no
/// bytes) to an encoded document, fixing its length.
pub fn append_raw(buf: &mut Vec<u8>, key: &str, kind: u8, val: Option<&[u8]>) {
    buf.pop();
    match val {
        Some(v) => {
            buf.push(kind);
            buf.extend_from_slice(key.as_bytes());
            buf.push(0);
            buf.extend_from_slice(v);
        }
        None => {
            buf.push(0x0A);
            buf.extend_from_slice(key.as_bytes());
            buf.push(0);
        }
    }
    buf.push(0);
    let len = buf.len() as i32;
    buf[0..4].copy_from_slice(&len.to_le_bytes());
}

/// Resume token of an event (or of an invalidate that follows entry `seq`).
pub fn token(seq: u64, invalidate: bool) -> Document {
    let data = if invalidate {
        format!("82{seq:016X}01")
    } else {
        format!("82{seq:016X}")
    };
    bson::doc! {"_data": data}
}

/// Resume token of fragment `k` (0-based) of the split event of entry `seq`: sorts after the
/// event's own token and before the invalidate that may follow it.
pub fn fragment_token(seq: u64, k: u32) -> Document {
    bson::doc! {"_data": format!("82{seq:016X}00{k:08X}")}
}

/// A decoded resume token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenPos {
    pub seq: u64,
    pub invalidate: bool,
    /// Fragment index (0-based) of a split event.
    pub fragment: Option<u32>,
}

/// Decode any token of this simulator.
pub fn parse_position(tok: &Bson) -> Option<TokenPos> {
    let Bson::Document(d) = tok else {
        return None;
    };
    let data = d.get_str("_data").ok()?;
    let hex = data.strip_prefix("82")?;
    let seq = u64::from_str_radix(hex.get(..16)?, 16).ok()?;
    let pos = |invalidate, fragment| {
        Some(TokenPos {
            seq,
            invalidate,
            fragment,
        })
    };
    match hex.get(16..) {
        Some("") | None => pos(false, None),
        Some("01") => pos(true, None),
        Some(f) if f.len() == 10 && f.starts_with("00") => {
            pos(false, Some(u32::from_str_radix(&f[2..], 16).ok()?))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_sort() {
        let a = token(5, false);
        let b = token(5, true);
        let c = token(6, false);
        let p = |d: &Document| {
            parse_position(&Bson::Document(d.clone())).map(|p| (p.seq, p.invalidate))
        };
        assert_eq!(p(&a), Some((5, false)));
        assert_eq!(p(&b), Some((5, true)));
        let s = |d: &Document| d.get_str("_data").unwrap().to_string();
        assert!(s(&a) < s(&b) && s(&b) < s(&c));
        let f = fragment_token(5, 2);
        assert!(s(&a) < s(&f) && s(&f) < s(&b));
        assert_eq!(
            parse_position(&Bson::Document(f)).and_then(|p| p.fragment),
            Some(2)
        );
    }

    #[test]
    fn window_moves_floor() {
        let mut o = Oplog {
            window: Some(2),
            ..Default::default()
        };
        for _ in 0..5 {
            o.append(Entry::new(Op::Insert, "d", "c"));
        }
        assert_eq!(o.floor, 3);
        assert!(o.get(3).is_none());
        assert_eq!(o.get(4).map(|e| e.seq), Some(4));
    }
}
