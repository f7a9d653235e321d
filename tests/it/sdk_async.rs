//! A WASI 0.3 guest written with our SDK (`tests/guests/sdk-async`, `export!(async handle)`)
//! on the real server: the async router, request bodies awaited chunk by chunk, deploy-time
//! config, the route's key-value bucket, a body streamed while it is computed, and all of it
//! on instances that serve several requests at once.

use std::time::Duration;

use bytes::Bytes;
use handoff_tests::{Connection, TestServer, guests};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};

/// `method path` with `body` on a connection of its own: status, `x-guest`, body.
async fn call(
    server: &TestServer,
    method: Method,
    path: &str,
    body: Bytes,
) -> (StatusCode, String, String) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "handoff.test")
        .body(Full::new(body))
        .unwrap();
    let mut conn = Connection::open(server.data).await;
    let response = conn.send(request).await.expect("a response");
    let status = response.status();
    let guest = response
        .headers()
        .get("x-guest")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, guest, String::from_utf8_lossy(&body).into_owned())
}

async fn get(server: &TestServer, path: &str) -> (StatusCode, String) {
    let (status, _, body) = call(server, Method::GET, path, Bytes::new()).await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_sdk_guest_routes_reads_bodies_reads_config_and_counts() {
    let server = TestServer::start().await;
    let (code, body) = server
        .deploy_bytes(
            "sa",
            "?config=GREETING=bonjour",
            guests::bytes(guests::SDK_ASYNC),
        )
        .await;
    assert!(code.is_success(), "{body}");
    assert_eq!(server.route("sa").await.active.wasi, "0.3");

    // The async router: blocking and async handlers side by side, its 404 and 405.
    let hello = call(&server, Method::GET, "/sa/hello", Bytes::new()).await;
    assert_eq!(
        hello,
        (
            StatusCode::OK,
            "sdk-async".into(),
            "sdk-async hello\n".into()
        )
    );
    assert_eq!(get(&server, "/sa").await.1, "sdk-async hello\n");
    assert_eq!(get(&server, "/sa/nothing").await.0, StatusCode::NOT_FOUND);
    let (status, _, body) = call(&server, Method::DELETE, "/sa/echo", Bytes::new()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");

    // A request body larger than one read, awaited to its end.
    let big = Bytes::from(vec![b'x'; 300_000]);
    assert_eq!(
        call(&server, Method::POST, "/sa/echo", big).await,
        (StatusCode::OK, "sdk-async".into(), "read 300000\n".into())
    );
    assert_eq!(
        get(&server, "/sa/config").await,
        (StatusCode::OK, "greeting bonjour\n".into())
    );
    assert_eq!(get(&server, "/sa/log").await.1, "logged\n");

    // The route's bucket outlives each (fresh) instance.
    for n in 1..=3 {
        let (status, _, body) = call(&server, Method::POST, "/sa/count/visits", Bytes::new()).await;
        assert_eq!((status, body), (StatusCode::OK, format!("count {n}\n")));
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_sdk_body_reaches_the_client_while_it_is_computed() {
    let server = TestServer::start().await;
    server.deploy("sa", guests::SDK_ASYNC).await;
    let mut conn = Connection::open(server.data).await;
    let request = handoff_tests::get_request("/sa/stream?chunks=2&delay_ms=1500");
    let response = conn.send(request).await.expect("a response");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    // The first line arrives on its own: the second is not computed yet.
    let first = tokio::time::timeout(Duration::from_secs(30), body.frame())
        .await
        .expect("the first line within the bound")
        .expect("a frame")
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(first, "chunk 1/2\n");
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "chunk 2/2\n");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_sdk_requests_share_instances_and_count_exactly() {
    const REQUESTS: usize = 24;
    let server = TestServer::start().await;
    let (code, body) = server
        .deploy_bytes(
            "sa",
            "?reuse=128&instance-concurrency=16",
            guests::bytes(guests::SDK_ASYNC),
        )
        .await;
    assert!(code.is_success(), "{body}");
    // Streams that wait between their lines, and increments, all at once.
    let tasks: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let addr = server.data;
            tokio::spawn(async move {
                let mut conn = Connection::open(addr).await;
                let (path, method) = if i % 2 == 0 {
                    ("/sa/stream?chunks=3&delay_ms=100", Method::GET)
                } else {
                    ("/sa/count/shared", Method::POST)
                };
                let request = Request::builder()
                    .method(method)
                    .uri(path)
                    .header("host", "handoff.test")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let response = conn.send(request).await.expect("a response");
                let status = response.status();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                (i, status, String::from_utf8_lossy(&body).into_owned())
            })
        })
        .collect();
    let mut counts = Vec::new();
    for task in tasks {
        let (i, status, body) = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("within the bound")
            .unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        if i % 2 == 0 {
            assert_eq!(body, "chunk 1/3\nchunk 2/3\nchunk 3/3\n");
        } else {
            counts.push(body);
        }
    }
    // Every increment counted once, whichever instance ran it.
    counts.sort_by_key(|c| {
        c.trim_start_matches("count ")
            .trim()
            .parse::<usize>()
            .unwrap()
    });
    let expected: Vec<String> = (1..=REQUESTS / 2).map(|n| format!("count {n}\n")).collect();
    assert_eq!(counts, expected);
    server.shutdown().await;
}

/// `url` as one query value: its `?`, `&`, `=` and `%` percent-encoded.
fn query_value(url: &str) -> String {
    url.replace('%', "%25")
        .replace('?', "%3F")
        .replace('&', "%26")
        .replace('=', "%3D")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_client_calls_another_route_streams_its_body_and_says_why_a_call_is_refused() {
    let server = TestServer::start().await;
    let data = server.data;
    server.deploy("up", guests::SDK_ASYNC).await;
    let (code, body) = server
        .deploy_bytes(
            "sa",
            &format!("?allow-outbound=http://{data}"),
            guests::bytes(guests::SDK_ASYNC),
        )
        .await;
    assert!(code.is_success(), "{body}");
    server.deploy("closed", guests::SDK_ASYNC).await;

    // A call to the other route: its status and body.
    let url = query_value(&format!("http://{data}/up/hello"));
    assert_eq!(
        get(&server, &format!("/sa/fetch?url={url}")).await,
        (StatusCode::OK, "sdk-async hello\n".into())
    );
    let url = query_value(&format!("http://{data}/up/nothing"));
    assert_eq!(
        get(&server, &format!("/sa/fetch?url={url}")).await.0,
        StatusCode::NOT_FOUND,
        "the other service's 404 is a response, passed on"
    );

    // The other route's streamed body passes through as it arrives: its first line reaches
    // the client while the upstream has not computed its second.
    let url = query_value(&format!("http://{data}/up/stream?chunks=2&delay_ms=1500"));
    let mut conn = Connection::open(data).await;
    let response = conn
        .send(handoff_tests::get_request(&format!("/sa/fetch?url={url}")))
        .await
        .expect("a response");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(30), body.frame())
        .await
        .expect("the first line within the bound")
        .expect("a frame")
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(first, "chunk 1/2\n");
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "chunk 2/2\n");

    // A route whose allow-list does not name the destination: the guest's error says so, and
    // what to deploy instead.
    let url = query_value(&format!("http://{data}/up/hello"));
    let (status, body) = get(&server, &format!("/closed/fetch?url={url}")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(
        body,
        format!(
            "outbound HTTP to http://{data} denied: the route's allow-list does not name it \
             (deploy with allow-outbound=http://{data})\n"
        )
    );
    // Not a URL at all: a 400 that says what is wrong.
    let (status, body) = get(&server, "/sa/fetch?url=nowhere").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("needs an absolute URL"), "{body}");
    server.shutdown().await;
}
