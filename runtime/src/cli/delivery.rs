//! The progressive-delivery commands' arguments: `handoff rollout`, `promote`, `abort`,
//! `pause`, `resume`, `weight` and `shadow`.

use std::path::PathBuf;

use super::admin::AdminArgs;
use super::exit;

/// Arguments of `handoff rollout`.
#[derive(Debug, clap::Args)]
#[command(after_help = exit::help())]
pub struct RolloutArgs {
    /// The route (it must exist and serve a stable version).
    pub route: String,
    /// The candidate: a `.wasm` file (uploaded first), or a stored version (a digest, or a
    /// unique prefix of at least 8 hex digits from `handoff upload` or the module list).
    pub candidate: String,
    /// The candidate's weight at each step, in percent (default 5,25,50,100).
    #[arg(long, value_name = "PERCENT,...", value_delimiter = ',')]
    pub steps: Vec<f64>,
    /// Minimum time per step (`30s`, `2m`; default 30s).
    #[arg(long, value_name = "DURATION")]
    pub step_time: Option<String>,
    /// Minimum candidate requests per step (default 100).
    #[arg(long, value_name = "N")]
    pub step_requests: Option<u64>,
    /// What keeps a client on one side: `header:NAME`, `cookie:NAME` or `ip` (default: a
    /// random split per request).
    #[arg(long, value_name = "KEY")]
    pub sticky: Option<String>,
    /// The candidate's highest error rate over a step, 0-1 (default 0.01).
    #[arg(long, value_name = "RATE")]
    pub max_error_rate: Option<f64>,
    /// The highest candidate p99 over stable p99 over a step (default 2.0).
    #[arg(long, value_name = "RATIO")]
    pub max_p99_ratio: Option<f64>,
    /// Candidate requests in a step before a gate may fire (default 20).
    #[arg(long, value_name = "N")]
    pub min_requests: Option<u64>,
    /// Never advance by itself: move it with `handoff weight` and `handoff promote`.
    #[arg(long)]
    pub manual: bool,
    /// Sign the upload with this private key file (when CANDIDATE is a file).
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
    /// The admin API and output format.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Arguments of `handoff weight`.
#[derive(Debug, clap::Args)]
#[command(after_help = exit::help())]
pub struct WeightArgs {
    /// The route.
    pub route: String,
    /// The candidate's weight in percent, 0-100 (fractions allowed). Pauses automatic stepping.
    pub weight: f64,
    /// The admin API and output format.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Arguments of `handoff shadow`.
#[derive(Debug, clap::Args)]
#[command(after_help = exit::help())]
pub struct ShadowArgs {
    /// The route.
    pub route: String,
    /// The shadow: a `.wasm` file (uploaded first) or a stored version. Without it (and
    /// without --off), shows what the route's shadow found.
    #[arg(conflicts_with = "off")]
    pub shadow: Option<String>,
    /// The share of requests copied to the shadow, in percent (default 100).
    #[arg(long, value_name = "PERCENT")]
    pub percent: Option<f64>,
    /// A response header compared besides status and body; repeat for more (default:
    /// content-type).
    #[arg(long = "compare-header", value_name = "NAME")]
    pub compare_headers: Vec<String>,
    /// Let the copies make outbound HTTP calls to the route's allow-list (they then happen more
    /// than once per request). Default: every outbound call of a copy is denied.
    #[arg(long)]
    pub allow_outbound: bool,
    /// Stop the route's shadow.
    #[arg(long)]
    pub off: bool,
    /// Sign the upload with this private key file (when SHADOW is a file).
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
    /// The admin API and output format.
    #[command(flatten)]
    pub admin: AdminArgs,
}
