//! The admin API's wire contract: every JSON document the server sends, as types both the
//! server (which serializes them) and the `handoff` client and tests (which deserialize them)
//! use. Field names here are the public API: extend, never rename.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::problem::Problem;
pub use crate::settings::LimitsStatus;
pub use crate::state::HistoryEntry;

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Health {
    /// `ok`.
    pub status: String,
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
    /// Requests holding it now.
    pub in_flight: usize,
    /// Requests routed to it so far.
    pub requests: u64,
    /// Requests on it that ended in a guest failure.
    pub failures: u64,
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
    /// Requests on it now, across versions.
    pub in_flight: usize,
    /// The stable version: it serves every new request the candidate does not.
    pub active: VersionStatus,
    /// Every version serving the route, stable first, with its role and weight.
    #[serde(default)]
    pub versions: Vec<ServedStatus>,
    /// Retired versions whose requests are still finishing.
    pub draining: Vec<DrainingStatus>,
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
