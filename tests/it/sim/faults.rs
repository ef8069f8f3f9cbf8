//! Step-down, transactions, blocking, and the driver defect described in docs/mongosim.md.

use std::time::{Duration, Instant};

use bson::{Bson, Document, doc};

use super::{change_stream_stage, next_event, try_next_event, watch};
use crate::support::mongo::{TestMongo, require_sim};

const WAIT: Duration = Duration::from_secs(8);

#[tokio::test]
async fn step_down_resumes_the_stream_and_retries_the_write() {
    let m = TestMongo::start().await;
    let sim = require_sim!(m, "a timed primary step-down");
    let c = m.db().collection::<Document>("items");
    let mut s = watch(&c, 300).await;
    c.insert_one(doc! {"_id": 1}).await.unwrap();
    let e1 = next_event(&mut s, WAIT).await.unwrap();
    let started = Instant::now();
    sim.step_down(Duration::from_millis(1500));
    // A write during the step-down gets 10107 + RetryableWriteError and is retried.
    let writer = {
        let c = c.clone();
        tokio::spawn(async move { c.insert_one(doc! {"_id": 2}).await })
    };
    let e2 = next_event(&mut s, WAIT)
        .await
        .expect("event after the new election");
    assert_eq!(e2.get_document("documentKey").unwrap(), &doc! {"_id": 2});
    writer.await.unwrap().unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );
    assert!(sim.is_primary());

    let inserts = sim.commands_named("insert");
    let two: Vec<&Document> = inserts
        .iter()
        .filter(|i| i.get("txnNumber") == inserts.last().unwrap().get("txnNumber"))
        .collect();
    assert!(
        two.len() >= 2,
        "the insert was retried with the same txnNumber: {inserts:?}"
    );
    let agg = sim.commands_named("aggregate");
    let resume = change_stream_stage(agg.last().unwrap()).unwrap();
    assert_eq!(
        resume.get_document("resumeAfter").unwrap(),
        e1.get_document("_id").unwrap()
    );
}

#[tokio::test]
async fn transaction_events_share_one_cluster_time() {
    let m = TestMongo::start().await;
    let c = m.db().collection::<Document>("tx");
    c.insert_one(doc! {"_id": 0}).await.unwrap();
    let mut s = watch(&c, 200).await;
    let mut session = m.client().start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    c.insert_one(doc! {"_id": 1})
        .session(&mut session)
        .await
        .unwrap();
    c.update_one(doc! {"_id": 0}, doc! {"$set": {"x": 1}})
        .session(&mut session)
        .await
        .unwrap();
    c.delete_one(doc! {"_id": 0})
        .session(&mut session)
        .await
        .unwrap();
    session.commit_transaction().await.unwrap();
    // An aborted transaction leaves nothing behind.
    session.start_transaction().await.unwrap();
    c.insert_one(doc! {"_id": 99})
        .session(&mut session)
        .await
        .unwrap();
    session.abort_transaction().await.unwrap();
    assert!(c.find_one(doc! {"_id": 99}).await.unwrap().is_none());
    c.insert_one(doc! {"_id": 2}).await.unwrap();

    let evs: Vec<Document> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(next_event(&mut s, WAIT).await.unwrap());
        }
        v
    };
    let ops: Vec<&str> = evs
        .iter()
        .map(|e| e.get_str("operationType").unwrap())
        .collect();
    assert_eq!(ops, vec!["insert", "update", "delete", "insert"]);
    let t: Vec<bson::Timestamp> = evs
        .iter()
        .map(|e| e.get_timestamp("clusterTime").unwrap())
        .collect();
    assert_eq!(t[0], t[1]);
    assert_eq!(t[1], t[2]);
    assert!((t[3].time, t[3].increment) > (t[2].time, t[2].increment));
    for e in &evs[..3] {
        assert!(matches!(e.get("txnNumber"), Some(Bson::Int64(_))), "{e:?}");
        assert!(e.get_document("lsid").is_ok(), "{e:?}");
    }
    assert!(!evs[3].contains_key("txnNumber"));
    let toks: Vec<String> = evs
        .iter()
        .map(|e| {
            e.get_document("_id")
                .unwrap()
                .get_str("_data")
                .unwrap()
                .to_string()
        })
        .collect();
    for w in toks.windows(2) {
        assert_ne!(w[0], w[1], "distinct tokens within a transaction");
    }
    if m.sim().is_some() {
        for w in toks.windows(2) {
            assert!(w[0] < w[1], "simulator tokens sort in oplog order");
        }
    }
}

#[tokio::test]
async fn block_connection_delays_the_command() {
    let m = TestMongo::start().await;
    m.fail_command(
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["find"], "blockConnection": true, "blockTimeMS": 400},
    )
    .await;
    let c = m.db().collection::<Document>("b");
    let t = Instant::now();
    c.find_one(doc! {}).await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(390),
        "{:?}",
        t.elapsed()
    );
    let t = Instant::now();
    c.find_one(doc! {}).await.unwrap();
    assert!(t.elapsed() < Duration::from_millis(390));
}

#[tokio::test]
async fn skip_mode_and_write_error_labels() {
    let m = TestMongo::start().await;
    let c = m.db().collection::<Document>("w");
    // skip 1 then fail every insert with 91: the first insert passes, the next one gets
    // ShutdownInProgress + RetryableWriteError, is retried once and fails again.
    m.fail_command(
        doc! {"skip": 1}.into(),
        doc! {"failCommands": ["insert"], "errorCode": 91},
    )
    .await;
    c.insert_one(doc! {"_id": 1}).await.unwrap();
    let err = c.insert_one(doc! {"_id": 2}).await.unwrap_err();
    assert!(err.contains_label("RetryableWriteError"), "{err}");
    m.fail_command_off().await;
    c.insert_one(doc! {"_id": 2}).await.unwrap();
}

/// The driver defect of docs/mongosim.md: a retried resume `aggregate` loses `resumeAfter`, so the
/// stream silently restarts at "now" and events are LOST with `retryReads=true`.
#[tokio::test]
async fn driver_defect_retried_resume_loses_events() {
    let m = TestMongo::start().await;
    let sim = require_sim!(m, "asserting on the command log");
    let watcher = m.client_with("retryReads=true").await;
    let c = watcher
        .database(m.db_name())
        .collection::<Document>("items");
    let writer = m.db().collection::<Document>("items");
    let mut s = watch(&c, 200).await;
    writer.insert_one(doc! {"_id": 200}).await.unwrap();
    let e200 = next_event(&mut s, WAIT).await.unwrap();
    m.fail_command(
        doc! {"times": 2}.into(),
        doc! {"failCommands": ["getMore", "aggregate"], "closeConnection": true},
    )
    .await;
    writer
        .insert_many(vec![doc! {"_id": 201}, doc! {"_id": 202}])
        .await
        .unwrap();
    let got = try_next_event(&mut s, Duration::from_secs(3))
        .await
        .unwrap();
    assert!(
        got.is_none(),
        "the defect is fixed? events 201/202 arrived: {got:?}"
    );
    let agg = sim.commands_named("aggregate");
    assert_eq!(agg.len(), 3, "{agg:?}");
    assert_eq!(
        change_stream_stage(&agg[1])
            .unwrap()
            .get_document("resumeAfter")
            .unwrap(),
        e200.get_document("_id").unwrap()
    );
    assert_eq!(
        change_stream_stage(&agg[2]).unwrap(),
        doc! {},
        "the retry dropped resumeAfter"
    );
    // Later writes do arrive: the stream restarted at "now", past 201 and 202.
    writer.insert_one(doc! {"_id": 203}).await.unwrap();
    let e = next_event(&mut s, WAIT).await.unwrap();
    assert_eq!(
        e.get_document("documentKey").unwrap(),
        &doc! {"_id": 203},
        "201 and 202 were lost"
    );
}

/// The same failure with `retryReads=false` surfaces as an error instead.
#[tokio::test]
async fn driver_defect_surfaces_with_retry_reads_false() {
    let m = TestMongo::start().await;
    let watcher = m.client_with("retryReads=false").await;
    let c = watcher
        .database(m.db_name())
        .collection::<Document>("items");
    let writer = m.db().collection::<Document>("items");
    let mut s = watch(&c, 200).await;
    writer.insert_one(doc! {"_id": 200}).await.unwrap();
    next_event(&mut s, WAIT).await.unwrap();
    m.fail_command(
        doc! {"times": 2}.into(),
        doc! {"failCommands": ["getMore", "aggregate"], "closeConnection": true},
    )
    .await;
    writer
        .insert_many(vec![doc! {"_id": 201}, doc! {"_id": 202}])
        .await
        .unwrap();
    let err = try_next_event(&mut s, WAIT).await.unwrap_err();
    assert!(
        matches!(*err.kind, mongodb::error::ErrorKind::Io(_)),
        "an I/O error reaches the caller: {err}"
    );
    if let Some(sim) = m.sim() {
        assert_eq!(sim.commands_named("aggregate").len(), 2);
    }
}

#[tokio::test]
async fn stalled_get_more_is_held_until_released() {
    let m = TestMongo::start().await;
    let sim = require_sim!(m, "holding replies from the test");
    let c = m.db().collection::<Document>("items");
    let mut s = watch(&c, 100).await;
    c.insert_one(doc! {"_id": 1}).await.unwrap();
    let guard = sim.stall("getMore");
    let t = Instant::now();
    let waiter = tokio::spawn(async move {
        let e = next_event(&mut s, WAIT).await;
        (e, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished());
    drop(guard);
    let (e, took) = waiter.await.unwrap();
    assert_eq!(
        e.unwrap().get_document("documentKey").unwrap(),
        &doc! {"_id": 1}
    );
    assert!(took >= Duration::from_millis(500));
}
