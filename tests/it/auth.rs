//! The admin API with tokens: 401 without a valid one, 403 for a read-only one on a mutation,
//! the token's name recorded in the history, no secret ever echoed; and no open admin API
//! on a non-loopback address.

use bytes::Bytes;
use handoff::api::{History, RouteStatus};
use handoff::auth::{Scope, Token};
use handoff::config::Config;
use handoff::server::Server;
use handoff_tests::{TestServer, detail, guests, send, typed};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;

const DEPLOYER: &str = "deployer-secret-0123456789";
const READER: &str = "reader-secret-0123456789";

async fn admin(
    server: &TestServer,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value, http::HeaderMap) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .header("content-type", "application/wasm");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let req = req.body(Full::new(Bytes::from(body))).unwrap();
    let mut conn = handoff_tests::Connection::open(server.admin).await;
    let response = conn.send(req).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = http_body_util::BodyExt::collect(body)
        .await
        .unwrap()
        .to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    assert!(
        !text.contains("secret-0123"),
        "a response echoed a token: {text}"
    );
    (
        parts.status,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
        parts.headers,
    )
}

/// A server with a `deploy` token `ci` ([`DEPLOYER`]) and a `read` token `reader` ([`READER`]).
fn with_tokens(reader: &str) -> Config {
    Config {
        admin_tokens: vec![
            Token::new("ci", Scope::Deploy, DEPLOYER).unwrap(),
            Token::new(reader, Scope::Read, READER).unwrap(),
        ],
        ..Config::ephemeral()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_the_admin_api_by_scope() {
    let server = TestServer::start_with(with_tokens("dashboard")).await;
    let wasm = guests::bytes(guests::TAGGED_V1);

    for (token, detail) in [
        (None, "authorization: bearer"),
        (Some("wrong-token-0123456789"), "not valid"),
        (Some(""), "bearer"),
    ] {
        let (status, body, headers) =
            admin(&server, Method::PUT, "/v1/routes/app", token, wasm.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(headers.contains_key("www-authenticate"));
        assert!(
            self::detail(&body).to_lowercase().contains(detail),
            "{body}"
        );
        let (status, _, _) = admin(&server, Method::GET, "/v1/routes", token, vec![]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        server.get("/app").await.0,
        StatusCode::NOT_FOUND,
        "nothing deployed"
    );

    // A read-only token reads but may not deploy.
    let (status, body, _) = admin(
        &server,
        Method::PUT,
        "/v1/routes/app",
        Some(READER),
        wasm.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(detail(&body).contains("`dashboard`"), "{body}");
    let (status, _, _) = admin(&server, Method::GET, "/v1/routes", Some(READER), vec![]).await;
    assert_eq!(status, StatusCode::OK);

    // The deploy token deploys, and its name is in the history.
    let (status, body, _) = admin(
        &server,
        Method::PUT,
        "/v1/routes/app",
        Some(DEPLOYER),
        wasm.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(server.get("/app").await.1, "v1");
    let (status, history, _) = admin(
        &server,
        Method::GET,
        "/v1/routes/app/versions",
        Some(READER),
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(typed::<History>(&history).versions[0].by, "ci", "{history}");
    let (status, _, _) = admin(
        &server,
        Method::DELETE,
        "/v1/routes/app",
        Some(READER),
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(server.get("/app").await.1, "v1");

    // Health stays open for load balancers.
    let (status, _) = send(
        server.admin,
        Request::get("/healthz")
            .header("host", "admin")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_admin_api_refuses_a_non_loopback_address() {
    let error = Server::start(Config {
        admin_listen: "0.0.0.0:0".parse().unwrap(),
        ..Config::ephemeral()
    })
    .await
    .err()
    .expect("refused");
    let text = format!("{error:#}");
    assert!(text.contains("without any token"), "{text}");
    // With a token it starts (still bound to 0.0.0.0:0 only for this check).
    let server = Server::start(Config {
        admin_listen: "0.0.0.0:0".parse().unwrap(),
        admin_tokens: vec![Token::new("ci", Scope::Deploy, DEPLOYER).unwrap()],
        ..Config::ephemeral()
    })
    .await
    .expect("starts with a token");
    server.shutdown().await;
}

/// `GET /metrics` with `token`: status and text.
async fn scrape(server: &TestServer, token: Option<&str>) -> (StatusCode, String) {
    let mut req = Request::builder().uri("/metrics").header("host", "admin");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let (status, body) = send(server.admin, req.body(Full::new(Bytes::new())).unwrap()).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The value of the sample line that starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_per_route_and_version_for_a_read_token() {
    let server = TestServer::start_with(with_tokens("grafana")).await;
    for (route, guest) in [("app", guests::TAGGED_V1), ("hostile", guests::HOSTILE)] {
        let (status, body, _) = admin(
            &server,
            Method::PUT,
            &format!("/v1/routes/{route}"),
            Some(DEPLOYER),
            guests::bytes(guest),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    for _ in 0..3 {
        assert_eq!(server.get("/app").await.0, StatusCode::OK);
    }
    assert_eq!(
        server.get("/hostile/trap").await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );

    assert_eq!(scrape(&server, None).await.0, StatusCode::UNAUTHORIZED);
    let (status, text) = scrape(&server, Some(READER)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(
        text.contains("# TYPE handoff_route_requests_total counter"),
        "{text}"
    );
    assert_eq!(
        sample(&text, "handoff_route_requests_total{route=\"app\"}"),
        Some(3.0),
        "{text}"
    );
    let (_, status, _) = admin(
        &server,
        Method::GET,
        "/v1/routes/hostile",
        Some(READER),
        vec![],
    )
    .await;
    let hostile = typed::<RouteStatus>(&status).active.version;
    assert_eq!(
        sample(
            &text,
            &format!(
                "handoff_version_failures_total{{route=\"hostile\",version=\"{hostile}\",state=\"active\"}}"
            )
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "handoff_compiles_total"), Some(2.0), "{text}");
    assert_eq!(
        sample(&text, "handoff_compile_workers"),
        Some(0.0),
        "{text}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_token_sees_config_keys_but_not_their_values() {
    let server = TestServer::start_with(with_tokens("dashboard")).await;
    let (status, body, _) = admin(
        &server,
        Method::PUT,
        "/v1/routes/app?config=API_KEY=hunter2-secret&config=MODE=fast",
        Some(DEPLOYER),
        guests::bytes(guests::TAGGED_V1),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    for path in ["/v1/routes", "/v1/routes/app", "/v1/routes/app/versions"] {
        // `read`: every key, no value.
        let (status, body, _) = admin(&server, Method::GET, path, Some(READER), vec![]).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        let text = body.to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("fast"),
            "{path}: {text}"
        );
        assert!(
            text.contains("API_KEY") && text.contains("MODE"),
            "{path}: {text}"
        );
        assert_eq!(text.matches("(redacted)").count(), 2, "{path}: {text}");
        // `deploy`: the values.
        let (status, body, _) = admin(&server, Method::GET, path, Some(DEPLOYER), vec![]).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        let text = body.to_string();
        assert!(
            text.contains("hunter2-secret") && text.contains("fast"),
            "{path}: {text}"
        );
        assert!(!text.contains("(redacted)"), "{path}: {text}");
    }
    let (_, route, _) = admin(&server, Method::GET, "/v1/routes/app", Some(READER), vec![]).await;
    assert_eq!(
        typed::<RouteStatus>(&route).config["API_KEY"],
        "(redacted)",
        "{route}"
    );
    server.shutdown().await;

    // Without tokens (loopback only) everyone may deploy, so everyone sees the values.
    let open = TestServer::start().await;
    let (status, body) = open
        .deploy_bytes(
            "app",
            "?config=API_KEY=hunter2-secret",
            guests::bytes(guests::TAGGED_V1),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(open.route("app").await.config["API_KEY"], "hunter2-secret");
    open.shutdown().await;
}
