//! The broker topology of a pipeline (see `docs/architecture.md`), declared idempotently from
//! one place: the topic exchange, the projector's quorum queue bound `#` with a single active
//! consumer, and its dead-letter queue. Capture and projector both call [`declare`], so whichever starts
//! first creates it and events published before the projector runs are kept.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use crate::config::Pipeline;

/// Binding key of the projector queue: every event.
pub const BIND_ALL: &str = "#";

fn quorum_args(single_active_consumer: bool) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    if single_active_consumer {
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    }
    args
}

/// Declare the exchange, the queue (bound `#`) and the dead-letter queue. Re-declaring with
/// other arguments fails with PRECONDITION_FAILED and closes the channel.
pub async fn declare(ch: &Channel, pipeline: &Pipeline) -> Result<(), lapin::Error> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    ch.exchange_declare(
        pipeline.exchange.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(pipeline.queue.as_str().into(), durable, quorum_args(true))
        .await?;
    ch.queue_bind(
        pipeline.queue.as_str().into(),
        pipeline.exchange.as_str().into(),
        BIND_ALL.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(
        pipeline.dead_letter_queue.as_str().into(),
        durable,
        quorum_args(false),
    )
    .await?;
    Ok(())
}

/// Messages ready in a queue (a passive declare: never creates it).
pub async fn depth(ch: &Channel, queue: &str) -> Result<u32, lapin::Error> {
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(q.message_count())
}
