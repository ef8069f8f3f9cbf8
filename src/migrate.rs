//! Schema migrations: the legacy star schema and the `cdc` bookkeeping schema, embedded in the
//! binary with refinery (`migrations/`), plus adoption of databases that the legacy dbmate
//! migrations built.
//!
//! One run, under a PostgreSQL advisory lock held on a connection of its own (so two `migrate`
//! processes started together run one after the other):
//!
//! 1. **Adopt** — when refinery's history table is missing or empty and dbmate's
//!    `schema_migrations` exists, every embedded version found in `schema_migrations` is
//!    recorded in refinery's history with the embedded migration's checksum (the baseline),
//!    without touching any other object. The recorded versions must be a prefix of the
//!    embedded ones: a database that holds a later legacy version but not an earlier one is
//!    refused, because refinery applies in version order and re-ordering `ALTER TABLE … ADD
//!    COLUMN` would change the legacy column order.
//! 2. **Apply** — refinery applies what is new (`abort_divergent`: an edited applied migration
//!    is an error).
//! 3. **Dual ledger** — when `schema_migrations` exists, every version in refinery's history
//!    that it lacks is added, so falling back to the dbmate init container never re-runs a
//!    migration. This also repairs a run that stopped between the two steps.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio_postgres::Client;

use crate::config::{ConfigError, PostgresConn};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Key of the session-level advisory lock that serializes `migrate` runs on one database
/// ([`crate::locks`]).
pub(crate) const MIGRATE_LOCK_KEY: i64 = crate::locks::MIGRATE;

/// refinery's history table (its default name), in the connection's default schema.
pub(crate) const HISTORY_TABLE: &str = "refinery_schema_history";

/// dbmate's ledger table.
pub(crate) const DBMATE_TABLE: &str = "schema_migrations";

/// The versions the legacy dbmate migrations applied, oldest first.
#[cfg(test)]
const LEGACY_VERSIONS: [i64; 4] = [
    20260128205200,
    20260202120000,
    20260203100000,
    20260325120000,
];

/// How long to wait for a connection before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// One migration, by version and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationId {
    pub version: i64,
    pub name: String,
}

impl std::fmt::Display for MigrationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "V{}__{}", self.version, self.name)
    }
}

/// What one `migrate` run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateReport {
    /// The database that was migrated.
    pub database: String,
    /// True when this run adopted a database built by the legacy dbmate migrations.
    pub adopted: bool,
    /// The versions recorded as already applied (from `schema_migrations`) by this run's
    /// adoption; empty when nothing was adopted.
    pub baseline: Vec<MigrationId>,
    /// The migrations this run applied, in order.
    pub applied: Vec<MigrationId>,
    /// Versions this run added to dbmate's `schema_migrations` (the dual ledger).
    pub dbmate_recorded: Vec<i64>,
    /// Versions in `schema_migrations` that no embedded migration has (left alone).
    pub dbmate_unknown: Vec<String>,
    /// The newest version now applied.
    pub current: Option<i64>,
    /// Indexes and foreign keys rebuilt that an interrupted bulk backfill had dropped.
    pub rebuilt: usize,
}

impl MigrateReport {
    /// Nothing was adopted or applied.
    pub fn is_up_to_date(&self) -> bool {
        !self.adopted && self.applied.is_empty()
    }
}

/// A failed `migrate` run; every message names what failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("invalid PostgreSQL settings")]
    Config(#[source] ConfigError),
    #[error("cannot connect to PostgreSQL database {database:?} at {host}")]
    Connect {
        database: String,
        host: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("timed out after {0:?} connecting to PostgreSQL database {1:?}")]
    ConnectTimeout(Duration, String),
    #[error("cannot take the migration lock (pg_advisory_lock({MIGRATE_LOCK_KEY}))")]
    Lock(#[source] tokio_postgres::Error),
    #[error("cannot read the migration ledgers ({HISTORY_TABLE}, {DBMATE_TABLE})")]
    ReadLedger(#[source] tokio_postgres::Error),
    #[error("refusing to adopt the dbmate database: {0}")]
    AdoptionRefused(String),
    #[error("cannot record the dbmate baseline in {HISTORY_TABLE}")]
    Baseline(#[source] tokio_postgres::Error),
    #[error("applying the embedded migrations failed (applied before the failure: {applied:?})")]
    Apply {
        applied: Vec<String>,
        #[source]
        source: refinery::Error,
    },
    #[error("cannot record the applied versions in dbmate's {DBMATE_TABLE}")]
    DualLedger(#[source] tokio_postgres::Error),
    #[error(
        "cannot rebuild the indexes and foreign keys an interrupted bulk backfill dropped \
         (cdc.deferred_ddl)"
    )]
    Rebuild(#[source] tokio_postgres::Error),
}

/// The embedded migrations, oldest first.
pub fn embedded_migrations() -> Vec<MigrationId> {
    let mut v: Vec<MigrationId> = embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| MigrationId {
            version: m.version(),
            name: m.name().to_string(),
        })
        .collect();
    v.sort_by_key(|m| m.version);
    v
}

/// Bring the database up to date: adopt a legacy dbmate database if needed, apply what is new,
/// keep dbmate's ledger in step. Safe to run concurrently and repeatedly.
pub async fn run(conn: &PostgresConn) -> Result<MigrateReport, MigrateError> {
    let lock = connect(conn).await?;
    take_lock(&lock).await?;
    let mut client = connect(conn).await?;
    let result = match migrate_locked(&mut client, &target(conn).0).await {
        Ok(mut report) => crate::backfill::rebuild_deferred(&mut client)
            .await
            .map(|n| {
                report.rebuilt = n;
                report
            })
            .map_err(MigrateError::Rebuild),
        Err(e) => Err(e),
    };
    // Closing the lock connection releases the lock even if the unlock fails.
    let _ = lock
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATE_LOCK_KEY])
        .await;
    result
}

/// The database and server a connection setting points at (`POSTGRES_URL` included), for
/// messages.
pub fn target(conn: &PostgresConn) -> (String, String) {
    let Ok(cfg) = conn.pg_config() else {
        return (
            conn.database.clone(),
            format!("{}:{}", conn.host, conn.port),
        );
    };
    let database = cfg.get_dbname().unwrap_or(&conn.database).to_string();
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => conn.host.clone(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(conn.port);
    (database, format!("{host}:{port}"))
}

async fn connect(conn: &PostgresConn) -> Result<Client, MigrateError> {
    let mut cfg = conn.pg_config().map_err(MigrateError::Config)?;
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(CONNECT_TIMEOUT);
    }
    let (database, host) = target(conn);
    let connecting = crate::pg::connect(&cfg, &conn.tls);
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT * 2, connecting)
        .await
        .map_err(|_| MigrateError::ConnectTimeout(CONNECT_TIMEOUT * 2, database.clone()))?
        .map_err(|source| MigrateError::Connect {
            database,
            host,
            source,
        })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(error = %error, "migrate: PostgreSQL connection ended");
        }
    });
    Ok(client)
}

async fn take_lock(lock: &Client) -> Result<(), MigrateError> {
    let got: bool = lock
        .query_one("SELECT pg_try_advisory_lock($1)", &[&MIGRATE_LOCK_KEY])
        .await
        .map_err(MigrateError::Lock)?
        .get(0);
    if !got {
        tracing::info!("migrate: another migrate run holds the lock; waiting for it");
        lock.execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_LOCK_KEY])
            .await
            .map_err(MigrateError::Lock)?;
    }
    Ok(())
}

async fn migrate_locked(
    client: &mut Client,
    database: &str,
) -> Result<MigrateReport, MigrateError> {
    let mut report = MigrateReport {
        database: database.to_string(),
        ..MigrateReport::default()
    };
    adopt(client, &mut report).await?;

    let runner = embedded::migrations::runner()
        .set_abort_divergent(true)
        .set_abort_missing(true);
    let applied = runner
        .run_async(client)
        .await
        .map_err(|source| MigrateError::Apply {
            applied: source
                .report()
                .map(|r| {
                    r.applied_migrations()
                        .iter()
                        .map(|m| m.to_string())
                        .collect()
                })
                .unwrap_or_default(),
            source,
        })?;
    report.applied = applied
        .applied_migrations()
        .iter()
        .map(|m| MigrationId {
            version: m.version(),
            name: m.name().to_string(),
        })
        .collect();
    for m in &report.applied {
        tracing::info!(version = m.version, name = %m.name, "migrate: applied");
    }

    report.dbmate_recorded = record_in_dbmate_ledger(client).await?;
    report.current = client
        .query_one(&format!("SELECT max(version) FROM {HISTORY_TABLE}"), &[])
        .await
        .map_err(MigrateError::ReadLedger)?
        .get(0);
    Ok(report)
}

async fn table_exists(client: &Client, table: &str) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await?;
    Ok(row.get(0))
}

/// Record the dbmate baseline when refinery has no history yet.
async fn adopt(client: &mut Client, report: &mut MigrateReport) -> Result<(), MigrateError> {
    if !table_exists(client, DBMATE_TABLE)
        .await
        .map_err(MigrateError::ReadLedger)?
    {
        return Ok(());
    }
    if table_exists(client, HISTORY_TABLE)
        .await
        .map_err(MigrateError::ReadLedger)?
    {
        let rows: i64 = client
            .query_one(&format!("SELECT count(*) FROM {HISTORY_TABLE}"), &[])
            .await
            .map_err(MigrateError::ReadLedger)?
            .get(0);
        if rows > 0 {
            return Ok(());
        }
    }
    let recorded: Vec<String> = client
        .query(&format!("SELECT version::text FROM {DBMATE_TABLE}"), &[])
        .await
        .map_err(MigrateError::ReadLedger)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan =
        plan_baseline(&embedded_migrations(), &recorded).map_err(MigrateError::AdoptionRefused)?;
    report.dbmate_unknown = plan.unknown;
    if !report.dbmate_unknown.is_empty() {
        tracing::warn!(
            versions = ?report.dbmate_unknown,
            "migrate: schema_migrations holds versions no embedded migration has; left alone"
        );
    }
    if plan.baseline.is_empty() {
        return Ok(());
    }
    write_baseline(client, &plan.baseline).await?;
    tracing::info!(
        versions = ?plan.baseline.iter().map(|m| m.version).collect::<Vec<_>>(),
        "migrate: adopted the dbmate database (baseline recorded)"
    );
    report.adopted = true;
    report.baseline = plan.baseline;
    Ok(())
}

/// Which embedded migrations a dbmate ledger already applied.
#[derive(Debug, PartialEq, Eq)]
struct BaselinePlan {
    baseline: Vec<MigrationId>,
    unknown: Vec<String>,
}

/// Decide the baseline from the dbmate ledger. The recorded embedded versions must be the
/// oldest ones (a prefix), otherwise an older migration would have to run after a newer one.
fn plan_baseline(embedded: &[MigrationId], recorded: &[String]) -> Result<BaselinePlan, String> {
    let embedded_versions: BTreeSet<i64> = embedded.iter().map(|m| m.version).collect();
    let mut found = BTreeSet::new();
    let mut unknown = Vec::new();
    for v in recorded {
        match v.trim().parse::<i64>() {
            Ok(n) if embedded_versions.contains(&n) => {
                found.insert(n);
            }
            _ => unknown.push(v.clone()),
        }
    }
    unknown.sort();
    let baseline: Vec<MigrationId> = embedded
        .iter()
        .take_while(|m| found.contains(&m.version))
        .cloned()
        .collect();
    if baseline.len() != found.len() {
        let missing: Vec<String> = embedded
            .iter()
            .skip(baseline.len())
            .take_while(|m| !found.contains(&m.version))
            .map(|m| m.version.to_string())
            .collect();
        let later: Vec<String> = found
            .iter()
            .filter(|v| baseline.iter().all(|b| b.version != **v))
            .map(|v| v.to_string())
            .collect();
        return Err(format!(
            "{DBMATE_TABLE} records {} but not the older {}; applying an older migration after \
             a newer one would not rebuild the legacy schema exactly. Finish the legacy \
             migrations with dbmate (`dbmate up`) and run migrate again",
            later.join(", "),
            missing.join(", ")
        ));
    }
    Ok(BaselinePlan { baseline, unknown })
}

/// Create refinery's history table as refinery does and record the baseline, in one
/// transaction.
async fn write_baseline(client: &mut Client, baseline: &[MigrationId]) -> Result<(), MigrateError> {
    let checksums: Vec<(i64, String, String)> = embedded::migrations::runner()
        .get_migrations()
        .iter()
        .filter(|m| baseline.iter().any(|b| b.version == m.version()))
        .map(|m| (m.version(), m.name().to_string(), m.checksum().to_string()))
        .collect();
    let applied_on = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let tx = client.transaction().await.map_err(MigrateError::Baseline)?;
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {HISTORY_TABLE} (
             version int8 PRIMARY KEY,
             name VARCHAR(255),
             applied_on VARCHAR(255),
             checksum VARCHAR(255))"
    ))
    .await
    .map_err(MigrateError::Baseline)?;
    let insert = format!(
        "INSERT INTO {HISTORY_TABLE} (version, name, applied_on, checksum) VALUES ($1, $2, $3, $4)"
    );
    for (version, name, checksum) in &checksums {
        tx.execute(&insert, &[version, name, &applied_on, checksum])
            .await
            .map_err(MigrateError::Baseline)?;
    }
    tx.commit().await.map_err(MigrateError::Baseline)
}

/// Add to dbmate's ledger (when it exists) every version refinery applied that it lacks.
async fn record_in_dbmate_ledger(client: &Client) -> Result<Vec<i64>, MigrateError> {
    if !table_exists(client, DBMATE_TABLE)
        .await
        .map_err(MigrateError::DualLedger)?
    {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            &format!(
                "INSERT INTO {DBMATE_TABLE} (version)
                 SELECT h.version::text FROM {HISTORY_TABLE} h
                  WHERE NOT EXISTS (SELECT 1 FROM {DBMATE_TABLE} s WHERE s.version = h.version::text)
                  ORDER BY h.version
                 RETURNING version"
            ),
            &[],
        )
        .await
        .map_err(MigrateError::DualLedger)?;
    let mut versions: Vec<i64> = rows
        .iter()
        .filter_map(|r| r.get::<_, String>(0).parse().ok())
        .collect();
    versions.sort();
    Ok(versions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(versions: &[i64]) -> Vec<MigrationId> {
        versions
            .iter()
            .map(|v| MigrationId {
                version: *v,
                name: format!("m{v}"),
            })
            .collect()
    }

    fn strings(versions: &[&str]) -> Vec<String> {
        versions.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn embedded_migrations_start_with_the_four_legacy_versions() {
        let versions: Vec<i64> = embedded_migrations().iter().map(|m| m.version).collect();
        assert_eq!(versions[..4], LEGACY_VERSIONS);
        assert!(versions.contains(&20261127000001));
    }

    #[test]
    fn full_legacy_ledger_gives_the_four_versions_as_baseline() {
        let plan = plan_baseline(&ids(&[1, 2, 3, 4, 10]), &strings(&["4", "2", "1", "3"])).unwrap();
        assert_eq!(plan.baseline, ids(&[1, 2, 3, 4]));
        assert!(plan.unknown.is_empty());
    }

    #[test]
    fn a_prefix_is_adopted_and_unknown_versions_are_reported() {
        let plan = plan_baseline(&ids(&[1, 2, 3, 4]), &strings(&["1", "2", "99", "x"])).unwrap();
        assert_eq!(plan.baseline, ids(&[1, 2]));
        assert_eq!(plan.unknown, strings(&["99", "x"]));
    }

    #[test]
    fn a_gap_in_the_ledger_is_refused_naming_the_versions() {
        let err = plan_baseline(&ids(&[1, 2, 3, 4]), &strings(&["1", "3"])).unwrap_err();
        assert!(err.contains("records 3 but not the older 2"), "{err}");
        assert!(err.contains("dbmate up"), "{err}");
    }

    #[test]
    fn an_empty_ledger_adopts_nothing() {
        let plan = plan_baseline(&ids(&[1, 2]), &[]).unwrap();
        assert!(plan.baseline.is_empty());
    }
}
