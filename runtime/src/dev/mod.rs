//! `handoff dev`: the local loop. Builds the guest crate(s) in a directory, serves them from an
//! in-process server, and on every change to their sources rebuilds them and deploys what
//! changed through the same [`deploy::deploy`] the admin API uses, so requests in flight finish
//! on the version they started on. A build that fails prints the compiler's output and leaves
//! the last good version serving.
//!
//! It watches by polling modification times (no platform file-watch API, no dependency): each
//! guest's `Cargo.toml`, `build.rs`, `src/` and `wit/`, the same of its path dependencies (the
//! guest SDK), and the workspace's `Cargo.toml`. It never watches the target directory, never
//! holds anything across a build but the route table's own versions, and never deploys a
//! component whose bytes did not change.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

mod project;

use project::{Fingerprint, Guest, Project, build, describe_changes};

use crate::cli::DevArgs;
use crate::deploy::{self, DeployRequest};
use crate::digest::Digest;
use crate::exit::{self, Failure};
use crate::names::RouteName;
use crate::runtime::Runtime;
use crate::server::Server;

/// How often the sources are checked for changes.
const POLL: Duration = Duration::from_millis(250);
/// How long the sources must stay unchanged before a build starts (an editor's save, a
/// `git checkout`, a formatter: one build, not one per file).
const SETTLE: Duration = Duration::from_millis(300);
/// Runs `handoff dev` until `shutdown` resolves, then shuts the server down gracefully.
pub async fn run(args: DevArgs, shutdown: impl Future<Output = ()>) -> Result<(), Failure> {
    let config = args
        .server
        .into_config_with(true)
        .map_err(|e| Failure::new(exit::CONFIG, e))?;
    let dir = args.dir;
    if !dir.is_dir() {
        return Err(Failure::new(
            exit::LOCAL,
            format!("{} is not a directory", dir.display()),
        ));
    }
    let project = Project::discover(&dir)
        .await
        .map_err(|e| Failure::new(exit::LOCAL, e))?;
    let takeover = config.takeover;
    tokio::pin!(shutdown);
    // As `serve --takeover`: a signal while taking over calls the takeover off.
    let server = tokio::select! {
        started = Server::start(config) => started.map_err(|e| Failure::new(exit::FAILED, format!("{e:#}")))?,
        () = &mut shutdown, if takeover => return Err(Failure::new(
            exit::FAILED,
            "the takeover was called off by a signal before this process was ready; the running server serves on",
        )),
    };
    tokio::select! {
        () = session(&server, &dir, project) => {}
        () = &mut shutdown => say("shutting down: finishing the requests in flight"),
        () = server.handed_over() => say("a new process took over (`--takeover`): finishing the requests in flight here"),
    }
    server.shutdown().await;
    Ok(())
}

/// The first build and deploy, the ready line, then rebuild-on-change forever.
async fn session(server: &Server, dir: &Path, mut project: Project) {
    let rt = server.runtime();
    let mut seen = project.fingerprint().await;
    build_and_deploy(rt, &project).await;
    say(&server.ready_line());
    for guest in &project.guests {
        say(&route_line(server, guest));
    }
    loop {
        tokio::time::sleep(POLL).await;
        let now = project.fingerprint().await;
        if now == seen {
            continue;
        }
        let settled = settle(&project, now).await;
        say(&describe_changes(&seen, &settled, &project.root));
        seen = settled;
        // The manifests may have changed: which guests there are, what they are called.
        match Project::discover(dir).await {
            Ok(fresh) => {
                for guest in &fresh.guests {
                    if !project.guests.iter().any(|g| g.route == guest.route) {
                        say(&route_line(server, guest));
                    }
                }
                if fresh.watched != project.watched {
                    seen = fresh.fingerprint().await;
                }
                project = fresh;
            }
            Err(error) => {
                say(&error);
                say(&format!("build failed; {}", serving(rt, &project)));
                continue;
            }
        }
        build_and_deploy(rt, &project).await;
    }
}

/// Waits until the sources stop changing for [`SETTLE`]; returns their final fingerprint.
async fn settle(project: &Project, mut last: Fingerprint) -> Fingerprint {
    let mut changed_at = Instant::now();
    loop {
        tokio::time::sleep(SETTLE / 3).await;
        let now = project.fingerprint().await;
        if now != last {
            last = now;
            changed_at = Instant::now();
        } else if changed_at.elapsed() >= SETTLE {
            return last;
        }
    }
}

/// Builds every guest; on success deploys each whose component changed.
async fn build_and_deploy(rt: &Arc<Runtime>, project: &Project) {
    say("building...");
    let started = Instant::now();
    if let Err(error) = build(project).await {
        say(&error);
        say(&format!("build failed; {}", serving(rt, project)));
        return;
    }
    say(&format!(
        "built in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    let mut unchanged = 0;
    for guest in &project.guests {
        let bytes = match tokio::fs::read(&guest.artifact).await {
            Ok(bytes) => Bytes::from(bytes),
            Err(error) => {
                say(&format!(
                    "cannot read {}'s component {}: {error}",
                    guest.route.as_str(),
                    guest.artifact.display()
                ));
                continue;
            }
        };
        if active(rt, &guest.route).is_some_and(|d| d == Digest::of(&bytes)) {
            unchanged += 1;
            continue;
        }
        // As an admin change does: hold the handover gate while deploying, and deploy nothing
        // once a process taking over from this one has the state (it builds and deploys the
        // same sources itself).
        let Some(_gate) = rt.handover.hold().await else {
            say(&format!(
                "not deploying {}: a new process is taking over from this one",
                guest.route.as_str()
            ));
            return;
        };
        let started = Instant::now();
        let request = DeployRequest {
            name: guest.route.clone(),
            prefix: None,
            bytes,
            signature: None,
            by: "handoff dev".to_owned(),
            label: None,
            message: None,
            settings: Default::default(),
            uploaded: None,
        };
        match deploy::deploy(rt, request).await {
            Ok(done) => {
                say(&format!(
                    "deployed {} {} in {} ms",
                    guest.route.as_str(),
                    done.route.stable().map_or("", |v| v.digest.short()),
                    started.elapsed().as_millis()
                ));
            }
            Err(error) => say(&format!(
                "deploy of {} refused: {error}; {}",
                guest.route.as_str(),
                serving_route(rt, &guest.route)
            )),
        }
    }
    if unchanged == project.guests.len() {
        say("no component changed");
    }
}

/// Runs cargo; its output goes straight to the terminal. `Err` says why it failed.
fn active(rt: &Runtime, route: &RouteName) -> Option<Digest> {
    rt.routes
        .snapshot()
        .get(route)
        .and_then(|r| r.stable().map(|v| v.digest.clone()))
}

/// "still serving NAME VERSION, ..." for the project's guests.
fn serving(rt: &Runtime, project: &Project) -> String {
    let live: Vec<String> = project
        .guests
        .iter()
        .filter_map(|g| active(rt, &g.route).map(|d| format!("{} {}", g.route.as_str(), d.short())))
        .collect();
    if live.is_empty() {
        "nothing is serving yet; fix the error and save".to_owned()
    } else {
        format!("still serving {}", live.join(", "))
    }
}

fn serving_route(rt: &Runtime, route: &RouteName) -> String {
    match active(rt, route) {
        Some(digest) => format!("still serving {} {}", route.as_str(), digest.short()),
        None => format!("{} is not serving yet", route.as_str()),
    }
}

fn route_line(server: &Server, guest: &Guest) -> String {
    let prefix = server
        .runtime()
        .routes
        .snapshot()
        .get(&guest.route)
        .map_or_else(
            || format!("/{}", guest.route.as_str()),
            |r| r.prefix.as_str().to_owned(),
        );
    format!(
        "route {} -> http://{}{prefix}",
        guest.route.as_str(),
        server.data_addr()
    )
}

/// One line on stdout, for a person; a closed stdout is ignored.
fn say(line: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}
