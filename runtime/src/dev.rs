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

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde::Deserialize;

use crate::cli::{DevArgs, Failure, exit};
use crate::deploy::{self, DeployRequest};
use crate::route::RouteName;
use crate::runtime::Runtime;
use crate::server::Server;
use crate::version::Digest;

/// How often the sources are checked for changes.
const POLL: Duration = Duration::from_millis(250);
/// How long the sources must stay unchanged before a build starts (an editor's save, a
/// `git checkout`, a formatter: one build, not one per file).
const SETTLE: Duration = Duration::from_millis(300);
/// The target guests are built for.
const TARGET: &str = "wasm32-wasip2";
/// Environment that is for the host build, never for the nested wasm one (clippy, coverage).
const HOST_ONLY_ENV: [&str; 4] = [
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTFLAGS",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_WRAPPER",
];

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
    let server = Server::start(config)
        .await
        .map_err(|e| Failure::new(exit::FAILED, format!("{e:#}")))?;
    tokio::select! {
        () = session(&server, &dir, project) => {}
        () = shutdown => say("shutting down: finishing the requests in flight"),
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

/// "src/lib.rs changed" (paths relative to `root` where they can be, at most three named).
fn describe_changes(before: &Fingerprint, after: &Fingerprint, root: &Path) -> String {
    let removed = before.keys().filter(|path| !after.contains_key(*path));
    let changed: Vec<&PathBuf> = after
        .iter()
        .filter(|(path, stamp)| before.get(*path) != Some(stamp))
        .map(|(path, _)| path)
        .chain(removed)
        .collect();
    let mut names: Vec<String> = changed
        .iter()
        .take(3)
        .map(|path| {
            path.strip_prefix(root)
                .unwrap_or(path)
                .display()
                .to_string()
        })
        .collect();
    if changed.len() > names.len() {
        names.push(format!("{} more", changed.len() - names.len()));
    }
    format!("{} changed", names.join(", "))
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
        let started = Instant::now();
        let request = DeployRequest {
            name: guest.route.clone(),
            prefix: None,
            config: None,
            bytes,
            signature: None,
            by: "handoff dev".to_owned(),
            label: None,
            message: None,
            limits: Default::default(),
            outbound: None,
            dir: None,
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
async fn build(project: &Project) -> Result<(), String> {
    let mut command = cargo(&project.dir);
    command.args(["build", "--release", "--target", TARGET]);
    for guest in &project.guests {
        command.arg("--package").arg(&guest.package);
    }
    let status = command
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo build exited with {status}"))
    }
}

/// A cargo command in `dir` without the host-only environment.
fn cargo(dir: &Path) -> tokio::process::Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = tokio::process::Command::new(program);
    command.current_dir(dir);
    for var in HOST_ONLY_ENV {
        command.env_remove(var);
    }
    command
}

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

/// The guests of a directory and the files that make them.
#[derive(Debug)]
struct Project {
    /// Where cargo runs (the directory `dev` was given).
    dir: PathBuf,
    /// The same, absolute: changed paths are shown relative to it.
    root: PathBuf,
    guests: Vec<Guest>,
    /// Files and directories whose changes trigger a build.
    watched: Arc<Vec<PathBuf>>,
    /// Cargo's target directory, never watched.
    target_dir: Arc<PathBuf>,
}

/// One guest crate: a `cdylib` package, served as route `/{package}`.
#[derive(Debug)]
struct Guest {
    package: String,
    route: RouteName,
    artifact: PathBuf,
}

/// Path, modification time and length of every watched file.
type Fingerprint = BTreeMap<PathBuf, (Option<SystemTime>, u64)>;

/// The parts of `cargo metadata --format-version 1 --no-deps` used here.
#[derive(Deserialize)]
struct Metadata {
    packages: Vec<Package>,
    target_directory: PathBuf,
    workspace_root: PathBuf,
}

#[derive(Deserialize)]
struct Package {
    name: String,
    manifest_path: PathBuf,
    targets: Vec<Target>,
    dependencies: Vec<Dependency>,
}

#[derive(Deserialize)]
struct Target {
    name: String,
    crate_types: Vec<String>,
}

#[derive(Deserialize)]
struct Dependency {
    path: Option<PathBuf>,
}

impl Project {
    /// Asks cargo what `dir` holds: the workspace's `cdylib` members if `dir` is a workspace
    /// root, the one package if it is a member. `Err` is a sentence.
    async fn discover(dir: &Path) -> Result<Self, String> {
        let output = cargo(dir)
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "cargo cannot read the crate in {}: {}",
                dir.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        let metadata: Metadata = serde_json::from_slice(&output.stdout)
            .map_err(|e| format!("cargo metadata printed something unexpected: {e}"))?;
        let here = dir
            .canonicalize()
            .map_err(|e| format!("cannot resolve {}: {e}", dir.display()))?;
        let at_root = metadata
            .workspace_root
            .canonicalize()
            .is_ok_and(|root| root == here);
        let mut packages: Vec<&Package> = metadata
            .packages
            .iter()
            .filter(|p| at_root || p.manifest_path.parent() == Some(here.as_path()))
            .collect();
        packages.retain(|p| p.targets.iter().any(Target::is_cdylib));
        if packages.is_empty() {
            return Err(format!(
                "there is no guest crate in {}: a guest is a library with \
                 `crate-type = [\"cdylib\"]` (`handoff new NAME` creates one)",
                dir.display()
            ));
        }
        let release = metadata.target_directory.join(TARGET).join("release");
        let mut guests = Vec::new();
        let mut watched = vec![metadata.workspace_root.join("Cargo.toml")];
        for package in packages {
            let route = RouteName::parse(&package.name).map_err(|e| {
                format!(
                    "package `{}` cannot be served as a route: {e}",
                    package.name
                )
            })?;
            let lib = package
                .targets
                .iter()
                .find(|t| t.is_cdylib())
                .expect("filtered on cdylib");
            guests.push(Guest {
                package: package.name.clone(),
                route,
                artifact: release.join(format!("{}.wasm", lib.name.replace('-', "_"))),
            });
            let dirs = package.manifest_path.parent().into_iter().chain(
                package
                    .dependencies
                    .iter()
                    .filter_map(|d| d.path.as_deref()),
            );
            for crate_dir in dirs {
                for part in ["Cargo.toml", "build.rs", "src", "wit"] {
                    watched.push(crate_dir.join(part));
                }
            }
        }
        watched.sort();
        watched.dedup();
        Ok(Self {
            dir: dir.to_owned(),
            root: here,
            guests,
            watched: Arc::new(watched),
            target_dir: Arc::new(metadata.target_directory),
        })
    }

    /// The watched files as they are now (read on the blocking pool).
    async fn fingerprint(&self) -> Fingerprint {
        let watched = self.watched.clone();
        let target_dir = self.target_dir.clone();
        tokio::task::spawn_blocking(move || {
            let mut files = Fingerprint::new();
            for path in watched.iter() {
                scan(path, &target_dir, &mut files);
            }
            files
        })
        .await
        .unwrap_or_default()
    }
}

impl Target {
    fn is_cdylib(&self) -> bool {
        self.crate_types.iter().any(|t| t == "cdylib")
    }
}

/// Adds `path` (a file, or a directory walked recursively, symlinks to directories not
/// followed, hidden entries and `target_dir` skipped) to `files`. A missing path adds nothing.
fn scan(path: &Path, target_dir: &Path, files: &mut Fingerprint) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_dir() {
        if path == target_dir {
            return;
        }
        let Ok(entries) = std::fs::read_dir(path) else {
            return;
        };
        for entry in entries.flatten() {
            if !entry.file_name().to_string_lossy().starts_with('.') {
                scan(&entry.path(), target_dir, files);
            }
        }
    } else {
        let meta = std::fs::metadata(path).unwrap_or(meta);
        files.insert(path.to_owned(), (meta.modified().ok(), meta.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ws/`, a workspace of two guests and a plain library, and `helper/`, a crate outside it
    /// that one guest depends on by path (as guests depend on the SDK).
    fn workspace() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let write = |path: &str, text: &str| {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write(
            "ws/Cargo.toml",
            "[workspace]\nmembers = [\"api\", \"web-app\", \"shared\"]\nresolver = \"3\"\n",
        );
        let package = |name: &str, extra: &str| {
            format!(
                "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n{extra}"
            )
        };
        let guest = "[lib]\ncrate-type = [\"cdylib\"]\n";
        write("ws/api/Cargo.toml", &package("api", guest));
        write(
            "ws/web-app/Cargo.toml",
            &package(
                "web-app",
                &format!("{guest}[dependencies]\nhelper = {{ path = \"../../helper\" }}\n"),
            ),
        );
        write("ws/shared/Cargo.toml", &package("shared", ""));
        write("helper/Cargo.toml", &package("helper", ""));
        for krate in ["ws/api", "ws/web-app", "ws/shared", "helper"] {
            write(&format!("{krate}/src/lib.rs"), "");
        }
        dir
    }

    #[tokio::test]
    async fn a_workspace_serves_every_cdylib_member_and_a_member_itself() {
        let dir = workspace();
        let ws = dir.path().join("ws");
        let project = Project::discover(&ws).await.unwrap();
        let routes: Vec<&str> = project.guests.iter().map(|g| g.route.as_str()).collect();
        assert_eq!(routes, ["api", "web-app"]);
        let web = &project.guests[1];
        assert!(
            web.artifact
                .ends_with("target/wasm32-wasip2/release/web_app.wasm"),
            "{}",
            web.artifact.display()
        );
        let root = dir.path().canonicalize().unwrap();
        for watched in [
            "ws/Cargo.toml",
            "ws/api/src",
            "ws/web-app/Cargo.toml",
            "helper/src",
        ] {
            assert!(
                project.watched.contains(&root.join(watched)),
                "{watched} not watched: {:?}",
                project.watched
            );
        }
        assert!(
            !project
                .watched
                .iter()
                .any(|p| p.starts_with(root.join("ws/shared")))
        );

        let member = Project::discover(&ws.join("api")).await.unwrap();
        let routes: Vec<&str> = member.guests.iter().map(|g| g.route.as_str()).collect();
        assert_eq!(routes, ["api"]);

        let error = Project::discover(&ws.join("shared")).await.unwrap_err();
        assert!(error.contains("there is no guest crate in"), "{error}");
    }

    #[test]
    fn changes_are_named_relative_to_the_project() {
        let stamp = (None, 1);
        let before: Fingerprint = [
            (PathBuf::from("/p/src/lib.rs"), stamp),
            (PathBuf::from("/p/src/old.rs"), stamp),
        ]
        .into();
        let mut after = before.clone();
        after.insert("/p/src/lib.rs".into(), (None, 2));
        assert_eq!(
            describe_changes(&before, &after, Path::new("/p")),
            "src/lib.rs changed"
        );
        after.remove(Path::new("/p/src/old.rs"));
        for i in 0..3 {
            after.insert(format!("/sdk/src/{i}.rs").into(), stamp);
        }
        assert_eq!(
            describe_changes(&before, &after, Path::new("/p")),
            "src/lib.rs, /sdk/src/0.rs, /sdk/src/1.rs, 2 more changed"
        );
    }

    #[test]
    fn a_fingerprint_sees_edits_and_skips_the_target_dir() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let target = dir.path().join("target");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(src.join("lib.rs"), "fn a() {}").unwrap();
        let scan_all = || {
            let mut files = Fingerprint::new();
            scan(dir.path(), &target, &mut files);
            files
        };
        let before = scan_all();
        assert_eq!(before.len(), 1);
        std::fs::write(target.join("out.wasm"), "x").unwrap();
        std::fs::write(dir.path().join(".hidden"), "x").unwrap();
        assert_eq!(
            scan_all(),
            before,
            "target dir and hidden files are not watched"
        );
        std::fs::write(src.join("lib.rs"), "fn ab() {}").unwrap();
        assert_ne!(scan_all(), before);
    }
}
