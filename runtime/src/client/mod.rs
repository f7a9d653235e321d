//! Thin clients of the admin API for `handoff deploy`, `routes`, `status`, `nodes` ([`nodes`]), `delete`,
//! `versions`, `rollback`, `upload`, `activate` and `kv` ([`kv`]) (and, in [`delivery`], the
//! rollout and shadow commands): one
//! HTTP/1.1 request per command over plain TCP, the answer printed as a table or, with `--json`,
//! exactly as the server sent it.
//!
//! They decide nothing the server decides: route names, prefixes, settings and components are
//! validated by the server, and its problem document's `detail` sentence is printed as it is.
//! Every failure is one line and one of the [`exit`] codes.

use std::time::SystemTime;

use http::Method;
use serde::de::DeserializeOwned;

use crate::api;
use crate::cli::{
    ActivateArgs, AdminArgs, DeployArgs, Failure, RollbackArgs, RouteArgs, RoutesArgs, StatusArgs,
    UploadArgs, exit,
};

mod admin;
pub mod delivery;
pub mod events;
pub mod kv;
pub mod nodes;
pub mod render;
pub mod render_delivery;
pub mod watch;

pub use admin::{AdminClient, Payload, Reply};
use admin::{encode, modules_starting_with, print, read_component, signed, version_starts_with};

pub use render::short;

/// `handoff deploy ROUTE FILE`.
pub async fn deploy(args: DeployArgs) -> Result<(), Failure> {
    let client = AdminClient::new(&args.admin.admin)?;
    let bytes = read_component(&args.file).await?;
    let mut query = Vec::new();
    if let Some(prefix) = &args.prefix {
        query.push(format!("prefix={}", encode(prefix)));
    }
    for setting in &args.config {
        query.push(format!("config={}", encode(setting)));
    }
    if let Some(dir) = &args.dir {
        query.push(format!("dir={}", encode(dir)));
    }
    for rule in &args.allow_outbound {
        query.push(format!("allow-outbound={}", encode(rule)));
    }
    for bucket in &args.kv {
        query.push(format!("kv={}", encode(bucket)));
    }
    if let Some(label) = &args.label {
        query.push(format!("label={}", encode(label)));
    }
    if let Some(message) = &args.message {
        query.push(format!("message={}", encode(message)));
    }
    for (key, value) in &args.limits.0 {
        query.push(format!("{key}={}", encode(value)));
    }
    let mut path = format!("/v1/routes/{}", encode(&args.route));
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    let json = args.admin.json;
    let body: api::Deployed = client
        .call(
            "deploy",
            Method::PUT,
            &path,
            Some(signed(bytes, &args.sign)?),
            json,
        )
        .await?;
    told(&body, json, "the deploy")
}

/// `handoff routes`.
pub async fn routes(args: RoutesArgs) -> Result<(), Failure> {
    show(
        args.admin,
        "listing the routes",
        "/v1/routes".into(),
        render::routes,
    )
    .await
}

/// Prints a change's answer (unless `--json` printed it), naming the nodes of a cluster that
/// did not activate it: a partial change fails.
fn told(body: &api::Deployed, json: bool, what: &str) -> Result<(), Failure> {
    if !json {
        let mut text = render::deploy(body);
        if let Some(cluster) = &body.cluster {
            text.push_str(&nodes::convergence(cluster));
        }
        print(text.as_bytes());
    }
    nodes::partial(what, body.cluster.as_ref())
}

/// GETs `path` and prints the answer: as JSON with `--json`, else through `render`.
async fn show<T: DeserializeOwned>(
    args: AdminArgs,
    what: &str,
    path: String,
    render: impl Fn(&T) -> String,
) -> Result<(), Failure> {
    let AdminArgs { admin, json } = args;
    let client = AdminClient::new(&admin)?;
    let body = client.call(what, Method::GET, &path, None, json).await?;
    if !json {
        print(render(&body).as_bytes());
    }
    Ok(())
}

/// `handoff status ROUTE [--watch]`.
pub async fn status(args: StatusArgs) -> Result<(), Failure> {
    if args.watch {
        return watch::watch(AdminClient::new(&args.admin.admin)?, &args.route).await;
    }
    let path = format!("/v1/routes/{}", encode(&args.route));
    show(args.admin, "status", path, |body: &api::RouteStatus| {
        let now = SystemTime::now();
        let mut text = render::status(body, now);
        if let Some(rollout) = &body.rollout {
            text.push('\n');
            text.push_str(&render_delivery::render(rollout));
        }
        if let Some(shadow) = &body.shadow {
            text.push('\n');
            text.push_str(&render_delivery::render_shadow(shadow, now));
        }
        text
    })
    .await
}

/// `handoff delete ROUTE`.
pub async fn delete(args: RouteArgs) -> Result<(), Failure> {
    let AdminArgs { admin, json } = args.admin;
    let client = AdminClient::new(&admin)?;
    let path = format!("/v1/routes/{}", encode(&args.route));
    let body: api::Deleted = client
        .call("delete", Method::DELETE, &path, None, json)
        .await?;
    if !json {
        let in_flight = match body.in_flight {
            0 => "nothing in flight".to_owned(),
            1 => "1 request in flight finishes on it".to_owned(),
            n => format!("{n} requests in flight finish on it"),
        };
        let text = format!(
            "deleted route {} (version {}; {in_flight})\n",
            body.route,
            body.version.as_deref().map_or("none", short),
        );
        print(text.as_bytes());
    }
    nodes::partial("the delete", body.cluster.as_ref())
}

/// `handoff versions ROUTE`.
pub async fn versions(args: RouteArgs) -> Result<(), Failure> {
    let path = format!("/v1/routes/{}/versions", encode(&args.route));
    show(args.admin, "versions", path, |body: &api::History| {
        render::history(body, SystemTime::now())
    })
    .await
}

/// `handoff rollback ROUTE [VERSION] [--label L]`.
pub async fn rollback(args: RollbackArgs) -> Result<(), Failure> {
    let AdminArgs { admin, json } = args.admin;
    let client = AdminClient::new(&admin)?;
    let target = match (&args.version, &args.label) {
        (Some(version), _) => api::Target {
            version: Some(resolve_version(&client, &args.route, version).await?),
            ..api::Target::default()
        },
        (None, Some(label)) => api::Target {
            label: Some(label.clone()),
            ..api::Target::default()
        },
        (None, None) => api::Target::default(),
    };
    let path = format!("/v1/routes/{}/rollback", encode(&args.route));
    let body: api::Deployed = client
        .call(
            "rollback",
            Method::POST,
            &path,
            Some(Payload::json(&target)),
            json,
        )
        .await?;
    told(&body, json, "the rollback")
}

/// `handoff upload FILE`.
pub async fn upload(args: UploadArgs) -> Result<(), Failure> {
    let AdminArgs { admin, json } = args.admin;
    let client = AdminClient::new(&admin)?;
    let bytes = read_component(&args.file).await?;
    let body: api::Uploaded = client
        .call(
            "upload",
            Method::POST,
            "/v1/modules",
            Some(signed(bytes, &args.sign)?),
            json,
        )
        .await?;
    if !json {
        let text = format!(
            "uploaded {} ({} bytes); serve it with `handoff activate ROUTE {}`\n",
            body.version,
            body.size_bytes,
            short(&body.version),
        );
        print(text.as_bytes());
    }
    Ok(())
}

/// `handoff activate ROUTE VERSION`.
pub async fn activate(args: ActivateArgs) -> Result<(), Failure> {
    let AdminArgs { admin, json } = args.admin;
    let client = AdminClient::new(&admin)?;
    let digest = if args.version.starts_with("sha256:") {
        args.version.clone()
    } else if args.version.len() == 64 {
        format!("sha256:{}", args.version)
    } else {
        // A short version: from the route's history, else among the stored modules (one
        // `handoff upload` stored for this activation).
        resolve_version(&client, &args.route, &args.version).await?
    };
    let target = api::Target {
        version: Some(digest),
        prefix: args.prefix.clone(),
        label: None,
    };
    let path = format!("/v1/routes/{}/activate", encode(&args.route));
    let body: api::Deployed = client
        .call(
            "activate",
            Method::POST,
            &path,
            Some(Payload::json(&target)),
            json,
        )
        .await?;
    told(&body, json, "the activation")
}

/// A full digest from a full one or from a unique prefix of one in the route's history or,
/// when the history has none, among the stored modules.
async fn resolve_version(
    client: &AdminClient,
    route: &str,
    given: &str,
) -> Result<String, Failure> {
    let wanted = given.strip_prefix("sha256:").unwrap_or(given);
    if wanted.len() == 64 {
        return Ok(format!("sha256:{wanted}"));
    }
    // A route that does not exist yet has no history: the modules decide.
    let path = format!("/v1/routes/{}/versions", encode(route));
    let history: Option<api::History> = client
        .call("versions", Method::GET, &path, None, false)
        .await
        .ok();
    let mut matches: Vec<String> = history
        .iter()
        .flat_map(|h| h.versions.iter().map(|e| e.version.as_str()))
        .filter(|v| version_starts_with(v, wanted))
        .map(str::to_owned)
        .collect();
    if matches.is_empty() {
        matches = modules_starting_with(client, wanted).await?;
    }
    matches.sort_unstable();
    matches.dedup();
    match matches.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Failure::new(
            exit::FAILED,
            format!(
                "no version starting with `{given}` is in route {route}'s history or among the stored modules; see `handoff versions {route}`, or store it with `handoff upload FILE.wasm`"
            ),
        )),
        _ => Err(Failure::new(
            exit::USAGE,
            format!(
                "`{given}` matches {} versions of route {route}; give more digits",
                matches.len()
            ),
        )),
    }
}

/// `handoff keygen FILE`.
pub fn keygen(args: crate::cli::KeygenArgs) -> Result<(), Failure> {
    use std::io::Write as _;
    let (private, public) =
        crate::signing::generate().map_err(|e| Failure::new(exit::FAILED, e))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&args.file).map_err(|e| {
        Failure::new(
            exit::LOCAL,
            format!("cannot create the key file {}: {e}", args.file.display()),
        )
    })?;
    file.write_all(format!("{private}\n").as_bytes())
        .map_err(|e| Failure::new(exit::LOCAL, format!("writing {}: {e}", args.file.display())))?;
    print(
        format!(
            "private key written to {} (keep it secret)\nadd to the server's --signing-keys file:\n\n[[key]]\nname = \"{}\"\npublic = \"{public}\"\n",
            args.file.display(),
            args.name
        )
        .as_bytes(),
    );
    Ok(())
}
