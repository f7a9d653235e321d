//! A guest failure is data: traps, endless loops, memory bombs, host-blocked guests and guests
//! that never respond become 500/504 within the deadline, and the server and its other routes
//! keep serving throughout.

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

    let status = server.status("hostile").await;
    assert_eq!(status["active"]["failures"], 10 + 1, "{status}");
    assert_eq!(status["active"]["in_flight"], 0, "{status}");
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
    let active = &server.status("busy").await["active"];
    assert_eq!(active["failures"], 0, "{active}");
    assert_eq!(active["figures"]["errors"], 0, "{active}");
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
        || async {
            let status = server.status("hostile").await;
            (status["active"]["in_flight"] == 1).then_some(())
        },
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

/// `GET http://handoff.test{path}` for an HTTP/2 connection.
fn h2_get(path: &str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::builder()
        .uri(format!("http://handoff.test{path}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap()
}

/// Waits until `route`'s active version has counted `n` guest failures (also those after a
/// complete response).
async fn failures_reach(server: &TestServer, route: &str, n: u64) {
    handoff_tests::eventually(
        &format!("{n} failures on {route}"),
        Duration::from_secs(20),
        || async { (server.status(route).await["active"]["guest_failures"] == n).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_the_guest_never_finished_ends_with_an_error() {
    use http_body_util::BodyExt;
    let server = TestServer::start().await;
    server.deploy("hostile", guests::HOSTILE).await;
    for _ in 0..2 {
        // HTTP/1.1: no terminating chunk, the connection closed.
        let mut conn = handoff_tests::Connection::open(server.data).await;
        let outcome = conn.get("/hostile/leak-body").await;
        assert!(
            outcome.is_err(),
            "a body the guest never finished must not look complete: {outcome:?}"
        );
        // HTTP/2: the stream reset (before or after the head reaches the client).
        let mut h2 = handoff_tests::h2_connect(server.data, 1 << 20).await;
        if let Ok(response) = h2.send_request(h2_get("/hostile/leak-body")).await {
            let outcome = response.into_body().collect().await;
            assert!(
                outcome.is_err(),
                "HTTP/2 too: {:?}",
                outcome.map(|b| b.to_bytes())
            );
        }
    }
    failures_reach(&server, "hostile", 4).await;
    assert_eq!(
        server.get("/hostile/ok").await,
        (StatusCode::OK, "ok".into())
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_body_stands_when_the_guest_fails_afterwards() {
    use http_body_util::BodyExt;
    let server = TestServer::start().await;
    server.deploy("hostile", guests::HOSTILE).await;
    let (code, body) = server
        .deploy_bytes(
            "spin",
            "?request-timeout=3s",
            guests::bytes(guests::HOSTILE),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    // (The spinning guest's deadline leaves room to write its body on a loaded machine.)
    // The client's stream window takes the first 16 KiB (four 4 KiB writes); the 1,000-byte
    // tail waits in the server, unread, until after the guest has finished its body and then trapped (or run
    // out of time). The tail must then arrive and the body end cleanly.
    // (For the spinning guest: the tail is read before the deadline, see below.)
    const WINDOW: u32 = 16 << 10;
    const SIZE: usize = (16 << 10) + 1000;
    for (n, (route, path)) in [
        ("hostile", "respond-then-trap"),
        ("spin", "respond-then-loop"),
        ("hostile", "respond-then-trap"),
        ("spin", "respond-then-loop"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut h2 = handoff_tests::h2_connect(server.data, WINDOW).await;
        let response = h2
            .send_request(h2_get(&format!("/{route}/{path}?size={SIZE}")))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        // A response its client has not read by the request's deadline is reset (the deadline
        // covers the response body: `unread.rs`), so the spinning guest's body is read while
        // it spins, and its failure at the deadline must not undo it.
        let body = if route == "spin" {
            let body = response.into_body().collect().await;
            failures_reach(&server, route, (n / 2 + 1) as u64).await;
            body
        } else {
            failures_reach(&server, route, (n / 2 + 1) as u64).await;
            response.into_body().collect().await
        };
        let body = body.unwrap_or_else(|e| panic!("{path}: a finished body must stand: {e}"));
        assert_eq!(body.to_bytes().len(), SIZE, "{path}");
    }
    // HTTP/1.1 too (without the stall, so not a race it could lose on the old code).
    let mut conn = handoff_tests::Connection::open(server.data).await;
    let (status, body) = conn
        .get("/hostile/respond-then-trap?size=100")
        .await
        .unwrap();
    assert_eq!((status, body.len()), (StatusCode::OK, 100));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_working_after_its_response_keeps_its_slot_until_it_ends() {
    const DEADLINE: Duration = Duration::from_secs(1);
    let server = TestServer::start().await;
    let (code, body) = server
        .deploy_bytes(
            "spin",
            "?max-concurrency=2&request-timeout=1s",
            guests::bytes(guests::HOSTILE),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    server.deploy("good", guests::TAGGED_V1).await;
    // 100 sequential requests whose guests answer at once, then spin until their deadline;
    // every other one declares its length (hyper then drops the body after its last byte,
    // without polling its end).
    let mut served: Vec<(Instant, Instant)> = Vec::new();
    let mut shed = 0;
    let mut busiest = 0;
    for i in 0..100 {
        let path = if i % 2 == 0 {
            "/spin/respond-then-loop"
        } else {
            "/spin/respond-then-loop?content-length"
        };
        let sent = Instant::now();
        let (status, body) = server.get(path).await;
        match status {
            StatusCode::OK => {
                assert_eq!(body, "ok");
                served.push((sent, Instant::now()));
            }
            StatusCode::SERVICE_UNAVAILABLE => shed += 1,
            other => panic!("request {i}: {other} {body}"),
        }
        if i % 10 == 0 {
            let status = server.status("spin").await;
            let in_flight = status["in_flight"].as_u64().unwrap();
            assert!(in_flight <= 2, "{status}");
            busiest = busiest.max(in_flight);
            assert_eq!(server.get("/good").await, (StatusCode::OK, "v1".into()));
        }
    }
    // A guest holds its slot until its deadline, so a third request can only have been served
    // once the guest of the request two before it had ended.
    for (i, pair) in served.windows(3).enumerate() {
        let (first_sent, _) = pair[0];
        let (_, third_answered) = pair[2];
        assert!(
            third_answered.duration_since(first_sent) >= DEADLINE,
            "served requests {i} and {}: more than 2 guests ran at once",
            i + 2
        );
    }
    assert!(
        served.len() >= 2 && shed > 0,
        "{} served, {shed} shed",
        served.len()
    );
    assert!(
        busiest > 0,
        "the guests working after their responses are counted in flight"
    );
    eprintln!("{} served, {shed} shed (503)", served.len());
    handoff_tests::eventually(
        "the spinning guests to reach their deadline",
        Duration::from_secs(20),
        || async { (server.status("spin").await["in_flight"] == 0).then_some(()) },
    )
    .await;
    assert_eq!(server.get("/spin/ok").await, (StatusCode::OK, "ok".into()));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_waits_for_work_after_the_response_or_cuts_it_off() {
    // The drain waits for the guest, which ends at its 3 s deadline. (The new version's bytes
    // are stored beforehand, so its deploy takes milliseconds, not a compile.)
    let server = TestServer::start().await;
    server.deploy("other", guests::TAGGED_V1).await;
    let (code, body) = server
        .deploy_bytes(
            "after",
            "?request-timeout=3s",
            guests::bytes(guests::HOSTILE),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let started = Instant::now();
    assert_eq!(
        server.get("/after/respond-then-sleep").await,
        (StatusCode::OK, "ok".into())
    );
    let deployed = server.deploy("after", guests::TAGGED_V1).await;
    let status = server.status("after").await;
    let draining = status["draining"].as_array().unwrap();
    assert_eq!(draining.len(), 1, "{status}");
    assert_eq!(draining[0]["version"], deployed["previous_version"]);
    assert_eq!(draining[0]["in_flight"], 1, "{status}");
    assert_eq!(server.get("/after").await, (StatusCode::OK, "v1".into()));
    handoff_tests::eventually(
        "the old version to drain",
        Duration::from_secs(20),
        || async {
            let status = server.status("after").await;
            status["draining"]
                .as_array()
                .unwrap()
                .is_empty()
                .then_some(())
        },
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "drained before the guest's deadline: {:?}",
        started.elapsed()
    );
    server.shutdown().await;

    // A drain deadline shorter than the guest's cuts the guest off.
    let server = TestServer::start_with(Config {
        drain_timeout: Duration::from_secs(2),
        limits: Limits {
            request_timeout: Duration::from_secs(600),
            ..Limits::default()
        },
        ..Config::ephemeral()
    })
    .await;
    server.deploy("other", guests::TAGGED_V1).await;
    server.deploy("after", guests::HOSTILE).await;
    let started = Instant::now();
    assert_eq!(
        server.get("/after/respond-then-sleep").await.0,
        StatusCode::OK
    );
    server.deploy("after", guests::TAGGED_V1).await;
    assert_eq!(server.status("after").await["draining"][0]["in_flight"], 1);
    handoff_tests::eventually(
        "the guest to be cut off",
        Duration::from_secs(20),
        || async {
            let status = server.status("after").await;
            (status["draining"].as_array().unwrap().is_empty() && status["in_flight"] == 0)
                .then_some(())
        },
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(20));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_work_after_the_response_up_to_the_grace() {
    // A guest that works until its 1 s deadline after answering: shutdown waits for it.
    // One that would work for 10 minutes is cut off at the 2 s grace.
    for (timeout, waits) in [("1s", true), ("10m", false)] {
        let server = TestServer::start_with(Config {
            drain_timeout: Duration::from_secs(2),
            ..Config::ephemeral()
        })
        .await;
        let (code, body) = server
            .deploy_bytes(
                "after",
                &format!("?request-timeout={timeout}"),
                guests::bytes(guests::HOSTILE),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
        let version = {
            let table = server.server().runtime().routes.snapshot();
            let route = handoff::route::RouteName::parse("after").unwrap();
            table.get(&route).unwrap().stable().unwrap().clone()
        };
        let started = Instant::now();
        assert_eq!(
            server.get("/after/respond-then-sleep").await,
            (StatusCode::OK, "ok".into())
        );
        assert_eq!(version.in_flight(), 1, "the guest works after its response");
        server.shutdown().await;
        let took = started.elapsed();
        assert_eq!(
            version.in_flight(),
            0,
            "shutdown returned with a guest still working"
        );
        assert_eq!(
            version.guest_failures(),
            1,
            "its deadline or the cut-off ended it"
        );
        if waits {
            assert!(took >= Duration::from_secs(1), "{took:?}");
        }
        assert!(took < Duration::from_secs(15), "{took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_request_lets_its_guest_work_after_the_response() {
    // hyper sends no body for HEAD and drops it unread: the response is complete all the same,
    // so the guest is not stopped, and keeps its slot until its deadline.
    let server = TestServer::start().await;
    let (code, body) = server
        .deploy_bytes(
            "head",
            "?request-timeout=3s",
            guests::bytes(guests::HOSTILE),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let mut conn = handoff_tests::Connection::open(server.data).await;
    let request = http::Request::builder()
        .method(http::Method::HEAD)
        .uri("/head/respond-then-loop?content-length")
        .header("host", "handoff.test")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = conn.send(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-length"], "2");
    assert_eq!(server.status("head").await["in_flight"], 1);
    handoff_tests::eventually("the guest's deadline", Duration::from_secs(20), || async {
        let status = server.status("head").await;
        (status["in_flight"] == 0).then_some(status)
    })
    .await;
    // The client's response was complete: a guest failure, not a failed request.
    let status = server.status("head").await;
    assert_eq!(status["active"]["guest_failures"], 1, "{status}");
    assert_eq!(status["active"]["failures"], 0, "{status}");
    server.shutdown().await;
}
