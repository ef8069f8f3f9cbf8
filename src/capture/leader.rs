//! High availability: a PostgreSQL session advisory lock elects the one capture that tails a
//! pipeline. The lock lives on a dedicated connection; when the holder dies its session ends
//! and PostgreSQL releases the lock, so a standby replica (polling every second) takes over.
//! If the lock connection is lost while active, the lease reports it and tailing stops at once.

use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::config::PostgresConn;

/// How often a standby replica asks for the lock.
pub const STANDBY_POLL: Duration = Duration::from_secs(1);
/// How often the holder checks that its lock session is still alive.
pub const LEASE_PING: Duration = Duration::from_secs(2);

/// The advisory-lock key of a pipeline's capture ([`crate::locks::capture`]).
pub fn lock_key(pipeline: &str) -> i64 {
    crate::locks::capture(pipeline)
}

/// The lock session: a dedicated connection (also used for checkpoint writes once the lock is
/// held) and a token that is cancelled when that session ends (the lock is then released).
pub struct Lease {
    pub client: Client,
    lost: CancellationToken,
}

impl Lease {
    /// Cancelled when the lock session is gone (the lock is no longer ours).
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }
}

impl Lease {
    /// Prove the lock session is alive (a round trip, bounded by [`LEASE_PING`] × 2).
    pub async fn check(&self) -> Result<(), LeaderError> {
        match tokio::time::timeout(LEASE_PING * 2, self.client.simple_query("SELECT 1")).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                self.lost.cancel();
                Err(LeaderError::Postgres(e))
            }
            Err(_) => {
                self.lost.cancel();
                Err(LeaderError::Unresponsive)
            }
        }
    }
}

impl Lease {
    /// Open the dedicated lock session (the lock is not taken yet).
    pub async fn connect(pg: &PostgresConn) -> Result<Lease, LeaderError> {
        let mut cfg = pg.pg_config().map_err(LeaderError::Config)?;
        // Named for `bowmark-cdc status` (pg_stat_activity shows who holds the lock).
        cfg.application_name(format!("bowmark-cdc capture {}", host_name()));
        let (client, connection) = crate::pg::connect(&cfg, &pg.tls).await?;
        let lost = CancellationToken::new();
        let on_end = lost.clone();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::warn!(error = %err, "capture lock session ended");
            }
            on_end.cancel();
        });
        Ok(Lease { client, lost })
    }

    /// Try the lock once on this session: `false` while another session holds it.
    pub async fn try_lock(&self, key: i64) -> Result<bool, LeaderError> {
        let row = self
            .client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await?;
        Ok(row.get(0))
    }
}

/// This host's name (the pod name in Kubernetes), or `?`.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "?".into())
}

/// A failure to reach PostgreSQL for the lock.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("PostgreSQL (capture lock session): {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("PostgreSQL (capture lock session) did not answer within {}s", (LEASE_PING * 2).as_secs())]
    Unresponsive,
    #[error("{0}")]
    Config(#[source] crate::config::ConfigError),
}

#[cfg(test)]
mod tests {
    #[test]
    fn lock_keys_are_stable_and_differ_per_pipeline() {
        assert_eq!(super::lock_key("paving"), super::lock_key("paving"));
        assert_ne!(super::lock_key("paving"), super::lock_key("concrete"));
    }
}
