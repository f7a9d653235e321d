//! Outbound HTTP from guests: denied unless the route's allow-list names the destination;
//! denied calls fail in the guest with `HTTP-request-denied`, and many of them hurt nothing.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use handoff_tests::{TestServer, guests};
use http::StatusCode;
use http_body_util::Full;
use hyper_util::rt::TokioIo;

/// A tiny upstream on loopback answering every request with `hello from upstream`.
async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(
                        b"hello from upstream",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allow_listed_destinations_are_reachable() {
    let up = upstream().await;
    let server = TestServer::start().await;
    let hostile = guests::bytes(guests::HOSTILE);
    let url = format!("http://{up}/x");
    let (code, body) = server
        .deploy_bytes(
            "allowed",
            &format!("?allow-outbound=http://{up}"),
            hostile.clone(),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert_eq!(
        server.status("allowed").await["outbound"][0],
        format!("http://{up}")
    );
    server.deploy("closed", guests::HOSTILE).await;
    let other_port = format!("http://{}:{}", up.ip(), up.port().wrapping_add(1).max(1));
    server
        .deploy_bytes(
            "elsewhere",
            &format!("?allow-outbound={other_port}"),
            hostile.clone(),
        )
        .await;

    let (status, body) = server.get(&format!("/allowed/fetch?url={url}")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "upstream 200 hello from upstream")
    );
    // Denied by default, and for a port the list does not name.
    for route in ["closed", "elsewhere"] {
        let (status, body) = server.get(&format!("/{route}/fetch?url={url}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "error ErrorCode::HttpRequestDenied", "{route}");
    }
    // The Host header of the incoming request plays no part.
    let req = http::Request::get(format!("/closed/fetch?url={url}"))
        .header("host", up.to_string())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (_, body) = handoff_tests::send(server.data, req).await;
    assert_eq!(
        String::from_utf8_lossy(&body),
        "error ErrorCode::HttpRequestDenied"
    );

    // A hundred denied calls in one request: all denied, and everything keeps serving.
    let (status, body) = server.get(&format!("/closed/fetch-many?url={url}")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "denied 100"));
    assert_eq!(
        server.get(&format!("/allowed/fetch?url={url}")).await.1,
        "upstream 200 hello from upstream"
    );

    // A redeploy keeps the list; an empty one clears it; a bad rule is refused.
    server.deploy("allowed", guests::HOSTILE).await;
    assert!(
        server
            .get(&format!("/allowed/fetch?url={url}"))
            .await
            .1
            .starts_with("upstream")
    );
    let (code, _) = server
        .deploy_bytes("allowed", "?allow-outbound=", hostile.clone())
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        server.get(&format!("/allowed/fetch?url={url}")).await.1,
        "error ErrorCode::HttpRequestDenied"
    );
    let (code, body) = server
        .deploy_bytes("allowed", "?allow-outbound=ftp://nope", hostile)
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("http:// or https://"),
        "{body}"
    );
    server.shutdown().await;
}
