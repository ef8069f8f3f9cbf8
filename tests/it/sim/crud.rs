//! Handshake, CRUD, operators, filters, cursors.

use bson::{Bson, Document, doc, oid::ObjectId};
use futures_util::TryStreamExt;
use mongodb::options::ReturnDocument;

use crate::support::mongo::{TestMongo, require_sim};

#[tokio::test]
async fn handshake_selects_the_primary_with_replica_set_uri() {
    let m = TestMongo::start().await;
    m.db().run_command(doc! {"ping": 1}).await.unwrap();
    let hello = m
        .client()
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await
        .unwrap();
    assert_eq!(hello.get_bool("isWritablePrimary").ok(), Some(true));
    assert!(hello.get_str("setName").is_ok());
    if let Some(sim) = m.sim() {
        assert!(m.uri().contains("replicaSet=rs0"), "{}", m.uri());
        let info = m.db().run_command(doc! {"buildInfo": 1}).await.unwrap();
        assert_eq!(info.get_bool("simulator").ok(), Some(true));
        let log = sim.command_log();
        let first = &log[0];
        assert!(
            first.contains_key("isMaster") || first.contains_key("hello"),
            "{first:?}"
        );
        let ping = sim.commands_named("ping");
        assert!(
            ping[0].contains_key("lsid"),
            "implicit sessions are on: {:?}",
            ping[0]
        );
    }
}

#[tokio::test]
async fn crud_and_update_operators() {
    let m = TestMongo::start().await;
    let c = m.db().collection::<Document>("items");
    c.insert_many((1..=5).map(|i| doc! {"_id": i, "n": i, "tags": ["a"]}))
        .await
        .unwrap();
    let dup = c.insert_one(doc! {"_id": 1}).await.unwrap_err();
    assert!(dup.to_string().contains("11000"), "{dup}");

    let r = c
        .update_one(
            doc! {"_id": 1},
            doc! {"$set": {"s.x": "v"}, "$inc": {"n": 10}, "$push": {"tags": "b"},
            "$addToSet": {"tags": "a"}, "$unset": {"missing": ""}},
        )
        .await
        .unwrap();
    assert_eq!((r.matched_count, r.modified_count), (1, 1));
    let d = c.find_one(doc! {"_id": 1}).await.unwrap().unwrap();
    assert_eq!(
        d,
        doc! {"_id": 1, "n": 11, "tags": ["a", "b"], "s": {"x": "v"}}
    );

    c.update_one(
        doc! {"_id": 1},
        doc! {"$pull": {"tags": "a"}, "$unset": {"s": ""}},
    )
    .await
    .unwrap();
    assert_eq!(
        c.find_one(doc! {"_id": 1}).await.unwrap().unwrap(),
        doc! {"_id": 1, "n": 11, "tags": ["b"]}
    );

    // no-op update: matched, not modified
    let r = c
        .update_one(doc! {"_id": 1}, doc! {"$set": {"n": 11}})
        .await
        .unwrap();
    assert_eq!((r.matched_count, r.modified_count), (1, 0));

    // multi
    let r = c
        .update_many(doc! {"n": {"$lte": 5}}, doc! {"$set": {"small": true}})
        .await
        .unwrap();
    assert_eq!(r.modified_count, 4);

    // replacement keeps _id
    c.replace_one(doc! {"_id": 2}, doc! {"only": 1})
        .await
        .unwrap();
    assert_eq!(
        c.find_one(doc! {"_id": 2}).await.unwrap().unwrap(),
        doc! {"_id": 2, "only": 1}
    );

    // upserts: operator and replacement
    let r = c
        .update_one(
            doc! {"_id": 9, "k": "x"},
            doc! {"$set": {"v": 1}, "$setOnInsert": {"new": true}},
        )
        .upsert(true)
        .await
        .unwrap();
    assert_eq!(r.upserted_id, Some(Bson::Int32(9)));
    assert_eq!(
        c.find_one(doc! {"_id": 9}).await.unwrap().unwrap(),
        doc! {"_id": 9, "k": "x", "v": 1, "new": true}
    );
    let r = c
        .replace_one(doc! {"_id": 10}, doc! {"r": 1})
        .upsert(true)
        .await
        .unwrap();
    assert_eq!(r.upserted_id, Some(Bson::Int32(10)));

    // deletes
    assert_eq!(
        c.delete_one(doc! {"_id": 10}).await.unwrap().deleted_count,
        1
    );
    assert_eq!(
        c.delete_many(doc! {"small": true})
            .await
            .unwrap()
            .deleted_count,
        3
    );
    assert_eq!(c.count_documents(doc! {}).await.unwrap(), 3);
    assert_eq!(c.estimated_document_count().await.unwrap(), 3);

    // findAndModify
    let after = c
        .find_one_and_update(doc! {"_id": 1}, doc! {"$inc": {"n": 1}})
        .return_document(ReturnDocument::After)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.get_i32("n").ok(), Some(12));
    let before = c
        .find_one_and_delete(doc! {"_id": 9})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(before.get_i32("v").ok(), Some(1));
    let up = c
        .find_one_and_update(doc! {"_id": 20}, doc! {"$set": {"z": 1}})
        .upsert(true)
        .return_document(ReturnDocument::After)
        .await
        .unwrap();
    assert_eq!(up, Some(doc! {"_id": 20, "z": 1}));
}

#[tokio::test]
async fn filters_match_like_mongodb() {
    let m = TestMongo::start().await;
    let c = m.db().collection::<Document>("emp");
    let work = ObjectId::new();
    c.insert_many(vec![
        doc! {"_id": 1, "employeeWork": [ObjectId::new(), work], "a": {"b": 1}, "s": "x"},
        doc! {"_id": 2, "employeeWork": [], "a": {"b": 2}, "s": "y"},
        doc! {"_id": 3, "a": {"b": 3}, "n": Bson::Null},
        doc! {"_id": 4, "a": [{"b": 4}, {"b": 5}], "s": 7},
    ])
    .await
    .unwrap();
    let ids = |f: Document| {
        let c = c.clone();
        async move {
            let v: Vec<Document> = c
                .find(f)
                .sort(doc! {"_id": 1})
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            v.iter()
                .map(|d| d.get_i32("_id").unwrap())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(ids(doc! {"employeeWork": work}).await, vec![1]);
    assert_eq!(ids(doc! {"employeeWork": {"$in": [work]}}).await, vec![1]);
    assert_eq!(
        ids(doc! {"a.b": {"$gte": 2, "$lt": 5}}).await,
        vec![2, 3, 4]
    );
    assert_eq!(ids(doc! {"a.b": 5}).await, vec![4]);
    assert_eq!(
        ids(doc! {"s": {"$gt": "a"}}).await,
        vec![1, 2],
        "type bracketing"
    );
    assert_eq!(ids(doc! {"s": {"$ne": "x"}}).await, vec![2, 3, 4]);
    assert_eq!(ids(doc! {"s": {"$nin": ["x", "y"]}}).await, vec![3, 4]);
    assert_eq!(
        ids(doc! {"n": Bson::Null}).await,
        vec![1, 2, 3, 4],
        "null matches missing"
    );
    assert_eq!(ids(doc! {"n": {"$exists": true}}).await, vec![3]);
    assert_eq!(ids(doc! {"$or": [{"_id": 1}, {"s": 7}]}).await, vec![1, 4]);
    assert_eq!(
        ids(doc! {"$and": [{"_id": {"$gt": 1}}, {"_id": {"$eq": 2}}]}).await,
        vec![2]
    );
    assert_eq!(ids(doc! {"_id": {"$gt": 1}, "s": "y"}).await, vec![2]);

    // sort, skip, limit, projection
    let v: Vec<Document> = c
        .find(doc! {})
        .sort(doc! {"_id": -1})
        .skip(1)
        .limit(2)
        .projection(doc! {"s": 1})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(v, vec![doc! {"_id": 3}, doc! {"_id": 2, "s": "y"}]);
    let names = m.db().list_collection_names().await.unwrap();
    assert!(names.contains(&"emp".to_string()));
    let dbs = m.client().list_database_names().await.unwrap();
    assert!(dbs.contains(&m.db_name().to_string()));
}

#[tokio::test]
async fn id_order_follows_bson_type_classes() {
    let m = TestMongo::start().await;
    let c = m.db().collection::<Document>("mixed");
    let oid = ObjectId::new();
    c.insert_many(vec![
        doc! {"_id": oid},
        doc! {"_id": "b"},
        doc! {"_id": 2.5},
        doc! {"_id": 1i64},
        doc! {"_id": 3},
        doc! {"_id": "a"},
    ])
    .await
    .unwrap();
    let v: Vec<Document> = c
        .find(doc! {})
        .sort(doc! {"_id": 1})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let ids: Vec<Bson> = v.iter().map(|d| d.get("_id").unwrap().clone()).collect();
    assert_eq!(
        ids,
        vec![
            Bson::Int64(1),
            Bson::Double(2.5),
            Bson::Int32(3),
            Bson::String("a".into()),
            Bson::String("b".into()),
            Bson::ObjectId(oid)
        ]
    );
}

#[tokio::test]
async fn id_range_scan_in_batches_and_early_kill() {
    let m = TestMongo::start().await;
    let c = m.db().collection::<Document>("items");
    c.insert_many((1..=20).map(|i| doc! {"_id": i, "v": i}))
        .await
        .unwrap();
    let mut cur = c
        .find(doc! {"_id": {"$gt": 2, "$lte": 9}})
        .sort(doc! {"_id": 1})
        .batch_size(3)
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(d) = cur.try_next().await.unwrap() {
        got.push(d.get_i32("_id").unwrap());
    }
    assert_eq!(got, (3..=9).collect::<Vec<_>>());
    if let Some(sim) = m.sim() {
        let gm = sim.commands_named("getMore");
        assert_eq!(gm.len(), 2, "3 + 3 + 1 in find + 2 getMores: {gm:?}");
        assert!(
            gm.iter()
                .all(|g| matches!(g.get("getMore"), Some(Bson::Int64(_))))
        );
        assert_eq!(gm[0].get_str("collection").ok(), Some("items"));
        assert!(
            sim.commands_named("killCursors").is_empty(),
            "exhausted cursor is not killed"
        );
    }

    // Abandon a cursor half-way: the driver kills it.
    {
        let mut cur = c.find(doc! {}).batch_size(5).await.unwrap();
        for _ in 0..7 {
            cur.try_next().await.unwrap().unwrap();
        }
    }
    if let Some(sim) = m.sim() {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while sim.commands_named("killCursors").is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let kc = sim.commands_named("killCursors");
        assert_eq!(kc.len(), 1, "{kc:?}");
        assert_eq!(kc[0].get_str("killCursors").ok(), Some("items"));
        assert_eq!(sim.open_cursors(), 0);
    }
}

#[tokio::test]
async fn retryable_write_is_applied_once() {
    let m = TestMongo::start().await;
    let sim = require_sim!(m, "losing a reply after the write is applied");
    let c = m.db().collection::<Document>("once");
    sim.fail_next("update", mongosim::Fault::CloseAfterExecute);
    c.update_one(doc! {"_id": 1}, doc! {"$inc": {"n": 1}})
        .upsert(true)
        .await
        .unwrap();
    assert_eq!(
        c.find_one(doc! {"_id": 1}).await.unwrap().unwrap(),
        doc! {"_id": 1, "n": 1}
    );
    let ups = sim.commands_named("update");
    assert_eq!(ups.len(), 2, "sent twice: {ups:?}");
    assert_eq!(ups[0].get("txnNumber"), ups[1].get("txnNumber"));
    assert_eq!(ups[0].get("lsid"), ups[1].get("lsid"));
}

#[tokio::test]
async fn drop_and_list() {
    let m = TestMongo::start().await;
    let db = m.db();
    db.create_collection("empty").await.unwrap();
    db.collection::<Document>("full")
        .insert_one(doc! {"x": 1})
        .await
        .unwrap();
    let mut names = db.list_collection_names().await.unwrap();
    names.sort();
    assert_eq!(names, vec!["empty", "full"]);
    db.collection::<Document>("full").drop().await.unwrap();
    assert_eq!(db.list_collection_names().await.unwrap(), vec!["empty"]);
    db.drop().await.unwrap();
    assert!(db.list_collection_names().await.unwrap().is_empty());
}
