//! `bowmark-cdc dlq list|replay|purge`: the pipeline's dead-letter queue for operators.
//!
//! Every action reads the queue with `basic.get` without auto-ack, at most the messages that
//! were ready when it started. What it does not remove is requeued (nacked) at the end, so
//! `list` consumes nothing for good. `replay` publishes each matching message back to the
//! pipeline's exchange with its original routing key, message id and properties (the
//! dead-letter headers removed) and acks it from the dead-letter queue only after the broker
//! confirmed the publish; `purge` acks (removes) the matching messages.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};

use crate::config::Settings;
use crate::projector::dlq::{
    DEAD_LETTERED_AT_HEADER, ERROR_HEADER, ORIGINAL_EXCHANGE_HEADER, ORIGINAL_ROUTING_KEY_HEADER,
    REASON_HEADER, header_text,
};

use super::{OpsError, close_broker, connect_broker, human_duration};

/// Header added to a replayed message: the reason it had been dead-lettered for.
pub(crate) const REPLAYED_HEADER: &str = "x-cdc-replayed-after";

/// What to do with the matching dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DlqAction {
    List,
    Replay,
    /// Remove them (`confirmed`: `--yes` was given; otherwise only count them).
    Purge {
        confirmed: bool,
    },
}

/// Which dead letters.
#[derive(Debug, Clone, Default)]
pub struct DlqFilter {
    /// Only this reason (`x-cdc-dead-letter-reason`, e.g. `bad_json`).
    pub reason: Option<String>,
    /// At most this many matching messages.
    pub limit: Option<usize>,
}

/// One dead letter as an operator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterInfo {
    pub message_id: Option<String>,
    pub reason: Option<String>,
    pub routing_key: Option<String>,
    pub error: Option<String>,
    /// When it was dead-lettered (or, for letters without that header, published).
    pub since: Option<DateTime<Utc>>,
    pub bytes: usize,
}

/// The result of one `dlq` action.
#[derive(Debug, Clone, PartialEq)]
pub struct DlqReport {
    pub queue: String,
    pub exchange: String,
    pub action: DlqAction,
    /// Messages read from the queue.
    pub scanned: usize,
    /// The matching messages.
    pub matched: Vec<DeadLetterInfo>,
    /// Matching messages replayed (confirmed) or removed.
    pub done: usize,
    /// Matching messages left in the queue, with why (no original routing key, …).
    pub left: Vec<(DeadLetterInfo, String)>,
    /// Reasons of every message read, with counts.
    pub reasons: BTreeMap<String, usize>,
    pub checked_at: DateTime<Utc>,
}

impl DlqReport {
    /// `purge` without `--yes` that found something to remove: the caller exits 1.
    pub fn needs_confirmation(&self) -> bool {
        self.action == (DlqAction::Purge { confirmed: false }) && !self.matched.is_empty()
    }
}

fn info(d: &lapin::message::Delivery) -> DeadLetterInfo {
    let h = d.properties.headers().clone().unwrap_or_default();
    let since = match h.inner().get(DEAD_LETTERED_AT_HEADER) {
        Some(AMQPValue::Timestamp(t)) => i64::try_from(*t).ok(),
        Some(AMQPValue::LongLongInt(t)) => Some(*t),
        _ => None,
    }
    .or_else(|| d.properties.timestamp().and_then(|t| i64::try_from(t).ok()))
    .and_then(|t| DateTime::from_timestamp(t, 0));
    DeadLetterInfo {
        message_id: d.properties.message_id().as_ref().map(|m| m.to_string()),
        // The broker's own dead letters (past the delivery limit) carry its headers instead.
        reason: header_text(&h, REASON_HEADER).or_else(|| header_text(&h, "x-first-death-reason")),
        routing_key: header_text(&h, ORIGINAL_ROUTING_KEY_HEADER).or_else(|| first_death_key(&h)),
        error: header_text(&h, ERROR_HEADER),
        since,
        bytes: d.data.len(),
    }
}

/// The routing key a message had when the broker first dead-lettered it (the oldest `x-death`
/// entry).
fn first_death_key(h: &FieldTable) -> Option<String> {
    let AMQPValue::FieldArray(deaths) = h.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().last()? else {
        return None;
    };
    let AMQPValue::FieldArray(keys) = first.inner().get("routing-keys")? else {
        return None;
    };
    match keys.as_slice().first()? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

/// The properties to replay a dead letter with: the original ones without the dead-letter
/// headers (and the broker's delivery count), marked with the reason it had.
fn replay_properties(d: &lapin::message::Delivery, reason: Option<&str>) -> BasicProperties {
    let drop = [
        REASON_HEADER,
        ERROR_HEADER,
        ORIGINAL_ROUTING_KEY_HEADER,
        ORIGINAL_EXCHANGE_HEADER,
        DEAD_LETTERED_AT_HEADER,
        "x-delivery-count",
    ];
    let mut kept: BTreeMap<ShortString, AMQPValue> = d
        .properties
        .headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .filter(|(k, _)| !drop.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    if let Some(r) = reason {
        kept.insert(REPLAYED_HEADER.into(), AMQPValue::LongString(r.into()));
    }
    d.properties
        .clone()
        .with_headers(FieldTable::from(kept))
        .with_delivery_mode(2)
}

/// Run one action on the pipeline's dead-letter queue.
pub async fn run_dlq(
    settings: &Settings,
    action: DlqAction,
    filter: &DlqFilter,
) -> Result<DlqReport, OpsError> {
    let conn = connect_broker(settings, "dlq").await?;
    let result = act(&conn, settings, action, filter).await;
    close_broker(&conn).await;
    result
}

async fn act(
    conn: &lapin::Connection,
    settings: &Settings,
    action: DlqAction,
    filter: &DlqFilter,
) -> Result<DlqReport, OpsError> {
    let p = &settings.pipeline;
    let mut report = DlqReport {
        queue: p.dead_letter_queue.clone(),
        exchange: p.exchange.clone(),
        action,
        scanned: 0,
        matched: Vec::new(),
        done: 0,
        left: Vec::new(),
        reasons: BTreeMap::new(),
        checked_at: Utc::now(),
    };
    let ch = conn
        .create_channel()
        .await
        .map_err(OpsError::broker("open channel"))?;
    let ready = match ch
        .queue_declare(
            p.dead_letter_queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
    {
        Ok(q) => q.message_count(),
        // Not declared yet: nothing was ever dead-lettered.
        Err(e) if e.to_string().contains("NOT_FOUND") => return Ok(report),
        Err(e) => return Err(OpsError::broker("passive queue declare")(e)),
    };
    let publish = if action == DlqAction::Replay {
        let pch = conn
            .create_channel()
            .await
            .map_err(OpsError::broker("open channel"))?;
        pch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(OpsError::broker("confirm select"))?;
        Some(pch)
    } else {
        None
    };
    let result = scan(&ch, publish.as_ref(), ready, action, filter, &mut report).await;
    // Whatever was not removed goes back to the queue.
    if let Some(tag) = result.as_ref().ok().copied().flatten() {
        ch.basic_nack(
            tag,
            BasicNackOptions {
                multiple: true,
                requeue: true,
            },
        )
        .await
        .map_err(OpsError::broker("requeue"))?;
    }
    let _ = ch.close(200, "bye".into()).await;
    if let Some(pch) = publish {
        let _ = pch.close(200, "bye".into()).await;
    }
    let report = result.map(|_| report)?;
    settle(
        conn,
        &report.queue,
        ready.saturating_sub(report.done as u32),
    )
    .await;
    Ok(report)
}

/// Wait (up to [`SETTLE`]) until the requeued messages count as ready again: a quorum queue
/// applies returns asynchronously, and an operator (or `status`) looking right after this
/// command must not see them missing.
async fn settle(conn: &lapin::Connection, queue: &str, expected: u32) {
    let deadline = std::time::Instant::now() + SETTLE;
    while std::time::Instant::now() < deadline {
        let Ok(ch) = conn.create_channel().await else {
            return;
        };
        let depth = crate::topology::depth(&ch, queue).await;
        let _ = ch.close(200, "bye".into()).await;
        match depth {
            Ok(n) if n < expected => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            _ => return,
        }
    }
    tracing::warn!(
        queue,
        expected,
        "requeued dead letters not all ready again yet"
    );
}

/// How long to wait for requeued dead letters to be ready again.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(3);

/// Read up to `ready` messages; returns the highest delivery tag still unacked (to requeue).
async fn scan(
    ch: &Channel,
    publish: Option<&Channel>,
    ready: u32,
    action: DlqAction,
    filter: &DlqFilter,
    report: &mut DlqReport,
) -> Result<Option<u64>, OpsError> {
    let mut unacked = None;
    for _ in 0..ready {
        if filter.limit.is_some_and(|l| report.matched.len() >= l) {
            break;
        }
        let Some(msg) = ch
            .basic_get(
                report.queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .map_err(OpsError::broker("basic.get"))?
        else {
            break;
        };
        let d = msg.delivery;
        let i = info(&d);
        report.scanned += 1;
        *report
            .reasons
            .entry(i.reason.clone().unwrap_or_else(|| "-".into()))
            .or_default() += 1;
        let matches = filter
            .reason
            .as_ref()
            .is_none_or(|r| i.reason.as_deref() == Some(r.as_str()));
        if !matches {
            unacked = Some(d.delivery_tag);
            continue;
        }
        report.matched.push(i.clone());
        let remove = match action {
            DlqAction::List | DlqAction::Purge { confirmed: false } => false,
            DlqAction::Purge { confirmed: true } => true,
            DlqAction::Replay => {
                let Some(rk) = i.routing_key.clone() else {
                    report
                        .left
                        .push((i, "no original routing key header: cannot replay".into()));
                    unacked = Some(d.delivery_tag);
                    continue;
                };
                let pch = publish.expect("replay has a publish channel");
                let confirm = pch
                    .basic_publish(
                        report.exchange.as_str().into(),
                        rk.as_str().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        &d.data,
                        replay_properties(&d, i.reason.as_deref()),
                    )
                    .await
                    .map_err(OpsError::broker("replay publish"))?
                    .await
                    .map_err(OpsError::broker("replay confirm"))?;
                let refused = |detail: &str| OpsError::Replay {
                    message_id: i.message_id.clone().unwrap_or_else(|| "-".into()),
                    detail: format!(
                        "{detail} by {} (routing key {rk}); it stays in the dead-letter queue",
                        report.exchange
                    ),
                };
                match confirm {
                    Confirmation::Ack(None) => true,
                    Confirmation::Ack(Some(_)) => {
                        return Err(refused("returned as unroutable"));
                    }
                    Confirmation::Nack(_) => return Err(refused("nacked")),
                    Confirmation::NotRequested => return Err(refused("not confirmed")),
                }
            }
        };
        if remove {
            ch.basic_ack(d.delivery_tag, BasicAckOptions { multiple: false })
                .await
                .map_err(OpsError::broker("basic.ack"))?;
            report.done += 1;
        } else {
            unacked = Some(d.delivery_tag);
        }
    }
    Ok(unacked)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl fmt::Display for DlqReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if matches!(self.action, DlqAction::List) {
            writeln!(
                f,
                "{}: {} dead letter(s) shown of {} read",
                self.queue,
                self.matched.len(),
                self.scanned
            )?;
            if !self.matched.is_empty() {
                writeln!(
                    f,
                    "{:<8} {:<22} {:<28} {:<26} error",
                    "age", "reason", "routing key", "message id"
                )?;
            }
            for i in &self.matched {
                let age = i
                    .since
                    .map(|t| human_duration((self.checked_at - t).num_seconds()))
                    .unwrap_or_else(|| "-".into());
                writeln!(
                    f,
                    "{:<8} {:<22} {:<28} {:<26} {}",
                    age,
                    i.reason.as_deref().unwrap_or("-"),
                    i.routing_key.as_deref().unwrap_or("-"),
                    i.message_id.as_deref().unwrap_or("-"),
                    one_line(i.error.as_deref().unwrap_or("-"))
                )?;
            }
            return Ok(());
        }
        match self.action {
            DlqAction::Replay => writeln!(
                f,
                "{}: replayed {} of {} matching dead letter(s) to {} (publishes confirmed)",
                self.queue,
                self.done,
                self.matched.len(),
                self.exchange
            )?,
            DlqAction::Purge { confirmed: true } => {
                writeln!(f, "{}: removed {} dead letter(s)", self.queue, self.done)?
            }
            DlqAction::Purge { confirmed: false } => writeln!(
                f,
                "{}: {} dead letter(s) would be removed; nothing was removed (run again with \
                 --yes to remove them)",
                self.queue,
                self.matched.len()
            )?,
            DlqAction::List => {}
        }
        for (i, why) in &self.left {
            writeln!(
                f,
                "  left {}: {why}",
                i.message_id.as_deref().unwrap_or("-")
            )?;
        }
        Ok(())
    }
}
