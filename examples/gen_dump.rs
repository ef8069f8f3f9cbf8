//! Write a generated Bow-Mark dataset as a mongodump folder, for the backfill benchmark.
//!
//! ```text
//! cargo run --release --example gen_dump -- OUT_DIR [REPORTS] [SEED]
//! ```
//!
//! About 10 documents per daily report (4 employee works, 2 vehicle works, 2 shipments,
//! 1 production) plus dimensions and jobsite-linked invoices: `REPORTS` = 20000 gives a little
//! over 200,000 documents. The generator is the backfill tests' workload
//! (`tests/it/backfill/workload.rs`).

#[path = "../tests/it/backfill/workload.rs"]
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(out) = args.next().map(PathBuf::from) else {
        eprintln!("usage: gen_dump OUT_DIR [REPORTS] [SEED]");
        return ExitCode::from(2);
    };
    let reports = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let seed = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let w = workload::Workload::generate(seed, workload::Shape::realistic(reports));
    if let Err(e) = w.write_dump(&out) {
        eprintln!("gen_dump: {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    for (coll, docs) in &w.collections {
        println!("{coll:<18} {:>8}", docs.len());
    }
    println!("{:<18} {:>8}", "total", w.len());
    ExitCode::SUCCESS
}
