//! Fail closed: every bad upload gets its 4xx problem document and the route keeps serving its
//! current version, untouched.

use bytes::Bytes;
use handoff::config::{Config, Limits};
use handoff_tests::{TestServer, guests, send};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;

/// Asserts `route` still serves v1 with the digest it had.
async fn still_serves_v1(server: &TestServer, digest: &Value) {
    assert_eq!(server.get("/keep").await, (StatusCode::OK, "v1".into()));
    let status = server.status("keep").await;
    assert_eq!(&status["active"]["version"], digest);
    assert!(
        status["draining"].as_array().unwrap().is_empty(),
        "{status}"
    );
}

fn assert_problem(status: StatusCode, body: &Value, expected: StatusCode, mentions: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["status"], expected.as_u16(), "{body}");
    let detail = body["detail"].as_str().expect("a detail sentence");
    assert!(
        detail.to_lowercase().contains(mentions),
        "detail should mention `{mentions}`: {detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_upload_is_refused_and_the_route_keeps_serving() {
    let server = TestServer::start_with(Config {
        max_upload_bytes: 256 << 10,
        ..Config::ephemeral()
    })
    .await;
    let deployed = server.deploy("keep", guests::TAGGED_V1).await;
    let digest = deployed["version"].clone();

    let v2 = guests::bytes(guests::TAGGED_V2);
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "random bytes",
            b"this is not wasm at all".to_vec(),
            StatusCode::BAD_REQUEST,
            "not a webassembly binary",
        ),
        (
            "empty body",
            Vec::new(),
            StatusCode::BAD_REQUEST,
            "not a webassembly binary",
        ),
        (
            "core module",
            wat::parse_str("(module)").unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "core webassembly module",
        ),
        (
            "truncated component",
            v2[..v2.len() / 2].to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            "component without the handler",
            wat::parse_str("(component)").unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "neither `wasi:http/incoming-handler@0.2.x` (a wasi 0.2 `wasi:http/proxy` component) nor `wasi:http/handler@0.3.x`",
        ),
        (
            // Named like a 0.3 handler, but not one: compiled for the 0.3 engine, refused by
            // linking with the same sentence.
            "a 0.3 handler export of the wrong shape",
            wat::parse_str(
                r#"(component
                    (core module $m (func (export "f")))
                    (core instance $i (instantiate $m))
                    (func $f (canon lift (core func $i "f")))
                    (instance $h (export "handle" (func $f)))
                    (export "wasi:http/handler@0.3.0" (instance $h)))"#,
            )
            .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "nor `wasi:http/handler@0.3.x`",
        ),
        (
            "unsatisfiable import",
            wat::parse_str(
                r#"(component (import "acme:nothing/here" (instance (export "f" (func)))))"#,
            )
            .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "acme:nothing/here",
        ),
        (
            // Async without a 0.3 handler: neither WASI 0.2 proxy nor WASI 0.3 service; the
            // answer names what is accepted.
            "component-model async without a 0.3 handler",
            wat::parse_str(
                r#"(component
                    (core module $m (func (export "f") (result i32) i32.const 0)
                                    (func (export "cb") (param i32 i32 i32) (result i32) i32.const 0))
                    (core instance $i (instantiate $m))
                    (func (export "f") (canon lift (core func $i "f") async (callback (core func $i "cb")))))"#,
            )
            .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "`wasi:http/handler@0.3.x`",
        ),
        (
            "over the size limit",
            [b"\0asm\x0d\0\x01\0".as_slice(), &vec![0u8; 300 << 10]].concat(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "limit",
        ),
    ];
    for (what, bytes, expected, mentions) in cases {
        let (status, body) = server.deploy_bytes("keep", "", bytes).await;
        assert_problem(status, &body, expected, mentions);
        eprintln!("{what}: {status} {}", body["detail"]);
        still_serves_v1(&server, &digest).await;
    }

    // Bad names, prefixes and query parameters.
    for (route, query, mentions) in [
        ("..", "", "not a usable route name"),
        ("%2e%2e", "", "not a usable route name"),
        ("Keep", "", "a-z"),
        ("a%00b", "", "a-z"),
        ("caf%C3%A9", "", "a-z"),
        (&"x".repeat(65), "", "1 to 64"),
        ("keep", "?prefix=nope", "must start with `/`"),
        ("keep", "?prefix=/a/../b", "`..`"),
        ("keep", "?prefx=/typo", "prefix"),
    ] {
        let (status, body) = server.deploy_bytes(route, query, v2.clone()).await;
        assert_problem(status, &body, StatusCode::BAD_REQUEST, mentions);
        still_serves_v1(&server, &digest).await;
    }

    // The wrong content type.
    let req = Request::builder()
        .method(Method::PUT)
        .uri("/v1/routes/keep")
        .header("host", "admin")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v2.clone())))
        .unwrap();
    let (status, body) = send(server.admin, req).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_problem(
        status,
        &body,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "application/wasm",
    );
    still_serves_v1(&server, &digest).await;

    // Problem documents say so in their content type.
    let req = Request::builder()
        .method(Method::PUT)
        .uri("/v1/routes/keep")
        .header("host", "admin")
        .body(Full::new(Bytes::from_static(b"junk")))
        .unwrap();
    let mut conn = handoff_tests::Connection::open(server.admin).await;
    let response = conn.send(req).await.unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );

    // And after all that, a good deploy still works.
    let good = server.deploy("keep", guests::TAGGED_V2).await;
    assert_eq!(good["previous_version"], digest);
    assert_eq!(server.get("/keep").await.1, "v2");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_bombs_and_slow_uploads_are_refused_and_nothing_changes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_with(Config {
        upload_timeout: std::time::Duration::from_millis(500),
        ..Config::ephemeral()
    })
    .await;
    let deployed = server.deploy("keep", guests::TAGGED_V1).await;
    let digest = deployed["version"].clone();

    // A real guest whose instances need more memory than the route allows: refused at deploy
    // (a trial instantiation), not left to fail every request.
    let (status, body) = server
        .deploy_bytes(
            "keep",
            "?max-memory=64KiB",
            guests::bytes(guests::TAGGED_V2),
        )
        .await;
    assert_problem(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "cannot be instantiated",
    );
    still_serves_v1(&server, &digest).await;

    // Declared giants and deep nesting: refused with a 4xx, promptly.
    let deep = format!(
        "(component (core module (func {} {})))",
        "(block ".repeat(5_000),
        ")".repeat(5_000)
    );
    for bomb in [
        "(component (core module (memory 65536)))".to_owned(),
        "(component (core module (table 100000000 funcref)))".to_owned(),
        deep,
    ] {
        let started = std::time::Instant::now();
        let (status, body) = server
            .deploy_bytes("keep", "", wat::parse_str(&bomb).unwrap())
            .await;
        assert!(status.is_client_error(), "{status} {body}");
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
        still_serves_v1(&server, &digest).await;
    }

    // A slow upload: headers, a few bytes, then silence. 408, and the route is untouched.
    let mut slow = tokio::net::TcpStream::connect(server.admin).await.unwrap();
    slow.write_all(
        b"PUT /v1/routes/keep HTTP/1.1\r\nHost: admin\r\nContent-Type: application/wasm\r\n\
          Content-Length: 100000\r\n\r\n\0asm",
    )
    .await
    .unwrap();
    let mut answer = vec![0u8; 512];
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), slow.read(&mut answer))
        .await
        .expect("an answer, not a hang")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    still_serves_v1(&server, &digest).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compile_limits_stop_slow_and_hungry_compiles_and_nothing_changes() {
    let server = TestServer::start_with(Config {
        limits: Limits {
            compile_timeout: std::time::Duration::from_secs(120),
            compile_memory: 4 << 30,
            ..Limits::default()
        },
        ..Config::ephemeral()
    })
    .await;
    let runtime = server.server().runtime();
    let deployed = server.deploy("keep", guests::TAGGED_V1).await;
    let digest = deployed["version"].clone();
    let hungry = handoff_tests::slow_to_compile(20_000);

    // Too slow: the worker is killed at the deadline, before the compile could finish, and
    // nothing is left running.
    let started = std::time::Instant::now();
    let (status, body) = server
        .deploy_bytes("keep", "?compile-timeout=200ms", hungry.clone())
        .await;
    let refused_after = started.elapsed();
    assert_problem(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "longer than the compile-timeout of 200ms",
    );
    assert_eq!(runtime.compile_workers(), 0, "the worker was reaped");
    assert!(
        refused_after < std::time::Duration::from_secs(30),
        "{refused_after:?}"
    );
    still_serves_v1(&server, &digest).await;

    // Too hungry: the worker hits its memory limit and the deploy says so.
    let (status, body) = server
        .deploy_bytes("keep", "?compile-memory=48MiB", hungry.clone())
        .await;
    assert_problem(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "more than the compile-memory limit of 48mib",
    );
    assert_eq!(runtime.compile_workers(), 0);
    still_serves_v1(&server, &digest).await;

    // A route may lower the server's limits, never raise them.
    for (query, mentions) in [
        (
            "?compile-timeout=10m",
            "at most the server's --compile-timeout (2m)",
        ),
        (
            "?compile-memory=8GiB",
            "at most the server's --compile-memory (4gib)",
        ),
        ("?compile-timeout=1ms", "at least 100ms"),
        ("?compile-memory=1MiB", "at least 32mib"),
    ] {
        let (status, body) = server
            .deploy_bytes("keep", query, guests::bytes(guests::TAGGED_V2))
            .await;
        assert_problem(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            &mentions.to_lowercase(),
        );
    }
    still_serves_v1(&server, &digest).await;

    // The same limits let a real guest through, and the route keeps them.
    let (status, body) = server
        .deploy_bytes(
            "keep",
            "?compile-timeout=30s&compile-memory=256MiB",
            guests::bytes(guests::TAGGED_V2),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(server.get("/keep").await, (StatusCode::OK, "v2".into()));
    let status = server.status("keep").await;
    assert_eq!(status["limits"]["compile_timeout_ms"], 30_000, "{status}");
    assert_eq!(
        status["limits"]["compile_memory_bytes"],
        256 << 20,
        "{status}"
    );
    server.shutdown().await;
}
