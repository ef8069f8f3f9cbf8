//! The broker topology on a real RabbitMQ vhost: the projector queue's policy dead-letters a
//! message redelivered past the delivery limit into the dead-letter queue instead of dropping
//! it (RabbitMQ 4.x) or redelivering it forever (3.x).

use std::time::Duration;

use bowmark_cdc::config::Settings;
use bowmark_cdc::ops::dlq::{DlqAction, DlqFilter, run_dlq};
use bowmark_cdc::topology::{self, PROJECTOR_DELIVERY_LIMIT};
use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicConsumeOptions, BasicNackOptions, BasicPublishOptions};
use lapin::types::FieldTable;

use crate::support::{self, TestVhost, eventually};

#[tokio::test]
async fn a_message_redelivered_past_the_limit_ends_in_the_dead_letter_queue() {
    // Given the pipeline's topology on a vhost, with the projector queue's policy set
    let vhost = TestVhost::new();
    let mut pipeline = support::pipeline("paving");
    pipeline.vhost = vhost.name.clone();
    let conn = vhost.connect().await;
    let ch = conn.create_channel().await.unwrap();
    topology::declare(&ch, &pipeline).await.unwrap();
    vhost.set_policy(&topology::projector_policy(&pipeline));
    // And one event in the projector queue
    ch.basic_publish(
        pipeline.exchange.as_str().into(),
        "paving.vehicle.insert".into(),
        BasicPublishOptions::default(),
        b"{\"poison\":true}",
        BasicProperties::default().with_message_id("m-1".into()),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    // When a consumer gives it back (nack, requeue) every time it is delivered
    let consumer_ch = conn.create_channel().await.unwrap();
    let mut consumer = consumer_ch
        .basic_consume(
            pipeline.queue.as_str().into(),
            "crash-looper".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let deliveries = tokio::spawn(async move {
        let mut n = 0u32;
        while let Some(Ok(d)) = consumer.next().await {
            n += 1;
            let requeue = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            if d.acker.nack(requeue).await.is_err() {
                break;
            }
        }
        n
    });
    // Then, past the limit, the broker moves it to the dead-letter queue: not lost
    eventually(
        "the message in the dead-letter queue",
        Duration::from_secs(30),
        || async {
            let n = topology::depth(&ch, &pipeline.dead_letter_queue)
                .await
                .unwrap();
            (n == 1).then_some(())
        },
    )
    .await;
    assert_eq!(topology::depth(&ch, &pipeline.queue).await.unwrap(), 0);
    consumer_ch.close(200, "done".into()).await.unwrap();
    let delivered = tokio::time::timeout(Duration::from_secs(5), deliveries)
        .await
        .expect("consumer ends")
        .unwrap();
    assert!(
        delivered >= PROJECTOR_DELIVERY_LIMIT,
        "delivered {delivered} times, limit {PROJECTOR_DELIVERY_LIMIT}"
    );
    // And `dlq list` shows it with the broker's reason and its original routing key
    let mut env = std::collections::BTreeMap::new();
    env.insert("RABBITMQ_VHOST".to_string(), vhost.name.clone());
    let settings = Settings::resolve(pipeline.clone(), &env).unwrap();
    let only = DlqFilter {
        reason: Some("delivery_limit".into()),
        limit: None,
    };
    let listed = run_dlq(&settings, DlqAction::List, &only).await.unwrap();
    assert_eq!(listed.matched.len(), 1, "{listed:?}");
    assert_eq!(
        listed.matched[0].routing_key.as_deref(),
        Some("paving.vehicle.insert")
    );
    assert_eq!(listed.matched[0].message_id.as_deref(), Some("m-1"));
    // And `dlq replay` puts it back on the projector's queue, whole
    let replayed = run_dlq(&settings, DlqAction::Replay, &only).await.unwrap();
    assert_eq!(replayed.done, 1, "{replayed:?}");
    // (a quorum queue with a single active consumer serves no basic.get)
    let mut again = ch
        .basic_consume(
            pipeline.queue.as_str().into(),
            "after-replay".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let back = tokio::time::timeout(Duration::from_secs(10), again.next())
        .await
        .expect("the replayed event in the projector queue")
        .unwrap()
        .unwrap();
    assert_eq!(back.data, b"{\"poison\":true}");
    assert_eq!(
        back.properties.message_id().as_ref().map(|m| m.as_str()),
        Some("m-1")
    );
    assert_eq!(
        topology::depth(&ch, &pipeline.dead_letter_queue)
            .await
            .unwrap(),
        0
    );
    conn.close(200, "bye".into()).await.unwrap();
}
