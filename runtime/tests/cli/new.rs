//! `handoff new`: the crate it writes builds as it is, for wasm32-wasip2, outside any workspace,
//! and serves; it never overwrites a directory.

use std::time::Duration;

use handoff::cli::exit;

use crate::support::{cargo, get, handoff, run_within, serve, shared_target_dir};

/// A cold build compiles the SDK and its dependencies; later runs reuse the shared target dir.
const BUILD_LIMIT: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_guest_crate_builds_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let crate_dir = dir.path().join("apps").join("greeter");
    let created = handoff(&["new", "greeter", "--path", crate_dir.to_str().unwrap()]).await;
    assert!(
        created.ok().starts_with("created guest crate"),
        "{created:#?}"
    );
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
    let component = target_dir.join("wasm32-wasip2/release/greeter.wasm");
    assert!(component.is_file(), "{} missing", component.display());

    let (_server, ready) = serve(&[]).await;
    let admin = ready.admin_url();
    let deployed = handoff(&[
        "deploy",
        "greeter",
        component.to_str().unwrap(),
        "--admin",
        &admin,
    ])
    .await;
    deployed.ok();
    assert_eq!(
        get(&ready, "/greeter").await,
        (200, "hello from /greeter\n".into())
    );
    assert_eq!(
        get(&ready, "/greeter/a/b?c=d").await,
        (200, "hello from /greeter/a/b\n".into())
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
async fn new_with_wasi_0_3_writes_an_async_handler_that_builds() {
    let dir = tempfile::tempdir().unwrap();
    let crate_dir = dir.path().join("waiter");
    let created = handoff(&[
        "new",
        "waiter",
        "--wasi",
        "0.3",
        "--path",
        crate_dir.to_str().unwrap(),
    ])
    .await;
    assert!(created.ok().contains("(WASI 0.3, async;"), "{created:#?}");
    let handler = std::fs::read_to_string(crate_dir.join("src/lib.rs")).unwrap();
    assert!(handler.contains("export!(async handle);"), "{handler}");

    let target_dir = shared_target_dir("new-guests");
    let mut build = cargo(&crate_dir, &target_dir);
    build.args(["build", "--release"]);
    let built = run_within(BUILD_LIMIT, build).await;
    assert_eq!(
        built.code, 0,
        "the 0.3 scaffold does not build:\n{}",
        built.stderr
    );
    assert!(
        target_dir
            .join("wasm32-wasip2/release/waiter.wasm")
            .is_file()
    );
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
