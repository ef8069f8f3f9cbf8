//! Dead-lettering: a message that can never apply goes to the pipeline's dead-letter queue with
//! its reason in the headers, confirmed by the broker before the original is acked.

use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};

use super::error::ProjectorError;

/// Header: the bounded reason code ([`Reason::as_str`]).
pub const REASON_HEADER: &str = "x-cdc-dead-letter-reason";
/// Header: the error message (truncated to [`MAX_ERROR_LEN`] bytes).
pub const ERROR_HEADER: &str = "x-cdc-error";
/// Header: the routing key the message was published with.
pub const ORIGINAL_ROUTING_KEY_HEADER: &str = "x-original-routing-key";
/// Header: the exchange the message was published to.
pub const ORIGINAL_EXCHANGE_HEADER: &str = "x-original-exchange";
/// Header: when the message was dead-lettered (a timestamp, seconds since the epoch).
pub(crate) const DEAD_LETTERED_AT_HEADER: &str = "x-cdc-dead-lettered-at";
/// Longest error message carried in a header.
pub(crate) const MAX_ERROR_LEN: usize = 1024;

/// Why a message was dead-lettered: a bounded set (metric label and header value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The body is not JSON.
    BadJson,
    /// `v` is missing or not 1 (also: legacy sync messages without `v`).
    UnsupportedVersion,
    /// `entity` names no known entity.
    UnknownEntity,
    /// JSON, v1, but not the shape of a change event.
    InvalidEvent,
    /// An event of another pipeline.
    WrongPipeline,
    /// PostgreSQL rejected the rows of this event alone.
    Rejected,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::BadJson,
        Reason::UnsupportedVersion,
        Reason::UnknownEntity,
        Reason::InvalidEvent,
        Reason::WrongPipeline,
        Reason::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BadJson => "bad_json",
            Reason::UnsupportedVersion => "unsupported_version",
            Reason::UnknownEntity => "unknown_entity",
            Reason::InvalidEvent => "invalid_event",
            Reason::WrongPipeline => "wrong_pipeline",
            Reason::Rejected => "rejected_by_postgres",
        }
    }
}

/// A message that can never apply, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub reason: Reason,
    pub error: String,
}

impl DeadLetter {
    pub fn new(reason: Reason, error: impl Into<String>) -> DeadLetter {
        let mut error = error.into();
        if error.len() > MAX_ERROR_LEN {
            let mut cut = MAX_ERROR_LEN;
            while !error.is_char_boundary(cut) {
                cut -= 1;
            }
            error.truncate(cut);
        }
        DeadLetter { reason, error }
    }
}

/// The original properties plus the dead-letter headers; persistent.
fn properties(d: &Delivery, dl: &DeadLetter) -> BasicProperties {
    let mut headers = d.properties.headers().clone().unwrap_or_default();
    let text = |s: &str| AMQPValue::LongString(s.into());
    headers.insert(REASON_HEADER.into(), text(dl.reason.as_str()));
    headers.insert(ERROR_HEADER.into(), text(&dl.error));
    headers.insert(
        ORIGINAL_ROUTING_KEY_HEADER.into(),
        text(d.routing_key.as_str()),
    );
    headers.insert(ORIGINAL_EXCHANGE_HEADER.into(), text(d.exchange.as_str()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    headers.insert(DEAD_LETTERED_AT_HEADER.into(), AMQPValue::Timestamp(now));
    d.properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2)
}

/// Publish every dead letter to `queue` (default exchange) and wait for all confirms. A nack,
/// a returned message or a channel error fails the whole call: the originals stay unacked.
pub(crate) async fn publish_all(
    ch: &Channel,
    queue: &str,
    letters: &[(&Delivery, &DeadLetter)],
) -> Result<(), ProjectorError> {
    let mut confirms = Vec::with_capacity(letters.len());
    for (d, dl) in letters {
        let confirm = ch
            .basic_publish(
                ShortString::from(""),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &d.data,
                properties(d, dl),
            )
            .await
            .map_err(ProjectorError::broker("dead-letter publish"))?;
        confirms.push((message_id(d), confirm));
    }
    for (message_id, confirm) in confirms {
        let refused = |detail: &str| ProjectorError::DeadLetterRefused {
            queue: queue.to_string(),
            message_id: message_id.clone(),
            detail: detail.to_string(),
        };
        match confirm
            .await
            .map_err(ProjectorError::broker("dead-letter confirm"))?
        {
            Confirmation::Ack(None) => {}
            Confirmation::Ack(Some(_)) => return Err(refused("returned as unroutable")),
            Confirmation::Nack(_) => return Err(refused("nacked")),
            Confirmation::NotRequested => return Err(refused("confirms are not enabled")),
        }
    }
    Ok(())
}

/// The message id of a delivery, for logs (`-` when absent).
pub fn message_id(d: &Delivery) -> String {
    d.properties
        .message_id()
        .as_ref()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "-".into())
}

/// Headers of a dead-lettered message as text (for tests and the `status` command).
pub fn header_text(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_errors_are_truncated_on_a_char_boundary() {
        let dl = DeadLetter::new(Reason::Rejected, "é".repeat(MAX_ERROR_LEN));
        assert!(dl.error.len() <= MAX_ERROR_LEN);
        assert!(dl.error.chars().all(|c| c == 'é'));
    }

    #[test]
    fn reason_codes_are_distinct_snake_case() {
        let mut codes: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), Reason::ALL.len());
        assert!(
            codes
                .iter()
                .all(|c| c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'))
        );
    }
}
