//! Keeps web pages out of the admin API. A tokenless admin API on loopback (the default of
//! `serve` and `dev`) is reachable by every browser on the machine, so a page could otherwise
//! upload and activate its own code. This module refuses:
//!
//! * a `Host` that is not this listener: not its address, not a loopback name (`localhost`,
//!   `127.0.0.1`, `[::1]`, any port), not an `--admin-host` name, and not an IP address while
//!   the listener is bound to all of them. That is DNS rebinding: a page whose own name
//!   resolves to 127.0.0.1 sends its name, never ours. (`403`; no `Host` at all: `400`.)
//! * an `Origin` other than the listener's own (`http[s]://` + the request's `Host`), including
//!   `null`, and a `Sec-Fetch-Site` of `cross-site` or `same-site`: the request was sent by a
//!   page of another site, or of another port of this host (a guest on the data plane). Pages
//!   the admin listener serves itself are same-origin and pass; curl and the CLI send neither
//!   header. (`403`)
//! * a mutation whose body is not of the type its endpoint takes: uploads (`PUT
//!   /v1/routes/{name}`, `POST /v1/modules`) need `application/wasm` or
//!   `application/octet-stream`, always; any other mutation that has a body needs
//!   `application/json` (a key-value import also `application/x-ndjson`). A body-less mutation (`DELETE`, `POST .../rollback` without a body)
//!   carries nothing to interpret and needs no type; the checks above keep pages from sending
//!   it. These are types no page can send without a CORS preflight, which this API never
//!   grants. (`415`)
//!
//! `GET /healthz` is exempt from all of it: load balancers send whatever `Host` they were
//! configured with, and it reveals nothing.
//!
//! Everything here decides on the request head alone and never reads a body. The first two run
//! before authentication ([`origin`]); the content type after it ([`content_type`]), so an
//! unauthenticated caller learns nothing and a refused mutation is in the audit log.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode, header};
use http_body::Body as _;

use crate::problem::Problem;

/// Content types an upload may carry.
pub const WASM_CONTENT_TYPES: [&str; 2] = ["application/wasm", "application/octet-stream"];

/// What the admin listener answers to: its address, its scheme and its configured names.
#[derive(Debug, Clone)]
pub struct AdminGuard {
    listener: SocketAddr,
    https: bool,
    names: Vec<String>,
}

impl AdminGuard {
    /// The guard of an admin listener bound to `listener`, speaking TLS if `https`, that also
    /// answers to the host names `names` (`--admin-host`).
    pub fn new(listener: SocketAddr, https: bool, names: &[String]) -> Self {
        Self {
            listener,
            https,
            names: names.iter().map(|n| normalize_name(n)).collect(),
        }
    }

    /// Whether `name` (a `Host` without its port, IPv6 without brackets) names this listener.
    fn answers_to(&self, name: &str) -> bool {
        let name = normalize_name(name);
        if let Ok(ip) = name.parse::<IpAddr>() {
            // An address cannot be rebound: whoever uses one reached this machine by it.
            return ip.is_loopback()
                || ip == self.listener.ip()
                || self.listener.ip().is_unspecified();
        }
        name == "localhost" || self.names.contains(&name)
    }

    fn scheme(&self) -> &'static str {
        if self.https { "https" } else { "http" }
    }

    /// Checks the `Host`, `Origin` and `Sec-Fetch-Site` of a request to `uri`.
    fn check(&self, uri: &http::Uri, headers: &HeaderMap) -> Result<(), Refusal> {
        // HTTP/1 sends `Host`; HTTP/2 sends `:authority`, which arrives in the URI.
        let host = match headers.get(header::HOST) {
            Some(value) => value.to_str().ok(),
            None => uri.authority().map(http::uri::Authority::as_str),
        };
        let Some(authority) = host.and_then(parse_authority) else {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "a request to the admin API needs a `Host` header naming the server, like `Host: 127.0.0.1:8081`",
            ));
        };
        if !self.answers_to(&authority.name) {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!(
                    "the admin API answers only requests addressed to it, and `Host: {}` is not its address, a loopback name or a name given with --admin-host; if you reach this server by that name, start it with `--admin-host {}`",
                    shown(host.unwrap_or("")),
                    shown(&authority.name),
                ),
            ));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let own = format!("{}://{}", self.scheme(), host.unwrap_or(""));
            let same = origin
                .to_str()
                .ok()
                .is_some_and(|origin| self.is_own_origin(origin, &authority));
            if !same {
                return Err(Refusal::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "the admin API refuses requests that a web page of another origin sent (`Origin: {}`); only its own origin `{}` may call it from a browser, and tools like curl and the handoff CLI send no `Origin`",
                        shown(origin.to_str().unwrap_or("(unreadable)")),
                        shown(&own),
                    ),
                ));
            }
        }
        if let Some(site) = headers.get("sec-fetch-site")
            && matches!(site.as_bytes(), b"cross-site" | b"same-site")
        {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!(
                    "the admin API refuses requests that a web page of another site or port sent (`Sec-Fetch-Site: {}`)",
                    shown(site.to_str().unwrap_or("")),
                ),
            ));
        }
        Ok(())
    }

    /// Whether `origin` (`scheme://host[:port]`) is this listener as the request addressed it.
    fn is_own_origin(&self, origin: &str, addressed: &HostPort) -> bool {
        let Some((scheme, rest)) = origin.split_once("://") else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case(self.scheme()) {
            return false;
        }
        let Some(origin) = parse_authority(rest) else {
            return false;
        };
        let default = if self.https { 443 } else { 80 };
        normalize_name(&origin.name) == normalize_name(&addressed.name)
            && origin.port.unwrap_or(default) == addressed.port.unwrap_or(default)
    }
}

/// Why a request was refused: its status and a sentence saying what to do.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    detail: String,
}

impl Refusal {
    fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
        }
    }
}

/// A `Host` or origin authority split into its name (IPv6 without brackets) and port.
struct HostPort {
    name: String,
    port: Option<u16>,
}

/// `name[:port]` or `[v6][:port]`, nothing else (no user info, path or empty name).
fn parse_authority(text: &str) -> Option<HostPort> {
    let text = text.trim();
    if text.is_empty() || text.contains(['@', '/', '?', '#', ' ']) {
        return None;
    }
    let (name, port) = if let Some(v6) = text.strip_prefix('[') {
        let (name, after) = v6.split_once(']')?;
        match after {
            "" => (name, None),
            _ => (name, Some(after.strip_prefix(':')?)),
        }
    } else {
        match text.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (text, None),
        }
    };
    if name.is_empty() {
        return None;
    }
    let port = match port {
        Some(port) => Some(port.parse::<u16>().ok()?),
        None => None,
    };
    Some(HostPort {
        name: name.to_owned(),
        port,
    })
}

/// Lower case, without brackets or a trailing dot: how names are compared.
fn normalize_name(name: &str) -> String {
    name.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Header text as a problem quotes it: escaped, and at most 100 characters.
fn shown(text: &str) -> String {
    let mut quoted: String = text.escape_debug().collect();
    if quoted.len() > 100 {
        let cut = (0..=100)
            .rev()
            .find(|&i| quoted.is_char_boundary(i))
            .unwrap_or(0);
        quoted.truncate(cut);
        quoted.push('…');
    }
    quoted
}

/// Admin middleware (before authentication): refuses requests whose `Host`, `Origin` or
/// `Sec-Fetch-Site` show that a web page, not an operator's tool, sent them.
pub async fn origin(
    State(guard): State<Arc<AdminGuard>>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    if let Err(refusal) = guard.check(request.uri(), request.headers()) {
        if !matches!(*request.method(), Method::GET | Method::HEAD) {
            tracing::warn!(
                target: "audit",
                method = %request.method(),
                path = %request.uri().path(),
                result = refusal.status.as_u16(),
                "refused: {}",
                refusal.detail
            );
        }
        return Problem::new(refusal.status, refusal.detail).into_response();
    }
    next.run(request).await
}

/// Admin middleware (after authentication): refuses a mutation whose body is not of the type
/// its endpoint takes (see the module documentation).
pub async fn content_type(request: Request, next: Next) -> Response {
    match body_type_problem(request.method(), request.uri().path(), &request) {
        Some(problem) => problem.into_response(),
        None => next.run(request).await,
    }
}

/// What is wrong with the content type of `request` (`method` on `path`), if anything.
fn body_type_problem(method: &Method, path: &str, request: &Request) -> Option<Problem> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) || !path.starts_with("/v1/")
    {
        return None;
    }
    let given = request.headers().get(header::CONTENT_TYPE);
    let essence = given.map(|value| {
        value
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    let named = || match given {
        Some(value) => format!("not `{}`", shown(value.to_str().unwrap_or("(unreadable)"))),
        None => "and the request has none".to_owned(),
    };
    let upload = (*method == Method::PUT && is_route_path(path))
        || (*method == Method::POST && path == "/v1/modules");
    if upload {
        if essence
            .as_deref()
            .is_some_and(|e| WASM_CONTENT_TYPES.contains(&e))
        {
            return None;
        }
        return Some(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "an upload takes the component's bytes with `Content-Type: application/wasm` (or `application/octet-stream`), {}; with curl: --data-binary @FILE -H 'content-type: application/wasm'",
                named()
            ),
        ));
    }
    let has_body = !request.body().is_end_stream();
    if !has_body || essence.as_deref() == Some("application/json") {
        return None;
    }
    // A key-value import is JSON lines, a type no page can send without a preflight either.
    let import =
        path.ends_with("/kv/import") || (path.starts_with("/v1/kv/") && path.ends_with("/import"));
    if import && essence.as_deref() == Some("application/x-ndjson") {
        return None;
    }
    Some(Problem::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!(
            "this endpoint takes a JSON body with `Content-Type: application/json`, {} (or send no body at all)",
            named()
        ),
    ))
}

/// `/v1/routes/{name}` exactly: the deploy endpoint.
fn is_route_path(path: &str) -> bool {
    path.strip_prefix("/v1/routes/")
        .is_some_and(|name| !name.is_empty() && !name.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(listener: &str) -> AdminGuard {
        AdminGuard::new(
            listener.parse().unwrap(),
            false,
            &["Admin.Internal".to_owned()],
        )
    }

    fn check(guard: &AdminGuard, headers: &[(&str, &str)]) -> Result<(), StatusCode> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        guard
            .check(&"/v1/routes".parse().unwrap(), &map)
            .map_err(|r| r.status)
    }

    #[test]
    fn hosts_are_the_listener_loopback_names_and_configured_names() {
        let g = guard("127.0.0.1:8081");
        for ok in [
            "127.0.0.1:8081",
            "127.0.0.1",
            "localhost",
            "LOCALHOST:9000",
            "[::1]:8081",
            "[::1]",
            "admin.internal",
            "admin.internal.:8081",
        ] {
            assert_eq!(check(&g, &[("host", ok)]), Ok(()), "{ok}");
        }
        for refused in [
            "evil.example",
            "evil.example:8081",
            "localhost.evil.example",
            "10.0.0.5:8081",
        ] {
            assert_eq!(
                check(&g, &[("host", refused)]),
                Err(StatusCode::FORBIDDEN),
                "{refused}"
            );
        }
        for malformed in ["", "user@127.0.0.1", "127.0.0.1:port", "[::1"] {
            assert_eq!(
                check(&g, &[("host", malformed)]),
                Err(StatusCode::BAD_REQUEST),
                "{malformed:?}"
            );
        }
        assert_eq!(check(&g, &[]), Err(StatusCode::BAD_REQUEST));
        // Bound to every address: any address literal, still no foreign name.
        let all = guard("0.0.0.0:8081");
        assert_eq!(check(&all, &[("host", "10.0.0.5:8081")]), Ok(()));
        assert_eq!(
            check(&all, &[("host", "evil.example:8081")]),
            Err(StatusCode::FORBIDDEN)
        );
    }

    #[test]
    fn only_the_listeners_own_origin_passes() {
        let g = guard("127.0.0.1:8081");
        let host = ("host", "127.0.0.1:8081");
        assert_eq!(
            check(&g, &[host, ("origin", "http://127.0.0.1:8081")]),
            Ok(())
        );
        assert_eq!(
            check(
                &g,
                &[
                    ("host", "localhost"),
                    ("origin", "http://LOCALHOST:80"),
                    ("sec-fetch-site", "same-origin")
                ]
            ),
            Ok(())
        );
        for origin in [
            "http://evil.example",
            "http://127.0.0.1:8080",
            "https://127.0.0.1:8081",
            "null",
            "http://localhost:8081",
            "127.0.0.1:8081",
        ] {
            assert_eq!(
                check(&g, &[host, ("origin", origin)]),
                Err(StatusCode::FORBIDDEN),
                "{origin}"
            );
        }
        for site in ["cross-site", "same-site"] {
            assert_eq!(
                check(&g, &[host, ("sec-fetch-site", site)]),
                Err(StatusCode::FORBIDDEN),
                "{site}"
            );
        }
        assert_eq!(check(&g, &[host, ("sec-fetch-site", "none")]), Ok(()));
    }

    #[test]
    fn quoted_header_text_is_bounded() {
        assert_eq!(shown("a\"b"), "a\\\"b");
        assert!(shown(&"é".repeat(300)).chars().count() <= 101);
    }
}
