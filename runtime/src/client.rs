//! Thin clients of the admin API for `handoff deploy`, `routes`, `status`, `delete`,
//! `versions`, `rollback`, `upload` and `activate`: one
//! HTTP/1.1 request per command over plain TCP, the answer printed as a table or, with `--json`,
//! exactly as the server sent it.
//!
//! They decide nothing the server decides: route names, prefixes, settings and components are
//! validated by the server, and its problem document's `detail` sentence is printed as it is.
//! Every failure is one line and one of the [`exit`] codes.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use crate::cli::{
    ActivateArgs, AdminArgs, DeployArgs, Failure, RollbackArgs, RouteArgs, RoutesArgs, UploadArgs,
    exit,
};

/// Where the client commands look for the admin API unless `--admin` or `HANDOFF_ADMIN_URL`
/// says otherwise (the default of `serve --admin-listen`).
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:8081";
/// How long to wait for the TCP connection to the admin API.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the whole answer (a deploy answers once the component is compiled).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

/// A parsed `--admin` URL: `http://HOST:PORT[/base]`; the scheme may be left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminUrl {
    /// The URL as given, for messages.
    text: String,
    /// Host name or address, without IPv6 brackets.
    host: String,
    /// Port (80 if not given).
    port: u16,
    /// `HOST:PORT` as it goes in the `Host` header.
    authority: String,
    /// Whether to speak TLS (`https://`).
    https: bool,
    /// Path the API is mounted under, without a trailing `/` (usually empty).
    base: String,
}

impl AdminUrl {
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
}

/// The environment variable naming a PEM file of CA certificates to trust for an
/// `https://` admin URL (instead of the public web roots).
pub const ADMIN_CA_ENV: &str = "HANDOFF_ADMIN_CA";

/// A byte stream to the admin API, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A TLS connector trusting `$HANDOFF_ADMIN_CA` when set, else the public web roots.
fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match std::env::var_os(ADMIN_CA_ENV) {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(&path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    format!(
                        "cannot read ${ADMIN_CA_ENV} ({}): {e}",
                        path.to_string_lossy()
                    )
                })?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("${ADMIN_CA_ENV} holds an unusable certificate: {e}"))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        config,
    )))
}

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
    pub fn json(value: &Value) -> Self {
        Self {
            bytes: Bytes::from(value.to_string()),
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

/// A client of one admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    url: AdminUrl,
}

impl AdminClient {
    /// A client for the admin API at `url`; a malformed URL is a usage failure.
    pub fn new(url: &str) -> Result<Self, Failure> {
        AdminUrl::parse(url)
            .map(|url| Self { url })
            .map_err(|e| Failure::new(exit::USAGE, e))
    }

    /// Sends one request on a fresh connection and reads the whole answer. Failing to connect,
    /// or losing the connection before the answer is complete, is [`exit::UNREACHABLE`].
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Payload>,
    ) -> Result<Reply, Failure> {
        let unreachable = |reason: String| {
            Failure::new(
                exit::UNREACHABLE,
                format!(
                    "cannot reach the handoff admin API at {}: {reason}; is `handoff serve` running?",
                    self.url.text
                ),
            )
        };
        let connect = TcpStream::connect((self.url.host.as_str(), self.url.port));
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(unreachable(error.to_string())),
            Err(_) => {
                return Err(unreachable(format!(
                    "no connection within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
        };
        let stream: Box<dyn Io> = if self.url.https {
            let connector = tls_connector().map_err(|e| Failure::new(exit::USAGE, e))?;
            let name = rustls::pki_types::ServerName::try_from(self.url.host.clone())
                .map_err(|e| Failure::new(exit::USAGE, format!("{e}")))?;
            let handshake = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, stream));
            match handshake.await {
                Ok(Ok(tls)) => Box::new(tls),
                Ok(Err(error)) => {
                    return Err(unreachable(format!(
                        "the TLS handshake failed ({error}); for a private certificate authority \
                         set {ADMIN_CA_ENV} to its PEM file"
                    )));
                }
                Err(_) => return Err(unreachable("no TLS handshake in time".into())),
            }
        } else {
            Box::new(stream)
        };
        let exchange = async {
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                    .await?;
            tokio::spawn(connection);
            let mut request = Request::builder()
                .method(method)
                .uri(format!("{}{path_and_query}", self.url.base))
                .header(header::HOST, &self.url.authority);
            if let Ok(token) = std::env::var(crate::auth::TOKEN_ENV)
                && !token.is_empty()
            {
                request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
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
            let response = sender.send_request(request).await?;
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

    /// Sends a request and returns the JSON of a successful answer. With `json`, the body is
    /// printed as it came, success or not. A 4xx/5xx is [`exit::FAILED`] with the server's
    /// `detail`; `what` names the request in that message ("deploy", "delete").
    async fn call(
        &self,
        what: &str,
        method: Method,
        path_and_query: &str,
        body: Option<Payload>,
        json: bool,
    ) -> Result<Value, Failure> {
        let reply = self.send(method, path_and_query, body).await?;
        if json {
            let mut out = reply.body.to_vec();
            if !out.ends_with(b"\n") {
                out.push(b'\n');
            }
            print(&out);
        }
        let parsed: Option<Value> = serde_json::from_slice(&reply.body).ok();
        if !reply.status.is_success() {
            let detail = parsed
                .as_ref()
                .and_then(|v| v.get("detail"))
                .and_then(Value::as_str)
                .map(one_line)
                .unwrap_or_else(|| {
                    format!(
                        "the answer has no problem document: {}",
                        one_line(&String::from_utf8_lossy(
                            &reply.body[..reply.body.len().min(200)]
                        ))
                    )
                });
            return Err(Failure::new(
                exit::FAILED,
                format!("{what} refused ({}): {detail}", status_text(reply.status)),
            ));
        }
        parsed.ok_or_else(|| {
            Failure::new(
                exit::UNREACHABLE,
                format!(
                    "what answers at {} is not the handoff admin API (its answer is not JSON)",
                    self.url.text
                ),
            )
        })
    }
}

/// `handoff deploy ROUTE FILE`.
pub async fn deploy(args: DeployArgs) -> Result<(), Failure> {
    let client = AdminClient::new(&args.admin.admin)?;
    let bytes = read_component(&args.file).await?;
    let mut query = Vec::new();
    if let Some(prefix) = &args.prefix {
        query.push(format!("prefix={}", encode(prefix)));
    }
    for setting in &args.config {
        query.push(format!("config={}", encode(setting)));
    }
    if let Some(dir) = &args.dir {
        query.push(format!("dir={}", encode(dir)));
    }
    for rule in &args.allow_outbound {
        query.push(format!("allow-outbound={}", encode(rule)));
    }
    if let Some(label) = &args.label {
        query.push(format!("label={}", encode(label)));
    }
    if let Some(message) = &args.message {
        query.push(format!("message={}", encode(message)));
    }
    for (key, value) in &args.limits.0 {
        query.push(format!("{key}={}", encode(value)));
    }
    let mut path = format!("/v1/routes/{}", encode(&args.route));
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    let json = args.admin.json;
    let body = client
        .call(
            "deploy",
            Method::PUT,
            &path,
            Some(signed(bytes, &args.sign)?),
            json,
        )
        .await?;
    if !json {
        print(render_deploy(&body).as_bytes());
    }
    Ok(())
}

/// `handoff routes`.
pub async fn routes(args: RoutesArgs) -> Result<(), Failure> {
    show(
        args.admin,
        "listing the routes",
        "/v1/routes".into(),
        render_routes,
    )
    .await
}

/// GETs `path` and prints the answer: as JSON with `--json`, else through `render`.
async fn show(
    args: AdminArgs,
    what: &str,
    path: String,
    render: fn(&Value) -> String,
) -> Result<(), Failure> {
    let AdminArgs { admin, json } = args;
    let client = AdminClient::new(&admin)?;
    let body = client.call(what, Method::GET, &path, None, json).await?;
    if !json {
        print(render(&body).as_bytes());
    }
    Ok(())
}

/// `handoff status ROUTE`.
pub async fn status(args: RouteArgs) -> Result<(), Failure> {
    let path = format!("/v1/routes/{}", encode(&args.route));
    show(args.admin, "status", path, |body| {
        render_status(body, SystemTime::now())
    })
    .await
}

/// `handoff delete ROUTE`.
pub async fn delete(args: RouteArgs) -> Result<(), Failure> {
    let AdminArgs { admin, json } = args.admin;
    let client = AdminClient::new(&admin)?;
    let path = format!("/v1/routes/{}", encode(&args.route));
    let body = client
        .call("delete", Method::DELETE, &path, None, json)
        .await?;
    if !json {
        let in_flight = match body["in_flight"].as_u64().unwrap_or(0) {
            0 => "nothing in flight".to_owned(),
            1 => "1 request in flight finishes on it".to_owned(),
            n => format!("{n} requests in flight finish on it"),
        };
        let text = format!(
            "deleted route {} (version {}; {in_flight})\n",
            str_of(&body, "route"),
            short(str_of(&body, "version")),
        );
        print(text.as_bytes());
    }
    Ok(())
}

/// `handoff versions ROUTE`.
pub async fn versions(args: RouteArgs) -> Result<(), Failure> {
    let path = format!("/v1/routes/{}/versions", encode(&args.route));
    show(args.admin, "versions", path, |body| {
        render_versions(body, SystemTime::now())
    })
    .await
}

/// `handoff rollback ROUTE [VERSION] [--label L]`.
pub async fn rollback(args: RollbackArgs) -> Result<(), Failure> {
    let AdminArgs { admin, json } = args.admin;
    let client = AdminClient::new(&admin)?;
    let target = match (&args.version, &args.label) {
        (Some(version), _) => {
            let digest = resolve_version(&client, &args.route, version).await?;
            serde_json::json!({ "version": digest })
        }
        (None, Some(label)) => serde_json::json!({ "label": label }),
        (None, None) => serde_json::json!({}),
    };
    let path = format!("/v1/routes/{}/rollback", encode(&args.route));
    let body = client
        .call(
            "rollback",
            Method::POST,
            &path,
            Some(Payload::json(&target)),
            json,
        )
        .await?;
    if !json {
        print(render_deploy(&body).as_bytes());
    }
    Ok(())
}

/// `handoff upload FILE`.
pub async fn upload(args: UploadArgs) -> Result<(), Failure> {
    let AdminArgs { admin, json } = args.admin;
    let client = AdminClient::new(&admin)?;
    let bytes = read_component(&args.file).await?;
    let body = client
        .call(
            "upload",
            Method::POST,
            "/v1/modules",
            Some(signed(bytes, &args.sign)?),
            json,
        )
        .await?;
    if !json {
        let text = format!(
            "uploaded {} ({} bytes); serve it with `handoff activate ROUTE {}`\n",
            str_of(&body, "version"),
            body["size_bytes"].as_u64().unwrap_or(0),
            short(str_of(&body, "version")),
        );
        print(text.as_bytes());
    }
    Ok(())
}

/// `handoff activate ROUTE VERSION`.
pub async fn activate(args: ActivateArgs) -> Result<(), Failure> {
    let AdminArgs { admin, json } = args.admin;
    let client = AdminClient::new(&admin)?;
    let digest = if args.version.starts_with("sha256:") {
        args.version.clone()
    } else if args.version.len() == 64 {
        format!("sha256:{}", args.version)
    } else {
        // A short version can only be resolved against the route's history.
        resolve_version(&client, &args.route, &args.version).await?
    };
    let mut target = serde_json::json!({ "version": digest });
    if let Some(prefix) = &args.prefix {
        target["prefix"] = Value::String(prefix.clone());
    }
    let path = format!("/v1/routes/{}/activate", encode(&args.route));
    let body = client
        .call(
            "activate",
            Method::POST,
            &path,
            Some(Payload::json(&target)),
            json,
        )
        .await?;
    if !json {
        print(render_deploy(&body).as_bytes());
    }
    Ok(())
}

/// A full digest from a full one or from a unique prefix of one in the route's history.
async fn resolve_version(
    client: &AdminClient,
    route: &str,
    given: &str,
) -> Result<String, Failure> {
    let wanted = given.strip_prefix("sha256:").unwrap_or(given);
    if wanted.len() == 64 {
        return Ok(format!("sha256:{wanted}"));
    }
    let path = format!("/v1/routes/{}/versions", encode(route));
    let body = client
        .call("versions", Method::GET, &path, None, false)
        .await?;
    let mut matches: Vec<&str> = body["versions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .filter_map(|e| e["version"].as_str())
        .filter(|v| !wanted.is_empty() && v.trim_start_matches("sha256:").starts_with(wanted))
        .collect();
    matches.sort_unstable();
    matches.dedup();
    match matches.as_slice() {
        [one] => Ok((*one).to_owned()),
        [] => Err(Failure::new(
            exit::FAILED,
            format!(
                "route {route} has no version starting with `{given}` in its history; see `handoff versions {route}`"
            ),
        )),
        _ => Err(Failure::new(
            exit::USAGE,
            format!(
                "`{given}` matches {} versions of route {route}; give more digits",
                matches.len()
            ),
        )),
    }
}

fn render_versions(body: &Value, now: SystemTime) -> String {
    let entries = body["versions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let active = str_of(body, "active");
    let now_ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let header = ["", "VERSION", "ACTION", "WHEN", "BY", "LABEL", "MESSAGE"];
    let last_active = entries.iter().rposition(|e| str_of(e, "version") == active);
    let rows: Vec<[String; 7]> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            [
                if Some(i) == last_active {
                    "*".into()
                } else {
                    String::new()
                },
                short(str_of(e, "version")).to_owned(),
                str_of(e, "action").to_owned(),
                format!(
                    "{} ago",
                    ago(now_ms.saturating_sub(e["activated_at_ms"].as_u64().unwrap_or(0)))
                ),
                str_of(e, "by").to_owned(),
                e["label"].as_str().unwrap_or("").to_owned(),
                e["message"].as_str().unwrap_or("").to_owned(),
            ]
        })
        .collect();
    table(&header, &rows)
}

/// A component upload, signed with the private key in `key` when given.
fn signed(bytes: Bytes, key: &Option<std::path::PathBuf>) -> Result<Payload, Failure> {
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

/// `handoff keygen FILE`.
pub fn keygen(args: crate::cli::KeygenArgs) -> Result<(), Failure> {
    use std::io::Write as _;
    let (private, public) =
        crate::signing::generate().map_err(|e| Failure::new(exit::FAILED, e))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&args.file).map_err(|e| {
        Failure::new(
            exit::LOCAL,
            format!("cannot create the key file {}: {e}", args.file.display()),
        )
    })?;
    file.write_all(format!("{private}\n").as_bytes())
        .map_err(|e| Failure::new(exit::LOCAL, format!("writing {}: {e}", args.file.display())))?;
    print(
        format!(
            "private key written to {} (keep it secret)\nadd to the server's --signing-keys file:\n\n[[key]]\nname = \"{}\"\npublic = \"{public}\"\n",
            args.file.display(),
            args.name
        )
        .as_bytes(),
    );
    Ok(())
}

/// Reads the component to upload; a missing or unreadable file is [`exit::LOCAL`].
async fn read_component(path: &Path) -> Result<Bytes, Failure> {
    tokio::fs::read(path).await.map(Bytes::from).map_err(|e| {
        Failure::new(
            exit::LOCAL,
            format!("cannot read the component {}: {e}", path.display()),
        )
    })
}

fn render_deploy(body: &Value) -> String {
    let route = str_of(body, "route");
    let headline = if body["changed"] == false {
        format!("route {route} unchanged: this version was already active")
    } else if body["created"] == true {
        format!("created route {route}")
    } else {
        format!("replaced the version of route {route}")
    };
    let previous = match body["previous_version"].as_str() {
        Some(previous) => previous.to_owned(),
        None => "none (new route)".to_owned(),
    };
    let compiled = match body["compile_ms"].as_f64() {
        Some(ms) => format!("in {ms:.1} ms"),
        None => "not needed (already compiled)".to_owned(),
    };
    let details = key_values(&[
        ("prefix", str_of(body, "prefix").to_owned()),
        ("version", str_of(body, "version").to_owned()),
        ("previous", previous),
        ("compiled", compiled),
    ]);
    let mut out = format!("{headline}\n");
    for line in details.lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

fn render_routes(body: &Value) -> String {
    let routes = body["routes"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if routes.is_empty() {
        return "no routes; deploy one with `handoff deploy ROUTE FILE.wasm`\n".to_owned();
    }
    let header = [
        "ROUTE",
        "PREFIX",
        "VERSION",
        "REQUESTS",
        "IN-FLIGHT",
        "DRAINING",
    ];
    let rows: Vec<[String; 6]> = routes
        .iter()
        .map(|route| {
            [
                str_of(route, "route").to_owned(),
                str_of(route, "prefix").to_owned(),
                short(str_of(&route["active"], "version")).to_owned(),
                route["requests"].as_u64().unwrap_or(0).to_string(),
                route["active"]["in_flight"]
                    .as_u64()
                    .unwrap_or(0)
                    .to_string(),
                route["draining"].as_array().map_or(0, Vec::len).to_string(),
            ]
        })
        .collect();
    table(&header, &rows)
}

fn render_status(body: &Value, now: SystemTime) -> String {
    let active = &body["active"];
    let config = match body["config"].as_object() {
        Some(map) if !map.is_empty() => map
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(" "),
        _ => "(none)".to_owned(),
    };
    let deployed_at = active["deployed_at_ms"].as_u64().unwrap_or(0);
    let now_ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut lines = vec![
        ("route", str_of(body, "route").to_owned()),
        ("prefix", str_of(body, "prefix").to_owned()),
        ("version", str_of(active, "version").to_owned()),
        (
            "deployed",
            format!(
                "{} ago; {} bytes, compiled in {:.1} ms",
                ago(now_ms.saturating_sub(deployed_at)),
                active["size_bytes"].as_u64().unwrap_or(0),
                active["compile_ms"].as_f64().unwrap_or(0.0)
            ),
        ),
        (
            "requests",
            format!(
                "{} on the route; {} on this version, {} failed, {} in flight",
                body["requests"].as_u64().unwrap_or(0),
                active["requests"].as_u64().unwrap_or(0),
                active["failures"].as_u64().unwrap_or(0),
                active["in_flight"].as_u64().unwrap_or(0)
            ),
        ),
        ("config", config),
    ];
    let draining = body["draining"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if draining.is_empty() {
        lines.push(("draining", "(none)".to_owned()));
    }
    for (i, version) in draining.iter().enumerate() {
        lines.push((
            if i == 0 { "draining" } else { "" },
            format!(
                "{}: {} in flight, retired {} ago",
                short(str_of(version, "version")),
                version["in_flight"].as_u64().unwrap_or(0),
                ago(version["retired_ms_ago"].as_u64().unwrap_or(0))
            ),
        ));
    }
    key_values(&lines)
}

/// `key   value` lines, values aligned.
fn key_values(lines: &[(&str, String)]) -> String {
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in lines {
        let _ = writeln!(out, "{key:<width$}  {value}");
    }
    out
}

/// A table with a header row, columns left-aligned to their widest cell.
fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// `1a2b3c4d5e6f` from `sha256:1a2b3c4d5e6f...`: the first 12 hex digits, as the logs show.
pub fn short(version: &str) -> &str {
    let hex = version.strip_prefix("sha256:").unwrap_or(version);
    hex.get(..12).unwrap_or(hex)
}

fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or("?")
}

fn ago(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..120_000 => format!("{} s", ms / 1_000),
        120_000..7_200_000 => format!("{} min", ms / 60_000),
        _ => format!("{} h", ms / 3_600_000),
    }
}

fn status_text(status: StatusCode) -> String {
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
fn encode(text: &str) -> String {
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
fn print(bytes: &[u8]) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(bytes);
    let _ = stdout.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_urls_parse() {
        let url = AdminUrl::parse("http://127.0.0.1:8081").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("127.0.0.1", 8081));
        assert_eq!(url.base, "");
        let url = AdminUrl::parse("localhost:9000/admin/").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("localhost", 9000));
        assert_eq!(
            (url.authority.as_str(), url.base.as_str()),
            ("localhost:9000", "/admin")
        );
        let url = AdminUrl::parse("http://[::1]:8081").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("::1", 8081));
        assert_eq!(AdminUrl::parse("http://example.com").unwrap().port, 80);
        let url = AdminUrl::parse("https://example.com").unwrap();
        assert!(url.https);
        assert_eq!(url.port, 443);
        assert!(
            AdminUrl::parse("ftp://example.com")
                .unwrap_err()
                .contains("https://")
        );
        assert!(AdminUrl::parse("http://:80").is_err());
        assert!(AdminUrl::parse("http://host:port").is_err());
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("/api/v1"), "%2Fapi%2Fv1");
        assert_eq!(encode("GREETING=hi there+1"), "GREETING%3Dhi%20there%2B1");
        assert_eq!(encode("a-b_c.d~"), "a-b_c.d~");
    }

    #[test]
    fn tables_align() {
        let rows = [
            ["hello".to_owned(), "1".to_owned()],
            ["x".to_owned(), "22".to_owned()],
        ];
        assert_eq!(
            table(&["ROUTE", "N"], &rows),
            "ROUTE  N\nhello  1\nx      22\n"
        );
    }

    #[test]
    fn a_deploy_says_what_it_did() {
        let mut body = serde_json::json!({
            "route": "hello", "prefix": "/hello", "version": "sha256:22", "changed": true,
            "created": false, "previous_version": "sha256:11", "compile_ms": 12.34,
        });
        assert_eq!(
            render_deploy(&body),
            "replaced the version of route hello\n  prefix    /hello\n  version   sha256:22\n  \
             previous  sha256:11\n  compiled  in 12.3 ms\n"
        );
        body["changed"] = false.into();
        body["compile_ms"] = Value::Null;
        let text = render_deploy(&body);
        assert!(text.starts_with("route hello unchanged"), "{text}");
        assert!(text.contains("compiled  not needed"), "{text}");
    }

    #[test]
    fn status_shows_every_field() {
        let body = serde_json::json!({
            "route": "hello", "prefix": "/hello", "requests": 7,
            "config": {"GREETING": "hi"},
            "active": {"version": "sha256:00112233445566778899", "size_bytes": 10,
                       "deployed_at_ms": 1_000, "compile_ms": 1.5, "in_flight": 1,
                       "requests": 5, "failures": 0},
            "draining": [{"version": "sha256:aabbccddeeff0011", "in_flight": 2,
                          "retired_ms_ago": 1500, "size_bytes": 10, "deployed_at_ms": 0,
                          "compile_ms": 1.0, "requests": 2, "failures": 0}],
        });
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(4_000);
        let text = render_status(&body, now);
        assert!(
            text.contains("version   sha256:00112233445566778899\n"),
            "{text}"
        );
        assert!(
            text.contains("3 s ago; 10 bytes, compiled in 1.5 ms"),
            "{text}"
        );
        assert!(
            text.contains("7 on the route; 5 on this version, 0 failed, 1 in flight"),
            "{text}"
        );
        assert!(text.contains("config    GREETING=hi\n"), "{text}");
        assert!(
            text.contains("draining  aabbccddeeff: 2 in flight, retired 1 s ago"),
            "{text}"
        );
    }
}
