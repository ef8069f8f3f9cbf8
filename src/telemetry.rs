//! Logging set-up: `tracing` with JSON lines when stderr is not a terminal.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The log filter: `RUST_LOG`, or `info`. lapin's own lines are off unless `RUST_LOG` names
/// lapin: it logs every broken connection at ERROR (three lines per broker retry, and
/// `invalid channel state: Closing` on every clean shutdown), while bowmark-cdc already logs
/// each broker failure once, with its cause, at the level it deserves.
pub(crate) fn filter_directives(rust_log: Option<&str>) -> String {
    let base = rust_log
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("info");
    if base.contains("lapin") {
        base.to_string()
    } else {
        format!("{base},lapin=off")
    }
}

/// Install the global subscriber. `RUST_LOG` overrides the default `info` level.
pub fn init_logging() {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = EnvFilter::try_new(filter_directives(rust_log.as_deref()))
        .unwrap_or_else(|_| EnvFilter::new(filter_directives(None)));
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

#[cfg(test)]
mod tests {
    use super::filter_directives;

    #[test]
    fn lapin_is_silenced_unless_named() {
        assert_eq!(filter_directives(None), "info,lapin=off");
        assert_eq!(filter_directives(Some("debug")), "debug,lapin=off");
        assert_eq!(
            filter_directives(Some("info,lapin=debug")),
            "info,lapin=debug"
        );
    }
}
