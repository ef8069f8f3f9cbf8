//! The `bowmark-cdc` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;

use bowmark_cdc::ops::reproject::{ReprojectOptions, run_reproject};
use commands::{dlq, report_reproject, reproject, status, verify, verify_legacy};

use bowmark_cdc::config::{Pipeline, Settings};
use bowmark_cdc::migrate::MigrateReport;
use bowmark_cdc::runtime::{self, Role, RunOptions};

#[derive(Parser, Debug)]
#[command(
    name = "bowmark-cdc",
    version,
    about = "Change-data-capture from Bow-Mark's MongoDB into RabbitMQ and the PostgreSQL reporting star schemas"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the sync daemon (capture, projector, or both).
    Run {
        #[arg(long, env = "CDC_PIPELINE")]
        pipeline: PathBuf,
        #[arg(long, value_enum, default_value_t = Role::All, env = "CDC_ROLE")]
        role: Role,
        /// Listen address of /metrics, /healthz and /readyz (default: the pipeline's
        /// `http.listen`); port 0 picks a free port, logged at start.
        #[arg(long, env = "CDC_HTTP_LISTEN")]
        http_listen: Option<std::net::SocketAddr>,
    },
    /// One-shot, resumable backfill from MongoDB or a mongodump folder.
    Backfill {
        #[arg(long, env = "CDC_PIPELINE")]
        pipeline: PathBuf,
        /// Read a mongodump folder instead of MongoDB: mongodump's output folder (its
        /// subfolder named after the pipeline's `mongo.database` is read) or that database
        /// folder itself (`*.bson` + `*.metadata.json`).
        #[arg(long)]
        from_dump: Option<PathBuf>,
        /// Only these collections (comma-separated).
        #[arg(long, value_delimiter = ',')]
        collections: Vec<String>,
        /// Start over instead of continuing from the last completed chunk.
        #[arg(long)]
        restart: bool,
        /// Mark mirror documents deleted even when that is more than a tenth of the mirror
        /// (without it such a run stops before writing: an empty or wrong source).
        #[arg(long)]
        allow_deletes: bool,
        /// Listen address of /metrics and /healthz while the backfill runs (default: the
        /// pipeline's `http.listen`); port 0 picks a free port, logged at start.
        #[arg(long, env = "CDC_HTTP_LISTEN")]
        http_listen: Option<std::net::SocketAddr>,
    },
    /// Apply the embedded migrations (adopts a database the legacy dbmate migrations built).
    Migrate {
        #[arg(long, env = "CDC_PIPELINE")]
        pipeline: PathBuf,
        /// Then rebuild every star row from the mirror (`reproject`), e.g. after a migration
        /// that changes the projection rules.
        #[arg(long)]
        reproject: bool,
    },
    /// Check that the reporting database is right: exit 0 clean, 1 on drift, 2 on error.
    ///
    /// Source against mirror: every document of MongoDB (or of a mongodump folder) is in the
    /// `cdc` mirror with the same content, and no live mirror document is missing from the
    /// source (against a live source, documents written after the scan began are left out).
    /// Mirror against star: every star row derived afresh from the mirror, in one snapshot and
    /// into temporary tables, equals the live row (surrogate ids and synced_at ignored;
    /// archived rows of deleted documents allowed). Never blocks the daemon, never writes a
    /// star row; each run is recorded in cdc.verify_run (exported by the daemon as metrics).
    Verify {
        #[arg(long, env = "CDC_PIPELINE")]
        pipeline: PathBuf,
        /// Compare the mirror with a mongodump folder instead of MongoDB (the folder
        /// mongodump wrote, or its database subfolder).
        #[arg(long, conflicts_with = "no_source")]
        from_dump: Option<PathBuf>,
        /// Instead: compare the reporting database the legacy Node sync writes (a PostgreSQL
        /// URL) with this pipeline's, table by table by mongo_id, and explain every difference
        /// by the README's "Differences from the legacy sync"; exit 1 when one is unexplained.
        #[arg(long, value_name = "URL", conflicts_with_all = ["from_dump", "no_source"])]
        legacy_db: Option<String>,
        /// Skip the source: only compare the mirror with the star rows (no MongoDB needed).
        #[arg(long)]
        no_source: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// List at most this many drifted keys per collection and table.
        #[arg(long, value_name = "N", default_value_t = bowmark_cdc::ops::verify::DEFAULT_MAX_KEYS)]
        max_keys: usize,
        /// Against a live source: re-check drifted documents for this long while events in
        /// flight reach the mirror.
        #[arg(long, value_name = "SECS", default_value_t = bowmark_cdc::ops::verify::DEFAULT_SETTLE.as_secs())]
        settle: u64,
    },
    /// Show the pipeline's health on one screen; exit 0 healthy, 1 needs an operator, 2 error.
    ///
    /// Capture leader, checkpoint age, queue and dead-letter depths, quarantine, last backfill,
    /// deferred indexes, migrations and projection rules. Needs PostgreSQL and the broker only.
    /// Exit 0 when healthy, 1 when something needs an operator (each listed), 2 when a service
    /// cannot be reached.
    Status {
        #[arg(long, env = "CDC_PIPELINE")]
        pipeline: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// A checkpoint not written for longer than this needs an operator.
        #[arg(long, value_name = "SECS", default_value_t = bowmark_cdc::ops::status::DEFAULT_MAX_CHECKPOINT_AGE_SECS)]
        max_checkpoint_age: u64,
    },
    /// Rebuild every star row from the `cdc` source mirror alone (no MongoDB needed).
    ///
    /// One transaction under the projection lock: safe while the daemon runs (its batches
    /// wait, readers see the old rows until the commit). Prints the rows written by table and
    /// records the projection rules version.
    Reproject {
        #[arg(long, env = "CDC_PIPELINE")]
        pipeline: PathBuf,
        /// Only these star tables (comma-separated), with every table derived from the same
        /// source documents; the rules version is then not recorded.
        #[arg(long, value_delimiter = ',')]
        tables: Vec<String>,
    },
    /// The dead-letter queue: list, replay to the exchange, or purge dead letters.
    Dlq {
        #[command(subcommand)]
        action: DlqCommand,
    },
    /// Check pipeline files (default: pipeline/*.toml).
    Validate { files: Vec<PathBuf> },
}

/// Options shared by the `dlq` actions.
#[derive(clap::Args, Debug)]
struct DlqArgs {
    #[arg(long, env = "CDC_PIPELINE")]
    pipeline: PathBuf,
    /// Only dead letters with this reason (bad_json, unsupported_version, unknown_entity,
    /// invalid_event, wrong_pipeline, rejected_by_postgres).
    #[arg(long)]
    reason: Option<String>,
    /// At most this many matching dead letters.
    #[arg(long)]
    limit: Option<usize>,
}

#[derive(Subcommand, Debug)]
enum DlqCommand {
    /// Show dead letters (age, reason, routing key, message id, error); consumes nothing.
    List {
        #[command(flatten)]
        args: DlqArgs,
    },
    /// Publish matching dead letters back to the pipeline's exchange.
    ///
    /// Each keeps its original routing key and message id, and leaves the dead-letter queue
    /// once its publish is confirmed.
    Replay {
        #[command(flatten)]
        args: DlqArgs,
    },
    /// Remove matching dead letters (only with --yes; without it, print how many would go and
    /// exit 1).
    Purge {
        #[command(flatten)]
        args: DlqArgs,
        #[arg(long)]
        yes: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // (lapin's own log lines are off unless RUST_LOG names lapin: a passive declare of a queue
    // not declared yet, expected by `status` and `dlq`, would log as an error)
    bowmark_cdc::telemetry::init_logging();
    match cli.command {
        Command::Validate { files } => validate(files),
        Command::Migrate {
            pipeline,
            reproject,
        } => migrate(&pipeline, reproject),
        Command::Run {
            pipeline,
            role,
            http_listen,
        } => run(&pipeline, RunOptions { role, http_listen }),
        Command::Backfill {
            pipeline,
            from_dump,
            collections,
            restart,
            allow_deletes,
            http_listen,
        } => backfill(
            &pipeline,
            from_dump,
            collections,
            restart,
            allow_deletes,
            http_listen,
        ),
        Command::Verify {
            pipeline,
            legacy_db: Some(url),
            json,
            max_keys,
            ..
        } => verify_legacy(&pipeline, &url, json, max_keys),
        Command::Verify {
            pipeline,
            from_dump,
            no_source,
            json,
            max_keys,
            settle,
            legacy_db: None,
        } => verify(&pipeline, from_dump, no_source, json, max_keys, settle),
        Command::Status {
            pipeline,
            json,
            max_checkpoint_age,
        } => status(&pipeline, json, max_checkpoint_age),
        Command::Reproject { pipeline, tables } => reproject(&pipeline, tables),
        Command::Dlq { action } => dlq(action),
    }
}

/// The database folder of a mongodump output given on the command line: mongodump writes
/// OUT/<database>/*.bson, so OUT or OUT/<database> is accepted, and `who` says which is read.
fn dump_folder(who: &str, given: &std::path::Path, settings: &Settings) -> Result<PathBuf, String> {
    let database = &settings.pipeline.mongo_database;
    let d = bowmark_cdc::dumpdir::resolve(given, database)?;
    eprintln!(
        "{who}: reading the mongodump folder {}",
        d.describe(database)
    );
    Ok(d.dir)
}

/// The settings of `pipeline` and an async runtime for a command (`who` prefixes the
/// messages): exit 2 on bad configuration, 1 when no runtime can start.
fn prepare(
    who: &str,
    pipeline: &std::path::Path,
    mut builder: tokio::runtime::Builder,
) -> Result<(Settings, tokio::runtime::Runtime), ExitCode> {
    let settings = Settings::from_file(pipeline).map_err(|e| {
        eprintln!("{who}: {e}");
        ExitCode::from(2)
    })?;
    let rt = builder.enable_all().build().map_err(|e| {
        eprintln!("{who}: cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })?;
    Ok((settings, rt))
}

/// The daemon: exit 0 after a clean shutdown, 1 on a fatal error, 2 on bad configuration.
fn run(pipeline: &std::path::Path, opts: RunOptions) -> ExitCode {
    let (settings, rt) = match prepare(
        "bowmark-cdc run",
        pipeline,
        tokio::runtime::Builder::new_multi_thread(),
    ) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let result = rt.block_on(runtime::run(settings, opts));
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let reason = format!("{:#}", anyhow::Error::from(e));
            tracing::error!(error = %reason, "bowmark-cdc run failed");
            eprintln!("bowmark-cdc run: {reason}");
            ExitCode::FAILURE
        }
    }
}

/// `backfill`: run to completion; exit 0 only when every selected collection is complete.
fn backfill(
    pipeline: &std::path::Path,
    from_dump: Option<PathBuf>,
    collections: Vec<String>,
    restart: bool,
    allow_deletes: bool,
    http_listen: Option<std::net::SocketAddr>,
) -> ExitCode {
    use bowmark_cdc::backfill::{BackfillOptions, run_backfill};
    let (settings, rt) = match prepare(
        "backfill",
        pipeline,
        tokio::runtime::Builder::new_multi_thread(),
    ) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let from_dump = match from_dump
        .map(|given| dump_folder("backfill", &given, &settings))
        .transpose()
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!("backfill failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let http_stop = tokio_util::sync::CancellationToken::new();
    let opts = BackfillOptions {
        from_dump,
        collections,
        restart,
        allow_deletes,
        shutdown: shutdown.clone(),
        ..BackfillOptions::default()
    };
    let result = rt.block_on(async {
        // SIGTERM/SIGINT: the chunks in flight finish, then the run stops (resumable).
        tokio::spawn(runtime::on_signal(shutdown));
        let addr = http_listen.unwrap_or(settings.pipeline.http_listen);
        bowmark_cdc::http::serve_metrics(addr, &settings.pipeline.name, http_stop.clone()).await;
        let result = run_backfill(&settings, opts).await;
        http_stop.cancel();
        result
    });
    match result {
        Ok(summary) => {
            print!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("backfill failed: {:#}", anyhow::Error::new(e));
            ExitCode::FAILURE
        }
    }
}

/// `migrate`: apply the embedded migrations to the pipeline's PostgreSQL database, adopting a
/// database the legacy dbmate migrations built; then, with `--reproject`, rebuild the star rows.
fn migrate(pipeline: &std::path::Path, reproject: bool) -> ExitCode {
    let (settings, runtime) = match prepare(
        "migrate",
        pipeline,
        tokio::runtime::Builder::new_current_thread(),
    ) {
        Ok(p) => p,
        Err(code) => return code,
    };
    match runtime.block_on(bowmark_cdc::migrate::run(&settings.postgres)) {
        Ok(report) => {
            print_migrate_report(&report);
            if !reproject {
                return ExitCode::SUCCESS;
            }
            let opts = ReprojectOptions {
                tables: Vec::new(),
                progress: true,
            };
            report_reproject(runtime.block_on(run_reproject(&settings, &opts)))
        }
        Err(e) => {
            let (database, host) = bowmark_cdc::migrate::target(&settings.postgres);
            eprintln!(
                "migrate: database {database:?} at {host}: {:#}",
                anyhow::Error::from(e)
            );
            ExitCode::FAILURE
        }
    }
}

fn print_migrate_report(report: &MigrateReport) {
    let db = &report.database;
    if report.adopted {
        let versions: Vec<String> = report
            .baseline
            .iter()
            .map(|m| m.version.to_string())
            .collect();
        println!(
            "{db}: adopted the legacy dbmate database (baseline {})",
            versions.join(", ")
        );
    }
    for m in &report.applied {
        println!("{db}: applied {m}");
    }
    for v in &report.dbmate_recorded {
        println!("{db}: recorded {v} in dbmate's schema_migrations");
    }
    if !report.dbmate_unknown.is_empty() {
        println!(
            "{db}: schema_migrations also holds versions this binary does not know (left alone): {}",
            report.dbmate_unknown.join(", ")
        );
    }
    if report.rebuilt > 0 {
        println!(
            "{db}: rebuilt {} indexes and foreign keys an interrupted bulk backfill had dropped",
            report.rebuilt
        );
    }
    if report.applied.is_empty() {
        match report.current {
            Some(v) => println!("{db}: up to date (version {v})"),
            None => println!("{db}: up to date"),
        }
    }
}

fn validate(files: Vec<PathBuf>) -> ExitCode {
    let files = if files.is_empty() {
        default_pipeline_files()
    } else {
        files
    };
    if files.is_empty() {
        eprintln!("validate: no pipeline files given and none found under pipeline/");
        return ExitCode::from(2);
    }
    let mut failed = false;
    for f in &files {
        match Pipeline::load(f) {
            Ok(p) => println!(
                "{}: ok (pipeline {}, {} collections)",
                f.display(),
                p.name,
                p.collections.len()
            ),
            Err(e) => {
                eprintln!("{e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn default_pipeline_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir("pipeline")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    v
}
