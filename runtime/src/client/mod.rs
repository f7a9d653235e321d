//! Thin clients of the admin API for `handoff deploy`, `routes`, `status`, `nodes` ([`nodes`]), `delete`,
//! `versions`, `rollback`, `upload`, `activate` and `kv` ([`kv`]) (and, in [`delivery`], the
//! rollout and shadow commands): one
//! HTTP/1.1 request per command over plain TCP, the answer printed as a table or, with `--json`,
//! exactly as the server sent it.
//!
//! They decide nothing the server decides: route names, prefixes, settings and components are
//! validated by the server, and its problem document's `detail` sentence is printed as it is.
//! Every failure is one line and one of the [`exit`] codes.
//!
//! They take plain values ([`Admin`], [`Deploy`], [`RollbackTo`], the [`api`] request types),
//! not the command line's argument structs: [`crate::cli`] maps its flags into these at its
//! edge, so a program can run a command without clap.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use http::Method;
use serde::de::DeserializeOwned;

use crate::api;
use crate::exit::{self, Failure};

mod admin;
pub mod delivery;
pub mod events;
pub mod kv;
pub mod nodes;
mod render;
mod render_delivery;
mod watch;

pub use admin::{Admin, AdminClient, Payload, Reply};
use admin::{encode, modules_starting_with, print, read_component, signed, version_starts_with};

use render::short;

/// A deploy (`PUT /v1/routes/{name}`): the component, where it goes and what it sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deploy {
    /// The route to create or replace.
    pub route: String,
    /// The component's `.wasm` file.
    pub file: PathBuf,
    /// The private key file to sign the upload with (from `handoff keygen`).
    pub sign: Option<PathBuf>,
    /// The path prefix (default: the route's current one; `/ROUTE` for a new route).
    pub prefix: Option<String>,
    /// A name for this version.
    pub label: Option<String>,
    /// A note kept in the route's history.
    pub message: Option<String>,
    /// The route's settings this deploy sets, as the admin API's `name=value` query pairs, in
    /// order: `config`, `allow-outbound`, `dir`, `kv` (`crate::settings::patch::KEYS`) and
    /// each limit of the settings table by its name. Sent as given: the server parses them.
    pub settings: Vec<(String, String)>,
}

/// Where a rollback goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RollbackTo {
    /// The version active before the current one.
    #[default]
    Previous,
    /// A version: a full digest or a unique prefix of one (from the route's history, else the
    /// stored modules).
    Version(String),
    /// The most recent version deployed with this label.
    Label(String),
}

/// `handoff deploy ROUTE FILE`.
pub async fn deploy(admin: &Admin, deploy: Deploy) -> Result<(), Failure> {
    let client = admin.client()?;
    let bytes = read_component(&deploy.file).await?;
    let mut query = Vec::new();
    if let Some(prefix) = &deploy.prefix {
        query.push(format!("prefix={}", encode(prefix)));
    }
    for (key, value) in &deploy.settings {
        query.push(format!("{}={}", encode(key), encode(value)));
    }
    if let Some(label) = &deploy.label {
        query.push(format!("label={}", encode(label)));
    }
    if let Some(message) = &deploy.message {
        query.push(format!("message={}", encode(message)));
    }
    let mut path = format!("/v1/routes/{}", encode(&deploy.route));
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    let body: api::Deployed = client
        .call(
            "deploy",
            Method::PUT,
            &path,
            Some(signed(bytes, deploy.sign.as_deref())?),
            admin.json,
        )
        .await?;
    told(&body, admin.json, "the deploy")
}

/// `handoff routes`.
pub async fn routes(admin: &Admin) -> Result<(), Failure> {
    show(
        admin,
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
    admin: &Admin,
    what: &str,
    path: String,
    render: impl Fn(&T) -> String,
) -> Result<(), Failure> {
    let client = admin.client()?;
    let body = client
        .call(what, Method::GET, &path, None, admin.json)
        .await?;
    if !admin.json {
        print(render(&body).as_bytes());
    }
    Ok(())
}

/// `handoff status ROUTE [--watch]`: with `watch`, follows the route's rollout until it ends
/// (`client/watch.rs`).
pub async fn status(admin: &Admin, route: &str, watch: bool) -> Result<(), Failure> {
    if watch {
        return watch::watch(admin.client()?, route).await;
    }
    let path = format!("/v1/routes/{}", encode(route));
    show(admin, "status", path, |body: &api::RouteStatus| {
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
pub async fn delete(admin: &Admin, route: &str) -> Result<(), Failure> {
    let client = admin.client()?;
    let path = format!("/v1/routes/{}", encode(route));
    let body: api::Deleted = client
        .call("delete", Method::DELETE, &path, None, admin.json)
        .await?;
    if !admin.json {
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
pub async fn versions(admin: &Admin, route: &str) -> Result<(), Failure> {
    let path = format!("/v1/routes/{}/versions", encode(route));
    show(admin, "versions", path, |body: &api::History| {
        render::history(body, SystemTime::now())
    })
    .await
}

/// `handoff rollback ROUTE [VERSION] [--label L]`.
pub async fn rollback(admin: &Admin, route: &str, to: RollbackTo) -> Result<(), Failure> {
    let client = admin.client()?;
    let target = match to {
        RollbackTo::Version(version) => api::Target {
            version: Some(resolve_version(&client, route, &version).await?),
            ..api::Target::default()
        },
        RollbackTo::Label(label) => api::Target {
            label: Some(label),
            ..api::Target::default()
        },
        RollbackTo::Previous => api::Target::default(),
    };
    let path = format!("/v1/routes/{}/rollback", encode(route));
    let body: api::Deployed = client
        .call(
            "rollback",
            Method::POST,
            &path,
            Some(Payload::json(&target)),
            admin.json,
        )
        .await?;
    told(&body, admin.json, "the rollback")
}

/// `handoff upload FILE`, signed with the private key file `sign` when given.
pub async fn upload(admin: &Admin, file: &Path, sign: Option<&Path>) -> Result<(), Failure> {
    let client = admin.client()?;
    let bytes = read_component(file).await?;
    let body: api::Uploaded = client
        .call(
            "upload",
            Method::POST,
            "/v1/modules",
            Some(signed(bytes, sign)?),
            admin.json,
        )
        .await?;
    if !admin.json {
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

/// `handoff activate ROUTE VERSION [--prefix P]`: `version` is a full digest or a unique
/// prefix of one.
pub async fn activate(
    admin: &Admin,
    route: &str,
    version: &str,
    prefix: Option<String>,
) -> Result<(), Failure> {
    let client = admin.client()?;
    let digest = if version.starts_with("sha256:") {
        version.to_owned()
    } else if version.len() == 64 {
        format!("sha256:{version}")
    } else {
        // A short version: from the route's history, else among the stored modules (one
        // `handoff upload` stored for this activation).
        resolve_version(&client, route, version).await?
    };
    let target = api::Target {
        version: Some(digest),
        prefix,
        label: None,
    };
    let path = format!("/v1/routes/{}/activate", encode(route));
    let body: api::Deployed = client
        .call(
            "activate",
            Method::POST,
            &path,
            Some(Payload::json(&target)),
            admin.json,
        )
        .await?;
    told(&body, admin.json, "the activation")
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

/// `handoff keygen FILE [--name NAME]`: the private key goes to `file` (which must not exist),
/// the public key's `[[key]]` entry, named `name`, to stdout.
pub fn keygen(file: &Path, name: &str) -> Result<(), Failure> {
    use std::io::Write as _;
    let (private, public) =
        crate::signing::generate().map_err(|e| Failure::new(exit::FAILED, e))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut written = options.open(file).map_err(|e| {
        Failure::new(
            exit::LOCAL,
            format!("cannot create the key file {}: {e}", file.display()),
        )
    })?;
    written
        .write_all(format!("{private}\n").as_bytes())
        .map_err(|e| Failure::new(exit::LOCAL, format!("writing {}: {e}", file.display())))?;
    print(
        format!(
            "private key written to {} (keep it secret)\nadd to the server's --signing-keys file:\n\n[[key]]\nname = \"{}\"\npublic = \"{public}\"\n",
            file.display(),
            name
        )
        .as_bytes(),
    );
    Ok(())
}
