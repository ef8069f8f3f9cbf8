//! The confirming publisher: one AMQP connection and confirm-mode channel on the pipeline's
//! vhost, the `bowmark.sync` topic exchange declared once when it connects, and persistent,
//! mandatory publishes of v1 events whose confirms the caller awaits in a bounded window.
//!
//! A confirm is a success only when it is `Ack(None)`: a nack, a returned (unroutable) message
//! (`Ack(Some(_))`) and a closed channel or connection are all errors.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use crate::config::{Pipeline, RabbitConn};
use crate::event::{CLUSTER_TIME_HEADER, CONTENT_TYPE, ChangeEvent, EVENT_TYPE};

/// How long a close may wait for the broker.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Why a publish did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("RabbitMQ connection or channel failed: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ rejected event {event_id} (nack)")]
    Nacked { event_id: String },
    #[error(
        "RabbitMQ returned event {event_id} as unroutable ({code} {text}): no queue is bound to \
         exchange {exchange} for this routing key"
    )]
    Returned {
        event_id: String,
        exchange: String,
        code: u16,
        text: String,
    },
    #[error("channel was not in confirm mode when event {event_id} was published")]
    NotConfirmed { event_id: String },
    #[error("event {event_id} cannot be encoded: {source}")]
    Encode {
        event_id: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A publisher for one pipeline's vhost and exchange.
pub struct Publisher {
    connection: Connection,
    channel: Channel,
    exchange: String,
}

impl Publisher {
    /// Connect and enable publisher confirms; with `declare`, also declare the pipeline's
    /// topology ([`crate::topology::declare`]: the exchange and the projector's queues, so events
    /// published before the projector first runs are kept). The capture declares it once, at
    /// start.
    pub async fn connect(
        conn: &RabbitConn,
        pipeline: &Pipeline,
        name: &str,
        declare: bool,
    ) -> Result<Self, PublishError> {
        let props = ConnectionProperties::default()
            .with_connection_name(LongString::from(name.to_string()));
        let connection = crate::amqp::connect(conn, props).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        if declare {
            crate::topology::declare(&channel, pipeline).await?;
        }
        Ok(Publisher {
            connection,
            channel,
            exchange: pipeline.exchange.clone(),
        })
    }

    /// Whether the channel and its connection are still open.
    pub(crate) fn is_connected(&self) -> bool {
        self.channel.status().connected() && self.connection.status().connected()
    }

    /// Whether the broker has blocked the connection (a memory or disk alarm,
    /// `connection.blocked`): publishes wait until it is unblocked.
    pub(crate) fn is_blocked(&self) -> bool {
        self.connection.status().blocked()
    }

    /// Send one event: the returned future publishes it and resolves when the broker confirms
    /// it. It owns what it needs (not the publisher), so under a broker alarm, when the
    /// connection is blocked and nothing can be written, it is the future that waits, not the
    /// caller: poll it once to queue the frames in order, then await it with the others.
    pub fn publish(
        &self,
        event: &ChangeEvent,
    ) -> Result<impl Future<Output = Result<(), PublishError>> + Send + 'static, PublishError> {
        let body = serde_json::to_vec(event).map_err(|source| PublishError::Encode {
            event_id: event.id.clone(),
            source,
        })?;
        let mut headers = FieldTable::default();
        headers.insert(
            CLUSTER_TIME_HEADER.into(),
            AMQPValue::LongString(event.cluster_time_header().into()),
        );
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(CONTENT_TYPE.into())
            .with_type(EVENT_TYPE.into())
            .with_message_id(event.id.as_str().into())
            .with_headers(headers);
        let channel = self.channel.clone();
        let routing_key = event.routing_key();
        let event_id = event.id.clone();
        let exchange = self.exchange.clone();
        Ok(async move {
            let confirm = channel
                .basic_publish(
                    exchange.as_str().into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &body,
                    props,
                )
                .await?;
            check(confirm.await?, event_id, exchange)
        })
    }

    /// Close the connection politely (before the runtime shuts down).
    /// Bounded: a blocked connection cannot even send its close (the socket is dropped then).
    pub async fn close(&self) {
        let close = self.connection.close(200, "capture stopping".into());
        if tokio::time::timeout(CLOSE_TIMEOUT, close).await.is_err() {
            tracing::warn!(
                "closing the RabbitMQ connection timed out (blocked by a broker alarm?)"
            );
        }
    }
}

fn check(c: Confirmation, event_id: String, exchange: String) -> Result<(), PublishError> {
    match c {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(PublishError::Returned {
            event_id,
            exchange,
            code: returned.reply_code,
            text: returned.reply_text.to_string(),
        }),
        Confirmation::Nack(_) => Err(PublishError::Nacked { event_id }),
        Confirmation::NotRequested => Err(PublishError::NotConfirmed { event_id }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_plain_ack_is_a_success() {
        let id = || "p:1.1.0".to_string();
        let ex = || "bowmark.sync".to_string();
        assert!(check(Confirmation::Ack(None), id(), ex()).is_ok());
        assert!(matches!(
            check(Confirmation::Nack(None), id(), ex()),
            Err(PublishError::Nacked { .. })
        ));
        assert!(matches!(
            check(Confirmation::NotRequested, id(), ex()),
            Err(PublishError::NotConfirmed { .. })
        ));
    }
}
