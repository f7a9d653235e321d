//! Every per-route promise, kept for WASI 0.3 guests (`p3-hello` and `p3-kv`, built with the
//! `wasip3` crate) as for 0.2 ones: the memory limit, `max-concurrency`, body limits, the
//! outbound allow-list and address checks of the 0.3 client interface, key-value storage
//! through the 0.3 linker (rollouts, shadows and a cluster of 0.3 versions: `wasi3_delivery`).
//! Each runs on fresh instances and on shared ones
//! (`reuse` with `instance-concurrency`), where one request's failure must not become its
//! neighbours'.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use handoff::config::Config;
use handoff_tests::{Connection, TestServer, detail, eventually, get_request, guests};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// A bound against hangs only.
pub(crate) const GENEROUS: Duration = Duration::from_secs(60);

/// What `p3-hello` answers on any plain path.
pub(crate) const HELLO: &str = "hello from wasi 0.3";

/// Instances shared by requests, as `wasmtime serve` runs 0.3 guests.
pub(crate) const SHARED: &str = "reuse=64&instance-concurrency=8";

/// Deploys `guest` to `route` with `query` (without its `?`), asserting it worked.
pub(crate) async fn deploy(server: &TestServer, route: &str, query: &str, guest: &str) {
    let (code, body) = server
        .deploy_bytes(route, &format!("?{query}"), guests::bytes(guest))
        .await;
    assert!(code.is_success(), "{route}?{query}: {body}");
    assert_eq!(server.route(route).await.active.wasi, "0.3");
}

/// The route's failed requests, as its status counts them.
pub(crate) async fn failures(server: &TestServer, route: &str) -> u64 {
    server.route(route).await.active.failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_03_guest_growing_past_max_memory_fails_that_request_and_not_the_route() {
    let server = TestServer::start().await;
    for (route, shared) in [("fresh", ""), ("shared", SHARED)] {
        let query = format!("max-memory=16MiB&{shared}");
        deploy(&server, route, &query, guests::P3_HELLO).await;
        assert_eq!(server.route(route).await.limits.max_memory_bytes, 16 << 20);
        let (status, body) = server.get(&format!("/{route}/memory?mb=4")).await;
        assert_eq!(status, StatusCode::OK, "{route}: {body}");
        // A neighbour waits on the same instance while one request grows past the limit.
        let neighbour = {
            let (addr, path) = (server.data, format!("/{route}/sleep?ms=300"));
            tokio::spawn(async move { Connection::open(addr).await.get_text(&path).await })
        };
        let (status, body) = server.get(&format!("/{route}/memory?mb=64")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{route}: {body}");
        for internal in ["memory", "wasm", "limit"] {
            assert!(!body.contains(internal), "nothing internal: {body}");
        }
        let neighbour = neighbour.await.unwrap();
        // On a shared instance the neighbour may have been served by the one that trapped
        // (then it fails with it); it never hangs, and the route serves on.
        assert!(
            neighbour.0 == StatusCode::OK || (!shared.is_empty() && neighbour.0.is_server_error()),
            "{route}: {neighbour:?}"
        );
        assert_eq!(
            server.get(&format!("/{route}")).await,
            (StatusCode::OK, HELLO.into())
        );
        let (status, body) = server.get(&format!("/{route}/memory?mb=4")).await;
        assert_eq!(status, StatusCode::OK, "{route}: {body}");
        assert!(failures(&server, route).await >= 1, "the trap counts");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrency_sheds_03_requests_with_503_as_overload_not_failure() {
    let server = TestServer::start().await;
    for (route, shared) in [("narrow", ""), ("narrowshared", SHARED)] {
        deploy(
            &server,
            route,
            &format!("max-concurrency=2&{shared}"),
            guests::P3_HELLO,
        )
        .await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut conn = Connection::open(server.data).await;
            let response = conn
                .send(get_request(&format!("/{route}/stream?n=30&ms=100")))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            held.push((conn, response));
        }
        let mut conn = Connection::open(server.data).await;
        let response = conn.send(get_request(&format!("/{route}"))).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{route}"
        );
        assert_eq!(response.headers()["retry-after"], "1");
        assert_eq!(server.route(route).await.in_flight, 2);
        for (_conn, response) in held {
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert!(body.ends_with(b"chunk 29\n"), "{body:?}");
        }
        assert_eq!(
            server.get(&format!("/{route}")).await,
            (StatusCode::OK, HELLO.into())
        );
        // The 503 was overload, not a failure of the version.
        assert_eq!(failures(&server, route).await, 0, "{route}");
    }
    server.shutdown().await;
}

/// Sends `POST {path}` with a chunked body (no Content-Length) made of `chunks`, over a raw
/// connection; returns the status code and the rest of the response.
async fn post_chunked(addr: SocketAddr, path: &str, chunks: &[&[u8]]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
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
    let read = tokio::time::timeout(GENEROUS, async {
        let mut buf = [0u8; 4096];
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
async fn a_02_deploy_after_a_shared_03_one_keeps_instance_concurrency_for_03_versions() {
    let server = TestServer::start().await;
    deploy(&server, "api", SHARED, guests::P3_HELLO).await;
    // A plain 0.2 deploy after it: accepted; its instances serve one request at a time.
    let deployed = server.deployed("api", guests::TAGGED_V1).await;
    assert!(deployed.changed, "{deployed:?}");
    let status = server.route("api").await;
    assert_eq!(status.active.wasi, "0.2", "{status:?}");
    assert_eq!(status.limits.instance_concurrency, 8, "{status:?}");
    assert_eq!(server.get("/api").await, (StatusCode::OK, "v1".into()));
    // Asking for it with a 0.2 component in the same deploy is still refused, naming why.
    let (code, body) = server
        .deploy_bytes(
            "api",
            "?instance-concurrency=4",
            guests::bytes(guests::TAGGED_V2),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(detail(&body).contains("WASI 0.2 component"), "{body}");
    // Back to the 0.3 version: its instances are shared again.
    let (code, body) = server
        .post_json("/v1/routes/api/rollback", Value::Null)
        .await;
    assert!(code.is_success(), "{body}");
    let (_, first) = server.get("/api/count").await;
    let instance = first.rsplit(' ').next().unwrap().to_owned();
    let (_, second) = server.get("/api/count").await;
    assert!(
        second.ends_with(&format!("instance {instance}")),
        "{first} / {second}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_response_body_limits_hold_for_03_guests() {
    let server = TestServer::start().await;
    for (route, shared) in [("tight", ""), ("tightshared", SHARED)] {
        deploy(
            &server,
            route,
            &format!("max-request-body=1KiB&max-response-body=64KiB&{shared}"),
            guests::P3_HELLO,
        )
        .await;
        let post = |size: usize| {
            Request::builder()
                .method(Method::POST)
                .uri(format!("/{route}/echo"))
                .header("host", "x")
                .body(Full::new(Bytes::from(vec![b'a'; size])))
                .unwrap()
        };
        // Declared lengths: over the limit is 413 before the guest runs; under it, echoed.
        let (status, _) = handoff_tests::send(server.data, post(2048)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{route}");
        let (status, body) = handoff_tests::send(server.data, post(512)).await;
        assert_eq!((status, body.len()), (StatusCode::OK, 512), "{route}");
        // Chunked: the guest reads until the body goes over, the client gets 413.
        let half = vec![b' '; 512];
        let big = vec![b' '; 2048];
        let path = format!("/{route}/echo");
        let (status, answer) = post_chunked(server.data, &path, &[&half, &half]).await;
        assert_eq!(status, 200, "{answer}");
        let (status, answer) = post_chunked(server.data, &path, &[&half, &big]).await;
        assert_eq!(status, 413, "{answer}");
        assert!(
            answer.contains("larger than this route's limit of 1024 bytes"),
            "{answer}"
        );
        // A client's oversize body is not the version's failure.
        assert_eq!(failures(&server, route).await, 0, "{route}");

        // The response body: whole under the limit, cut off (an error, not a short body)
        // over it.
        let mut conn = Connection::open(server.data).await;
        let (status, body) = conn.get(&format!("/{route}/big?kb=48")).await.unwrap();
        assert_eq!((status, body.len()), (StatusCode::OK, 48 << 10));
        let mut conn = Connection::open(server.data).await;
        assert!(
            conn.get(&format!("/{route}/big?kb=1024")).await.is_err(),
            "{route}: a cut-off body ends in an error"
        );
        assert_eq!(
            server.get(&format!("/{route}")).await,
            (StatusCode::OK, HELLO.into())
        );
    }
    server.shutdown().await;
}

/// A tiny upstream on loopback answering every request with `hello from upstream`, and how
/// many it answered.
pub(crate) async fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let calls = counted.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    calls.fetch_add(1, Ordering::Relaxed);
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
    (addr, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_03_client_reaches_only_allowed_public_destinations() {
    let (up, _) = upstream().await;
    let port = up.port();
    let server = TestServer::start().await;
    let url = format!("http://{up}/x");
    for shared in ["", SHARED] {
        deploy(
            &server,
            "allowed",
            &format!("allow-outbound=http://{up}&{shared}"),
            guests::P3_HELLO,
        )
        .await;
        deploy(&server, "closed", shared, guests::P3_HELLO).await;
        deploy(
            &server,
            "byname",
            &format!("allow-outbound=http://localhost:{port}&{shared}"),
            guests::P3_HELLO,
        )
        .await;
        // Allowed: the guest gets the upstream's answer.
        assert_eq!(
            server.get(&format!("/allowed/fetch?url={url}")).await,
            (StatusCode::OK, "200 hello from upstream".into())
        );
        // Not on the list: denied in the guest.
        let (status, body) = server.get(&format!("/closed/fetch?url={url}")).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        assert!(body.contains("HttpRequestDenied"), "{body}");
        // On the list by a name that resolves to loopback: refused at the address.
        let (status, body) = server
            .get(&format!("/byname/fetch?url=http://localhost:{port}/x"))
            .await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        assert!(body.contains("DestinationIpProhibited"), "{body}");
        // The refusals hurt nothing.
        for route in ["closed", "byname"] {
            assert_eq!(
                server.get(&format!("/{route}")).await,
                (StatusCode::OK, HELLO.into())
            );
        }
    }
    server.shutdown().await;

    // With private destinations allowed, the name reaches loopback.
    let server = TestServer::start_with(Config {
        outbound_private: true,
        ..Config::ephemeral()
    })
    .await;
    deploy(
        &server,
        "byname",
        &format!("allow-outbound=http://localhost:{port}"),
        guests::P3_HELLO,
    )
    .await;
    assert_eq!(
        server
            .get(&format!("/byname/fetch?url=http://localhost:{port}/x"))
            .await,
        (StatusCode::OK, "200 hello from upstream".into())
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_03_guest_uses_handoff_kv_and_both_keyvalue_drafts_on_its_routes_bucket() {
    let server = TestServer::start().await;
    deploy(&server, "kv", SHARED, guests::P3_KV).await;
    let get = |path: &'static str| server.get(path);
    assert_eq!(get("/kv/incr?key=n").await, (StatusCode::OK, "1".into()));
    assert_eq!(get("/kv/incr?key=n").await, (StatusCode::OK, "2".into()));
    // The older draft works on the same bucket.
    assert_eq!(
        get("/kv/incr-draft?key=n").await,
        (StatusCode::OK, "3".into())
    );
    assert_eq!(get("/kv/get?key=n").await, (StatusCode::OK, "3".into()));
    // handoff:kv's versioned values.
    let (status, version) = get("/kv/vset?key=v&value=hi").await;
    assert_eq!(status, StatusCode::OK, "{version}");
    let version: u64 = version.parse().unwrap();
    assert_eq!(
        get("/kv/vget?key=v").await,
        (StatusCode::OK, format!("hi {version}"))
    );
    assert_eq!(get("/kv/get?key=v").await, (StatusCode::OK, "hi".into()));
    assert_eq!(get("/kv/vget?key=none").await.0, StatusCode::NOT_FOUND);

    // Concurrent increments on shared instances: each value handed out once.
    let all =
        handoff_tests::increments(server.data, "/kv/incr?key=c", 40, Instant::now() + GENEROUS)
            .await;
    handoff_tests::assert_each_value_once(all, 40);

    // The data is the route's: a 0.2 version of the route reads what the 0.3 one wrote.
    server.deploy("kv", guests::KV_PLAIN).await;
    assert_eq!(get("/kv/get?key=n").await, (StatusCode::OK, "3".into()));
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

/// Sends `GET path` on a connection of its own and drops the connection once the request is
/// in flight on `route` (`before` requests were in flight already).
async fn leave(server: &TestServer, route: &str, path: &str, before: usize) {
    let (go, gone) = tokio::sync::oneshot::channel::<()>();
    let (addr, path) = (server.data, path.to_owned());
    let client = tokio::spawn(async move {
        let mut conn = Connection::open(addr).await;
        tokio::select! {
            answered = conn.send(get_request(&path)) => {
                panic!("answered: {:?}", answered.map(|r| r.status()))
            }
            _ = gone => {}
        }
    });
    eventually("the request to be in flight", GENEROUS, || async {
        (server.route(route).await.in_flight == before + 1).then_some(())
    })
    .await;
    go.send(()).unwrap();
    client.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_stops_its_03_guests_work() {
    let server = TestServer::start().await;
    // A fresh instance: the request was all it served, so it is dropped, its work with it,
    // long before the guest's minute of waiting ends.
    deploy(&server, "fresh", "request-timeout=5m", guests::P3_HELLO).await;
    leave(&server, "fresh", "/fresh/sleep?ms=120000", 0).await;
    eventually("the instance to be dropped", GENEROUS, || async {
        (instances(&server, "fresh").await == 0.0).then_some(())
    })
    .await;
    assert_eq!(server.route("fresh").await.in_flight, 0);
    assert_eq!(server.get("/fresh").await, (StatusCode::OK, HELLO.into()));

    // A shared instance: it takes no new requests once a client of its left (as after a
    // timeout); its other requests are served to their end.
    deploy(
        &server,
        "shared",
        &format!("request-timeout=5m&{SHARED}"),
        guests::P3_HELLO,
    )
    .await;
    let (_, body) = server.get("/shared/count").await;
    let instance = body.rsplit(' ').next().unwrap().to_owned();
    let neighbour = {
        let addr = server.data;
        tokio::spawn(async move {
            Connection::open(addr)
                .await
                .get_text("/shared/sleep?ms=1500")
                .await
        })
    };
    eventually("the neighbour to be in flight", GENEROUS, || async {
        (server.route("shared").await.in_flight == 1).then_some(())
    })
    .await;
    leave(&server, "shared", "/shared/sleep?ms=120000", 1).await;
    let (status, body) = neighbour.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = server.get("/shared/count").await;
    assert!(
        !body.ends_with(&format!("instance {instance}")),
        "the abandoned instance takes no new requests: {body}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeploy_that_only_moves_the_prefix_gives_03_requests_fresh_instances() {
    // A guest reads its environment once per instance: one started on the old prefix would
    // tell requests on the new one the old prefix.
    let server = TestServer::start().await;
    let p3 = guests::bytes(guests::P3_HELLO);
    let (code, body) = server
        .deploy_bytes("shop", &format!("?prefix=/shop&{SHARED}"), p3.clone())
        .await;
    assert!(code.is_success(), "{body}");
    let env = "env?name=HANDOFF_ROUTE_PREFIX";
    for _ in 0..3 {
        assert_eq!(
            server.get(&format!("/shop/{env}")).await,
            (StatusCode::OK, "/shop".into())
        );
    }
    let (code, body) = server
        .deploy_bytes("shop", &format!("?prefix=/store&{SHARED}"), p3)
        .await;
    assert!(code.is_success(), "{body}");
    for _ in 0..3 {
        assert_eq!(
            server.get(&format!("/store/{env}")).await,
            (StatusCode::OK, "/store".into()),
            "on the new prefix"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_03_body_cut_by_a_trap_ends_in_an_error_and_counts_as_a_failure() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    for (route, query) in [("fresh", ""), ("shared", SHARED)] {
        deploy(&server, route, query, guests::P3_HELLO).await;
        // Two chunks, then a trap where the guest would have ended its body: wasmtime ends the
        // body of a dropped instance as if it were whole; the client must see it cut.
        let mut stream = tokio::net::TcpStream::connect(server.data).await.unwrap();
        let head =
            format!("GET /{route}/stream?n=2&ms=10&trap=1 HTTP/1.1\r\nhost: handoff.test\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = tokio::time::timeout(GENEROUS, stream.read(&mut buf))
            .await
            .expect("the connection ends")
        {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{route}: {answer}");
        assert!(answer.contains("chunk 0"), "{route}: {answer}");
        assert!(
            !answer.ends_with("0\r\n\r\n"),
            "{route}: a cut body must not end as a whole one: {answer:?}"
        );
        let active = server.route(route).await.active;
        assert_eq!(active.failures, 1, "{route}: {active:?}");
    }
    server.shutdown().await;
}
