//! One small HTTP/1.1 client, plain or TLS, for whoever talks to a handoff server: the
//! `handoff` admin commands, the integration tests and the benchmark. It opens a keep-alive
//! connection to an [`Endpoint`] and sends whole requests on it; callers read the answer.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The environment variable naming a PEM file of CA certificates to trust for `https://`
/// (instead of the public web roots).
pub const CA_ENV: &str = "HANDOFF_ADMIN_CA";

/// Where a server listens: `http://HOST:PORT[/base]` or `https://...`; the scheme may be left
/// out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The URL as given, for messages.
    pub text: String,
    /// Host name or address, without IPv6 brackets.
    pub host: String,
    /// Port (80 or 443 if not given).
    pub port: u16,
    /// `HOST:PORT` as it goes in the `Host` header.
    pub authority: String,
    /// Whether to speak TLS.
    pub https: bool,
    /// Path the API is mounted under, without a trailing `/` (usually empty).
    pub base: String,
}

impl Endpoint {
    /// Parses `text`, saying what is wrong in a sentence.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (https, rest) = match text.split_once("://") {
            Some(("http", rest)) => (false, rest),
            Some(("https", rest)) => (true, rest),
            Some((scheme, _)) => {
                return Err(format!(
                    "the admin URL `{text}` uses `{scheme}://`; use `http://HOST:PORT`, or \
                     `https://HOST:PORT` when the server runs with --admin-tls-cert"
                ));
            }
            None => (false, text),
        };
        let (authority, base) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let bad = || format!("the admin URL `{text}` is not of the form http://HOST:PORT");
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(bad)?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad());
        }
        let port = match port {
            Some(port) => port.parse::<u16>().map_err(|_| bad())?,
            None if https => 443,
            None => 80,
        };
        Ok(Self {
            text: text.to_owned(),
            host: host.to_owned(),
            port,
            authority: authority.to_owned(),
            https,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    /// `http://ADDR` (or `https://`) for a listener's address.
    pub fn of(addr: SocketAddr, https: bool) -> Self {
        let scheme = if https { "https" } else { "http" };
        Self::parse(&format!("{scheme}://{addr}")).expect("a socket address is a valid endpoint")
    }
}

/// A TLS connector trusting the CA certificates in the PEM file `ca`, else the public web
/// roots.
pub fn tls_connector(ca: Option<&Path>) -> Result<tokio_rustls::TlsConnector, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("cannot read ${CA_ENV} ({}): {e}", path.display()))?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("${CA_ENV} ({}): {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// A byte stream to a server, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP failed.
    #[error("{0}")]
    Tcp(std::io::Error),
    /// Nothing within the time allowed.
    #[error("no connection within {} s", .0.as_secs())]
    Timeout(Duration),
    /// The TLS handshake failed.
    #[error("the TLS handshake failed ({0})")]
    Tls(String),
    /// HTTP/1 could not be set up.
    #[error("{0}")]
    Http(hyper::Error),
}

/// One HTTP/1.1 keep-alive connection.
pub struct Connection {
    sender: http1::SendRequest<Full<Bytes>>,
}

impl Connection {
    /// Connects to `endpoint` within `limit`; `tls` is required for `https://` endpoints.
    pub async fn open(
        endpoint: &Endpoint,
        tls: Option<&tokio_rustls::TlsConnector>,
        limit: Duration,
    ) -> Result<Self, ConnectError> {
        let connect = TcpStream::connect((endpoint.host.as_str(), endpoint.port));
        let stream = tokio::time::timeout(limit, connect)
            .await
            .map_err(|_| ConnectError::Timeout(limit))?
            .map_err(ConnectError::Tcp)?;
        let _ = stream.set_nodelay(true);
        let stream: Box<dyn Io> = match (endpoint.https, tls) {
            (true, Some(connector)) => {
                let name = rustls::pki_types::ServerName::try_from(endpoint.host.clone())
                    .map_err(|e| ConnectError::Tls(e.to_string()))?;
                let handshake = connector.connect(name, stream);
                Box::new(
                    tokio::time::timeout(limit, handshake)
                        .await
                        .map_err(|_| ConnectError::Timeout(limit))?
                        .map_err(|e| ConnectError::Tls(e.to_string()))?,
                )
            }
            (true, None) => return Err(ConnectError::Tls("no TLS connector".into())),
            (false, _) => Box::new(stream),
        };
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Http)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self { sender })
    }

    /// Connects to a plain-HTTP listener at `addr`.
    pub async fn plain(addr: SocketAddr) -> Result<Self, ConnectError> {
        Self::open(&Endpoint::of(addr, false), None, Duration::from_secs(30)).await
    }

    /// Sends `request` on this connection; the answer's body is left to the caller.
    pub async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        self.sender.ready().await?;
        self.sender.send_request(request).await
    }
}
