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
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
