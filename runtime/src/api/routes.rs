//! Routes and their versions: `GET /v1/routes`, a route's status and history, and what a
//! deploy, rollback, activate or delete answers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::delivery::{RolloutStatus, ShadowStatus};
use super::nodes::{Convergence, RouteOnNode};
use crate::settings::LimitsStatus;
use crate::state::HistoryEntry;

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
