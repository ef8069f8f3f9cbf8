//! Faults: broker loss, returned messages, the driver resume defect, history loss, drops, kills.

use super::*;

#[tokio::test]
async fn the_checkpoint_never_passes_an_unconfirmed_event_when_the_queue_disappears() {
    // Given a running capture and a consumer queue
    let fx = Fixture::new("paving").await;
    let mut tap = Tap::new(&fx.vhost, &["#"]).await;
    let run = fx.start().await;
    let c = fx.coll("materialshipments");
    for i in 0..200u32 {
        c.insert_one(doc! {"_id": oid(i)}).await.unwrap();
    }
    let confirmed = tap.take(200).await;
    let last_confirmed = confirmed.last().unwrap().event.id.clone();
    // When the queue is deleted mid-stream (every further publish is returned) and more is written
    tap.delete_queue().await;
    tap.delete_queue_named("cdc.projector").await;
    for i in 200..400u32 {
        c.insert_one(doc! {"_id": oid(i)}).await.unwrap();
    }
    // Then the checkpoint never passes the last event the broker accepted
    for _ in 0..10 {
        let (_, last) = fx.checkpoint().await.unwrap();
        let last = last.expect("events were checkpointed");
        assert!(
            version_of_id(&last) <= version_of_id(&last_confirmed),
            "checkpoint {last} passed the last confirmed event {last_confirmed}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // And when a queue is bound again, every later write arrives (at least once)
    let mut tap = Tap::new(&fx.vhost, &["#"]).await;
    let got = tap
        .until("writes 200..400", |g| {
            let keys: BTreeSet<&str> = g.iter().map(|d| d.event.key.as_str()).collect();
            (200..400u32).all(|i| keys.contains(oid(i).to_hex().as_str()))
        })
        .await;
    assert!(!got.is_empty());
    run.stop().await;
}

#[tokio::test]
async fn a_closed_broker_connection_loses_nothing() {
    // Given a capture publishing a steady write load
    let fx = Fixture::new("paving").await;
    let mut tap = Tap::new(&fx.vhost, &["#"]).await;
    let run = fx.start().await;
    let c = fx.coll("productions");
    let writer = spawn_writer(c, 600);
    let mut all: Vec<ChangeEvent> = tap.take(100).await.into_iter().map(|d| d.event).collect();
    // When RabbitMQ closes the capture's connection mid-batch
    close_capture_connections(&fx.vhost.name);
    writer.await.unwrap();
    // Then every write still arrives (at least once), each with one stable id
    collect_every_write(&mut tap, &mut all, 600).await;
    assert_eq!(one_id_per_write(&all).len(), 600);
    run.stop().await;
}

#[tokio::test]
async fn driver_resume_defect_loses_nothing() {
    // Given a capture that has delivered event 200
    let fx = Fixture::new("paving").await;
    let mut tap = Tap::new(&fx.vhost, &["#"]).await;
    let run = fx.start().await;
    let c = fx.coll("dailyreports");
    for i in 1..=200u32 {
        c.insert_one(doc! {"_id": oid(i)}).await.unwrap();
    }
    tap.until("event 200", |g| {
        g.iter().any(|d| d.event.key == oid(200).to_hex())
    })
    .await;
    // When the next getMore and the driver's resume aggregate both lose their connection
    // (docs/mongosim.md: a retried resume aggregate would restart at "now")
    fx.m.fail_command(
        bson::bson!({"times": 2}),
        doc! {
            "failCommands": ["getMore", "aggregate"],
            "closeConnection": true,
            "appName": "bowmark-cdc-capture-paving",
        },
    )
    .await;
    c.insert_one(doc! {"_id": oid(201)}).await.unwrap();
    c.insert_one(doc! {"_id": oid(202)}).await.unwrap();
    // Then 201 and 202 are still delivered
    tap.until("events 201 and 202", |g| {
        let keys: BTreeSet<&str> = g.iter().map(|d| d.event.key.as_str()).collect();
        keys.contains(oid(201).to_hex().as_str()) && keys.contains(oid(202).to_hex().as_str())
    })
    .await;
    // And no change stream was ever reopened without a resume point after the first
    let Some(sim) = fx.m.sim() else {
        run.stop().await;
        return;
    };
    let aggregates = sim.commands_named("aggregate");
    assert!(aggregates.len() >= 2, "the stream was reopened");
    let bare = aggregates
        .iter()
        .skip(1)
        .filter(|a| {
            let cs = a
                .get_array("pipeline")
                .ok()
                .and_then(|p| p.first())
                .and_then(|s| s.as_document())
                .and_then(|s| s.get_document("$changeStream").ok())
                .cloned()
                .unwrap_or_default();
            !cs.contains_key("resumeAfter") && !cs.contains_key("startAfter")
        })
        .count();
    assert_eq!(bare, 0, "a resume aggregate went out without its token");
    run.stop().await;
}

#[tokio::test]
async fn history_lost_under_policy_fail_stops_with_the_recovery_command() {
    // Given a capture that stored a checkpoint and stopped
    let fx = Fixture::new("paving").await;
    let _tap = Tap::new(&fx.vhost, &["#"]).await;
    let run = fx.start().await;
    fx.coll("crews")
        .insert_one(doc! {"_id": oid(1)})
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    run.stop().await;
    // When the oplog loses the history after that checkpoint
    fx.coll("crews")
        .insert_one(doc! {"_id": oid(2)})
        .await
        .unwrap();
    let Some(sim) = fx.m.sim() else {
        eprintln!("SKIP: losing oplog history needs the simulator");
        return;
    };
    sim.truncate_oplog();
    // Then the capture exits with a fatal error naming the backfill command
    let run = fx.spawn(Health::default());
    let err = tokio::time::timeout(WAIT, run.handle)
        .await
        .expect("the capture stops instead of looping")
        .unwrap()
        .expect_err("history loss is an error");
    assert_eq!(err.class(), ErrorClass::Fatal);
    let msg = err.to_string();
    assert!(msg.contains("286"), "{msg}");
    assert!(msg.contains("bowmark-cdc backfill --pipeline"), "{msg}");
    assert!(msg.contains("paving.toml"), "{msg}");
}

#[tokio::test]
async fn history_lost_under_policy_backfill_resnapshots_and_keeps_streaming() {
    // Given a capture with history_lost = "backfill" that stored a checkpoint and stopped
    let mut fx = Fixture::new("paving").await;
    fx.settings.pipeline.history_lost = HistoryLostPolicy::Backfill;
    let mut tap = Tap::new(&fx.vhost, &["#"]).await;
    let run = fx.start().await;
    fx.coll("crews")
        .insert_one(doc! {"_id": oid(1), "name": "Before", "type": "Base"})
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    run.stop().await;
    // When a write lands while it is down and the oplog then loses that history
    fx.coll("crews")
        .insert_one(doc! {"_id": oid(2), "name": "Lost", "type": "Paving"})
        .await
        .unwrap();
    let Some(sim) = fx.m.sim() else {
        eprintln!("SKIP: losing oplog history needs the simulator");
        return;
    };
    sim.truncate_oplog();
    let before = fx.checkpoint().await;
    let run = fx.start().await;
    // Then the capture re-snapshots: the write made during the lost history reaches the
    // reporting tables through the backfill, and the checkpoint moves past the lost stretch
    let pg = fx.db.client().await;
    eventually("the lost write in dim_crew", WAIT, || async {
        let n: i64 = pg
            .query_one("SELECT count(*) FROM dim_crew WHERE name = 'Lost'", &[])
            .await
            .unwrap()
            .get(0);
        (n == 1).then_some(())
    })
    .await;
    eventually("a new checkpoint", WAIT, || async {
        let now = fx.checkpoint().await;
        (now.is_some() && now != before).then_some(())
    })
    .await;
    // And it keeps streaming: a later write is published
    fx.coll("crews")
        .insert_one(doc! {"_id": oid(3), "name": "After", "type": "Base"})
        .await
        .unwrap();
    let want = oid(3).to_hex();
    tap.until("the write after the re-snapshot", |g| {
        g.iter().any(|d| d.event.key == want)
    })
    .await;
    assert!(!run.handle.is_finished(), "the capture is still running");
    run.stop().await;
}

#[tokio::test]
async fn dropping_the_database_is_an_explained_stop_not_a_loop() {
    let fx = Fixture::new("paving").await;
    let _tap = Tap::new(&fx.vhost, &["#"]).await;
    let run = fx.start().await;
    fx.coll("crews")
        .insert_one(doc! {"_id": oid(1)})
        .await
        .unwrap();
    fx.mongo.database(fx.m.db_name()).drop().await.unwrap();
    let err = tokio::time::timeout(WAIT, run.handle)
        .await
        .expect("stops")
        .unwrap()
        .expect_err("a drop is fatal");
    assert_eq!(err.class(), ErrorClass::Fatal);
    assert!(err.to_string().contains("drop"), "{err}");
}

#[tokio::test]
async fn killed_at_random_points_and_restarted_every_write_arrives_with_gapless_ids() {
    // Given a write load of 1,200 inserts and a capture that is killed and restarted repeatedly
    let fx = Fixture::new("paving").await;
    let mut tap = Tap::new(&fx.vhost, &["#"]).await;
    let mut run = fx.start().await;
    let n = 1200u32;
    let writer = spawn_writer(fx.coll("jobsites"), n);
    let mut all: Vec<ChangeEvent> = Vec::new();
    for round in 0..5u64 {
        let pause = 100 + (rand::random::<u64>() % 400) + round * 10;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        run.kill().await;
        all.extend(
            tap.drain(Duration::from_millis(50))
                .await
                .into_iter()
                .map(|d| d.event),
        );
        run = fx.spawn(Health::default());
    }
    writer.await.unwrap();
    // Then every write is delivered at least once ...
    collect_every_write(&mut tap, &mut all, n).await;
    // ... each write keeps one id across re-deliveries, and the ids follow the oplog gaplessly
    assert_eq!(one_id_per_write(&all).len(), n as usize);
    let ids: BTreeSet<(u32, u32, u32)> = all.iter().map(version).collect();
    assert_eq!(ids.len(), n as usize);
    assert!(
        ids.iter().all(|v| v.2 == 0),
        "single writes are groups of one"
    );
    run.stop().await;
}
