//! The operator commands' handlers (`verify`, `reproject`, `status`, `dlq`): settings and a
//! runtime from [`crate::prepare`], the command from `bowmark_cdc::ops`, its report printed as
//! text or JSON, and the exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use bowmark_cdc::ops::OpsError;
use bowmark_cdc::ops::reproject::{ReprojectOptions, ReprojectSummary, run_reproject};
use serde::Serialize;

use crate::{DlqCommand, dump_folder, prepare};

/// Print a report as pretty JSON or as its text; `Err` (exit 2) when it cannot be serialized.
fn print_report<T: Serialize + std::fmt::Display>(
    who: &str,
    json: bool,
    report: &T,
) -> Result<(), ExitCode> {
    if json {
        match serde_json::to_string_pretty(report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("{who}: {e}");
                return Err(ExitCode::from(2));
            }
        }
    } else {
        print!("{report}");
    }
    Ok(())
}

/// `verify --legacy-db`: exit 0 when every difference is explained, 1 when one is not, 2 on
/// error.
pub(crate) fn verify_legacy(
    pipeline: &std::path::Path,
    url: &str,
    json: bool,
    max_keys: usize,
) -> ExitCode {
    let (settings, rt) = match prepare(
        "verify",
        pipeline,
        tokio::runtime::Builder::new_current_thread(),
    ) {
        Ok(p) => p,
        Err(code) => return code,
    };
    match rt.block_on(bowmark_cdc::ops::verify::run_legacy_compare(
        &settings, url, max_keys,
    )) {
        Ok(report) => {
            if let Err(code) = print_report("verify", json, &report) {
                return code;
            }
            if report.unexplained == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("verify --legacy-db: {:#}", anyhow::Error::new(e));
            ExitCode::from(2)
        }
    }
}

/// `verify`: exit 0 clean, 1 on drift, 2 on error.
pub(crate) fn verify(
    pipeline: &std::path::Path,
    from_dump: Option<PathBuf>,
    no_source: bool,
    json: bool,
    max_keys: usize,
    settle: u64,
) -> ExitCode {
    use bowmark_cdc::ops::verify::{SourceSpec, VerifyOptions, run_verify};
    let (settings, rt) = match prepare(
        "verify",
        pipeline,
        tokio::runtime::Builder::new_multi_thread(),
    ) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let source = match (no_source, from_dump) {
        (true, _) => None,
        (false, None) => Some(SourceSpec::Mongo),
        (false, Some(given)) => match dump_folder("verify", &given, &settings) {
            Ok(dir) => Some(SourceSpec::Dump(dir)),
            Err(e) => {
                eprintln!("verify: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let opts = VerifyOptions {
        source,
        max_keys,
        settle: std::time::Duration::from_secs(settle),
    };
    match rt.block_on(run_verify(&settings, &opts)) {
        Ok(report) => {
            if let Err(code) = print_report("verify", json, &report) {
                return code;
            }
            if report.clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("verify: {:#}", anyhow::Error::new(e));
            ExitCode::from(2)
        }
    }
}

/// `reproject`: exit 0 after the commit, 1 on failure, 2 on bad configuration or usage.
pub(crate) fn reproject(pipeline: &std::path::Path, tables: Vec<String>) -> ExitCode {
    let (settings, rt) = match prepare(
        "reproject",
        pipeline,
        tokio::runtime::Builder::new_current_thread(),
    ) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let opts = ReprojectOptions {
        tables,
        progress: true,
    };
    report_reproject(rt.block_on(run_reproject(&settings, &opts)))
}

pub(crate) fn report_reproject(result: Result<ReprojectSummary, OpsError>) -> ExitCode {
    match result {
        Ok(summary) => {
            print!("{summary}");
            ExitCode::SUCCESS
        }
        Err(OpsError::Usage(e)) => {
            eprintln!("reproject: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("reproject failed: {:#}", anyhow::Error::new(e));
            ExitCode::FAILURE
        }
    }
}

/// `status`: exit 0 when healthy, 1 when something needs an operator, 2 on error.
pub(crate) fn status(pipeline: &std::path::Path, json: bool, max_checkpoint_age: u64) -> ExitCode {
    let (settings, rt) = match prepare(
        "status",
        pipeline,
        tokio::runtime::Builder::new_current_thread(),
    ) {
        Ok(p) => p,
        Err(code) => return code,
    };
    match rt.block_on(bowmark_cdc::ops::status::status(
        &settings,
        max_checkpoint_age,
    )) {
        Ok(s) => {
            if let Err(code) = print_report("status", json, &s) {
                return code;
            }
            if s.healthy {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("status: {:#}", anyhow::Error::new(e));
            ExitCode::from(2)
        }
    }
}

/// `dlq`: exit 0 when done, 1 when `purge` needs `--yes` or a replay failed, 2 on error.
pub(crate) fn dlq(command: DlqCommand) -> ExitCode {
    use bowmark_cdc::ops::dlq::{DlqAction, DlqFilter, run_dlq};
    let (args, action) = match command {
        DlqCommand::List { args } => (args, DlqAction::List),
        DlqCommand::Replay { args } => (args, DlqAction::Replay),
        DlqCommand::Purge { args, yes } => (args, DlqAction::Purge { confirmed: yes }),
    };
    let (settings, rt) = match prepare(
        "dlq",
        &args.pipeline,
        tokio::runtime::Builder::new_current_thread(),
    ) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let filter = DlqFilter {
        reason: args.reason,
        limit: args.limit,
    };
    match rt.block_on(run_dlq(&settings, action, &filter)) {
        Ok(report) => {
            print!("{report}");
            if report.needs_confirmation() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e @ OpsError::Replay { .. }) => {
            eprintln!("dlq replay: {:#}", anyhow::Error::new(e));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("dlq: {:#}", anyhow::Error::new(e));
            ExitCode::from(2)
        }
    }
}
