//! PostgreSQL statement and lock timeouts during an apply: the projector splits the batch,
//! applies the rest, and isolates (quarantines) the one document that keeps timing out, rather
//! than retrying the same batch for ever.

use std::time::Duration;

use crate::projector::{Daemon, Rig, company};
use crate::support::eventually;

const WAIT: Duration = Duration::from_secs(60);
const HELD: &str = "6216645500000000000010a0";

fn other(n: u32) -> String {
    format!("6216645500000000000010b{n}")
}

#[tokio::test]
async fn a_document_whose_star_row_stays_locked_is_quarantined_and_the_rest_of_its_batch_applies() {
    // Given a projector whose sessions give up waiting for a row lock after 300 ms (this test's
    // own database only), with company HELD projected
    let rig = Rig::new().await;
    rig.pg
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" SET lock_timeout = '300ms'",
            rig.db.name
        ))
        .await
        .expect("set lock_timeout on the test database");
    let daemon = Daemon::start(&rig.db, &rig.vhost);
    rig.publish(&[company(HELD, "Held v1", 10)]).await;
    let name = "SELECT name FROM dim_company WHERE mongo_id = $1";
    eventually("company HELD projected", WAIT, || async {
        (rig.text(name, HELD).await.as_deref() == Some("Held v1")).then_some(())
    })
    .await;
    // When another session holds HELD's star row while HELD changes in a batch of ten
    let holder = rig.db.client().await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM dim_company WHERE mongo_id = '{HELD}' FOR UPDATE"
        ))
        .await
        .expect("lock the star row");
    let mut batch = vec![company(HELD, "Held v2", 11)];
    batch.extend((0..9).map(|n| company(&other(n), &format!("Other {n}"), 20 + n)));
    rig.publish(&batch).await;
    // Then the other nine apply, HELD is isolated: in the mirror, listed in the quarantine
    // with the lock timeout as its reason, its star row untouched; the queue drains
    eventually("the other nine companies", WAIT, || async {
        let n = rig
            .count("SELECT count(*) FROM dim_company WHERE name LIKE 'Other %'")
            .await;
        (n == 9).then_some(())
    })
    .await;
    let reason = eventually("HELD quarantined", WAIT, || async {
        rig.text(
            "SELECT reason FROM cdc.quarantine WHERE entity = 'company' AND key = $1",
            HELD,
        )
        .await
    })
    .await;
    assert!(reason.contains("55P03"), "{reason}\n{}", daemon.log());
    assert_eq!(
        rig.text(
            "SELECT doc->>'name' FROM cdc.source_doc WHERE entity = 'company' AND key = $1",
            HELD
        )
        .await
        .as_deref(),
        Some("Held v2")
    );
    eventually("an empty queue", WAIT, || async {
        (rig.depth(&rig.pipeline.queue).await == 0).then_some(())
    })
    .await;
    assert_eq!(rig.depth(&rig.pipeline.dead_letter_queue).await, 0);
    // And once the lock is released, HELD's next version applies and leaves the quarantine
    holder.batch_execute("COMMIT").await.expect("release");
    rig.publish(&[company(HELD, "Held v3", 40)]).await;
    eventually("HELD v3 projected", WAIT, || async {
        (rig.text(name, HELD).await.as_deref() == Some("Held v3")).then_some(())
    })
    .await;
    assert_eq!(
        rig.count("SELECT count(*) FROM cdc.quarantine").await,
        0,
        "{}",
        daemon.log()
    );
}
