//! WASI 0.3 guests (`wasi:http/service` components, the `p3-hello` guest built with the `wasip3`
//! crate) beside WASI 0.2 ones: every path that deploys serves them, a route moves between 0.2
//! and 0.3 under load without failing a request, and drain keeps a streaming 0.3 body on its
//! version.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use handoff::config::Config;
use handoff_tests::{Connection, TestServer, detail, eventually, get_request, guests};
use http::StatusCode;
use http_body_util::BodyExt;
use serde_json::{Value, json};

/// A bound against hangs only.
const GENEROUS: Duration = Duration::from_secs(30);

/// What `p3-hello` answers on any plain path.
const HELLO: &str = "hello from wasi 0.3";

/// The counter's answer: calls of its instance, and the instance's identity.
fn count(body: &str) -> (u64, u64) {
    let words: Vec<&str> = body.split(' ').collect();
    match words[..] {
        ["calls", calls, "instance", instance] => {
            (calls.parse().unwrap(), instance.parse().unwrap())
        }
        _ => panic!("not the counter's answer: {body:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasi_03_component_deploys_and_serves_on_fresh_instances() {
    let server = TestServer::start().await;
    let deployed = server.deployed("p3", guests::P3_HELLO).await;
    let active = server.route("p3").await.active;
    assert_eq!(active.wasi, "0.3", "{active:?}");
    assert_eq!(active.version, deployed.version);
    assert_eq!(server.get("/p3").await, (StatusCode::OK, HELLO.into()));
    assert_eq!(server.get("/p3/any/path").await.1, HELLO);

    // Fresh instances by default: every request its own.
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (status, body) = server.get("/p3/count").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (calls, instance) = count(&body);
        assert_eq!(calls, 1, "a fresh instance per request");
        assert!(!seen.contains(&instance), "a fresh instance per request");
        seen.push(instance);
    }

    // A 0.2 route beside it says so.
    server.deploy("p2", guests::TAGGED_V1).await;
    assert_eq!(server.route("p2").await.active.wasi, "0.2");
    assert_eq!(server.get("/p2").await.1, "v1");

    // The request body reaches the guest, and the deploy-time config its environment.
    let (code, body) = server
        .deploy_bytes("cfg", "?config=TAG=blue", guests::bytes(guests::P3_HELLO))
        .await;
    assert!(code.is_success(), "{body}");
    assert_eq!(server.get("/cfg").await.1, format!("{HELLO} blue"));
    assert_eq!(
        server.get("/cfg/env?name=HANDOFF_ROUTE_PREFIX").await.1,
        "/cfg"
    );
    let mut conn = Connection::open(server.data).await;
    let req = http::Request::builder()
        .method(http::Method::POST)
        .uri("/cfg/echo")
        .header("host", "test")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"sent to a 0.3 guest",
        )))
        .unwrap();
    let response = conn.send(req).await.expect("echo");
    assert_eq!(response.status(), StatusCode::OK);
    let echoed = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&echoed[..], b"sent to a 0.3 guest");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_activate_rollback_and_restart_serve_wasi_03_versions() {
    let dir = tempfile::tempdir().unwrap();
    let config = || Config {
        data_dir: Some(dir.path().to_path_buf()),
        ..Config::ephemeral()
    };
    let p3_digest;
    {
        let server = TestServer::start_with(config()).await;
        server.deploy("app", guests::TAGGED_V1).await;
        p3_digest = server.upload(guests::P3_HELLO).await;
        let (code, body) = server
            .post_json("/v1/routes/app/activate", json!({ "version": p3_digest }))
            .await;
        assert!(code.is_success(), "{code} {body}");
        assert_eq!(server.get("/app").await.1, HELLO);
        assert_eq!(server.route("app").await.active.wasi, "0.3");

        // Back to 0.2 by rollback, and forward to 0.3 again.
        let (code, body) = server
            .post_json("/v1/routes/app/rollback", Value::Null)
            .await;
        assert!(code.is_success(), "{code} {body}");
        assert_eq!(server.get("/app").await.1, "v1");
        let (code, body) = server
            .post_json("/v1/routes/app/activate", json!({ "version": p3_digest }))
            .await;
        assert!(code.is_success(), "{code} {body}");
        assert_eq!(server.get("/app").await.1, HELLO);
        server.shutdown().await;
    }
    // A restart loads the 0.3 artifact into the 0.3 engine: no compile.
    let server = TestServer::start_with(config()).await;
    assert_eq!(server.get("/app").await, (StatusCode::OK, HELLO.into()));
    let active = server.route("app").await.active;
    assert_eq!(active.wasi, "0.3", "{active:?}");
    assert_eq!(active.version, p3_digest);
    assert_eq!(
        server.server().runtime().compiles(),
        0,
        "the stored artifact is loaded"
    );
    server.shutdown().await;
}

const CLIENTS: usize = 16;
const MIN_DEPLOYS: usize = 20;

/// One answer under load: when it was sent and came back, and its body.
struct Sample {
    started: Instant,
    finished: Instant,
    body: String,
}

/// A deploy under load: when it was issued and returned, and what it serves.
struct Deploy {
    issued: Instant,
    returned: Instant,
    body: &'static str,
}

/// Alternates the route `swap` between the 0.2 `tagged-v1` and the 0.3 `p3-hello` (both with
/// `query`) while `CLIENTS` keep-alive clients keep it busy: no request fails, and no request
/// that starts after a deploy returned is served by the version it replaced.
async fn swap_02_03(query: &str) {
    let server = TestServer::start().await;
    let p2 = guests::bytes(guests::TAGGED_V1);
    let p3 = guests::bytes(guests::P3_HELLO);
    let (code, body) = server.deploy_bytes("swap", query, p2.clone()).await;
    assert!(code.is_success(), "{body}");
    let mut deploys = vec![Deploy {
        issued: Instant::now(),
        returned: Instant::now(),
        body: "v1",
    }];
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let stop = stop.clone();
            let addr = server.data;
            tokio::spawn(async move {
                let mut conn = Connection::open(addr).await;
                let (mut samples, mut errors) = (Vec::new(), Vec::new());
                while !stop.load(Ordering::Relaxed) && started.elapsed() < GENEROUS * 4 {
                    let sent = Instant::now();
                    match conn.get("/swap").await {
                        Ok((StatusCode::OK, body)) => samples.push(Sample {
                            started: sent,
                            finished: Instant::now(),
                            body: String::from_utf8_lossy(&body).into_owned(),
                        }),
                        Ok((status, body)) => errors.push(format!("{status}: {body:?}")),
                        Err(error) => {
                            errors.push(format!("connection error: {error}"));
                            conn = Connection::open(addr).await;
                        }
                    }
                }
                (samples, errors)
            })
        })
        .collect();
    for round in 0..MIN_DEPLOYS {
        let (bytes, body) = if round % 2 == 0 {
            (&p3, HELLO)
        } else {
            (&p2, "v1")
        };
        let issued = Instant::now();
        let (code, answer) = server.deploy_bytes("swap", query, bytes.clone()).await;
        let returned = Instant::now();
        assert_eq!(code, StatusCode::OK, "deploy failed: {answer}");
        // Once the deploy returned, a new request gets the new version.
        assert_eq!(server.get("/swap").await, (StatusCode::OK, body.to_owned()));
        deploys.push(Deploy {
            issued,
            returned,
            body,
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut samples, mut errors) = (Vec::new(), Vec::new());
    for client in clients {
        let (s, e) = client.await.unwrap();
        samples.extend(s);
        errors.extend(e);
    }
    assert!(
        errors.is_empty(),
        "{} failed requests, first: {:?}",
        errors.len(),
        errors.first()
    );
    assert!(samples.len() > CLIENTS * 5, "too few: {}", samples.len());
    let mut stale = 0;
    let mut seen = [0usize; 2];
    for sample in &samples {
        match sample.body.as_str() {
            "v1" => seen[0] += 1,
            HELLO => seen[1] += 1,
            other => panic!("an answer from neither version: {other:?}"),
        }
        let latest = deploys
            .iter()
            .rposition(|d| d.returned <= sample.started)
            .expect("requests start after the first deploy");
        let overlapped = deploys[latest + 1..]
            .iter()
            .any(|d| d.issued <= sample.finished);
        if !overlapped && sample.body != deploys[latest].body {
            stale += 1;
        }
    }
    assert_eq!(
        stale, 0,
        "requests started after a deploy returned got the old version"
    );
    assert!(seen[0] > 0 && seen[1] > 0, "both served: {seen:?}");
    eprintln!(
        "0.2 <-> 0.3 under load ({query}): {} requests, {} deploys, 0 failed",
        samples.len(),
        deploys.len() - 1
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_moves_between_wasi_02_and_03_under_load_failing_nothing() {
    swap_02_03("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_moves_between_wasi_02_and_03_under_load_with_reuse_failing_nothing() {
    swap_02_03("?reuse=64").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_03_body_finishes_on_its_version_across_a_deploy() {
    let server = TestServer::start().await;
    let (code, body) = server
        .deploy_bytes("s", "?config=TAG=old", guests::bytes(guests::P3_HELLO))
        .await;
    assert!(code.is_success(), "{body}");
    // Compiled ahead, so the deploy below returns well within the stream.
    server.upload(guests::TAGGED_V1).await;
    let mut conn = Connection::open(server.data).await;
    let response = conn
        .send(get_request("/s/stream?n=8&ms=400"))
        .await
        .expect("stream request");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = BytesMut::new();
    while !received.ends_with(b"\n") {
        let frame = body.frame().await.expect("a frame").expect("no error");
        received.extend_from_slice(&frame.into_data().unwrap_or_default());
    }
    assert_eq!(&received[..], b"chunk 0 old\n");

    // To a 0.2 version: new requests get it at once, the stream runs on.
    let deployed = server.deployed("s", guests::TAGGED_V1).await;
    assert!(deployed.changed);
    assert_eq!(server.get("/s").await, (StatusCode::OK, "v1".into()));
    let draining = server.route("s").await.draining;
    assert_eq!(draining.len(), 1, "{draining:?}");
    let old = &draining[0].version;
    assert_eq!((old.in_flight, old.wasi.as_str()), (1, "0.3"), "{old:?}");

    let rest = body
        .collect()
        .await
        .expect("the stream completes")
        .to_bytes();
    received.extend_from_slice(&rest);
    let expected: String = (0..8).map(|i| format!("chunk {i} old\n")).collect();
    assert_eq!(String::from_utf8_lossy(&received), expected);
    eventually("the 0.3 version to drain", GENEROUS, || async {
        server.route("s").await.draining.is_empty().then_some(())
    })
    .await;
    server.shutdown().await;
}

/// The route's live WASI 0.3 instances, as `/metrics` shows them.
async fn instances(server: &TestServer, route: &str) -> f64 {
    server
        .metric(&format!(
            "handoff_version_instances{{route=\"{route}\",version="
        ))
        .await
}

/// Sends `GET {path}` on a connection of its own, in a task: its status and body.
fn spawn_get(server: &TestServer, path: &str) -> tokio::task::JoinHandle<(StatusCode, String)> {
    let (addr, path) = (server.data, path.to_owned());
    tokio::spawn(async move {
        let mut conn = Connection::open(addr).await;
        let (status, body) = conn.get(&path).await.expect("request");
        (status, String::from_utf8_lossy(&body).into_owned())
    })
}

/// Waits until a request to `path` (a `count` path of a route with instance concurrency) is
/// served by `instance` while the route's other requests run: that instance takes requests
/// beside the ones it serves now. Returns the calls it has started.
async fn joins(server: &TestServer, path: &str, instance: u64) -> u64 {
    eventually(
        "the instance to take requests beside its others",
        GENEROUS,
        || async {
            let (status, body) = server.get(path).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let (calls, id) = count(&body);
            (id == instance).then_some(calls)
        },
    )
    .await
}

/// Waits until `route` has `n` requests in flight.
async fn in_flight(server: &TestServer, route: &str, n: usize) {
    eventually("the requests to be in flight", GENEROUS, || async {
        (server.route(route).await.in_flight == n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_serves_several_requests_at_once_with_instance_concurrency() {
    let server = TestServer::start().await;
    // As the issue writes it.
    let (code, body) = server
        .deploy_bytes(
            "api",
            "?reuse=128&instance-concurrency=16",
            guests::bytes(guests::P3_HELLO),
        )
        .await;
    assert!(code.is_success(), "{code} {body}");
    let limits = server.route("api").await.limits;
    assert_eq!(
        (limits.instance_concurrency, limits.reuse),
        (16, 128),
        "{limits:?}"
    );

    // An instance, idle; a long request holds it, and the next ones join it while it waits.
    let (_, body) = server.get("/api/count").await;
    let (calls, instance) = count(&body);
    assert_eq!(calls, 1);
    let first = spawn_get(&server, "/api/sleep?ms=3000");
    in_flight(&server, "api", 1).await;
    // Requests that each wait 200 ms are served by the instance while the first one waits
    // (a request that arrives while the instance is busy starting another may get an instance
    // of its own, as on `wasmtime serve`: the ones that joined are what counts here).
    let started = Instant::now();
    for _ in 0..3 {
        joins(&server, "/api/sleep?ms=200", instance).await;
    }
    assert_eq!(
        server.route("api").await.in_flight,
        1,
        "the first request still waits"
    );
    assert!(started.elapsed() < Duration::from_millis(2900));
    let (status, body) = first.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(count(&body), (2, instance));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_concurrency_above_one_is_refused_for_a_wasi_02_version() {
    let server = TestServer::start().await;
    server.deploy("p2", guests::TAGGED_V1).await;
    let (code, body) = server
        .deploy_bytes(
            "p2",
            "?instance-concurrency=4",
            guests::bytes(guests::TAGGED_V2),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    let said = detail(&body);
    assert!(
        said.contains("instance-concurrency is 4") && said.contains("WASI 0.2"),
        "{said}"
    );
    assert_eq!(server.get("/p2").await.1, "v1", "nothing changed");
    let (code, body) = server
        .deploy_bytes(
            "p2",
            "?instance-concurrency=0",
            guests::bytes(guests::P3_HELLO),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_drops_its_instance_and_fails_the_requests_it_was_serving() {
    let server = TestServer::start().await;
    let (code, body) = server
        .deploy_bytes(
            "t",
            "?reuse=100&instance-concurrency=8",
            guests::bytes(guests::P3_HELLO),
        )
        .await;
    assert!(code.is_success(), "{body}");
    let (_, body) = server.get("/t/count").await;
    let instance = count(&body).1;
    let a = spawn_get(&server, "/t/sleep?ms=5000");
    in_flight(&server, "t", 1).await;
    joins(&server, "/t/count", instance).await;
    let b = spawn_get(&server, "/t/sleep?ms=5000");
    in_flight(&server, "t", 2).await;
    joins(&server, "/t/count", instance).await;
    assert_eq!(instances(&server, "t").await, 1.0, "both on one instance");
    let started = Instant::now();
    let (status, _) = server.get("/t/trap").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    for sibling in [a, b] {
        let (status, body) = sibling.await.unwrap();
        assert_eq!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "a request the trapped instance was serving fails: {body}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "they failed when the instance was dropped"
    );
    let active = server.route("t").await.active;
    assert_eq!(active.failures, 3, "each counts: {active:?}");
    let (_, body) = server.get("/t/count").await;
    assert_ne!(count(&body).1, instance, "a new instance after the trap");
    assert_eq!(count(&body).0, 1, "a new instance after the trap");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_deadline_gets_504_and_its_instance_takes_no_more() {
    let server = TestServer::start().await;
    let (code, body) = server
        .deploy_bytes(
            "d",
            "?reuse=100&instance-concurrency=8&request-timeout=1s",
            guests::bytes(guests::P3_HELLO),
        )
        .await;
    assert!(code.is_success(), "{body}");
    let (_, body) = server.get("/d/count").await;
    let shared = count(&body).1;
    let slow = spawn_get(&server, "/d/sleep?ms=20000");
    in_flight(&server, "d", 1).await;
    // A sibling that shares the slow one's instance is served while it waits.
    joins(&server, "/d/sleep?ms=100", shared).await;
    let (status, _) = slow.await.unwrap();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    // The instance that let a request time out takes no new ones.
    let (status, body) = server.get("/d/count").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_ne!(count(&body).1, shared, "a new instance after the timeout");
    // And it is dropped (its work with it) within a request timeout.
    eventually("the timed-out instance to be dropped", GENEROUS, || async {
        (instances(&server, "d").await <= 1.0).then_some(())
    })
    .await;

    // A guest that never yields, on a fresh instance: 504, and its instance is dropped.
    let (code, body) = server
        .deploy_bytes(
            "spinner",
            "?request-timeout=500ms",
            guests::bytes(guests::P3_HELLO),
        )
        .await;
    assert!(code.is_success(), "{body}");
    let (status, _) = server.get("/spinner/spin").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    eventually("the spinning instance to be dropped", GENEROUS, || async {
        (instances(&server, "spinner").await == 0.0).then_some(())
    })
    .await;
    assert_eq!(server.get("/spinner").await.1, HELLO, "the route serves on");
    server.shutdown().await;
}
