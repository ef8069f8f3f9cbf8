//! MongoDB's BSON comparison order: type class first, then value.
//!
//! MinKey < null < numbers < symbol/string < object < array < binData < ObjectId < bool
//! < date < timestamp < regex < MaxKey. Numbers compare across int32/int64/double/decimal.

use std::cmp::Ordering;

use bson::{Bson, Document};

/// The canonical type class of a value (MongoDB's `canonicalizeBSONType`).
pub fn type_class(v: &Bson) -> u8 {
    match v {
        Bson::MinKey => 0,
        Bson::Null | Bson::Undefined => 5,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 10,
        Bson::String(_) | Bson::Symbol(_) => 15,
        Bson::Document(_) => 20,
        Bson::Array(_) => 25,
        Bson::Binary(_) => 30,
        Bson::ObjectId(_) => 35,
        Bson::Boolean(_) => 40,
        Bson::DateTime(_) => 45,
        Bson::Timestamp(_) => 47,
        Bson::RegularExpression(_) => 50,
        Bson::DbPointer(_) => 55,
        Bson::JavaScriptCode(_) => 60,
        Bson::JavaScriptCodeWithScope(_) => 65,
        Bson::MaxKey => 127,
    }
}

/// A number as f64 (decimal128 through its string form).
pub fn as_f64(v: &Bson) -> Option<f64> {
    match v {
        Bson::Int32(i) => Some(*i as f64),
        Bson::Int64(i) => Some(*i as f64),
        Bson::Double(d) => Some(*d),
        Bson::Decimal128(d) => d.to_string().parse().ok(),
        _ => None,
    }
}

fn cmp_numbers(a: &Bson, b: &Bson) -> Ordering {
    // Exact for integers; doubles via total order with NaN smallest (as MongoDB).
    match (a, b) {
        (Bson::Int32(x), Bson::Int32(y)) => x.cmp(y),
        (Bson::Int64(x), Bson::Int64(y)) => x.cmp(y),
        (Bson::Int32(x), Bson::Int64(y)) => (*x as i64).cmp(y),
        (Bson::Int64(x), Bson::Int32(y)) => x.cmp(&(*y as i64)),
        _ => {
            let x = as_f64(a).unwrap_or(f64::NAN);
            let y = as_f64(b).unwrap_or(f64::NAN);
            match (x.is_nan(), y.is_nan()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Less,
                (false, true) => Ordering::Greater,
                _ => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
            }
        }
    }
}

/// Compare two documents the way MongoDB does: field by field (type, name, value).
pub fn cmp_docs(a: &Document, b: &Document) -> Ordering {
    let mut ia = a.iter();
    let mut ib = b.iter();
    loop {
        match (ia.next(), ib.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some((ka, va)), Some((kb, vb))) => {
                let o = type_class(va)
                    .cmp(&type_class(vb))
                    .then_with(|| ka.cmp(kb))
                    .then_with(|| cmp_bson(va, vb));
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

/// Total order over BSON values following MongoDB's comparison rules.
pub fn cmp_bson(a: &Bson, b: &Bson) -> Ordering {
    let (ca, cb) = (type_class(a), type_class(b));
    if ca != cb {
        return ca.cmp(&cb);
    }
    match (a, b) {
        (Bson::String(x) | Bson::Symbol(x), Bson::String(y) | Bson::Symbol(y)) => x.cmp(y),
        (Bson::Document(x), Bson::Document(y)) => cmp_docs(x, y),
        (Bson::Array(x), Bson::Array(y)) => {
            for (u, v) in x.iter().zip(y.iter()) {
                let o = cmp_bson(u, v);
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (Bson::Binary(x), Bson::Binary(y)) => x
            .bytes
            .len()
            .cmp(&y.bytes.len())
            .then_with(|| u8::from(x.subtype).cmp(&u8::from(y.subtype)))
            .then_with(|| x.bytes.cmp(&y.bytes)),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.cmp(y),
        (Bson::Timestamp(x), Bson::Timestamp(y)) => {
            (x.time, x.increment).cmp(&(y.time, y.increment))
        }
        (Bson::RegularExpression(x), Bson::RegularExpression(y)) => x
            .pattern
            .cmp(&y.pattern)
            .then_with(|| x.options.cmp(&y.options)),
        (Bson::JavaScriptCode(x), Bson::JavaScriptCode(y)) => x.cmp(y),
        _ if ca == 10 => cmp_numbers(a, b),
        _ => Ordering::Equal,
    }
}

/// Values equal under MongoDB comparison (1 == 1.0 == NumberLong(1)).
pub fn bson_eq(a: &Bson, b: &Bson) -> bool {
    cmp_bson(a, b) == Ordering::Equal
}

/// A BSON value usable as an ordered map key (`_id`).
#[derive(Clone, Debug)]
pub struct Key(pub Bson);

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        cmp_bson(&self.0, &other.0) == Ordering::Equal
    }
}
impl Eq for Key {}
impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        cmp_bson(&self.0, &other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, oid::ObjectId};

    #[test]
    fn order_follows_type_classes() {
        let mut v = vec![
            Bson::MaxKey,
            Bson::Boolean(false),
            Bson::ObjectId(ObjectId::new()),
            Bson::Array(vec![]),
            Bson::Document(doc! {}),
            Bson::String("a".into()),
            Bson::Double(1.5),
            Bson::Int64(1),
            Bson::Null,
            Bson::MinKey,
        ];
        v.sort_by(cmp_bson);
        assert_eq!(v[0], Bson::MinKey);
        assert_eq!(v[1], Bson::Null);
        assert_eq!(v[2], Bson::Int64(1));
        assert_eq!(v[3], Bson::Double(1.5));
        assert!(matches!(v[4], Bson::String(_)));
        assert_eq!(v[9], Bson::MaxKey);
        assert!(bson_eq(&Bson::Int32(2), &Bson::Double(2.0)));
    }
}
