//! Builds every guest the tests deploy, in one cargo call per guest workspace, into `OUT_DIR`,
//! and writes `guests.rs`: one `pub const NAME: &str = "/path/to/name.wasm"` per component and
//! `ALL` listing them. Always fresh: a test never runs yesterday's guest.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Guest workspaces, relative to the repository root.
const WORKSPACES: &[&str] = &["tests/guests", "examples"];

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root");
    let target_dir = out.join("guests");
    let mut consts = String::new();
    let mut all = Vec::new();
    for workspace in WORKSPACES {
        let dir = root.join(workspace);
        let manifest = dir.join("Cargo.toml");
        if !manifest.exists() {
            continue;
        }
        println!("cargo:rerun-if-changed={}", dir.display());
        build(&manifest, &target_dir);
        for name in members(&manifest) {
            let file = name.replace('-', "_");
            let path = target_dir
                .join("wasm32-wasip2/release")
                .join(format!("{file}.wasm"));
            assert!(
                path.exists(),
                "guest `{name}` was built but {} is missing",
                path.display()
            );
            let ident = file.to_uppercase();
            writeln!(consts, "/// `{workspace}/{name}`, built for wasm32-wasip2.").unwrap();
            writeln!(
                consts,
                "pub const {ident}: &str = {:?};",
                path.display().to_string()
            )
            .unwrap();
            all.push(ident);
        }
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("guest-sdk").display()
    );
    writeln!(consts, "/// Every guest above.").unwrap();
    writeln!(consts, "pub const ALL: &[&str] = &[{}];", all.join(", ")).unwrap();
    std::fs::write(out.join("guests.rs"), consts).expect("writing guests.rs");
}

fn build(manifest: &Path, target_dir: &Path) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "--workspace",
            "--target",
            "wasm32-wasip2",
        ])
        .arg("--manifest-path")
        .arg(manifest)
        .env("CARGO_TARGET_DIR", target_dir)
        // Host flags and wrappers (clippy, coverage) are not for the wasm build.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .status()
        .expect("running cargo to build the guests");
    assert!(
        status.success(),
        "building the guests in {} failed; is the wasm32-wasip2 target installed? \
         (rustup target add wasm32-wasip2)",
        manifest.display()
    );
}

/// The package names of a guest workspace's members (each member is a directory with a
/// Cargo.toml whose `name =` line names it).
fn members(manifest: &Path) -> Vec<String> {
    let dir = manifest.parent().expect("workspace dir");
    let mut names = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("reading guest workspace")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("Cargo.toml").exists() && p.join("src").exists())
        .collect();
    entries.sort();
    for member in entries {
        let text = std::fs::read_to_string(member.join("Cargo.toml")).expect("member manifest");
        if !text.contains("cdylib")
            && !text.contains("[[bin]]")
            && !member.join("src/main.rs").exists()
        {
            continue;
        }
        let name = text
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("name = ")
                    .map(|v| v.trim_matches('"').to_owned())
            })
            .expect("member has a name");
        names.push(name);
    }
    names
}
