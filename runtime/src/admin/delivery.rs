//! The progressive-delivery endpoints: a route's rollout (start, inspect, promote, abort,
//! pause, resume, set the weight) and its shadow (start, inspect, stop).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;

use super::extract::{Named, NamedAction};
use super::input::json_body;
use crate::api::{self, Problem};
use crate::auth::Caller;
use crate::deploy::{self, DeployError};
use crate::names::RouteName;
use crate::rollout::{self, Action};
use crate::route::Route;
use crate::runtime::Runtime;

/// The route as it stands now.
fn route(rt: &Runtime, name: &RouteName) -> Result<Route, Problem> {
    rt.routes
        .snapshot()
        .get(name)
        .cloned()
        .ok_or_else(|| DeployError::UnknownRoute(name.as_str().to_owned()).into())
}

/// The route's rollout as the API shows it.
fn rollout_of(rt: &Runtime, name: &RouteName) -> Result<api::RolloutStatus, Problem> {
    rollout::status(&route(rt, name)?)
        .ok_or_else(|| DeployError::NoRollout(name.as_str().to_owned()).into())
}

/// `POST /v1/routes/{name}/rollout`: start a rollout.
pub(super) async fn start(
    State(rt): State<Arc<Runtime>>,
    Extension(caller): Extension<Caller>,
    Named(name): Named,
    body: Body,
) -> Result<Response, Problem> {
    let example = r#"{"version": "sha256:...", "steps": [5, 25, 50, 100]}"#;
    let request: api::RolloutRequest = json_body(&rt, body, example).await?.ok_or_else(|| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!("a rollout needs JSON like {example}"),
        )
    })?;
    let route = rollout::start(&rt, &name, request, caller.0).await?;
    let status = rollout::status(&route).expect("a rollout was just started");
    Ok((StatusCode::CREATED, Json(status)).into_response())
}

/// `GET /v1/routes/{name}/rollout`.
pub(super) async fn get(
    State(rt): State<Arc<Runtime>>,
    Named(name): Named,
) -> Result<Json<api::RolloutStatus>, Problem> {
    Ok(Json(rollout_of(&rt, &name)?))
}

/// `PATCH /v1/routes/{name}/rollout`: `{"weight": N}` sets the weight by hand and pauses.
pub(super) async fn weight(
    State(rt): State<Arc<Runtime>>,
    Extension(caller): Extension<Caller>,
    Named(name): Named,
    body: Body,
) -> Result<Json<api::RolloutStatus>, Problem> {
    let example = r#"{"weight": 25}"#;
    let request: api::WeightRequest = json_body(&rt, body, example).await?.ok_or_else(|| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!("setting the weight needs JSON like {example}"),
        )
    })?;
    rollout::act(&rt, &name, Action::Weight(request.weight), &caller.0).await?;
    Ok(Json(rollout_of(&rt, &name)?))
}

/// `POST /v1/routes/{name}/rollout/{action}`: promote, abort, pause or resume.
pub(super) async fn act(
    State(rt): State<Arc<Runtime>>,
    Extension(caller): Extension<Caller>,
    NamedAction(name, action): NamedAction,
) -> Result<Json<api::RolloutStatus>, Problem> {
    let action = match action.as_str() {
        "promote" => Action::Promote,
        "abort" => Action::Abort,
        "pause" => Action::Pause,
        "resume" => Action::Resume,
        other => {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                format!(
                    "a rollout takes promote, abort, pause or resume, not `{}`",
                    other.escape_debug()
                ),
            ));
        }
    };
    rollout::act(&rt, &name, action, &caller.0).await?;
    Ok(Json(rollout_of(&rt, &name)?))
}

/// The route's shadow, whole (its figures; what a caller sees is [`shadow_as`]).
pub(super) fn shadow_of(route: &Route) -> Option<api::ShadowStatus> {
    Some(route.state.shadow.status(route.record.shadow.as_ref()?))
}

/// The route's shadow as `caller` may see it. A `read` caller's mismatch samples keep their
/// method, path, statuses, sizes and digests, but not the query string or the first bytes of
/// the bodies: those are the clients' and the guests' data (redacted as config values are).
pub(super) fn shadow_as(route: &Route, caller: &Caller) -> Option<api::ShadowStatus> {
    let mut status = shadow_of(route)?;
    if caller.1 == crate::auth::Scope::Read {
        for sample in &mut status.samples {
            if let Some(query) = sample.path.find('?') {
                sample.path.truncate(query);
                sample.path.push('?');
                sample.path.push_str(crate::auth::REDACTED);
            }
            for start in [&mut sample.stable_start, &mut sample.shadow_start] {
                if !start.is_empty() {
                    *start = crate::auth::REDACTED.to_owned();
                }
            }
        }
    }
    Some(status)
}

fn no_shadow(name: &RouteName) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        format!(
            "route `{}` has no shadow; start one with PUT /v1/routes/{}/shadow",
            name.as_str(),
            name.as_str()
        ),
    )
}

/// `PUT /v1/routes/{name}/shadow`: copy a share of the route's requests to a stored module.
pub(super) async fn shadow_set(
    State(rt): State<Arc<Runtime>>,
    Extension(caller): Extension<Caller>,
    Named(name): Named,
    body: Body,
) -> Result<Json<api::ShadowStatus>, Problem> {
    let example = r#"{"version": "sha256:...", "percent": 100}"#;
    let request: api::ShadowRequest = json_body(&rt, body, example).await?.ok_or_else(|| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!("a shadow needs JSON like {example}"),
        )
    })?;
    let route = deploy::shadow::set(&rt, &name, request).await?;
    shadow_as(&route, &caller)
        .map(Json)
        .ok_or_else(|| no_shadow(&name))
}

/// `GET /v1/routes/{name}/shadow`.
pub(super) async fn shadow_get(
    State(rt): State<Arc<Runtime>>,
    Extension(caller): Extension<Caller>,
    Named(name): Named,
) -> Result<Json<api::ShadowStatus>, Problem> {
    shadow_as(&route(&rt, &name)?, &caller)
        .map(Json)
        .ok_or_else(|| no_shadow(&name))
}

/// `DELETE /v1/routes/{name}/shadow`: stop it; answers its last figures.
pub(super) async fn shadow_clear(
    State(rt): State<Arc<Runtime>>,
    Extension(caller): Extension<Caller>,
    Named(name): Named,
) -> Result<Json<api::ShadowStatus>, Problem> {
    let before = deploy::shadow::clear(&rt, &name).await?;
    shadow_as(&before, &caller)
        .map(Json)
        .ok_or_else(|| no_shadow(&name))
}
