//! The mirror key of a document: the one text form of its `_id`, used by the capture, the
//! backfill and `verify` alike (`docs/architecture.md`, "Document keys").
//!
//! Two `_id`s get the same key exactly when MongoDB holds them equal:
//!
//! - an ObjectId is its 24 lowercase hex digits (the legacy star schema's `mongo_id`);
//! - a string is itself, unless it could be read as another key: a string that starts with
//!   `{`, `[` or `"`, is `true`, `false` or `null`, is 24 lowercase hex digits or holds a NUL
//!   is written as its JSON string literal (`"..."`, NUL as `\u0000`, which PostgreSQL text
//!   can hold);
//! - a number is its canonical extended JSON after MongoDB's numeric equality: NumberInt 5,
//!   NumberLong 5 and the double 5.0 are all `{"$numberLong":"5"}`; other doubles (and NaN,
//!   ±Infinity) are `{"$numberDouble":"..."}`;
//! - any other value (a date, an embedded document, ...) is its canonical extended JSON, with
//!   the numbers inside it treated the same way.

use bson::{Bson, Document};

/// The mirror key of the `_id` value `id`.
pub fn mongo_key(id: &Bson) -> String {
    match id {
        Bson::ObjectId(oid) => oid.to_hex(),
        Bson::String(s) if !reserved(s) => s.clone(),
        Bson::String(s) => serde_json::Value::String(s.clone()).to_string(),
        other => normal(other.clone()).into_canonical_extjson().to_string(),
    }
}

/// A string that, kept as it is, could be the key of another value.
fn reserved(s: &str) -> bool {
    s.starts_with(['{', '[', '"'])
        || matches!(s, "true" | "false" | "null")
        || (s.len() == 24 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        || s.contains('\0')
}

/// Integers beyond this are not held exactly by a double, so no double equals them.
const EXACT: f64 = 9_007_199_254_740_992.0;

/// The value with every number in its MongoDB-equality form: integral numbers as Int64.
fn normal(v: Bson) -> Bson {
    match v {
        Bson::Int32(n) => Bson::Int64(i64::from(n)),
        Bson::Double(f) if f.is_finite() && f.fract() == 0.0 && f.abs() <= EXACT => {
            Bson::Int64(f as i64)
        }
        Bson::Decimal128(d) => match d.to_string().parse::<f64>() {
            Ok(f) if f.is_finite() && f.fract() == 0.0 && f.abs() <= EXACT => Bson::Int64(f as i64),
            _ => Bson::Decimal128(d),
        },
        Bson::Document(d) => Bson::Document(
            d.into_iter()
                .map(|(k, v)| (k, normal(v)))
                .collect::<Document>(),
        ),
        Bson::Array(a) => Bson::Array(a.into_iter().map(normal).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::oid::ObjectId;

    #[test]
    fn object_ids_and_plain_strings_keep_their_keys() {
        let oid = ObjectId::parse_str("621664558c026b7ac8fb32f0").unwrap();
        assert_eq!(mongo_key(&Bson::ObjectId(oid)), "621664558c026b7ac8fb32f0");
        assert_eq!(mongo_key(&Bson::String("crew-7".into())), "crew-7");
        assert_eq!(mongo_key(&Bson::String("5".into())), "5");
    }

    #[test]
    fn numbers_equal_to_mongodb_share_a_key_and_never_meet_a_string() {
        let five = mongo_key(&Bson::Int32(5));
        assert_eq!(five, r#"{"$numberLong":"5"}"#);
        assert_eq!(mongo_key(&Bson::Int64(5)), five);
        assert_eq!(mongo_key(&Bson::Double(5.0)), five);
        assert_ne!(mongo_key(&Bson::String("5".into())), five);
        assert_ne!(mongo_key(&Bson::String(five.clone())), five);
        assert_eq!(mongo_key(&Bson::Double(5.5)), r#"{"$numberDouble":"5.5"}"#);
        assert_eq!(
            mongo_key(&Bson::Double(f64::NAN)),
            r#"{"$numberDouble":"NaN"}"#
        );
    }

    #[test]
    fn strings_that_look_like_other_keys_are_quoted() {
        let hex = "621664558c026b7ac8fb32f0";
        assert_eq!(mongo_key(&Bson::String(hex.into())), format!("\"{hex}\""));
        assert_eq!(mongo_key(&Bson::String("true".into())), r#""true""#);
        assert_ne!(
            mongo_key(&Bson::String("true".into())),
            mongo_key(&Bson::Boolean(true))
        );
        assert_eq!(mongo_key(&Bson::String("a\0b".into())), r#""a\u0000b""#);
        let q = mongo_key(&Bson::String("\"x\"".into()));
        assert_ne!(q, mongo_key(&Bson::String("x".into())));
        assert_ne!(
            q,
            mongo_key(&Bson::String("\"x\"".into())).trim_matches('"')
        );
    }

    #[test]
    fn embedded_documents_compare_their_numbers_by_value() {
        let a = mongo_key(&Bson::Document(bson::doc! {"a": 1_i32, "b": "x"}));
        let b = mongo_key(&Bson::Document(bson::doc! {"a": 1.0_f64, "b": "x"}));
        assert_eq!(a, b);
        assert!(a.starts_with('{'));
    }
}
