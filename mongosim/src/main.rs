//! `mongosim --listen 127.0.0.1:27017 --replset rs0 [--oplog-window N] [--load-dump DB=DIR ...]`
//!
//! Prints one line with the connection URI on stdout when ready; exits 0 on SIGTERM/SIGINT.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

// Which folder of a mongodump output to load (shared with `bowmark-cdc backfill --from-dump`).
#[path = "../../src/dumpdir.rs"]
mod dumpdir;

#[derive(Parser, Debug)]
#[command(name = "mongosim", about = "Wire-level MongoDB replica-set simulator")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:27017")]
    listen: SocketAddr,
    /// Replica-set name.
    #[arg(long, default_value = "rs0")]
    replset: String,
    /// Keep at most N oplog entries.
    #[arg(long)]
    oplog_window: Option<usize>,
    /// Advertise topologyVersion (streaming monitoring).
    #[arg(long)]
    streaming_hello: bool,
    /// Add `_typeBits` to every other resume token.
    #[arg(long)]
    token_type_bits: bool,
    /// Largest change event returned whole (default 16 MiB, as a server); larger ones are
    /// split by `$changeStreamSplitLargeEvent` or fail with 10334.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    max_event_bytes: usize,
    /// Load a mongodump folder into a database before serving: DB=DIR (repeatable). DIR is
    /// mongodump's output folder (its DB subfolder is read) or the DB folder itself.
    #[arg(long = "load-dump", value_name = "DB=DIR")]
    load_dump: Vec<String>,
}

fn parse_dump(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((db, dir)) if !db.is_empty() && !dir.is_empty() => {
            Ok((db.to_string(), PathBuf::from(dir)))
        }
        _ => Err(format!("--load-dump expects DB=DIR, got {s:?}")),
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut dumps = Vec::new();
    for d in &args.load_dump {
        match parse_dump(d) {
            Ok(x) => dumps.push(x),
            Err(e) => {
                eprintln!("mongosim: {e}");
                std::process::exit(2);
            }
        }
    }
    let config = mongosim::SimConfig {
        set_name: args.replset.clone(),
        oplog_window: args.oplog_window,
        streaming_hello: args.streaming_hello,
        listen: args.listen,
        token_type_bits: args.token_type_bits,
        max_event_bytes: args.max_event_bytes,
    };
    let sim = match mongosim::Sim::start_with(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mongosim: cannot listen on {}: {e}", args.listen);
            std::process::exit(1);
        }
    };
    for (db, given) in &dumps {
        let dir = match dumpdir::resolve(given, db) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("mongosim: cannot load dump: {e}");
                std::process::exit(1);
            }
        };
        let described = dir.describe(db);
        let dir = dir.dir;
        match sim.load_dump(db, &dir) {
            Ok(counts) => {
                let total: usize = counts.values().sum();
                eprintln!(
                    "mongosim: loaded {total} documents in {} collections into {db} from {described}",
                    counts.len(),
                );
                for (coll, n) in &counts {
                    eprintln!("mongosim:   {db}.{coll}: {n}");
                }
                if counts.is_empty() {
                    eprintln!("mongosim: warning: {} holds no collections", dir.display());
                }
            }
            Err(e) => {
                eprintln!("mongosim: cannot load dump {}: {e}", dir.display());
                std::process::exit(1);
            }
        }
    }
    // The handlers first: whoever reads the address may signal at once.
    let signals = Signals::install();
    println!("{}", sim.uri());
    let _ = std::io::stdout().flush();
    signals.wait().await;
    sim.shutdown();
}

/// SIGTERM and SIGINT handlers, installed before the address is printed.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Signals {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn wait(self) {
        #[cfg(unix)]
        {
            let (mut term, mut int) = (self.term, self.int);
            let term = async {
                match term.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            let int = async {
                match int.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = term => {}
                _ = int => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
