//! The admin API's wire contract: every JSON document the server sends, as types both the
//! server (which serializes them) and the `handoff` client and tests (which deserialize them)
//! use. Field names here are the public API: extend, never rename.

use serde::{Deserialize, Serialize};

pub use crate::events::{Event, Kind as EventKind, ShadowCounts};
pub use crate::guest_log::LogLine;
pub use crate::problem::Problem;
pub use crate::settings::LimitsStatus;
pub use crate::state::HistoryEntry;

mod delivery;
mod kv;
mod modules;
mod nodes;
mod routes;

pub use delivery::*;
pub use kv::*;
pub use modules::*;
pub use nodes::*;
pub use routes::*;

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

/// `GET /v1/whoami`: who the caller is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Whoami {
    /// The admin token's name (`anonymous` on a tokenless server).
    pub name: String,
    /// `read` or `deploy`.
    pub scope: String,
}
