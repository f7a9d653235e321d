//! Cluster nodes: `GET /v1/nodes`, and how the nodes answered a change.

use serde::{Deserialize, Serialize};

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
