//! The admin API under a `read` token and against clients that hold their side back (issue 21,
//! items 12-14): reads create nothing, shadow samples are redacted for `read`, and a body or
//! an event stream that does not move is bounded.

use std::time::Duration;

use bytes::Bytes;
use handoff::auth::{Scope, Token};
use handoff::config::Config;
use handoff_tests::{Connection, TestServer, eventually, guests};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const DEPLOYER: &str = "deployer-secret-0123456789";
const READER: &str = "reader-secret-0123456789";

fn with_tokens() -> Config {
    Config {
        admin_tokens: vec![
            Token::new("ci", Scope::Deploy, DEPLOYER).unwrap(),
            Token::new("viewer", Scope::Read, READER).unwrap(),
        ],
        ..Config::ephemeral()
    }
}

/// `method path` on the admin API with `token`, a JSON body when given.
async fn call(
    server: &TestServer,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .header("authorization", format!("Bearer {token}"));
    let bytes = match body {
        Some(body) => {
            req = req.header("content-type", "application/json");
            Bytes::from(serde_json::to_vec(&body).unwrap())
        }
        None => Bytes::new(),
    };
    let (status, body) =
        handoff_tests::send(server.admin, req.body(Full::new(bytes)).unwrap()).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn deploy(server: &TestServer, route: &str, guest: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(Method::PUT)
        .uri(format!("/v1/routes/{route}"))
        .header("host", "admin")
        .header("authorization", format!("Bearer {DEPLOYER}"))
        .header("content-type", "application/wasm")
        .body(Full::new(Bytes::from(guests::bytes(guest))))
        .unwrap();
    let (status, body) = handoff_tests::send(server.admin, req).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_create_nothing_and_unknown_buckets_are_404() {
    let server = TestServer::start_with(with_tokens()).await;
    let rt = server.server().runtime().clone();
    for path in [
        "/v1/kv/nobody/keys",
        "/v1/kv/nobody/keys/k",
        "/v1/kv/nobody/export",
        "/v1/routes/ghost/kv/keys",
    ] {
        let (status, body) = call(&server, Method::GET, path, READER, None).await;
        let wanted = match path.ends_with("/keys") {
            true => StatusCode::NOT_FOUND,
            // Values need `deploy`.
            false => StatusCode::FORBIDDEN,
        };
        assert_eq!(status, wanted, "{path}: {body}");
        let (status, body) = call(&server, Method::GET, path, DEPLOYER, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert!(
            body["detail"].as_str().is_some_and(|d| d.contains("no ")),
            "{body}"
        );
    }
    let (status, _) = call(
        &server,
        Method::DELETE,
        "/v1/kv/nobody/keys/k",
        DEPLOYER,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(rt.kv.buckets().is_empty(), "no bucket handle was made");

    // A change to an unknown route that fails leaves no route state behind.
    let ghost = handoff::names::RouteName::parse("ghost").unwrap();
    let (status, _) = call(&server, Method::DELETE, "/v1/routes/ghost", DEPLOYER, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(
        &server,
        Method::POST,
        "/v1/routes/ghost/rollback",
        DEPLOYER,
        None,
    )
    .await;
    assert!(status.is_client_error(), "{status}");
    assert!(rt.registry.get(&ghost).is_none(), "no registry entry");
    assert!(rt.kv.buckets().is_empty());

    // A bucket that exists reads as before: a route's own, and a shared one written to.
    let (status, body) = deploy(&server, "app", guests::TAGGED_V1).await;
    assert!(status.is_success(), "{body}");
    let (status, body) = call(&server, Method::GET, "/v1/routes/app/kv/keys", READER, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(
        &server,
        Method::PUT,
        "/v1/kv/shared-one/keys/k",
        DEPLOYER,
        Some(json!({"value": "v"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(&server, Method::GET, "/v1/kv/shared-one/keys", READER, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["keys"], json!(["k"]));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_to_an_unknown_route_leaves_nothing_when_the_state_log_cannot_be_read() {
    let server = TestServer::start_with(with_tokens()).await;
    let rt = server.server().runtime().clone();
    let (status, body) = deploy(&server, "app", guests::TAGGED_V1).await;
    assert!(status.is_success(), "{body}");
    // The state log stops answering under the server (as a disk error or a JetStream timeout
    // would; here it is closed as a takeover closes it, without the admin API knowing).
    rt.handover
        .state
        .as_ref()
        .expect("one node: a closable state log")
        .release()
        .await;
    for name in ["ghost-1", "ghost-2", "ghost-3", "app"] {
        for (method, path) in [
            (Method::DELETE, format!("/v1/routes/{name}")),
            (Method::POST, format!("/v1/routes/{name}/rollback")),
        ] {
            let (status, body) = call(&server, method.clone(), &path, DEPLOYER, None).await;
            assert_eq!(
                status,
                StatusCode::INTERNAL_SERVER_ERROR,
                "{method} {path}: {body}"
            );
        }
    }
    for name in ["ghost-1", "ghost-2", "ghost-3"] {
        let name = handoff::names::RouteName::parse(name).unwrap();
        assert!(
            rt.registry.get(&name).is_none(),
            "a failed change to unknown route {name:?} left route state"
        );
    }
    // A route that exists keeps its state, and serves as before.
    let app = handoff::names::RouteName::parse("app").unwrap();
    assert!(rt.registry.get(&app).is_some(), "the route's state is kept");
    let (status, text) = server.get("/app").await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "v1"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_token_sees_shadow_samples_without_queries_or_bodies() {
    let server = TestServer::start_with(with_tokens()).await;
    let (status, body) = deploy(&server, "app", guests::TAGGED_V1).await;
    assert!(status.is_success(), "{body}");
    let upload = Request::builder()
        .method(Method::POST)
        .uri("/v1/modules")
        .header("host", "admin")
        .header("authorization", format!("Bearer {DEPLOYER}"))
        .header("content-type", "application/wasm")
        .body(Full::new(Bytes::from(guests::bytes(guests::TAGGED_V1B))))
        .unwrap();
    let (status, body) = handoff_tests::send(server.admin, upload).await;
    assert!(status.is_success(), "{status}");
    let changed: Value = serde_json::from_slice(&body).unwrap();
    let (status, body) = call(
        &server,
        Method::PUT,
        "/v1/routes/app/shadow",
        DEPLOYER,
        Some(json!({"version": changed["version"], "percent": 100})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut conn = Connection::open(server.data).await;
    for _ in 0..3 {
        let (status, _) = conn.get("/app/changed?token=hunter2").await.unwrap();
        assert_eq!(status, StatusCode::OK);
    }
    let sample = |figures: &Value| figures["samples"][0].clone();
    let deployer = eventually("a mismatch sample", Duration::from_secs(60), || async {
        let (_, figures) = call(
            &server,
            Method::GET,
            "/v1/routes/app/shadow",
            DEPLOYER,
            None,
        )
        .await;
        (figures["mismatches"] == 3).then_some(figures)
    })
    .await;
    assert_eq!(sample(&deployer)["path"], "/app/changed?token=hunter2");
    assert_eq!(sample(&deployer)["shadow_start"], "v1 changed");
    for path in ["/v1/routes/app/shadow", "/v1/routes/app", "/v1/routes"] {
        let (status, body) = call(&server, Method::GET, path, READER, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let text = body.to_string();
        for secret in ["hunter2", "v1 changed", "\"v1\""] {
            assert!(!text.contains(secret), "{path} shows {secret}: {text}");
        }
        let figures = match path {
            "/v1/routes/app/shadow" => body.clone(),
            "/v1/routes/app" => body["shadow"].clone(),
            _ => body["routes"][0]["shadow"].clone(),
        };
        let shown = sample(&figures);
        assert_eq!(shown["path"], "/app/changed?(redacted)", "{body}");
        assert_eq!(shown["stable_start"], "(redacted)");
        assert_eq!(shown["shadow_status"], 200);
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_body_held_back_is_answered_408_and_frees_the_route() {
    let server = TestServer::start_with(Config {
        upload_timeout: Duration::from_secs(1),
        ..Config::ephemeral()
    })
    .await;
    server.deploy("app", guests::TAGGED_V1).await;
    for (path, method) in [
        ("/v1/routes/app/rollback", "POST"),
        ("/v1/routes/app/rollout", "POST"),
        ("/v1/routes/app/kv/keys/k", "PUT"),
    ] {
        let mut stream = tokio::net::TcpStream::connect(server.admin).await.unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: admin\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no answer while the body is held back"))
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..read]).into_owned();
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "{method} {path}: {answer}"
        );
    }
    // The route is free for the next change.
    let (status, body) = server
        .deploy_bytes("app", "", guests::bytes(guests::TAGGED_V2))
        .await;
    assert!(status.is_success(), "{body}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_nobody_reads_never_lock_the_admin_api_out() {
    let server = TestServer::start().await;
    // More never-reading event streams than the admin listener has connections (64).
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..70 {
        let mut stream = tokio::net::TcpStream::connect(server.admin).await.unwrap();
        stream
            .write_all(b"GET /v1/events HTTP/1.1\r\nhost: admin\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        let answered =
            tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut head)).await;
        match answered {
            // Refused: the client goes.
            Ok(Ok(_)) if head.starts_with(b"HTTP/1.1 503") => refused += 1,
            Ok(Ok(_)) => {
                assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
                held.push(stream);
            }
            _ => panic!("an event stream got no answer: the admin listener is full"),
        }
    }
    assert_eq!(refused, 70 - 32, "at most 32 streams at once");
    // The admin API still answers.
    let answered = tokio::time::timeout(
        Duration::from_secs(5),
        server.admin(Method::GET, "/v1/routes"),
    )
    .await;
    assert!(matches!(answered, Ok((StatusCode::OK, _))), "{answered:?}");
    drop(held);
    server.shutdown().await;
}
