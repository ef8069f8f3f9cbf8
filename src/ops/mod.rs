//! Operator commands beside the daemon: `reproject` (rebuild the star rows from the mirror),
//! `status` (one screen on a pipeline's health), `verify` (source against mirror, mirror
//! against star) and `dlq` (list, replay or purge dead letters). Each works with the daemon
//! running or not; only `verify` against a live source reads MongoDB.

pub mod dlq;
pub mod reproject;
pub mod status;
pub mod verify;

use tokio_postgres::Client;

use crate::config::{ConfigError, Settings};

/// A failure of an operator command to reach or read its services.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot connect to PostgreSQL database {database}")]
    Connect {
        database: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("PostgreSQL ({what})")]
    Postgres {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "database {database} is not migrated ({table} is missing): run `bowmark-cdc migrate --pipeline …` first"
    )]
    NotMigrated {
        database: String,
        table: &'static str,
    },
    #[error("projection")]
    Project(#[source] crate::project::ProjectError),
    #[error("cannot connect to RabbitMQ (vhost {vhost})")]
    BrokerConnect {
        vhost: String,
        #[source]
        source: lapin::Error,
    },
    #[error("RabbitMQ ({what})")]
    Broker {
        what: &'static str,
        #[source]
        source: lapin::Error,
    },
    #[error("reading the source")]
    Source(#[source] crate::backfill::BackfillError),
    #[error("{0}")]
    Usage(String),
    #[error("dead letter {message_id}: {detail}")]
    Replay { message_id: String, detail: String },
}

impl OpsError {
    pub(crate) fn pg(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> OpsError {
        move |source| OpsError::Postgres { what, source }
    }

    pub(crate) fn broker(what: &'static str) -> impl FnOnce(lapin::Error) -> OpsError {
        move |source| OpsError::Broker { what, source }
    }
}

/// One PostgreSQL session for an operator command (notices of the projection's scratch tables
/// silenced).
pub(crate) async fn connect_pg(settings: &Settings) -> Result<Client, OpsError> {
    let cfg = settings.postgres.pg_config()?;
    crate::pg::command_session(&cfg, &settings.postgres.tls, "operator command")
        .await
        .map_err(|source| OpsError::Connect {
            database: settings.postgres.database.clone(),
            source,
        })
}

/// Fail with [`OpsError::NotMigrated`] when one of `tables` is missing.
pub(crate) async fn require_tables(
    client: &Client,
    settings: &Settings,
    tables: &[&'static str],
) -> Result<(), OpsError> {
    for table in tables {
        let present: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[table])
            .await
            .map_err(OpsError::pg("catalog"))?
            .get(0);
        if !present {
            return Err(OpsError::NotMigrated {
                database: settings.postgres.database.clone(),
                table,
            });
        }
    }
    Ok(())
}

/// A broker connection for an operator command, named in the management UI.
pub(crate) async fn connect_broker(
    settings: &Settings,
    who: &str,
) -> Result<lapin::Connection, OpsError> {
    let props = lapin::ConnectionProperties::default()
        .with_connection_name(format!("bowmark-cdc {who} {}", settings.pipeline.name).into());
    crate::amqp::connect(&settings.rabbitmq, props)
        .await
        .map_err(|source| OpsError::BrokerConnect {
            vhost: settings.rabbitmq.vhost.clone(),
            source,
        })
}

/// Close a broker connection (lapin must be closed before the runtime shuts down).
pub(crate) async fn close_broker(conn: &lapin::Connection) {
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        conn.close(200, "bye".into()),
    )
    .await;
}

/// `1h02m`, `3m05s`, `12s`: a duration for people.
pub(crate) fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    if s >= 86_400 {
        format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600)
    } else if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_read_well() {
        assert_eq!(super::human_duration(5), "5s");
        assert_eq!(super::human_duration(185), "3m05s");
        assert_eq!(super::human_duration(3720), "1h02m");
        assert_eq!(super::human_duration(90_000), "1d01h");
        assert_eq!(super::human_duration(-3), "0s");
    }
}
