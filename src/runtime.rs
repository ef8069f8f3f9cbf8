//! `bowmark-cdc run`: the daemon (`--role all|capture|project`). Installs the Prometheus recorder, serves the HTTP port,
//! checks that the database was migrated, turns SIGTERM/SIGINT into a cancellation, runs the
//! stages of the requested role and waits for them. Exit: `Ok` after a clean shutdown, the
//! first fatal stage error otherwise (the other stages are then stopped too).

use std::net::SocketAddr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use metrics_exporter_prometheus::{BuildError, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::capture::CaptureError;
use crate::cause;
use crate::config::{ConfigError, Settings};
use crate::health::{Dependency, Health, Stage};
use crate::http::{self, HttpState};
use crate::metrics as m;
use crate::projector::{self, ProjectorError, ProjectorStage};

mod capture;

pub use capture::capture_stage;

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
    #[error("{message}")]
    Listen { addr: SocketAddr, message: String },
    /// A login that no retry fixes (wrong user, password, database or vhost): fatal at start.
    #[error("cannot log in to {service}: {cause}; {fix}")]
    Login {
        service: String,
        cause: String,
        fix: &'static str,
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
    /// The MongoDB database holds none of the watched collections (the capture would idle).
    #[error(transparent)]
    NoneWatched(crate::backfill::NoneWatched),
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
    // The port first: a busy port is reported before any other work.
    let addr = opts.http_listen.unwrap_or(settings.pipeline.http_listen);
    let listener = bind_http(addr).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signal(shutdown.clone()));
    let metrics = install_recorder()?;
    let health = Health::default();
    let bound = listener.local_addr().unwrap_or(addr);
    info!(addr = %bound, pipeline = %settings.pipeline.name, "http listening on /metrics, /healthz, /readyz");
    let http_stop = CancellationToken::new();
    let http = tokio::spawn(http::serve(
        listener,
        HttpState::new(metrics.clone(), health.clone(), &roles),
        http_stop.clone(),
    ));
    tokio::spawn(upkeep(metrics, http_stop.clone()));
    // Every counter of the roles exists from the start with its bounded label sets at 0, so
    // that `increase()` sees its first event.
    let project = roles.contains(&Stage::Projector);
    let capture = roles.contains(&Stage::Capture);
    m::zero(&settings.pipeline.name, capture, project);

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
    if roles.contains(&Stage::Capture) {
        tokio::spawn(probe_mongo(settings.clone(), health.clone()));
    }
    // PostgreSQL and RabbitMQ side by side: a wrong login to either stops the start at once,
    // with the server's message; an outage is retried (and shown by /readyz with its cause).
    let ready = tokio::select! {
        r = async {
            tokio::try_join!(
                wait_for_schema(&pool, settings, health),
                check_broker(settings, health),
                capture::check_watched(settings, roles),
            )
        } => r,
        _ = shutdown.cancelled() => return Ok(()),
    };
    ready?;
    tokio::spawn(export_verify(
        pool.clone(),
        settings.pipeline.name.clone(),
        shutdown.clone(),
    ));
    let mut tasks = JoinSet::new();
    for role in roles {
        let token = shutdown.clone();
        match role {
            Stage::Capture => {
                let capture = capture_stage(settings, health.clone());
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
        match joined.map_err(RuntimeError::Panicked).and_then(|r| r) {
            // Stays up, unready, until SIGTERM: scraped and alerted on, not a restart loop.
            Err(RuntimeError::Capture(e)) if e.needs_operator() && first_error.is_none() => {
                first_error = Some(RuntimeError::Capture(e.hold(settings, health)));
            }
            Err(e) => {
                shutdown.cancel();
                first_error.get_or_insert(e);
            }
            Ok(()) => {}
        }
    }
    if first_error.is_some() {
        shutdown.cancelled().await;
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

/// Install the process-wide Prometheus recorder (histogram buckets, metric descriptions).
pub(crate) fn install_recorder() -> Result<PrometheusHandle, RuntimeError> {
    m::install_recorder().map_err(RuntimeError::Recorder)
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

/// Export the last `verify` run of the pipeline (`cdc.verify_run`) every minute.
async fn export_verify(pool: Pool, pipeline: String, stop: CancellationToken) {
    let since = chrono::Utc::now();
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let result = match pool.get().await {
            Ok(c) => crate::ops::verify::export_last_run(&**c, &pipeline, since)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "cannot read the last verify run (cdc.verify_run)");
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
    let manager = Manager::from_connect(
        pg,
        crate::pg::PoolConnect(settings.postgres.tls.clone()),
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
                // The server's own words, without the pool's "Error occurred while creating a
                // new object" around them.
                let cause = match &e {
                    deadpool_postgres::PoolError::Backend(pg) => cause::chain(pg),
                    other => cause::chain(other),
                };
                if cause::is_pg_login_error(&e) {
                    health.set_failed(Dependency::Postgres, cause.clone());
                    return Err(RuntimeError::Login {
                        service: postgres_target(settings),
                        cause,
                        fix: "check POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB (or \
                              POSTGRES_URL); `bowmark-cdc migrate` creates the schema, not the \
                              database",
                    });
                }
                let delay = delays.next_delay();
                warn!(error = %cause, retry_in_ms = delay.as_millis() as u64, "PostgreSQL not reachable yet");
                health.set_failed(Dependency::Postgres, cause);
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
    if let Ok(pending) = crate::backfill::pending_deferred(&client).await
        && pending.definitions > 0
    {
        warn!(
            pending = pending.definitions,
            tables = pending.tables.join(","),
            "indexes and foreign keys dropped by an unfinished bulk \
            backfill are not rebuilt yet (cdc.deferred_ddl); a running backfill rebuilds \
            them when done, else run the backfill again or `bowmark-cdc migrate`"
        );
    }
    warn_outdated_rules(&client, &settings.pipeline.name).await;
    health.set_connected(Dependency::Postgres, true);
    Ok(())
}

/// Bind the HTTP port, or say which port is busy and how to choose another.
pub(crate) async fn bind_http(addr: SocketAddr) -> Result<TcpListener, RuntimeError> {
    TcpListener::bind(addr).await.map_err(|e| {
        let port = addr.port();
        let why = if e.kind() == std::io::ErrorKind::AddrInUse {
            format!(" (port {port} is already in use, perhaps by another bowmark-cdc)")
        } else {
            String::new()
        };
        RuntimeError::Listen {
            addr,
            message: format!(
                "cannot listen on {addr} for /metrics, /healthz and /readyz: {e}{why}; set \
                 CDC_HTTP_LISTEN (or --http-listen, or http.listen in the pipeline file) to a \
                 free address, e.g. CDC_HTTP_LISTEN=127.0.0.1:{}",
                port.wrapping_add(1).max(1)
            ),
        }
    })
}

/// Where the daemon logs in to PostgreSQL, without secrets.
fn postgres_target(settings: &Settings) -> String {
    let (database, host) = crate::migrate::target(&settings.postgres);
    match &settings.postgres.url {
        Some(_) => format!("PostgreSQL at {host} (database {database}, from POSTGRES_URL)"),
        None => format!(
            "PostgreSQL at {host} (database {database}, user {})",
            settings.postgres.user
        ),
    }
}

/// Where the daemon logs in to RabbitMQ, without secrets.
fn rabbitmq_target(settings: &Settings) -> String {
    let r = &settings.rabbitmq;
    match &r.url {
        Some(_) => "RabbitMQ (from RABBITMQ_URL)".to_string(),
        None => format!(
            "RabbitMQ at {}:{} (vhost {}, user {})",
            r.host, r.port, r.vhost, r.user
        ),
    }
}

/// How long the start-up checks of RabbitMQ and MongoDB wait.
const START_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection to the pipeline's vhost at start: a wrong login is fatal (with the broker's
/// message); an outage is logged with its cause and left to the stages, which retry.
async fn check_broker(settings: &Settings, health: &Health) -> Result<(), RuntimeError> {
    let props = lapin::ConnectionProperties::default().with_connection_name(
        format!("bowmark-cdc start-up check {}", settings.pipeline.name).into(),
    );
    let connect = crate::amqp::connect(&settings.rabbitmq, props);
    match tokio::time::timeout(START_CHECK_TIMEOUT, connect).await {
        Ok(Ok(conn)) => {
            health.set_reachable(Dependency::Broker);
            let _ =
                tokio::time::timeout(Duration::from_secs(5), conn.close(200, "bye".into())).await;
            Ok(())
        }
        Ok(Err(e)) if cause::is_amqp_login_error(&e) => {
            let cause = cause::chain(&e);
            health.set_failed(Dependency::Broker, cause.clone());
            Err(RuntimeError::Login {
                service: rabbitmq_target(settings),
                cause,
                fix: "check RABBITMQ_USER, RABBITMQ_PASSWORD and RABBITMQ_VHOST (or \
                      RABBITMQ_URL), and the user's permissions on the vhost",
            })
        }
        Ok(Err(e)) => {
            let cause = cause::chain(&e);
            warn!(error = %cause, "RabbitMQ not reachable yet; the stages keep retrying");
            health.set_failed(Dependency::Broker, cause);
            Ok(())
        }
        Err(_) => {
            let cause = format!("no answer within {}s", START_CHECK_TIMEOUT.as_secs());
            warn!(error = %cause, "RabbitMQ not reachable yet; the stages keep retrying");
            health.set_failed(Dependency::Broker, cause);
            Ok(())
        }
    }
}

/// Ping MongoDB once at start so `/readyz` tells an unreachable MongoDB apart from the rest
/// before the capture runs (the capture reports from then on).
async fn probe_mongo(settings: Settings, health: Health) {
    let ping = async {
        let mut opts = mongodb::options::ClientOptions::parse(settings.mongo_uri.expose()).await?;
        opts.server_selection_timeout = Some(START_CHECK_TIMEOUT);
        opts.app_name = Some(format!(
            "bowmark-cdc-start-check-{}",
            settings.pipeline.name
        ));
        let client = mongodb::Client::with_options(opts)?;
        let result = client
            .database("admin")
            .run_command(bson::doc! {"ping": 1})
            .await;
        client.shutdown().await;
        result.map(|_| ())
    };
    let result: Result<(), mongodb::error::Error> = ping.await;
    if !matches!(
        health.link(Dependency::Mongo),
        crate::health::Link::Unchecked
    ) {
        return; // the capture knows better by now
    }
    match result {
        // Reachable, not connected: readiness waits for the capture's change stream.
        Ok(()) => health.set_reachable(Dependency::Mongo),
        Err(e) => {
            let cause = cause::chain(&e);
            warn!(error = %cause, "MongoDB not reachable yet; the capture keeps retrying");
            health.set_failed(Dependency::Mongo, cause);
        }
    }
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
