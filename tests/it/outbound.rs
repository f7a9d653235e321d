//! Outbound HTTP from guests: denied unless the route's allow-list names the destination;
//! denied calls fail in the guest with `HTTP-request-denied`, and many of them hurt nothing. A
//! name that resolves to a loopback, private or metadata address is refused
//! (`destination-IP-prohibited`) unless the rule names the address or the server allows private
//! destinations.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use handoff::config::Config;
use handoff_tests::{TestServer, guests};
use http::StatusCode;
use http_body_util::Full;
use hyper_util::rt::TokioIo;

/// A tiny upstream on loopback answering every request with `hello from upstream`.
async fn upstream() -> SocketAddr {
    upstream_on("127.0.0.1:0").await.unwrap()
}

/// [`upstream`] on `addr`, if it can be bound.
async fn upstream_on(addr: &str) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
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
    Ok(addr)
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
        server.route("allowed").await.outbound,
        [format!("http://{up}")]
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

    // A hundred denied calls in one request: all denied, and everything keeps serving. Their
    // warnings beyond the version's budget are counted, not logged.
    let (status, body) = server.get(&format!("/closed/fetch-many?url={url}")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "denied 100"));
    let (_, metrics) = server.admin(http::Method::GET, "/metrics").await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    let suppressed: u64 = metrics
        .lines()
        .find(|l| {
            l.starts_with("handoff_version_outbound_warnings_suppressed_total{route=\"closed\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no suppressed warnings for `closed` in:\n{metrics}"));
    // 102 denied calls on `closed` so far; a burst of 10 is logged, then one a second.
    assert!(
        (80..=92).contains(&suppressed),
        "{suppressed} suppressed:\n{metrics}"
    );
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

/// `169.254.169.254` (the cloud metadata service) written as one number, which the system
/// resolver reads as that IPv4 address: to the allow-list it is a name like any other.
const METADATA_AS_A_NAME: &str = "2852039166";

/// Deploys the hostile guest to `route` allowing `rule`.
async fn deploy(server: &TestServer, route: &str, rule: &str) {
    let rule = rule.replace('[', "%5B").replace(']', "%5D");
    let hostile = guests::bytes(guests::HOSTILE);
    let (code, body) = server
        .deploy_bytes(route, &format!("?allow-outbound={rule}"), hostile)
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_resolving_to_non_public_addresses_are_refused_unless_allowed() {
    let up = upstream().await;
    let port = up.port();
    let refused = "error ErrorCode::DestinationIpProhibited";
    let reached = "upstream 200 hello from upstream";
    // What route `route` of `server` gets from fetching `url`.
    async fn fetch(server: &TestServer, route: &str, url: &str) -> String {
        let (status, body) = server.get(&format!("/{route}/fetch?url={url}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }
    let by_name = format!("http://localhost:{port}/x");
    let metadata = format!("http://{METADATA_AS_A_NAME}/latest/meta-data/");

    // By default: a rule naming `localhost` lets the request past the allow-list, but the
    // address it resolves to is loopback, so it is refused; a rule naming the IP still works.
    let server = TestServer::start().await;
    deploy(&server, "byname", &format!("http://localhost:{port}")).await;
    deploy(&server, "byip", &format!("http://127.0.0.1:{port}")).await;
    deploy(&server, "metadata", &format!("http://{METADATA_AS_A_NAME}")).await;
    assert_eq!(fetch(&server, "byname", &by_name).await, refused);
    let by_ip = format!("http://127.0.0.1:{port}/x");
    assert_eq!(fetch(&server, "byip", &by_ip).await, reached);
    assert_eq!(fetch(&server, "metadata", &metadata).await, refused);
    // The refusal hurts nothing: the route keeps serving.
    assert_eq!(server.get("/byname/ok").await.1, "ok");
    server.shutdown().await;

    // With private destinations allowed, the name reaches loopback; the metadata address
    // stays refused unless a rule names it literally.
    let server = TestServer::start_with(Config {
        outbound_private: true,
        ..Config::ephemeral()
    })
    .await;
    deploy(&server, "byname", &format!("http://localhost:{port}")).await;
    deploy(&server, "metadata", &format!("http://{METADATA_AS_A_NAME}")).await;
    assert_eq!(fetch(&server, "byname", &by_name).await, reached);
    assert_eq!(fetch(&server, "metadata", &metadata).await, refused);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_rules_take_brackets_with_or_without_a_port() {
    let server = TestServer::start().await;
    let hostile = guests::bytes(guests::HOSTILE);
    let v6 = upstream_on("[::1]:0").await;
    let port = v6.as_ref().map_or(8080, SocketAddr::port);
    let (code, body) = server
        .deploy_bytes(
            "v6",
            &format!("?allow-outbound=http://%5B::1%5D:{port}&allow-outbound=http://%5B::1%5D"),
            hostile,
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert_eq!(
        server.route("v6").await.outbound,
        [format!("http://[::1]:{port}"), "http://[::1]:80".to_owned()]
    );
    match v6 {
        // The rule names the loopback address itself, so the request may connect to it.
        Ok(_) => {
            let (_, body) = server
                .get(&format!("/v6/fetch?url=http://[::1]:{port}/x"))
                .await;
            assert_eq!(body, "upstream 200 hello from upstream");
        }
        Err(error) => eprintln!("no IPv6 loopback here ({error}); the fetch over it is skipped"),
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_destinations_are_spoken_to_over_tls() {
    // An upstream that only looks at the first byte it gets, then hangs up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let (first_byte, got) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut byte = [0u8; 1];
        let _ = stream.peek(&mut byte).await;
        let _ = first_byte.send(byte[0]);
    });
    let server = TestServer::start().await;
    deploy(&server, "tls", &format!("https://{up}")).await;
    let (status, body) = server.get(&format!("/tls/fetch?url=https://{up}/x")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "error ErrorCode::TlsProtocolError")
    );
    // 0x16: a TLS handshake record, sent to the address the rule names.
    let first = tokio::time::timeout(std::time::Duration::from_secs(30), got)
        .await
        .expect("the upstream was reached")
        .unwrap();
    assert_eq!(first, 0x16);
    server.shutdown().await;
}
