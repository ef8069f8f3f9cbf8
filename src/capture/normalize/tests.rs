use std::path::Path;

use bson::{Binary, Bson, DateTime, Timestamp, doc, oid::ObjectId, spec::BinarySubtype};
use serde_json::json;

use super::*;
use crate::event::{Action, Entity};

fn pipeline() -> Pipeline {
    Pipeline::parse(
        Path::new("p.toml"),
        r#"
name = "paving"
[mongo]
database = "paving"
collections = { employeeworks = "employee_work", dailyreports = "daily_report" }
[rabbitmq]
vhost = "bowmark"
[postgres]
database = "r"
"#,
    )
    .unwrap()
}

fn oid() -> ObjectId {
    ObjectId::parse_str("621664558c026b7ac8fb32f0").unwrap()
}

fn raw(op: &str, t: u32, i: u32) -> Document {
    doc! {
        "_id": { "_data": format!("82{t:08X}{i:08X}") },
        "operationType": op,
        "clusterTime": Timestamp { time: t, increment: i },
        "wallTime": DateTime::from_millis(1_700_000_000_120),
        "ns": { "db": "paving", "coll": "employeeworks" },
        "documentKey": { "_id": oid() },
    }
}

fn event(n: Normalized) -> ChangeEvent {
    match n {
        Normalized::Event(e) => *e,
        other => panic!("expected an event, got {other:?}"),
    }
}

#[test]
fn insert_becomes_a_created_event_with_relaxed_json_doc() {
    let mut r = raw("insert", 1_700_000_000, 3);
    r.insert(
        "fullDocument",
        doc! { "_id": oid(), "hours": 8.5, "n": 3_i64, "at": DateTime::from_millis(0) },
    );
    let e = event(normalize(&pipeline(), &r, &mut Ordinals::default()).unwrap());
    let v = serde_json::to_value(&e).unwrap();
    assert_eq!(
        v,
        json!({
            "v": 1, "id": "paving:1700000000.3.0", "pipeline": "paving",
            "entity": "employee_work", "op": "insert", "action": "created",
            "ns": {"db": "paving", "coll": "employeeworks"},
            "key": "621664558c026b7ac8fb32f0",
            "cluster_time": {"t": 1700000000, "i": 3}, "ordinal": 0,
            "wall_time": "2023-11-14T22:13:20.120Z",
            "doc": {"_id": {"$oid": "621664558c026b7ac8fb32f0"}, "hours": 8.5, "n": 3,
                    "at": {"$date": "1970-01-01T00:00:00Z"}},
            "changed": [], "removed": [], "txn": null,
            "resume_token": {"_data": format!("82{:08X}{:08X}", 1_700_000_000_u32, 3)},
            "mongoId": "621664558c026b7ac8fb32f0", "timestamp": "2023-11-14T22:13:20.120Z"
        })
    );
}

#[test]
fn update_carries_changed_and_removed_and_null_lookup_is_not_a_delete() {
    let mut r = raw("update", 5, 1);
    r.insert(
        "updateDescription",
        doc! { "updatedFields": { "endTime": 1, "a.b": 2 }, "removedFields": ["gone"], "truncatedArrays": [] },
    );
    r.insert("fullDocument", Bson::Null);
    let e = event(normalize(&pipeline(), &r, &mut Ordinals::default()).unwrap());
    assert_eq!(e.action, Action::Updated);
    assert_eq!(e.op, Op::Update);
    assert_eq!(e.doc, None);
    assert_eq!(e.changed, vec!["endTime", "a.b"]);
    assert_eq!(e.removed, vec!["gone"]);
}

#[test]
fn replace_is_updated_and_delete_has_no_doc() {
    let mut r = raw("replace", 5, 1);
    r.insert("fullDocument", doc! { "_id": oid() });
    let e = event(normalize(&pipeline(), &r, &mut Ordinals::default()).unwrap());
    assert_eq!((e.op, e.action), (Op::Replace, Action::Updated));
    assert!(e.doc.is_some());
    let e = event(normalize(&pipeline(), &raw("delete", 5, 2), &mut Ordinals::default()).unwrap());
    assert_eq!(
        (e.op, e.action, &e.doc),
        (Op::Delete, Action::Deleted, &None)
    );
    assert_eq!(e.routing_key(), "employee_work.deleted");
}

#[test]
fn events_sharing_a_cluster_time_are_numbered_in_order() {
    let p = pipeline();
    let mut ords = Ordinals::default();
    let ids: Vec<String> = [(7, 1), (7, 1), (7, 1), (7, 2), (8, 0)]
        .into_iter()
        .map(|(t, i)| event(normalize(&p, &raw("delete", t, i), &mut ords).unwrap()).id)
        .collect();
    assert_eq!(
        ids,
        [
            "paving:7.1.0",
            "paving:7.1.1",
            "paving:7.1.2",
            "paving:7.2.0",
            "paving:8.0.0"
        ]
    );
}

#[test]
fn transaction_fields_become_txn() {
    let mut r = raw("insert", 9, 9);
    r.insert("fullDocument", doc! { "_id": oid() });
    r.insert("txnNumber", 12_i64);
    r.insert(
        "lsid",
        doc! { "id": Binary { subtype: BinarySubtype::Uuid, bytes: vec![0x11; 16] } },
    );
    let e = event(normalize(&pipeline(), &r, &mut Ordinals::default()).unwrap());
    let txn = e.txn.unwrap();
    assert_eq!(txn.txn_number, 12);
    assert_eq!(txn.lsid, "11111111-1111-1111-1111-111111111111");
}

#[test]
fn drops_and_invalidate_stop_and_other_namespaces_are_skipped() {
    let p = pipeline();
    let mut o = Ordinals::default();
    for op in ["drop", "dropDatabase", "invalidate", "rename"] {
        assert!(matches!(
            normalize(&p, &raw(op, 1, 1), &mut o),
            Ok(Normalized::Stop(_))
        ));
    }
    let mut r = raw("delete", 1, 1);
    r.insert("ns", doc! { "db": "paving", "coll": "other" });
    assert_eq!(normalize(&p, &r, &mut o), Ok(Normalized::Skip));
    assert_eq!(Entity::DailyReport, p.entity_of("dailyreports").unwrap());
}

#[test]
fn malformed_changes_are_errors_not_skips() {
    let p = pipeline();
    let mut r = raw("delete", 1, 1);
    r.remove("_id");
    assert!(normalize(&p, &r, &mut Ordinals::default()).is_err());
    let mut r = raw("delete", 1, 1);
    r.insert("clusterTime", DateTime::from_millis(0));
    assert!(normalize(&p, &r, &mut Ordinals::default()).is_err());
    let mut r = raw("delete", 1, 1);
    r.remove("documentKey");
    assert!(normalize(&p, &r, &mut Ordinals::default()).is_err());
}
