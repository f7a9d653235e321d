//! Which addresses an outbound request may connect to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::rules::Rule;

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
        IpAddr::V6(v6) => V6.contains(&v6) || embedded_ipv4(v6).iter().any(|v4| V4.contains(v4)),
    }
}

/// The IPv4 addresses an IPv6 address can carry to an IPv4 host: IPv4-mapped and
/// IPv4-compatible (`::ffff:a.b.c.d`, `::a.b.c.d`), NAT64 (`64:ff9b::/96`, `64:ff9b:1::/48`),
/// 6to4 (`2002:AABB:CCDD::/48`) and Teredo (`2001::/32`, the client address inverted).
fn embedded_ipv4(v6: Ipv6Addr) -> Vec<Ipv4Addr> {
    let s = v6.segments();
    let pair = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    let mut found = Vec::new();
    if let Some(v4) = v6.to_ipv4_mapped() {
        found.push(v4);
    }
    if s[..6] == [0; 6] {
        found.push(pair(s[6], s[7])); // IPv4-compatible (deprecated)
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) {
        found.push(pair(s[6], s[7])); // NAT64: the well-known and the local-use prefix
    }
    if s[0] == 0x2002 {
        found.push(pair(s[1], s[2])); // 6to4
    }
    if s[0] == 0x2001 && s[1] == 0 {
        found.push(pair(!s[6], !s[7])); // Teredo: the client's address, inverted
    }
    found
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
