//! Sending an allowed outbound request: one lookup, checked addresses, HTTP/1.1 (over TLS
//! for https), a between-bytes timeout on the response body.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use super::address::may_connect;
use super::rules::{Rule, target};

/// Why [`send`] did not deliver a request.
#[derive(Debug)]
pub enum SendError {
    /// The host resolved only to addresses the server does not let guests reach.
    Refused {
        /// The host as the guest gave it.
        host: String,
        /// Every address it resolved to.
        addresses: Vec<IpAddr>,
    },
    /// Resolving, connecting or the exchange itself failed.
    Failed(Error),
}

impl From<Error> for SendError {
    fn from(error: Error) -> Self {
        Self::Failed(error)
    }
}

/// The response half of an exchange, as wasi-http's hooks return it.
pub type Sent = (
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
);

/// Sends `request`, which `rules` allow (see [`allows`]): resolves its host once, keeps the
/// addresses [`may_connect`] accepts, connects to the first of them that answers, and speaks
/// HTTP/1.1 (over TLS for https) on that connection. `options` are the guest's timeouts, as
/// wasi-http's default sender takes them.
pub async fn send(
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    rules: &[Rule],
    private: bool,
) -> Result<Sent, SendError> {
    const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
    let options = options.unwrap_or_default();
    let connect_timeout = options.connect_timeout.unwrap_or(DEFAULT_TIMEOUT);
    let first_byte_timeout = options.first_byte_timeout.unwrap_or(DEFAULT_TIMEOUT);
    let between_bytes_timeout = options
        .between_bytes_timeout
        .unwrap_or(DEFAULT_TIMEOUT)
        .max(Duration::from_nanos(1));
    let (https, host, port) = target(request.uri()).ok_or(Error::HttpRequestUriInvalid)?;
    let host = host.to_owned();

    let connect = async {
        let resolved: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(Error::Connect)?
                .collect(),
        };
        let allowed: Vec<SocketAddr> = resolved
            .iter()
            .copied()
            .filter(|addr| may_connect(rules, (https, &host, port), addr.ip(), private))
            .collect();
        if allowed.is_empty() {
            return Err(SendError::Refused {
                host: host.clone(),
                addresses: resolved.iter().map(SocketAddr::ip).collect(),
            });
        }
        let mut last = None;
        for addr in allowed {
            match TcpStream::connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(error) => last = Some(error),
            }
        }
        Err(Error::Connect(last.expect("at least one address was tried")).into())
    };
    let stream = tokio::time::timeout(connect_timeout, connect)
        .await
        .map_err(|_| Error::ConnectionTimeout)??;
    let stream: Box<dyn Stream> = if https {
        let name =
            rustls::pki_types::ServerName::try_from(host).map_err(Error::InvalidDnsNameError)?;
        let tls = tokio_rustls::TlsConnector::from(tls_client_config())
            .connect(name, stream)
            .await
            .map_err(Error::Tls)?;
        Box::new(tls)
    } else {
        Box::new(stream)
    };
    let (mut sender, conn) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::Builder::new()
            .handshake::<_, WasiBody>(wasmtime_wasi_http::io::TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)?
    .map_err(Error::from)?;

    // The request line carries only the path: scheme and authority are for proxies (the
    // `Host` header, which wasi-http set from the authority, names the destination).
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;

    let mut conn = Some(conn);
    let exchange = tokio::time::timeout(first_byte_timeout, sender.send_request(request));
    tokio::pin!(exchange);
    // Wait for the response head while driving the connection.
    let response = std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = exchange.as_mut().poll(cx) {
            return Poll::Ready(result);
        }
        if let Some(io) = conn.as_mut()
            && let Poll::Ready(result) = Pin::new(io).poll(cx)
        {
            conn = None;
            if let Err(error) = result {
                return Poll::Ready(Ok(Err(error)));
            }
            return exchange.as_mut().poll(cx);
        }
        Poll::Pending
    })
    .await
    .map_err(|_| Error::ConnectionReadTimeout)?
    .map_err(Error::from)?;

    let mut timeout = tokio::time::interval(between_bytes_timeout);
    timeout.reset();
    let response = response.map(|incoming| TimedBody { incoming, timeout }.boxed_unsync());
    let io = async move {
        match conn {
            Some(conn) => conn.await.map_err(|error| {
                if error.is_timeout() {
                    Error::HttpResponseTimeout
                } else {
                    error.into()
                }
            }),
            None => Ok(()),
        }
    };
    Ok((response, Box::new(io)))
}

/// A connection, plain or TLS.
trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static> Stream for T {}

/// The TLS client configuration every outbound request shares: the public web roots.
fn tls_client_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.into(),
            };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

/// A response body that fails when the upstream is silent for longer than the guest's
/// between-bytes timeout.
struct TimedBody {
    incoming: hyper::body::Incoming,
    timeout: tokio::time::Interval,
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(if error.is_timeout() {
                Error::HttpResponseTimeout
            } else {
                error.into()
            }))),
            Poll::Ready(Some(Ok(frame))) => {
                self.timeout.reset();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                ready!(self.timeout.poll_tick(cx));
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.incoming.size_hint()
    }
}
