//! `serve --takeover` of a server whose data listener speaks TLS: under load over HTTP/1.1 and
//! HTTP/2 (both chosen by ALPN), no request fails, and every connection, to the old process
//! or the new one, is served the same certificate. A takeover that would add or drop TLS under
//! the clients is refused, and the old process serves on.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use handoff_tests::guests;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::support::{Ready, Running, command, handoff, run_within};

const READY: Duration = Duration::from_secs(60);
/// A bound against hangs for a whole load run.
const LOAD_LIMIT: Duration = Duration::from_secs(240);

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/tls")
        .join(name)
}

/// The TLS flags every process of these tests serves its data listener with.
fn tls_flags() -> [String; 4] {
    [
        "--tls-cert".into(),
        fixture("cert.pem").display().to_string(),
        "--tls-key".into(),
        fixture("key.pem").display().to_string(),
    ]
}

/// `handoff serve` on `dir` with `extra` flags; ephemeral ports unless taking over.
fn serve_command(dir: &Path, extra: &[String]) -> tokio::process::Command {
    let mut args = vec!["serve".to_owned(), "--data-dir".to_owned()];
    args.push(dir.display().to_string());
    if !extra.iter().any(|a| a == "--takeover") {
        args.extend(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"].map(String::from));
    }
    args.extend_from_slice(extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    command(&args)
}

/// What the load saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    /// New connections after the server said `Connection: close` or `GOAWAY`.
    reconnects: AtomicU64,
    /// TLS connections made, each checked to present the fixture certificate.
    handshakes: AtomicU64,
    failed: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failed.lock().unwrap().push(what);
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    async fn response(&self, response: http::Response<hyper::body::Incoming>) {
        let status = response.status();
        match response.into_body().collect().await.map(|b| b.to_bytes()) {
            Err(error) => self.fail(format!("body: {error:?}")),
            Ok(body) if status != 200 || body != "v1" => {
                self.fail(format!("{status}: {}", String::from_utf8_lossy(&body)))
            }
            Ok(_) => {
                self.ok.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

/// A TLS client trusting only the fixture certificate, offering only `alpn`.
fn connector(alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(fixture("cert.pem")).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A TLS connection to `addr` that agreed on `alpn` and was shown the fixture certificate;
/// `None` (a failure tallied) otherwise.
async fn tls(
    addr: SocketAddr,
    alpn: &'static [u8],
    tally: &Tally,
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = match tokio::net::TcpStream::connect(addr).await {
        Ok(tcp) => tcp,
        Err(error) => {
            tally.fail(format!("connect: {error}"));
            return None;
        }
    };
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from("localhost").unwrap();
    let stream = match connector(alpn).connect(name, tcp).await {
        Ok(stream) => stream,
        Err(error) => {
            tally.fail(format!("TLS handshake: {error}"));
            return None;
        }
    };
    let (_, session) = stream.get_ref();
    let expected = CertificateDer::from_pem_file(fixture("cert.pem")).unwrap();
    if session.peer_certificates() != Some(std::slice::from_ref(&expected)) {
        tally.fail("the server presented another certificate".into());
        return None;
    }
    if session.alpn_protocol() != Some(alpn) {
        tally.fail(format!("ALPN agreed on {:?}", session.alpn_protocol()));
        return None;
    }
    tally.handshakes.fetch_add(1, Ordering::SeqCst);
    Some(stream)
}

fn request() -> http::Request<Full<Bytes>> {
    http::Request::get("https://localhost/tagged/x")
        .body(Full::default())
        .unwrap()
}

/// One HTTP/1.1 keep-alive client over TLS until `stop`: a new connection only after the server
/// says `Connection: close` (or closed it between requests).
async fn h1_client(addr: SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let deadline = Instant::now() + LOAD_LIMIT;
    let mut sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
    while !stop.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the load ran too long");
        let mut current = match sender.take() {
            Some(current) => current,
            None => {
                let Some(stream) = tls(addr, b"http/1.1", &tally).await else {
                    continue;
                };
                let (current, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .expect("an HTTP/1.1 client over a TLS connection");
                tokio::spawn(connection);
                current
            }
        };
        if current.ready().await.is_err() {
            tally.reconnects.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        match current.send_request(request()).await {
            Err(error) if error.is_canceled() => {
                tally.reconnects.fetch_add(1, Ordering::SeqCst);
            }
            Err(error) => tally.fail(format!("HTTP/1.1: {error:?}")),
            Ok(response) => {
                let close = response
                    .headers()
                    .get(http::header::CONNECTION)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                tally.response(response).await;
                match close {
                    true => {
                        tally.reconnects.fetch_add(1, Ordering::SeqCst);
                    }
                    false => sender = Some(current),
                }
            }
        }
    }
}

/// Whether a request was refused before the server took it: a client library's cancel, or
/// HTTP/2's graceful `GOAWAY` or `REFUSED_STREAM` (sending it again on a new connection is safe).
fn refused_after_goaway(error: &hyper::Error) -> bool {
    error.is_canceled() || handoff_tests::refused_unprocessed(error)
}

/// One HTTP/2 client over TLS on one connection until `stop`, a new connection once the server
/// sent `GOAWAY`.
async fn h2_client(addr: SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let deadline = Instant::now() + LOAD_LIMIT;
    let mut sender: Option<hyper::client::conn::http2::SendRequest<Full<Bytes>>> = None;
    while !stop.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the load ran too long");
        let mut current = match sender.take() {
            Some(current) => current,
            None => {
                let Some(stream) = tls(addr, b"h2", &tally).await else {
                    continue;
                };
                let (current, connection) = hyper::client::conn::http2::handshake(
                    TokioExecutor::new(),
                    TokioIo::new(stream),
                )
                .await
                .expect("an HTTP/2 client over a TLS connection");
                tokio::spawn(connection);
                current
            }
        };
        if current.ready().await.is_err() {
            tally.reconnects.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        match current.send_request(request()).await {
            Err(error) if refused_after_goaway(&error) => {
                tally.reconnects.fetch_add(1, Ordering::SeqCst);
            }
            Err(error) => tally.fail(format!("h2: {error:?}")),
            Ok(response) => {
                tally.response(response).await;
                sender = Some(current);
            }
        }
    }
}

/// Load over TLS on `ready`'s data plane: two HTTP/1.1 and two HTTP/2 clients.
struct Load {
    stop: Arc<AtomicBool>,
    h1: Arc<Tally>,
    h2: Arc<Tally>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(ready: &Ready) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (h1, h2) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
        let mut clients = Vec::new();
        for _ in 0..2 {
            clients.push(tokio::spawn(h1_client(
                ready.data,
                stop.clone(),
                h1.clone(),
            )));
            clients.push(tokio::spawn(h2_client(
                ready.data,
                stop.clone(),
                h2.clone(),
            )));
        }
        Self {
            stop,
            h1,
            h2,
            clients,
        }
    }

    /// Waits until `n` more requests of each protocol have succeeded.
    async fn goes_on(&self, n: u64) {
        let (h1, h2) = (self.h1.ok(), self.h2.ok());
        let started = Instant::now();
        while self.h1.ok() < h1 + n || self.h2.ok() < h2 + n {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the load stalled: {} HTTP/1.1, {} h2; failures: {:?} {:?}",
                self.h1.ok() - h1,
                self.h2.ok() - h2,
                self.h1.failed.lock().unwrap().first(),
                self.h2.failed.lock().unwrap().first(),
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) -> (Arc<Tally>, Arc<Tally>) {
        self.stop.store(true, Ordering::SeqCst);
        for client in self.clients {
            tokio::time::timeout(Duration::from_secs(60), client)
                .await
                .expect("a load client stopped")
                .expect("a load client ran");
        }
        (self.h1, self.h2)
    }
}

fn assert_no_failures(protocol: &str, tally: &Tally) {
    let failed = tally.failed.lock().unwrap();
    assert!(
        failed.is_empty(),
        "{protocol}: {} failed (of {} ok), e.g. {:?}",
        failed.len(),
        tally.ok(),
        &failed[..failed.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_takeovers_of_a_tls_listener_under_load_fail_no_request_and_keep_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let mut old = Running::spawn(serve_command(dir.path(), &tls_flags()));
    let ready = old.ready(READY).await;
    assert!(
        old.stdout.text().contains("data=https://"),
        "{}",
        old.stdout.text()
    );
    handoff(&[
        "deploy",
        "tagged",
        guests::TAGGED_V1,
        "--admin",
        &ready.admin_url(),
    ])
    .await
    .ok();
    let load = Load::start(&ready);
    load.goes_on(20).await;
    let mut takeover = tls_flags().to_vec();
    takeover.push("--takeover".into());
    for round in 0..2 {
        let handshakes =
            load.h1.handshakes.load(Ordering::SeqCst) + load.h2.handshakes.load(Ordering::SeqCst);
        let mut new = Running::spawn(serve_command(dir.path(), &takeover));
        let took = new.ready(READY).await;
        assert_eq!(
            (took.data, took.admin),
            (ready.data, ready.admin),
            "round {round}: the same addresses"
        );
        assert!(new.stdout.text().contains("data=https://"), "round {round}");
        let status = old.exit_within(Duration::from_secs(60)).await;
        assert!(
            status.success(),
            "round {round}: {status}\n{}",
            old.stderr.text()
        );
        // Only the new process accepts now: the connections made from here are its own, and
        // each was shown the fixture certificate.
        load.goes_on(20).await;
        let after =
            load.h1.handshakes.load(Ordering::SeqCst) + load.h2.handshakes.load(Ordering::SeqCst);
        assert!(
            after > handshakes,
            "round {round}: the clients moved to new connections (to the new process)"
        );
        old = new;
    }
    let (h1, h2) = load.stop().await;
    eprintln!(
        "TLS takeover load: {} HTTP/1.1 and {} h2 requests, {} and {} reconnects, {} handshakes",
        h1.ok(),
        h2.ok(),
        h1.reconnects.load(Ordering::SeqCst),
        h2.reconnects.load(Ordering::SeqCst),
        h1.handshakes.load(Ordering::SeqCst) + h2.handshakes.load(Ordering::SeqCst),
    );
    assert_no_failures("HTTP/1.1", &h1);
    assert_no_failures("h2", &h2);
    assert!(h1.reconnects.load(Ordering::SeqCst) > 0, "told to close");
    assert!(h2.reconnects.load(Ordering::SeqCst) > 0, "sent GOAWAY");
    assert!(old.terminate(Duration::from_secs(60)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_that_would_add_or_drop_tls_under_the_clients_is_refused() {
    // A TLS server, and a takeover without the TLS flags.
    let dir = tempfile::tempdir().unwrap();
    let mut old = Running::spawn(serve_command(dir.path(), &tls_flags()));
    let ready = old.ready(READY).await;
    handoff(&[
        "deploy",
        "tagged",
        guests::TAGGED_V1,
        "--admin",
        &ready.admin_url(),
    ])
    .await
    .ok();
    let out = run_within(READY, serve_command(dir.path(), &["--takeover".to_owned()])).await;
    assert_ne!(out.code, 0, "{out:#?}");
    assert!(
        out.stderr.contains(
            "the running server serves its data listener over TLS; give --tls-cert and --tls-key"
        ),
        "{out:#?}"
    );
    // The old process serves on, over TLS, and takes changes.
    let tally = Tally::default();
    h1_once(ready.data, &tally).await;
    assert_no_failures("HTTP/1.1", &tally);
    assert_eq!(tally.ok(), 1);
    handoff(&[
        "deploy",
        "other",
        guests::TAGGED_V1,
        "--admin",
        &ready.admin_url(),
    ])
    .await
    .ok();
    assert!(!old.exited());
    // A plain server, and a takeover that adds TLS.
    let plain_dir = tempfile::tempdir().unwrap();
    let mut plain = Running::spawn(serve_command(plain_dir.path(), &[]));
    let plain_ready = plain.ready(READY).await;
    let mut adding = tls_flags().to_vec();
    adding.push("--takeover".into());
    let out = run_within(READY, serve_command(plain_dir.path(), &adding)).await;
    assert_ne!(out.code, 0, "{out:#?}");
    assert!(
        out.stderr
            .contains("the running server serves its data listener without TLS"),
        "{out:#?}"
    );
    assert_eq!(
        crate::support::get(&plain_ready, "/nowhere").await.0,
        404,
        "the plain server serves on"
    );
    assert!(plain.terminate(Duration::from_secs(60)).await.success());
    assert!(old.terminate(Duration::from_secs(60)).await.success());
}

/// One GET over TLS (HTTP/1.1), tallied.
async fn h1_once(addr: SocketAddr, tally: &Tally) {
    let Some(stream) = tls(addr, b"http/1.1", tally).await else {
        return;
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("an HTTP/1.1 client over a TLS connection");
    tokio::spawn(connection);
    match sender.send_request(request()).await {
        Ok(response) => tally.response(response).await,
        Err(error) => tally.fail(format!("HTTP/1.1: {error:?}")),
    }
}
