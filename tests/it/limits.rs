//! Per-route limits, set at deploy time over the server's defaults: memory, deadline,
//! concurrency (503 + Retry-After), request body (413) and response body (cut off); and
//! hostile guests that overflow their stack or stream without end.

use std::time::{Duration, Instant};

use bytes::Bytes;
use handoff::config::{Config, Limits};
use handoff_tests::{Connection, TestServer, detail, get_request, guests};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_route_runs_under_its_own_limits() {
    let server = TestServer::start().await;
    let hostile = guests::bytes(guests::HOSTILE);
    // One route with tight limits, one with the server's defaults (30 s, 128 MiB).
    let (code, body) = server
        .deploy_bytes(
            "tight",
            "?max-memory=16MiB&request-timeout=300ms&max-request-body=1KiB&max-response-body=64KiB",
            hostile.clone(),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    server.deploy("roomy", guests::HOSTILE).await;
    let limits = server.route("tight").await.limits;
    assert_eq!(limits.max_memory_bytes, 16 << 20, "{limits:?}");
    assert_eq!(limits.request_timeout_ms, 300);

    // The deadline: 504 after the route's 300 ms, not the server's 30 s.
    let started = Instant::now();
    assert_eq!(
        server.get("/tight/loop").await.0,
        StatusCode::GATEWAY_TIMEOUT
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // The response body: cut off at 64 KiB on the tight route, whole on the other.
    let mut conn = Connection::open(server.data).await;
    assert!(
        conn.get("/tight/big").await.is_err(),
        "a cut-off body ends in an error"
    );
    let mut conn = Connection::open(server.data).await;
    let (status, body) = conn.get("/roomy/big").await.unwrap();
    assert_eq!((status, body.len()), (StatusCode::OK, 4 << 20));

    // The request body: 413 before the guest runs when the length is declared.
    let post = |path: &str, size: usize| {
        Request::builder()
            .method(Method::POST)
            .uri(path.to_owned())
            .header("host", "x")
            .body(Full::new(Bytes::from(vec![b'a'; size])))
            .unwrap()
    };
    let (status, _) = handoff_tests::send(server.data, post("/tight/read-body", 2048)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, body) = handoff_tests::send(server.data, post("/tight/read-body", 512)).await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (StatusCode::OK, "read 512 bytes")
    );
    let (status, body) = handoff_tests::send(server.data, post("/roomy/read-body", 2048)).await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (StatusCode::OK, "read 2048 bytes")
    );

    // Memory: growing past 16 MiB traps; the guest here stops at its own limit sooner.
    assert_eq!(
        server.get("/tight/grow").await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );

    // A redeploy without limits keeps them; limits out of range are refused.
    server.deploy("tight", guests::TAGGED_V1).await;
    assert_eq!(server.route("tight").await.limits.request_timeout_ms, 300);
    for (query, mentions) in [
        ("?max-memory=1GiB", "at most the server's"),
        ("?request-timeout=soon", "duration"),
        ("?request-timeout=18446744073709551615s", "at most 24h"),
        ("?request-timeout=999999999999999999m", "too long"),
        ("?max-concurrency=-1", "whole number"),
        ("?max-request-body=lots", "size"),
    ] {
        let (code, body) = server.deploy_bytes("tight", query, hostile.clone()).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(detail(&body).contains(mentions), "{query}: {body}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_route_sheds_with_503_while_other_routes_serve() {
    let server = TestServer::start().await;
    let (code, body) = server
        .deploy_bytes(
            "narrow",
            "?max-concurrency=2",
            guests::bytes(guests::TAGGED_V1),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    server.deploy("wide", guests::TAGGED_V2).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = Connection::open(server.data).await;
        let response = conn
            .send(get_request("/narrow?chunks=40&delay_ms=100"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        held.push((conn, response));
    }
    let mut conn = Connection::open(server.data).await;
    let response = conn.send(get_request("/narrow")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(server.route("narrow").await.in_flight, 2);
    assert_eq!(server.get("/wide").await, (StatusCode::OK, "v2".into()));
    // Each held request finishes; then there is room again.
    for (_conn, response) in held {
        response.into_body().collect().await.unwrap();
    }
    assert_eq!(server.get("/narrow").await, (StatusCode::OK, "v1".into()));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_overflow_and_an_endless_stream_fail_cleanly() {
    let server = TestServer::start_with(Config {
        limits: Limits {
            request_timeout: Duration::from_millis(800),
            ..Limits::default()
        },
        ..Config::ephemeral()
    })
    .await;
    server.deploy("hostile", guests::HOSTILE).await;
    server.deploy("good", guests::TAGGED_V1).await;
    for _ in 0..2 {
        let (status, body) = server.get("/hostile/recurse").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        assert_eq!(server.get("/good").await.1, "v1");
    }
    // A response that never ends is cut off at the deadline, with an error, not left open.
    let mut conn = Connection::open(server.data).await;
    let response = conn
        .send(get_request("/good?chunks=1000000&delay_ms=10"))
        .await
        .unwrap();
    let outcome =
        tokio::time::timeout(Duration::from_secs(20), response.into_body().collect()).await;
    assert!(
        matches!(outcome, Ok(Err(_))),
        "cut off with an error at the deadline"
    );
    assert_eq!(server.get("/good").await.1, "v1");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_may_mount_one_directory_read_only() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("site")).unwrap();
    std::fs::write(root.path().join("site/hello.txt"), "hello from disk\n").unwrap();
    std::fs::write(root.path().join("secret.txt"), "do not read").unwrap();
    let server = TestServer::start_with(Config {
        guest_dirs: Some(root.path().to_path_buf()),
        ..Config::ephemeral()
    })
    .await;
    let hostile = guests::bytes(guests::HOSTILE);
    let (code, body) = server
        .deploy_bytes("files", "?dir=site", hostile.clone())
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert_eq!(server.route("files").await.dir.as_deref(), Some("site"));
    assert_eq!(
        server.get("/files/data").await,
        (
            StatusCode::OK,
            "hello from disk; write denied; escape denied".into()
        )
    );
    assert!(!root.path().join("site/new.txt").exists());
    // Other routes see no files at all.
    server.deploy("nofiles", guests::HOSTILE).await;
    assert!(
        server
            .get("/nofiles/data")
            .await
            .1
            .starts_with("unreadable")
    );

    for dir in ["..", "../etc", "/etc", "missing", "site/../.."] {
        let (code, body) = server
            .deploy_bytes("files", &format!("?dir={dir}"), hostile.clone())
            .await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{dir}: {body}");
    }
    // Unmounting.
    server.deploy_bytes("files", "?dir=", hostile).await;
    assert!(server.get("/files/data").await.1.starts_with("unreadable"));
    server.shutdown().await;

    // A server without --guest-dirs mounts nothing.
    let plain = TestServer::start().await;
    let (code, body) = plain
        .deploy_bytes("files", "?dir=site", guests::bytes(guests::HOSTILE))
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(detail(&body).contains("--guest-dirs"), "{body}");
    plain.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_memory_caps_the_total_of_an_instances_memories() {
    // With the instance pool (the default) and without it (`--max-instances 0`).
    for max_instances in [handoff::config::DEFAULT_MAX_INSTANCES, 0] {
        total_memory_is_capped(max_instances).await;
    }
}

async fn total_memory_is_capped(max_instances: u32) {
    let server = TestServer::start_with(Config {
        max_instances,
        ..Config::ephemeral()
    })
    .await;
    server.deploy("good", guests::TAGGED_V1).await;
    // 8 memories, each grown by 12 MiB: every one is under the route's 16 MiB, their sum
    // (about 97 MiB) is not. It deploys (its trial instance has 8 × 64 KiB) and fails per
    // request.
    let (code, body) = server
        .deploy_bytes(
            "many",
            "?max-memory=16MiB",
            handoff_tests::many_memories(8, 192),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    // The same shape with one memory stays under the cap and answers.
    let (code, body) = server
        .deploy_bytes(
            "one",
            "?max-memory=16MiB",
            handoff_tests::many_memories(1, 192),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert_eq!(server.get("/one").await.0, StatusCode::OK);
    for attempt in 0..2 {
        let ((status, body), good) = tokio::join!(server.get("/many"), server.get("/good"));
        assert_eq!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "attempt {attempt}: {body}"
        );
        for internal in ["memory", "wasm", "bytes", "limit"] {
            assert!(!body.contains(internal), "nothing internal: {body}");
        }
        assert_eq!(good, (StatusCode::OK, "v1".into()), "the neighbour answers");
    }
    let active = server.route("many").await.active;
    assert_eq!((active.failures, active.in_flight), (2, 0), "{active:?}");

    // More memories than an instance may have: refused at deploy, saying why.
    let (code, body) = server
        .deploy_bytes("more", "", handoff_tests::many_memories(9, 0))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let said = detail(&body);
    assert!(
        said.contains("9 Wasm linear memories") || said.contains("memory count too high"),
        "{body}"
    );
    // Likewise more tables (9) or core instances (33) than an instance may have; exactly 8
    // tables and 32 core instances deploy and serve.
    for (tables, empty, refusal) in [
        (9, 0, ["9 tables", "table count too high"]),
        (
            0,
            31,
            ["33 core module instances", "instance count too high"],
        ),
    ] {
        let (code, body) = server
            .deploy_bytes(
                "more",
                "",
                handoff_tests::many_instances(1, 0, tables, empty),
            )
            .await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let said = detail(&body);
        assert!(refusal.iter().any(|r| said.contains(r)), "{body}");
    }
    let (code, body) = server
        .deploy_bytes("most", "", handoff_tests::many_instances(1, 0, 8, 22))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert_eq!(server.get("/most").await.0, StatusCode::OK);
    server.shutdown().await;
}

/// Sends `POST {path}` with a chunked body (no Content-Length) made of `chunks`, over a raw
/// connection; returns the status code and the rest of the response.
async fn post_chunked(addr: std::net::SocketAddr, path: &str, chunks: &[&[u8]]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in chunks {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(&request).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        // Up to the server's close (or a reset after it wrote everything).
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(read.is_ok(), "no answer to a chunked POST of {path}");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {answer:.200}"));
    (status, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_request_body_over_the_limit_gets_413() {
    let server = TestServer::start().await;
    for (route, guest) in [("raw", guests::HOSTILE), ("sdk", guests::JSON_API)] {
        let (code, body) = server
            .deploy_bytes(route, "?max-request-body=1KiB", guests::bytes(guest))
            .await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
    }
    let half = vec![b' '; 512];
    let big = vec![b' '; 2048];
    for _ in 0..2 {
        // Under the limit, without a declared length: the guests read it all.
        let (status, answer) = post_chunked(server.data, "/raw/read-body", &[&half, &half]).await;
        assert_eq!(status, 200, "{answer}");
        assert!(answer.contains("\r\nread 1024 bytes\r\n"), "{answer}");
        let item: &[u8] = br#"{"name": "lamp", "price_cents": 100}"#;
        let (status, answer) = post_chunked(server.data, "/sdk/items", &[&half, item]).await;
        assert_eq!(status, 201, "{answer}");

        // Over it: the guest sees an error reading, the client gets 413 (problem JSON), whatever
        // the guest answered.
        for path in ["/raw/read-body", "/sdk/items"] {
            let (status, answer) = post_chunked(server.data, path, &[&half, &big]).await;
            assert_eq!(status, 413, "{path}: {answer}");
            assert!(answer.contains("application/problem+json"), "{answer}");
            assert!(
                answer.contains("larger than this route's limit of 1024 bytes"),
                "{answer}"
            );
        }
    }
    // Neither route counts a client's oversize body as a guest failure.
    for route in ["raw", "sdk"] {
        assert_eq!(
            server.route(route).await.active.failures,
            0,
            "route {route}"
        );
    }
    server.shutdown().await;
}
