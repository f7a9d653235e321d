//! `handoff kv ...`: a bucket's keys and values through the admin API, for backups, seeding
//! and looking at what guests wrote.

use std::path::PathBuf;

use clap::Subcommand;

use super::admin::AdminArgs;
use super::exit;

/// Arguments of `handoff kv`.
#[derive(Debug, clap::Args)]
#[command(after_help = exit::help())]
pub struct KvArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: KvCommand,
}

/// The `handoff kv` subcommands.
#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Print every key of a bucket, one per line, in order.
    Keys(KvBucketArgs),
    /// Print a key's value (`--json`: with its version and expiry).
    Get(KvKeyArgs),
    /// Set a key to VALUE (or to the bytes of --file).
    Put(KvPutArgs),
    /// Delete a key.
    Delete(KvKeyArgs),
    /// Write every entry of a bucket to stdout as JSON lines (what `import` reads).
    Export(KvBucketArgs),
    /// Write the entries of a JSON-lines FILE (as `export` writes them) into a bucket.
    Import(KvImportArgs),
}

/// Which bucket: a route's own, or a shared one.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct BucketArgs {
    /// The route whose own bucket (`default` in its guests) this is.
    #[arg(long, short = 'r', value_name = "ROUTE")]
    pub route: Option<String>,
    /// A shared bucket (granted to routes with `deploy --kv NAME`).
    #[arg(long, short = 'b', value_name = "NAME")]
    pub bucket: Option<String>,
}

/// A bucket.
#[derive(Debug, clap::Args)]
#[command(after_help = exit::help())]
pub struct KvBucketArgs {
    /// The bucket.
    #[command(flatten)]
    pub bucket: BucketArgs,
    /// The admin API and output format.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// A key of a bucket.
#[derive(Debug, clap::Args)]
#[command(after_help = exit::help())]
pub struct KvKeyArgs {
    /// The bucket.
    #[command(flatten)]
    pub bucket: BucketArgs,
    /// The key.
    pub key: String,
    /// The admin API and output format.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// `handoff kv put`.
#[derive(Debug, clap::Args)]
#[command(after_help = exit::help())]
pub struct KvPutArgs {
    /// The bucket.
    #[command(flatten)]
    pub bucket: BucketArgs,
    /// The key.
    pub key: String,
    /// The value, as text.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub value: Option<String>,
    /// Take the value from this file's bytes instead.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Let the key expire after this long (`30s`, `10m`, `1h`).
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    /// The admin API and output format.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// `handoff kv import`.
#[derive(Debug, clap::Args)]
#[command(after_help = exit::help())]
pub struct KvImportArgs {
    /// The bucket.
    #[command(flatten)]
    pub bucket: BucketArgs,
    /// The JSON-lines file (`-`: stdin).
    pub file: PathBuf,
    /// The admin API and output format.
    #[command(flatten)]
    pub admin: AdminArgs,
}
