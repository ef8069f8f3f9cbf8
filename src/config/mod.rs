//! Pipeline configuration: the per-business-line TOML file plus the environment.
//!
//! The file says what differs per business line (Mongo database, watched collections and
//! their entity names, vhost, exchange, queues, PostgreSQL database, report time zone,
//! history-lost policy). Hosts and secrets come from the environment variables that the
//! production Secrets already provide (`MONGO_URI`, `POSTGRES_*`, `RABBITMQ_*`); where both set
//! a value (vhost, PostgreSQL database) the environment wins. Every error names the file and
//! the field path; secrets redact themselves in `Debug` and `Display`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::event::Entity;

/// Default exchange, shared with the legacy sync.
pub(crate) const DEFAULT_EXCHANGE: &str = "bowmark.sync";
/// Default projector queue.
pub(crate) const DEFAULT_QUEUE: &str = "cdc.projector";
/// Default dead-letter queue of the projector.
pub(crate) const DEFAULT_DLQ: &str = "cdc.projector.dlq";
/// Default report time zone: what the legacy production holds.
pub(crate) const DEFAULT_TIMEZONE: &str = "UTC";
/// Default HTTP listen address for `/metrics`, `/healthz`, `/readyz`.
pub(crate) const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:9464";
/// Default MongoDB URI for a local simulator or replica set.
pub(crate) const DEFAULT_MONGO_URI: &str = "mongodb://127.0.0.1:27017/?replicaSet=rs0";
/// Default publisher-confirm window (events in flight).
pub(crate) const DEFAULT_CONFIRM_WINDOW: usize = 1024;
/// Default projector prefetch.
/// (2,500 held the catch-up rate of 5,000 in the load harness at 5–9 MiB less steady RSS.)
pub(crate) const DEFAULT_PREFETCH: u16 = 2500;
/// Default projector batch limits.
pub(crate) const DEFAULT_BATCH_MAX_EVENTS: usize = 2500;
pub(crate) const DEFAULT_BATCH_MAX_BYTES: usize = 8 * 1024 * 1024;
/// 0: a batch is what has arrived when the previous apply ends, applied at once.
pub(crate) const DEFAULT_BATCH_LINGER_MS: u64 = 0;
/// Default backfill chunk size (documents per transaction).
pub(crate) const DEFAULT_BACKFILL_CHUNK: usize = 5000;
/// Default backfill workers for the daily-report children.
pub(crate) const DEFAULT_BACKFILL_WORKERS: usize = 2;

/// A value that must never be printed.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself, for building connections only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// What to do when the change stream's resume point fell off the oplog (code 286).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryLostPolicy {
    /// Exit non-zero with an operator message naming `bowmark-cdc backfill`.
    Fail,
    /// Re-snapshot through the backfill, then stream.
    Backfill,
}

mod file;
mod settings;

pub use file::*;
pub use settings::*;

/// A configuration error, naming the file and the field path.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: field `{field}`: {message}")]
    Field {
        file: PathBuf,
        field: String,
        message: String,
    },
    #[error("{}:{line}:{column}: TOML syntax error: {message}", file.display())]
    Syntax {
        file: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("environment variable {name}: {message}")]
    Env { name: String, message: String },
}

/// 1-based line and column (in characters) of a byte offset in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit_once('\n')
        .map_or(before, |(_, rest)| rest)
        .chars()
        .count()
        + 1;
    (line, column)
}

impl ConfigError {
    fn field(file: &Path, field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Field {
            file: file.to_path_buf(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A validated pipeline: the file's settings, checked, with the entity map parsed.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub file: PathBuf,
    pub name: String,
    pub report_timezone: chrono_tz::Tz,
    pub history_lost: HistoryLostPolicy,
    pub mongo_database: String,
    /// Collection name → entity.
    pub collections: BTreeMap<String, Entity>,
    pub vhost: String,
    pub exchange: String,
    pub queue: String,
    pub dead_letter_queue: String,
    pub postgres_database: String,
    pub capture: CaptureSection,
    pub projector: ProjectorSection,
    pub backfill: BackfillSection,
    pub http_listen: std::net::SocketAddr,
}

impl Pipeline {
    /// Read, parse and validate a pipeline file (no environment applied).
    pub fn load(path: &Path) -> Result<Pipeline, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parse and validate pipeline text; `path` is used in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Pipeline, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| {
            let (line, column) = line_col(text, e.span().map_or(0, |s| s.start));
            ConfigError::Syntax {
                file: path.to_path_buf(),
                line,
                column,
                message: e.message().trim_end().to_string(),
            }
        })?;
        let file: PipelineFile = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let mut message = e.inner().message().to_string();
            if let Some(span) = e.inner().span() {
                let (line, column) = line_col(text, span.start);
                message.push_str(&format!(" (line {line}, column {column})"));
            }
            ConfigError::field(
                path,
                if field == "." {
                    "(top level)".into()
                } else {
                    field
                },
                message,
            )
        })?;
        file.validate(path)
    }

    /// The entity of a watched collection.
    pub(crate) fn entity_of(&self, collection: &str) -> Option<Entity> {
        self.collections.get(collection).copied()
    }

    /// The MongoDB database: the one `MONGO_URI` names (`mongodb://host/<database>?…`, as the
    /// production Secrets hold it) when it names one, which `mongo.database` must then agree
    /// with; else the file's.
    fn with_uri_database(mut self, uri: &Secret) -> Result<Pipeline, ConfigError> {
        // The driver's own parser; its messages are left out, as they may quote the password.
        let parsed = mongodb::options::ConnectionString::parse(uri.expose()).map_err(|_| {
            ConfigError::Env {
                name: "MONGO_URI".into(),
                message: "not a valid MongoDB connection string".into(),
            }
        })?;
        let Some(database) = parsed.default_database.filter(|d| !d.is_empty()) else {
            return Ok(self);
        };
        if database != self.mongo_database {
            return Err(ConfigError::field(
                &self.file,
                "mongo.database",
                format!(
                    "{:?} disagrees with the database {database:?} that MONGO_URI names; the \
                     two must agree: set mongo.database = {database:?}, or fix MONGO_URI",
                    self.mongo_database
                ),
            ));
        }
        self.mongo_database = database;
        Ok(self)
    }

    /// Batch linger as a duration.
    pub(crate) fn linger(&self) -> Duration {
        Duration::from_millis(self.projector.batch_linger_ms)
    }
}

fn non_empty(path: &Path, field: &str, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError::field(path, field, "must not be empty"));
    }
    Ok(())
}

impl PipelineFile {
    fn validate(self, path: &Path) -> Result<Pipeline, ConfigError> {
        non_empty(path, "name", &self.name)?;
        if !self
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            return Err(ConfigError::field(
                path,
                "name",
                "use lowercase letters, digits, '-' or '_'",
            ));
        }
        let report_timezone: chrono_tz::Tz = self.report_timezone.parse().map_err(|_| {
            ConfigError::field(
                path,
                "report_timezone",
                format!(
                    "unknown time zone {:?} (try \"UTC\" or \"America/Edmonton\")",
                    self.report_timezone
                ),
            )
        })?;
        non_empty(path, "mongo.database", &self.mongo.database)?;
        if self.mongo.collections.is_empty() {
            return Err(ConfigError::field(
                path,
                "mongo.collections",
                "list at least one collection",
            ));
        }
        let mut collections = BTreeMap::new();
        for (coll, entity) in &self.mongo.collections {
            let field = format!("mongo.collections.{coll}");
            let e: Entity = entity.parse().map_err(|_| {
                ConfigError::field(
                    path,
                    &field,
                    format!(
                        "unknown entity {entity:?}; expected one of {}",
                        Entity::ALL
                            .iter()
                            .map(|e| e.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?;
            if let Some((other, _)) = collections.iter().find(|(_, v)| **v == e) {
                return Err(ConfigError::field(
                    path,
                    &field,
                    format!("entity {entity:?} is already mapped from collection {other:?}"),
                ));
            }
            collections.insert(coll.clone(), e);
        }
        non_empty(path, "rabbitmq.vhost", &self.rabbitmq.vhost)?;
        non_empty(path, "rabbitmq.exchange", &self.rabbitmq.exchange)?;
        non_empty(path, "rabbitmq.queue", &self.rabbitmq.queue)?;
        non_empty(
            path,
            "rabbitmq.dead_letter_queue",
            &self.rabbitmq.dead_letter_queue,
        )?;
        if self.rabbitmq.queue == self.rabbitmq.dead_letter_queue {
            return Err(ConfigError::field(
                path,
                "rabbitmq.dead_letter_queue",
                "must differ from rabbitmq.queue",
            ));
        }
        non_empty(path, "postgres.database", &self.postgres.database)?;
        if self.capture.confirm_window == 0 {
            return Err(ConfigError::field(
                path,
                "capture.confirm_window",
                "must be at least 1",
            ));
        }
        if self.projector.prefetch == 0 {
            return Err(ConfigError::field(
                path,
                "projector.prefetch",
                "must be at least 1",
            ));
        }
        if self.projector.batch_max_events == 0 {
            return Err(ConfigError::field(
                path,
                "projector.batch_max_events",
                "must be at least 1",
            ));
        }
        if self.projector.batch_max_bytes < 1024 {
            return Err(ConfigError::field(
                path,
                "projector.batch_max_bytes",
                "must be at least 1024",
            ));
        }
        if self.backfill.chunk_size == 0 {
            return Err(ConfigError::field(
                path,
                "backfill.chunk_size",
                "must be at least 1",
            ));
        }
        if !(1..=4).contains(&self.backfill.workers) {
            return Err(ConfigError::field(
                path,
                "backfill.workers",
                "must be between 1 and 4 (there are four children collections)",
            ));
        }
        let http_listen = self.http.listen.parse().map_err(|_| {
            ConfigError::field(
                path,
                "http.listen",
                format!(
                    "{:?} is not a socket address like 0.0.0.0:9464",
                    self.http.listen
                ),
            )
        })?;
        Ok(Pipeline {
            file: path.to_path_buf(),
            name: self.name,
            report_timezone,
            history_lost: self.history_lost,
            mongo_database: self.mongo.database,
            collections,
            vhost: self.rabbitmq.vhost,
            exchange: self.rabbitmq.exchange,
            queue: self.rabbitmq.queue,
            dead_letter_queue: self.rabbitmq.dead_letter_queue,
            postgres_database: self.postgres.database,
            capture: self.capture,
            projector: self.projector,
            backfill: self.backfill,
            http_listen,
        })
    }
}

#[cfg(test)]
mod tests;
