//! A guest's work after its response: a body the guest never finished ends with an error, a
//! finished one stands when the guest fails afterwards, and work after the response keeps its
//! concurrency slot, holds a drain and a graceful shutdown up to their grace and is cut off
//! then (HEAD requests too).

use std::time::{Duration, Instant};

use handoff::config::{Config, Limits};
use handoff_tests::{TestServer, guests};
use http::StatusCode;

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
        || async { (server.route(route).await.active.guest_failures == n).then_some(()) },
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
            let in_flight = server.route("spin").await.in_flight;
            assert!(in_flight <= 2, "{in_flight} in flight");
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
        || async { (server.route("spin").await.in_flight == 0).then_some(()) },
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
    let deployed = server.deployed("after", guests::TAGGED_V1).await;
    let draining = server.route("after").await.draining;
    assert_eq!(draining.len(), 1, "{draining:?}");
    assert_eq!(
        Some(&draining[0].version.version),
        deployed.previous_version.as_ref()
    );
    assert_eq!(draining[0].version.in_flight, 1, "{draining:?}");
    assert_eq!(server.get("/after").await, (StatusCode::OK, "v1".into()));
    handoff_tests::eventually(
        "the old version to drain",
        Duration::from_secs(20),
        || async {
            server
                .route("after")
                .await
                .draining
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
    assert_eq!(server.route("after").await.draining[0].version.in_flight, 1);
    handoff_tests::eventually(
        "the guest to be cut off",
        Duration::from_secs(20),
        || async {
            let status = server.route("after").await;
            (status.draining.is_empty() && status.in_flight == 0).then_some(())
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
            let route = handoff::names::RouteName::parse("after").unwrap();
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
    assert_eq!(server.route("head").await.in_flight, 1);
    handoff_tests::eventually("the guest's deadline", Duration::from_secs(20), || async {
        let status = server.route("head").await;
        (status.in_flight == 0).then_some(status)
    })
    .await;
    // The client's response was complete: a guest failure, not a failed request.
    let active = server.route("head").await.active;
    assert_eq!(
        (active.guest_failures, active.failures),
        (1, 0),
        "{active:?}"
    );
    server.shutdown().await;
}
