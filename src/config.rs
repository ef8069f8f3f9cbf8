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
pub const DEFAULT_EXCHANGE: &str = "bowmark.sync";
/// Default projector queue.
pub const DEFAULT_QUEUE: &str = "cdc.projector";
/// Default dead-letter queue of the projector.
pub const DEFAULT_DLQ: &str = "cdc.projector.dlq";
/// Default report time zone: what the legacy production holds.
pub const DEFAULT_TIMEZONE: &str = "UTC";
/// Default HTTP listen address for `/metrics`, `/healthz`, `/readyz`.
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:9464";
/// Default MongoDB URI for a local simulator or replica set.
pub const DEFAULT_MONGO_URI: &str = "mongodb://127.0.0.1:27017/?replicaSet=rs0";
/// Default publisher-confirm window (events in flight).
pub const DEFAULT_CONFIRM_WINDOW: usize = 1024;
/// Default projector prefetch.
pub const DEFAULT_PREFETCH: u16 = 5000;
/// Default projector batch limits.
pub const DEFAULT_BATCH_MAX_EVENTS: usize = 2500;
pub const DEFAULT_BATCH_MAX_BYTES: usize = 8 * 1024 * 1024;
pub const DEFAULT_BATCH_LINGER_MS: u64 = 50;
/// Default backfill chunk size (documents per transaction).
pub const DEFAULT_BACKFILL_CHUNK: usize = 5000;
/// Default backfill workers for the daily-report children.
pub const DEFAULT_BACKFILL_WORKERS: usize = 2;

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

/// The pipeline file, exactly as written (unknown keys are errors).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
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
pub struct MongoSection {
    pub database: String,
    /// Collection name → entity name (`daily_report`, `employee_work`, …).
    pub collections: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitSection {
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
pub struct PostgresSection {
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
pub struct HttpSection {
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
    pub fn entity_of(&self, collection: &str) -> Option<Entity> {
        self.collections.get(collection).copied()
    }

    /// The collection that holds an entity.
    pub fn collection_of(&self, entity: Entity) -> Option<&str> {
        self.collections
            .iter()
            .find(|(_, e)| **e == entity)
            .map(|(c, _)| c.as_str())
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
    pub fn linger(&self) -> Duration {
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

/// Where the services are and how to log in: the environment on top of the pipeline file.
#[derive(Debug, Clone)]
pub struct Settings {
    pub pipeline: Pipeline,
    pub mongo_uri: Secret,
    pub postgres: PostgresConn,
    pub rabbitmq: RabbitConn,
}

#[derive(Debug, Clone)]
pub struct PostgresConn {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Secret,
    pub database: String,
    /// `POSTGRES_URL`, when given, overrides the parts.
    pub url: Option<Secret>,
    /// `sslmode` and its CA (`POSTGRES_SSLMODE`, `POSTGRES_SSLROOTCERT` or the URL's).
    pub tls: crate::tls::PgTls,
}

impl PostgresConn {
    /// A tokio-postgres config for this connection.
    pub fn pg_config(&self) -> Result<tokio_postgres::Config, ConfigError> {
        if let Some(url) = &self.url {
            let mut c: tokio_postgres::Config = crate::pg::split_url(url.expose())
                .rest
                .parse()
                .map_err(|e: tokio_postgres::Error| ConfigError::Env {
                    name: "POSTGRES_URL".into(),
                    message: format!("not a PostgreSQL URL: {e}"),
                })?;
            c.ssl_mode(self.tls.mode.wire());
            return Ok(c);
        }
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.database);
        if !self.password.expose().is_empty() {
            c.password(self.password.expose());
        }
        c.application_name("bowmark-cdc");
        c.ssl_mode(self.tls.mode.wire());
        Ok(c)
    }

    /// The same server, another database (used by tests and the services script).
    pub fn with_database(&self, database: &str) -> PostgresConn {
        PostgresConn {
            database: database.to_string(),
            url: None,
            ..self.clone()
        }
    }
}

#[derive(Debug, Clone)]
pub struct RabbitConn {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Secret,
    pub vhost: String,
    /// `RABBITMQ_URL`, when given, overrides the parts.
    pub url: Option<Secret>,
    /// AMQPS (`RABBITMQ_TLS=true` or an `amqps://` URL).
    pub tls: bool,
    /// `RABBITMQ_CA_FILE`: the broker's CA, beside the public web roots.
    pub ca: Option<crate::tls::CaFile>,
}

impl RabbitConn {
    /// The AMQP URI (a secret: it holds the password).
    pub fn uri(&self) -> Secret {
        if let Some(url) = &self.url {
            return url.clone();
        }
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        Secret::new(format!(
            "{}://{}:{}@{}:{}/{}",
            if self.tls { "amqps" } else { "amqp" },
            enc(&self.user),
            enc(self.password.expose()),
            self.host,
            self.port,
            enc(&self.vhost)
        ))
    }
}

/// Environment lookups, injectable for tests.
pub trait Environment {
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Environment for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).cloned()
    }
}

fn env_port(env: &dyn Environment, name: &str, default: u16) -> Result<u16, ConfigError> {
    match env.get(name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| ConfigError::Env {
            name: name.into(),
            message: format!("{v:?} is not a port number"),
        }),
    }
}

impl Settings {
    /// Apply the environment to a validated pipeline.
    pub fn resolve(pipeline: Pipeline, env: &dyn Environment) -> Result<Settings, ConfigError> {
        let postgres = PostgresConn {
            host: env
                .get("POSTGRES_HOST")
                .unwrap_or_else(|| "127.0.0.1".into()),
            port: env_port(env, "POSTGRES_PORT", 5432)?,
            user: env
                .get("POSTGRES_USER")
                .unwrap_or_else(|| "postgres".into()),
            password: Secret::new(env.get("POSTGRES_PASSWORD").unwrap_or_default()),
            database: env
                .get("POSTGRES_DB")
                .unwrap_or_else(|| pipeline.postgres_database.clone()),
            url: env.get("POSTGRES_URL").map(Secret::new),
            tls: crate::pg::tls_from_env(env)?,
        };
        postgres.pg_config()?;
        let (amqps, ca) = crate::amqp::tls_from_env(env)?;
        let rabbitmq = RabbitConn {
            host: env
                .get("RABBITMQ_HOST")
                .unwrap_or_else(|| "127.0.0.1".into()),
            port: env_port(env, "RABBITMQ_PORT", if amqps { 5671 } else { 5672 })?,
            user: env.get("RABBITMQ_USER").unwrap_or_else(|| "guest".into()),
            password: Secret::new(
                env.get("RABBITMQ_PASSWORD")
                    .unwrap_or_else(|| "guest".into()),
            ),
            vhost: env
                .get("RABBITMQ_VHOST")
                .unwrap_or_else(|| pipeline.vhost.clone()),
            url: env.get("RABBITMQ_URL").map(Secret::new),
            tls: amqps,
            ca,
        };
        if let Some(url) = &rabbitmq.url
            && !url.expose().starts_with("amqp://")
            && !url.expose().starts_with("amqps://")
        {
            return Err(ConfigError::Env {
                name: "RABBITMQ_URL".into(),
                message: "must start with amqp:// or amqps://".into(),
            });
        }
        let mongo_uri = Secret::new(
            env.get("MONGO_URI")
                .unwrap_or_else(|| DEFAULT_MONGO_URI.into()),
        );
        if !mongo_uri.expose().starts_with("mongodb://")
            && !mongo_uri.expose().starts_with("mongodb+srv://")
        {
            return Err(ConfigError::Env {
                name: "MONGO_URI".into(),
                message: "must start with mongodb:// or mongodb+srv://".into(),
            });
        }
        let pipeline = pipeline.with_uri_database(&mongo_uri)?;
        Ok(Settings {
            pipeline,
            mongo_uri,
            postgres,
            rabbitmq,
        })
    }

    /// Load the file and apply the process environment.
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        Settings::resolve(Pipeline::load(path)?, &ProcessEnv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "paving"
[mongo]
database = "paving"
collections = { employees = "employee", dailyreports = "daily_report" }
[rabbitmq]
vhost = "bowmark"
[postgres]
database = "bowmark_reports_paving"
"#;

    fn parse(text: &str) -> Result<Pipeline, ConfigError> {
        Pipeline::parse(Path::new("p.toml"), text)
    }

    #[test]
    fn defaults_fill_optional_settings() {
        let p = parse(GOOD).unwrap();
        assert_eq!(p.exchange, DEFAULT_EXCHANGE);
        assert_eq!(p.report_timezone, chrono_tz::UTC);
        assert_eq!(p.history_lost, HistoryLostPolicy::Fail);
        assert_eq!(p.entity_of("employees"), Some(Entity::Employee));
    }

    #[test]
    fn misspelled_key_is_named_with_its_path() {
        let err = parse(&GOOD.replace("vhost =", "vhots ="))
            .unwrap_err()
            .to_string();
        assert!(err.contains("p.toml"), "{err}");
        assert!(err.contains("vhots"), "{err}");
    }

    #[test]
    fn syntax_error_names_file_line_and_column() {
        let text = GOOD.replace("vhost = \"bowmark\"", "vhost = \"bowmark");
        let err = parse(&text).unwrap_err().to_string();
        let line = text.lines().position(|l| l.starts_with("vhost")).unwrap() + 1;
        assert!(
            err.starts_with(&format!("p.toml:{line}:")),
            "names the file and line {line}: {err}"
        );
        assert!(err.contains("TOML syntax error"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }

    #[test]
    fn unknown_entity_is_named() {
        let err = parse(&GOOD.replace("\"employee\"", "\"employe\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("mongo.collections.employees"), "{err}");
    }

    #[test]
    fn bad_timezone_and_policy_are_named() {
        let err = parse(&format!("report_timezone = \"Mars/Base\"\n{GOOD}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("report_timezone"), "{err}");
        let err = parse(&format!("history_lost = \"skip\"\n{GOOD}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("history_lost"), "{err}");
    }

    #[test]
    fn backfill_workers_default_to_two_and_out_of_range_is_named() {
        assert_eq!(parse(GOOD).unwrap().backfill.workers, 2);
        for bad in ["0", "5"] {
            let err = parse(&format!("{GOOD}[backfill]\nworkers = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("backfill.workers"), "{err}");
        }
        let one = parse(&format!("{GOOD}[backfill]\nworkers = 1\n")).unwrap();
        assert_eq!(one.backfill.workers, 1);
    }

    #[test]
    fn environment_wins_and_secrets_stay_hidden() {
        let mut env = BTreeMap::new();
        env.insert("RABBITMQ_VHOST".to_string(), "other".to_string());
        env.insert("POSTGRES_DB".to_string(), "db2".to_string());
        env.insert("POSTGRES_PASSWORD".to_string(), "hunter2".to_string());
        env.insert("RABBITMQ_PASSWORD".to_string(), "rabbit-secret".to_string());
        let s = Settings::resolve(parse(GOOD).unwrap(), &env).unwrap();
        assert_eq!(s.rabbitmq.vhost, "other");
        assert_eq!(s.postgres.database, "db2");
        let dbg = format!("{s:?}");
        assert!(
            !dbg.contains("hunter2") && !dbg.contains("rabbit-secret"),
            "{dbg}"
        );
        assert!(s.rabbitmq.uri().expose().ends_with("/other"));
    }

    fn with_mongo_uri(uri: &str) -> Result<Settings, ConfigError> {
        let env: BTreeMap<String, String> = [("MONGO_URI".to_string(), uri.to_string())].into();
        Settings::resolve(parse(GOOD).unwrap(), &env)
    }

    #[test]
    fn the_database_mongo_uri_names_must_agree_with_the_file() {
        let uri = "mongodb://user:hunter2@db.example:27017/paving?authSource=admin&replicaSet=rs0";
        assert_eq!(
            with_mongo_uri(uri).unwrap().pipeline.mongo_database,
            "paving"
        );
        let s = with_mongo_uri("mongodb://db.example:27017/?replicaSet=rs0").unwrap();
        assert_eq!(
            s.pipeline.mongo_database, "paving",
            "no database in the URI: the file's"
        );
        let err = with_mongo_uri(&uri.replace("/paving?", "/bowmark?"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("mongo.database"), "{err}");
        assert!(
            err.contains("\"paving\"") && err.contains("\"bowmark\""),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
        let err = with_mongo_uri("mongodb://user:hunter2@db.example:notaport/paving")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("MONGO_URI") && !err.contains("hunter2"),
            "{err}"
        );
    }
}
