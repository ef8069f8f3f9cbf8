//! High availability: a PostgreSQL session advisory lock elects the one capture that tails a
//! pipeline. The lock lives on a dedicated session (also the only one that writes the
//! checkpoint); when that session ends PostgreSQL releases the lock and a standby replica
//! (polling every [`STANDBY_POLL`]) takes over.
//!
//! A session ends by itself only when its process dies cleanly. A frozen process (SIGSTOP, a
//! stalled node) or a node cut off keeps its TCP connection, and with it the lock, for hours.
//! So the lease is bounded on both sides by [`LEASE_TTL`]:
//!
//! - **Server side:** the lock session runs with `idle_session_timeout = LEASE_TTL`, so
//!   PostgreSQL ends it (releasing the lock) once no query arrived on it for that long. A live
//!   holder keeps it busy: a keeper task pings it every [`LEASE_PING`].
//! - **Client side:** the holder treats the lease as valid only until `LEASE_TTL -
//!   LEASE_MARGIN` after *sending* its last answered ping (the server's idle timer restarts
//!   after it received that ping, so the server cannot end the session earlier). Before every
//!   publish and every checkpoint write the capture calls [`Lease::valid`]; a lease past that
//!   point is lost, and the capture stands down. After SIGCONT a frozen holder therefore stops
//!   before it publishes or checkpoints again, and its checkpoint writes would fail anyway: they
//!   go over the lock session, which the server has ended.
//!
//! Takeover after the holder freezes or dies: at most `LEASE_TTL` + [`STANDBY_POLL`] (11 s).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::CaptureError;
use crate::config::PostgresConn;

/// How often a standby replica asks for the lock.
pub(crate) const STANDBY_POLL: Duration = Duration::from_secs(1);
/// How often the lock session is pinged (keeping the server's idle timer from firing).
pub(crate) const LEASE_PING: Duration = Duration::from_secs(2);
/// How long the lock outlives its holder's last query: the server ends an idle lock session
/// after this long (`idle_session_timeout`).
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How much earlier than the server the holder gives its lease up (scheduling and clock-rate
/// slack between the two machines).
pub const LEASE_MARGIN: Duration = Duration::from_secs(2);

/// The advisory-lock key of a pipeline's capture ([`crate::locks::capture`]).
pub fn lock_key(pipeline: &str) -> i64 {
    crate::locks::capture(pipeline)
}

/// The lock session: a dedicated connection (also used for checkpoint writes once the lock is
/// held), a token that is cancelled when that session ends (the lock is then released), and
/// the local deadline of the lease.
pub struct Lease {
    pub client: Arc<Client>,
    lost: CancellationToken,
    /// When the last answered ping was sent, in nanoseconds after `epoch`.
    renewed: Arc<AtomicU64>,
    epoch: Instant,
}

impl Lease {
    /// Cancelled when the lock session is gone (the lock is no longer ours).
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    /// Whether the lease still holds: call before publishing or writing the checkpoint. Past
    /// its deadline the lease is lost (and [`Lease::lost`] cancelled), whatever the session
    /// says: the server may have ended it and another replica may hold the lock.
    pub fn valid(&self) -> Result<(), CaptureError> {
        if self.lost.is_cancelled() {
            return Err(CaptureError::LeaseLost);
        }
        let renewed = Duration::from_nanos(self.renewed.load(Ordering::Acquire));
        let silent = self.epoch.elapsed().saturating_sub(renewed);
        if silent >= LEASE_TTL - LEASE_MARGIN {
            tracing::warn!(
                unconfirmed_ms = silent.as_millis() as u64,
                lease_ttl_s = LEASE_TTL.as_secs(),
                "capture lease expired (no answered ping on the lock session in time; was this \
                 process frozen or cut off?): standing down before publishing or writing the \
                 checkpoint again"
            );
            self.lost.cancel();
            return Err(CaptureError::LeaseLost);
        }
        Ok(())
    }

    /// Prove the lock session is alive (a round trip, bounded by [`LEASE_PING`] × 2), then
    /// check the lease's deadline.
    pub async fn check(&self) -> Result<(), CaptureError> {
        ping(&self.client, &self.renewed, self.epoch, &self.lost).await?;
        self.valid()
    }

    /// Open the dedicated lock session (the lock is not taken yet): TCP keepalives and a user
    /// timeout notice a dead server; the server's idle timeout ends the session of a holder
    /// that stopped pinging; a keeper task pings it until it ends.
    pub async fn connect(pg: &PostgresConn) -> Result<Lease, LeaderError> {
        let mut cfg = pg.pg_config().map_err(LeaderError::Config)?;
        // Named for `bowmark-cdc status` (pg_stat_activity shows who holds the lock).
        cfg.application_name(format!("bowmark-cdc capture {}", host_name()));
        cfg.keepalives(true)
            .keepalives_idle(LEASE_PING)
            .keepalives_interval(LEASE_PING)
            .keepalives_retries(3)
            .tcp_user_timeout(LEASE_TTL)
            .connect_timeout(LEASE_TTL);
        let (client, connection) = crate::pg::connect(&cfg, &pg.tls).await?;
        let lost = CancellationToken::new();
        let on_end = lost.clone();
        // A lease given up ends its session at once: the lock is free for a standby without
        // waiting for the server's timeout (a ping queued before a stall would restart it).
        tokio::spawn(async move {
            tokio::select! {
                ended = connection => if let Err(err) = ended {
                    tracing::warn!(error = %crate::cause::chain(&err), "capture lock session ended");
                },
                _ = on_end.cancelled() => tracing::info!("capture lease lost: lock session closed"),
            }
            on_end.cancel();
        });
        // Before the timeout is set: the server's idle timer starts after it.
        let epoch = Instant::now();
        client
            .batch_execute(&format!(
                "SET idle_session_timeout = {}",
                LEASE_TTL.as_millis()
            ))
            .await?;
        let lease = Lease {
            client: Arc::new(client),
            lost,
            renewed: Arc::new(AtomicU64::new(0)),
            epoch,
        };
        tokio::spawn(keep(
            Arc::downgrade(&lease.client),
            lease.renewed.clone(),
            lease.epoch,
            lease.lost.clone(),
        ));
        Ok(lease)
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

/// The keeper: ping the lock session every [`LEASE_PING`] until it is lost or the lease dropped
/// (it holds the client only during a ping, so dropping the lease closes the session).
async fn keep(
    client: Weak<Client>,
    renewed: Arc<AtomicU64>,
    epoch: Instant,
    lost: CancellationToken,
) {
    let mut every = tokio::time::interval(LEASE_PING);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = lost.cancelled() => return,
            _ = every.tick() => {}
        }
        let Some(client) = client.upgrade() else {
            return;
        };
        if let Err(err) = ping(&client, &renewed, epoch, &lost).await {
            tracing::warn!(error = %err, "capture lock session does not answer");
            return;
        }
    }
}

/// One round trip on the lock session; success moves the lease's deadline to `LEASE_TTL`
/// after the ping was sent. Failure (or no answer within 2 × [`LEASE_PING`]) loses the lease.
async fn ping(
    client: &Client,
    renewed: &AtomicU64,
    epoch: Instant,
    lost: &CancellationToken,
) -> Result<(), CaptureError> {
    // A lost lease is never renewed: the server's idle timer must be left to run out.
    if lost.is_cancelled() {
        return Err(CaptureError::LeaseLost);
    }
    let sent = epoch.elapsed();
    match tokio::time::timeout(LEASE_PING * 2, client.simple_query("SELECT 1")).await {
        Ok(Ok(_)) => {
            let sent = u64::try_from(sent.as_nanos()).unwrap_or(u64::MAX);
            renewed.fetch_max(sent, Ordering::AcqRel);
            Ok(())
        }
        Ok(Err(e)) => {
            lost.cancel();
            Err(CaptureError::Leader(LeaderError::Postgres(e)))
        }
        Err(_) => {
            lost.cancel();
            Err(CaptureError::Leader(LeaderError::Unresponsive))
        }
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
