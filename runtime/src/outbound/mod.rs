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

//!
//! `rules.rs` parses and matches rules, `address.rs` decides which addresses a request may
//! connect to, `send.rs` resolves, connects and speaks HTTP/1.1 (over TLS for https).

mod address;
mod rules;
mod send;

pub use rules::{Outbound, allows, parse_rules};
pub use send::{SendError, send};

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::address::{is_global, may_connect};
    use super::rules::Rule;
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
        // ... and in every IPv6 form that carries it to an IPv4 host.
        for wrapped in [
            "::ffff:169.254.169.254",               // IPv4-mapped
            "::169.254.169.254",                    // IPv4-compatible
            "64:ff9b::a9fe:a9fe",                   // NAT64
            "64:ff9b:1::a9fe:a9fe",                 // NAT64, local-use prefix
            "2002:a9fe:a9fe::1",                    // 6to4
            "2001:0:4136:e378:8000:63bf:5601:5601", // Teredo: client 169.254.169.254 inverted
            "64:ff9b::6464:64c8",                   // NAT64 of Alibaba Cloud's 100.100.100.200
        ] {
            assert!(
                !may_connect(&rules, metadata, ip(wrapped), true),
                "{wrapped} reached the metadata service"
            );
        }
        // Other private addresses in those forms stay reachable under the opt-in.
        assert!(may_connect(&rules, by_name, ip("64:ff9b::a00:1"), true));
        assert!(may_connect(
            &rules,
            (false, "169.254.169.254", 80),
            ip("169.254.169.254"),
            false
        ));
    }
}
