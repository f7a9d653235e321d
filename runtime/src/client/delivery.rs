//! The progressive-delivery commands: `handoff rollout`, `promote`, `abort`, `pause`,
//! `resume`, `weight` and `shadow` (their answers print through `render_delivery`).
//!
//! A candidate or shadow given as a `.wasm` file is uploaded first (`POST /v1/modules`); one
//! given as a version is a full digest or a unique prefix of at least 8 hex digits among the
//! stored modules. The server decides everything else.

use std::path::Path;
use std::time::SystemTime;

use http::Method;

use super::admin::{
    AdminClient, Payload, encode, modules_starting_with, print, read_component, signed, status_text,
};
use super::render_delivery::{render, render_shadow};
use crate::api::{self, RolloutStatus, ShadowStatus};
use crate::cli::{AdminArgs, Failure, RolloutArgs, RouteArgs, ShadowArgs, WeightArgs, exit};

/// The fewest hex digits a version prefix may have.
const MIN_PREFIX: usize = 8;

/// `handoff rollout ROUTE FILE.wasm|VERSION [...]`.
pub async fn rollout(args: RolloutArgs) -> Result<(), Failure> {
    let AdminArgs { admin, json } = &args.admin;
    let client = AdminClient::new(admin)?;
    let version = stored_version(&client, &args.candidate, &args.sign).await?;
    let request = api::RolloutRequest {
        version,
        steps: (!args.steps.is_empty()).then(|| args.steps.clone()),
        step_time: args.step_time.clone(),
        step_requests: args.step_requests,
        sticky: args.sticky.clone(),
        max_error_rate: args.max_error_rate,
        max_p99_ratio: args.max_p99_ratio,
        min_requests: args.min_requests,
        manual: args.manual.then_some(true),
        waves: args
            .waves
            .as_deref()
            .map(|waves| match waves.parse::<usize>() {
                Ok(size) => api::Waves::Size(size),
                Err(_) => api::Waves::Nodes(waves.split(',').map(str::to_owned).collect()),
            }),
    };
    let path = format!("/v1/routes/{}/rollout", encode(&args.route));
    let body: RolloutStatus = client
        .call(
            "rollout",
            Method::POST,
            &path,
            Some(Payload::json(&request)),
            *json,
        )
        .await?;
    if !json {
        print(
            format!(
                "started a rollout on route {}\n{}",
                args.route,
                render(&body)
            )
            .as_bytes(),
        );
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
pub async fn act(args: RouteArgs, action: &str) -> Result<(), Failure> {
    let AdminArgs { admin, json } = args.admin;
    let client = AdminClient::new(&admin)?;
    let path = format!("/v1/routes/{}/rollout/{action}", encode(&args.route));
    let body: RolloutStatus = call_on(
        &client,
        action,
        Method::POST,
        &path,
        None,
        json,
        &args.route,
        Needs::Rollout,
    )
    .await?;
    if !json {
        print(render(&body).as_bytes());
    }
    Ok(())
}

/// `handoff weight ROUTE N`.
pub async fn weight(args: WeightArgs) -> Result<(), Failure> {
    let AdminArgs { admin, json } = args.admin;
    let client = AdminClient::new(&admin)?;
    let path = format!("/v1/routes/{}/rollout", encode(&args.route));
    let request = api::WeightRequest {
        weight: args.weight,
    };
    let body: RolloutStatus = call_on(
        &client,
        "weight",
        Method::PATCH,
        &path,
        Some(Payload::json(&request)),
        json,
        &args.route,
        Needs::Rollout,
    )
    .await?;
    if !json {
        print(render(&body).as_bytes());
    }
    Ok(())
}

/// `handoff shadow ROUTE [FILE.wasm|VERSION] [--percent N] [--compare-header H] [--off]`.
pub async fn shadow(args: ShadowArgs) -> Result<(), Failure> {
    let AdminArgs { admin, json } = &args.admin;
    let client = AdminClient::new(admin)?;
    let path = format!("/v1/routes/{}/shadow", encode(&args.route));
    let (what, body): (&str, ShadowStatus) = match &args.shadow {
        _ if args.off => (
            "stopped the shadow of",
            call_on(
                &client,
                "shadow --off",
                Method::DELETE,
                &path,
                None,
                *json,
                &args.route,
                Needs::Shadow,
            )
            .await?,
        ),
        None => (
            "the shadow of",
            call_on(
                &client,
                "shadow",
                Method::GET,
                &path,
                None,
                *json,
                &args.route,
                Needs::Shadow,
            )
            .await?,
        ),
        Some(given) => {
            let request = api::ShadowRequest {
                version: stored_version(&client, given, &args.sign).await?,
                percent: args.percent,
                compare_headers: (!args.compare_headers.is_empty())
                    .then(|| args.compare_headers.clone()),
                allow_outbound: args.allow_outbound.then_some(true),
            };
            let body = client
                .call(
                    "shadow",
                    Method::PUT,
                    &path,
                    Some(Payload::json(&request)),
                    *json,
                )
                .await?;
            ("started a shadow on", body)
        }
    };
    if !json {
        let text = format!(
            "{what} route {}\n{}",
            args.route,
            render_shadow(&body, SystemTime::now())
        );
        print(text.as_bytes());
    }
    Ok(())
}

/// A stored module's full version from `given`: a `.wasm` file to upload, a full digest, or a
/// unique prefix of one among the stored modules.
async fn stored_version(
    client: &AdminClient,
    given: &str,
    sign: &Option<std::path::PathBuf>,
) -> Result<String, Failure> {
    let path = Path::new(given);
    if given.ends_with(".wasm") || path.is_file() {
        let bytes = read_component(path).await?;
        let uploaded: api::Uploaded = client
            .call(
                "upload",
                Method::POST,
                "/v1/modules",
                Some(signed(bytes, sign)?),
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
