//! Outbound HTTP from guests: denied unless the route's allow-list names the destination, and
//! then connected only to an address the server lets guests reach.
//!
//! A rule is `scheme://host[:port]`: `http://api.example.com`, `https://*.example.com:8443`,
//! `http://10.0.0.5:8080`, `http://[::1]`. `*.` matches any subdomain (not the bare domain, and
//! never an IP address); without a port a rule allows the scheme's default port only. Rules come
//! from the deploy, never from the incoming request (its `Host` header plays no part).
//!
//! Names are not enough: a public name can resolve to `127.0.0.1`, to a private network or to a
//! cloud metadata service. [`send`] resolves the host once, refuses every address that is not
//! globally reachable (loopback, private, link-local, unique-local, unspecified, shared,
//! documentation, multicast, ...) unless the matching rule names that IP address itself or the
//! server allows private destinations (`--outbound-private`), and connects to the address it
//! checked, so there is no second lookup for a rebinding DNS server to answer differently. Cloud
//! metadata addresses stay refused under `--outbound-private` too, unless a rule names them.
//!
//! This module never logs: what a refusal means for the route is the caller's to report.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

/// A route's allow-list (empty: every outbound request is denied).
pub type Outbound = Arc<[Rule]>;

/// The most rules one route may have.
pub const MAX_RULES: usize = 64;

/// One allowed destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    https: bool,
    /// Lowercase host (an IPv6 address without its brackets); with `wildcard`, the domain
    /// below which any subdomain matches.
    host: String,
    wildcard: bool,
    port: u16,
}

impl Rule {
    /// Parses `scheme://host[:port]`, saying what is wrong in a sentence.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "outbound rule `{}` {why}; write it like `https://api.example.com`, `http://10.0.0.5:8080`, `http://[::1]:8080` or `https://*.example.com`",
                text.escape_debug()
            )
        };
        let (https, rest) = if let Some(rest) = text.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(bad("needs an http:// or https:// scheme"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad(
                "has a path, query or user part; give only the host and port",
            ));
        }
        let default_port = if https { 443 } else { 80 };
        let parse_port = |port: &str| {
            port.parse::<u16>()
                .map_err(|_| bad("has a port that is not a number"))
        };
        // `[v6]` or `[v6]:port`; otherwise `host` or `host:port`.
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let Some((address, after)) = bracketed.split_once(']') else {
                return Err(bad("has a `[` without its `]`"));
            };
            if address.parse::<Ipv6Addr>().is_err() {
                return Err(bad(
                    "has brackets around something that is not an IPv6 address",
                ));
            }
            let port = match after {
                "" => default_port,
                _ => match after.strip_prefix(':') {
                    Some(port) => parse_port(port)?,
                    None => return Err(bad("has something after `]` that is not `:port`")),
                },
            };
            return Ok(Self {
                https,
                host: address.to_ascii_lowercase(),
                wildcard: false,
                port,
            });
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) if !host.contains(':') => (host, parse_port(port)?),
                // `v6:port` without brackets, as rules were once shown and stored: the last
                // colon starts the port.
                Some((host, port)) if host.parse::<Ipv6Addr>().is_ok() => (host, parse_port(port)?),
                Some(_) => return Err(bad("has an IPv6 address without brackets")),
                None => (rest, default_port),
            }
        };
        let (wildcard, host) = match host.strip_prefix("*.") {
            Some(domain) => (true, domain),
            None => (false, host),
        };
        let valid = !host.is_empty()
            && host.len() <= 253
            && (host.parse::<Ipv6Addr>().is_ok()
                || host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-')));
        if !valid || host.contains('*') {
            return Err(bad("has no usable host"));
        }
        if wildcard && host.parse::<IpAddr>().is_ok() {
            return Err(bad(
                "puts `*.` before an IP address; name the address itself",
            ));
        }
        Ok(Self {
            https,
            host: host.to_ascii_lowercase(),
            wildcard,
            port,
        })
    }

    fn allows(&self, https: bool, host: &str, port: u16) -> bool {
        if self.https != https || self.port != port {
            return false;
        }
        let host = host.to_ascii_lowercase();
        if self.wildcard {
            host.parse::<IpAddr>().is_err()
                && host.len() > self.host.len() + 1
                && host.ends_with(&self.host)
                && host.as_bytes()[host.len() - self.host.len() - 1] == b'.'
        } else {
            host == self.host
        }
    }

    /// The IP address this rule names literally, if it names one.
    fn address(&self) -> Option<IpAddr> {
        if self.wildcard {
            return None;
        }
        self.host.parse().ok()
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        let star = if self.wildcard { "*." } else { "" };
        let port = self.port;
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{port}", self.host)
        } else {
            write!(f, "{scheme}://{star}{}:{port}", self.host)
        }
    }
}

/// Parses a list of rules (a lone empty string is the empty list).
pub fn parse_rules<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<Outbound, String> {
    let mut rules = Vec::new();
    for text in texts {
        if text.is_empty() {
            continue;
        }
        let rule = Rule::parse(text)?;
        if !rules.contains(&rule) {
            rules.push(rule);
        }
    }
    if rules.len() > MAX_RULES {
        return Err(format!(
            "a route may have at most {MAX_RULES} outbound rules"
        ));
    }
    Ok(rules.into())
}

/// The scheme, host (IPv6 without brackets) and port of an outgoing request's URI, if it is an
/// absolute http or https URI.
fn target(uri: &http::Uri) -> Option<(bool, &str, u16)> {
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return None,
    };
    let authority = uri.authority()?;
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    Some((https, host, port))
}

/// Whether `uri` (an outgoing request's) is allowed by `rules`.
pub fn allows(rules: &[Rule], uri: &http::Uri) -> bool {
    target(uri)
        .is_some_and(|(https, host, port)| rules.iter().any(|rule| rule.allows(https, host, port)))
}

/// Whether any host on the internet could reach `ip`: false for loopback, private (RFC 1918),
/// shared (RFC 6598), link-local, unique-local (`fc00::/7`), unspecified, documentation,
/// benchmarking, reserved, multicast and broadcast addresses, and for IPv6 forms that embed
/// such an IPv4 address (mapped, compatible, 6to4, NAT64).
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_global_v4(v4),
        IpAddr::V6(v6) => is_global_v6(v6),
    }
}

fn is_global_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0 // "this network", 0.0.0.0 included
        || a == 10
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || a == 127
        || (a == 169 && b == 254)
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 192 && b == 168)
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // documentation
        || (a == 203 && b == 0 && c == 113) // documentation
        || a >= 224) // multicast, reserved, broadcast
}

fn is_global_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let embedded = |high: u16, low: u16| {
        Ipv4Addr::new((high >> 8) as u8, high as u8, (low >> 8) as u8, low as u8)
    };
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_global_v4(v4);
    }
    match s {
        // Unspecified, loopback and the deprecated IPv4-compatible block.
        [0, 0, 0, 0, 0, 0, _, _] => false,
        // NAT64 (well-known prefix): as global as the IPv4 address it carries.
        [0x64, 0xff9b, 0, 0, 0, 0, high, low] => is_global_v4(embedded(high, low)),
        // NAT64 local use, discard-only.
        [0x64, 0xff9b, 1, ..] | [0x100, 0, 0, 0, ..] => false,
        // 6to4: as global as the IPv4 address it carries.
        [0x2002, high, low, ..] => is_global_v4(embedded(high, low)),
        // Documentation, ORCHID and the rest of the IETF protocol block.
        [0x2001, 0x0db8, ..] | [0x2001, 0..=0x01ff, ..] => false,
        [first, ..] => {
            !((first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
                || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (first & 0xff00) == 0xff00) // multicast
        }
    }
}

/// Cloud metadata services (instance credentials live there): refused even under
/// `--outbound-private` unless a rule names the address itself.
pub fn is_metadata(ip: IpAddr) -> bool {
    const V4: [Ipv4Addr; 3] = [
        Ipv4Addr::new(169, 254, 169, 254), // AWS, GCP, Azure, OpenStack, ...
        Ipv4Addr::new(169, 254, 170, 2),   // AWS ECS task metadata
        Ipv4Addr::new(100, 100, 100, 200), // Alibaba Cloud
    ];
    const V6: [Ipv6Addr; 1] = [Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254)]; // AWS
    match ip {
        IpAddr::V4(v4) => V4.contains(&v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => V4.contains(&v4),
            None => V6.contains(&v6),
        },
    }
}

/// Whether a request allowed by `rules` to `https`, `host`, `port` may connect to `ip`: a
/// globally reachable address always; any other only if a matching rule names `ip` itself, or,
/// with `private` (`--outbound-private`), if it is not a cloud metadata address.
pub fn may_connect(
    rules: &[Rule],
    (https, host, port): (bool, &str, u16),
    ip: IpAddr,
    private: bool,
) -> bool {
    let ip = canonical(ip);
    if is_global(ip) {
        return true;
    }
    let named = rules
        .iter()
        .any(|rule| rule.allows(https, host, port) && rule.address().map(canonical) == Some(ip));
    named || (private && !is_metadata(ip))
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(rules: &[&str], uri: &str) -> bool {
        let rules = parse_rules(rules.iter().copied()).unwrap();
        allows(&rules, &uri.parse().unwrap())
    }

    #[test]
    fn rules_match_scheme_host_and_port() {
        assert!(allowed(
            &["https://api.example.com"],
            "https://api.example.com/v1"
        ));
        assert!(allowed(
            &["https://API.example.com"],
            "https://api.EXAMPLE.com:443/"
        ));
        assert!(!allowed(
            &["https://api.example.com"],
            "http://api.example.com/"
        ));
        assert!(!allowed(
            &["https://api.example.com"],
            "https://api.example.com:8443/"
        ));
        assert!(allowed(
            &["http://127.0.0.1:8080"],
            "http://127.0.0.1:8080/x"
        ));
        assert!(!allowed(
            &["http://127.0.0.1:8080"],
            "http://127.0.0.1:8081/x"
        ));
        assert!(!allowed(
            &["https://api.example.com"],
            "https://api.example.com.evil.net/"
        ));
        assert!(!allowed(&[], "https://api.example.com/"));
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        let rule = ["https://*.example.com"];
        assert!(allowed(&rule, "https://a.example.com/"));
        assert!(allowed(&rule, "https://a.b.example.com/"));
        assert!(!allowed(&rule, "https://example.com/"));
        assert!(!allowed(&rule, "https://badexample.com/"));
    }

    #[test]
    fn bad_rules_say_why() {
        for bad in [
            "example.com",
            "ftp://x",
            "https://",
            "https://a/b",
            "https://a:port",
            "https://*",
            "https://u@h",
        ] {
            assert!(Rule::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Rule::parse("https://*.Example.com").unwrap().to_string(),
            "https://*.example.com:443"
        );
        for bad in [
            "http://::1",
            "http://fe80::",
            "http://[::1",
            "http://[example.com]",
            "http://[::1]x",
            "http://[::1]:x",
            "http://*.10.0.0.1",
        ] {
            assert!(Rule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ipv6_rules_take_brackets_with_or_without_a_port() {
        let with_port = Rule::parse("http://[::1]:8080").unwrap();
        assert_eq!(with_port.to_string(), "http://[::1]:8080");
        let without = Rule::parse("http://[::1]").unwrap();
        assert_eq!(without.to_string(), "http://[::1]:80");
        assert_eq!(
            Rule::parse("https://[::1]/").unwrap().to_string(),
            "https://[::1]:443"
        );
        // What is shown (and stored) parses back to the same rule, and so does the form
        // without brackets that was shown and stored before.
        for rule in [&with_port, &without] {
            assert_eq!(&Rule::parse(&rule.to_string()).unwrap(), rule);
        }
        assert_eq!(Rule::parse("http://::1:8080").unwrap(), with_port);
        assert!(allowed(&["http://[::1]:8080"], "http://[::1]:8080/x"));
        assert!(allowed(&["http://[::1]"], "http://[::1]/x"));
        assert!(!allowed(&["http://[::1]"], "http://[::1]:8080/x"));
    }

    #[test]
    fn wildcards_never_match_ip_addresses() {
        assert!(!allowed(&["http://*.0.0.1"], "http://127.0.0.1/"));
        assert!(allowed(&["http://*.0.0.1"], "http://a.0.0.1/"));
    }

    #[test]
    fn only_globally_reachable_addresses_are_global() {
        for local in [
            "0.0.0.0",
            "10.1.2.3",
            "100.64.0.1",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::1",
            "2001:db8::1",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
        ] {
            assert!(!is_global(local.parse().unwrap()), "{local} is not global");
        }
        for global in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.0.1",
            "172.32.0.1",
            "192.169.0.1",
            "2606:4700::1111",
            "2a00:1450::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(is_global(global.parse().unwrap()), "{global} is global");
        }
    }

    #[test]
    fn non_global_addresses_need_a_literal_rule_or_the_opt_in() {
        let rules = parse_rules([
            "http://localhost:8080",
            "http://127.0.0.1:8080",
            "http://[::1]:8080",
            "http://169.254.169.254",
            "http://metadata.internal",
        ])
        .unwrap();
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        // A name resolving to loopback: refused, unless private destinations are allowed.
        let by_name = (false, "localhost", 8080);
        assert!(!may_connect(&rules, by_name, ip("127.0.0.1"), false));
        assert!(!may_connect(&rules, by_name, ip("::1"), false));
        assert!(may_connect(&rules, by_name, ip("127.0.0.1"), true));
        // The rule names the address itself.
        assert!(may_connect(
            &rules,
            (false, "127.0.0.1", 8080),
            ip("127.0.0.1"),
            false
        ));
        assert!(may_connect(&rules, (false, "::1", 8080), ip("::1"), false));
        assert!(may_connect(&rules, (false, "::1", 8080), ip("::1"), false));
        // A public address is fine whatever the name.
        assert!(may_connect(&rules, by_name, ip("93.184.215.14"), false));
        // Metadata: refused by name even under the opt-in; a literal rule may name it.
        let metadata = (false, "metadata.internal", 80);
        assert!(!may_connect(&rules, metadata, ip("169.254.169.254"), false));
        assert!(!may_connect(&rules, metadata, ip("169.254.169.254"), true));
        assert!(!may_connect(
            &rules,
            metadata,
            ip("::ffff:169.254.169.254"),
            true
        ));
        assert!(may_connect(
            &rules,
            (false, "169.254.169.254", 80),
            ip("169.254.169.254"),
            false
        ));
    }
}
