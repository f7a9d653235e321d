//! `handoff kv ...`: a bucket's keys and values through the admin API, for backups, seeding
//! and looking at what guests wrote.

use std::path::PathBuf;

use clap::Subcommand;

use super::admin::AdminArgs;
use crate::client::Admin;
use crate::client::kv::{Bucket, Op, Value};
use crate::exit::{self, Failure};

/// Arguments of `handoff kv`.
#[derive(Debug, clap::Args)]
#[command(after_help = exit::help())]
pub struct KvArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: KvCommand,
}

impl KvArgs {
    /// The admin API, the bucket and what to do with it; a `--ttl` that is not a duration is
    /// [`exit::USAGE`].
    pub fn to_client(self) -> Result<(Admin, Bucket, Op), Failure> {
        let (admin, bucket, op) = match self.command {
            KvCommand::Keys(args) => (args.admin, args.bucket, Op::Keys),
            KvCommand::Get(args) => (args.admin, args.bucket, Op::Get { key: args.key }),
            KvCommand::Delete(args) => (args.admin, args.bucket, Op::Delete { key: args.key }),
            KvCommand::Export(args) => (args.admin, args.bucket, Op::Export),
            KvCommand::Import(args) => (args.admin, args.bucket, Op::Import { file: args.file }),
            KvCommand::Put(args) => {
                let ttl = args
                    .ttl
                    .as_deref()
                    .map(crate::units::parse_duration)
                    .transpose()
                    .map_err(|e| Failure::new(exit::USAGE, format!("--ttl: {e}")))?;
                let value = match (args.file, args.value) {
                    (Some(file), _) => Value::File(file),
                    (None, text) => Value::Text(text.unwrap_or_default()),
                };
                let op = Op::Put {
                    key: args.key,
                    value,
                    ttl,
                };
                (args.admin, args.bucket, op)
            }
        };
        let bucket = match (bucket.route, bucket.bucket) {
            (Some(route), _) => Bucket::Route(route),
            (None, Some(shared)) => Bucket::Shared(shared),
            (None, None) => unreachable!("clap requires --route or --bucket"),
        };
        Ok((admin.to_client(), bucket, op))
    }
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
