//! The guest crates `handoff dev` serves: found through `cargo metadata`, built with cargo for
//! `wasm32-wasip2`, and fingerprinted (modification times and sizes of the files that make
//! them) so a change can be seen without a platform file-watch API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Deserialize;

use crate::names::RouteName;

/// The target guests are built for.
const TARGET: &str = "wasm32-wasip2";
/// Environment that is for the host build, never for the nested wasm one (clippy, coverage).
const HOST_ONLY_ENV: [&str; 4] = [
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTFLAGS",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_WRAPPER",
];

pub(super) async fn build(project: &Project) -> Result<(), String> {
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

/// The guests of a directory and the files that make them.
#[derive(Debug)]
pub(super) struct Project {
    /// Where cargo runs (the directory `dev` was given).
    pub(super) dir: PathBuf,
    /// The same, absolute: changed paths are shown relative to it.
    pub(super) root: PathBuf,
    pub(super) guests: Vec<Guest>,
    /// Files and directories whose changes trigger a build.
    pub(super) watched: Arc<Vec<PathBuf>>,
    /// Cargo's target directory, never watched.
    pub(super) target_dir: Arc<PathBuf>,
}

/// One guest crate: a `cdylib` package, served as route `/{package}`.
#[derive(Debug)]
pub(super) struct Guest {
    pub(super) package: String,
    pub(super) route: RouteName,
    pub(super) artifact: PathBuf,
}

/// Path, modification time and length of every watched file.
pub(super) type Fingerprint = BTreeMap<PathBuf, (Option<SystemTime>, u64)>;

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
    pub(super) async fn discover(dir: &Path) -> Result<Self, String> {
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
    pub(super) async fn fingerprint(&self) -> Fingerprint {
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
    pub(super) fn is_cdylib(&self) -> bool {
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

/// "src/lib.rs changed" (paths relative to `root` where they can be, at most three named).
pub(super) fn describe_changes(before: &Fingerprint, after: &Fingerprint, root: &Path) -> String {
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
