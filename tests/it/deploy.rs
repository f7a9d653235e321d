//! Deploy, replace, delete, routing by prefix, and independent routes.

use std::time::Duration;

use handoff::api::{Deployed, Problem, RouteList};
use handoff_tests::{TestServer, guests, typed};
use http::{Method, StatusCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_replace_and_delete_a_route() {
    let server = TestServer::start().await;

    let first = server.deployed("app", guests::TAGGED_V1).await;
    assert!(first.created);
    assert_eq!(first.prefix, "/app");
    assert!(first.version.starts_with("sha256:"));
    assert_eq!(first.previous_version, None);
    assert!(first.compile_ms.is_some_and(|ms| ms > 0.0), "{first:?}");
    assert_eq!(server.get("/app").await, (StatusCode::OK, "v1".into()));
    assert_eq!(
        server.get("/app/any/path").await,
        (StatusCode::OK, "v1".into())
    );

    let second = server.deployed("app", guests::TAGGED_V2).await;
    assert!(!second.created);
    assert!(second.changed);
    assert_eq!(second.previous_version, Some(first.version));
    assert_eq!(server.get("/app").await, (StatusCode::OK, "v2".into()));

    let status = server.route("app").await;
    assert_eq!(status.active.version, second.version);
    assert!(status.requests >= 3, "{status:?}");

    let (code, body) = server.admin(Method::DELETE, "/v1/routes/app").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let (code, body) = server.get("/app").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(body.contains("no route"), "{body}");
    let (code, _) = server.admin(Method::GET, "/v1/routes/app").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, body) = server.admin(Method::DELETE, "/v1/routes/app").await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploying_the_same_bytes_twice_is_a_no_op_that_says_so() {
    let server = TestServer::start().await;
    let first = server.deployed("same", guests::TAGGED_V1).await;
    let again = server.deployed("same", guests::TAGGED_V1).await;
    assert!(!again.changed);
    assert_eq!(again.version, first.version);
    assert_eq!(
        again.compile_ms, None,
        "a no-op deploy compiles nothing: {again:?}"
    );
    assert!(server.route("same").await.draining.is_empty());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longest_prefix_wins_on_segment_boundaries() {
    let server = TestServer::start().await;
    let (code, body) = server
        .deploy_bytes("api", "?prefix=/api", guests::bytes(guests::TAGGED_V1))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let (code, body) = server
        .deploy_bytes(
            "api-v2",
            "?prefix=/api/v2/",
            guests::bytes(guests::TAGGED_V2),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert_eq!(typed::<Deployed>(&body).prefix, "/api/v2");

    assert_eq!(server.get("/api").await.1, "v1");
    assert_eq!(server.get("/api/users").await.1, "v1");
    assert_eq!(server.get("/api/v2").await.1, "v2");
    assert_eq!(server.get("/api/v2/users?x=1").await.1, "v2");
    assert_eq!(server.get("/api/v2x").await.1, "v1");
    assert_eq!(server.get("/apix").await.0, StatusCode::NOT_FOUND);

    // A catch-all at `/` takes what nothing longer matches.
    let (code, body) = server
        .deploy_bytes("root", "?prefix=/", guests::bytes(guests::HOSTILE))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert_eq!(server.get("/apix").await, (StatusCode::OK, "ok".into()));
    assert_eq!(server.get("/api/v2/x").await.1, "v2");

    // A prefix belongs to one route.
    let (code, body) = server
        .deploy_bytes("thief", "?prefix=/api", guests::bytes(guests::TAGGED_V2))
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert!(typed::<Problem>(&body).detail.contains("`api`"), "{body}");
    assert_eq!(server.get("/api").await.1, "v1");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeploy_keeps_the_prefix_unless_told_otherwise() {
    let server = TestServer::start().await;
    server
        .deploy_bytes("svc", "?prefix=/service", guests::bytes(guests::TAGGED_V1))
        .await;
    let body = server.deployed("svc", guests::TAGGED_V2).await;
    assert_eq!(body.prefix, "/service");
    assert_eq!(server.get("/service").await.1, "v2");
    // Same bytes, new prefix: moves without recompiling.
    let (code, body) = server
        .deploy_bytes("svc", "?prefix=/moved", guests::bytes(guests::TAGGED_V2))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let moved: Deployed = typed(&body);
    assert!(moved.changed && moved.compile_ms.is_none(), "{body}");
    assert_eq!(server.get("/moved").await.1, "v2");
    assert_eq!(server.get("/service").await.0, StatusCode::NOT_FOUND);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routes_are_deployed_and_swapped_independently() {
    let server = TestServer::start().await;
    server.deploy("left", guests::TAGGED_V1).await;
    server.deploy("right", guests::TAGGED_V1).await;
    assert_eq!(server.get("/left").await.1, "v1");
    assert_eq!(server.get("/right").await.1, "v1");

    server.deploy("left", guests::TAGGED_V2).await;
    assert_eq!(server.get("/left").await.1, "v2");
    assert_eq!(server.get("/right").await.1, "v1");

    server.deploy("right", guests::TAGGED_V2).await;
    server.deploy("left", guests::TAGGED_V1).await;
    assert_eq!(server.get("/left").await.1, "v1");
    assert_eq!(server.get("/right").await.1, "v2");

    let list: RouteList = server.read("/v1/routes").await;
    let names: Vec<&str> = list.routes.iter().map(|r| r.route.as_str()).collect();
    assert_eq!(names, ["left", "right"]);

    server.admin(Method::DELETE, "/v1/routes/left").await;
    assert_eq!(server.get("/left").await.0, StatusCode::NOT_FOUND);
    assert_eq!(server.get("/right").await.1, "v2");
    server.shutdown().await;
}

/// Read as raw JSON on purpose: the wire format itself (a number for a problem's `status`,
/// an empty `routes` array).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_unknown_admin_paths() {
    let server = TestServer::start().await;
    let (code, body) = server.admin(Method::GET, "/healthz").await;
    assert_eq!(
        (code, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (code, body) = server.admin(Method::GET, "/v2/nothing").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(body["status"], 404);
    let (code, body) = server.admin(Method::POST, "/v1/routes/x").await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    let (code, body) = server.admin(Method::GET, "/v1/routes").await;
    assert_eq!(
        (code, body["routes"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(0))
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_time_config_is_the_guests_only_environment() {
    let server = TestServer::start().await;
    let hostile = guests::bytes(guests::HOSTILE);
    let (code, body) = server
        .deploy_bytes(
            "cfg",
            "?config=GREETING=hello%20there&config=MODE=a%3Db",
            hostile.clone(),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    // Only the config: nothing of the host's environment leaks in, and no files are visible.
    assert_eq!(
        server.get("/cfg/env").await.1,
        "GREETING=hello there\nHANDOFF_ROUTE_PREFIX=/cfg\nMODE=a=b\n"
    );
    assert_eq!(server.get("/cfg/files").await.1, "readable: []");
    let status = server.route("cfg").await;
    assert_eq!(status.config["GREETING"], "hello there");

    // Same bytes, new config: a new version without a recompile.
    let (code, body) = server
        .deploy_bytes("cfg", "?config=GREETING=bye", hostile.clone())
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let reconfigured: Deployed = typed(&body);
    assert!(
        reconfigured.changed && reconfigured.compile_ms.is_none(),
        "{body}"
    );
    assert_eq!(
        server.get("/cfg/env").await.1,
        "GREETING=bye\nHANDOFF_ROUTE_PREFIX=/cfg\n"
    );

    // A deploy without config keeps the route's config; a lone empty `config=` clears it.
    let (_, body) = server.deploy_bytes("cfg", "", hostile.clone()).await;
    assert!(!typed::<Deployed>(&body).changed, "{body}");
    server
        .deploy_bytes("cfg", "?config=", hostile.clone())
        .await;
    assert_eq!(
        server.get("/cfg/env").await.1,
        "HANDOFF_ROUTE_PREFIX=/cfg\n"
    );

    for (query, mentions) in [
        ("?config=NOVALUE", "KEY=VALUE"),
        ("?config=1BAD=x", "not usable"),
        ("?config=A-B=x", "not usable"),
    ] {
        let (code, body) = server.deploy_bytes("cfg", query, hostile.clone()).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
        assert!(typed::<Problem>(&body).detail.contains(mentions), "{body}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_compile_stalls_neither_requests_nor_other_deploys() {
    let server = TestServer::start().await;
    server.deploy("steady", guests::TAGGED_V1).await;
    let slow = handoff_tests::slow_to_compile(20_000);

    let started = std::time::Instant::now();
    let slow_deploy = {
        let admin = server.admin;
        tokio::spawn(async move {
            let req = http::Request::builder()
                .method(Method::PUT)
                .uri("/v1/routes/big")
                .header("host", "admin")
                .header("content-type", "application/wasm")
                .body(http_body_util::Full::new(bytes::Bytes::from(slow)))
                .unwrap();
            let (status, _) = handoff_tests::send(admin, req).await;
            (status, started.elapsed())
        })
    };
    // While it compiles: another route deploys, and the steady route answers.
    let quick = server.deployed("quick", guests::TAGGED_V2).await;
    let quick_done = started.elapsed();
    assert!(quick.created);
    let mut slowest = std::time::Duration::ZERO;
    for _ in 0..20 {
        let t = std::time::Instant::now();
        assert_eq!(server.get("/steady").await, (StatusCode::OK, "v1".into()));
        slowest = slowest.max(t.elapsed());
    }
    let (status, slow_done) = slow_deploy.await.unwrap();
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "no handler export"
    );
    eprintln!(
        "slow compile took {slow_done:?}; meanwhile a deploy finished after {quick_done:?} \
         and the slowest of 20 requests took {slowest:?}"
    );
    // Not a speed claim: the quick deploy must not have queued behind the slow compile (on a
    // shared compile pool it finishes just before it; with its own pool, far sooner).
    assert!(
        quick_done * 2 < slow_done,
        "the quick deploy ({quick_done:?}) waited for the slow compile ({slow_done:?})"
    );
    assert_eq!(server.get("/quick").await.1, "v2");
    server.shutdown().await;
}

/// Versions of the same bytes share one copy of the linked code, across routes and across a
/// restart, and each keeps its own settings; code no version holds is let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_of_the_same_bytes_share_their_code() {
    let dir = tempfile::tempdir().unwrap();
    let config = || handoff::config::Config {
        data_dir: Some(dir.path().to_path_buf()),
        ..handoff::config::Config::ephemeral()
    };
    let code = |server: &TestServer, route: &str| {
        let name = handoff::names::RouteName::parse(route).unwrap();
        let table = server.server().runtime().routes.snapshot();
        match &table.get(&name).unwrap().stable().unwrap().pre {
            handoff::engine::Pre::P2(pre) => pre.clone(),
            handoff::engine::Pre::P3(_) => panic!("a WASI 0.2 guest"),
        }
    };
    let server = TestServer::start_with(config()).await;
    server.deploy("a", guests::TAGGED_V1).await;
    let (status, body) = server
        .deploy_bytes("b", "?config=K=v", guests::bytes(guests::TAGGED_V1))
        .await;
    assert!(status.is_success(), "{body}");
    assert!(std::sync::Arc::ptr_eq(
        &code(&server, "a"),
        &code(&server, "b")
    ));
    assert_eq!(server.get("/b").await, (StatusCode::OK, "v1".into()));
    server.shutdown().await;

    let server = TestServer::start_with(config()).await;
    assert!(
        std::sync::Arc::ptr_eq(&code(&server, "a"), &code(&server, "b")),
        "shared after a restart too"
    );
    assert_eq!(server.route("b").await.config["K"], "v");
    // Both routes move to other bytes: the old code is let go.
    let old = std::sync::Arc::downgrade(&code(&server, "a"));
    server.deploy("a", guests::TAGGED_V2).await;
    server.deploy("b", guests::TAGGED_V2).await;
    handoff_tests::eventually(
        "the old code to be let go",
        Duration::from_secs(10),
        || async { (old.strong_count() == 0).then_some(()) },
    )
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_responses_by_class_kv_bytes_rollout_steps_and_unavailable_routes() {
    let server = TestServer::start().await;
    server.deploy("app", guests::HOSTILE).await;
    server.deploy("kv", guests::KV_PLAIN).await;
    for _ in 0..3 {
        assert_eq!(server.get("/app/ok").await.0, http::StatusCode::OK);
    }
    assert_eq!(
        server.get("/app/trap").await.0,
        http::StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        server.get("/kv/set?key=k&value=vvvv").await.0,
        http::StatusCode::OK
    );
    let candidate = server.upload(guests::TAGGED_V1).await;
    let (status, body) = server
        .post_json(
            "/v1/routes/app/rollout",
            serde_json::json!({"version": candidate, "manual": true}),
        )
        .await;
    assert_eq!(status, http::StatusCode::CREATED, "{body}");

    let (_, metrics) = server.admin(http::Method::GET, "/metrics").await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    let value = |name: &str, labels: &[&str]| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} with {labels:?} in:\n{metrics}"))
    };
    let app = "route=\"app\"";
    assert_eq!(
        value("handoff_version_responses_total{", &[app, "class=\"2xx\""]),
        3.0
    );
    assert_eq!(
        value("handoff_version_responses_total{", &[app, "class=\"5xx\""]),
        1.0
    );
    assert_eq!(
        value("handoff_version_responses_total{", &[app, "class=\"4xx\""]),
        0.0
    );
    // Key and value: "k" and "vvvv".
    assert_eq!(value("handoff_kv_bytes{", &["bucket=\"kv\""]), 5.0);
    assert_eq!(value("handoff_kv_keys{", &["bucket=\"kv\""]), 1.0);
    assert_eq!(value("handoff_rollout_step{", &[app]), 0.0);
    assert_eq!(value("handoff_routes_unavailable ", &[]), 0.0);
    server.shutdown().await;
}
