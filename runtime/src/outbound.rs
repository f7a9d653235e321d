//! Outbound HTTP from guests: denied unless the route's allow-list names the destination.
//!
//! A rule is `scheme://host[:port]`: `http://api.example.com`, `https://*.example.com:8443`.
//! `*.` matches any subdomain (not the bare domain); without a port a rule allows the
//! scheme's default port only. Rules come from the deploy, never from the incoming request
//! (its `Host` header plays no part).

use std::fmt;
use std::sync::Arc;

/// A route's allow-list (empty: every outbound request is denied).
pub type Outbound = Arc<[Rule]>;

/// The most rules one route may have.
pub const MAX_RULES: usize = 64;

/// One allowed destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    https: bool,
    /// Lowercase host; with `wildcard`, the domain below which any subdomain matches.
    host: String,
    wildcard: bool,
    port: u16,
}

impl Rule {
    /// Parses `scheme://host[:port]`, saying what is wrong in a sentence.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "outbound rule `{}` {why}; write it like `https://api.example.com`, `http://10.0.0.5:8080` or `https://*.example.com`",
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
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || rest.starts_with('[') => {
                let port: u16 = port
                    .parse()
                    .map_err(|_| bad("has a port that is not a number"))?;
                (host, port)
            }
            _ => (rest, if https { 443 } else { 80 }),
        };
        let (wildcard, host) = match host.strip_prefix("*.") {
            Some(domain) => (true, domain),
            None => (false, host),
        };
        let valid = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
        if !valid || host.contains('*') {
            return Err(bad("has no usable host"));
        }
        Ok(Self {
            https,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase(),
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
            host.len() > self.host.len() + 1
                && host.ends_with(&self.host)
                && host.as_bytes()[host.len() - self.host.len() - 1] == b'.'
        } else {
            host == self.host
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        let star = if self.wildcard { "*." } else { "" };
        write!(f, "{scheme}://{star}{}:{}", self.host, self.port)
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

/// Whether `uri` (an outgoing request's) is allowed by `rules`.
pub fn allows(rules: &[Rule], uri: &http::Uri) -> bool {
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return false,
    };
    let Some(authority) = uri.authority() else {
        return false;
    };
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    rules.iter().any(|rule| rule.allows(https, host, port))
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
    }
}
