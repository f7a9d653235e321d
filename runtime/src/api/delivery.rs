//! Progressive delivery: rollouts and shadows, as asked for and as a route's status shows them.

use serde::{Deserialize, Serialize};

use crate::events::ShadowCounts;

/// `POST /v1/routes/{name}/rollout`: a rollout of a stored module. Every field but `version`
/// has a default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    /// The candidate: a stored module's version (`POST /v1/modules` answers it).
    pub version: String,
    /// The candidate's weight at each step, in percent (default `[5, 25, 50, 100]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<f64>>,
    /// Minimum time per step (`"30s"` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_time: Option<String>,
    /// Minimum candidate requests per step (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_requests: Option<u64>,
    /// `header:NAME`, `cookie:NAME` or `ip` (default: none, a random split per request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<String>,
    /// The candidate's highest error rate over a step (default 0.01).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    /// The highest candidate p99 over stable p99 over a step (default 2.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_ratio: Option<f64>,
    /// Candidate requests in a step before a gate may fire (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    /// Never advance by itself (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual: Option<bool>,
    /// In a cluster: activate the candidate node by node instead of by weight steps, one wave
    /// per step (every node of a wave serves it fully): a wave size (the live nodes by name,
    /// that many per wave) or node names in order (one wave each; live nodes not named form
    /// the last wave). Not together with `steps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waves: Option<Waves>,
}

/// The waves of a rollout in a cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Waves {
    /// This many nodes per wave.
    Size(usize),
    /// One wave per node, in this order.
    Nodes(Vec<String>),
}

/// `PATCH /v1/routes/{name}/rollout`: set the candidate's weight by hand (and pause).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WeightRequest {
    /// The weight in percent.
    pub weight: f64,
}

/// One version's figures over the rollout's current step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepFigures {
    /// The version.
    pub version: String,
    /// `stable` or `candidate`.
    pub role: String,
    /// Requests that ended in the step.
    pub requests: u64,
    /// The share that failed (5xx, traps, timeouts).
    pub error_rate: f64,
    /// Median latency, milliseconds.
    pub p50_ms: Option<f64>,
    /// 99th-percentile latency, milliseconds.
    pub p99_ms: Option<f64>,
}

/// A route's rollout as `GET /v1/routes/{name}` shows it (also what starting one answers).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RolloutStatus {
    /// `running`, `paused`, `promoted`, `rolled_back` or `aborted`.
    pub state: String,
    /// The version that was stable when it started.
    pub stable: String,
    /// The candidate.
    pub candidate: String,
    /// The candidate's weight now, in percent.
    pub weight: f64,
    /// The current step (an index into `steps`).
    pub step: usize,
    /// The weight of each step.
    pub steps: Vec<f64>,
    /// What keeps a client on one side of the split.
    pub sticky: Option<String>,
    /// Minimum time per step, milliseconds.
    pub step_time_ms: u64,
    /// Minimum candidate requests per step.
    pub step_requests: u64,
    /// The error-rate gate.
    pub max_error_rate: f64,
    /// The p99-ratio gate.
    pub max_p99_ratio: f64,
    /// Candidate requests before a gate may fire.
    pub min_requests: u64,
    /// Whether it never advances by itself.
    pub manual: bool,
    /// When the current step started, milliseconds since the Unix epoch.
    pub step_started_ms: u64,
    /// Who started it.
    pub by: String,
    /// Why it was rolled back, with the numbers that breached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A rollout in waves: each wave's nodes (wave `i` is step `i`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waves: Option<Vec<Vec<String>>>,
    /// In a cluster, the node whose controller made the rollout's last change (a step, the
    /// promotion or a rollback); absent after an operator's change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Each version's figures over the current step.
    #[serde(default)]
    pub versions: Vec<StepFigures>,
}

/// `PUT /v1/routes/{name}/shadow`: copy a share of the route's requests to a stored module.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShadowRequest {
    /// The shadow: a stored module's version.
    pub version: String,
    /// The share of requests copied to it, in percent (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Response headers compared besides the status and the body (default `["content-type"]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare_headers: Option<Vec<String>>,
    /// Let the shadow's copies (and the stable version's second runs that measure noise) make
    /// outbound HTTP calls to the route's allow-list: the calls happen twice or three times.
    /// Default false: every outbound call of a copy fails with `HTTP-request-denied`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_outbound: Option<bool>,
}

/// One request on which the shadow answered differently from the stable version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShadowSample {
    /// The request's method.
    pub method: String,
    /// Its path (and query).
    pub path: String,
    /// The stable version's status.
    pub stable_status: u16,
    /// The shadow's status.
    pub shadow_status: u16,
    /// Compared headers whose values differ.
    pub headers: Vec<String>,
    /// The stable version's body size.
    pub stable_size: u64,
    /// The shadow's body size.
    pub shadow_size: u64,
    /// sha256 of the stable version's body.
    pub stable_digest: String,
    /// sha256 of the shadow's body.
    pub shadow_digest: String,
    /// The first bytes of the stable version's body (lossy UTF-8).
    pub stable_start: String,
    /// The first bytes of the shadow's body (lossy UTF-8).
    pub shadow_start: String,
    /// When, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Whether the shadow tried an outbound HTTP call, which was denied: a likely cause of the
    /// difference (see `allow_outbound`).
    #[serde(default)]
    pub outbound_denied: bool,
    /// What differed, as `kinds` counts it (`status 200 → 500`, `body (status 200)`,
    /// `header content-type`, …).
    #[serde(default)]
    pub kind: String,
}

/// Mismatches of one kind: what differed, and how many times.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShadowKind {
    /// What differed (a sample's `kind`).
    pub kind: String,
    /// Mismatches of this kind since the shadow started.
    pub count: u64,
}

/// A route's shadow and what it found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShadowStatus {
    /// The shadow version.
    pub version: String,
    /// The share of requests copied to it, in percent.
    pub percent: f64,
    /// Headers compared besides status and body.
    pub compare_headers: Vec<String>,
    /// Whether copies may make outbound HTTP calls.
    #[serde(default)]
    pub allow_outbound: bool,
    /// What became of the copies: requests, matches, mismatches, noise, errors, skipped (flat
    /// in the JSON).
    #[serde(flatten)]
    pub counts: ShadowCounts,
    /// Every mismatch since the shadow started, grouped by what differed, the most frequent
    /// first.
    #[serde(default)]
    pub kinds: Vec<ShadowKind>,
    /// The latest mismatches, newest last (at most 50).
    pub samples: Vec<ShadowSample>,
}
