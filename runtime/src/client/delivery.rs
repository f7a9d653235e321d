//! The progressive-delivery commands: `handoff rollout`, `promote`, `abort`, `pause`,
//! `resume`, `weight` and `shadow` (their answers print through `render_delivery`).
//!
//! A candidate or shadow given as a `.wasm` file is uploaded first (`POST /v1/modules`); one
//! given as a version is a full digest or a unique prefix of at least 8 hex digits among the
//! stored modules. The server decides everything else.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use http::Method;

use super::admin::{
    Admin, AdminClient, Payload, encode, modules_starting_with, print, read_component, signed,
    status_text,
};
use super::render_delivery::{render, render_shadow};
use crate::api::{self, RolloutStatus, ShadowStatus};
use crate::exit::{self, Failure};

/// The fewest hex digits a version prefix may have.
const MIN_PREFIX: usize = 8;

/// A rollout's candidate or a shadow: a `.wasm` file (uploaded first), or a stored version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Component {
    /// A `.wasm` file, or a stored version: a full digest or a unique prefix of at least 8 hex
    /// digits.
    pub given: String,
    /// The private key file to sign the upload with, when `given` is a file.
    pub sign: Option<PathBuf>,
}

/// What `handoff shadow` does to a route's shadow.
#[derive(Debug, Clone, PartialEq)]
pub enum ShadowChange {
    /// Show what it found.
    Show,
    /// Stop it.
    Stop,
    /// Start one with this component; the request's `version` is the component's.
    Start(Component, api::ShadowRequest),
}

/// `handoff rollout ROUTE FILE.wasm|VERSION [...]`: `request`'s `version` is replaced by the
/// candidate's (uploaded first when it is a file).
pub async fn rollout(
    admin: &Admin,
    route: &str,
    candidate: &Component,
    request: api::RolloutRequest,
) -> Result<(), Failure> {
    let client = admin.client()?;
    let request = api::RolloutRequest {
        version: stored_version(&client, candidate).await?,
        ..request
    };
    let path = format!("/v1/routes/{}/rollout", encode(route));
    let body: RolloutStatus = client
        .call(
            "rollout",
            Method::POST,
            &path,
            Some(Payload::json(&request)),
            admin.json,
        )
        .await?;
    if !admin.json {
        print(format!("started a rollout on route {route}\n{}", render(&body)).as_bytes());
    }
    Ok(())
}

/// What a delivery command needs the route to have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    /// A rollout running or paused.
    Rollout,
    /// A shadow.
    Shadow,
}

/// Sends a delivery command's request for `route`. A refusal because the route, its rollout
/// or its shadow does not exist says so with the CLI command that helps (the server's
/// sentence names API calls); any other refusal is the server's.
#[allow(clippy::too_many_arguments)]
async fn call_on<T: serde::de::DeserializeOwned>(
    client: &AdminClient,
    what: &str,
    method: Method,
    path: &str,
    body: Option<Payload>,
    json: bool,
    route: &str,
    needs: Needs,
) -> Result<T, Failure> {
    let reply = client.send(method, path, body).await?;
    if json {
        reply.print();
    }
    if reply.status.is_success() {
        return client.read(&reply);
    }
    if matches!(
        reply.status,
        http::StatusCode::NOT_FOUND | http::StatusCode::CONFLICT
    ) && let Some(hint) = missing(client, route, needs).await
    {
        return Err(Failure::new(
            exit::FAILED,
            format!("{what} refused ({}): {hint}", status_text(reply.status)),
        ));
    }
    Err(reply.refused(what))
}

/// What route `route` lacks of what `needs` asks for, as a sentence naming the CLI command
/// that gives it; `None` if it has it (or its status cannot be read).
async fn missing(client: &AdminClient, route: &str, needs: Needs) -> Option<String> {
    let path = format!("/v1/routes/{}", encode(route));
    let reply = client.send(Method::GET, &path, None).await.ok()?;
    if reply.status == http::StatusCode::NOT_FOUND {
        return Some(format!(
            "there is no route named `{}`; `handoff routes` lists them, `handoff deploy {} FILE.wasm` creates it",
            route.escape_debug(),
            route.escape_debug()
        ));
    }
    let status: api::RouteStatus = serde_json::from_slice(&reply.body).ok()?;
    match needs {
        Needs::Rollout => {
            let live = status
                .rollout
                .as_ref()
                .is_some_and(|r| matches!(r.state.as_str(), "running" | "paused"));
            (!live).then(|| {
                format!(
                    "route `{route}` has no rollout running; start one with `handoff rollout {route} FILE.wasm|VERSION`"
                )
            })
        }
        Needs::Shadow => status.shadow.is_none().then(|| {
            format!(
                "route `{route}` has no shadow; start one with `handoff shadow {route} FILE.wasm|VERSION`"
            )
        }),
    }
}

/// `handoff promote|abort|pause|resume ROUTE`: `action` is the path's last segment.
pub async fn act(admin: &Admin, route: &str, action: &str) -> Result<(), Failure> {
    let client = admin.client()?;
    let path = format!("/v1/routes/{}/rollout/{action}", encode(route));
    let body: RolloutStatus = call_on(
        &client,
        action,
        Method::POST,
        &path,
        None,
        admin.json,
        route,
        Needs::Rollout,
    )
    .await?;
    if !admin.json {
        print(render(&body).as_bytes());
    }
    Ok(())
}

/// `handoff weight ROUTE N`: the candidate's weight in percent.
pub async fn weight(admin: &Admin, route: &str, weight: f64) -> Result<(), Failure> {
    let client = admin.client()?;
    let path = format!("/v1/routes/{}/rollout", encode(route));
    let request = api::WeightRequest { weight };
    let body: RolloutStatus = call_on(
        &client,
        "weight",
        Method::PATCH,
        &path,
        Some(Payload::json(&request)),
        admin.json,
        route,
        Needs::Rollout,
    )
    .await?;
    if !admin.json {
        print(render(&body).as_bytes());
    }
    Ok(())
}

/// `handoff shadow ROUTE [FILE.wasm|VERSION] [--percent N] [--compare-header H] [--off]`.
pub async fn shadow(admin: &Admin, route: &str, change: ShadowChange) -> Result<(), Failure> {
    let client = admin.client()?;
    let json = admin.json;
    let path = format!("/v1/routes/{}/shadow", encode(route));
    let (what, body): (&str, ShadowStatus) = match change {
        ShadowChange::Stop => (
            "stopped the shadow of",
            call_on(
                &client,
                "shadow --off",
                Method::DELETE,
                &path,
                None,
                json,
                route,
                Needs::Shadow,
            )
            .await?,
        ),
        ShadowChange::Show => (
            "the shadow of",
            call_on(
                &client,
                "shadow",
                Method::GET,
                &path,
                None,
                json,
                route,
                Needs::Shadow,
            )
            .await?,
        ),
        ShadowChange::Start(shadow, request) => {
            let request = api::ShadowRequest {
                version: stored_version(&client, &shadow).await?,
                ..request
            };
            let body = client
                .call(
                    "shadow",
                    Method::PUT,
                    &path,
                    Some(Payload::json(&request)),
                    json,
                )
                .await?;
            ("started a shadow on", body)
        }
    };
    if !json {
        let text = format!(
            "{what} route {route}\n{}",
            render_shadow(&body, SystemTime::now())
        );
        print(text.as_bytes());
    }
    Ok(())
}

/// A stored module's full version from `component`: a `.wasm` file to upload, a full digest,
/// or a unique prefix of one among the stored modules.
async fn stored_version(client: &AdminClient, component: &Component) -> Result<String, Failure> {
    let Component { given, sign } = component;
    let path = Path::new(given);
    if given.ends_with(".wasm") || path.is_file() {
        let bytes = read_component(path).await?;
        let uploaded: api::Uploaded = client
            .call(
                "upload",
                Method::POST,
                "/v1/modules",
                Some(signed(bytes, sign.as_deref())?),
                false,
            )
            .await?;
        return Ok(uploaded.version);
    }
    let wanted = given.strip_prefix("sha256:").unwrap_or(given);
    if wanted.len() < MIN_PREFIX || !wanted.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "`{given}` is neither a .wasm file nor a version; give a file, or at least {MIN_PREFIX} hex digits of a stored version (`handoff upload` prints it)"
            ),
        ));
    }
    if wanted.len() == 64 {
        return Ok(format!("sha256:{wanted}"));
    }
    let matches = modules_starting_with(client, wanted).await?;
    match matches.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Failure::new(
            exit::FAILED,
            format!(
                "no stored module's version starts with `{given}`; upload it with `handoff upload FILE.wasm`"
            ),
        )),
        _ => Err(Failure::new(
            exit::USAGE,
            format!(
                "`{given}` matches {} stored modules; give more digits",
                matches.len()
            ),
        )),
    }
}
