//! Versions that last: restart from the data directory, history, rollback without recompiling,
//! upload-then-activate, corrupt or missing files, and garbage collection.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use handoff::api::{Deployed, Problem, RouteList, Uploaded};
use handoff::config::Config;
use handoff_tests::{Connection, TestServer, eventually, get_request, guests, send, typed};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

const GENEROUS: Duration = Duration::from_secs(20);

fn config(dir: &Path) -> Config {
    Config {
        data_dir: Some(dir.to_path_buf()),
        ..Config::ephemeral()
    }
}

fn compiles(server: &TestServer) -> u64 {
    server.server().runtime().compiles()
}

/// The hex digits of a version (`sha256:...`).
fn hex(version: &str) -> &str {
    version.trim_start_matches("sha256:")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_restores_every_route_and_rollback_needs_no_compile() {
    let dir = tempfile::tempdir().unwrap();
    let (first, third) = {
        let server = TestServer::start_with(config(dir.path())).await;
        let (_, first) = server
            .deploy_bytes(
                "app",
                "?label=first&message=initial",
                guests::bytes(guests::TAGGED_V1),
            )
            .await;
        let first: Deployed = typed(&first);
        server.deploy("app", guests::TAGGED_V2).await;
        let third = server.deployed("app", guests::HOSTILE).await;
        server
            .deploy_bytes(
                "other",
                "?prefix=/elsewhere&config=K=v&max-concurrency=3&allow-outbound=https://*.example.com",
                guests::bytes(guests::TAGGED_V2),
            )
            .await;
        assert_eq!(compiles(&server), 3);
        server.shutdown().await;
        (first, third)
    };

    let server = TestServer::start_with(config(dir.path())).await;
    assert_eq!(
        compiles(&server),
        0,
        "a restart loads artifacts, it does not compile"
    );
    assert_eq!(server.get("/app").await, (StatusCode::OK, "ok".into()));
    assert_eq!(
        server.get("/elsewhere/env").await,
        (StatusCode::OK, "v2".into())
    );
    let other = server.route("other").await;
    assert_eq!(other.config["K"], "v");
    assert_eq!(other.limits.max_concurrency, 3);
    assert_eq!(other.outbound, ["https://*.example.com:443"]);

    let versions = server.history("app").await;
    let history = &versions.versions;
    assert_eq!(history.len(), 3, "{versions:?}");
    assert_eq!(history[0].version, first.version);
    assert_eq!(history[0].label.as_deref(), Some("first"));
    assert_eq!(history[0].message.as_deref(), Some("initial"));
    assert_eq!(history[0].by, "anonymous");
    assert_eq!(versions.active, third.version);

    // Back to the previous version, then by label, then by digest: no compile at all.
    let (code, body) = server
        .post_json("/v1/routes/app/rollback", Value::Null)
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(server.get("/app").await.1, "v2");
    let (code, body) = server
        .post_json("/v1/routes/app/rollback", json!({"label": "first"}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(typed::<Deployed>(&body).version, first.version);
    assert_eq!(server.get("/app").await.1, "v1");
    let (code, body) = server
        .post_json("/v1/routes/app/rollback", json!({"version": third.version}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(server.get("/app").await.1, "ok");
    assert_eq!(compiles(&server), 0, "rollbacks load artifacts");

    let actions: Vec<_> = (server.history("app").await.versions)
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        [
            "deploy", "deploy", "deploy", "rollback", "rollback", "rollback"
        ]
    );

    for (body, expected, mentions) in [
        (json!({"label": "nope"}), StatusCode::NOT_FOUND, "labelled"),
        (
            json!({"version": format!("sha256:{}", "0".repeat(64))}),
            StatusCode::NOT_FOUND,
            "no module",
        ),
        (json!({"version": "v1"}), StatusCode::NOT_FOUND, "sha256:"),
        (
            json!({"version": "x", "label": "y"}),
            StatusCode::BAD_REQUEST,
            "not both",
        ),
        (json!({"versoin": "typo"}), StatusCode::BAD_REQUEST, "json"),
    ] {
        let (code, problem) = server.post_json("/v1/routes/app/rollback", body).await;
        assert_eq!(code, expected, "{problem}");
        assert!(
            typed::<Problem>(&problem)
                .detail
                .to_lowercase()
                .contains(mentions),
            "{problem}"
        );
        assert_eq!(server.get("/app").await.1, "ok");
    }
    let (code, _) = server
        .post_json("/v1/routes/missing/rollback", Value::Null)
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    server.shutdown().await;

    // A deleted route stays deleted across a restart.
    let server = TestServer::start_with(config(dir.path())).await;
    server.admin(Method::DELETE, "/v1/routes/other").await;
    server.shutdown().await;
    let server = TestServer::start_with(config(dir.path())).await;
    assert_eq!(server.get("/elsewhere").await.0, StatusCode::NOT_FOUND);
    assert_eq!(server.get("/app").await.1, "ok");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_with_no_earlier_version_says_so() {
    let server = TestServer::start().await;
    server.deploy("solo", guests::TAGGED_V1).await;
    let (code, body) = server
        .post_json("/v1/routes/solo/rollback", Value::Null)
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert!(
        typed::<Problem>(&body)
            .detail
            .contains("no earlier version"),
        "{body}"
    );
    assert_eq!(server.get("/solo").await.1, "v1");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_modules_activate_later_without_compiling() {
    let server = TestServer::start().await;
    server.deploy("app", guests::TAGGED_V1).await;
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/modules")
        .header("host", "admin")
        .header("content-type", "application/wasm")
        .body(Full::new(Bytes::from(guests::bytes(guests::TAGGED_V2))))
        .unwrap();
    let (code, body) = send(server.admin, req).await;
    assert_eq!(
        code,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let uploaded: Uploaded = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        server.get("/app").await.1,
        "v1",
        "an upload activates nothing"
    );
    let after_upload = compiles(&server);

    let (code, body) = server
        .post_json(
            "/v1/routes/app/activate",
            json!({"version": uploaded.version}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(server.get("/app").await.1, "v2");
    // A new route from the same upload, with its own prefix.
    let (code, body) = server
        .post_json(
            "/v1/routes/fresh/activate",
            json!({"version": uploaded.version, "prefix": "/new"}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert_eq!(server.get("/new").await.1, "v2");
    assert_eq!(
        compiles(&server),
        after_upload,
        "activation loads the stored artifact"
    );

    let (code, body) = server.post_json("/v1/routes/app/activate", json!({})).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_or_missing_files_are_detected_per_route() {
    let dir = tempfile::tempdir().unwrap();
    let (kept, lost) = {
        let server = TestServer::start_with(config(dir.path())).await;
        let kept = server.deployed("kept", guests::TAGGED_V1).await;
        let lost = server.deployed("lost", guests::TAGGED_V2).await;
        server.shutdown().await;
        (kept, lost)
    };
    // Corrupt kept's artifact: it must be detected and recompiled from the module bytes.
    let artifacts = dir.path().join("artifacts");
    for entry in std::fs::read_dir(&artifacts).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(hex(&kept.version)) {
            let mut bytes = std::fs::read(entry.path()).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0xff;
            std::fs::write(entry.path(), bytes).unwrap();
        }
        if name.starts_with(hex(&lost.version)) {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
    // Lose lost's module bytes and artifact entirely.
    std::fs::remove_file(
        dir.path()
            .join("modules")
            .join(format!("{}.wasm", hex(&lost.version))),
    )
    .unwrap();

    let server = TestServer::start_with(config(dir.path())).await;
    assert_eq!(server.get("/kept").await, (StatusCode::OK, "v1".into()));
    assert_eq!(
        compiles(&server),
        1,
        "only the corrupt artifact was recompiled"
    );
    // Its prefix stays reserved for it until it is deployed again or deleted.
    assert_eq!(server.get("/lost").await.0, StatusCode::SERVICE_UNAVAILABLE);
    let list: RouteList = server.read("/v1/routes").await;
    let unavailable = &list.unavailable[0];
    assert_eq!(unavailable.route, "lost", "{list:?}");
    assert!(unavailable.reason.contains("cannot be read"), "{list:?}");
    // Redeploying the lost route brings it back.
    server.deploy("lost", guests::TAGGED_V2).await;
    assert_eq!(server.get("/lost").await.1, "v2");
    let list: RouteList = server.read("/v1/routes").await;
    assert!(list.unavailable.is_empty(), "{list:?}");
    server.shutdown().await;
    // The recompiled artifact was rewritten: the next restart compiles nothing.
    let server = TestServer::start_with(config(dir.path())).await;
    assert_eq!(compiles(&server), 0);
    assert_eq!(server.get("/kept").await.1, "v1");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_bytes_go_only_when_unreferenced_and_drained() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(Config {
        history_limit: 1,
        ..config(dir.path())
    })
    .await;
    let v1 = server.deployed("gc", guests::TAGGED_V1).await;
    let module = |v: &Deployed| {
        dir.path()
            .join("modules")
            .join(format!("{}.wasm", hex(&v.version)))
    };
    assert!(module(&v1).exists());

    // Hold a request on v1, then replace it: history keeps only v2, but v1 still drains.
    let mut conn = Connection::open(server.data).await;
    let response = conn
        .send(get_request("/gc?chunks=20&delay_ms=150"))
        .await
        .unwrap();
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    let v2 = server.deployed("gc", guests::TAGGED_V2).await;
    // Give a garbage collection every chance to (wrongly) run, then check v1 survived.
    server.deploy("unrelated", guests::HOSTILE).await;
    assert_eq!(
        server.route("gc").await.draining[0].version.in_flight,
        1,
        "v1 still drains"
    );
    assert!(module(&v1).exists(), "v1 is draining: its bytes must stay");

    let rest = body.collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&rest).ends_with("v1 19\n"));
    eventually("v1's bytes to be collected", GENEROUS, || async {
        (!module(&v1).exists()).then_some(())
    })
    .await;
    assert!(module(&v2).exists(), "the active version's bytes stay");
    let (code, _) = server
        .post_json("/v1/routes/gc/rollback", json!({"version": v1.version}))
        .await;
    assert_eq!(
        code,
        StatusCode::NOT_FOUND,
        "v1 left the history and its module is gone"
    );
    server.shutdown().await;
}
