//! High availability: the advisory lock elects one tailing replica.

use super::*;

#[tokio::test]
async fn two_replicas_one_publishes_and_the_standby_takes_over_without_loss() {
    // Given two captures of one pipeline
    let fx = Fixture::new("paving").await;
    let mut tap = Tap::new(&fx.vhost, &["#"]).await;
    let a = fx.start().await;
    let b = fx.spawn(Health::default());
    eventually("the second replica to stand by", WAIT, || async {
        (b.health.state(Stage::Capture) == RoleState::Standby).then_some(())
    })
    .await;
    assert_eq!(a.health.state(Stage::Capture), RoleState::Active);
    // When writes flow, exactly one copy of each event is published
    let c = fx.coll("vehicles");
    tap.each_insert_published_once(&c, 100, Duration::from_millis(700), "no duplicates")
        .await;
    // When the active replica dies while writes continue
    a.kill().await;
    let start = std::time::Instant::now();
    for i in 100..200u32 {
        c.insert_one(doc! {"_id": oid(i)}).await.unwrap();
    }
    eventually("the standby to take over", WAIT, || async {
        (b.health.state(Stage::Capture) == RoleState::Active).then_some(())
    })
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    // Then every later write arrives
    let got = tap
        .until("writes 100..200", |g| {
            let keys: BTreeSet<&str> = g.iter().map(|d| d.event.key.as_str()).collect();
            (100..200u32).all(|i| keys.contains(oid(i).to_hex().as_str()))
        })
        .await;
    assert!(!got.is_empty());
    b.stop().await;
}

#[tokio::test]
async fn losing_the_lock_session_stops_tailing_and_the_capture_recovers() {
    // Given a capture holding the lock
    let fx = Fixture::new("paving").await;
    let mut tap = Tap::new(&fx.vhost, &["#"]).await;
    let run = fx.start().await;
    let c = fx.coll("materials");
    c.insert_one(doc! {"_id": oid(1)}).await.unwrap();
    tap.take(1).await;
    // When PostgreSQL terminates the session that holds the advisory lock
    let admin = fx.db.client().await;
    let killed = admin
        .query(
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l \
             JOIN pg_database d ON d.oid = l.database \
             WHERE l.locktype = 'advisory' AND d.datname = current_database()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(killed.len(), 1, "one lock session");
    // Then the capture takes the lock again and keeps delivering
    c.insert_one(doc! {"_id": oid(2)}).await.unwrap();
    tap.until("the write after the lock loss", |g| {
        g.iter().any(|d| d.event.key == oid(2).to_hex())
    })
    .await;
    eventually("the lock to be held again", WAIT, || async {
        let n = admin
            .query(
                "SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
                 WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .len();
        (n == 1).then_some(())
    })
    .await;
    assert_eq!(run.health.state(Stage::Capture), RoleState::Active);
    run.stop().await;
}
