//! Clients that never read their responses: an HTTP/2 client that advertises a zero
//! flow-control window, an HTTP/1.1 client that leaves a large body in its socket. Each such
//! response ends at its request's deadline (`request-timeout` covers the response body): the
//! HTTP/2 stream is reset, the HTTP/1.1 connection closed, and the request lets go of its
//! route's concurrency slot and its version, so other clients are served and a retired version
//! is freed.
//!
//! The host's own bodies (a 404, a 503, admin answers, event streams, log tails) are bounded
//! by a stall limit instead: a client that lets nothing through for `--idle-timeout` while
//! the server has bytes for it loses the stream (HTTP/2) or its connection (HTTP/1.1).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use handoff::config::Config;
use handoff_tests::{ADMIN_HOST, TestServer, eventually, guests};
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

const GENEROUS: Duration = Duration::from_secs(20);

/// A server whose drain deadline is far beyond the tests' waits (only the request deadline can
/// free what they hold), with the hostile guest at `/slow`: two requests at once, 1 s each.
async fn server() -> TestServer {
    let server = TestServer::start_with(Config {
        drain_timeout: Duration::from_secs(300),
        ..Config::ephemeral()
    })
    .await;
    let (code, body) = server
        .deploy_bytes(
            "slow",
            "?max-concurrency=2&request-timeout=1s",
            guests::bytes(guests::HOSTILE),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    server
}

/// Deploys another version to `/slow`, with the same limits (the route stays full while the
/// old version's requests hold its two slots).
async fn redeploy(server: &TestServer) {
    let (code, body) = server
        .deploy_bytes(
            "slow",
            "?max-concurrency=2&request-timeout=1s",
            guests::bytes(guests::TAGGED_V1),
        )
        .await;
    assert!(code.is_success(), "{code} {body}");
}

/// Waits until the route is served again, nothing holds its version, and the version the
/// deploy retired (while the unread responses held it) is freed.
async fn freed_by_the_deadline(server: &TestServer) {
    eventually("another client to be served", GENEROUS, || async {
        (server.get("/slow/ok").await == (StatusCode::OK, "v1".into())).then_some(())
    })
    .await;
    eventually(
        "in-flight back to 0 and the retired version freed",
        GENEROUS,
        || async {
            let status = server.route("slow").await;
            (status.in_flight == 0 && status.draining.is_empty()).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_with_a_zero_window_loses_its_streams_at_the_deadline() {
    let server = server().await;
    // SETTINGS_INITIAL_WINDOW_SIZE = 0: the server may send headers but no body byte.
    let h2 = handoff_tests::h2_connect(server.data, 0).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let request = http::Request::builder()
            .uri("http://handoff.test/slow/ok")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let response = h2.clone().send_request(request).await.expect("a head");
        assert_eq!(response.status(), StatusCode::OK);
        held.push(response);
    }
    // A deploy retires the version the unread bodies hold (with both of the route's slots).
    redeploy(&server).await;
    freed_by_the_deadline(&server).await;
    // Each unread stream was reset: its body ends with an error, not cleanly.
    for response in held {
        let body = tokio::time::timeout(GENEROUS, response.into_body().collect())
            .await
            .expect("the stream ends");
        assert!(body.is_err(), "an overdue stream is reset, not finished");
    }
    // The connection itself still serves (heads; its bodies are never read).
    let request = http::Request::builder()
        .uri("http://handoff.test/slow/ok")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = h2.clone().send_request(request).await.expect("a head");
    assert_eq!(response.status(), StatusCode::OK);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_that_never_reads_a_large_body_is_closed_at_the_deadline() {
    let server = server().await;
    let mut held = Vec::new();
    for _ in 0..2 {
        // A small receive buffer, never read: the 4 MiB body stays in the server.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(server.data).await.expect("connect");
        stream
            .write_all(b"GET /slow/big HTTP/1.1\r\nhost: handoff.test\r\n\r\n")
            .await
            .unwrap();
        held.push(stream);
    }
    eventually("both requests to be routed", GENEROUS, || async {
        (server.route("slow").await.requests == 2).then_some(())
    })
    .await;
    redeploy(&server).await;
    freed_by_the_deadline(&server).await;
    // The server closed each connection: reading reaches its end (or a reset) within a bound.
    for mut stream in held {
        let drained = tokio::time::timeout(GENEROUS, async {
            let mut sink = tokio::io::sink();
            tokio::io::copy(&mut stream, &mut sink).await
        })
        .await
        .expect("the server closed the connection");
        if let Ok(bytes) = drained {
            assert!(bytes < 4 << 20, "the body was cut short: {bytes} bytes");
        }
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_response_ends_at_its_versions_drain_deadline() {
    // A long request deadline and a short drain: the retired version's cut-off comes first.
    let server = TestServer::start_with(Config {
        drain_timeout: Duration::from_secs(1),
        ..Config::ephemeral()
    })
    .await;
    let (code, body) = server
        .deploy_bytes(
            "slow",
            "?request-timeout=10m",
            guests::bytes(guests::HOSTILE),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let h2 = handoff_tests::h2_connect(server.data, 0).await;
    let request = http::Request::builder()
        .uri("http://handoff.test/slow/ok")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = h2.clone().send_request(request).await.expect("a head");
    assert_eq!(response.status(), StatusCode::OK);
    server.deploy("slow", guests::TAGGED_V1).await;
    eventually("the retired version to be freed", GENEROUS, || async {
        let status = server.route("slow").await;
        (status.in_flight == 0 && status.draining.is_empty()).then_some(())
    })
    .await;
    let body = tokio::time::timeout(GENEROUS, response.into_body().collect())
        .await
        .expect("the stream ends");
    assert!(body.is_err(), "the cut-off stream is reset, not finished");
    server.shutdown().await;
}

/// A server with a short idle timeout (the stall limit of the host's own bodies) and the
/// hostile guest at `/slow`.
async fn short_idle_server() -> TestServer {
    let server = TestServer::start_with(Config {
        idle_timeout: Duration::from_millis(700),
        ..Config::ephemeral()
    })
    .await;
    server.deploy("slow", guests::HOSTILE).await;
    server
}

/// `GET uri` on the zero-window HTTP/2 connection `h2`: the response head.
async fn h2_get(
    h2: &hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>,
    uri: &str,
) -> http::Response<hyper::body::Incoming> {
    let request = http::Request::builder()
        .uri(uri)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    tokio::time::timeout(GENEROUS, h2.clone().send_request(request))
        .await
        .expect("a head in time")
        .expect("a head")
}

/// Each body ends with an error (its stream was reset) within a bound.
async fn reset(responses: Vec<http::Response<hyper::body::Incoming>>) {
    for (n, response) in responses.into_iter().enumerate() {
        let body = tokio::time::timeout(GENEROUS, response.into_body().collect())
            .await
            .unwrap_or_else(|_| panic!("stalled stream {n} ends"));
        assert!(body.is_err(), "stalled stream {n} is reset, not finished");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_to_an_h2_client_with_a_zero_window_are_reset_after_the_idle_timeout() {
    let server = short_idle_server().await;
    let h2 = handoff_tests::h2_connect(server.admin, 0).await;
    let events = format!("http://{ADMIN_HOST}/v1/events");
    // The console's two streams: the event stream and a route's live log tail.
    let logs = format!("http://{ADMIN_HOST}/v1/routes/slow/logs");
    let mut held = Vec::new();
    for _ in 0..handoff::admin::events::MAX_STREAMS {
        let response = h2_get(&h2, &events).await;
        assert_eq!(response.status(), StatusCode::OK);
        held.push(response);
    }
    // Every place is taken by a client that reads nothing...
    let full = h2_get(&h2, &events).await;
    assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
    let tail = h2_get(&h2, &logs).await;
    assert_eq!(tail.status(), StatusCode::OK);
    held.push(tail);
    // ...until the idle timeout passes: each stalled stream is reset and gives its place back.
    reset(held).await;
    let opened = eventually("an event stream to open again", GENEROUS, || async {
        let response = h2_get(&h2, &events).await;
        (response.status() == StatusCode::OK).then_some(response)
    })
    .await;
    reset(vec![opened]).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_written_bodies_to_an_h2_client_with_a_zero_window_are_reset_after_the_idle_timeout() {
    let server = short_idle_server().await;
    // A full route: its one slot held by a guest that never answers, so the next request
    // gets the host's 503.
    let (code, body) = server
        .deploy_bytes(
            "full",
            "?max-concurrency=1&request-timeout=1m",
            guests::bytes(guests::HOSTILE),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let holder = tokio::spawn({
        let data = server.data;
        async move { handoff_tests::send(data, handoff_tests::get_request("/full/sleep")).await }
    });
    eventually("the route's slot to be taken", GENEROUS, || async {
        (server.route("full").await.in_flight == 1).then_some(())
    })
    .await;
    let data = handoff_tests::h2_connect(server.data, 0).await;
    let admin = handoff_tests::h2_connect(server.admin, 0).await;
    let mut held = Vec::new();
    for (h2, uri, status) in [
        (
            &data,
            "http://handoff.test/nowhere".to_owned(),
            StatusCode::NOT_FOUND,
        ),
        (
            &data,
            "http://handoff.test/full/ok".to_owned(),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            &admin,
            format!("http://{ADMIN_HOST}/v1/routes"),
            StatusCode::OK,
        ),
        (
            &admin,
            format!("http://{ADMIN_HOST}/v1/routes/nowhere"),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let response = h2_get(h2, &uri).await;
        assert_eq!(response.status(), status, "{uri}");
        held.push(response);
    }
    reset(held).await;
    holder.abort();
    server.shutdown().await;
}

/// Reads from `stream` until `marker` has arrived (a few bytes: the response head and the
/// stream's first message), then returns; the rest stays unread.
async fn read_until(stream: &mut tokio::net::TcpStream, marker: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buffer = [0u8; 256];
    while !seen.windows(marker.len()).any(|w| w == marker) {
        let n = tokio::time::timeout(GENEROUS, stream.read(&mut buffer))
            .await
            .expect("the head in time")
            .expect("a read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buffer[..n]);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_that_never_reads_a_log_tail_is_closed_after_the_idle_timeout() {
    let server = short_idle_server().await;
    let (code, body) = server
        .deploy_bytes(
            "flood",
            "?request-timeout=5s",
            guests::bytes(guests::HOSTILE),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let request = format!("GET /v1/routes/flood/logs HTTP/1.1\r\nhost: {ADMIN_HOST}\r\n\r\n");
    // The client that never reads: a small receive buffer (the kernel's loopback buffers would
    // take megabytes otherwise), the head and the first message read, nothing after.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut held = socket.connect(server.admin).await.expect("connect");
    held.write_all(request.as_bytes()).await.unwrap();
    let head = read_until(&mut held, b"retry:").await;
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // A client that reads the same tail all along: it counts the lines, and its stream never
    // ends while the test runs.
    let mut reader = tokio::net::TcpStream::connect(server.admin).await.unwrap();
    reader.write_all(request.as_bytes()).await.unwrap();
    read_until(&mut reader, b"retry:").await;
    let lines = Arc::new(AtomicU64::new(0));
    let reading = tokio::spawn({
        let lines = lines.clone();
        async move {
            use tokio::io::AsyncReadExt;
            let mut tail = Vec::new();
            let mut buffer = vec![0u8; 64 << 10];
            loop {
                let n = reader.read(&mut buffer).await.expect("a read");
                assert!(n > 0, "the reading client's tail ended");
                tail.extend_from_slice(&buffer[..n]);
                let found = tail.windows(9).filter(|w| w == b"\ndata: {\"").count();
                lines.fetch_add(found as u64, Ordering::SeqCst);
                tail.drain(..tail.len().saturating_sub(8));
            }
        }
    });
    // Lines of about 15 KB, as many as the version's budget lets through until the request's
    // deadline (5 s): megabytes, more than the server's socket and hyper's buffers hold.
    let flood = tokio::spawn({
        let data = server.data;
        async move {
            handoff_tests::send(
                data,
                handoff_tests::get_request("/flood/log-flood?size=15000"),
            )
            .await
        }
    });
    eventually(
        "the reading client to get the flood's lines",
        GENEROUS,
        || async { (lines.load(Ordering::SeqCst) >= 100).then_some(()) },
    )
    .await;
    // Other admin clients are served meanwhile, at once.
    for _ in 0..3 {
        let (status, _) = tokio::time::timeout(
            Duration::from_secs(5),
            server.admin(http::Method::GET, "/v1/routes"),
        )
        .await
        .expect("an admin answer while the tail is held");
        assert_eq!(status, StatusCode::OK);
    }
    let _ = flood.await;
    // The server closed the held connection (once its writes had waited for the idle
    // timeout): reading what it holds reaches the end, instead of a tail that goes on.
    let drained = tokio::time::timeout(GENEROUS, async {
        let mut sink = tokio::io::sink();
        tokio::io::copy(&mut held, &mut sink).await
    })
    .await
    .expect("the server closed the connection of the client that never read");
    if let Ok(bytes) = drained {
        assert!(
            bytes > 1 << 20,
            "the tail had megabytes for it: {bytes} bytes"
        );
    }
    // The reader was served throughout, and still is.
    assert!(!reading.is_finished(), "{:?}", reading.await);
    reading.abort();
    let (status, _) = server.admin(http::Method::GET, "/v1/routes").await;
    assert_eq!(status, StatusCode::OK);
    server.shutdown().await;
}
