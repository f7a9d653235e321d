//! A guest failure is data: traps, endless loops, memory bombs, host-blocked guests and guests
//! that never respond become 500/504 within the deadline, and the server and its other routes
//! keep serving throughout. (A guest's work after its response: `after_response`.)

use std::time::{Duration, Instant};

use handoff::config::{Config, Limits};
use handoff_tests::{TestServer, guests};
use http::StatusCode;

const DEADLINE: Duration = Duration::from_millis(1000);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_guests_fail_cleanly_and_others_keep_serving() {
    let server = TestServer::start_with(Config {
        limits: Limits {
            request_timeout: DEADLINE,
            max_memory_bytes: 32 << 20,
            ..Limits::default()
        },
        ..Config::ephemeral()
    })
    .await;
    server.deploy("hostile", guests::HOSTILE).await;
    server.deploy("good", guests::TAGGED_V1).await;

    for (path, expected) in [
        ("/hostile/trap", StatusCode::INTERNAL_SERVER_ERROR),
        ("/hostile/grow", StatusCode::INTERNAL_SERVER_ERROR),
        ("/hostile/no-response", StatusCode::INTERNAL_SERVER_ERROR),
        ("/hostile/loop", StatusCode::GATEWAY_TIMEOUT),
        ("/hostile/sleep", StatusCode::GATEWAY_TIMEOUT),
    ] {
        // Twice each: the first failure must leave nothing broken for the second.
        for attempt in 0..2 {
            let started = Instant::now();
            // The well-behaved route answers while the bad request runs.
            let (bad, good) = tokio::join!(server.get(path), async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let started = Instant::now();
                (server.get("/good").await, started.elapsed())
            });
            let took = started.elapsed();
            assert_eq!(bad.0, expected, "{path} attempt {attempt}: {}", bad.1);
            assert!(bad.1.contains("request_id"), "{}", bad.1);
            assert!(
                !bad.1.contains("wasm"),
                "5xx bodies say nothing internal: {}",
                bad.1
            );
            assert!(
                took < DEADLINE + Duration::from_secs(5),
                "{path} took {took:?}, far past its deadline"
            );
            let ((status, body), good_took) = good;
            assert_eq!(
                (status, body.as_str()),
                (StatusCode::OK, "v1"),
                "during {path}"
            );
            eprintln!(
                "{path}: {} in {took:?}; neighbour answered in {good_took:?}",
                bad.0
            );
        }
        assert_eq!(
            server.get("/hostile/ok").await,
            (StatusCode::OK, "ok".into())
        );
    }
    // The error response carries its request id as a header too, the one its body names.
    let mut conn = handoff_tests::Connection::open(server.data).await;
    let response = conn
        .send(handoff_tests::get_request("/hostile/trap"))
        .await
        .expect("a response");
    let id = response
        .headers()
        .get("x-request-id")
        .expect("x-request-id on the 500")
        .to_str()
        .unwrap()
        .to_owned();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(
        !id.is_empty() && String::from_utf8_lossy(&body).contains(&id),
        "{id}"
    );

    let active = server.route("hostile").await.active;
    assert_eq!(
        (active.failures, active.in_flight),
        (10 + 1, 0),
        "{active:?}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_fails_mid_body_ends_the_response_with_an_error() {
    let server = TestServer::start().await;
    server.deploy("hostile", guests::HOSTILE).await;
    for _ in 0..2 {
        let mut conn = handoff_tests::Connection::open(server.data).await;
        let outcome = conn.get("/hostile/trap-mid-body").await;
        assert!(
            outcome.is_err(),
            "a truncated body must not look complete: {outcome:?}"
        );
    }
    assert_eq!(
        server.get("/hostile/ok").await,
        (StatusCode::OK, "ok".into())
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_instance_pool_sheds_with_503_and_retry_after() {
    let server = TestServer::start_with(Config {
        max_instances: 2,
        ..Config::ephemeral()
    })
    .await;
    server.deploy("busy", guests::TAGGED_V1).await;
    // Two slow streams hold both instance slots.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = handoff_tests::Connection::open(server.data).await;
        let response = conn
            .send(handoff_tests::get_request("/busy?chunks=50&delay_ms=100"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        held.push((conn, response));
    }
    let mut conn = handoff_tests::Connection::open(server.data).await;
    let response = conn
        .send(handoff_tests::get_request("/busy"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    // Overload is not the version's failure (it would count against a rollout's candidate).
    let active = server.route("busy").await.active;
    assert_eq!(active.failures, 0, "{active:?}");
    assert_eq!(
        active.figures.as_ref().map(|f| f.errors),
        Some(0),
        "{active:?}"
    );
    // Once the streams are gone, the slots are free again.
    drop(held);
    handoff_tests::eventually("a slot to free up", Duration::from_secs(20), || async {
        (server.get("/busy").await.0 == StatusCode::OK).then_some(())
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_the_response_stops_its_guest() {
    // One instance slot and a long deadline: only stopping the abandoned guest frees the slot
    // in time.
    let server = TestServer::start_with(Config {
        max_instances: 1,
        limits: Limits {
            request_timeout: Duration::from_secs(600),
            ..Limits::default()
        },
        ..Config::ephemeral()
    })
    .await;
    server.deploy("hostile", guests::HOSTILE).await;
    let mut conn = handoff_tests::Connection::open(server.data).await;
    let pending = tokio::spawn(async move {
        let _ = conn
            .send(handoff_tests::get_request("/hostile/sleep"))
            .await;
    });
    handoff_tests::eventually(
        "the sleeping request to start",
        Duration::from_secs(20),
        || async { (server.route("hostile").await.active.in_flight == 1).then_some(()) },
    )
    .await;
    pending.abort();
    let _ = pending.await;
    handoff_tests::eventually("the slot to be freed", Duration::from_secs(20), || async {
        (server.get("/hostile/ok").await.0 == StatusCode::OK).then_some(())
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_huge_heads_and_idle_crowds_are_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_with(Config {
        idle_timeout: Duration::from_millis(500),
        ..Config::ephemeral()
    })
    .await;
    server.deploy("good", guests::TAGGED_V1).await;

    // Slowloris: half a request head, then silence. The server hangs up.
    let mut slow = tokio::net::TcpStream::connect(server.data).await.unwrap();
    slow.write_all(b"GET /good HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), slow.read_to_end(&mut buf)).await;
    assert!(
        closed.is_ok(),
        "a slow head must not hold a connection forever"
    );

    // Slowloris that keeps trickling: a byte of head every 50 ms never completes a request, so
    // it never counts as activity; the connection is closed after the idle timeout all the same.
    let mut trickle = tokio::net::TcpStream::connect(server.data).await.unwrap();
    trickle
        .write_all(b"GET /good HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut cut = false;
    for _ in 0..400 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if trickle.write_all(b"a").await.is_err() {
            cut = true;
            break;
        }
        let mut byte = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), trickle.read(&mut byte)).await
        {
            cut = true;
            break;
        }
    }
    assert!(
        cut,
        "a head trickled a byte at a time must not hold a connection open (still open after {:?})",
        started.elapsed()
    );

    // A 200 KiB header: refused, never buffered whole.
    let mut huge = tokio::net::TcpStream::connect(server.data).await.unwrap();
    let head = format!(
        "GET /good HTTP/1.1\r\nHost: a\r\nX-Huge: {}\r\n\r\n",
        "x".repeat(200 << 10)
    );
    let _ = huge.write_all(head.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), huge.read_to_end(&mut buf)).await;
    let answer = String::from_utf8_lossy(&buf);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "a huge head gets 431 or a closed connection: {answer:.100}"
    );

    // Hundreds of idle connections do not stop a real client.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(tokio::net::TcpStream::connect(server.data).await.unwrap());
    }
    assert_eq!(server.get("/good").await, (StatusCode::OK, "v1".into()));
    drop(idle);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_never_sees_an_earlier_instances_memory() {
    // Few pool slots, so instances must reuse the slots the planting instances used.
    let server = TestServer::start_with(Config {
        max_instances: 2,
        ..Config::ephemeral()
    })
    .await;
    server.deploy("old", guests::HOSTILE).await;
    for _ in 0..4 {
        assert_eq!(
            server.get("/old/plant").await,
            (StatusCode::OK, "planted".into())
        );
    }
    // The same version, the same route: a fresh instance sees zeros.
    assert_eq!(
        server.get("/old/scan").await,
        (StatusCode::OK, "nonzero 0".into())
    );
    // A new version on another route, in the same slots: zeros too.
    let (code, body) = server
        .deploy_bytes("new", "?config=V=2", guests::bytes(guests::HOSTILE))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    for _ in 0..4 {
        assert_eq!(server.get("/old/plant").await.1, "planted");
        assert_eq!(
            server.get("/new/scan").await,
            (StatusCode::OK, "nonzero 0".into())
        );
    }
    server.shutdown().await;
}
