//! Change streams: event shapes, resume, history loss, database streams, invalidate.

use std::time::Duration;

use bson::{Bson, Document, doc};
use mongodb::change_stream::event::ResumeToken;
use mongodb::options::FullDocumentType;

use super::{change_stream_stage, error_code, next_event, try_next_event, watch};
use crate::support::mongo::{TestMongo, require_sim};

const WAIT: Duration = Duration::from_secs(5);

fn token_of(ev: &Document) -> ResumeToken {
    bson::deserialize_from_bson(Bson::Document(ev.get_document("_id").unwrap().clone())).unwrap()
}

#[tokio::test]
async fn events_have_the_server_shapes() {
    let m = TestMongo::start().await;
    let c = m.db().collection::<Document>("items");
    let mut s = c
        .watch()
        .full_document(FullDocumentType::UpdateLookup)
        .max_await_time(Duration::from_millis(200))
        .batch_size(2)
        .await
        .unwrap()
        .with_type::<Document>();
    let initial = s
        .resume_token()
        .expect("postBatchResumeToken of the aggregate");
    c.insert_one(doc! {"_id": 1, "v": 1, "arr": [1, 2]})
        .await
        .unwrap();
    c.update_one(
        doc! {"_id": 1},
        doc! {"$set": {"v": 2}, "$unset": {"arr": ""}},
    )
    .await
    .unwrap();
    c.replace_one(doc! {"_id": 1}, doc! {"w": 3}).await.unwrap();
    c.delete_one(doc! {"_id": 1}).await.unwrap();

    let ins = next_event(&mut s, WAIT).await.unwrap();
    assert_eq!(ins.get_str("operationType").ok(), Some("insert"));
    assert!(ins.get_document("_id").unwrap().get_str("_data").is_ok());
    assert!(matches!(ins.get("clusterTime"), Some(Bson::Timestamp(_))));
    assert!(matches!(ins.get("wallTime"), Some(Bson::DateTime(_))));
    assert_eq!(
        ins.get_document("ns").unwrap(),
        &doc! {"db": m.db_name(), "coll": "items"}
    );
    assert_eq!(ins.get_document("documentKey").unwrap(), &doc! {"_id": 1});
    assert_eq!(
        ins.get_document("fullDocument").unwrap(),
        &doc! {"_id": 1, "v": 1, "arr": [1, 2]},
        "snapshot, not a reference"
    );

    let upd = next_event(&mut s, WAIT).await.unwrap();
    assert_eq!(upd.get_str("operationType").ok(), Some("update"));
    let ud = upd.get_document("updateDescription").unwrap();
    assert_eq!(ud.get_document("updatedFields").unwrap(), &doc! {"v": 2});
    assert_eq!(
        ud.get_array("removedFields").unwrap(),
        &vec![Bson::String("arr".into())]
    );
    assert_eq!(
        ud.get_array("truncatedArrays").unwrap(),
        &Vec::<Bson>::new()
    );
    // updateLookup: the current document at lookup time (already deleted here -> null, or
    // the replaced one), never the insert snapshot.
    assert!(matches!(
        upd.get("fullDocument"),
        Some(Bson::Null) | Some(Bson::Document(_))
    ));

    let rep = next_event(&mut s, WAIT).await.unwrap();
    assert_eq!(rep.get_str("operationType").ok(), Some("replace"));
    assert_eq!(
        rep.get_document("fullDocument").unwrap(),
        &doc! {"_id": 1, "w": 3}
    );
    let del = next_event(&mut s, WAIT).await.unwrap();
    assert_eq!(del.get_str("operationType").ok(), Some("delete"));
    assert_eq!(del.get_document("documentKey").unwrap(), &doc! {"_id": 1});
    assert!(!del.contains_key("fullDocument"));

    let tokens: Vec<&Document> = [&ins, &upd, &rep, &del]
        .iter()
        .map(|e| e.get_document("_id").unwrap())
        .collect();
    for w in tokens.windows(2) {
        assert_ne!(w[0], w[1]);
    }
    assert_ne!(s.resume_token(), Some(initial));
    assert_eq!(s.resume_token(), Some(token_of(&del)));

    if let Some(sim) = m.sim() {
        let agg = sim.commands_named("aggregate");
        assert_eq!(
            change_stream_stage(&agg[0]).unwrap(),
            doc! {"fullDocument": "updateLookup"}
        );
        let gm = sim.commands_named("getMore");
        assert_eq!(
            gm[0]
                .get_i64("maxTimeMS")
                .ok()
                .or(gm[0].get_i32("maxTimeMS").ok().map(i64::from)),
            Some(200)
        );
    }
}

#[tokio::test]
async fn idle_stream_token_advances_with_post_batch_resume_token() {
    let m = TestMongo::start().await;
    let c = m.db().collection::<Document>("watched");
    let other = m.db().collection::<Document>("other");
    let mut s = c
        .watch()
        .max_await_time(Duration::from_millis(100))
        .await
        .unwrap();
    let t0 = s.resume_token().unwrap();
    other.insert_one(doc! {"x": 1}).await.unwrap();
    let mut advanced = false;
    for _ in 0..20 {
        assert!(s.next_if_any().await.unwrap().is_none());
        if s.resume_token() != Some(t0.clone()) {
            advanced = true;
            break;
        }
    }
    assert!(
        advanced,
        "an idle stream's token must move past writes to other collections"
    );
}

#[tokio::test]
async fn resume_after_dropped_connection_carries_the_last_token() {
    let m = TestMongo::start().await;
    let c = m.db().collection::<Document>("items");
    let mut s = watch(&c, 200).await;
    c.insert_many(vec![doc! {"_id": 1}, doc! {"_id": 2}])
        .await
        .unwrap();
    let _e1 = next_event(&mut s, WAIT).await.unwrap();
    let e2 = next_event(&mut s, WAIT).await.unwrap();
    m.fail_command(
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["getMore"], "closeConnection": true},
    )
    .await;
    c.insert_one(doc! {"_id": 3}).await.unwrap();
    let e3 = next_event(&mut s, WAIT).await.unwrap();
    assert_eq!(e3.get_document("documentKey").unwrap(), &doc! {"_id": 3});
    if let Some(sim) = m.sim() {
        let agg = sim.commands_named("aggregate");
        assert_eq!(agg.len(), 2, "{agg:?}");
        let stage = change_stream_stage(&agg[1]).unwrap();
        assert_eq!(
            stage.get_document("resumeAfter").unwrap(),
            e2.get_document("_id").unwrap()
        );
    }
    m.fail_command_off().await;
}

#[tokio::test]
async fn labelled_errors_resume_and_unlabelled_ones_surface() {
    let m = TestMongo::start().await;
    let c = m.db().collection::<Document>("items");
    let mut s = watch(&c, 200).await;
    // 10107 raised once the getMore has its change-stream cursor: the server labels it
    // ResumableChangeStreamError (failCommand fires before that and adds no label).
    m.client()
        .database("admin")
        .run_command(doc! {
            "configureFailPoint": "failGetMoreAfterCursorCheckout",
            "mode": {"times": 1},
            "data": {"errorCode": 10107},
        })
        .await
        .unwrap();
    c.insert_one(doc! {"_id": 1}).await.unwrap();
    assert!(next_event(&mut s, WAIT).await.is_some());
    // 43 CursorNotFound: resumable without a label.
    m.fail_command(
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["getMore"], "errorCode": 43},
    )
    .await;
    c.insert_one(doc! {"_id": 2}).await.unwrap();
    assert!(next_event(&mut s, WAIT).await.is_some());
    // An explicit empty label list: 10107 is no longer resumable.
    m.fail_command(
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["getMore"], "errorCode": 10107, "errorLabels": []},
    )
    .await;
    c.insert_one(doc! {"_id": 3}).await.unwrap();
    let err = try_next_event(&mut s, WAIT).await.unwrap_err();
    assert_eq!(error_code(&err), Some(10107), "{err}");
    // A plain error (code 2) reaches the caller.
    let mut s = watch(&c, 200).await;
    m.fail_command(
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["getMore"], "errorCode": 2},
    )
    .await;
    let err = try_next_event(&mut s, WAIT).await.unwrap_err();
    assert_eq!(error_code(&err), Some(2), "{err}");
    if let Some(sim) = m.sim() {
        assert_eq!(
            sim.commands_named("aggregate").len(),
            4,
            "two resumes plus two opens"
        );
    }
}

#[tokio::test]
async fn history_lost_on_resume_is_286() {
    let m = TestMongo::start().await;
    let sim = require_sim!(m, "truncating the oplog");
    let c = m.db().collection::<Document>("items");
    let mut s = watch(&c, 100).await;
    c.insert_one(doc! {"_id": 1}).await.unwrap();
    let e1 = next_event(&mut s, WAIT).await.unwrap();
    drop(s);
    c.insert_one(doc! {"_id": 2}).await.unwrap();
    sim.truncate_oplog();
    let err = c.watch().resume_after(token_of(&e1)).await.unwrap_err();
    assert_eq!(error_code(&err), Some(286), "{err}");
    // startAtOperationTime before the truncation point is lost as well
    let t = e1.get_timestamp("clusterTime").unwrap();
    let err = c.watch().start_at_operation_time(t).await.unwrap_err();
    assert_eq!(error_code(&err), Some(286), "{err}");
}

#[tokio::test]
async fn history_lost_on_a_live_cursor_is_286() {
    let m = TestMongo::start().await;
    let sim = require_sim!(m, "a tiny oplog window");
    let c = m.db().collection::<Document>("items");
    let mut s = watch(&c, 100).await;
    sim.set_oplog_window(1);
    c.insert_many(vec![doc! {"_id": 1}, doc! {"_id": 2}, doc! {"_id": 3}])
        .await
        .unwrap();
    let err = try_next_event(&mut s, WAIT).await.unwrap_err();
    assert_eq!(error_code(&err), Some(286), "{err}");
    let last = sim.commands_named("getMore").len();
    assert!(last >= 1);
    assert_eq!(
        sim.commands_named("aggregate").len(),
        1,
        "286 on getMore is not resumed"
    );

    // Same after a dropped connection: the automatic resume gets 286 and it surfaces.
    sim.set_oplog_window(None);
    let mut s = watch(&c, 100).await;
    c.insert_one(doc! {"_id": 4}).await.unwrap();
    let e4 = next_event(&mut s, WAIT).await.unwrap();
    assert_eq!(e4.get_document("documentKey").unwrap(), &doc! {"_id": 4});
    c.insert_one(doc! {"_id": 5}).await.unwrap();
    sim.truncate_oplog();
    sim.fail_next("getMore", mongosim::Fault::CloseConnection);
    let err = try_next_event(&mut s, WAIT).await.unwrap_err();
    assert_eq!(error_code(&err), Some(286), "{err}");
}

#[tokio::test]
async fn database_stream_spans_collections() {
    let m = TestMongo::start().await;
    let db = m.db();
    let mut s = db
        .watch()
        .pipeline([doc! {"$match": {"ns.coll": {"$in": ["a", "b"]}, "operationType": {"$in": ["insert", "update"]}}}])
        .max_await_time(Duration::from_millis(200))
        .await
        .unwrap()
        .with_type::<Document>();
    db.collection::<Document>("a")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
    db.collection::<Document>("skip")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
    db.collection::<Document>("b")
        .insert_one(doc! {"_id": 2})
        .await
        .unwrap();
    db.collection::<Document>("a")
        .delete_one(doc! {"_id": 1})
        .await
        .unwrap();
    db.collection::<Document>("b")
        .update_one(doc! {"_id": 2}, doc! {"$set": {"x": 1}})
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let e = next_event(&mut s, WAIT).await.unwrap();
        seen.push((
            e.get_document("ns")
                .unwrap()
                .get_str("coll")
                .unwrap()
                .to_string(),
            e.get_str("operationType").unwrap().to_string(),
        ));
    }
    assert_eq!(
        seen,
        vec![
            ("a".into(), "insert".into()),
            ("b".into(), "insert".into()),
            ("b".into(), "update".into())
        ]
    );
    if let Some(sim) = m.sim() {
        let agg = &sim.commands_named("aggregate")[0];
        assert_eq!(agg.get_i32("aggregate").ok(), Some(1));
        let gm = &sim.commands_named("getMore")[0];
        assert_eq!(gm.get_str("collection").ok(), Some("$cmd.aggregate"));
    }
    // A dropped collection does not invalidate a database stream.
    db.collection::<Document>("a").drop().await.unwrap();
    db.collection::<Document>("a")
        .insert_one(doc! {"_id": 3})
        .await
        .unwrap();
    let e = next_event(&mut s, WAIT).await.unwrap();
    assert_eq!(e.get_document("documentKey").unwrap(), &doc! {"_id": 3});
    // dropDatabase does.
    db.drop().await.unwrap();
    let mut last = None;
    while let Some(e) = next_event(&mut s, WAIT).await {
        let op = e.get_str("operationType").unwrap().to_string();
        last = Some(op.clone());
        if op == "invalidate" {
            break;
        }
    }
    assert_eq!(last.as_deref(), Some("invalidate"));
    assert!(!s.is_alive());
}

#[tokio::test]
async fn drop_invalidates_a_collection_stream() {
    let m = TestMongo::start().await;
    let c = m.db().collection::<Document>("gone");
    c.insert_one(doc! {"_id": 0}).await.unwrap();
    let mut s = watch(&c, 200).await;
    c.insert_one(doc! {"_id": 1}).await.unwrap();
    c.drop().await.unwrap();
    let ops: Vec<String> = [
        next_event(&mut s, WAIT).await.unwrap(),
        next_event(&mut s, WAIT).await.unwrap(),
    ]
    .iter()
    .map(|e| e.get_str("operationType").unwrap().to_string())
    .collect();
    assert_eq!(ops, vec!["insert", "drop"]);
    let inv = next_event(&mut s, WAIT).await.unwrap();
    assert_eq!(inv.get_str("operationType").ok(), Some("invalidate"));
    assert!(!s.is_alive());
    // resumeAfter an invalidate is rejected (260); startAfter is allowed.
    let err = c.watch().resume_after(token_of(&inv)).await.unwrap_err();
    assert_eq!(error_code(&err), Some(260), "{err}");
    let mut s2 = c
        .watch()
        .start_after(token_of(&inv))
        .max_await_time(Duration::from_millis(200))
        .await
        .unwrap()
        .with_type::<Document>();
    c.insert_one(doc! {"_id": 2}).await.unwrap();
    let e = next_event(&mut s2, WAIT).await.unwrap();
    assert_eq!(e.get_document("documentKey").unwrap(), &doc! {"_id": 2});
}

#[tokio::test]
async fn start_at_operation_time_and_project() {
    let m = TestMongo::start().await;
    let c = m.db().collection::<Document>("items");
    c.insert_one(doc! {"_id": 1}).await.unwrap();
    let r = m.db().run_command(doc! {"ping": 1}).await.unwrap();
    let t = r.get_timestamp("operationTime").unwrap();
    c.insert_one(doc! {"_id": 2}).await.unwrap();
    let mut s = c
        .watch()
        .start_at_operation_time(t)
        .pipeline([doc! {"$project": {"documentKey": 1, "operationType": 1}}])
        .max_await_time(Duration::from_millis(200))
        .await
        .unwrap()
        .with_type::<Document>();
    let e = next_event(&mut s, WAIT).await.unwrap();
    // operationTime of the ping is the insert of _id 1, so the stream starts there.
    let key = e.get_document("documentKey").unwrap().clone();
    assert!(key == doc! {"_id": 1} || key == doc! {"_id": 2}, "{e:?}");
    assert!(!e.contains_key("fullDocument"), "projected away: {e:?}");
    assert!(e.contains_key("_id"));
}

#[tokio::test]
async fn pre_and_post_images() {
    let m = TestMongo::start().await;
    let db = m.db();
    db.create_collection("img").await.unwrap();
    db.run_command(doc! {"collMod": "img", "changeStreamPreAndPostImages": {"enabled": true}})
        .await
        .unwrap();
    let c = db.collection::<Document>("img");
    c.insert_one(doc! {"_id": 1, "v": 1}).await.unwrap();
    let mut s = c
        .watch()
        .full_document(FullDocumentType::WhenAvailable)
        .full_document_before_change(mongodb::options::FullDocumentBeforeChangeType::WhenAvailable)
        .max_await_time(Duration::from_millis(200))
        .await
        .unwrap()
        .with_type::<Document>();
    c.update_one(doc! {"_id": 1}, doc! {"$set": {"v": 2}})
        .await
        .unwrap();
    c.update_one(doc! {"_id": 1}, doc! {"$set": {"v": 3}})
        .await
        .unwrap();
    c.delete_one(doc! {"_id": 1}).await.unwrap();
    let u1 = next_event(&mut s, WAIT).await.unwrap();
    assert_eq!(
        u1.get_document("fullDocument").unwrap(),
        &doc! {"_id": 1, "v": 2},
        "post-image at event time"
    );
    assert_eq!(
        u1.get_document("fullDocumentBeforeChange").unwrap(),
        &doc! {"_id": 1, "v": 1}
    );
    let u2 = next_event(&mut s, WAIT).await.unwrap();
    assert_eq!(
        u2.get_document("fullDocument").unwrap(),
        &doc! {"_id": 1, "v": 3}
    );
    let d = next_event(&mut s, WAIT).await.unwrap();
    assert_eq!(
        d.get_document("fullDocumentBeforeChange").unwrap(),
        &doc! {"_id": 1, "v": 3}
    );
}

#[tokio::test]
async fn rename_invalidates_and_cluster_stream_sees_all_databases() {
    let m = TestMongo::start().await;
    let db = m.db();
    let c = db.collection::<Document>("before");
    c.insert_one(doc! {"_id": 1}).await.unwrap();
    let mut cluster = m
        .client()
        .watch()
        .pipeline([
            doc! {"$match": {"ns.db": {"$in": [m.db_name(), format!("{}_2", m.db_name())]}}},
        ])
        .max_await_time(Duration::from_millis(200))
        .await
        .unwrap()
        .with_type::<Document>();
    let mut s = watch(&c, 200).await;
    m.client()
        .database("admin")
        .run_command(doc! {"renameCollection": format!("{}.before", m.db_name()), "to": format!("{}.after", m.db_name())})
        .await
        .unwrap();
    let r = next_event(&mut s, WAIT).await.unwrap();
    assert_eq!(r.get_str("operationType").ok(), Some("rename"));
    assert_eq!(
        r.get_document("to").unwrap(),
        &doc! {"db": m.db_name(), "coll": "after"}
    );
    let inv = next_event(&mut s, WAIT).await.unwrap();
    assert_eq!(inv.get_str("operationType").ok(), Some("invalidate"));

    let other = m.client().database(&format!("{}_2", m.db_name()));
    other
        .collection::<Document>("x")
        .insert_one(doc! {"_id": 7})
        .await
        .unwrap();
    let e = next_event(&mut cluster, WAIT).await.unwrap();
    assert_eq!(e.get_str("operationType").ok(), Some("rename"));
    let e = next_event(&mut cluster, WAIT).await.unwrap();
    assert_eq!(
        e.get_document("ns").unwrap().get_str("db").ok(),
        Some(format!("{}_2", m.db_name()).as_str())
    );
    other.drop().await.unwrap();
}

#[tokio::test]
async fn streaming_hello_mode_survives_step_down() {
    let sim = mongosim::Sim::start_with(mongosim::SimConfig {
        streaming_hello: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let client = mongodb::Client::with_uri_str(sim.uri()).await.unwrap();
    let c = client.database("s").collection::<Document>("items");
    let mut s = watch(&c, 200).await;
    c.insert_one(doc! {"_id": 1}).await.unwrap();
    next_event(&mut s, WAIT).await.unwrap();
    sim.step_down(Duration::from_millis(800));
    let w = {
        let c = c.clone();
        tokio::spawn(async move { c.insert_one(doc! {"_id": 2}).await })
    };
    let e = next_event(&mut s, WAIT).await.unwrap();
    assert_eq!(e.get_document("documentKey").unwrap(), &doc! {"_id": 2});
    w.await.unwrap().unwrap();
    let hellos = sim
        .command_log()
        .iter()
        .filter(|c| c.contains_key("topologyVersion"))
        .count();
    assert!(hellos >= 1, "the monitor streams (awaitable hello)");
    assert!(hellos < 50, "no hot loop: {hellos} awaitable hellos");
}

#[tokio::test]
async fn malformed_messages_close_only_that_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let m = TestMongo::start().await;
    let sim = require_sim!(m, "sending garbage on the wire");
    for garbage in [
        vec![0u8; 3],
        vec![16, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xdd, 7, 0, 0],
        {
            let mut v = vec![
                40, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xdd, 7, 0, 0, 0, 0, 0, 0, 1,
            ];
            v.extend_from_slice(&[0xff; 19]);
            v
        },
        vec![0xff; 64],
    ] {
        let mut t = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
        t.write_all(&garbage).await.unwrap();
        let _ = t.shutdown().await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), t.read_to_end(&mut buf)).await;
    }
    m.db().run_command(doc! {"ping": 1}).await.unwrap();
}

#[tokio::test]
async fn tokens_with_type_bits_resume_as_whole_documents() {
    let m = TestMongo::start_with(mongosim::SimConfig {
        token_type_bits: true,
        ..Default::default()
    })
    .await;
    let c = m.db().collection::<Document>("items");
    let mut s = watch(&c, 100).await;
    c.insert_many((1..=4).map(|i| doc! {"_id": i}))
        .await
        .unwrap();
    let mut evs = Vec::new();
    for _ in 0..4 {
        evs.push(next_event(&mut s, WAIT).await.unwrap());
    }
    if m.sim().is_some() {
        assert!(
            evs.iter()
                .any(|e| e.get_document("_id").unwrap().contains_key("_typeBits"))
        );
    }
    // Resuming from the whole token document (whatever it holds) continues after it.
    let tok = token_of(&evs[1]);
    let mut s2 = c
        .watch()
        .resume_after(tok)
        .max_await_time(Duration::from_millis(100))
        .await
        .unwrap()
        .with_type::<Document>();
    let e = next_event(&mut s2, WAIT).await.unwrap();
    assert_eq!(e.get_document("documentKey").unwrap(), &doc! {"_id": 3});
}
