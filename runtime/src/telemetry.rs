//! Log setup: `tracing` to stderr, filtered by `RUST_LOG` (default `info`). Guest output uses
//! target `guest`, so `RUST_LOG=info,guest=off` silences guests.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init() {
    init_with_default("info");
}

/// [`init`] with another filter than `info` when `RUST_LOG` is unset.
pub fn init_with_default(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours for people at a terminal; plain text for files, journald and pipes.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
