//! What a route serves and how a request picks its version.
//!
//! A live route has a **stable** version and, during a canary, at most one **candidate** that
//! takes a share of the requests (its [`Weight`]). With a [`Sticky`] key the split is
//! deterministic: the key is hashed with the route's name into one of 10,000 buckets
//! ([`bucket`]), and buckets below the weight go to the candidate, so as the weight rises a key
//! never moves back from the candidate to the stable version. Without a key each request is
//! split at random. A **shadow** version sees a copy of a share of the requests; its
//! responses are never sent.

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;
use http::header::HeaderName;

use crate::version::Version;

/// Buckets a sticky key is hashed into; a weight is a number of buckets.
pub const BUCKETS: u16 = 10_000;

/// A share of a route's requests, in hundredths of a percent (0 to 10,000 = 0 to 100 %).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Weight(u16);

impl Weight {
    /// None of the requests.
    pub const ZERO: Self = Self(0);
    /// All of the requests.
    pub const ALL: Self = Self(BUCKETS);

    /// A weight of `percent` (0-100; fractions are rounded to the nearest hundredth).
    pub fn from_percent(percent: f64) -> Result<Self, String> {
        if !(0.0..=100.0).contains(&percent) {
            return Err(format!(
                "a weight is a percentage from 0 to 100; got {percent}"
            ));
        }
        Ok(Self((percent * 100.0).round() as u16))
    }

    /// The weight in percent.
    pub fn percent(self) -> f64 {
        f64::from(self.0) / 100.0
    }

    /// The weight in buckets (hundredths of a percent).
    pub fn buckets(self) -> u16 {
        self.0
    }
}

/// The part a version plays on its route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It serves every request the candidate does not.
    Stable,
    /// It serves its weight's share of the requests.
    Candidate,
    /// It sees copies of requests; its responses are compared, never sent.
    Shadow,
}

impl Role {
    /// `stable`, `candidate` or `shadow`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stable => "stable",
            Self::Candidate => "candidate",
            Self::Shadow => "shadow",
        }
    }
}

/// What keeps a client on one side of a split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// The value of a request header.
    Header(HeaderName),
    /// The value of a cookie.
    Cookie(Arc<str>),
    /// The client's IP address.
    Ip,
}

impl Sticky {
    /// Parses `header:NAME`, `cookie:NAME` or `ip`, saying what is wrong in a sentence.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "sticky key `{}` is not `header:NAME`, `cookie:NAME` or `ip`",
                text.escape_debug()
            )
        };
        match text.split_once(':') {
            None if text == "ip" => Ok(Self::Ip),
            Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
                .map(Self::Header)
                .map_err(|_| bad()),
            Some(("cookie", name))
                if !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !b";=,\"\\".contains(&b)) =>
            {
                Ok(Self::Cookie(name.into()))
            }
            _ => Err(bad()),
        }
    }

    /// The text [`Sticky::parse`] reads.
    pub fn text(&self) -> String {
        match self {
            Self::Header(name) => format!("header:{name}"),
            Self::Cookie(name) => format!("cookie:{name}"),
            Self::Ip => "ip".into(),
        }
    }

    /// This request's key, if it carries one.
    fn key<'a>(&self, headers: &'a HeaderMap, ip: Option<IpAddr>) -> Option<StickyKey<'a>> {
        match self {
            Self::Header(name) => headers.get(name).map(|v| StickyKey::Bytes(v.as_bytes())),
            Self::Cookie(name) => cookie(headers, name).map(StickyKey::Bytes),
            Self::Ip => ip.map(StickyKey::Ip),
        }
    }
}

enum StickyKey<'a> {
    Bytes(&'a [u8]),
    Ip(IpAddr),
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let (key, value) = pair.split_at(pair.iter().position(|b| *b == b'=')?);
            (key == name.as_bytes()).then_some(&value[1..])
        })
}

/// The bucket (0..10,000) a sticky key falls in on route `route`: FNV-1a (64 bit) over the
/// route's name, one `0xff` byte and the key, then the SplitMix64 finalizer, modulo 10,000.
/// This is part of the API: the same on every node, across restarts and across releases.
pub fn bucket(route: &str, key: &[u8]) -> u16 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in route.bytes().chain([0xff]).chain(key.iter().copied()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    (hash % u64::from(BUCKETS)) as u16
}

/// A per-request random bucket (0..10,000), from a per-thread xorshift generator.
fn random_bucket() -> u16 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let seed = std::collections::hash_map::RandomState::new();
            std::hash::BuildHasher::hash_one(&seed, std::thread::current().id()) | 1
        });
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        (x % u64::from(BUCKETS)) as u16
    })
}

/// A candidate and its share.
#[derive(Clone)]
pub struct Candidate {
    /// The version.
    pub version: Arc<Version>,
    /// Its share of the route's requests.
    pub weight: Weight,
    /// What keeps a client on one side (`None`: random per request).
    pub sticky: Option<Sticky>,
}

/// A shadow and its share.
#[derive(Clone)]
pub struct Shadow {
    /// The version.
    pub version: Arc<Version>,
    /// The share of requests copied to it.
    pub percent: Weight,
}

/// The versions serving a live route.
#[derive(Clone)]
pub struct Split {
    /// The stable version.
    pub stable: Arc<Version>,
    /// The candidate, during a canary.
    pub candidate: Option<Candidate>,
    /// The shadow, during a parallel run.
    pub shadow: Option<Shadow>,
}

impl Split {
    /// Only `stable`.
    pub fn single(stable: Arc<Version>) -> Self {
        Self {
            stable,
            candidate: None,
            shadow: None,
        }
    }

    /// Every version serving, with its role and share: stable first.
    pub fn versions(&self) -> impl Iterator<Item = (Role, &Arc<Version>, Weight)> {
        let candidate_weight = self.candidate.as_ref().map_or(Weight::ZERO, |c| c.weight);
        std::iter::once((
            Role::Stable,
            &self.stable,
            Weight(BUCKETS - candidate_weight.0),
        ))
        .chain(
            self.candidate
                .iter()
                .map(|c| (Role::Candidate, &c.version, c.weight)),
        )
        .chain(
            self.shadow
                .iter()
                .map(|s| (Role::Shadow, &s.version, s.percent)),
        )
    }

    /// The version a request pins with `pin` (a digest, or a prefix of at least 8 hex digits,
    /// that names exactly one version serving the route), if any.
    pub fn pinned(&self, pin: &[u8]) -> Option<&Arc<Version>> {
        let pin = std::str::from_utf8(pin).ok()?.trim();
        let hex = pin.strip_prefix("sha256:").unwrap_or(pin);
        if hex.len() < 8 {
            return None;
        }
        let mut found = None;
        for (_, version, _) in self.versions() {
            if version.digest.hex().starts_with(hex) {
                if found.is_some_and(|f: &Arc<Version>| !Arc::ptr_eq(f, version)) {
                    return None;
                }
                found = Some(version);
            }
        }
        found
    }

    /// Whether a request is copied to the shadow (a per-request random draw).
    pub fn shadowed(&self) -> Option<&Arc<Version>> {
        let shadow = self.shadow.as_ref()?;
        (shadow.percent == Weight::ALL || random_bucket() < shadow.percent.0)
            .then_some(&shadow.version)
    }

    /// The version a request on route `route` goes to.
    pub fn pick(&self, route: &str, headers: &HeaderMap, ip: Option<IpAddr>) -> &Arc<Version> {
        let Some(candidate) = &self.candidate else {
            return &self.stable;
        };
        if candidate.weight == Weight::ZERO {
            return &self.stable;
        }
        let bucket = match candidate.sticky.as_ref().and_then(|s| s.key(headers, ip)) {
            Some(StickyKey::Bytes(key)) => bucket(route, key),
            Some(StickyKey::Ip(IpAddr::V4(ip))) => bucket(route, &ip.octets()),
            Some(StickyKey::Ip(IpAddr::V6(ip))) => bucket(route, &ip.octets()),
            None => random_bucket(),
        };
        if bucket < candidate.weight.0 {
            &candidate.version
        } else {
            &self.stable
        }
    }
}

/// What a route serves.
#[derive(Clone)]
pub enum Serving {
    /// Versions serve it.
    Live(Split),
    /// None can: its stored version could not be loaded (a restart found its module missing
    /// or unloadable). It keeps its prefix and answers 503 until it is deployed again or
    /// deleted.
    Unavailable(Arc<str>),
}

impl Serving {
    /// The split, when live.
    pub fn split(&self) -> Option<&Split> {
        match self {
            Self::Live(split) => Some(split),
            Self::Unavailable(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_across_releases() {
        // Part of the API: these values must never change.
        assert_eq!(bucket("shop", b"user-1"), bucket("shop", b"user-1"));
        let spread: std::collections::HashSet<u16> = (0..1000)
            .map(|i| bucket("shop", format!("user-{i}").as_bytes()))
            .collect();
        assert!(spread.len() > 900, "keys spread over the buckets");
        assert_ne!(
            bucket("a", b"k"),
            bucket("b", b"k"),
            "the route is part of the key"
        );
        assert_eq!(bucket("shop", b"user-1"), PINNED_BUCKET);
    }

    /// `bucket("shop", b"user-1")`, recorded when the hash was chosen.
    const PINNED_BUCKET: u16 = 1402;

    #[test]
    fn weights_are_percent_in_hundredths() {
        assert_eq!(Weight::from_percent(12.34).unwrap().buckets(), 1234);
        assert_eq!(Weight::from_percent(100.0).unwrap(), Weight::ALL);
        assert!(Weight::from_percent(100.5).is_err());
        assert!(Weight::from_percent(-1.0).is_err());
    }

    #[test]
    fn sticky_keys_parse_and_cookies_are_found() {
        for text in ["header:x-user", "cookie:session", "ip"] {
            assert_eq!(Sticky::parse(text).unwrap().text(), text);
        }
        assert!(Sticky::parse("query:x").is_err());
        assert!(Sticky::parse("cookie:").is_err());
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            "a=1; session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&headers, "session"), Some(&b"abc"[..]));
        assert_eq!(cookie(&headers, "sess"), None);
    }
}
