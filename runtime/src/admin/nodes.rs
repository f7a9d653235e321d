//! The cluster as the admin API shows it (`--cluster` only): `GET /v1/nodes`, what each node
//! serves per route in a route's status, this node's view in `/healthz`, the wait of a change
//! for every live node (`?wait=all|local|none`), and the refusal of changes while this node
//! cannot reach the cluster.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode};

use crate::api::{self, Problem};
use crate::cluster::{Cluster, OutcomeState};
use crate::route::Route;
use crate::runtime::Runtime;

/// How long a change waits for the other nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// Until every live node activated it (or failed, or the timeout passed).
    All,
    /// Until this node activated it.
    Local,
    /// Until it is recorded (on the node that records it, that includes its activation).
    None,
}

impl Wait {
    fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Local => "local",
            Self::None => "none",
        }
    }

    /// Parses `wait=all|local|none`.
    pub(super) fn parse(text: &str) -> Result<Self, Problem> {
        match text {
            "all" => Ok(Self::All),
            "local" => Ok(Self::Local),
            "none" => Ok(Self::None),
            other => Err(Problem::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "`wait={}` is not a choice; give wait=all (every live node, the default), wait=local or wait=none",
                    other.escape_debug()
                ),
            )),
        }
    }

    /// The `wait` key of a query (at most once), `all` when absent; the other keys are the
    /// caller's.
    pub(super) fn of_query(pairs: &[(String, String)]) -> Result<Self, Problem> {
        let mut waits = pairs.iter().filter(|(k, _)| k == "wait");
        let wait = waits
            .next()
            .map_or(Ok(Self::All), |(_, v)| Self::parse(v))?;
        if waits.next().is_some() {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "give `wait` at most once",
            ));
        }
        Ok(wait)
    }
}

/// Waits as `wait` says for the nodes to apply `revision` of route `name` (`deleted`: the
/// change deleted it). `None` outside a cluster.
pub(super) async fn converge(
    rt: &Runtime,
    name: &str,
    revision: u64,
    deleted: bool,
    wait: Wait,
) -> Option<api::Convergence> {
    let cluster = rt.cluster.as_ref()?;
    if wait != Wait::All {
        return Some(api::Convergence {
            wait: wait.as_str().to_owned(),
            revision,
            converged: true,
            nodes: Vec::new(),
        });
    }
    let outcomes = cluster
        .nodes
        .wait(name, revision, deleted, cluster.timeout())
        .await;
    let converged = outcomes
        .iter()
        .all(|o| matches!(o.state, OutcomeState::Activated | OutcomeState::Gone));
    if !converged {
        let missing: Vec<String> = outcomes
            .iter()
            .filter(|o| !matches!(o.state, OutcomeState::Activated | OutcomeState::Gone))
            .map(|o| format!("{} ({})", o.node, o.state.as_str()))
            .collect();
        tracing::warn!(route = name, revision, nodes = %missing.join(", "), "change not activated on every node: partial");
    }
    Some(api::Convergence {
        wait: wait.as_str().to_owned(),
        revision,
        converged,
        nodes: outcomes
            .into_iter()
            .map(|o| api::NodeAnswer {
                node: o.node,
                state: o.state.as_str().to_owned(),
                revision: o.revision,
                error: o.error,
            })
            .collect(),
    })
}

/// The HTTP status of a change's answer: `partial` (some live node did not activate it) is
/// `202 Accepted` (recorded, not everywhere), whatever it would have been.
pub(super) fn status_of(status: StatusCode, convergence: Option<&api::Convergence>) -> StatusCode {
    match convergence {
        Some(c) if !c.converged => StatusCode::ACCEPTED,
        _ => status,
    }
}

/// `GET /v1/nodes`.
pub(super) async fn list(State(rt): State<Arc<Runtime>>) -> Result<Json<api::NodeList>, Problem> {
    let cluster = cluster_of(&rt)?;
    let table = rt.routes.snapshot();
    let nodes = cluster
        .nodes
        .all()
        .into_iter()
        .map(|seen| {
            let record = &seen.record;
            api::NodeStatus {
                node: record.name.clone(),
                alive: seen.alive(),
                ready: record.ready,
                leaving: record.leaving,
                admin: record.admin.clone(),
                data: record.data.clone(),
                handoff_version: record.handoff_version.clone(),
                engine_key: record.engine_key.clone(),
                position: record.position,
                last_seen_ms: seen.at.elapsed().as_millis() as u64,
                routes: record
                    .routes
                    .iter()
                    .map(|(route, served)| api::NodeRouteStatus {
                        route: route.clone(),
                        revision: served.revision,
                        version: served.version.clone(),
                        converged: served.error.is_none()
                            && table.iter().any(|r| {
                                r.name.as_str() == route && r.record.revision == served.revision
                            }),
                        error: served.error.as_ref().map(|e| e.reason.clone()),
                    })
                    .collect(),
            }
        })
        .collect();
    Ok(Json(api::NodeList {
        this: cluster.node_name().to_owned(),
        connected: cluster.connected(),
        nodes,
    }))
}

/// What every node serves on `route`, for its status (`None` outside a cluster).
pub(super) fn route_nodes(rt: &Runtime, route: &Route) -> Option<Vec<api::RouteOnNode>> {
    let cluster = rt.cluster.as_ref()?;
    Some(
        cluster
            .nodes
            .all()
            .into_iter()
            .map(|seen| {
                let served = seen.record.routes.get(route.name.as_str());
                api::RouteOnNode {
                    node: seen.record.name.clone(),
                    alive: seen.alive(),
                    revision: served.map(|s| s.revision),
                    version: served.and_then(|s| s.version.clone()),
                    converged: served
                        .is_some_and(|s| s.revision == route.record.revision && s.error.is_none()),
                    error: served.and_then(|s| s.error.as_ref().map(|e| e.reason.clone())),
                }
            })
            .collect(),
    )
}

/// This node's view of the cluster, for `/healthz`.
pub(super) fn health(rt: &Runtime) -> api::Health {
    let Some(cluster) = &rt.cluster else {
        return api::Health {
            status: "ok".into(),
            cluster: None,
        };
    };
    let me = cluster.nodes.me();
    let connected = cluster.connected();
    api::Health {
        status: if connected { "ok" } else { "degraded" }.into(),
        cluster: Some(api::ClusterHealth {
            node: me.name,
            connected,
            ready: me.ready,
            position: me.position,
        }),
    }
}

/// Refuses every change (anything but `GET`/`HEAD`) with 503 while this node cannot reach
/// its cluster: it keeps serving its last state, and only JetStream decides what is recorded.
pub(super) async fn refuse_when_cut_off(
    State(rt): State<Arc<Runtime>>,
    request: Request,
    next: Next,
) -> Response {
    let reading = matches!(*request.method(), Method::GET | Method::HEAD);
    if let Some(cluster) = &rt.cluster
        && !reading
        && !cluster.connected()
    {
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "node `{}` cannot reach the cluster (NATS) now; it keeps serving its last state and refuses changes until the cluster is back. Try again then",
                cluster.node_name()
            ),
        )
        .into_response();
    }
    next.run(request).await
}

fn cluster_of(rt: &Runtime) -> Result<&Arc<Cluster>, Problem> {
    rt.cluster.as_ref().ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "this server runs on its own (started without --cluster); it has no nodes to list",
        )
    })
}
