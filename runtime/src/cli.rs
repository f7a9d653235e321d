//! The `handoff` command line. Doc comments here are the `--help` text.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{self, Config};

/// Serve WebAssembly HTTP handlers and replace them while serving, without failing a request.
#[derive(Debug, Parser)]
#[command(name = "handoff", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: guest traffic on --listen, the admin API on --admin-listen.
    Serve(ServeArgs),
}

/// Flags of `handoff serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address for guest traffic. Port 0 picks a free port (the ready line shows it).
    #[arg(long, default_value = config::DEFAULT_LISTEN, env = "HANDOFF_LISTEN")]
    pub listen: SocketAddr,
    /// Address for the admin API. Keep it on loopback: it accepts code.
    #[arg(long, default_value = config::DEFAULT_ADMIN_LISTEN, env = "HANDOFF_ADMIN_LISTEN")]
    pub admin_listen: SocketAddr,
    /// Directory for state kept across restarts (reserved: today nothing is persisted).
    #[arg(long, env = "HANDOFF_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Deadline per request, guest CPU and wall clock (e.g. 500ms, 30s, 2m). Past it: 504.
    #[arg(long, default_value = "30s", value_parser = config::parse_duration)]
    pub request_timeout: Duration,
    /// How long a replaced version may finish its in-flight requests before they are cut off;
    /// also the graceful-shutdown grace period.
    #[arg(long, default_value = "30s", value_parser = config::parse_duration)]
    pub drain_timeout: Duration,
    /// Linear-memory cap per guest instance (e.g. 128MiB). A guest that grows past it traps.
    #[arg(long, default_value = "128MiB", value_parser = config::parse_bytes)]
    pub max_memory: u64,
    /// Largest accepted component upload (e.g. 50MiB).
    #[arg(long, default_value = "50MiB", value_parser = config::parse_bytes)]
    pub max_upload: u64,
    /// Guest instances that may exist at once (pooling allocator slots); 0 allocates on demand.
    #[arg(long, default_value_t = config::DEFAULT_MAX_INSTANCES)]
    pub max_instances: u32,
}

impl ServeArgs {
    /// The validated configuration these flags describe.
    pub fn into_config(self) -> Result<Config, String> {
        let config = Config {
            listen: self.listen,
            admin_listen: self.admin_listen,
            data_dir: self.data_dir,
            request_timeout: self.request_timeout,
            drain_timeout: self.drain_timeout,
            max_memory_bytes: self.max_memory,
            max_upload_bytes: usize::try_from(self.max_upload)
                .map_err(|_| "the upload limit is too large for this machine".to_string())?,
            max_instances: self.max_instances,
            history_limit: config::DEFAULT_HISTORY_LIMIT,
        };
        config.validate()?;
        Ok(config)
    }
}
