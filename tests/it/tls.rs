//! TLS on both listeners, from PEM files: deploy over HTTPS, serve over HTTPS; plain HTTP to a
//! TLS port gets nothing; unusable files stop the server before it binds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use handoff::config::Config;
use handoff::server::Server;
use handoff::tls::TlsFiles;
use handoff_tests::{TestServer, guests};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/tls")
        .join(name)
}

fn files() -> TlsFiles {
    TlsFiles {
        cert: fixture("cert.pem"),
        key: fixture("key.pem"),
    }
}

/// One request over HTTPS to `addr`, trusting only the fixture certificate.
async fn https(addr: SocketAddr, req: Request<Full<Bytes>>) -> (StatusCode, String) {
    use handoff::http_client::{Connection, Endpoint, tls_connector};
    let connector = tls_connector(Some(&fixture("cert.pem"))).unwrap();
    let endpoint = Endpoint::parse(&format!("https://localhost:{}", addr.port())).unwrap();
    let mut connection = Connection::open(&endpoint, Some(&connector), Duration::from_secs(10))
        .await
        .expect("TLS handshake");
    let response = connection.send(req).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_listeners_speak_tls_from_pem_files() {
    let server = TestServer::start_with(Config {
        tls: Some(files()),
        admin_tls: Some(files()),
        ..Config::ephemeral()
    })
    .await;
    assert!(server.server().ready_line().contains("data=https://"));
    assert!(server.server().ready_line().contains("admin=https://"));
    let deploy = Request::builder()
        .method(Method::PUT)
        .uri("/v1/routes/secure")
        .header("host", "localhost")
        .header("content-type", "application/wasm")
        .body(Full::new(Bytes::from(guests::bytes(guests::HOSTILE))))
        .unwrap();
    let (status, body) = https(server.admin, deploy).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let get = |path: &str| {
        Request::get(path.to_owned())
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(
        https(server.data, get("/secure/ok")).await,
        (StatusCode::OK, "ok".into())
    );

    // Plain HTTP to a TLS port gets no HTTP answer.
    let plain = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        handoff_tests::Connection::open(server.data),
    )
    .await
    .expect("connects");
    let mut plain = plain;
    let answer = tokio::time::timeout(std::time::Duration::from_secs(20), plain.get("/secure/ok"))
        .await
        .expect("ends");
    assert!(
        answer.is_err(),
        "plain HTTP must not be served on a TLS port: {answer:?}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_tls_files_stop_the_server_before_it_binds() {
    for (files, mentions) in [
        (
            TlsFiles {
                cert: fixture("missing.pem"),
                key: fixture("key.pem"),
            },
            "cannot read certificates",
        ),
        (
            TlsFiles {
                cert: fixture("key.pem"),
                key: fixture("key.pem"),
            },
            "no PEM certificate",
        ),
        (
            TlsFiles {
                cert: fixture("cert.pem"),
                key: fixture("cert.pem"),
            },
            "private key",
        ),
    ] {
        let error = Server::start(Config {
            tls: Some(files),
            ..Config::ephemeral()
        })
        .await
        .err()
        .expect("refused");
        assert!(format!("{error:#}").contains(mentions), "{error:#}");
    }
}
