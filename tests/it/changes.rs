//! Changes that race, are cancelled, or are odd: concurrent deploys to one route, a client that
//! leaves mid-deploy, unavailable routes, stored modules, signatures at activation, rollback of
//! a config-only change, repairs, and the 405 that names the methods.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use handoff::api::{Deleted, Deployed, ModuleList, ModuleStatus, RouteList, Uploaded};
use handoff::config::Config;
use handoff::signing::{Mode, TrustedKey};
use handoff_tests::{TestServer, detail, eventually, gated_compile_worker, guests, typed};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

const GENEROUS: Duration = Duration::from_secs(30);

fn in_dir(dir: &Path) -> Config {
    Config {
        data_dir: Some(dir.to_path_buf()),
        ..Config::ephemeral()
    }
}

/// The hex digits of a version (`sha256:...`).
fn hex(version: &str) -> &str {
    version.trim_start_matches("sha256:")
}

/// A deploy of `bytes` to `route` with `query`, sent on a connection of its own.
fn spawn_deploy(
    server: &TestServer,
    route: &str,
    query: &str,
    bytes: Vec<u8>,
) -> tokio::task::JoinHandle<(StatusCode, Value)> {
    let admin = server.admin;
    let uri = format!("/v1/routes/{route}{query}");
    tokio::spawn(async move {
        let req = Request::builder()
            .method(Method::PUT)
            .uri(uri)
            .header("host", "admin")
            .header("content-type", "application/wasm")
            .body(Full::new(Bytes::from(bytes)))
            .unwrap();
        let (status, body) = handoff_tests::send(admin, req).await;
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deploys_to_one_route_keep_each_others_settings() {
    let gate_dir = tempfile::tempdir().unwrap();
    let gate = gate_dir.path().join("open");
    let server = TestServer::start_with(Config {
        compiler: gated_compile_worker(&gate),
        ..Config::ephemeral()
    })
    .await;
    // v1 serves; compiling it needs the gate open.
    std::fs::write(&gate, b"").unwrap();
    server.deploy("app", guests::TAGGED_V1).await;
    std::fs::remove_file(&gate).unwrap();

    // A deploy of new bytes (v2) is held in compilation...
    let slow = spawn_deploy(&server, "app", "", guests::bytes(guests::TAGGED_V2));
    eventually("the v2 compile to start", GENEROUS, || async {
        (server.server().runtime().compile_workers() == 1).then_some(())
    })
    .await;
    // ...while another deploy (the bytes already serving: no compile) changes the allow-list.
    let (status, body) = server
        .deploy_bytes(
            "app",
            "?allow-outbound=https://api.example.com",
            guests::bytes(guests::TAGGED_V1),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rules = ["https://api.example.com:443"];
    assert_eq!(server.route("app").await.outbound, rules);
    // Release the first: it lands, and the second's allow-list survives it.
    std::fs::write(&gate, b"").unwrap();
    let (status, body) = slow.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let status = server.route("app").await;
    assert_eq!(status.active.version, typed::<Deployed>(&body).version);
    assert_eq!(
        status.outbound, rules,
        "a deploy that did not touch the allow-list keeps the one committed meanwhile: {status:?}"
    );
    assert_eq!(server.get("/app").await.1, "v2");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_whose_client_leaves_still_lands_whole() {
    let dir = tempfile::tempdir().unwrap();
    let gate_dir = tempfile::tempdir().unwrap();
    let gate = gate_dir.path().join("open");
    let server = TestServer::start_with(Config {
        compiler: gated_compile_worker(&gate),
        ..in_dir(dir.path())
    })
    .await;
    std::fs::write(&gate, b"").unwrap();
    server.deploy("app", guests::TAGGED_V1).await;
    std::fs::remove_file(&gate).unwrap();

    let leaving = spawn_deploy(
        &server,
        "app",
        "?label=left",
        guests::bytes(guests::TAGGED_V2),
    );
    eventually("the v2 compile to start", GENEROUS, || async {
        (server.server().runtime().compile_workers() == 1).then_some(())
    })
    .await;
    // The client goes away mid-deploy (its connection is dropped), then the compile finishes.
    leaving.abort();
    assert!(leaving.await.unwrap_err().is_cancelled());
    std::fs::write(&gate, b"").unwrap();
    eventually("the deploy to land anyway", GENEROUS, || async {
        (server.get("/app").await.1 == "v2").then_some(())
    })
    .await;
    let history = server.history("app").await;
    let versions = &history.versions;
    assert_eq!(versions.len(), 2, "{history:?}");
    assert_eq!(versions[1].label.as_deref(), Some("left"));
    assert_eq!(history.active, versions[1].version);
    assert_eq!(server.route("app").await.active.version, history.active);
    server.shutdown().await;

    // After a restart: the same route, version and history.
    let server = TestServer::start_with(in_dir(dir.path())).await;
    assert_eq!(server.get("/app").await.1, "v2");
    assert_eq!(server.history("app").await, history);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_route_keeps_its_prefix_until_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let lost = {
        let server = TestServer::start_with(in_dir(dir.path())).await;
        let lost = server.deployed("lost", guests::TAGGED_V1).await;
        server.shutdown().await;
        lost
    };
    for sub in ["modules", "artifacts"] {
        for entry in std::fs::read_dir(dir.path().join(sub)).unwrap().flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(hex(&lost.version))
            {
                std::fs::remove_file(entry.path()).unwrap();
            }
        }
    }
    let server = TestServer::start_with(in_dir(dir.path())).await;
    assert_eq!(
        server.get("/lost/x").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Its prefix is still its own: another route may not take it.
    let (status, body) = server
        .deploy_bytes("other", "?prefix=/lost", guests::bytes(guests::TAGGED_V2))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(detail(&body).contains("`lost`"), "{body}");
    // It can be deleted; then the prefix is free.
    let (status, body) = server.admin(Method::DELETE, "/v1/routes/lost").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(typed::<Deleted>(&body).version, None, "{body}");
    let (status, body) = server
        .deploy_bytes("other", "?prefix=/lost", guests::bytes(guests::TAGGED_V2))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(server.get("/lost/x").await.1, "v2");
    let list: RouteList = server.read("/v1/routes").await;
    assert!(list.unavailable.is_empty(), "{list:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_modules_stay_until_activated_or_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(Config {
        history_limit: 1,
        ..in_dir(dir.path())
    })
    .await;
    // v1 is deployed, then replaced: with a history of one it is no longer referenced.
    let v1 = server.deployed("app", guests::TAGGED_V1).await.version;
    server.deploy("app", guests::TAGGED_V2).await;
    // Uploading v1's bytes again (already stored) pins them.
    let upload = Request::builder()
        .method(Method::POST)
        .uri("/v1/modules")
        .header("host", "admin")
        .header("content-type", "application/wasm")
        .body(Full::new(Bytes::from(guests::bytes(guests::TAGGED_V1))))
        .unwrap();
    let (status, _) = handoff_tests::send(server.admin, upload).await;
    assert!(status.is_success(), "{status}");
    // Garbage collection runs after every change: deploy something else, twice.
    server.deploy("other", guests::HELLO).await;
    server.deploy("other", guests::CONFIG).await;
    server.deploy("other", guests::HELLO).await;
    let module_file = dir
        .path()
        .join("modules")
        .join(format!("{}.wasm", hex(&v1)));
    let listed = |list: ModuleList, version: &str| -> Option<ModuleStatus> {
        list.modules.into_iter().find(|m| m.version == version)
    };
    let entry = listed(server.read("/v1/modules").await, &v1).expect("the uploaded module is kept");
    assert!(entry.pinned, "{entry:?}");
    assert!(module_file.exists());

    // A module a route uses cannot be deleted; the message names the route.
    let v2 = server.route("app").await.active.version;
    let (status, body) = server
        .admin(Method::DELETE, &format!("/v1/modules/{v2}"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(detail(&body).contains("app"), "{body}");
    // The pinned, unused one can; its files go.
    let (status, body) = server
        .admin(Method::DELETE, &format!("/v1/modules/{v1}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("the module's file to go", GENEROUS, || async {
        (!module_file.exists()).then_some(())
    })
    .await;
    assert!(listed(server.read("/v1/modules").await, &v1).is_none());
    let (status, _) = server
        .admin(Method::DELETE, &format!("/v1/modules/{v1}"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_require_only_signed_modules_may_be_activated_or_rolled_back_to() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = handoff::signing::generate().unwrap();
    // Stored without signatures, by a server that did not check them.
    let (unsigned, signed_digest) = {
        let server = TestServer::start_with(in_dir(dir.path())).await;
        let unsigned = server.deployed("app", guests::TAGGED_V1).await.version;
        let bytes = guests::bytes(guests::TAGGED_V2);
        let signature = handoff::signing::sign(&private, &bytes).unwrap();
        let upload = Request::builder()
            .method(Method::POST)
            .uri("/v1/modules")
            .header("host", "admin")
            .header("content-type", "application/wasm")
            .header("handoff-signature", signature)
            .body(Full::new(Bytes::from(bytes)))
            .unwrap();
        let (status, body) = handoff_tests::send(server.admin, upload).await;
        assert!(status.is_success(), "{status}");
        let uploaded: Uploaded = serde_json::from_slice(&body).unwrap();
        server.shutdown().await;
        (unsigned, uploaded.version)
    };
    let server = TestServer::start_with(Config {
        signature_mode: Mode::Require,
        signing_keys: vec![TrustedKey::new("release", &public).unwrap()],
        ..in_dir(dir.path())
    })
    .await;
    // The signed one activates; rolling back to the unsigned one is refused.
    let (status, body) = server
        .post_json("/v1/routes/app/activate", json!({"version": signed_digest}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .post_json("/v1/routes/app/rollback", json!({"version": unsigned}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(detail(&body).contains("signed"), "{body}");
    let (status, _) = server
        .post_json("/v1/routes/app/rollback", Value::Null)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = server
        .post_json("/v1/routes/new/activate", json!({"version": unsigned}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(server.get("/app").await.1, "v2", "nothing changed");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_undoes_a_config_only_change() {
    let server = TestServer::start().await;
    let bytes = || guests::bytes(guests::CONFIG);
    let (status, body) = server
        .deploy_bytes("cfg", "?config=GREETING=first", bytes())
        .await;
    assert!(status.is_success(), "{body}");
    let (status, body) = server
        .deploy_bytes("cfg", "?config=GREETING=second", bytes())
        .await;
    assert!(status.is_success(), "{body}");
    assert_eq!(server.route("cfg").await.config["GREETING"], "second");
    let (status, body) = server
        .post_json("/v1/routes/cfg/rollback", Value::Null)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(typed::<Deployed>(&body).changed, "{body}");
    assert_eq!(server.route("cfg").await.config["GREETING"], "first");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeploying_the_same_bytes_repairs_their_stored_copy() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(in_dir(dir.path())).await;
    let deployed = server.deployed("app", guests::TAGGED_V1).await;
    let file = dir
        .path()
        .join("modules")
        .join(format!("{}.wasm", hex(&deployed.version)));
    std::fs::write(&file, b"damaged").unwrap();
    let (status, body) = server
        .deploy_bytes("app", "", guests::bytes(guests::TAGGED_V1))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        guests::bytes(guests::TAGGED_V1)
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_is_told_which_methods_the_path_takes() {
    let server = TestServer::start().await;
    let (status, body) = server.admin(Method::POST, "/v1/routes/app/versions").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let said = detail(&body);
    assert!(said.contains("GET"), "{said}");
    assert!(!said.contains("PUT"), "{said}");
    let (status, body) = server.admin(Method::PATCH, "/v1/routes/app").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let said = detail(&body);
    for method in ["GET", "PUT", "DELETE"] {
        assert!(said.contains(method), "{said}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_keep_the_history_limit_and_their_old_modules_are_collected() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(Config {
        history_limit: 2,
        ..in_dir(dir.path())
    })
    .await;
    let first = server.deployed("app", guests::TAGGED_V1).await.version;
    // Three versions in turn, each promoted from a rollout (never a plain deploy).
    for guest in [guests::TAGGED_V2, guests::TAGGED_SLOW, guests::TAGGED_V1B] {
        let candidate = server.upload(guest).await;
        let (status, body) = server
            .post_json(
                "/v1/routes/app/rollout",
                json!({"version": candidate, "manual": true}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, body) = server
            .post_json("/v1/routes/app/rollout/promote", Value::Null)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let history = server.history("app").await;
        assert!(
            history.versions.len() <= 2,
            "the history keeps 2: {history:?}"
        );
        for entry in &history.versions {
            assert!(entry.size_bytes > 0, "{entry:?}");
        }
    }
    // The first version left the history: no route references it, so its files are gone.
    let module_file = dir
        .path()
        .join("modules")
        .join(format!("{}.wasm", hex(&first)));
    assert!(!module_file.exists(), "{} kept", module_file.display());
    let list: ModuleList = server.read("/v1/modules").await;
    assert!(!list.modules.iter().any(|m| m.version == first), "{list:?}");
    server.shutdown().await;
}
