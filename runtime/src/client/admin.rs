//! The connection side of the `handoff` admin commands: one request per command on a fresh
//! connection ([`crate::http_client`]), `$HANDOFF_ADMIN_TOKEN` as the bearer token, the answer
//! read as the typed document of [`crate::api`], a refusal turned into the server's `detail`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde::de::DeserializeOwned;

use crate::api;
use crate::exit::{self, Failure};
use crate::http_client::{CA_ENV, ConnectError, Connection, Endpoint, tls_connector};

/// How long to wait for the TCP connection to the admin API.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the whole answer (a deploy answers once the component is compiled).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

/// A request body and its content type.
#[derive(Debug, Clone)]
pub struct Payload {
    /// The bytes.
    pub bytes: Bytes,
    /// Their media type.
    pub content_type: &'static str,
    /// An Ed25519 signature of the bytes, base64 (`Handoff-Signature`).
    pub signature: Option<String>,
}

impl Payload {
    /// A component upload.
    pub fn wasm(bytes: Bytes) -> Self {
        Self {
            bytes,
            content_type: "application/wasm",
            signature: None,
        }
    }

    /// A JSON body.
    pub fn json(value: &impl serde::Serialize) -> Self {
        Self {
            bytes: Bytes::from(serde_json::to_vec(value).expect("a request body serializes")),
            content_type: "application/json",
            signature: None,
        }
    }
}

/// An answer of the admin API.
#[derive(Debug)]
pub struct Reply {
    /// Its status.
    pub status: StatusCode,
    /// Its body, whole.
    pub body: Bytes,
}

/// Where the admin API is and how a command prints its answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// The admin API's URL (`http://127.0.0.1:8081`, or `https://…` with
    /// `$HANDOFF_ADMIN_CA` for a private certificate authority).
    pub url: String,
    /// Print the server's JSON as it came instead of a table; on failure, its problem document.
    pub json: bool,
}

impl Admin {
    /// A client of this admin API; a malformed URL is [`exit::USAGE`].
    pub(super) fn client(&self) -> Result<AdminClient, Failure> {
        AdminClient::new(&self.url)
    }
}

/// A client of one admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    url: Endpoint,
}

impl AdminClient {
    /// A client for the admin API at `url`; a malformed URL is a usage failure.
    pub fn new(url: &str) -> Result<Self, Failure> {
        Endpoint::parse(url)
            .map(|url| Self { url })
            .map_err(|e| Failure::new(exit::USAGE, e))
    }

    /// A fresh connection to the admin API; failing to connect is [`exit::UNREACHABLE`].
    pub(super) async fn connect(&self) -> Result<Connection, Failure> {
        let unreachable = |reason: String| {
            Failure::new(
                exit::UNREACHABLE,
                format!(
                    "cannot reach the handoff admin API at {}: {reason}; is `handoff serve` running?",
                    self.url.text
                ),
            )
        };
        let tls = match self.url.https {
            true => Some(
                tls_connector(std::env::var_os(CA_ENV).as_deref().map(Path::new))
                    .map_err(|e| Failure::new(exit::USAGE, e))?,
            ),
            false => None,
        };
        match Connection::open(&self.url, tls.as_ref(), CONNECT_TIMEOUT).await {
            Ok(connection) => Ok(connection),
            Err(ConnectError::Tls(error)) => Err(unreachable(format!(
                "the TLS handshake failed ({error}); for a private certificate authority \
                 set {CA_ENV} to its PEM file"
            ))),
            Err(error) => Err(unreachable(error.to_string())),
        }
    }

    /// A request to `path_and_query` with the `Host` and, when `$HANDOFF_ADMIN_TOKEN` is set,
    /// the bearer token; and `traceparent`/`tracestate` when `$TRACEPARENT`/`$TRACESTATE` are.
    pub(super) fn request(&self, method: Method, path_and_query: &str) -> http::request::Builder {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path_and_query}", self.url.base))
            .header(header::HOST, &self.url.authority);
        if let Ok(token) = std::env::var(crate::auth::TOKEN_ENV)
            && !token.is_empty()
        {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        // A script's or CI job's trace continues in the change this request causes (the
        // OpenTelemetry convention: `TRACEPARENT` and `TRACESTATE` in the environment).
        for (var, name) in [("TRACEPARENT", "traceparent"), ("TRACESTATE", "tracestate")] {
            if let Ok(value) = std::env::var(var)
                && !value.trim().is_empty()
                && let Ok(value) = http::HeaderValue::from_str(value.trim())
            {
                request = request.header(name, value);
            }
        }
        request
    }

    /// Sends one request on a fresh connection and reads the whole answer. Failing to connect,
    /// or losing the connection before the answer is complete, is [`exit::UNREACHABLE`].
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Payload>,
    ) -> Result<Reply, Failure> {
        let mut connection = self.connect().await?;
        let exchange = async {
            let mut request = self.request(method, path_and_query);
            let bytes = match body {
                Some(payload) => {
                    request = request.header(header::CONTENT_TYPE, payload.content_type);
                    if let Some(signature) = &payload.signature {
                        request = request.header(crate::signing::HEADER, signature);
                    }
                    payload.bytes
                }
                None => Bytes::new(),
            };
            let request = request
                .body(Full::new(bytes))
                .expect("a well-formed request");
            let response = connection.send(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>(Reply { status, body })
        };
        match tokio::time::timeout(ANSWER_TIMEOUT, exchange).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(error)) => Err(Failure::new(
                exit::UNREACHABLE,
                format!(
                    "the handoff admin API at {} broke off the exchange: {error}",
                    self.url.text
                ),
            )),
            Err(_) => Err(Failure::new(
                exit::UNREACHABLE,
                format!(
                    "the handoff admin API at {} did not answer within {} s",
                    self.url.text,
                    ANSWER_TIMEOUT.as_secs()
                ),
            )),
        }
    }

    /// Sends a request and returns the typed answer of a successful one. With `json`, the body
    /// is printed as it came, success or not. A 4xx/5xx is [`exit::FAILED`] with the server's
    /// `detail`; `what` names the request in that message ("deploy", "delete").
    pub async fn call<T: DeserializeOwned>(
        &self,
        what: &str,
        method: Method,
        path_and_query: &str,
        body: Option<Payload>,
        json: bool,
    ) -> Result<T, Failure> {
        let reply = self.send(method, path_and_query, body).await?;
        if json {
            reply.print();
        }
        if !reply.status.is_success() {
            return Err(reply.refused(what));
        }
        self.read(&reply)
    }

    /// The typed answer in a successful `reply`; one that does not read means something else
    /// answers at the URL ([`exit::UNREACHABLE`]).
    pub fn read<T: DeserializeOwned>(&self, reply: &Reply) -> Result<T, Failure> {
        serde_json::from_slice(&reply.body).map_err(|error| {
            Failure::new(
                exit::UNREACHABLE,
                format!(
                    "what answers at {} is not the handoff admin API (its answer does not read: {error})",
                    self.url.text
                ),
            )
        })
    }
}

impl Reply {
    /// Prints the body as it came (`--json`), ending in a newline.
    pub fn print(&self) {
        let mut out = self.body.to_vec();
        if !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        print(&out);
    }

    /// The failure a refused request (a 4xx or 5xx) is: [`exit::FAILED`] with the server's
    /// `detail`; `what` names the request.
    pub fn refused(&self, what: &str) -> Failure {
        let detail = serde_json::from_slice::<api::Problem>(&self.body)
            .ok()
            .map(|problem| one_line(&problem.detail))
            .unwrap_or_else(|| {
                format!(
                    "the answer has no problem document: {}",
                    one_line(&String::from_utf8_lossy(
                        &self.body[..self.body.len().min(200)]
                    ))
                )
            });
        Failure::new(
            exit::FAILED,
            format!("{what} refused ({}): {detail}", status_text(self.status)),
        )
    }
}

/// `409 Conflict`: a status as refusals name it.
pub(super) fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Percent-encodes everything but RFC 3986's unreserved characters, for a path segment or a
/// query value.
pub(super) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// Writes to stdout, ignoring a closed pipe (`handoff routes | head -1`).
pub(super) fn print(bytes: &[u8]) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(bytes);
    let _ = stdout.flush();
}

/// A component upload, signed with the private key in `key` when given.
pub(super) fn signed(bytes: Bytes, key: Option<&Path>) -> Result<Payload, Failure> {
    let mut payload = Payload::wasm(bytes);
    if let Some(key) = key {
        let private = std::fs::read_to_string(key).map_err(|e| {
            Failure::new(
                exit::LOCAL,
                format!("cannot read the key {}: {e}", key.display()),
            )
        })?;
        let signature = crate::signing::sign(&private, &payload.bytes)
            .map_err(|e| Failure::new(exit::LOCAL, format!("{}: {e}", key.display())))?;
        payload.signature = Some(signature);
    }
    Ok(payload)
}

/// Reads the component to upload; a missing or unreadable file is [`exit::LOCAL`].
pub(super) async fn read_component(path: &Path) -> Result<Bytes, Failure> {
    tokio::fs::read(path).await.map(Bytes::from).map_err(|e| {
        Failure::new(
            exit::LOCAL,
            format!("cannot read the component {}: {e}", path.display()),
        )
    })
}

/// Whether `version` (`sha256:…`) starts with the hex digits `wanted` (never for none).
pub(super) fn version_starts_with(version: &str, wanted: &str) -> bool {
    !wanted.is_empty() && version.trim_start_matches("sha256:").starts_with(wanted)
}

/// The stored modules (`/v1/modules`) whose versions start with the hex digits `wanted`.
pub(super) async fn modules_starting_with(
    client: &AdminClient,
    wanted: &str,
) -> Result<Vec<String>, Failure> {
    let modules: api::ModuleList = client
        .call(
            "listing the modules",
            Method::GET,
            "/v1/modules",
            None,
            false,
        )
        .await?;
    Ok(modules
        .modules
        .into_iter()
        .map(|m| m.version)
        .filter(|v| version_starts_with(v, wanted))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_urls_parse() {
        let url = Endpoint::parse("http://127.0.0.1:8081").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("127.0.0.1", 8081));
        assert_eq!(url.base, "");
        let url = Endpoint::parse("localhost:9000/admin/").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("localhost", 9000));
        assert_eq!(
            (url.authority.as_str(), url.base.as_str()),
            ("localhost:9000", "/admin")
        );
        let url = Endpoint::parse("http://[::1]:8081").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("::1", 8081));
        assert_eq!(Endpoint::parse("http://example.com").unwrap().port, 80);
        let url = Endpoint::parse("https://example.com").unwrap();
        assert!(url.https);
        assert_eq!(url.port, 443);
        assert!(
            Endpoint::parse("ftp://example.com")
                .unwrap_err()
                .contains("https://")
        );
        assert!(Endpoint::parse("http://:80").is_err());
        assert!(Endpoint::parse("http://host:port").is_err());
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("/api/v1"), "%2Fapi%2Fv1");
        assert_eq!(encode("GREETING=hi there+1"), "GREETING%3Dhi%20there%2B1");
        assert_eq!(encode("a-b_c.d~"), "a-b_c.d~");
    }
}
