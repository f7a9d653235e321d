//! The key-value store guests share: exact totals under concurrency, compare-and-swap under
//! contention, buckets per route and by grant, limits that reach the guest as the interface's
//! error, shadow runs that never write, and guests not built with the SDK (plain `wit-bindgen`
//! bindings of both drafts).

use std::time::{Duration, Instant};

use handoff::api::ShadowStatus;
use handoff_tests::{
    Connection, TestServer, assert_each_value_once, detail, eventually, guests, increments,
};
use http::{Method, StatusCode};
use serde_json::json;

/// A bound against hangs only.
const LIMIT: Duration = Duration::from_secs(180);
/// How long background work (shadow copies) may take to show.
const GENEROUS: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_clients_times_a_thousand_increments_make_the_exact_total() {
    const CLIENTS: usize = 32;
    const EACH: usize = 1000;
    let server = TestServer::start().await;
    server.deploy("count", guests::KV_PLAIN).await;
    let deadline = Instant::now() + LIMIT;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(increments(
                server.data,
                "/count/incr?key=hits",
                EACH,
                deadline,
            ))
        })
        .collect();
    let mut all = Vec::with_capacity(CLIENTS * EACH);
    for client in clients {
        all.extend(client.await.unwrap());
    }
    // Every increment answered a distinct value: 1..=32,000, each exactly once.
    assert_each_value_once(all, (CLIENTS * EACH) as u64);
    let (status, body) = server.get("/count/get?key=hits").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "32000"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_swap_under_contention_loses_no_update() {
    const CLIENTS: usize = 16;
    const EACH: usize = 50;
    let server = TestServer::start().await;
    server.deploy("cas", guests::KV_PLAIN).await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let addr = server.data;
        clients.push(tokio::spawn(async move {
            let mut conn = Connection::open(addr).await;
            let mut attempts = 0;
            for _ in 0..EACH {
                let (status, body) = conn.get_text("/cas/cas-incr?key=n").await;
                assert_eq!(status, StatusCode::OK, "{body}");
                let (_, tries) = body.split_once(' ').expect("VALUE ATTEMPTS");
                attempts += tries.parse::<usize>().unwrap();
            }
            attempts
        }));
    }
    let mut attempts = 0;
    for client in clients {
        attempts += client.await.unwrap();
    }
    let (_, total) = server.get("/cas/get?key=n").await;
    assert_eq!(total, (CLIENTS * EACH).to_string());
    // Swaps that lost were retried, not applied: more attempts than updates.
    assert!(
        attempts > CLIENTS * EACH,
        "no contention happened ({attempts} attempts)"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_wit_bindgen_guest_uses_both_drafts_on_one_bucket() {
    let server = TestServer::start().await;
    server.deploy("plain", guests::KV_PLAIN).await;
    let mut conn = Connection::open(server.data).await;
    // One counter, whichever draft increments it.
    for i in 1..=5 {
        assert_eq!(
            conn.get_text("/plain/incr?key=n").await.1,
            (2 * i - 1).to_string()
        );
        assert_eq!(
            conn.get_text("/plain/incr-draft?key=n").await.1,
            (2 * i).to_string()
        );
    }
    assert_eq!(conn.get_text("/plain/incr?key=n&by=-10").await.1, "0");
    // The older draft's counters are unsigned: an increment that leaves one negative is
    // refused, and the refusal changes nothing.
    assert_eq!(conn.get_text("/plain/incr?key=neg&by=-5").await.1, "-5");
    for _ in 0..2 {
        let (status, refusal) = conn.get_text("/plain/incr-draft?key=neg").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{refusal}");
        assert!(refusal.contains("unchanged"), "{refusal}");
        assert_eq!(conn.get_text("/plain/get?key=neg").await.1, "-5");
    }
    assert_eq!(conn.get_text("/plain/incr?key=neg&by=4").await.1, "-1");
    assert_eq!(conn.get_text("/plain/incr-draft?key=neg").await.1, "0");
    assert_eq!(conn.get_text("/plain/batch?n=1500").await.1, "1500");
    // 1,502 keys: more than one page, through string and u64 cursors alike.
    for list in ["/plain/list", "/plain/list-draft"] {
        let (status, keys) = conn.get_text(list).await;
        assert_eq!(status, StatusCode::OK);
        let keys: Vec<&str> = keys.lines().collect();
        assert_eq!(keys.len(), 1502, "{list}");
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{list}: in order");
    }
    assert_eq!(
        conn.get_text("/plain/get?key=absent").await.0,
        StatusCode::NOT_FOUND
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_opens_its_own_bucket_and_only_the_shared_ones_it_was_granted() {
    let server = TestServer::start().await;
    let plain = guests::bytes(guests::KV_PLAIN);
    server.deploy_bytes("a", "", plain.clone()).await;
    server.deploy_bytes("b", "?kv=orders", plain.clone()).await;
    // Each route's `default` is its own.
    server.get("/a/set?key=k&value=from-a").await;
    assert_eq!(server.get("/b/get?key=k").await.0, StatusCode::NOT_FOUND);
    // Not granted: no-such-store, as the interface says.
    let (status, body) = server.get("/a/set?bucket=orders&key=k&value=x").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::NOT_FOUND, "no-such-store")
    );
    assert_eq!(
        server
            .get("/b/set?bucket=orders&key=k&value=from-b")
            .await
            .0,
        StatusCode::OK
    );
    // Granted to both: one bucket, shared deliberately.
    let (status, body) = server.deploy_bytes("a", "?kv=orders", plain.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(server.get("/a/get?bucket=orders&key=k").await.1, "from-b");
    assert_eq!(server.route("a").await.kv, ["orders"]);
    // A deploy without `kv` keeps the grants; a lone empty one clears them.
    server.deploy_bytes("a", "?config=X=1", plain.clone()).await;
    assert_eq!(server.route("a").await.kv, ["orders"]);
    server.deploy_bytes("a", "?kv=", plain.clone()).await;
    assert!(server.route("a").await.kv.is_empty());
    assert_eq!(
        server.get("/a/get?bucket=orders&key=k").await.0,
        StatusCode::NOT_FOUND
    );
    // Bad names are refused before anything changes.
    for bad in ["default", "Orders", "a/b", ""] {
        if bad.is_empty() {
            continue;
        }
        let (status, body) = server
            .deploy_bytes("a", &format!("?kv={bad}"), plain.clone())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_and_size_errors_reach_the_guest_and_other_routes_are_unaffected() {
    let server = TestServer::start().await;
    let plain = guests::bytes(guests::KV_PLAIN);
    let (status, body) = server
        .deploy_bytes(
            "small",
            "?kv-max-value=1KiB&kv-max-keys=10&kv-max-bytes=1MiB",
            plain.clone(),
        )
        .await;
    assert!(status.is_success(), "{body}");
    assert_eq!(server.route("small").await.limits.kv_max_keys, 10);
    server.deploy("neighbour", guests::TAGGED_V1).await;
    let mut neighbour = Connection::open(server.data).await;
    // Each refusal twice: the guest gets the interface's error, never a trap, and the server
    // and the neighbour route carry on.
    for _ in 0..2 {
        let (status, body) = server.get("/small/big?key=big&bytes=2048").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            body.starts_with("other: ") && body.contains("kv-max-value"),
            "{body}"
        );
        let (status, body) = server.get("/small/fill?n=20").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            body.starts_with("wrote 10; other: bucket `default` is full"),
            "{body}"
        );
        assert!(body.contains("kv-max-keys"), "{body}");
        let long_key = "k".repeat(2000);
        let (status, body) = server
            .get(&format!("/small/set?key={long_key}&value=v"))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body.contains("at most 1024 bytes"), "{body}");
        assert_eq!(
            neighbour.get_text("/neighbour").await,
            (StatusCode::OK, "v1".into())
        );
    }
    // The byte quota, on a route of its own.
    server
        .deploy_bytes("tiny", "?kv-max-bytes=2KiB", plain.clone())
        .await;
    for key in ["b1", "b2"] {
        let (status, body) = server.get(&format!("/tiny/big?key={key}&bytes=1000")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, body) = server.get("/tiny/big?key=b3&bytes=1000").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body.contains("at most 2048 bytes") && body.contains("kv-max-bytes"),
        "{body}"
    );
    // Replacing a key never needs a new one; the failures show in /metrics.
    assert_eq!(
        server.get("/small/set?key=fill-3&value=again").await.0,
        StatusCode::OK
    );
    let (_, metrics) = server.admin(Method::GET, "/metrics").await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    let errors = metrics
        .lines()
        .find(|l| l.starts_with("handoff_kv_errors_total{scope=\"route\",bucket=\"small\"}"))
        .unwrap_or_else(|| panic!("no error count in {metrics}"));
    assert!(errors.ends_with(" 6"), "{errors}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_run_reads_real_data_and_its_writes_are_discarded() {
    let server = TestServer::start().await;
    server.deploy("app", guests::KV_PLAIN).await;
    let shadow = server.upload(guests::KV_PLAIN).await;
    let (status, body) = server
        .admin_json(
            Method::PUT,
            "/v1/routes/app/shadow",
            json!({"version": shadow, "percent": 100}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut conn = Connection::open(server.data).await;
    for i in 1..=20 {
        assert_eq!(conn.get_text("/app/incr?key=n").await.1, i.to_string());
        assert_eq!(
            conn.get_text("/app/set?key=last&value=real").await.0,
            StatusCode::OK
        );
    }
    let figures = eventually("every copy to be run", GENEROUS, || async {
        let figures: ShadowStatus = server.read("/v1/routes/app/shadow").await;
        (figures.counts.requests == 40).then_some(figures)
    })
    .await;
    assert_eq!(figures.counts.errors, 0, "{figures:?}");
    // The copies incremented too, in their scratch overlays: the count is the stable's alone.
    assert_eq!(server.get("/app/get?key=n").await.1, "20");
    server.shutdown().await;
}

/// An admin request with a bearer token and an optional JSON body.
async fn admin_as(
    server: &TestServer,
    method: Method,
    path: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value) {
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .header("authorization", format!("Bearer {token}"));
    let bytes = match body {
        Some(body) => {
            req = req.header("content-type", "application/json");
            bytes::Bytes::from(body.to_string())
        }
        None => bytes::Bytes::new(),
    };
    let (status, body) = handoff_tests::send(
        server.admin,
        req.body(http_body_util::Full::new(bytes)).unwrap(),
    )
    .await;
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_token_lists_keys_but_values_need_deploy_and_data_outlives_the_route() {
    use handoff::auth::{Scope, Token};
    const DEPLOYER: &str = "kv-deployer-secret-0123456789";
    const READER: &str = "kv-reader-secret-0123456789";
    let server = TestServer::start_with(handoff::config::Config {
        admin_tokens: vec![
            Token::new("ci", Scope::Deploy, DEPLOYER).unwrap(),
            Token::new("dashboard", Scope::Read, READER).unwrap(),
        ],
        ..handoff::config::Config::ephemeral()
    })
    .await;
    let (status, body) = admin_as(
        &server,
        Method::PUT,
        "/v1/routes/app/kv/keys/a%2Fb",
        DEPLOYER,
        Some(json!({"value": "secret"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) =
        admin_as(&server, Method::GET, "/v1/routes/app/kv/keys", READER, None).await;
    assert_eq!(
        (status, &body["keys"]),
        (StatusCode::OK, &json!(["a/b"])),
        "{body}"
    );
    let (status, body) = admin_as(
        &server,
        Method::GET,
        "/v1/routes/app/kv/keys/a/b",
        READER,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    for path in ["/v1/routes/app/kv/keys/a/b", "/v1/routes/app/kv/export"] {
        let (status, _) = admin_as(&server, Method::GET, path, READER, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }
    let (status, body) = admin_as(
        &server,
        Method::GET,
        "/v1/routes/app/kv/keys/a/b",
        DEPLOYER,
        None,
    )
    .await;
    assert_eq!(
        (status, &body["value"]),
        (StatusCode::OK, &json!("secret")),
        "{body}"
    );
    let (status, _) = admin_as(
        &server,
        Method::PUT,
        "/v1/routes/app/kv/keys/k",
        READER,
        Some(json!({"value": "x"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // The bucket belongs to the route's name: deleted and deployed again, the route finds it.
    let deploy = |server: &TestServer| {
        let req = http::Request::builder()
            .method(Method::PUT)
            .uri("/v1/routes/app")
            .header("host", "admin")
            .header("authorization", format!("Bearer {DEPLOYER}"))
            .header("content-type", "application/wasm")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                guests::bytes(guests::KV_PLAIN),
            )))
            .unwrap();
        handoff_tests::send(server.admin, req)
    };
    assert!(deploy(&server).await.0.is_success());
    assert_eq!(server.get("/app/get?key=a/b").await.1, "secret");
    let (status, _) = admin_as(&server, Method::DELETE, "/v1/routes/app", DEPLOYER, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(deploy(&server).await.0.is_success());
    assert_eq!(server.get("/app/get?key=a/b").await.1, "secret");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_imports_back_whatever_the_component_upload_limit() {
    use bytes::Bytes;
    use http_body_util::Full;
    // Components may be at most 256 KiB here; a bucket holds a 300 KB value.
    let server = TestServer::start_with(handoff::config::Config {
        max_upload_bytes: 256 << 10,
        ..handoff::config::Config::ephemeral()
    })
    .await;
    server.deploy("app", guests::KV_PLAIN).await;
    server.deploy("copy", guests::KV_PLAIN).await;
    let big = "v".repeat(300_000);
    let (status, body) = server
        .admin_json(
            Method::PUT,
            "/v1/routes/app/kv/keys/big",
            json!({"value": big}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let export = http::Request::builder()
        .uri("/v1/routes/app/kv/export")
        .header("host", "admin")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, exported) = handoff_tests::send(server.admin, export).await;
    assert_eq!(status, StatusCode::OK);
    assert!(exported.len() > 256 << 10, "{} bytes", exported.len());
    let import = http::Request::builder()
        .method(Method::POST)
        .uri("/v1/routes/copy/kv/import")
        .header("host", "admin")
        .header("content-type", "application/x-ndjson")
        .body(Full::new(Bytes::from(exported)))
        .unwrap();
    let (status, body) = handoff_tests::send(server.admin, import).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let (status, value) = server.get("/copy/get?key=big").await;
    assert_eq!((status, value.len()), (StatusCode::OK, 300_000));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_value_over_the_largest_kv_max_value_is_413_naming_the_limit() {
    // The same answer as a cluster gives a value over its NATS max_payload
    // (`cluster_limits::values_and_route_records_at_the_payload_limit`).
    let server = TestServer::start().await;
    let limit = handoff::settings::MAX_KV_VALUE as usize;
    let (status, body) = server
        .admin_json(
            Method::PUT,
            "/v1/kv/shared-big/keys/k",
            json!({ "value": "x".repeat(limit + 1) }),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let said = detail(&body);
    assert!(
        said.contains(&limit.to_string()) && said.contains("kv-max-value"),
        "{said}"
    );
    let (status, _) = server.admin(Method::GET, "/v1/kv/shared-big/keys/k").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was written");
    server.shutdown().await;
}
