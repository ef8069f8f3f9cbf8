//! The pipeline file's sections, exactly as written (unknown keys are errors), with their
//! defaults.

use super::*;

/// The pipeline file, exactly as written (unknown keys are errors).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PipelineFile {
    pub name: String,
    #[serde(default = "default_timezone")]
    pub report_timezone: String,
    #[serde(default = "default_history_lost")]
    pub history_lost: HistoryLostPolicy,
    pub mongo: MongoSection,
    pub rabbitmq: RabbitSection,
    pub postgres: PostgresSection,
    #[serde(default)]
    pub capture: CaptureSection,
    #[serde(default)]
    pub projector: ProjectorSection,
    #[serde(default)]
    pub backfill: BackfillSection,
    #[serde(default)]
    pub http: HttpSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MongoSection {
    pub database: String,
    /// Collection name → entity name (`daily_report`, `employee_work`, …).
    pub collections: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RabbitSection {
    pub vhost: String,
    #[serde(default = "default_exchange")]
    pub exchange: String,
    #[serde(default = "default_queue")]
    pub queue: String,
    #[serde(default = "default_dlq")]
    pub dead_letter_queue: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PostgresSection {
    pub database: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureSection {
    pub confirm_window: usize,
    pub max_await_ms: u64,
}

impl Default for CaptureSection {
    fn default() -> Self {
        CaptureSection {
            confirm_window: DEFAULT_CONFIRM_WINDOW,
            max_await_ms: 1000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectorSection {
    pub prefetch: u16,
    pub batch_max_events: usize,
    pub batch_max_bytes: usize,
    pub batch_linger_ms: u64,
}

impl Default for ProjectorSection {
    fn default() -> Self {
        ProjectorSection {
            prefetch: DEFAULT_PREFETCH,
            batch_max_events: DEFAULT_BATCH_MAX_EVENTS,
            batch_max_bytes: DEFAULT_BATCH_MAX_BYTES,
            batch_linger_ms: DEFAULT_BATCH_LINGER_MS,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackfillSection {
    pub chunk_size: usize,
    /// PostgreSQL connections loading the daily-report children collections side by side
    /// (they derive disjoint star tables); dimensions and reports load on one.
    pub workers: usize,
}

impl Default for BackfillSection {
    fn default() -> Self {
        BackfillSection {
            chunk_size: DEFAULT_BACKFILL_CHUNK,
            workers: DEFAULT_BACKFILL_WORKERS,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct HttpSection {
    pub listen: String,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: DEFAULT_HTTP_LISTEN.to_string(),
        }
    }
}

fn default_timezone() -> String {
    DEFAULT_TIMEZONE.to_string()
}
fn default_history_lost() -> HistoryLostPolicy {
    HistoryLostPolicy::Fail
}
fn default_exchange() -> String {
    DEFAULT_EXCHANGE.to_string()
}
fn default_queue() -> String {
    DEFAULT_QUEUE.to_string()
}
fn default_dlq() -> String {
    DEFAULT_DLQ.to_string()
}
