//! Logging set-up: `tracing` with JSON lines when stderr is not a terminal.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Install the global subscriber. `RUST_LOG` overrides the default `info` level.
pub fn init_logging() {
    init_logging_with("info");
}

/// [`init_logging`] with another default filter (`RUST_LOG` still overrides it).
pub fn init_logging_with(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    }
}
