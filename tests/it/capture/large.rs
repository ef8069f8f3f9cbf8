//! Events over MongoDB's 16 MiB limit: the capture appends `$changeStreamSplitLargeEvent`
//! (the simulator claims 7.0) and reassembles the fragments, so the document arrives whole;
//! a capture killed between fragments resumes before the event, never inside it.

use mongodb::options::{FindOneAndUpdateOptions, ReturnDocument};

use super::*;

/// The events of `key` among `got` (update events only when `updates`).
fn of_key<'a>(got: &'a [Delivered], key: &str, updates: bool) -> Vec<&'a ChangeEvent> {
    got.iter()
        .map(|d| &d.event)
        .filter(|e| e.key == key && (!updates || e.op == bowmark_cdc::event::Op::Update))
        .collect()
}

fn field_len(e: &ChangeEvent, field: &str, starts: char) -> usize {
    let s = e
        .doc
        .as_ref()
        .and_then(|d| d[field].as_str())
        .unwrap_or_default();
    assert!(
        s.starts_with(starts),
        "{field} of {} is not the new value",
        e.key
    );
    s.len()
}

#[tokio::test]
async fn an_update_event_over_the_limit_arrives_whole() {
    // Given a MongoDB whose event limit is 40,000 bytes (16 MiB on a server) and a capture
    let m = TestMongo::start_with(mongosim::SimConfig {
        max_event_bytes: 40_000,
        ..Default::default()
    })
    .await;
    if m.sim().is_none() {
        eprintln!("SKIP: a lowered event limit needs the simulator (a real server: 16 MiB)");
        return;
    }
    let fx = Fixture::with_mongo(m, "paving", support::migrated_db().await).await;
    let sim = fx.m.sim().expect("the simulator");
    let mut tap = Tap::new(&fx.vhost, &["crew.*"]).await;
    let run = fx.start().await;
    // When a 30 KB document is updated with another 30 KB value (an event of ~60 KB: the
    // changed field and the looked-up document)
    let crews = fx.coll("crews");
    crews
        .insert_one(doc! {"_id": oid(1), "name": "Big", "a": "x".repeat(30_000)})
        .await
        .unwrap();
    crews
        .update_one(
            doc! {"_id": oid(1)},
            doc! {"$set": {"a": "y".repeat(30_000)}},
        )
        .await
        .unwrap();
    // Then the update is published once, whole
    let key = oid(1).to_hex();
    let got = tap
        .until("the large update", |g| !of_key(g, &key, true).is_empty())
        .await;
    let update = of_key(&got, &key, true)[0];
    assert_eq!(field_len(update, "a", 'y'), 30_000);
    assert_eq!(update.doc.as_ref().unwrap()["name"], "Big");
    assert_eq!(update.changed, vec!["a".to_string()]);
    // And the stream was opened with the split stage last
    let aggregates = sim.commands_named("aggregate");
    let last = aggregates
        .iter()
        .filter_map(|a| a.get_array("pipeline").ok())
        .filter(|p| {
            p.iter().any(|s| {
                s.as_document()
                    .is_some_and(|d| d.contains_key("$changeStream"))
            })
        })
        .filter_map(|p| p.last().and_then(|s| s.as_document()).cloned())
        .next_back()
        .expect("the change stream aggregate");
    assert!(last.contains_key("$changeStreamSplitLargeEvent"), "{last}");
    assert!(
        tap.drain(Duration::from_millis(500)).await.is_empty(),
        "one event, not fragments"
    );
    run.stop().await;
}

#[tokio::test]
async fn a_15_mib_document_arrives_whole_and_a_kill_between_fragments_resumes_before_it() {
    // Given a capture that published a ~15 MiB document and stored its checkpoint
    let m = TestMongo::start().await;
    if m.sim().is_none() {
        eprintln!("SKIP: holding the stream between fragments needs the simulator");
        return;
    }
    let fx = Fixture::with_mongo(m, "paving", support::migrated_db().await).await;
    let sim = fx.m.sim().expect("the simulator");
    let mut tap = Tap::new(&fx.vhost, &["crew.*"]).await;
    let run = fx.start().await;
    const BIG: usize = 15 * 1024 * 1024;
    let crews = fx.coll("crews");
    crews
        .insert_one(doc! {"_id": oid(2), "name": "Huge", "a": "x".repeat(BIG)})
        .await
        .unwrap();
    let key = oid(2).to_hex();
    let got = tap
        .until("the 15 MiB insert", |g| !of_key(g, &key, false).is_empty())
        .await;
    assert_eq!(field_len(&got[0].event, "a", 'x'), BIG);
    let inserted = got[0].event.id.clone();
    eventually("the checkpoint at the insert", WAIT, || async {
        let cp = fx.checkpoint().await?;
        (cp.1.as_deref() == Some(inserted.as_str())).then_some(())
    })
    .await;
    run.stop().await;
    let before = fx.checkpoint().await;
    // When it is replaced by another 15 MiB value (an event of ~30 MiB: two fragments, each in
    // its own batch) and the capture is killed after the first fragment
    let after = crews
        .find_one_and_update(doc! {"_id": oid(2)}, doc! {"$set": {"a": "y".repeat(BIG)}})
        .with_options(
            FindOneAndUpdateOptions::builder()
                .return_document(ReturnDocument::After)
                .build(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.get_str("a").unwrap().len(), BIG);
    let stall = sim.stall("getMore");
    sim.clear_command_log();
    let run = fx.spawn(Health::default());
    eventually(
        "the capture waiting for the second fragment",
        WAIT,
        || async { (!sim.commands_named("getMore").is_empty()).then_some(()) },
    )
    .await;
    run.kill().await;
    drop(stall);
    // Then nothing was published and the checkpoint did not move into the event
    assert!(
        tap.drain(Duration::from_millis(500)).await.is_empty(),
        "no partial event"
    );
    assert_eq!(
        fx.checkpoint().await,
        before,
        "no checkpoint inside the event"
    );
    // And restarted, the capture publishes the update once, whole
    let run = fx.start().await;
    let got = tap
        .until("the 15 MiB update", |g| !of_key(g, &key, true).is_empty())
        .await;
    let updates = of_key(&got, &key, true);
    assert_eq!(updates.len(), 1);
    assert_eq!(field_len(updates[0], "a", 'y'), BIG);
    assert_eq!(updates[0].doc.as_ref().unwrap()["name"], "Huge");
    run.stop().await;
}
