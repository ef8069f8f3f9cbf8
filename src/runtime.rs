//! `bowmark-cdc run`: the daemon (`--role all|capture|project`). Installs the Prometheus recorder, serves the HTTP port,
//! checks that the database was migrated, turns SIGTERM/SIGINT into a cancellation, runs the
//! stages of the requested role and waits for them. Exit: `Ok` after a clean shutdown, the
//! first fatal stage error otherwise (the other stages are then stopped too).

use std::net::SocketAddr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::capture::{CaptureError, CaptureStage};
use crate::config::{ConfigError, Settings};
use crate::health::{Dependency, Health, Stage};
use crate::http::{self, HttpState};
use crate::metrics as m;
use crate::projector::{self, ProjectorError, ProjectorStage};

/// Which stages this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    All,
    Capture,
    Project,
}

/// Options of `run` beyond the pipeline settings.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub role: Role,
    /// Overrides the pipeline's `http.listen` (flag `--http-listen`, env `CDC_HTTP_LISTEN`).
    pub http_listen: Option<SocketAddr>,
}

/// Tables the daemon needs; `bowmark-cdc migrate` creates them.
const REQUIRED_TABLES: [&str; 2] = ["cdc.checkpoint", "cdc.source_doc"];
/// How often the Prometheus recorder's upkeep runs.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);
/// PostgreSQL connections of the daemon.
const POOL_SIZE: usize = 4;
const POOL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot install the metrics recorder")]
    Recorder(#[source] BuildError),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build the PostgreSQL pool")]
    Pool(#[source] deadpool_postgres::BuildError),
    #[error(
        "database {database} is not migrated ({table} is missing): run `bowmark-cdc migrate --pipeline …` first"
    )]
    SchemaMissing {
        database: String,
        table: &'static str,
    },
    #[error("projector failed")]
    Projector(#[source] ProjectorError),
    #[error("capture failed")]
    Capture(#[source] Box<CaptureError>),
    #[error("a stage task panicked")]
    Panicked(#[source] tokio::task::JoinError),
}

/// Run the daemon until SIGTERM/SIGINT or a fatal error.
pub async fn run(settings: Settings, opts: RunOptions) -> Result<(), RuntimeError> {
    let roles = match opts.role {
        Role::Capture => vec![Stage::Capture],
        Role::All => vec![Stage::Capture, Stage::Projector],
        Role::Project => vec![Stage::Projector],
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signal(shutdown.clone()));
    let metrics = install_recorder()?;
    let health = Health::default();
    let addr = opts.http_listen.unwrap_or(settings.pipeline.http_listen);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| RuntimeError::Listen { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    info!(addr = %bound, pipeline = %settings.pipeline.name, "http listening on /metrics, /healthz, /readyz");
    let http_stop = CancellationToken::new();
    let http = tokio::spawn(http::serve(
        listener,
        HttpState::new(metrics.clone(), health.clone(), &roles),
        http_stop.clone(),
    ));
    tokio::spawn(upkeep(metrics, http_stop.clone()));

    let result = run_stages(&settings, &roles, &health, &shutdown).await;
    http_stop.cancel();
    if let Ok(Err(e)) = http.await {
        warn!(error = %e, "http server ended with an error");
    }
    result
}

async fn run_stages(
    settings: &Settings,
    roles: &[Stage],
    health: &Health,
    shutdown: &CancellationToken,
) -> Result<(), RuntimeError> {
    let pool = make_pool(settings)?;
    let ready = tokio::select! {
        r = wait_for_schema(&pool, settings, health) => r,
        _ = shutdown.cancelled() => return Ok(()),
    };
    ready?;
    let mut tasks = JoinSet::new();
    for role in roles {
        let token = shutdown.clone();
        match role {
            Stage::Capture => {
                let capture = CaptureStage::new(settings.clone(), health.clone());
                tasks.spawn(async move {
                    capture
                        .run(token)
                        .await
                        .map_err(|e| RuntimeError::Capture(Box::new(e)))
                });
            }
            Stage::Projector => {
                let projector = ProjectorStage::new(settings, pool.clone(), health.clone());
                tasks.spawn(
                    async move { projector.run(token).await.map_err(RuntimeError::Projector) },
                );
            }
        }
        info!(stage = ?role, "stage started");
    }
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let outcome = joined.map_err(RuntimeError::Panicked).and_then(|r| r);
        if let Err(e) = outcome {
            shutdown.cancel();
            first_error.get_or_insert(e);
        }
    }
    pool.close();
    match first_error {
        Some(e) => Err(e),
        None => {
            info!("all stages stopped cleanly");
            Ok(())
        }
    }
}

/// Serve `/metrics` and `/healthz` on `addr` until `stop` (the backfill Job's port). A port
/// that cannot be bound or a recorder that cannot be installed is logged, not fatal: the
/// backfill's work does not depend on being scraped. Returns the bound address.
pub async fn serve_metrics(addr: SocketAddr, stop: CancellationToken) -> Option<SocketAddr> {
    let handle = match install_recorder() {
        Ok(h) => h,
        Err(e) => {
            warn!(error = %e, "metrics not served");
            return None;
        }
    };
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            warn!(%addr, error = %e, "metrics not served: cannot listen");
            return None;
        }
    };
    let bound = listener.local_addr().unwrap_or(addr);
    info!(addr = %bound, "http listening on /metrics, /healthz");
    tokio::spawn(async move {
        let served = axum::serve(listener, http::metrics_router(handle))
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            warn!(error = %e, "http server ended with an error");
        }
    });
    Some(bound)
}

/// Install the process-wide Prometheus recorder (histogram buckets, metric descriptions).
pub fn install_recorder() -> Result<PrometheusHandle, RuntimeError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &m::SECONDS_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(m::PROJECTOR_BATCH_EVENTS.into()),
                &m::BATCH_EVENTS_BUCKETS,
            )
        })
        .and_then(|b| b.install_recorder())
        .map_err(RuntimeError::Recorder)?;
    m::describe();
    Ok(handle)
}

async fn upkeep(handle: PrometheusHandle, stop: CancellationToken) {
    let mut every = tokio::time::interval(UPKEEP_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => handle.run_upkeep(),
        }
    }
}

/// SIGTERM (Kubernetes) or SIGINT (a terminal) cancels `shutdown`.
pub async fn on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers; stop with SIGKILL only");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    info!(signal = name, "shutdown requested");
    shutdown.cancel();
}

/// The daemon's PostgreSQL pool (also used by the load harness).
pub fn make_pool(settings: &Settings) -> Result<Pool, RuntimeError> {
    let mut pg = settings.postgres.pg_config()?;
    // The projection's scratch tables are `CREATE TEMP TABLE IF NOT EXISTS`: without this every
    // batch would log two NOTICEs.
    pg.options("-c client_min_messages=warning");
    let manager = Manager::from_config(
        pg,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Verified,
        },
    );
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .wait_timeout(Some(POOL_TIMEOUT))
        .create_timeout(Some(POOL_TIMEOUT))
        .recycle_timeout(Some(POOL_TIMEOUT))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(RuntimeError::Pool)
}

/// Wait for PostgreSQL (retrying with the projector's policy), then fail fast when the
/// database was never migrated.
async fn wait_for_schema(
    pool: &Pool,
    settings: &Settings,
    health: &Health,
) -> Result<(), RuntimeError> {
    let mut delays = projector::retry_policy();
    let client = loop {
        match pool.get().await {
            Ok(c) => break c,
            Err(e) => {
                let delay = delays.next_delay();
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "PostgreSQL not reachable yet");
                tokio::time::sleep(delay).await;
            }
        }
    };
    for table in REQUIRED_TABLES {
        let present = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await
            .map(|row| row.get::<_, bool>(0))
            .unwrap_or(false);
        if !present {
            return Err(RuntimeError::SchemaMissing {
                database: settings.postgres.database.clone(),
                table,
            });
        }
    }
    // A killed bulk backfill leaves star tables without some indexes and foreign keys: correct
    // but slow to query. Say so; the next backfill or `migrate` rebuilds them.
    if let Ok(row) = client
        .query_one(
            "SELECT count(*), COALESCE(string_agg(DISTINCT table_name, ','), '') \
             FROM cdc.deferred_ddl",
            &[],
        )
        .await
    {
        let (pending, tables): (i64, String) = (row.get(0), row.get(1));
        if pending > 0 {
            warn!(
                pending,
                tables,
                "indexes and foreign keys dropped by an unfinished bulk \
                backfill are not rebuilt yet (cdc.deferred_ddl); a running backfill rebuilds \
                them when done, else run the backfill again or `bowmark-cdc migrate`"
            );
        }
    }
    warn_outdated_rules(&client, &settings.pipeline.name).await;
    health.set_connected(Dependency::Postgres, true);
    Ok(())
}

/// Warn when the star rows were derived by older projection rules than this binary's (or
/// before the rules were tracked); record the rules when nothing was derived yet.
async fn warn_outdated_rules(client: &tokio_postgres::Client, pipeline: &str) {
    use crate::project::{RULES_VERSION, RulesState, check_at_start};
    match check_at_start(client, pipeline).await {
        Ok(RulesState::Recorded { version, at }) if version < RULES_VERSION => warn!(
            recorded = version,
            current = RULES_VERSION,
            reprojected_at = %at,
            "the star rows were derived by older projection rules than this binary's: run \
             `bowmark-cdc reproject --pipeline …` (safe while the daemon runs)"
        ),
        Ok(RulesState::Unknown) => warn!(
            current = RULES_VERSION,
            "the star rows were derived before projection rules were tracked \
             (cdc.projection_rules): run `bowmark-cdc reproject --pipeline …` (safe while the \
             daemon runs)"
        ),
        Ok(_) => {}
        Err(e) => {
            warn!(error = %e, "cannot read the projection rules version (cdc.projection_rules)")
        }
    }
}
