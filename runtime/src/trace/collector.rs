//! The OTLP/HTTP exporter's HTTP client: the server's own HTTP/1.1 client
//! ([`crate::http_client`]), plain or TLS (the public web roots, or the CA file of
//! `OTEL_EXPORTER_OTLP_CERTIFICATE`), one keep-alive connection reopened when it fails.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use opentelemetry_http::{HttpClient, HttpError};

use crate::http_client::{Connection, Endpoint};

/// The largest answer read from a collector.
const MAX_ANSWER: usize = 1 << 20;

/// A collector's OTLP/HTTP endpoint.
pub(super) struct Collector {
    endpoint: Endpoint,
    tls: Option<tokio_rustls::TlsConnector>,
    timeout: Duration,
    connection: tokio::sync::Mutex<Option<Connection>>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("endpoint", &self.endpoint.text)
            .finish()
    }
}

impl Collector {
    /// A client for `url`, trusting `ca` (a PEM file) instead of the public roots if given.
    pub(super) fn new(
        url: &str,
        ca: Option<&std::path::Path>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let endpoint = Endpoint::parse(url)?;
        let tls = if endpoint.https {
            Some(crate::http_client::tls_connector(ca)?)
        } else {
            None
        };
        Ok(Self {
            endpoint,
            tls,
            timeout,
            connection: tokio::sync::Mutex::new(None),
        })
    }

    async fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let mut connection = self.connection.lock().await;
        let open = match connection.take() {
            Some(open) => open,
            None => Connection::open(&self.endpoint, self.tls.as_ref(), self.timeout)
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", self.endpoint.text))?,
        };
        let mut open = open;
        // Origin form and a Host header, as an HTTP/1.1 server expects.
        let (mut parts, body) = request.into_parts();
        if let Some(authority) = parts.uri.authority()
            && let Ok(host) = http::HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(http::header::HOST, host);
        }
        if let Some(path) = parts.uri.path_and_query() {
            parts.uri = path.as_str().parse()?;
        }
        let request = Request::from_parts(parts, Full::new(body));
        let response = open.send(request).await?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_ANSWER).collect().await?.to_bytes();
        // Kept for the next export only once its answer was read whole.
        *connection = Some(open);
        Ok(Response::from_parts(parts, body))
    }
}

#[async_trait::async_trait]
impl HttpClient for Collector {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        tokio::time::timeout(self.timeout, self.send(request))
            .await
            .map_err(|_| {
                format!(
                    "{} did not answer within {:?}",
                    self.endpoint.text, self.timeout
                )
            })?
    }
}
