//! `handoff new`: the crate it writes builds as it is, for wasm32-wasip2, outside any workspace,
//! and serves; it never overwrites a directory.

use std::time::Duration;

use handoff::cli::exit;

use crate::support::{cargo, get, handoff, run_within, serve, shared_target_dir};

/// A cold build compiles the SDK and its dependencies; later runs reuse the shared target dir.
const BUILD_LIMIT: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_guest_crate_builds_and_serves() {
    // The default: an async WASI 0.3 handler.
    new_guest_builds_and_serves("greeter", &[], "WASI 0.3, async;", "0.3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_wasi_0_2_guest_crate_builds_and_serves() {
    new_guest_builds_and_serves("blocking", &["--wasi", "0.2"], "WASI 0.2;", "0.2").await;
}

/// `handoff new NAME` with `flags` says `says`, builds, deploys as a WASI `wasi` version and
/// answers. (Each test its own `name`: they share a target directory.)
async fn new_guest_builds_and_serves(name: &str, flags: &[&str], says: &str, wasi: &str) {
    let dir = tempfile::tempdir().unwrap();
    let crate_dir = dir.path().join("apps").join(name);
    let mut args = vec!["new", name, "--path", crate_dir.to_str().unwrap()];
    args.extend(flags);
    let created = handoff(&args).await;
    let out = created.ok();
    assert!(out.starts_with("created guest crate"), "{created:#?}");
    assert!(out.contains(says), "{created:#?}");
    for file in [
        "Cargo.toml",
        ".cargo/config.toml",
        "src/lib.rs",
        "README.md",
    ] {
        assert!(crate_dir.join(file).is_file(), "{file} missing");
    }

    let target_dir = shared_target_dir("new-guests");
    let mut build = cargo(&crate_dir, &target_dir);
    build.args(["build", "--release", "--target", "wasm32-wasip2"]);
    let built = run_within(BUILD_LIMIT, build).await;
    assert_eq!(
        built.code, 0,
        "the scaffold does not build:\n{}",
        built.stderr
    );
    // `.cargo/config.toml` makes the target the default: a plain build is the same build.
    let mut plain = cargo(&crate_dir, &target_dir);
    plain.args(["build", "--release"]);
    let plain = run_within(BUILD_LIMIT, plain).await;
    assert_eq!(plain.code, 0, "{}", plain.stderr);
    let component = target_dir.join(format!("wasm32-wasip2/release/{name}.wasm"));
    assert!(component.is_file(), "{} missing", component.display());

    let (_server, ready) = serve(&[]).await;
    let admin = ready.admin_url();
    let deployed = handoff(&[
        "deploy",
        name,
        component.to_str().unwrap(),
        "--admin",
        &admin,
    ])
    .await;
    deployed.ok();
    let status = handoff(&["status", name, "--json", "--admin", &admin]).await;
    let status: serde_json::Value = serde_json::from_str(&status.ok()).unwrap();
    assert_eq!(status["active"]["wasi"], wasi, "{status}");
    assert_eq!(
        get(&ready, &format!("/{name}")).await,
        (200, format!("hello from /{name}\n"))
    );
    assert_eq!(
        get(&ready, &format!("/{name}/a/b?c=d")).await,
        (200, format!("hello from /{name}/a/b\n"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_refuses_to_overwrite_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("greeter");
    std::fs::create_dir(&existing).unwrap();
    std::fs::write(existing.join("keep.txt"), "mine").unwrap();
    let path = existing.to_str().unwrap();
    let output = handoff(&["new", "greeter", "--path", path]).await;
    output.fails(exit::LOCAL as i32, &format!("{path} already exists"));
    assert_eq!(
        std::fs::read_to_string(existing.join("keep.txt")).unwrap(),
        "mine"
    );
    assert_eq!(std::fs::read_dir(&existing).unwrap().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_refuses_names_cargo_or_routes_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["Greeter", "2fast", "fn", "a.b"] {
        let path = dir.path().join("x");
        let output = handoff(&["new", name, "--path", path.to_str().unwrap()]).await;
        output.fails(exit::USAGE as i32, "");
        assert!(!path.exists(), "nothing is created for {name}");
    }
    let output = handoff(&[
        "new",
        "greeter",
        "--path",
        dir.path().join("y").to_str().unwrap(),
        "--sdk",
        dir.path().join("no-sdk").to_str().unwrap(),
    ])
    .await;
    output.fails(exit::LOCAL as i32, "the guest SDK is not at");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_refuses_a_wasi_version_it_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x");
    let output = handoff(&[
        "new",
        "x",
        "--wasi",
        "0.4",
        "--path",
        path.to_str().unwrap(),
    ])
    .await;
    // clap's own usage error (exit 2), which lists what is accepted.
    assert_eq!(output.code, exit::USAGE as i32, "{output:#?}");
    assert!(
        output.stderr.contains("[possible values: 0.2, 0.3]"),
        "{output:#?}"
    );
    assert!(!path.exists());
}
