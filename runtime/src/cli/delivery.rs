//! The progressive-delivery commands' arguments: `handoff rollout`, `promote`, `abort`,
//! `pause`, `resume`, `weight` and `shadow`.

use std::path::PathBuf;

use super::admin::AdminArgs;
use crate::api;
use crate::client::delivery::{Component, ShadowChange};
use crate::exit;

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
    /// In a cluster: activate the candidate node by node, one wave per step: a wave size, or
    /// node names in order (one wave each; the others last). Not together with --steps.
    #[arg(long, value_name = "N|NODE,...")]
    pub waves: Option<String>,
    /// Sign the upload with this private key file (when CANDIDATE is a file).
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
    /// The admin API and output format.
    #[command(flatten)]
    pub admin: AdminArgs,
}

impl RolloutArgs {
    /// The candidate to upload or look up.
    pub fn candidate(&self) -> Component {
        Component {
            given: self.candidate.clone(),
            sign: self.sign.clone(),
        }
    }

    /// The rollout these flags ask for (its `version` is the client's to fill in): what is
    /// left out is the server's default; `--waves` is a size if it is a number, else node names.
    pub fn request(&self) -> api::RolloutRequest {
        api::RolloutRequest {
            version: String::new(),
            steps: (!self.steps.is_empty()).then(|| self.steps.clone()),
            step_time: self.step_time.clone(),
            step_requests: self.step_requests,
            sticky: self.sticky.clone(),
            max_error_rate: self.max_error_rate,
            max_p99_ratio: self.max_p99_ratio,
            min_requests: self.min_requests,
            manual: self.manual.then_some(true),
            waves: self
                .waves
                .as_deref()
                .map(|waves| match waves.parse::<usize>() {
                    Ok(size) => api::Waves::Size(size),
                    Err(_) => api::Waves::Nodes(waves.split(',').map(str::to_owned).collect()),
                }),
        }
    }
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

impl ShadowArgs {
    /// What these flags do to the route's shadow: `--off` stops it, a SHADOW starts one (what
    /// is left out is the server's default), neither shows it.
    pub fn change(&self) -> ShadowChange {
        match &self.shadow {
            _ if self.off => ShadowChange::Stop,
            None => ShadowChange::Show,
            Some(given) => ShadowChange::Start(
                Component {
                    given: given.clone(),
                    sign: self.sign.clone(),
                },
                api::ShadowRequest {
                    version: String::new(),
                    percent: self.percent,
                    compare_headers: (!self.compare_headers.is_empty())
                        .then(|| self.compare_headers.clone()),
                    allow_outbound: self.allow_outbound.then_some(true),
                },
            ),
        }
    }
}
