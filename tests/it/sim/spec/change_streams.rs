//! change-streams.json: event shapes, comments, projections, watch helpers, resume.

use std::time::Duration;

use bson::{Bson, doc};

use super::{Spec, assert_result, expect_commands, iterate, iterate_error, labels, watch};
use crate::sim::error_code;

#[tokio::test]
async fn test_array_truncation() {
    let t = Spec::start().await;
    let c = t.coll0();
    c.insert_one(doc! {"_id": 1, "a": 1, "array": ["foo", {"a": "bar"}, 1, 2, 3]})
        .await
        .unwrap();
    let mut s = watch(&c, vec![]).await;
    c.update_one(
        doc! {"_id": 1},
        vec![doc! {"$set": {"array": ["foo", {"a": "bar"}]}}],
    )
    .await
    .unwrap();
    assert_result(
        &iterate(&mut s).await,
        doc! {
            "operationType": "update",
            "ns": {"db": t.db0(), "coll": "collection0"},
            "updateDescription": {
                "updatedFields": {}, "removedFields": [],
                "truncatedArrays": [{"field": "array", "newSize": 2}],
            },
        },
    );
}

#[tokio::test]
async fn test_with_document_and_string_comment() {
    let t = Spec::start().await;
    let _s = t
        .coll0()
        .watch()
        .comment(Bson::Document(doc! {"name": "test1"}))
        .await
        .unwrap();
    let _s2 = t
        .coll0()
        .watch()
        .comment(Bson::from("comment"))
        .await
        .unwrap();
    expect_commands(
        &t.m,
        &[
            doc! {"aggregate": "collection0", "pipeline": [{"$changeStream": {}}], "comment": {"name": "test1"}},
            doc! {"aggregate": "collection0", "pipeline": [{"$changeStream": {}}], "comment": "comment"},
        ],
    );
}

#[tokio::test]
async fn test_that_comment_is_set_on_get_more() {
    let t = Spec::start().await;
    let c = t.coll0();
    let mut s = c
        .watch()
        .comment(Bson::Document(doc! {"key": "value"}))
        .max_await_time(Duration::from_millis(100))
        .await
        .unwrap()
        .with_type::<bson::Document>();
    c.insert_one(doc! {"_id": 1, "a": 1}).await.unwrap();
    iterate(&mut s).await;
    expect_commands(
        &t.m,
        &[
            doc! {"aggregate": "collection0", "pipeline": [{"$changeStream": {}}], "comment": {"key": "value"}},
            // (the driver sends `documents` as an OP_MSG document sequence, not in the body)
            doc! {"insert": "collection0"},
            doc! {"getMore": {"$$type": ["int", "long"]}, "collection": "collection0", "comment": {"key": "value"}, "$db": t.db0()},
        ],
    );
}

#[tokio::test]
async fn to_field_is_set_in_a_rename_change_event() {
    let t = Spec::start().await;
    let mut s = watch(&t.coll0(), vec![]).await;
    rename_collection0_to_collection1(&t).await;
    assert_result(
        &iterate(&mut s).await,
        doc! {
            "operationType": "rename",
            "ns": {"db": t.db0(), "coll": "collection0"},
            "to": {"db": t.db0(), "coll": "collection1"},
        },
    );
}

/// The four "MUST NOT err" / projection scenarios: a `$project`, the insert, the result.
async fn projected_insert(project: bson::Document) -> (Spec, bson::Document) {
    let t = Spec::start().await;
    let c = t.coll0();
    let mut s = watch(&c, vec![doc! {"$project": project}]).await;
    c.insert_one(doc! {"_id": 1, "a": 1}).await.unwrap();
    let ev = iterate(&mut s).await;
    (t, ev)
}

#[tokio::test]
async fn test_unknown_operation_type_must_not_err() {
    let (t, ev) =
        projected_insert(doc! {"operationType": "addedInFutureMongoDBVersion", "ns": 1}).await;
    assert_result(
        &ev,
        doc! {"operationType": "addedInFutureMongoDBVersion", "ns": {"db": t.db0(), "coll": "collection0"}},
    );
}

#[tokio::test]
async fn test_new_field_added_in_response_must_not_err() {
    let (t, ev) =
        projected_insert(doc! {"operationType": 1, "ns": 1, "newField": "newFieldValue"}).await;
    assert_result(
        &ev,
        doc! {"operationType": "insert", "ns": {"db": t.db0(), "coll": "collection0"}, "newField": "newFieldValue"},
    );
}

#[tokio::test]
async fn test_new_structure_in_ns_document_must_not_err() {
    let (_t, ev) = projected_insert(doc! {"operationType": "insert", "ns.viewOn": "db.coll"}).await;
    assert_result(
        &ev,
        doc! {"operationType": "insert", "ns": {"viewOn": "db.coll"}},
    );
}

#[tokio::test]
async fn test_modified_structure_in_ns_document_must_not_err() {
    let (t, ev) = projected_insert(doc! {
        "operationType": "insert",
        "ns": {"db": "$ns.db", "coll": "$ns.coll", "viewOn": "db.coll"},
    })
    .await;
    assert_result(
        &ev,
        doc! {"operationType": "insert", "ns": {"db": t.db0(), "coll": "collection0", "viewOn": "db.coll"}},
    );
}

#[tokio::test]
async fn test_projection_in_change_stream_returns_expected_fields() {
    let (t, ev) =
        projected_insert(doc! {"optype": "$operationType", "ns": 1, "newField": "value"}).await;
    assert_result(
        &ev,
        doc! {"optype": "insert", "ns": {"db": t.db0(), "coll": "collection0"}, "newField": "value"},
    );
}

#[tokio::test]
async fn test_server_error_on_projecting_out_id() {
    let t = Spec::start().await;
    let c = t.coll0();
    let mut s = watch(&c, vec![doc! {"$project": {"_id": 0}}]).await;
    c.insert_one(doc! {"_id": 1, "a": 1}).await.unwrap();
    let e = iterate_error(&mut s).await;
    assert_eq!(error_code(&e), Some(280), "{e}");
    assert!(
        labels(&e).contains(&"NonResumableChangeStreamError".to_string()),
        "{e}"
    );
}

/// "$changeStream must be the first stage ...", "The server returns change stream
/// responses in the specified server response format" and "Executing a watch helper on a
/// Collection ...": only the watched collection's events, in the server's shape.
#[tokio::test]
async fn watch_helper_on_a_collection_and_the_response_format() {
    let t = Spec::start().await;
    let mut s = watch(&t.coll0(), vec![]).await;
    t.coll(&t.db0(), "collection1")
        .insert_one(doc! {"x": 1})
        .await
        .unwrap();
    t.coll(&t.db1(), "collection0")
        .insert_one(doc! {"y": 2})
        .await
        .unwrap();
    t.coll0().insert_one(doc! {"z": 3}).await.unwrap();
    assert_result(
        &iterate(&mut s).await,
        doc! {
            "_id": {"$$exists": true}, "documentKey": {"$$exists": true},
            "operationType": "insert", "ns": {"db": t.db0(), "coll": "collection0"},
            "fullDocument": {"z": 3, "_id": {"$$exists": true}},
        },
    );
    expect_commands(
        &t.m,
        &[
            doc! {"aggregate": "collection0", "cursor": {}, "pipeline": [{"$changeStream": {}}], "$db": t.db0()},
        ],
    );
}

#[tokio::test]
async fn change_stream_should_allow_valid_aggregate_pipeline_stages() {
    let t = Spec::start().await;
    let mut s = watch(&t.coll0(), vec![doc! {"$match": {"fullDocument.z": 3}}]).await;
    t.coll0().insert_one(doc! {"y": 2}).await.unwrap();
    t.coll0().insert_one(doc! {"z": 3}).await.unwrap();
    assert_result(
        &iterate(&mut s).await,
        doc! {
            "operationType": "insert", "ns": {"db": t.db0(), "coll": "collection0"},
            "fullDocument": {"z": 3, "_id": {"$$exists": true}},
        },
    );
}

#[tokio::test]
async fn watch_helper_on_a_database() {
    let t = Spec::start().await;
    let mut s = t
        .client()
        .database(&t.db0())
        .watch()
        .max_await_time(Duration::from_millis(100))
        .await
        .unwrap()
        .with_type::<bson::Document>();
    t.coll(&t.db0(), "collection1")
        .insert_one(doc! {"x": 1})
        .await
        .unwrap();
    t.coll(&t.db1(), "collection0")
        .insert_one(doc! {"y": 2})
        .await
        .unwrap();
    t.coll0().insert_one(doc! {"z": 3}).await.unwrap();
    assert_result(
        &iterate(&mut s).await,
        doc! {"operationType": "insert", "ns": {"db": t.db0(), "coll": "collection1"}, "fullDocument": {"x": 1, "_id": {"$$exists": true}}},
    );
    assert_result(
        &iterate(&mut s).await,
        doc! {"operationType": "insert", "ns": {"db": t.db0(), "coll": "collection0"}, "fullDocument": {"z": 3, "_id": {"$$exists": true}}},
    );
    expect_commands(
        &t.m,
        &[doc! {"aggregate": 1, "cursor": {}, "pipeline": [{"$changeStream": {}}], "$db": t.db0()}],
    );
}

#[tokio::test]
async fn watch_helper_on_a_mongo_client() {
    let t = Spec::start().await;
    // On a shared real server other tests write too: keep this test's two databases.
    let mut s = t
        .client()
        .watch()
        .pipeline([doc! {"$match": {"ns.db": {"$in": [t.db0(), t.db1()]}}}])
        .max_await_time(Duration::from_millis(100))
        .await
        .unwrap()
        .with_type::<bson::Document>();
    t.coll(&t.db0(), "collection1")
        .insert_one(doc! {"x": 1})
        .await
        .unwrap();
    t.coll(&t.db1(), "collection0")
        .insert_one(doc! {"y": 2})
        .await
        .unwrap();
    t.coll0().insert_one(doc! {"z": 3}).await.unwrap();
    for (db, coll, doc) in [
        (
            t.db0(),
            "collection1",
            doc! {"x": 1, "_id": {"$$exists": true}},
        ),
        (
            t.db1(),
            "collection0",
            doc! {"y": 2, "_id": {"$$exists": true}},
        ),
        (
            t.db0(),
            "collection0",
            doc! {"z": 3, "_id": {"$$exists": true}},
        ),
    ] {
        assert_result(
            &iterate(&mut s).await,
            doc! {"operationType": "insert", "ns": {"db": db, "coll": coll}, "fullDocument": doc},
        );
    }
    expect_commands(
        &t.m,
        &[doc! {
            "aggregate": 1,
            "pipeline": [
                {"$changeStream": {"allChangesForCluster": true}},
                {"$match": {"ns.db": {"$in": [t.db0(), t.db1()]}}},
            ],
            "$db": "admin",
        }],
    );
}

#[tokio::test]
async fn test_insert_update_replace_and_delete_event_types() {
    let t = Spec::start().await;
    let c = t.coll0();
    let mut s = watch(&c, vec![]).await;
    c.insert_one(doc! {"x": 1}).await.unwrap();
    c.update_one(doc! {"x": 1}, doc! {"$set": {"x": 2}})
        .await
        .unwrap();
    c.replace_one(doc! {"x": 2}, doc! {"x": 3}).await.unwrap();
    c.delete_one(doc! {"x": 3}).await.unwrap();
    let ns = doc! {"db": t.db0(), "coll": "collection0"};
    assert_result(
        &iterate(&mut s).await,
        doc! {"operationType": "insert", "ns": ns.clone(), "fullDocument": {"x": 1, "_id": {"$$exists": true}}},
    );
    assert_result(
        &iterate(&mut s).await,
        doc! {"operationType": "update", "ns": ns.clone(), "updateDescription": {
            "updatedFields": {"x": 2}, "removedFields": [],
            "truncatedArrays": {"$$unsetOrMatches": {"$$exists": true}},
        }},
    );
    assert_result(
        &iterate(&mut s).await,
        doc! {"operationType": "replace", "ns": ns.clone(), "fullDocument": {"x": 3, "_id": {"$$exists": true}}},
    );
    assert_result(
        &iterate(&mut s).await,
        doc! {"operationType": "delete", "ns": ns},
    );
}

#[tokio::test]
async fn test_rename_and_invalidate_event_types() {
    let t = Spec::start().await;
    let mut s = watch(&t.coll0(), vec![]).await;
    rename_collection0_to_collection1(&t).await;
    assert_result(
        &iterate(&mut s).await,
        doc! {"operationType": "rename", "ns": {"db": t.db0(), "coll": "collection0"}, "to": {"db": t.db0(), "coll": "collection1"}},
    );
    assert_result(&iterate(&mut s).await, doc! {"operationType": "invalidate"});
}

#[tokio::test]
async fn test_drop_and_invalidate_event_types() {
    let t = Spec::start().await;
    let mut s = watch(&t.coll0(), vec![]).await;
    t.coll0().drop().await.unwrap();
    assert_result(
        &iterate(&mut s).await,
        doc! {"operationType": "drop", "ns": {"db": t.db0(), "coll": "collection0"}},
    );
    assert_result(&iterate(&mut s).await, doc! {"operationType": "invalidate"});
}

#[tokio::test]
async fn test_consecutive_resume() {
    let t = Spec::start().await;
    t.m.fail_command(
        doc! {"times": 2}.into(),
        doc! {"failCommands": ["getMore"], "closeConnection": true},
    )
    .await;
    let c = t.coll0();
    let mut s = c
        .watch()
        .batch_size(1)
        .max_await_time(Duration::from_millis(100))
        .await
        .unwrap()
        .with_type::<bson::Document>();
    for x in 1..=3 {
        c.insert_one(doc! {"x": x}).await.unwrap();
    }
    for x in 1..=3 {
        assert_result(
            &iterate(&mut s).await,
            doc! {"operationType": "insert", "ns": {"db": t.db0(), "coll": "collection0"}, "fullDocument": {"x": x, "_id": {"$$exists": true}}},
        );
    }
    expect_commands(
        &t.m,
        &[
            doc! {"aggregate": "collection0", "cursor": {"batchSize": 1}, "pipeline": [{"$changeStream": {}}]},
        ],
    );
    t.m.fail_command_off().await;
}

#[tokio::test]
async fn cluster_time_is_present() {
    let t = Spec::start().await;
    let mut s = watch(&t.coll0(), vec![]).await;
    t.coll0().insert_one(doc! {"_id": 1}).await.unwrap();
    assert_result(
        &iterate(&mut s).await,
        doc! {"ns": {"db": t.db0(), "coll": "collection0"}, "clusterTime": {"$$exists": true}},
    );
}

/// The scenarios' rename: `collection0` onto a fresh `collection1` of the same database.
async fn rename_collection0_to_collection1(t: &Spec) {
    let _ = t.coll(&t.db0(), "collection1").drop().await;
    t.client()
        .database("admin")
        .run_command(doc! {
            "renameCollection": format!("{}.collection0", t.db0()),
            "to": format!("{}.collection1", t.db0()),
        })
        .await
        .unwrap();
}
