//! Instance reuse (`reuse=N`): a route serves up to N sequential requests from one instance,
//! and only from an instance whose last request ended cleanly; a swap starts fresh instances.
//! The `reuse-counter` guest counts its instance's calls in a global and says so.

use std::time::{Duration, Instant};

use handoff::api::Deployed;
use handoff_tests::{Connection, TestServer, guests, typed};
use http::StatusCode;

/// A bound against hangs only.
const LIMIT: Duration = Duration::from_secs(10);

/// What the counter answered: the calls its instance has served, and the instance's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Count {
    calls: u64,
    instance: u64,
}

/// `GET {path}` on `conn`, expecting the counter's answer; then waits until the route has no
/// request in flight (so the instance is back with its version, or dropped, before the next).
async fn count(server: &TestServer, conn: &mut Connection, route: &str, path: &str) -> Count {
    let (status, body) = conn.get(path).await.expect("request");
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let body = String::from_utf8_lossy(&body).into_owned();
    let words: Vec<&str> = body.split(' ').collect();
    let count = match words[..] {
        ["calls", calls, "instance", instance] => Count {
            calls: calls.parse().unwrap(),
            instance: instance.parse().unwrap(),
        },
        _ => panic!("not the counter's answer: {body:?}"),
    };
    settle(server, route).await;
    count
}

/// Waits until `route` has no request in flight.
async fn settle(server: &TestServer, route: &str) {
    handoff_tests::eventually("the route's requests to end", LIMIT, || async {
        (server.route(route).await.in_flight == 0).then_some(())
    })
    .await;
}

/// The version's idle instances, as `/metrics` shows them.
async fn idle(server: &TestServer, route: &str) -> f64 {
    server
        .metric(&format!(
            "handoff_version_idle_instances{{route=\"{route}\""
        ))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_serves_up_to_n_requests_from_one_instance() {
    let server = TestServer::start().await;
    let counter = guests::bytes(guests::REUSE_COUNTER);
    let (status, body) = server
        .deploy_bytes("count", "?reuse=3", counter.clone())
        .await;
    assert!(status.is_success(), "{status} {body}");
    assert_eq!(server.route("count").await.limits.reuse, 3);
    server.deploy_bytes("plain", "", counter).await;
    let mut conn = Connection::open(server.data).await;

    let first = count(&server, &mut conn, "count", "/count").await;
    assert_eq!(first.calls, 1);
    assert_eq!(idle(&server, "count").await, 1.0, "the instance waits idle");
    for calls in 2..=3 {
        let next = count(&server, &mut conn, "count", "/count").await;
        assert_eq!(
            next,
            Count {
                calls,
                instance: first.instance
            },
            "call {calls} is served by the same instance"
        );
    }
    assert_eq!(
        idle(&server, "count").await,
        0.0,
        "an instance that has served its 3 requests is dropped"
    );
    let fourth = count(&server, &mut conn, "count", "/count").await;
    assert_eq!(fourth.calls, 1, "the fourth request gets a fresh instance");
    assert_ne!(fourth.instance, first.instance);

    // Without `reuse`, every request starts from scratch.
    for _ in 0..3 {
        assert_eq!(count(&server, &mut conn, "plain", "/plain").await.calls, 1);
    }
    assert_eq!(idle(&server, "plain").await, 0.0);

    // An idle instance is dropped after its timeout.
    handoff_tests::eventually("the idle instance to be dropped", LIMIT, || async {
        (idle(&server, "count").await == 0.0).then_some(())
    })
    .await;
    assert_eq!(count(&server, &mut conn, "count", "/count").await.calls, 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_or_an_unfinished_response_discards_the_instance() {
    let server = TestServer::start().await;
    let (status, body) = server
        .deploy_bytes("count", "?reuse=100", guests::bytes(guests::REUSE_COUNTER))
        .await;
    assert!(status.is_success(), "{status} {body}");
    let mut conn = Connection::open(server.data).await;
    let mut last = count(&server, &mut conn, "count", "/count").await;
    let again = count(&server, &mut conn, "count", "/count").await;
    assert_eq!(again.instance, last.instance, "reuse is on");
    assert_eq!(again.calls, 2);
    last = again;

    for (path, what) in [
        ("/count/trap", "a trap"),
        ("/count/leak", "a response body the guest did not finish"),
        ("/count/no-response", "no response"),
    ] {
        // A trap and no response are a 500; an unfinished body ends with an error, whether
        // the client reads it as an error or a cut-short body.
        let mut failing = Connection::open(server.data).await;
        if let Ok((status, body)) = failing.get(path).await {
            assert_eq!(
                status,
                StatusCode::INTERNAL_SERVER_ERROR,
                "{what}: {body:?}"
            );
        }
        settle(&server, "count").await;
        assert_eq!(
            idle(&server, "count").await,
            0.0,
            "{what} discards the instance"
        );
        let next = count(&server, &mut conn, "count", "/count").await;
        assert_eq!(next.calls, 1, "after {what}, a fresh instance");
        assert_ne!(
            next.instance, last.instance,
            "after {what}, a fresh instance"
        );
        last = next;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_starts_fresh_instances() {
    let server = TestServer::start().await;
    let counter = guests::bytes(guests::REUSE_COUNTER);
    let (status, body) = server
        .deploy_bytes("count", "?reuse=100", counter.clone())
        .await;
    assert!(status.is_success(), "{status} {body}");
    let digest = typed::<Deployed>(&body).version;
    // A request that keeps the old version draining after the swap.
    let data = server.data;
    let held = tokio::spawn(async move {
        let mut conn = Connection::open(data).await;
        conn.get("/count/hold").await.expect("held request")
    });
    handoff_tests::eventually("the held request to start", LIMIT, || async {
        (server.route("count").await.in_flight == 1).then_some(())
    })
    .await;
    let mut conn = Connection::open(server.data).await;
    // No later than the instance is parked.
    let parked = Instant::now();
    let (status, body) = conn.get("/count").await.expect("request");
    assert_eq!(status, StatusCode::OK, "{body:?}");
    handoff_tests::eventually("the instance to wait idle", LIMIT, || async {
        (idle(&server, "count").await == 1.0).then_some(())
    })
    .await;
    let old: String = String::from_utf8_lossy(&body).into_owned();

    // The same bytes with another config: a new version of the route.
    let (status, body) = server
        .deploy_bytes("count", "?reuse=100&config=ROUND=2", counter)
        .await;
    assert!(status.is_success(), "{status} {body}");
    assert!(typed::<Deployed>(&body).changed, "{body}");
    // The old version drains (its held request runs on), but its idle instance is gone at
    // once, well before its idle timeout.
    let draining = format!(
        "handoff_version_idle_instances{{route=\"count\",version=\"{}\",state=\"draining\"}}",
        digest
    );
    handoff_tests::eventually(
        "the retired version's idle instance to be dropped",
        LIMIT,
        || async { (server.metric(&draining).await == 0.0).then_some(()) },
    )
    .await;
    assert!(
        parked.elapsed() < handoff::reuse::IDLE_TIMEOUT,
        "dropped as the version retired, not by the idle timeout"
    );
    let (status, _) = held.await.expect("held request");
    assert_eq!(
        status,
        StatusCode::OK,
        "the drain let the held request finish"
    );
    let mut conn = Connection::open(server.data).await;
    let new = count(&server, &mut conn, "count", "/count").await;
    assert_eq!(new.calls, 1, "the new version starts a fresh instance");
    assert!(!old.ends_with(&format!(" {}", new.instance)));
    assert_eq!(count(&server, &mut conn, "count", "/count").await.calls, 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeploy_that_only_moves_the_prefix_starts_fresh_instances() {
    // The SDK's router strips the prefix its guest read from its environment, once per
    // instance: an instance parked before the move would answer 404 on the new prefix.
    let server = TestServer::start().await;
    let api = guests::bytes(guests::JSON_API);
    let (code, body) = server
        .deploy_bytes("shop", "?prefix=/shop&reuse=5", api.clone())
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let mut conn = Connection::open(server.data).await;
    for _ in 0..3 {
        let (status, body) = conn.get("/shop/items/2").await.expect("request");
        assert_eq!(status, StatusCode::OK, "{body:?}");
        settle(&server, "shop").await;
    }
    let (code, body) = server
        .deploy_bytes("shop", "?prefix=/store&reuse=5", api)
        .await;
    assert!(code.is_success(), "{code} {body}");
    for _ in 0..6 {
        let (status, body) = conn.get("/store/items/2").await.expect("request");
        assert_eq!(status, StatusCode::OK, "on the new prefix: {body:?}");
        settle(&server, "shop").await;
    }
    server.shutdown().await;
}
