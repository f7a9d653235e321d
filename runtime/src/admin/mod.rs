//! The admin API, served on its own listener (loopback by default), so guest routes can never
//! collide with control routes. Errors are `application/problem+json` (RFC 9457) whose `detail`
//! says what to fix. The JSON documents are the types in [`crate::api`].
//!
//! * `GET    /`                    — the web console ([`console`]; its files under
//!   `/console/`); served without a token, it reads the API with the one typed into it
//! * `GET    /healthz`             — liveness: `{"status":"ok"}`
//! * `GET    /metrics`             — Prometheus text: requests, in-flight and failures per route
//!   and version, compiles ([`metrics`])
//! * `GET    /v1/routes`           — every route: prefix, the versions serving it, draining
//!   versions; and stored routes that cannot serve
//! * `GET    /v1/routes/{name}`    — one route
//! * `PUT    /v1/routes/{name}`    — deploy: body `application/wasm`; optional query
//!   `prefix=/path`, repeated `config=KEY=VALUE` (the guest's environment; without any `config`
//!   the route keeps its current config, a lone empty `config=` clears it), repeated
//!   `allow-outbound=scheme://host[:port]` (same keep/clear rule), `dir=NAME`, repeated
//!   `kv=BUCKET` (shared key-value buckets; same keep/clear rule), `label=...`,
//!   `message=...`, and the per-route settings of [`crate::settings`] (`max-memory=64MiB`);
//!   answers once the new version is compiled, pre-instantiated and active (201 new route, 200
//!   replaced or unchanged)
//! * `DELETE /v1/routes/{name}`    — stop routing, drain, forget
//! * `GET    /v1/routes/{name}/versions` — the route's history, oldest first
//! * `POST   /v1/routes/{name}/rollback` — no body: back to the previous version; JSON
//!   `{"version": "sha256:..."}` or `{"label": "..."}`: to that one (no recompile when its
//!   artifact is on disk)
//! * `POST   /v1/routes/{name}/activate` — JSON `{"version": "sha256:...", "prefix"?: "/p"}`:
//!   serve an uploaded (or earlier) module; creates the route if needed
//! * `POST   /v1/routes/{name}/rollout` — JSON [`api::RolloutRequest`]: start a rollout of a
//!   stored module (201 with the rollout); `GET` it; `PATCH` `{"weight": N}` sets the weight by
//!   hand and pauses; `POST .../rollout/{promote,abort,pause,resume}` ([`delivery`])
//! * `PUT    /v1/routes/{name}/shadow` — JSON [`api::ShadowRequest`]: copy a share of the
//!   route's requests to a stored module and compare; `GET` the figures; `DELETE` stops it
//! * `GET    /v1/events`           — Server-Sent Events: deploys, activations, drains,
//!   rollout steps, rollbacks, shadow figures ([`events`]); `Last-Event-ID` resumes,
//!   `?route=NAME` filters
//! * `GET    /v1/routes/{name}/logs` — Server-Sent Events: the lines the route's guests write,
//!   live (`deploy` token: guest output may hold data) ([`logs`])
//! * `GET    /v1/whoami`           — the caller's token name and scope
//! * `GET    /v1/routes/{name}/kv/keys` (and `/v1/kv/{bucket}/keys` for a shared bucket) — a
//!   page of the bucket's keys; `GET`/`PUT`/`DELETE .../kv/keys/{key}` one key (reading a
//!   value needs `deploy`); `GET .../kv/export`, `POST .../kv/import` as JSON lines ([`kv`])
//! * `POST   /v1/modules`          — upload `application/wasm` without activating; answers the
//!   digest to activate later ([`modules`])
//! * `GET    /v1/modules`          — every stored module, with the routes that use it
//! * `DELETE /v1/modules/{version}` — delete a module no route uses
//! * `GET    /v1/nodes`            — in a cluster: every node, its liveness, and per route the
//!   revision and version it serves ([`nodes`])
//!
//! In a cluster, a change (deploy, rollback, activate, delete) answers once every live node
//! has activated it (`?wait=all`, the default; `wait=local`, `wait=none`), naming the nodes
//! that failed or did not answer (then `202`, partial); while this node cannot reach the
//! cluster, every change is refused with `503`.
//!
//! Every endpoint but `/healthz` takes `Authorization: Bearer <token>` once tokens are
//! configured ([`crate::auth`]): `read` for `GET`, `deploy` for the rest. Requests a web page
//! sent, and mutations with the wrong content type, are refused first ([`guard`]). A `read`
//! caller sees config keys with their values redacted. A request that
//! changes anything runs to its end on a task of its own, even if its client goes away, so
//! what it committed is also answered for in the audit log.
//!
//! Handlers here only translate HTTP; the work is in [`crate::deploy`].

mod console;
mod delivery;
pub mod events;
mod extract;
pub mod guard;
mod input;
mod kv;
mod logs;
mod metrics;
mod modules;
mod nodes;
mod routes;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{Method, StatusCode, header};

use crate::api::{self, Problem};
use crate::deploy::DeployError;
use crate::runtime::Runtime;

/// The admin router for a listener bound to `listener`.
pub fn router(rt: Arc<Runtime>, listener: std::net::SocketAddr) -> Router {
    let guard = guard::AdminGuard::new(
        listener,
        rt.config.admin_tls.is_some(),
        &rt.config.admin_hosts,
    );
    // The console's files hold no data: behind the Host and Origin checks, without a token.
    let console = Router::new()
        .route("/", get(console::index))
        .route("/console/{file}", get(console::asset))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(guard.clone()),
            guard::origin,
        ));
    let api = Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/events", get(events::stream))
        .route("/v1/whoami", get(events::whoami))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/routes", get(routes::list))
        .route(
            "/v1/routes/{name}",
            get(routes::get_one).put(routes::put).delete(routes::delete),
        )
        .route("/v1/routes/{name}/versions", get(routes::versions))
        .route("/v1/routes/{name}/logs", get(logs::tail))
        .route("/v1/routes/{name}/rollback", post(routes::rollback))
        .route("/v1/routes/{name}/activate", post(routes::activate))
        .route(
            "/v1/routes/{name}/rollout",
            get(delivery::get)
                .post(delivery::start)
                .patch(delivery::weight),
        )
        .route("/v1/routes/{name}/rollout/{action}", post(delivery::act))
        .route(
            "/v1/routes/{name}/shadow",
            get(delivery::shadow_get)
                .put(delivery::shadow_set)
                .delete(delivery::shadow_clear),
        )
        .route("/v1/nodes", get(nodes::list))
        .route("/v1/routes/{name}/kv/keys", get(kv::keys))
        .route(
            "/v1/routes/{name}/kv/keys/{*key}",
            get(kv::get).put(kv::put).delete(kv::delete),
        )
        .route("/v1/routes/{name}/kv/export", get(kv::export))
        .route("/v1/routes/{name}/kv/import", post(kv::import))
        .route("/v1/kv/{bucket}/keys", get(kv::keys))
        .route(
            "/v1/kv/{bucket}/keys/{*key}",
            get(kv::get).put(kv::put).delete(kv::delete),
        )
        .route("/v1/kv/{bucket}/export", get(kv::export))
        .route("/v1/kv/{bucket}/import", post(kv::import))
        .route("/v1/modules", post(modules::upload).get(modules::list))
        .route(
            "/v1/modules/{version}",
            axum::routing::delete(modules::delete),
        )
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            rt.clone(),
            nodes::refuse_when_cut_off,
        ))
        .layer(axum::middleware::from_fn_with_state(
            rt.clone(),
            refuse_when_handed_over,
        ))
        .layer(axum::middleware::from_fn(guard::content_type))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(rt.config.admin_tokens.clone()),
            crate::auth::guard,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(guard),
            guard::origin,
        ))
        // Inside `run_to_completion`'s task, so the change runs within the caller's trace.
        .layer(axum::middleware::from_fn_with_state(
            rt.clone(),
            continue_trace,
        ))
        .layer(axum::middleware::from_fn_with_state(
            rt.background.clone(),
            run_to_completion,
        ))
        .with_state(rt);
    // Outside the whole router, where the `Allow` header of a 405 is already set.
    Router::new()
        .merge(console)
        .fallback_service(api)
        .layer(axum::middleware::map_response(name_the_methods))
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        self.response()
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

/// While the state moves to a process taking over (`serve --takeover`), and after it has, this
/// process answers admin requests 503 with `Retry-After` (the new process answers them once
/// it is ready; if it fails, this one takes them again). A request that may change something
/// holds the handover gate while it runs, so a takeover waits for it: every change is applied
/// by exactly one process, or refused.
async fn refuse_when_handed_over(
    axum::extract::State(rt): axum::extract::State<Arc<Runtime>>,
    request: Request,
    next: Next,
) -> Response {
    let refuse = || {
        let mut response = Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this server is handing over to a new process (`serve --takeover`); try again in a moment: the new process answers once it is ready",
        )
        .into_response();
        let headers = response.headers_mut();
        headers.insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
        headers.insert(header::CONNECTION, http::HeaderValue::from_static("close"));
        response
    };
    if rt.handover.released() {
        return refuse();
    }
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    let Some(_gate) = rt.handover.hold().await else {
        return refuse();
    };
    next.run(request).await
}

/// Runs every request that may change something on a task of its own (of the server's
/// background: a shutdown waits for it), so a client that goes away mid-deploy cannot cancel it
/// half way: what is committed is applied whole, and audited.
async fn run_to_completion(
    axum::extract::State(background): axum::extract::State<crate::background::Background>,
    request: Request,
    next: Next,
) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    match background.spawn_job(next.run(request)).await {
        Ok(response) => response,
        Err(error) => {
            tracing::error!(error = %error, "an admin request's task failed");
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the server failed while handling this request; its log has the details",
            )
            .into_response()
        }
    }
}

/// With tracing on, the change an admin request causes (deploy, rollback, a rollout's start…)
/// continues the trace of the request's `traceparent` header: its span is a child of the
/// caller's (a CI job's, say) instead of the root of a trace of its own. Off, one check.
async fn continue_trace(
    axum::extract::State(rt): axum::extract::State<Arc<Runtime>>,
    request: Request,
    next: Next,
) -> Response {
    let caller = rt
        .trace
        .as_ref()
        .and_then(|_| crate::trace::caller(request.headers()));
    match caller {
        Some(caller) => crate::trace::within(caller, next.run(request)).await,
        None => next.run(request).await,
    }
}

async fn healthz(
    axum::extract::State(rt): axum::extract::State<Arc<Runtime>>,
) -> axum::Json<api::Health> {
    axum::Json(nodes::health(&rt))
}

async fn not_found() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "no such admin endpoint; the API lives under /v1/routes, /v1/kv, /v1/modules and /v1/nodes",
    )
}

/// Turns the router's bare 405 into a problem document that names the methods the path takes
/// (from the `Allow` header the router sets).
async fn name_the_methods(response: Response) -> Response {
    if response.status() != StatusCode::METHOD_NOT_ALLOWED {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let methods = allow
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .map(|v| v.replace(',', ", "))
        .unwrap_or_default();
    let mut named = Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("this method is not supported here; this path takes {methods}"),
    )
    .into_response();
    if let Some(allow) = allow {
        named.headers_mut().insert(header::ALLOW, allow);
    }
    named
}
