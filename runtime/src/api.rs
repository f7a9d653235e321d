//! The admin API's wire contract: every JSON document the server sends, as types both the
//! server (which serializes them) and the `handoff` client and tests (which deserialize them)
//! use. Field names here are the public API: extend, never rename.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::events::{Event, Kind as EventKind, ShadowCounts};
pub use crate::guest_log::LogLine;
pub use crate::problem::Problem;
pub use crate::settings::LimitsStatus;
pub use crate::state::HistoryEntry;

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Health {
    /// `ok`; in a cluster, `degraded` while this node cannot reach it (it still serves).
    pub status: String,
    /// This node's view of its cluster (`--cluster` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterHealth>,
}

/// A cluster node's health.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterHealth {
    /// This node's name.
    pub node: String,
    /// Whether it reaches the cluster (NATS) now; while not, it serves its last state and
    /// refuses changes with 503.
    pub connected: bool,
    /// Whether it has caught up with the cluster and serves.
    pub ready: bool,
    /// How far it has applied the cluster's changes.
    pub position: u64,
}

/// How the nodes of a cluster answered a change (`wait=all`, the default in a cluster).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Convergence {
    /// `all`, `local` or `none`.
    pub wait: String,
    /// The route's revision the change recorded.
    pub revision: u64,
    /// Whether every live node activated it (`false`: partial; `nodes` says which did not).
    /// Always `true` for `wait=local` and `wait=none`, which do not ask.
    pub converged: bool,
    /// Each node's answer (`wait=all`), this node first.
    pub nodes: Vec<NodeAnswer>,
}

/// One node's answer to a change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeAnswer {
    /// The node.
    pub node: String,
    /// `activated`, `failed` (it keeps serving what it had), `timeout` (no answer within
    /// `--cluster-timeout`) or `gone` (it left or died meanwhile).
    pub state: String,
    /// The revision of the route it reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /v1/nodes`: the nodes of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeList {
    /// The node that answered.
    pub this: String,
    /// Whether it reaches the cluster now.
    pub connected: bool,
    /// Every node it knows of, by name.
    pub nodes: Vec<NodeStatus>,
}

/// One node of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    /// Its name.
    pub node: String,
    /// Whether its heartbeat arrives (within the record's TTL).
    pub alive: bool,
    /// Whether it has caught up and serves.
    pub ready: bool,
    /// Whether it is shutting down.
    pub leaving: bool,
    /// Its admin API address.
    pub admin: Option<String>,
    /// Its data-plane address.
    pub data: Option<String>,
    /// The handoff release it runs.
    pub handoff_version: String,
    /// The key of the engine its artifacts are compiled for.
    pub engine_key: String,
    /// How far it has applied the cluster's changes.
    pub position: u64,
    /// Milliseconds since its record last arrived here.
    pub last_seen_ms: u64,
    /// Per route: what it serves and whether that is the route's current revision.
    pub routes: Vec<NodeRouteStatus>,
}

/// What one node serves on one route.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeRouteStatus {
    /// The route.
    pub route: String,
    /// The route's revision it serves.
    pub revision: u64,
    /// Its stable version (none when the route is unavailable there).
    pub version: Option<String>,
    /// Whether it serves the route's current revision (as the answering node knows it).
    pub converged: bool,
    /// The last change of the route it could not apply, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A version as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VersionStatus {
    /// `sha256:...`
    pub version: String,
    /// Component size.
    pub size_bytes: usize,
    /// Deploy time, milliseconds since the Unix epoch.
    pub deployed_at_ms: u64,
    /// Compile and link time.
    pub compile_ms: f64,
    /// Which WASI it is: `0.2` (a `wasi:http/proxy` component) or `0.3` (a `wasi:http/service`
    /// one).
    #[serde(default)]
    pub wasi: String,
    /// Requests holding it now.
    pub in_flight: usize,
    /// Requests routed to it so far.
    pub requests: u64,
    /// Requests on it that failed, as the rollout gates count them: a 5xx it caused (the
    /// guest's own answer or the host's for a trap or a deadline) or a response body that
    /// ended in an error. The same figure as `figures.errors`.
    pub failures: u64,
    /// Requests whose guest failed (trap, deadline, no response, an unfinished body), also
    /// those whose response had already gone out whole (work after the response).
    #[serde(default)]
    pub guest_failures: u64,
    /// What its requests did so far, for clients that chart it (the console): two readings
    /// give a window's rate, error rate and percentiles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub figures: Option<VersionFigures>,
}

/// A version's request figures since it was built. Subtract an earlier reading for a window.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VersionFigures {
    /// Requests that ended.
    pub completed: u64,
    /// Of those, the ones that failed (5xx, traps, timeouts).
    pub errors: u64,
    /// Requests per latency bucket: bucket `i` holds those that took at most
    /// `latency_bounds_ms[i]` (and more than the bound before); the last one, all the slower.
    pub latency: Vec<u64>,
    /// The buckets' upper bounds, milliseconds.
    pub latency_bounds_ms: Vec<u64>,
}

/// A version serving a route, with its part in the split.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServedStatus {
    /// `stable`, `candidate` or `shadow`.
    pub role: String,
    /// Its share of the route's requests in percent (for a shadow: of the requests copied).
    pub weight: f64,
    /// The version.
    #[serde(flatten)]
    pub version: VersionStatus,
}

/// A retired version whose requests are still finishing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DrainingStatus {
    /// The version.
    #[serde(flatten)]
    pub version: VersionStatus,
    /// How long ago it was retired.
    pub retired_ms_ago: u64,
    /// How long until its drain deadline cuts off what is left.
    #[serde(default)]
    pub time_left_ms: u64,
}

/// `GET /v1/routes/{name}`: a route.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RouteStatus {
    /// Its name.
    pub route: String,
    /// Its path prefix.
    pub prefix: String,
    /// Requests routed to it so far, across versions.
    pub requests: u64,
    /// The stable version's deploy-time configuration (the guest's environment).
    pub config: BTreeMap<String, String>,
    /// The stable version's limits.
    pub limits: LimitsStatus,
    /// Where the stable version's guests may send outbound HTTP requests.
    pub outbound: Vec<String>,
    /// The directory under `--guest-dirs` its guests see at `/data`.
    pub dir: Option<String>,
    /// The shared key-value buckets its guests may open besides the route's own (`kv=NAME`).
    #[serde(default)]
    pub kv: Vec<String>,
    /// Requests on it now, across versions.
    pub in_flight: usize,
    /// The stable version: it serves every new request the candidate does not.
    pub active: VersionStatus,
    /// Every version serving the route, stable first, with its role and weight.
    #[serde(default)]
    pub versions: Vec<ServedStatus>,
    /// Retired versions whose requests are still finishing.
    pub draining: Vec<DrainingStatus>,
    /// Its rollout (running, paused, or how the last one ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// Its shadow, when one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowStatus>,
    /// In a cluster: what each node serves on this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<RouteOnNode>>,
}

/// What one node of a cluster serves on a route.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RouteOnNode {
    /// The node.
    pub node: String,
    /// Whether its heartbeat arrives.
    pub alive: bool,
    /// The route's revision it serves (none: it does not serve the route).
    pub revision: Option<u64>,
    /// Its stable version there.
    pub version: Option<String>,
    /// Whether it serves the revision this node serves.
    pub converged: bool,
    /// The last change of the route it could not apply, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /v1/whoami`: who the caller is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Whoami {
    /// The admin token's name (`anonymous` on a tokenless server).
    pub name: String,
    /// `read` or `deploy`.
    pub scope: String,
}

/// A stored route that cannot serve.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Unavailable {
    /// Its name.
    pub route: String,
    /// Why.
    pub reason: String,
}

/// `GET /v1/routes`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RouteList {
    /// Every live route, by name.
    pub routes: Vec<RouteStatus>,
    /// Stored routes that cannot serve, with the reason.
    pub unavailable: Vec<Unavailable>,
}

/// What `PUT /v1/routes/{name}`, `rollback` and `activate` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Deployed {
    /// The route.
    pub route: String,
    /// Its prefix.
    pub prefix: String,
    /// The version now serving it.
    pub version: String,
    /// The version it replaced.
    pub previous_version: Option<String>,
    /// Whether anything changed.
    pub changed: bool,
    /// Whether the route is new.
    pub created: bool,
    /// Compile time, when this call compiled.
    pub compile_ms: Option<f64>,
    /// In a cluster: how the nodes answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Convergence>,
}

/// What `DELETE /v1/routes/{name}` answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Deleted {
    /// The route.
    pub route: String,
    /// Always true.
    pub deleted: bool,
    /// The version it served (none if it was unavailable).
    pub version: Option<String>,
    /// Requests still finishing on it.
    pub in_flight: usize,
    /// In a cluster: how the nodes answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Convergence>,
}

/// `GET /v1/routes/{name}/versions`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct History {
    /// The route.
    pub route: String,
    /// Its stable version.
    pub active: String,
    /// Its activations, oldest first.
    pub versions: Vec<HistoryEntry>,
}

/// What `POST /v1/modules` answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Uploaded {
    /// The module's version, to activate.
    pub version: String,
    /// Its size.
    pub size_bytes: usize,
    /// Compile time (`null`: it was stored already).
    pub compile_ms: Option<f64>,
}

/// A stored module.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModuleStatus {
    /// Its version (digest).
    pub version: String,
    /// Its size.
    pub size_bytes: u64,
    /// Uploaded and kept until a route activates it or it is deleted.
    pub pinned: bool,
    /// Whether it was stored with a signature.
    pub signed: bool,
    /// Routes serving it or keeping it in their history.
    pub used_by: Vec<String>,
}

/// `GET /v1/modules`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModuleList {
    /// Every stored module.
    pub modules: Vec<ModuleStatus>,
}

/// What `DELETE /v1/modules/{version}` answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModuleDeleted {
    /// The module's version.
    pub version: String,
    /// Always true.
    pub deleted: bool,
}

/// The body of `POST /v1/routes/{name}/rollback` and `.../activate`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// A version (`sha256:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// A label from the history (rollback), or the label to record (activate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The prefix (activate only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

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

/// `GET /v1/routes/{name}/kv/keys` and `GET /v1/kv/{bucket}/keys`: one page of a bucket's keys,
/// in order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KvKeys {
    /// The bucket: `route/NAME` (a route's own) or `shared/NAME`.
    pub bucket: String,
    /// The keys.
    pub keys: Vec<String>,
    /// Where the next page starts (`?cursor=`); `null` on the last page.
    pub cursor: Option<String>,
}

/// A key and its value: what `GET .../kv/keys/{key}` answers, and each line of an export or an
/// import. A value that is UTF-8 text is `value`; any other is `base64`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct KvEntry {
    /// The key.
    pub key: String,
    /// The value, when it is UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value, base64, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
    /// Its version (larger after every write to the bucket); ignored by an import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// When it expires, milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

/// `PUT .../kv/keys/{key}`: the value (`value` as text, or `base64`) and an optional time to
/// live.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KvPut {
    /// The value as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
    /// Milliseconds until it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// What `PUT .../kv/keys/{key}` answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KvWritten {
    /// The key.
    pub key: String,
    /// Its new version.
    pub revision: u64,
}

/// What `DELETE .../kv/keys/{key}` answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KvDeleted {
    /// The key.
    pub key: String,
    /// Whether it existed.
    pub deleted: bool,
}

/// What `POST .../kv/import` answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KvImported {
    /// The bucket.
    pub bucket: String,
    /// Keys written.
    pub imported: u64,
    /// Lines skipped: entries that had already expired.
    pub expired: u64,
}
