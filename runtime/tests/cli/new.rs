//! `handoff new`: the crate it writes builds as it is, for wasm32-wasip2, outside any workspace,
//! tests with plain `cargo test`, and serves; it never overwrites a directory, and never lands
//! inside the checkout unless `--path` says so. `--from` copies an example that then builds
//! outside the checkout. The README's "Writing a guest" commands run as written.

use std::path::{Path, PathBuf};
use std::time::Duration;

use handoff::exit;

use crate::docs::words;
use crate::support::{
    HANDOFF, Running, cargo, command, get, handoff, run_within, serve, shared_target_dir,
};

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
    for file in ["Cargo.toml", "src/lib.rs", "README.md"] {
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
    let status: serde_json::Value = serde_json::from_str(status.ok()).unwrap();
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

/// The repository this test binary was built from.
fn checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("runtime/ has a parent")
        .canonicalize()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_run_inside_the_checkout_creates_nothing_there_unless_asked() {
    // The test's scratch directory is under the checkout's target/, as deep as a user may be.
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    assert!(
        scratch
            .path()
            .canonicalize()
            .unwrap()
            .starts_with(checkout())
    );
    for cwd in [checkout(), scratch.path().to_owned()] {
        let mut new = command(&["new", "stray-guest"]);
        new.current_dir(&cwd);
        let output = run_within(Duration::from_secs(60), new).await;
        output.fails(exit::USAGE as i32, "inside the handoff checkout");
        assert!(output.stderr.contains("--path"), "{output:#?}");
        assert!(
            !cwd.join("stray-guest").exists(),
            "created in {}",
            cwd.display()
        );
    }
    // Asked with --path, it goes where it is told, inside the checkout too.
    let mut asked = command(&["new", "stray-guest", "--path", "here/stray-guest"]);
    asked.current_dir(scratch.path());
    let output = run_within(Duration::from_secs(60), asked).await;
    output.ok();
    assert!(scratch.path().join("here/stray-guest/Cargo.toml").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_cargo_test_passes_in_a_new_crate() {
    let dir = tempfile::tempdir().unwrap();
    let mut new = command(&["new", "tested"]);
    new.current_dir(dir.path());
    run_within(Duration::from_secs(60), new).await.ok();
    let crate_dir = dir.path().join("tested");
    let mut test = cargo(&crate_dir, &shared_target_dir("new-guests"));
    test.arg("test");
    let tested = run_within(BUILD_LIMIT, test).await;
    assert_eq!(
        tested.code, 0,
        "cargo test fails in the scaffold:\n{}",
        tested.stderr
    );
    assert!(
        tested
            .stdout
            .contains("test tests::it_answers_with_the_path ... ok")
            && tested.stdout.contains("1 passed"),
        "the scaffold's handler test did not run:\n{}",
        tested.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_example_copied_with_from_tests_builds_and_serves_outside_the_checkout() {
    let dir = tempfile::tempdir().unwrap();
    let mut new = command(&["new", "my-todo", "--from", "todo-v1"]);
    new.current_dir(dir.path());
    let created = run_within(Duration::from_secs(60), new).await;
    created.ok();
    let crate_dir = dir.path().join("my-todo");
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    assert!(
        !manifest.contains("../"),
        "a relative path is left:\n{manifest}"
    );
    assert!(!manifest.contains(".workspace"), "{manifest}");
    assert!(
        crate_dir.join("src/lib.rs").is_file() && crate_dir.join("README.md").is_file(),
        "the example's files were not copied"
    );

    let target_dir = shared_target_dir("new-guests");
    let mut test = cargo(&crate_dir, &target_dir);
    test.arg("test");
    let tested = run_within(BUILD_LIMIT, test).await;
    assert_eq!(tested.code, 0, "{}\n{}", tested.stdout, tested.stderr);
    assert!(
        tested
            .stdout
            .contains("items_are_created_changed_listed_and_deleted ... ok")
    );
    let mut build = cargo(&crate_dir, &target_dir);
    build.args(["build", "--release", "--target", "wasm32-wasip2"]);
    let built = run_within(BUILD_LIMIT, build).await;
    assert_eq!(built.code, 0, "{}", built.stderr);
    let component = target_dir.join("wasm32-wasip2/release/my_todo.wasm");

    let (_server, ready) = serve(&[]).await;
    let admin = ready.admin_url();
    handoff(&[
        "deploy",
        "todo",
        component.to_str().unwrap(),
        "--admin",
        &admin,
    ])
    .await
    .ok();
    assert_eq!(get(&ready, "/todo/items").await, (200, "[]".into()));

    let mut unknown = command(&["new", "other", "--from", "nosuch"]);
    unknown.current_dir(dir.path());
    let output = run_within(Duration::from_secs(60), unknown).await;
    output.fails(exit::USAGE as i32, "no example `nosuch`");
    assert!(
        output.stderr.contains("todo-v1"),
        "the examples are listed: {output:#?}"
    );
    assert!(!dir.path().join("other").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_writing_a_guest_commands_work_as_written_outside_the_checkout() {
    let readme = std::fs::read_to_string(checkout().join("README.md")).unwrap();
    let section = readme
        .split("\n## Writing a guest")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("the README has a Writing a guest section");
    // The second `sh` block: the commands typed in a directory of one's own (the first
    // installs the binary, which this test has built already and puts on PATH instead).
    let block = section
        .split("```sh\n")
        .nth(2)
        .and_then(|rest| rest.split("```").next())
        .expect("the section's second sh block");
    let bin_dir = Path::new(HANDOFF).parent().unwrap();
    let path = std::env::join_paths(std::iter::once(bin_dir.to_owned()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    let mut cwd = home.path().to_owned();
    let target_dir = shared_target_dir("new-guests");
    let mut route = None;
    let mut served = false;
    for line in block.lines() {
        let words = words(line);
        for segment in words.split(|w| w == "&&") {
            let (program, args) = segment.split_first().expect("a command");
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            match (program.as_str(), args.as_slice()) {
                ("cd", [dir]) => cwd = cwd.join(dir),
                ("handoff", ["new", name, ..]) => {
                    let mut new = command(&args);
                    new.current_dir(&cwd).env("PATH", &path);
                    run_within(Duration::from_secs(60), new).await.ok();
                    route = Some(name.to_string());
                }
                ("handoff", ["dev", ..]) => {
                    let mut dev = command(&args);
                    // As written, but on ports the system picks.
                    dev.current_dir(&cwd)
                        .env("PATH", &path)
                        .env("CARGO_TARGET_DIR", &target_dir)
                        .env("HANDOFF_LISTEN", "127.0.0.1:0")
                        .env("HANDOFF_ADMIN_LISTEN", "127.0.0.1:0");
                    let mut dev = Running::spawn(dev);
                    let ready = dev.ready(BUILD_LIMIT).await;
                    let route = route.clone().expect("`handoff new` came first");
                    let (status, body) = get(&ready, &format!("/{route}")).await;
                    assert_eq!((status, body.contains(&route)), (200, true), "{body}");
                    served = true;
                }
                ("cargo", _) => {
                    let mut cargo = cargo(&cwd, &target_dir);
                    cargo.args(&args);
                    let output = run_within(BUILD_LIMIT, cargo).await;
                    assert_eq!(
                        output.code,
                        0,
                        "`{line}` fails in {}:\n{}",
                        cwd.display(),
                        output.stderr
                    );
                }
                _ => panic!("the README's `{line}` is not a command this test knows to run"),
            }
        }
    }
    assert!(served, "the README's commands never served the guest");
    assert!(
        !checkout().join(route.unwrap()).exists(),
        "the crate landed in the checkout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_names_the_release_and_the_wasmtime_it_embeds() {
    // The wasmtime the workspace pins (`wasmtime = "=X.Y.Z"`), which the binary links.
    let manifest = std::fs::read_to_string(checkout().join("Cargo.toml")).unwrap();
    let pinned = manifest
        .lines()
        .find_map(|line| line.strip_prefix("wasmtime = \"="))
        .and_then(|rest| rest.strip_suffix('"'))
        .expect("the workspace pins wasmtime");
    for flag in ["--version", "-V"] {
        let output = handoff(&[flag]).await;
        assert_eq!(
            output.ok(),
            format!(
                "handoff {} (wasmtime {pinned})\n",
                env!("CARGO_PKG_VERSION")
            )
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_cargo_test_passes_in_the_examples() {
    let mut test = cargo(
        &checkout().join("examples"),
        &shared_target_dir("new-guests"),
    );
    test.arg("test");
    let tested = run_within(BUILD_LIMIT, test).await;
    assert_eq!(
        tested.code, 0,
        "cargo test fails in examples/:\n{}\n{}",
        tested.stdout, tested.stderr
    );
    assert!(
        tested
            .stdout
            .contains("items_are_created_changed_listed_and_deleted ... ok"),
        "the examples' tests did not run:\n{}",
        tested.stdout
    );
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
    build.args(["build", "--release", "--target", "wasm32-wasip2"]);
    let built = run_within(BUILD_LIMIT, build).await;
    assert_eq!(
        built.code, 0,
        "the 0.3 scaffold does not build:\n{}",
        built.stderr
    );
    // Its async handler's test runs on the host with plain `cargo test` too.
    let mut test = cargo(&crate_dir, &target_dir);
    test.arg("test");
    let tested = run_within(BUILD_LIMIT, test).await;
    assert_eq!(tested.code, 0, "{}\n{}", tested.stdout, tested.stderr);
    assert!(
        tested
            .stdout
            .contains("test tests::it_answers_with_the_path ... ok"),
        "{}",
        tested.stdout
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

/// The version in the last `deployed NAME VERSION in N ms` line `dev` printed.
fn last_deployed(stdout: &str, name: &str) -> Option<String> {
    let prefix = format!("deployed {name} ");
    stdout
        .lines()
        .rev()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .find_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_serves_a_new_03_crate_and_redeploys_an_edit() {
    // The default scaffold (an async WASI 0.3 handler) under `handoff dev`: it builds, serves
    // as a 0.3 version, and a saved edit is live without a restart.
    let name = "devloop";
    let dir = tempfile::tempdir().unwrap();
    let crate_dir = dir.path().join(name);
    handoff(&["new", name, "--path", crate_dir.to_str().unwrap()])
        .await
        .ok();
    let mut dev = command(&[
        "dev",
        crate_dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    dev.env("CARGO_TARGET_DIR", shared_target_dir("new-guests"));
    let mut dev = Running::spawn(dev);
    let ready = dev.ready(BUILD_LIMIT).await;
    let route_line = format!("route {name} -> http://{}/{name}", ready.data);
    dev.wait_for_line("the route line", Duration::from_secs(10), |l| {
        (l == route_line).then_some(())
    })
    .await;
    let first = last_deployed(&dev.stdout.text(), name).expect("a deployed line");
    assert_eq!(
        get(&ready, &format!("/{name}/a")).await,
        (200, format!("hello from /{name}/a\n"))
    );
    let status = handoff(&["status", name, "--json", "--admin", &ready.admin_url()]).await;
    let status: serde_json::Value = serde_json::from_str(status.ok()).unwrap();
    assert_eq!(status["active"]["wasi"], "0.3", "{status}");

    // An edit to the handler: the next requests get the new answer.
    let source = crate_dir.join("src/lib.rs");
    let text = std::fs::read_to_string(&source).unwrap();
    assert!(text.contains("\"hello from {}\\n\""), "{text}");
    std::fs::write(
        &source,
        text.replacen("\"hello from {}\\n\"", "\"howdy from {}\\n\"", 1),
    )
    .unwrap();
    let saved = std::time::Instant::now();
    while get(&ready, &format!("/{name}/a")).await != (200, format!("howdy from /{name}/a\n")) {
        assert!(
            saved.elapsed() < BUILD_LIMIT,
            "the edit was not served\nstdout:\n{}\nstderr:\n{}",
            dev.stdout.text(),
            dev.stderr.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let second = dev
        .wait_for_line("the edit's deployed line", Duration::from_secs(10), |l| {
            let version = l
                .strip_prefix(&format!("deployed {name} "))?
                .split_whitespace()
                .next()?;
            (version != first).then(|| version.to_owned())
        })
        .await;
    assert_ne!(second, first);
    let status = dev.terminate(Duration::from_secs(60)).await;
    assert!(status.success(), "dev exits cleanly on SIGTERM: {status}");
}
