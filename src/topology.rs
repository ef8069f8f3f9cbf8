//! The broker topology of a pipeline (see `docs/architecture.md`), declared idempotently from
//! one place: the topic exchange, the projector's quorum queue bound `#` with a single active
//! consumer, and its dead-letter queue. Capture and projector both call [`declare`], so whichever starts
//! first creates it and events published before the projector runs are kept.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use crate::config::Pipeline;

/// Binding key of the projector queue: every event.
pub(crate) const BIND_ALL: &str = "#";

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

/// How many times `cdc.projector` delivers a message before the broker dead-letters it to the
/// dead-letter queue (a crash-looping projector returns its prefetched deliveries each time).
/// Explicit, so RabbitMQ 4.x's default of 20, which *drops* the message when the queue has no
/// dead-letter exchange, never applies; on 3.x there is no default and a message would be
/// redelivered forever.
pub const PROJECTOR_DELIVERY_LIMIT: u32 = 50;

/// A RabbitMQ policy: a running queue's arguments cannot change, a policy applies to it at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub name: String,
    /// A regular expression on queue names.
    pub pattern: String,
    pub priority: i64,
    pub definition: serde_json::Value,
}

/// The projector queue's policy: dead letters (past [`PROJECTOR_DELIVERY_LIMIT`] deliveries)
/// go through the default exchange to the pipeline's dead-letter queue, with the broker's
/// `x-death` and `x-first-death-reason = delivery_limit` headers. The pattern matches the queue
/// name exactly, so the dead-letter queue keeps its own policy.
pub fn projector_policy(pipeline: &Pipeline) -> Policy {
    Policy {
        name: "cdc-projector".into(),
        pattern: format!("^{}$", regex_escape(&pipeline.queue)),
        priority: 0,
        definition: serde_json::json!({
            "dead-letter-exchange": "",
            "dead-letter-routing-key": pipeline.dead_letter_queue,
            "delivery-limit": PROJECTOR_DELIVERY_LIMIT,
        }),
    }
}

impl Policy {
    /// The arguments of `rabbitmqctl` that set this policy on `vhost`.
    pub fn rabbitmqctl_args(&self, vhost: &str) -> Vec<String> {
        vec![
            "set_policy".into(),
            "-p".into(),
            vhost.into(),
            "--apply-to".into(),
            "queues".into(),
            "--priority".into(),
            self.priority.to_string(),
            self.name.clone(),
            self.pattern.clone(),
            self.definition.to_string(),
        ]
    }

    /// This policy as an entry of a definitions file (`"policies": [...]`).
    #[cfg(test)]
    fn to_definitions(&self, vhost: &str) -> serde_json::Value {
        serde_json::json!({
            "vhost": vhost,
            "name": self.name,
            "pattern": self.pattern,
            "apply-to": "queues",
            "priority": self.priority,
            "definition": self.definition,
        })
    }
}

/// `s` as a literal in a regular expression.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paving() -> Pipeline {
        Pipeline::parse(
            std::path::Path::new("p.toml"),
            "name = \"paving\"\n[mongo]\ndatabase = \"paving\"\ncollections = { employees = \
             \"employee\" }\n[rabbitmq]\nvhost = \"bowmark\"\n[postgres]\ndatabase = \"r\"\n",
        )
        .unwrap()
    }

    #[test]
    fn the_projector_policy_dead_letters_to_the_dlq_past_an_explicit_limit() {
        let p = projector_policy(&paving());
        assert_eq!(p.pattern, "^cdc\\.projector$");
        assert_eq!(p.definition["dead-letter-exchange"], "");
        assert_eq!(p.definition["dead-letter-routing-key"], "cdc.projector.dlq");
        assert_eq!(p.definition["delivery-limit"], PROJECTOR_DELIVERY_LIMIT);
        let args = p.rabbitmqctl_args("bowmark");
        assert_eq!(args[..3], ["set_policy", "-p", "bowmark"]);
    }

    /// The broker definitions the k8s manifests load carry the same policy on both vhosts.
    #[test]
    fn the_k8s_definitions_carry_the_projector_policy() {
        let text = include_str!("../k8s/infra/rabbitmq/definitions.template.json");
        let defs: serde_json::Value = serde_json::from_str(text).unwrap();
        let policies = defs["policies"].as_array().unwrap();
        for vhost in ["bowmark", "bowmark-concrete"] {
            let want = projector_policy(&paving()).to_definitions(vhost);
            assert!(
                policies.contains(&want),
                "definitions.template.json lacks {want}"
            );
        }
    }
}
