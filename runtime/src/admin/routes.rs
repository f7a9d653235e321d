//! The route endpoints: list, status, deploy, delete, history, rollback and activate.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, FromRequestParts, State};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderMap, StatusCode};

use super::extract::{Named, Pairs, WaitOnly};
use super::input::{check_signature, parse_label, read_upload, target_body};
use super::nodes::Wait;
use crate::api::{self, Problem};
use crate::auth::{AuditVersion, Caller};
use crate::deploy::{self, DeployError, DeployRequest};
use crate::names::{Prefix, RouteName};
use crate::route::{Route, Serving};
use crate::runtime::Runtime;
use crate::settings::{self, LimitsStatus, SettingsPatch};
use crate::version::Version;

/// A version as the admin API shows it.
pub(super) fn version_status(version: &Version) -> api::VersionStatus {
    // One reading, so `failures` and `figures.errors` agree.
    let stats = version.stats.snapshot();
    api::VersionStatus {
        version: version.digest.to_string(),
        size_bytes: version.size_bytes,
        deployed_at_ms: version
            .deployed_at
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        compile_ms: version.compile_time.as_secs_f64() * 1e3,
        wasi: version.wasi().as_str().to_owned(),
        in_flight: version.in_flight(),
        requests: version.requests(),
        failures: stats.errors,
        guest_failures: version.guest_failures(),
        figures: Some(figures(&stats)),
    }
}

/// A version's figures as the admin API shows them.
fn figures(stats: &crate::stats::Snapshot) -> api::VersionFigures {
    api::VersionFigures {
        completed: stats.completed,
        errors: stats.errors,
        latency: stats.latency.to_vec(),
        latency_bounds_ms: crate::stats::BUCKETS_MS.to_vec(),
    }
}

fn draining_of(rt: &Runtime, name: &RouteName) -> Vec<api::DrainingStatus> {
    rt.draining()
        .into_iter()
        .filter(|d| d.route == *name)
        .map(|d| api::DrainingStatus {
            version: version_status(&d.version),
            retired_ms_ago: d.since.elapsed().as_millis() as u64,
            time_left_ms: rt
                .config
                .drain_timeout
                .saturating_sub(d.since.elapsed())
                .as_millis() as u64,
        })
        .collect()
}

/// The status of `route` as `caller` may see it; `None` when it is unavailable.
fn status_of(rt: &Runtime, route: &Route, caller: &Caller) -> Option<api::RouteStatus> {
    let split = route.split()?;
    let stable = &split.stable;
    Some(api::RouteStatus {
        route: route.name.as_str().to_owned(),
        prefix: route.prefix.as_str().to_owned(),
        requests: route.state.requests(),
        config: stable
            .config
            .iter()
            .map(|(key, value)| (key.clone(), caller.config_value(value)))
            .collect(),
        limits: LimitsStatus::from(&stable.limits),
        outbound: stable.outbound.iter().map(ToString::to_string).collect(),
        dir: stable.dir.as_ref().map(|d| d.name.to_string()),
        kv: stable.kv.shared().map(str::to_owned).collect(),
        in_flight: route.state.in_flight(),
        active: version_status(stable),
        versions: split
            .versions()
            .map(|(role, version, weight)| api::ServedStatus {
                role: role.as_str().to_owned(),
                weight: weight.percent(),
                version: version_status(version),
            })
            .collect(),
        draining: draining_of(rt, &route.name),
        rollout: crate::rollout::status(route),
        shadow: super::delivery::shadow_as(route, caller),
        nodes: super::nodes::route_nodes(rt, route),
    })
}

/// `GET /v1/routes`.
pub(super) async fn list(
    State(rt): State<Arc<Runtime>>,
    Extension(caller): Extension<Caller>,
) -> Json<api::RouteList> {
    let table = rt.routes.snapshot();
    Json(api::RouteList {
        routes: table
            .iter()
            .filter_map(|r| status_of(&rt, r, &caller))
            .collect(),
        unavailable: rt
            .unavailable()
            .into_iter()
            .map(|(route, reason)| api::Unavailable { route, reason })
            .collect(),
    })
}

/// `GET /v1/routes/{name}`.
pub(super) async fn get_one(
    State(rt): State<Arc<Runtime>>,
    Extension(caller): Extension<Caller>,
    Named(name): Named,
) -> Result<Json<api::RouteStatus>, Problem> {
    let table = rt.routes.snapshot();
    let route = table
        .get(&name)
        .ok_or_else(|| DeployError::UnknownRoute(name.as_str().to_owned()))?;
    match (&route.serving, status_of(&rt, route, &caller)) {
        (_, Some(status)) => Ok(Json(status)),
        (Serving::Unavailable(reason), None) => Err(Problem::new(
            StatusCode::CONFLICT,
            format!(
                "route `{}` is stored but unavailable: {reason}. Deploy it again, or delete it",
                name.as_str()
            ),
        )),
        (Serving::Live(_), None) => unreachable!("a live route has a status"),
    }
}

/// Query parameters of a deploy: `prefix`, `label` and `message` once, the settings (`config`
/// any number of times), `wait`; rejected with the problem document naming what is wrong.
pub(super) struct DeployQuery {
    prefix: Option<Prefix>,
    label: Option<String>,
    message: Option<String>,
    settings: SettingsPatch,
    wait: Wait,
}

impl<S: Send + Sync> FromRequestParts<S> for DeployQuery {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let Pairs(pairs) = Pairs::from_request_parts(parts, state).await?;
        Self::parse(pairs)
    }
}

impl DeployQuery {
    fn parse(pairs: Vec<(String, String)>) -> Result<Self, Problem> {
        let bad = |detail: String| Problem::new(StatusCode::BAD_REQUEST, detail);
        let wait = Wait::of_query(&pairs)?;
        let mut prefix = None;
        let mut label = None;
        let mut message = None;
        let mut settings = settings::patch::Reader::default();
        for (key, value) in pairs {
            match key.as_str() {
                "prefix" if prefix.is_none() => prefix = Some(Prefix::parse(&value).map_err(bad)?),
                "label" if label.is_none() => label = Some(parse_label(&value)?),
                "message" if message.is_none() => {
                    if value.len() > 1024 {
                        return Err(bad("a deploy message may be at most 1024 bytes".into()));
                    }
                    message = Some(value);
                }
                "prefix" | "label" | "message" => {
                    return Err(bad(format!("give `{key}` at most once")));
                }
                "wait" => {}
                other if settings.offer(other, &value).map_err(bad)? => {}
                other => {
                    return Err(bad(format!(
                        "unknown query parameter `{}`; a deploy takes `prefix=/path`, `label=...`, `message=...`, {}",
                        other.escape_debug(),
                        settings::patch::deploy_keys()
                    )));
                }
            }
        }
        Ok(Self {
            prefix,
            label,
            message,
            settings: settings.finish().map_err(bad)?,
            wait,
        })
    }
}

/// `PUT /v1/routes/{name}`: deploy.
pub(super) async fn put(
    State(rt): State<Arc<Runtime>>,
    Extension(caller): Extension<Caller>,
    Named(name): Named,
    DeployQuery {
        prefix,
        label,
        message,
        settings,
        wait,
    }: DeployQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let began = std::time::SystemTime::now();
    let bytes = read_upload(&rt, &headers, body).await?;
    let uploaded = Some((began, std::time::SystemTime::now()));
    let signature = check_signature(&rt, &headers, &bytes)?;
    let request = DeployRequest {
        uploaded,
        name: name.clone(),
        prefix,
        bytes,
        signature,
        by: caller.0,
        label,
        message,
        settings,
    };
    let deployed = deploy::deploy(&rt, request).await?;
    Ok(deployed_response(&rt, &name, deployed, wait).await)
}

/// `DELETE /v1/routes/{name}`.
pub(super) async fn delete(
    State(rt): State<Arc<Runtime>>,
    Named(name): Named,
    WaitOnly(wait): WaitOnly,
) -> Result<Response, Problem> {
    let (route, revision) = deploy::delete(&rt, &name).await?;
    let stable = route.stable();
    let cluster = super::nodes::converge(&rt, name.as_str(), revision, true, wait).await;
    let status = super::nodes::status_of(StatusCode::OK, cluster.as_ref());
    Ok((
        status,
        Json(api::Deleted {
            route: name.as_str().to_owned(),
            deleted: true,
            version: stable.map(|v| v.digest.to_string()),
            in_flight: stable.map_or(0, |v| v.in_flight()),
            cluster,
        }),
    )
        .into_response())
}

/// `GET /v1/routes/{name}/versions`.
pub(super) async fn versions(
    State(rt): State<Arc<Runtime>>,
    Extension(caller): Extension<Caller>,
    Named(name): Named,
) -> Result<Json<api::History>, Problem> {
    let mut record = deploy::history(&rt, &name).await?;
    for (_, value) in record.history.iter_mut().flat_map(|e| &mut e.config) {
        *value = caller.config_value(value);
    }
    Ok(Json(api::History {
        route: name.as_str().to_owned(),
        active: record.active,
        versions: record.history,
    }))
}

/// `POST /v1/routes/{name}/rollback`.
pub(super) async fn rollback(
    State(rt): State<Arc<Runtime>>,
    Extension(caller): Extension<Caller>,
    Named(name): Named,
    WaitOnly(wait): WaitOnly,
    body: Body,
) -> Result<Response, Problem> {
    let target = match target_body(&rt, body).await? {
        api::Target {
            prefix: Some(_), ..
        } => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "a rollback keeps the route's prefix; deploy to change it",
            ));
        }
        api::Target {
            version: Some(_),
            label: Some(_),
            ..
        } => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "give either `version` or `label`, not both",
            ));
        }
        api::Target {
            version: Some(v), ..
        } => deploy::Target::Version(deploy::parse_digest(&v)?),
        api::Target { label: Some(l), .. } => deploy::Target::Label(l),
        api::Target { .. } => deploy::Target::Previous,
    };
    let deployed = deploy::rollback(&rt, &name, target, caller.0).await?;
    Ok(deployed_response(&rt, &name, deployed, wait).await)
}

/// `POST /v1/routes/{name}/activate`.
pub(super) async fn activate(
    State(rt): State<Arc<Runtime>>,
    Extension(caller): Extension<Caller>,
    Named(name): Named,
    WaitOnly(wait): WaitOnly,
    body: Body,
) -> Result<Response, Problem> {
    let target = target_body(&rt, body).await?;
    let Some(version) = target.version else {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "an activation needs JSON like {\"version\": \"sha256:...\"} (the digest `POST /v1/modules` answered)",
        ));
    };
    let digest = deploy::parse_digest(&version)?;
    let prefix = target
        .prefix
        .as_deref()
        .map(Prefix::parse)
        .transpose()
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, e))?;
    let label = target.label.as_deref().map(parse_label).transpose()?;
    let deployed = deploy::activate(&rt, &name, prefix, digest, caller.0, label).await?;
    Ok(deployed_response(&rt, &name, deployed, wait).await)
}

async fn deployed_response(
    rt: &Runtime,
    name: &RouteName,
    deployed: deploy::Deployed,
    wait: Wait,
) -> Response {
    let revision = deployed.route.record.revision;
    let cluster = super::nodes::converge(rt, name.as_str(), revision, false, wait).await;
    let status = if deployed.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let status = super::nodes::status_of(status, cluster.as_ref());
    let body = api::Deployed {
        route: name.as_str().to_owned(),
        prefix: deployed.route.prefix.as_str().to_owned(),
        version: deployed
            .route
            .stable()
            .map(|v| v.digest.to_string())
            .unwrap_or_default(),
        previous_version: deployed.previous.map(|d| d.to_string()),
        changed: deployed.changed,
        created: deployed.created,
        compile_ms: deployed.compile_time.map(|t| t.as_secs_f64() * 1e3),
        cluster,
    };
    let version = AuditVersion(body.version.clone());
    let mut response = (status, Json(body)).into_response();
    response.extensions_mut().insert(version);
    response
}
