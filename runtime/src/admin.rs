//! The admin API, served on its own listener (loopback by default), so guest routes can never
//! collide with control routes. Errors are `application/problem+json` (RFC 9457) whose `detail`
//! says what to fix.
//!
//! * `GET    /healthz`             — liveness: `{"status":"ok"}`
//! * `GET    /metrics`             — Prometheus text: requests, in-flight and failures per route
//!   and version, compiles
//! * `GET    /v1/routes`           — every route: prefix, active version, draining versions
//! * `GET    /v1/routes/{name}`    — one route
//! * `PUT    /v1/routes/{name}`    — deploy: body `application/wasm`; optional query
//!   `prefix=/path`, repeated `allow-outbound=scheme://host[:port]` (outbound HTTP the guest may
//!   make; same keep/clear rule as config) and repeated `config=KEY=VALUE` (the guest's environment; without any
//!   `config` the route keeps its current config, a lone empty `config=` clears it); answers
//!   once the new version is compiled, pre-instantiated and active (201 new route, 200
//!   replaced or unchanged)
//!   Also `label=...` (name this version for rollback) and `message=...` (kept in history).
//! * `DELETE /v1/routes/{name}`    — stop routing, drain, forget
//! * `GET    /v1/routes/{name}/versions` — the route's history, oldest first
//! * `POST   /v1/routes/{name}/rollback` — no body: back to the previous version; JSON
//!   `{"version": "sha256:..."}` or `{"label": "..."}`: to that one (no recompile when its
//!   artifact is on disk)
//! * `POST   /v1/routes/{name}/activate` — JSON `{"version": "sha256:...", "prefix"?: "/p"}`:
//!   serve an uploaded (or earlier) module; creates the route if needed
//! * `POST   /v1/modules`          — upload `application/wasm` without activating; answers the
//!   digest to activate later
//!
//! Every endpoint but `/healthz` takes `Authorization: Bearer <token>` once tokens are
//! configured ([`crate::auth`]): `read` for `GET`, `deploy` for the rest.
//!
//! Handlers here only translate HTTP; the work is in [`crate::deploy`].

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use serde::{Deserialize, Serialize};

use crate::Runtime;
use crate::auth::{AuditVersion, Caller};
use crate::deploy::{self, DeployError, DeployRequest};
use crate::routes::{Prefix, Route, RouteName};
use crate::version::{Version, parse_config};

/// The admin router.
pub fn router(rt: Arc<Runtime>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/routes", get(list_routes))
        .route(
            "/v1/routes/{name}",
            get(get_route).put(put_route).delete(delete_route),
        )
        .route("/v1/routes/{name}/versions", get(get_versions))
        .route("/v1/routes/{name}/rollback", post(post_rollback))
        .route("/v1/routes/{name}/activate", post(post_activate))
        .route("/v1/modules", post(post_module))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(rt.config.admin_tokens.clone()),
            crate::auth::guard,
        ))
        .with_state(rt)
}

/// An RFC 9457 problem document.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    detail: String,
}

impl Problem {
    /// A problem with `status` and a sentence saying what to fix.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}

impl From<DeployError> for Problem {
    fn from(error: DeployError) -> Self {
        if let DeployError::Internal(detail) = &error {
            tracing::error!(error = %detail, "deploy failed in the host");
        }
        Self::new(error.status(), error.to_string())
    }
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn not_found() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "no such admin endpoint; the API lives under /v1/routes",
    )
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this method is not supported here; routes take GET, PUT and DELETE",
    )
}

/// A version as the admin API shows it.
#[derive(Serialize)]
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

impl VersionStatus {
    fn of(version: &Version) -> Self {
        Self {
            version: version.digest.to_string(),
            size_bytes: version.size_bytes,
            deployed_at_ms: version
                .deployed_at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            compile_ms: version.compile_time.as_secs_f64() * 1e3,
            in_flight: version.in_flight(),
            requests: version.requests(),
            failures: version.failures(),
        }
    }
}

/// A route's limits as the admin API shows them (0: no limit).
#[derive(Serialize)]
pub struct LimitsStatus {
    /// Linear-memory cap per instance.
    pub max_memory_bytes: usize,
    /// Deadline per request.
    pub request_timeout_ms: u64,
    /// Concurrent requests (0: only the instance pool bounds them).
    pub max_concurrency: u32,
    /// Request body limit.
    pub max_request_body: u64,
    /// Response body limit.
    pub max_response_body: u64,
    /// Compile deadline.
    pub compile_timeout_ms: u64,
    /// Compile memory limit.
    pub compile_memory_bytes: u64,
}

impl LimitsStatus {
    fn of(limits: &crate::version::Limits) -> Self {
        Self {
            max_memory_bytes: limits.max_memory_bytes,
            request_timeout_ms: limits.request_timeout.as_millis() as u64,
            max_concurrency: limits.max_concurrency,
            max_request_body: limits.max_request_body,
            max_response_body: limits.max_response_body,
            compile_timeout_ms: limits.compile_timeout.as_millis() as u64,
            compile_memory_bytes: limits.compile_memory,
        }
    }
}

/// A route as the admin API shows it.
#[derive(Serialize)]
pub struct RouteStatus {
    /// Its name.
    pub route: String,
    /// Its path prefix.
    pub prefix: String,
    /// Requests routed to it so far, across versions.
    pub requests: u64,
    /// Its deploy-time configuration (the guest's environment).
    pub config: std::collections::BTreeMap<String, String>,
    /// Its limits.
    pub limits: LimitsStatus,
    /// Where its guests may send outbound HTTP requests.
    pub outbound: Vec<String>,
    /// The directory under `--guest-dirs` its guests see at `/data`.
    pub dir: Option<String>,
    /// Requests on it now, across versions.
    pub in_flight: usize,
    /// The version serving new requests.
    pub active: VersionStatus,
    /// Retired versions whose requests are still finishing.
    pub draining: Vec<DrainingStatus>,
}

/// A draining version.
#[derive(Serialize)]
pub struct DrainingStatus {
    /// The version.
    #[serde(flatten)]
    pub version: VersionStatus,
    /// How long ago it was retired.
    pub retired_ms_ago: u64,
}

fn draining_of(rt: &Runtime, name: &RouteName) -> Vec<DrainingStatus> {
    rt.draining()
        .into_iter()
        .filter(|d| d.route == *name)
        .map(|d| DrainingStatus {
            version: VersionStatus::of(&d.version),
            retired_ms_ago: d.since.elapsed().as_millis() as u64,
        })
        .collect()
}

fn status_of(rt: &Runtime, route: &Route) -> RouteStatus {
    RouteStatus {
        route: route.name.as_str().to_owned(),
        prefix: route.prefix.as_str().to_owned(),
        requests: route.counters.requests(),
        config: route.active.config.iter().cloned().collect(),
        limits: LimitsStatus::of(&route.active.limits),
        outbound: route
            .active
            .outbound
            .iter()
            .map(ToString::to_string)
            .collect(),
        dir: route.active.dir.as_ref().map(|d| d.name.to_string()),
        in_flight: route.counters.in_flight(),
        active: VersionStatus::of(&route.active),
        draining: draining_of(rt, &route.name),
    }
}

async fn list_routes(State(rt): State<Arc<Runtime>>) -> Json<serde_json::Value> {
    let table = rt.routes.snapshot();
    let routes: Vec<RouteStatus> = table.iter().map(|r| status_of(&rt, r)).collect();
    let unavailable: Vec<_> = rt
        .unavailable()
        .into_iter()
        .map(|(route, reason)| serde_json::json!({ "route": route, "reason": reason }))
        .collect();
    Json(serde_json::json!({ "routes": routes, "unavailable": unavailable }))
}

fn route_name(path: Result<Path<String>, PathRejection>) -> Result<RouteName, Problem> {
    let Path(name) = path.map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!("the route name in the URL is unreadable: {e}"),
        )
    })?;
    RouteName::parse(&name).map_err(|e| Problem::new(StatusCode::BAD_REQUEST, e))
}

async fn get_route(
    State(rt): State<Arc<Runtime>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<RouteStatus>, Problem> {
    let name = route_name(path)?;
    let table = rt.routes.snapshot();
    let route = table
        .get(&name)
        .ok_or_else(|| DeployError::UnknownRoute(name.as_str().to_owned()))?;
    Ok(Json(status_of(&rt, route)))
}

/// Query parameters of a deploy: `prefix`, `label` and `message` once, `config` any number of
/// times.
struct DeployQuery {
    prefix: Option<Prefix>,
    config: Option<crate::version::RouteConfig>,
    label: Option<String>,
    message: Option<String>,
    limits: deploy::LimitOverrides,
    outbound: Option<crate::outbound::Outbound>,
    dir: Option<String>,
}

impl DeployQuery {
    fn parse(pairs: Vec<(String, String)>) -> Result<Self, Problem> {
        let bad = |detail: String| Problem::new(StatusCode::BAD_REQUEST, detail);
        let mut prefix = None;
        let mut config: Option<Vec<String>> = None;
        let mut label = None;
        let mut message = None;
        let mut limits = deploy::LimitOverrides::default();
        let mut outbound: Option<Vec<String>> = None;
        let mut dir = None;
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
                "config" => config.get_or_insert_with(Vec::new).push(value),
                "allow-outbound" => outbound.get_or_insert_with(Vec::new).push(value),
                "dir" if dir.is_none() => dir = Some(value),
                "dir" => return Err(bad("give `dir` at most once".into())),
                "max-memory" => {
                    let bytes = crate::config::parse_bytes(&value).map_err(bad)?;
                    limits.max_memory_bytes = Some(usize::try_from(bytes).unwrap_or(usize::MAX));
                }
                "request-timeout" => {
                    limits.request_timeout =
                        Some(crate::config::parse_duration(&value).map_err(bad)?);
                }
                "max-concurrency" => {
                    limits.max_concurrency = Some(value.parse().map_err(|_| {
                        bad(format!(
                            "max-concurrency is a whole number of requests (0: no limit); got `{}`",
                            value.escape_debug()
                        ))
                    })?);
                }
                "max-request-body" => {
                    limits.max_request_body =
                        Some(crate::config::parse_bytes(&value).map_err(bad)?);
                }
                "max-response-body" => {
                    limits.max_response_body =
                        Some(crate::config::parse_bytes(&value).map_err(bad)?);
                }
                "compile-timeout" => {
                    limits.compile_timeout =
                        Some(crate::config::parse_duration(&value).map_err(bad)?);
                }
                "compile-memory" => {
                    limits.compile_memory = Some(crate::config::parse_bytes(&value).map_err(bad)?);
                }
                other => {
                    return Err(bad(format!(
                        "unknown query parameter `{}`; a deploy takes `prefix=/path`, `config=KEY=VALUE`, `label=...`, `message=...`, `allow-outbound=scheme://host[:port]` and the limits `max-memory`, `request-timeout`, `max-concurrency`, `max-request-body`, `max-response-body`, `compile-timeout`, `compile-memory`",
                        other.escape_debug()
                    )));
                }
            }
        }
        let config = config
            .map(|pairs| parse_config(pairs.iter().map(String::as_str)))
            .transpose()
            .map_err(bad)?;
        let outbound = outbound
            .map(|rules| crate::outbound::parse_rules(rules.iter().map(String::as_str)))
            .transpose()
            .map_err(bad)?;
        Ok(Self {
            prefix,
            config,
            label,
            message,
            limits,
            outbound,
            dir,
        })
    }
}

/// Labels: 1-64 of `A-Z a-z 0-9 - _ .`.
fn parse_label(label: &str) -> Result<String, Problem> {
    let ok = !label.is_empty()
        && label.len() <= 64
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(label.to_owned())
    } else {
        Err(Problem::new(
            StatusCode::BAD_REQUEST,
            format!(
                "a label is 1 to 64 of letters, digits, `-`, `_` and `.`; got `{}`",
                label.escape_debug()
            ),
        ))
    }
}

/// What a deploy answers.
#[derive(Serialize)]
struct DeployResponse {
    route: String,
    prefix: String,
    version: String,
    previous_version: Option<String>,
    changed: bool,
    created: bool,
    compile_ms: Option<f64>,
}

/// Content types a deploy accepts (and none at all, which `curl -T` sends).
const WASM_CONTENT_TYPES: [&str; 2] = ["application/wasm", "application/octet-stream"];

async fn put_route(
    State(rt): State<Arc<Runtime>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let name = route_name(path)?;
    let Query(pairs) = query.map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!("the query string is unreadable: {}", e.body_text()),
        )
    })?;
    let DeployQuery {
        prefix,
        config,
        label,
        message,
        limits,
        outbound,
        dir,
    } = DeployQuery::parse(pairs)?;
    let bytes = read_upload(&rt, &headers, body).await?;
    check_signature(&rt, &headers, &bytes)?;
    let request = DeployRequest {
        name: name.clone(),
        prefix,
        config,
        bytes,
        by: caller.0,
        label,
        message,
        limits,
        outbound,
        dir,
    };
    let deployed = deploy::deploy(&rt, request).await?;
    Ok(deployed_response(&name, deployed))
}

async fn delete_route(
    State(rt): State<Arc<Runtime>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, Problem> {
    let name = route_name(path)?;
    let route = deploy::delete(&rt, &name).await?;
    Ok(Json(serde_json::json!({
        "route": name.as_str(),
        "deleted": true,
        "version": route.active.digest.to_string(),
        "in_flight": route.active.in_flight(),
    })))
}

/// Checks an upload's `Handoff-Signature` against the trusted keys, as the server's
/// `--signatures` mode says.
fn check_signature(rt: &Runtime, headers: &HeaderMap, bytes: &[u8]) -> Result<(), Problem> {
    use crate::signing::{self, Mode};
    if rt.config.signature_mode == Mode::Off {
        return Ok(());
    }
    let signature = headers.get(signing::HEADER).and_then(|v| v.to_str().ok());
    let signer = signature.and_then(|s| signing::signer(&rt.config.signing_keys, bytes, s));
    match (signer, rt.config.signature_mode) {
        (Some(key), _) => {
            tracing::info!(target: "audit", key = %key.name, "upload signature verified");
            Ok(())
        }
        (None, Mode::Warn) => {
            tracing::warn!(target: "audit", signed = signature.is_some(), "upload not signed by a trusted key; accepted (--signatures warn)");
            Ok(())
        }
        (None, _) => Err(Problem::new(
            StatusCode::FORBIDDEN,
            if signature.is_some() {
                "the upload's Handoff-Signature does not verify against any trusted key; sign these exact bytes (handoff deploy --sign KEY)"
            } else {
                "this server requires signed uploads: send an Ed25519 signature of the bytes in Handoff-Signature (handoff deploy --sign KEY)"
            },
        )),
    }
}

/// Reads a component upload: checks its content type and size limit.
async fn read_upload(
    rt: &Runtime,
    headers: &HeaderMap,
    body: Body,
) -> Result<bytes::Bytes, Problem> {
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        let essence = content_type
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !WASM_CONTENT_TYPES.contains(&essence.as_str()) {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "a deploy takes the component's bytes with `Content-Type: application/wasm`, not `{}`",
                    content_type.to_str().unwrap_or("(unreadable)")
                ),
            ));
        }
    }
    let limit = rt.config.max_upload_bytes;
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the upload is larger than the limit of {limit} bytes; raise `--max-upload` if the component is really this large"
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let reading = Limited::new(body, limit).collect();
    let Ok(read) = tokio::time::timeout(rt.config.upload_timeout, reading).await else {
        return Err(Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the upload did not arrive within {} s; send the whole component at once",
                rt.config.upload_timeout.as_secs()
            ),
        ));
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(error) => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            format!("the upload could not be read to its end: {error}"),
        )),
    }
}

async fn get_versions(
    State(rt): State<Arc<Runtime>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, Problem> {
    let name = route_name(path)?;
    let record = deploy::history(&rt, &name)?;
    Ok(Json(serde_json::json!({
        "route": name.as_str(),
        "active": record.active,
        "versions": record.history,
    })))
}

/// The body of a rollback or an activation.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TargetBody {
    version: Option<String>,
    label: Option<String>,
    prefix: Option<String>,
}

async fn target_body(body: Body) -> Result<TargetBody, Problem> {
    let bytes = Limited::new(body, 64 << 10)
        .collect()
        .await
        .map_err(|e| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                format!("the body could not be read: {e}"),
            )
        })?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) || bytes.trim_ascii() == b"null" {
        return Ok(TargetBody::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!("the body must be JSON like {{\"version\": \"sha256:...\"}} or {{\"label\": \"stable\"}}: {e}"),
        )
    })
}

async fn post_rollback(
    State(rt): State<Arc<Runtime>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, Problem> {
    let name = route_name(path)?;
    let target = match target_body(body).await? {
        TargetBody {
            prefix: Some(_), ..
        } => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "a rollback keeps the route's prefix; deploy to change it",
            ));
        }
        TargetBody {
            version: Some(_),
            label: Some(_),
            ..
        } => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "give either `version` or `label`, not both",
            ));
        }
        TargetBody {
            version: Some(v), ..
        } => deploy::Target::Version(deploy::parse_digest(&v)?),
        TargetBody { label: Some(l), .. } => deploy::Target::Label(l),
        TargetBody { .. } => deploy::Target::Previous,
    };
    let deployed = deploy::rollback(&rt, &name, target, caller.0).await?;
    Ok(deployed_response(&name, deployed))
}

async fn post_activate(
    State(rt): State<Arc<Runtime>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, Problem> {
    let name = route_name(path)?;
    let target = target_body(body).await?;
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
    let deployed = deploy::activate(&rt, &name, prefix, digest, None, caller.0, label).await?;
    Ok(deployed_response(&name, deployed))
}

async fn post_module(
    State(rt): State<Arc<Runtime>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let bytes = read_upload(&rt, &headers, body).await?;
    check_signature(&rt, &headers, &bytes)?;
    let uploaded = deploy::upload(&rt, bytes).await?;
    let status = if uploaded.compile_time.is_some() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(serde_json::json!({
            "version": uploaded.digest.to_string(),
            "size_bytes": uploaded.size_bytes,
            "compile_ms": uploaded.compile_time.map(|t| t.as_secs_f64() * 1e3),
        })),
    )
        .into_response())
}

fn deployed_response(name: &RouteName, deployed: deploy::Deployed) -> Response {
    let status = if deployed.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = DeployResponse {
        route: name.as_str().to_owned(),
        prefix: deployed.route.prefix.as_str().to_owned(),
        version: deployed.route.active.digest.to_string(),
        previous_version: deployed.previous.map(|d| d.to_string()),
        changed: deployed.changed,
        created: deployed.created,
        compile_ms: deployed.compile_time.map(|t| t.as_secs_f64() * 1e3),
    };
    let version = AuditVersion(body.version.clone());
    let mut response = (status, Json(body)).into_response();
    response.extensions_mut().insert(version);
    response
}

/// `GET /metrics`: Prometheus text exposition (format 0.0.4) of the routes, their versions and
/// the compiler. A `read` token may scrape it.
async fn metrics(State(rt): State<Arc<Runtime>>) -> Response {
    use std::fmt::Write;
    let table = rt.routes.snapshot();
    let draining = rt.draining();
    let mut out = String::with_capacity(1024);
    let mut family = |name: &str,
                      kind: &str,
                      help: &str,
                      samples: &mut dyn Iterator<Item = (String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let route_label = |route: &RouteName| format!("{{route=\"{}\"}}", route.as_str());
    // Route names, digests and the fixed states need no escaping: all are [a-z0-9._:-].
    let version_label = |route: &RouteName, version: &Version, state: &str| {
        format!(
            "{{route=\"{}\",version=\"{}\",state=\"{state}\"}}",
            route.as_str(),
            version.digest
        )
    };
    family(
        "handoff_route_requests_total",
        "counter",
        "Requests routed to the route, across its versions.",
        &mut table
            .iter()
            .map(|r| (route_label(&r.name), r.counters.requests().to_string())),
    );
    family(
        "handoff_route_in_flight",
        "gauge",
        "Requests in progress on the route, across its versions.",
        &mut table
            .iter()
            .map(|r| (route_label(&r.name), r.counters.in_flight().to_string())),
    );
    let versions = || {
        table
            .iter()
            .map(|r| (&r.name, &r.active, "active"))
            .chain(draining.iter().map(|d| (&d.route, &d.version, "draining")))
    };
    family(
        "handoff_version_requests_total",
        "counter",
        "Requests routed to a version that is active or still draining.",
        &mut versions()
            .map(|(route, v, state)| (version_label(route, v, state), v.requests().to_string())),
    );
    family(
        "handoff_version_failures_total",
        "counter",
        "Requests on a version that ended in a guest failure (trap, deadline, no response).",
        &mut versions()
            .map(|(route, v, state)| (version_label(route, v, state), v.failures().to_string())),
    );
    family(
        "handoff_version_in_flight",
        "gauge",
        "Requests in progress on a version.",
        &mut versions()
            .map(|(route, v, state)| (version_label(route, v, state), v.in_flight().to_string())),
    );
    family(
        "handoff_version_guest_log_lines_suppressed_total",
        "counter",
        "Guest log lines not written because the version was over its log budget.",
        &mut versions().map(|(route, v, state)| {
            let suppressed = v.host.logs().suppressed_lines();
            (version_label(route, v, state), suppressed.to_string())
        }),
    );
    family(
        "handoff_version_outbound_warnings_suppressed_total",
        "counter",
        "Outbound warnings (denied, refused, failed requests) not logged: over the version's budget.",
        &mut versions().map(|(route, v, state)| {
            let suppressed = v.host.logs().suppressed_outbound_warnings();
            (version_label(route, v, state), suppressed.to_string())
        }),
    );
    family(
        "handoff_log_lines_dropped_total",
        "counter",
        "Log events dropped because stderr could not keep up.",
        &mut std::iter::once((String::new(), crate::telemetry::dropped_lines().to_string())),
    );
    family(
        "handoff_routes_unavailable",
        "gauge",
        "Stored routes that could not be restored at startup.",
        &mut std::iter::once((String::new(), rt.unavailable().len().to_string())),
    );
    family(
        "handoff_compiles_total",
        "counter",
        "Components this process compiled (loading a stored artifact does not count).",
        &mut std::iter::once((String::new(), rt.compiles().to_string())),
    );
    family(
        "handoff_compile_workers",
        "gauge",
        "Compile worker processes running now.",
        &mut std::iter::once((String::new(), rt.compile_workers().to_string())),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
