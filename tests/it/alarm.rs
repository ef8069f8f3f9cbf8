//! A RabbitMQ memory alarm (on a private node: never on the shared broker) and the projector:
//! it keeps consuming and applying, says `broker blocked` when a dead letter waits, answers
//! SIGTERM within the grace period, and delivers the dead letter once the alarm clears.

use std::time::{Duration, Instant};

use bowmark_cdc::topology;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Confirmation};

use crate::projector::{Daemon, company};
use crate::support::broker::PrivateBroker;
use crate::support::{self, eventually};

const WAIT: Duration = Duration::from_secs(60);
/// Kubernetes' default termination grace period is 30 s.
const GRACE: Duration = Duration::from_secs(25);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_memory_alarm_the_projector_applies_says_broker_blocked_and_answers_sigterm() {
    let Some(broker) = PrivateBroker::plain("palarm").await else {
        return;
    };
    // Given five companies and, after them, one message that is not JSON in the projector's
    // queue (its dead letter waits for the alarm to clear: what follows it in the queue would
    // wait with it, whichever batch it lands in)
    let db = support::migrated_db().await;
    let pg = db.client().await;
    let pipeline = support::pipeline("paving");
    let amqp = lapin::Connection::connect(&broker.url(), lapin::ConnectionProperties::default())
        .await
        .expect("connect to the private node");
    let ch = amqp.create_channel().await.expect("channel");
    topology::declare(&ch, &pipeline).await.expect("topology");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let mut msgs: Vec<(String, Vec<u8>)> = (0..5u32)
        .map(|n| {
            let e = company(&format!("6216645500000000000011a{n}"), "Alarmed", 10 + n);
            (e.routing_key(), serde_json::to_vec(&e).unwrap())
        })
        .collect();
    msgs.push(("company.created".into(), b"{\"v\": 1, oops".to_vec()));
    for (rk, body) in &msgs {
        let c = ch
            .basic_publish(
                pipeline.exchange.as_str().into(),
                rk.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(matches!(c, Confirmation::Ack(None)));
    }
    // When the node raises a memory alarm and the projector starts
    broker.ctl(&["set_vm_memory_high_watermark", "0.0000001"]);
    let mut env = support::child_env(&db, None, None);
    env.extend(broker.env());
    let mut daemon = Daemon::spawn(&["--role", "project"], env.clone());
    // Then the companies apply, and readiness says the broker blocks its dead letter
    eventually("five companies", WAIT, || async {
        let n: i64 = pg
            .query_one("SELECT count(*) FROM dim_company", &[])
            .await
            .unwrap()
            .get(0);
        (n == 5).then_some(())
    })
    .await;
    eventually("/readyz to say broker blocked", WAIT, || async {
        let (code, body) = daemon.get("/readyz").await;
        (code == 503 && body.contains("broker blocked")).then_some(())
    })
    .await;
    // And SIGTERM stops it within the grace period
    daemon.signal("-TERM");
    let started = Instant::now();
    let status = daemon.wait_exit(GRACE);
    eprintln!("stopped in {:?} with {status}", started.elapsed());
    assert!(status.success(), "{}", daemon.log());
    drop(daemon);
    // And once the alarm clears, the dead letter arrives and the queue drains
    broker.ctl(&["set_vm_memory_high_watermark", "0.4"]);
    let _daemon = Daemon::spawn(&["--role", "project"], env);
    eventually("the dead letter and an empty queue", WAIT, || async {
        let dlq = topology::depth(&ch, &pipeline.dead_letter_queue)
            .await
            .ok()?;
        let queue = topology::depth(&ch, &pipeline.queue).await.ok()?;
        (dlq == 1 && queue == 0).then_some(())
    })
    .await;
    let _ = amqp.close(200, "bye".into()).await;
}
