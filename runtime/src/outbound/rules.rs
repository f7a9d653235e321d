//! Outbound rules: parsing, printing and matching an outgoing request's URI.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

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

    pub(super) fn allows(&self, https: bool, host: &str, port: u16) -> bool {
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
    pub(super) fn address(&self) -> Option<IpAddr> {
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
pub(super) fn target(uri: &http::Uri) -> Option<(bool, &str, u16)> {
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
