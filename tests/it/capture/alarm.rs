//! A RabbitMQ memory alarm (on a private node: never on the shared broker) blocks publishing:
//! the capture stays responsive (readiness says `broker blocked`, SIGTERM exits within the
//! grace period), loses nothing, and publishes again once the alarm clears.

use lapin::options::BasicGetOptions;

use super::process::{Proc, pipeline_file};
use super::*;
use crate::support::broker::PrivateBroker;

/// Kubernetes' default termination grace period is 30 s.
const GRACE: Duration = Duration::from_secs(25);

/// Every event in `queue` (taken off it), as routing keys' document keys.
async fn take_all(ch: &Channel, queue: &str, into: &mut BTreeSet<String>) {
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        let e: ChangeEvent = serde_json::from_slice(&m.delivery.data).expect("a v1 event");
        into.insert(e.key);
    }
}

/// Take events off `queue` into `seen` until `done(seen)`; panics after [`WAIT`].
async fn take_until(
    ch: &Channel,
    queue: &str,
    seen: &mut BTreeSet<String>,
    what: &str,
    done: impl Fn(&BTreeSet<String>) -> bool,
) {
    let started = std::time::Instant::now();
    loop {
        take_all(ch, queue, seen).await;
        if done(seen) {
            return;
        }
        assert!(started.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_memory_alarm_the_capture_says_broker_blocked_answers_sigterm_and_loses_nothing() {
    let Some(broker) = PrivateBroker::plain("alarm").await else {
        return;
    };
    // Given a capture publishing to a private RabbitMQ node
    let fx = Fixture::new("paving").await;
    let file = pipeline_file(&fx).await;
    let amqp = lapin::Connection::connect(&broker.url(), lapin::ConnectionProperties::default())
        .await
        .expect("connect to the private node");
    let ch = amqp.create_channel().await.expect("channel");
    bowmark_cdc::topology::declare(&ch, &fx.settings.pipeline)
        .await
        .expect("topology");
    // (the projector's quorum queue has a single active consumer: no basic.get)
    let queue = "alarm.tap".to_string();
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare the tap queue");
    ch.queue_bind(
        queue.as_str().into(),
        fx.settings.pipeline.exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind the tap queue");
    let start = || {
        let mut proc = Proc::start_env(
            &fx,
            &file,
            std::process::Stdio::piped(),
            fx.m.uri(),
            broker.env(),
        );
        let log = support::StderrTail::start(&mut proc.child);
        (proc, log)
    };
    let (proc, log) = start();
    let addr = log.http_addr();
    fx.wait_checkpoint().await;
    let c = fx.coll("crews");
    let mut seen = BTreeSet::new();
    for i in 0..20u32 {
        c.insert_one(doc! {"_id": oid(i)}).await.unwrap();
    }
    take_until(&ch, &queue, &mut seen, "the first twenty events", |s| {
        s.len() == 20
    })
    .await;
    // When the node raises a memory alarm while twenty more writes arrive
    broker.ctl(&["set_vm_memory_high_watermark", "0.0000001"]);
    for i in 20..40u32 {
        c.insert_one(doc! {"_id": oid(i)}).await.unwrap();
    }
    // Then readiness says the broker blocks publishing
    let body = eventually("/readyz to say broker blocked", WAIT, || async {
        let (code, body) = support::http_get(addr, "/readyz").await;
        (code == 503 && body.contains("broker blocked")).then_some(body)
    })
    .await;
    assert!(body.contains("broker"), "{body}");
    // And SIGTERM stops it within the grace period
    proc.signal("-TERM");
    let started = std::time::Instant::now();
    let out = proc.wait(GRACE).await;
    eprintln!("stopped in {:?} with {}", started.elapsed(), out.status);
    assert!(out.status.success(), "{}", log.text());
    // And once the alarm clears, a capture started again delivers every write
    broker.ctl(&["set_vm_memory_high_watermark", "0.4"]);
    let (proc, _log) = start();
    take_until(&ch, &queue, &mut seen, "all forty writes", |s| {
        (0..40u32).all(|i| s.contains(&oid(i).to_hex()))
    })
    .await;
    proc.signal("-TERM");
    assert!(proc.wait(GRACE).await.status.success());
    let _ = amqp.close(200, "bye".into()).await;
}
