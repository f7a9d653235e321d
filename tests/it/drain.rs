//! Drain: a request holds its version until its body's last byte; retired versions are freed
//! when their last request ends, or cut off at the drain deadline.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::BytesMut;
use handoff::config::Config;
use handoff::version::Version;
use handoff_tests::{Connection, TestServer, eventually, get_request, guests};
use http::StatusCode;
use http_body_util::BodyExt;

const GENEROUS: Duration = Duration::from_secs(20);

fn active_version(server: &TestServer, route: &str) -> Weak<Version> {
    let table = server.server().runtime().routes.snapshot();
    let route = handoff::names::RouteName::parse(route).unwrap();
    let route = table.get(&route).expect("route exists");
    Arc::downgrade(route.stable().expect("route is live"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_response_finishes_on_the_old_version_across_a_deploy() {
    let server = TestServer::start().await;
    server.deploy("slow", guests::TAGGED_V1).await;
    let v1 = active_version(&server, "slow");

    // Start a slow stream on v1: 8 lines, 150 ms apart. Wait for its first line, so the request
    // is provably in flight on v1 with its body unfinished.
    let mut conn = Connection::open(server.data).await;
    let response = conn
        .send(get_request("/slow?chunks=8&delay_ms=150"))
        .await
        .expect("slow request sent");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = BytesMut::new();
    while !received.ends_with(b"\n") {
        let frame = body.frame().await.expect("a frame").expect("no error");
        received.extend_from_slice(&frame.into_data().unwrap_or_default());
    }
    assert_eq!(&received[..], b"v1 0\n");

    let deployed = server.deployed("slow", guests::TAGGED_V2).await;
    assert!(deployed.changed);

    // New requests get v2 at once, while the stream is still running on v1.
    assert_eq!(server.get("/slow").await, (StatusCode::OK, "v2".into()));
    let draining = server.route("slow").await.draining;
    assert_eq!(draining.len(), 1, "{draining:?}");
    assert_eq!(draining[0].version.in_flight, 1, "{draining:?}");
    assert_eq!(
        Some(&draining[0].version.version),
        deployed.previous_version.as_ref()
    );
    assert!(
        v1.upgrade().is_some(),
        "v1 must live while its request streams"
    );

    // The stream completes intact, every byte written by v1.
    let rest = body
        .collect()
        .await
        .expect("the stream completes")
        .to_bytes();
    received.extend_from_slice(&rest);
    let expected: String = (0..8).map(|i| format!("v1 {i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&received), expected);

    // Then v1 is drained, out of the status, and freed.
    eventually("v1 to leave the draining list", GENEROUS, || async {
        server.route("slow").await.draining.is_empty().then_some(())
    })
    .await;
    eventually("v1 to be freed", GENEROUS, || async {
        v1.upgrade().is_none().then_some(())
    })
    .await;
    assert_eq!(server.get("/slow").await.1, "v2");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_drain_deadline_is_cut_off() {
    let server = TestServer::start_with(Config {
        drain_timeout: Duration::from_millis(300),
        ..Config::ephemeral()
    })
    .await;
    server.deploy("long", guests::TAGGED_V1).await;
    let v1 = active_version(&server, "long");
    let mut conn = Connection::open(server.data).await;
    let response = conn
        .send(get_request("/long?chunks=100&delay_ms=100"))
        .await
        .expect("long request sent");
    let mut body = response.into_body();
    let first = body.frame().await.expect("a frame").expect("no error");
    assert_eq!(first.into_data().unwrap_or_default(), "v1 0\n");

    server.deploy("long", guests::TAGGED_V2).await;
    // The 10 s stream cannot finish; at the 300 ms deadline it is cut off, and the client
    // sees an error (not a clean end).
    let outcome = tokio::time::timeout(GENEROUS, body.collect()).await;
    assert!(
        matches!(outcome, Ok(Err(_))),
        "the cut-off stream must end with an error"
    );
    eventually("v1 to be freed", GENEROUS, || async {
        v1.upgrade().is_none().then_some(())
    })
    .await;
    assert!(server.route("long").await.draining.is_empty());
    assert_eq!(server.get("/long").await.1, "v2");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_releases_its_version() {
    let server = TestServer::start().await;
    server.deploy("gone", guests::TAGGED_V1).await;
    let v1 = active_version(&server, "gone");
    let mut conn = Connection::open(server.data).await;
    let response = conn
        .send(get_request("/gone?chunks=1000&delay_ms=50"))
        .await
        .expect("request sent");
    let mut body = response.into_body();
    body.frame().await.expect("a frame").expect("no error");
    server.deploy("gone", guests::TAGGED_V2).await;
    assert_eq!(server.route("gone").await.draining[0].version.in_flight, 1);
    drop(body);
    drop(conn);
    eventually("v1 to be freed after the client left", GENEROUS, || async {
        v1.upgrade().is_none().then_some(())
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_requests_finish() {
    let server = TestServer::start().await;
    server.deploy("bye", guests::TAGGED_V1).await;
    let mut conn = Connection::open(server.data).await;
    let response = conn
        .send(get_request("/bye?chunks=5&delay_ms=100"))
        .await
        .expect("request sent");
    let data = server.data;
    let shutdown = tokio::spawn(server.shutdown());
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body completes")
        .to_bytes();
    let expected: String = (0..5).map(|i| format!("v1 {i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&body), expected);
    tokio::time::timeout(GENEROUS, shutdown)
        .await
        .expect("shutdown finishes")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(data).await.is_err(),
        "no new connections after shutdown"
    );
}
