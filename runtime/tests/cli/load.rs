//! The load clients of the takeover tests (`takeover`, `takeover_tls`, `dev`): keep-alive
//! HTTP/1.1 and HTTP/2 clients, over plain TCP (h2c) or TLS (ALPN, trusting only the fixture
//! certificate and checking it on every connection), that open a new connection only when the
//! server says `Connection: close` or `GOAWAY`, send again a request a `GOAWAY` refused
//! unprocessed (RFC 9113 §8.7, as standard clients do), and tally what they saw.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// A bound against hangs for a whole load run.
pub(crate) const LOAD_LIMIT: Duration = Duration::from_secs(240);

/// A file of the TLS fixtures (`cert.pem`, `key.pem`: a certificate for `localhost`).
pub(crate) fn tls_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/tls")
        .join(name)
}

/// How a client reaches the data listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dial {
    /// Plain TCP: HTTP/1.1, or h2c with prior knowledge.
    Plain,
    /// TLS, offering only the protocol's ALPN name, trusting only the fixture certificate.
    Tls,
}

/// What a `200` must say to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Anything.
    Any,
    /// This body.
    Body(&'static str),
    /// A number: a counter's new value, kept in [`Tally::values`].
    Counter,
}

/// What the load saw.
#[derive(Default)]
pub(crate) struct Tally {
    ok: AtomicU64,
    /// Connections a client opened again after the server said `Connection: close` or
    /// `GOAWAY` (not failures: the next request went out on a new connection).
    reconnects: AtomicU64,
    /// HTTP/2 requests refused unprocessed by a `GOAWAY` and sent again on a new connection.
    refused_by_goaway: AtomicU64,
    /// TLS connections made, each shown the fixture certificate.
    handshakes: AtomicU64,
    failed: Mutex<Vec<String>>,
    /// The counter values the [`Answer::Counter`] requests answered.
    values: Mutex<Vec<u64>>,
}

impl Tally {
    pub(crate) fn fail(&self, what: String) {
        self.failed.lock().unwrap().push(what);
    }

    /// Requests answered as expected.
    pub(crate) fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    /// Connections opened again after the server said `Connection: close` or `GOAWAY`.
    pub(crate) fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::SeqCst)
    }

    /// TLS connections made (each shown the fixture certificate).
    pub(crate) fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::SeqCst)
    }

    /// The counter values answered, in the order they came.
    pub(crate) fn values(&self) -> Vec<u64> {
        self.values.lock().unwrap().clone()
    }

    /// The first failure, if any (for a stall's message).
    pub(crate) fn first_failure(&self) -> Option<String> {
        self.failed.lock().unwrap().first().cloned()
    }

    /// Each HTTP/2 connection is told `GOAWAY` once per takeover, so at most one of its requests
    /// can be refused unprocessed per takeover: more would mean the old process refused work.
    pub(crate) fn assert_goaway_refusals_at_most(&self, takeovers: u64, connections: u64) {
        let refused = self.refused_by_goaway.load(Ordering::SeqCst);
        let bound = takeovers * connections;
        assert!(
            refused <= bound,
            "{refused} HTTP/2 requests refused by GOAWAY across {takeovers} takeovers (at most {bound})"
        );
    }

    pub(crate) fn assert_no_failures(&self) {
        let failed = self.failed.lock().unwrap();
        assert!(
            failed.is_empty(),
            "{} failed requests (of {} ok), e.g. {:?}",
            failed.len(),
            self.ok(),
            &failed[..failed.len().min(5)]
        );
    }

    /// Records a response: a failure unless it is a `200` saying what `answer` asks for.
    pub(crate) async fn response(
        &self,
        response: http::Response<hyper::body::Incoming>,
        answer: Answer,
    ) {
        let status = response.status();
        let body = match response.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(error) => return self.fail(format!("body: {error:?}")),
        };
        let text = String::from_utf8_lossy(&body);
        if status != 200 {
            return self.fail(format!("{status}: {text}"));
        }
        match answer {
            Answer::Any => {}
            Answer::Body(expected) if text == expected => {}
            Answer::Body(_) => return self.fail(format!("{status}: {text}")),
            Answer::Counter => match text.trim().parse::<u64>() {
                Ok(value) => self.values.lock().unwrap().push(value),
                Err(_) => return self.fail(format!("not a number: {text:?}")),
            },
        }
        self.ok.fetch_add(1, Ordering::SeqCst);
    }
}

/// `GET path`: with `Host: localhost` over plain TCP, as `https://localhost/...` over TLS.
pub(crate) fn request(dial: Dial, path: &str) -> http::Request<Full<Bytes>> {
    match dial {
        Dial::Plain => http::Request::get(path).header(http::header::HOST, "localhost"),
        Dial::Tls => http::Request::get(format!("https://localhost{path}")),
    }
    .body(Full::default())
    .unwrap()
}

/// A TLS client trusting only the fixture certificate, offering only `alpn`.
fn connector(alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(tls_fixture("cert.pem")).unwrap())
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
pub(crate) async fn tls(
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
    let expected = CertificateDer::from_pem_file(tls_fixture("cert.pem")).unwrap();
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

/// A new HTTP/1.1 connection to `addr`; `None` (a failure tallied) if it cannot be made.
pub(crate) async fn h1_connect(
    addr: SocketAddr,
    dial: Dial,
    tally: &Tally,
) -> Option<http1::SendRequest<Full<Bytes>>> {
    match dial {
        Dial::Plain => {
            let stream = match tokio::net::TcpStream::connect(addr).await {
                Ok(stream) => stream,
                Err(error) => {
                    tally.fail(format!("connect: {error}"));
                    return None;
                }
            };
            let _ = stream.set_nodelay(true);
            let (sender, connection) = http1::handshake(TokioIo::new(stream))
                .await
                .expect("an HTTP/1.1 client over a connected socket");
            tokio::spawn(connection);
            Some(sender)
        }
        Dial::Tls => {
            let stream = tls(addr, b"http/1.1", tally).await?;
            let (sender, connection) = http1::handshake(TokioIo::new(stream))
                .await
                .expect("an HTTP/1.1 client over a TLS connection");
            tokio::spawn(connection);
            Some(sender)
        }
    }
}

/// A new HTTP/2 connection to `addr`; `None` (a failure tallied) if it cannot be made.
async fn h2_connect(
    addr: SocketAddr,
    dial: Dial,
    tally: &Tally,
) -> Option<http2::SendRequest<Full<Bytes>>> {
    match dial {
        Dial::Plain => Some(handoff_tests::h2_connect(addr, 65_535).await),
        Dial::Tls => {
            let stream = tls(addr, b"h2", tally).await?;
            let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("an HTTP/2 client over a TLS connection");
            tokio::spawn(connection);
            Some(sender)
        }
    }
}

/// One HTTP/1.1 keep-alive client sending `GET path` until `stop`, each answer checked against
/// `answer`: a new connection only after the server says `Connection: close` (or closed it
/// between requests).
pub(crate) async fn h1_client(
    addr: SocketAddr,
    dial: Dial,
    path: &'static str,
    answer: Answer,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let deadline = Instant::now() + LOAD_LIMIT;
    let mut sender: Option<http1::SendRequest<Full<Bytes>>> = None;
    while !stop.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the load ran too long");
        let mut current = match sender.take() {
            Some(current) => current,
            None => match h1_connect(addr, dial, &tally).await {
                Some(current) => current,
                None => continue,
            },
        };
        if current.ready().await.is_err() {
            tally.reconnects.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        match current.send_request(request(dial, path)).await {
            Err(error) if error.is_canceled() => {
                tally.reconnects.fetch_add(1, Ordering::SeqCst);
            }
            Err(error) => tally.fail(format!("HTTP/1.1: {error:?}")),
            Ok(response) => {
                let close = response
                    .headers()
                    .get(http::header::CONNECTION)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                tally.response(response, answer).await;
                if close {
                    tally.reconnects.fetch_add(1, Ordering::SeqCst);
                } else {
                    sender = Some(current);
                }
            }
        }
    }
}

/// One HTTP/2 client sending `GET path` on one connection until `stop`, each answer checked
/// against `answer`, a new connection once the server sent `GOAWAY`. A request the `GOAWAY`
/// refused before the server processed it (the client had it ready as the frame arrived) goes
/// again on the new connection, as RFC 9113 §8.7 allows and standard clients do; it must then
/// succeed.
pub(crate) async fn h2_client(
    addr: SocketAddr,
    dial: Dial,
    path: &'static str,
    answer: Answer,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let deadline = Instant::now() + LOAD_LIMIT;
    let mut sender: Option<http2::SendRequest<Full<Bytes>>> = None;
    let mut again = false;
    while again || !stop.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the load ran too long");
        again = false;
        let mut current = match sender.take() {
            Some(current) => current,
            None => match h2_connect(addr, dial, &tally).await {
                Some(current) => current,
                None => continue,
            },
        };
        if current.ready().await.is_err() {
            tally.reconnects.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        match current.send_request(request(dial, path)).await {
            Err(error) if error.is_canceled() => {
                tally.reconnects.fetch_add(1, Ordering::SeqCst);
            }
            Err(error) if handoff_tests::refused_unprocessed(&error) => {
                tally.reconnects.fetch_add(1, Ordering::SeqCst);
                tally.refused_by_goaway.fetch_add(1, Ordering::SeqCst);
                again = true;
            }
            Err(error) => tally.fail(format!("HTTP/2: {error:?}")),
            Ok(response) => {
                tally.response(response, answer).await;
                sender = Some(current);
            }
        }
    }
}

/// Load clients started together and stopped together, each tallying into one of the
/// [`Tally`]s made with [`Clients::tally`].
pub(crate) struct Clients {
    stop: Arc<AtomicBool>,
    /// How long [`Clients::goes_on`] waits before it calls the load stalled.
    stall: Duration,
    tallies: Vec<(&'static str, Arc<Tally>)>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Clients {
    /// No clients yet; a load that makes no progress for `stall` fails the test.
    pub(crate) fn new(stall: Duration) -> Self {
        Self {
            stop: Arc::new(AtomicBool::new(false)),
            stall,
            tallies: Vec::new(),
            clients: Vec::new(),
        }
    }

    /// A new tally, named in a stall's message; [`Clients::goes_on`] waits for each.
    pub(crate) fn tally(&mut self, name: &'static str) -> Arc<Tally> {
        let tally = Arc::new(Tally::default());
        self.tallies.push((name, tally.clone()));
        tally
    }

    /// Starts an [`h1_client`] tallying into `tally`.
    pub(crate) fn h1(
        &mut self,
        addr: SocketAddr,
        dial: Dial,
        path: &'static str,
        answer: Answer,
        tally: &Arc<Tally>,
    ) {
        let client = h1_client(addr, dial, path, answer, self.stop.clone(), tally.clone());
        self.clients.push(tokio::spawn(client));
    }

    /// Starts an [`h2_client`] tallying into `tally`.
    pub(crate) fn h2(
        &mut self,
        addr: SocketAddr,
        dial: Dial,
        path: &'static str,
        answer: Answer,
        tally: &Arc<Tally>,
    ) {
        let client = h2_client(addr, dial, path, answer, self.stop.clone(), tally.clone());
        self.clients.push(tokio::spawn(client));
    }

    /// Waits until `n` more requests of each tally have succeeded.
    pub(crate) async fn goes_on(&self, n: u64) {
        let from: Vec<u64> = self.tallies.iter().map(|(_, t)| t.ok()).collect();
        let started = Instant::now();
        while self
            .tallies
            .iter()
            .zip(&from)
            .any(|((_, tally), from)| tally.ok() < from + n)
        {
            if started.elapsed() > self.stall {
                let made: Vec<String> = self
                    .tallies
                    .iter()
                    .zip(&from)
                    .map(|((name, tally), from)| {
                        format!(
                            "{} {name} (first failure: {:?})",
                            tally.ok() - from,
                            tally.first_failure()
                        )
                    })
                    .collect();
                panic!("the load stalled: {}", made.join(", "));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops every client and waits for each to end.
    pub(crate) async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for client in self.clients {
            tokio::time::timeout(Duration::from_secs(60), client)
                .await
                .expect("a load client stopped")
                .expect("a load client ran");
        }
    }
}
