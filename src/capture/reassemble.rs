//! Large change events (`$changeStreamSplitLargeEvent`, MongoDB 6.0.9+ and 7.0+): an event
//! over 16 MiB arrives as fragments `splitEvent: {fragment: i, of: n}` (1-based), each with
//! its own resume token and some of the event's top-level fields. They are merged back, in
//! order, into the one event before it is normalized; its resume token is the last
//! fragment's, so a checkpoint never falls inside an event. A missing or out-of-order
//! fragment is an error naming the event, never a partial event.

use bson::{Bson, Document};

use super::normalize::Malformed;

/// The pipeline stage, appended last when the server supports it.
pub(crate) const SPLIT_STAGE: &str = "$changeStreamSplitLargeEvent";

/// Whether a server of this `buildInfo.versionArray` (or `version`) has the split stage:
/// 6.0.9 and later 6.0 releases, 7.0 and later (the rapid releases 6.1 to 6.3 do not).
pub(crate) fn supports_split(build_info: &Document) -> bool {
    let parts: Vec<i64> = match build_info.get_array("versionArray") {
        Ok(a) => a.iter().filter_map(number).collect(),
        Err(_) => build_info
            .get_str("version")
            .unwrap_or_default()
            .split(['.', '-'])
            .map_while(|p| p.parse().ok())
            .collect(),
    };
    let v = |i: usize| parts.get(i).copied().unwrap_or(0);
    match (v(0), v(1), v(2)) {
        (major, ..) if major >= 7 => true,
        (6, 0, patch) => patch >= 9,
        _ => false,
    }
}

fn number(b: &Bson) -> Option<i64> {
    match b {
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Int64(n) => Some(*n),
        Bson::Double(f) => Some(*f as i64),
        _ => None,
    }
}

/// Fragments of the event being read.
#[derive(Debug, Default)]
pub(crate) struct Reassembler {
    /// The merged fields so far, the next fragment expected and the count.
    open: Option<(Document, i32, i32)>,
}

impl Reassembler {
    /// Whether an event is partly read (its position must not be stored).
    pub(crate) fn mid_event(&self) -> bool {
        self.open.is_some()
    }

    /// Take one change document: a whole event is returned at once, a fragment is kept
    /// until the event's last one arrives, which returns the merged event.
    pub fn push(&mut self, raw: Document) -> Result<Option<Document>, Malformed> {
        let Some(split) = split_of(&raw)? else {
            return match self.open.take() {
                None => Ok(Some(raw)),
                Some((merged, next, of)) => Err(incomplete(&merged, next, of, "a whole event")),
            };
        };
        let (fragment, of) = split;
        let (mut merged, next, total) = match self.open.take() {
            None if fragment == 1 => (Document::new(), 1, of),
            None => {
                return Err(Malformed(format!(
                    "large change event {} starts at fragment {fragment} of {of}: fragment 1 is \
                     missing",
                    describe(&raw)
                )));
            }
            Some(open) => open,
        };
        if fragment != next || of != total {
            return Err(incomplete(
                &merged,
                next,
                total,
                &format!("fragment {fragment} of {of}"),
            ));
        }
        for (k, v) in raw {
            if k != "splitEvent" {
                // `_id` too: the merged event keeps the last fragment's resume token.
                merged.insert(k, v);
            }
        }
        if fragment == total {
            return Ok(Some(merged));
        }
        self.open = Some((merged, next + 1, total));
        Ok(None)
    }
}

/// `splitEvent`'s `(fragment, of)`, if the document is a fragment.
fn split_of(raw: &Document) -> Result<Option<(i32, i32)>, Malformed> {
    let Some(s) = raw.get("splitEvent") else {
        return Ok(None);
    };
    let parsed = s.as_document().and_then(|s| {
        let f = number(s.get("fragment")?)?;
        let of = number(s.get("of")?)?;
        (1..=of).contains(&f).then_some((f as i32, of as i32))
    });
    parsed
        .map(Some)
        .ok_or_else(|| Malformed(format!("unreadable splitEvent {s} in {}", describe(raw))))
}

fn incomplete(merged: &Document, next: i32, of: i32, got: &str) -> Malformed {
    Malformed(format!(
        "large change event {} is incomplete: fragment {next} of {of} expected, {got} arrived",
        describe(merged)
    ))
}

/// The event's identity for an error: operation, namespace, cluster time, resume token.
fn describe(d: &Document) -> String {
    let mut parts = Vec::new();
    if let Ok(op) = d.get_str("operationType") {
        parts.push(op.to_string());
    }
    if let Ok(ns) = d.get_document("ns") {
        parts.push(format!(
            "on {}.{}",
            ns.get_str("db").unwrap_or("?"),
            ns.get_str("coll").unwrap_or("?")
        ));
    }
    if let Some(Bson::Timestamp(ts)) = d.get("clusterTime") {
        parts.push(format!("at {}.{}", ts.time, ts.increment));
    }
    if let Ok(id) = d.get_document("_id") {
        parts.push(format!("(resume token {id})"));
    }
    if parts.is_empty() {
        "(unidentified)".into()
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn frag(i: i32, of: i32, field: &str) -> Document {
        doc! {"_id": {"_data": format!("82{i}")}, "splitEvent": {"fragment": i, "of": of},
        field: i}
    }

    #[test]
    fn fragments_merge_in_order_under_the_last_token() {
        let mut r = Reassembler::default();
        assert_eq!(r.push(frag(1, 3, "operationType")), Ok(None));
        assert!(r.mid_event());
        assert_eq!(r.push(frag(2, 3, "fullDocument")), Ok(None));
        let e = r.push(frag(3, 3, "updateDescription")).unwrap().unwrap();
        assert!(!r.mid_event());
        assert_eq!(e.get_document("_id").unwrap(), &doc! {"_data": "823"});
        assert!(!e.contains_key("splitEvent"));
        let keys: Vec<&String> = e.keys().collect();
        assert_eq!(
            keys,
            ["_id", "operationType", "fullDocument", "updateDescription"]
        );
        let whole = doc! {"_id": {"_data": "9"}, "operationType": "insert"};
        assert_eq!(r.push(whole.clone()), Ok(Some(whole)));
    }

    #[test]
    fn missing_or_out_of_order_fragments_are_errors_naming_the_event() {
        let mut r = Reassembler::default();
        let err = r.push(frag(2, 2, "x")).unwrap_err();
        assert!(
            err.0.contains("fragment 1 is missing") && err.0.contains("82"),
            "{err}"
        );
        let mut r = Reassembler::default();
        let mut first = frag(1, 3, "operationType");
        first.insert("operationType", "update");
        r.push(first).unwrap();
        let err = r.push(frag(3, 3, "y")).unwrap_err();
        assert!(
            err.0.contains("update") && err.0.contains("fragment 2 of 3"),
            "{err}"
        );
        let mut r = Reassembler::default();
        r.push(frag(1, 2, "a")).unwrap();
        assert!(r.push(doc! {"_id": {"_data": "9"}}).is_err());
    }

    #[test]
    fn the_stage_needs_6_0_9_or_7_0() {
        let v = |a: [i32; 3]| supports_split(&doc! {"versionArray": [a[0], a[1], a[2], 0]});
        assert!(!v([6, 0, 8]) && v([6, 0, 9]) && !v([6, 3, 1]) && v([7, 0, 0]) && v([8, 0, 4]));
        assert!(!v([5, 0, 30]));
        assert!(supports_split(&doc! {"version": "7.0.0-mongosim"}));
        assert!(!supports_split(&doc! {"version": "6.0.2"}));
    }
}
