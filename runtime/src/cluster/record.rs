//! What a node record says ([`NodeRecord`]): what the node serves per route, the figures of
//! its live rollouts, how far it has read the routes bucket, whether it is ready or leaving; how
//! a record answers a change ([`NodeRecord::answer`]); and its routes cut into parts when the
//! record is larger than one message.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a node says about itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct NodeRecord {
    /// Its name (unique in the cluster).
    pub name: String,
    /// Which process: a restarted node has a new one.
    pub id: String,
    /// When it started, milliseconds since the Unix epoch (its clock).
    pub started_ms: u64,
    /// When it last published this record (its clock).
    pub heartbeat_ms: u64,
    /// Its admin API.
    pub admin: Option<String>,
    /// Its data plane.
    pub data: Option<String>,
    /// The key of the engine its artifacts are compiled for.
    pub engine_key: String,
    /// The handoff release it runs.
    pub handoff_version: String,
    /// Whether it has caught up and serves.
    pub ready: bool,
    /// Whether it is shutting down.
    pub leaving: bool,
    /// How far it has applied the routes bucket.
    pub position: u64,
    /// What it serves, by route.
    pub routes: BTreeMap<String, NodeRoute>,
    /// During a rollout: the request figures of the route's versions here, by route, then by
    /// version (what the node that drives the rollout sums for its gates).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub figures: BTreeMap<String, BTreeMap<String, Figures>>,
    /// When its routes do not fit one message: the number of parts (keys `NAME/0`, `NAME/1`…,
    /// published just before this record) that hold them. 0 in a record as read (its routes
    /// put back together).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub parts: u32,
    /// The generation of this record's parts (see `parts`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u64,
}

impl NodeRecord {
    /// How this record answers a change of `route` to `revision` (`deleted`: the change deletes
    /// the route), if it has.
    pub fn answer(&self, route: &str, revision: u64, deleted: bool) -> Option<Outcome> {
        let record = self;
        let served = record.routes.get(route);
        let outcome = |state, error| {
            Some(Outcome {
                node: record.name.clone(),
                state,
                revision: served.map(|r| r.revision),
                error,
            })
        };
        if let Some(error) = served
            .and_then(|r| r.error.as_ref())
            .filter(|e| e.revision >= revision)
        {
            return outcome(OutcomeState::Failed, Some(error.reason.clone()));
        }
        match served {
            Some(r) if r.revision >= revision => outcome(OutcomeState::Activated, None),
            None if deleted && record.position >= revision => {
                outcome(OutcomeState::Activated, None)
            }
            _ => None,
        }
    }
}

fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

/// A slice of the routes of a node record too large for one message (see
/// `Nodes::publish`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub(super) struct RoutesPart {
    /// The generation of the record it belongs to.
    pub(super) generation: u64,
    /// Its routes.
    pub(super) routes: BTreeMap<String, NodeRoute>,
}

/// Room in a message for its subject and headers.
pub(super) const MESSAGE_ROOM: usize = 1 << 10;

/// `routes` in slices of at most about `budget` bytes of JSON each.
pub(super) fn split_routes(routes: BTreeMap<String, NodeRoute>, budget: usize) -> Vec<RoutesPart> {
    let mut parts = vec![RoutesPart::default()];
    let mut size = 0;
    for (name, route) in routes {
        // The entry's JSON, its quotes, colon and comma.
        let entry = name.len() + serde_json::to_vec(&route).map_or(0, |v| v.len()) + 8;
        if size + entry > budget && !parts.last().is_some_and(|p| p.routes.is_empty()) {
            parts.push(RoutesPart::default());
            size = 0;
        }
        size += entry;
        parts
            .last_mut()
            .expect("one part at least")
            .routes
            .insert(name, route);
    }
    parts
}

/// A version's request figures on one node, counted since the node built it (the fields of
/// `crate::stats::Snapshot`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Figures {
    /// Requests that ended.
    pub completed: u64,
    /// Of those, the ones that failed.
    pub errors: u64,
    /// Responses by status class.
    pub classes: [u64; 5],
    /// Requests per latency bucket.
    pub latency: Vec<u64>,
    /// Total latency, microseconds.
    pub latency_us: u64,
}

/// What a node serves on one route.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct NodeRoute {
    /// The revision of the route it serves.
    pub revision: u64,
    /// Its stable version (`None`: the route is unavailable here).
    pub version: Option<String>,
    /// The last change of this route it could not apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<NodeError>,
}

/// A change a node could not apply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeError {
    /// The revision it failed to apply.
    pub revision: u64,
    /// Why, in a sentence.
    pub reason: String,
}

/// How a node answered a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeState {
    /// It serves the change (or a later one).
    Activated,
    /// It could not apply it (and keeps serving what it had).
    Failed,
    /// It did not report it in time.
    Timeout,
    /// It left the cluster (or died) before it reported it.
    Gone,
}

impl OutcomeState {
    /// As the admin API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Activated => "activated",
            Self::Failed => "failed",
            Self::Timeout => "timeout",
            Self::Gone => "gone",
        }
    }
}

/// One node's answer to a change.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The node.
    pub node: String,
    /// Its answer.
    pub state: OutcomeState,
    /// The revision of the route it reported.
    pub revision: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_split_into_parts_within_the_budget_and_back_whole() {
        let routes: BTreeMap<String, NodeRoute> = (0..1000)
            .map(|i| {
                let route = NodeRoute {
                    revision: i,
                    version: Some(format!("sha256:{:064x}", i)),
                    error: None,
                };
                (format!("route-{i:04}"), route)
            })
            .collect();
        let parts = split_routes(routes.clone(), 8 << 10);
        assert!(parts.len() > 10, "{} parts", parts.len());
        let mut whole = BTreeMap::new();
        for part in &parts {
            let size = serde_json::to_vec(part).unwrap().len();
            assert!(size <= (8 << 10) + 64, "a part of {size} bytes");
            whole.extend(part.routes.clone());
        }
        assert_eq!(whole, routes);
        // One route larger than the budget still goes, alone in its part.
        let parts = split_routes(routes, 10);
        assert_eq!(parts.len(), 1000);
    }

    fn record(routes: &[(&str, u64, Option<u64>)], position: u64) -> NodeRecord {
        NodeRecord {
            name: "b".into(),
            position,
            routes: routes
                .iter()
                .map(|(name, revision, failed)| {
                    (
                        (*name).to_owned(),
                        NodeRoute {
                            revision: *revision,
                            version: Some("sha256:00".into()),
                            error: failed.map(|revision| NodeError {
                                revision,
                                reason: "no".into(),
                            }),
                        },
                    )
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_node_answers_a_change_once_it_reports_that_revision_or_a_failure_of_it() {
        let state = |r: &NodeRecord, rev, deleted| r.answer("api", rev, deleted).map(|o| o.state);
        assert_eq!(state(&record(&[("api", 4, None)], 4), 5, false), None);
        assert_eq!(
            state(&record(&[("api", 5, None)], 5), 5, false),
            Some(OutcomeState::Activated)
        );
        assert_eq!(
            state(&record(&[("api", 7, None)], 7), 5, false),
            Some(OutcomeState::Activated),
            "a later revision includes this one"
        );
        assert_eq!(
            state(&record(&[("api", 4, Some(5))], 5), 5, false),
            Some(OutcomeState::Failed)
        );
        assert_eq!(
            state(&record(&[("api", 4, Some(3))], 5), 5, false),
            None,
            "an older failure says nothing about this change"
        );
        assert_eq!(
            state(&record(&[], 9), 9, true),
            Some(OutcomeState::Activated)
        );
        assert_eq!(state(&record(&[], 8), 9, true), None);
    }
}
