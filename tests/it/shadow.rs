//! Shadow traffic: a copy of a share of a route's requests runs on another version after the
//! client's response; the answers are compared (status, chosen headers, body digest), the
//! stable version's own run-to-run differences discounted as noise, and the copies kept from
//! side effects (outbound HTTP denied unless allowed) and from the client's way (large bodies
//! skipped, a failing shadow counted, never seen by the client).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use handoff::api::{ShadowCounts, ShadowStatus};
use handoff_tests::{Connection, TestServer, eventually, guests, typed};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::json;

const GENEROUS: Duration = Duration::from_secs(60);

/// Waits until the route's shadow has counted `requests`; its figures then.
pub(crate) async fn shadow_after(server: &TestServer, route: &str, requests: u64) -> ShadowStatus {
    shadow_when(server, route, |counts| counts.requests == requests).await
}

/// Waits until the route's shadow counts say `done`; its figures then.
async fn shadow_when(
    server: &TestServer,
    route: &str,
    done: impl Fn(&ShadowCounts) -> bool,
) -> ShadowStatus {
    let path = format!("/v1/routes/{route}/shadow");
    eventually("every copy to be compared", GENEROUS, || async {
        let figures: ShadowStatus = server.read(&path).await;
        done(&figures.counts).then_some(figures)
    })
    .await
}

/// The route's shadow figures as a tuple: requests, matches, mismatches, noise, errors, skipped.
fn counts(figures: &ShadowStatus) -> [u64; 6] {
    let c = figures.counts;
    [
        c.requests,
        c.matches,
        c.mismatches,
        c.noise,
        c.errors,
        c.skipped,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_is_compared_and_never_changes_what_the_client_gets() {
    let server = TestServer::start().await;
    server.deploy("app", guests::TAGGED_V1).await;
    let changed = server.upload(guests::TAGGED_V1B).await;
    let (status, body) = server
        .admin_json(
            Method::PUT,
            "/v1/routes/app/shadow",
            json!({"version": changed, "percent": 100}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut conn = Connection::open(server.data).await;
    for (path, times) in [("/app/same", 60), ("/app/changed", 40)] {
        for _ in 0..times {
            let (status, body) = conn.get(path).await.unwrap();
            assert_eq!((status, &body[..]), (StatusCode::OK, &b"v1"[..]));
        }
    }
    let figures = shadow_after(&server, "app", 100).await;
    assert_eq!(counts(&figures), [100, 60, 40, 0, 0, 0], "{figures:?}");
    let sample = &figures.samples[0];
    assert_eq!(sample.path, "/app/changed");
    assert_eq!(
        (sample.stable_start.as_str(), sample.shadow_start.as_str()),
        ("v1", "v1 changed")
    );
    assert_eq!(sample.stable_status, 200);
    for (outcome, count) in [("match", 60.0), ("mismatch", 40.0), ("noise", 0.0)] {
        let series = format!(
            "handoff_shadow_copies_total{{route=\"app\",version=\"{}\",outcome=\"{outcome}\"}}",
            changed
        );
        assert_eq!(server.metric(&series).await, count, "{outcome}");
    }
    // It shows in the route's status, and DELETE stops it.
    let shown = server
        .route("app")
        .await
        .shadow
        .expect("the route's shadow");
    assert_eq!(shown.counts.mismatches, 40);
    let (status, _) = server.admin(Method::DELETE, "/v1/routes/app/shadow").await;
    assert_eq!(status, StatusCode::OK);
    assert!(server.route("app").await.shadow.is_none());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nondeterministic_guest_is_reported_as_noise_not_as_mismatches() {
    let server = TestServer::start().await;
    let noisy = server.deployed("app", guests::TAGGED_NOISY).await.version;
    let (status, body) = server
        .admin_json(
            Method::PUT,
            "/v1/routes/app/shadow",
            json!({"version": noisy}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut conn = Connection::open(server.data).await;
    for _ in 0..50 {
        let (status, _) = conn.get("/app/x").await.unwrap();
        assert_eq!(status, StatusCode::OK);
    }
    let figures = shadow_after(&server, "app", 50).await;
    assert_eq!(
        (figures.counts.mismatches, figures.counts.noise),
        (0, 50),
        "{figures:?}"
    );
    server.shutdown().await;
}

/// An upstream on loopback that counts the requests it answers (`hello from upstream`).
async fn counting_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async {
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(
                            b"hello from upstream",
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_make_no_outbound_calls_unless_allowed() {
    let (up, hits) = counting_upstream().await;
    let server = TestServer::start().await;
    let (status, body) = server
        .deploy_bytes(
            "app",
            &format!("?allow-outbound=http://{up}"),
            guests::bytes(guests::HOSTILE),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // The same version as its own shadow: any difference comes from the copy's sandbox.
    let version = typed::<handoff::api::Deployed>(&body).version;
    let (status, body) = server
        .admin_json(
            Method::PUT,
            "/v1/routes/app/shadow",
            json!({"version": version}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!typed::<ShadowStatus>(&body).allow_outbound, "{body}");
    let path = format!("/app/fetch?url=http://{up}/x");
    let mut conn = Connection::open(server.data).await;
    for _ in 0..10 {
        let (status, body) = conn.get(&path).await.unwrap();
        assert_eq!(
            (status, String::from_utf8_lossy(&body).as_ref()),
            (StatusCode::OK, "upstream 200 hello from upstream")
        );
    }
    let figures = shadow_after(&server, "app", 10).await;
    // Only the clients' requests reached the upstream: neither the copies nor the stable
    // version's second runs (which measure its noise) called out.
    assert_eq!(hits.load(Ordering::SeqCst), 10);
    // Each copy's call was denied: a mismatch, flagged as such (the denied second runs did
    // not pass for noise).
    assert_eq!(counts(&figures), [10, 0, 10, 0, 0, 0], "{figures:?}");
    let sample = &figures.samples[0];
    assert!(sample.outbound_denied, "{sample:?}");
    assert_eq!(sample.shadow_start, "error ErrorCode::HttpRequestDenied");

    // Allowed: the copies call the route's allow-list too, and now match.
    let (status, body) = server
        .admin_json(
            Method::PUT,
            "/v1/routes/app/shadow",
            json!({"version": version, "allow_outbound": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let before = hits.load(Ordering::SeqCst);
    let (status, _) = conn.get(&path).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let figures = shadow_when(&server, "app", |counts| counts.matches == 1).await;
    assert_eq!(figures.counts.mismatches, 10, "{figures:?}");
    assert!(
        hits.load(Ordering::SeqCst) >= before + 2,
        "the copy did not call out"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_shadow_and_a_large_body_are_counted_and_the_client_never_notices() {
    let server = TestServer::start().await;
    server.deploy("app", guests::TAGGED_V1).await;
    let hostile = server.upload(guests::HOSTILE).await;
    let (status, body) = server
        .admin_json(
            Method::PUT,
            "/v1/routes/app/shadow",
            json!({"version": hostile}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut conn = Connection::open(server.data).await;
    // The shadow traps where the stable version answers: an error, and the client gets `v1`.
    for _ in 0..3 {
        assert_eq!(
            conn.get("/app/trap").await.unwrap(),
            (StatusCode::OK, Bytes::from("v1"))
        );
    }
    // A body over the copy limit (1 MiB): not copied, counted as skipped; the client is served.
    let big = Bytes::from(vec![b'x'; (1 << 20) + 1]);
    let req = Request::post("/app/read-body")
        .header("host", "app")
        .body(Full::new(big))
        .unwrap();
    let (status, body) = handoff_tests::send(server.data, req).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"v1"[..]));
    let figures = shadow_after(&server, "app", 4).await;
    assert_eq!(counts(&figures), [4, 0, 0, 0, 3, 1], "{figures:?}");
    // And the route serves on, untroubled.
    assert_eq!(
        server.get("/app/x").await,
        (StatusCode::OK, "v1".to_owned())
    );
    server.shutdown().await;
}
