//! Reading a request: its query string, the parameters the [`Router`](crate::Router) matched,
//! and its path relative to the route it was deployed on. Pure parsing; no I/O.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use crate::Error;
use crate::config::{self, ROUTE_PREFIX_KEY};

/// Request accessors the [`http`] types lack. Implemented for every `http::Request<B>`.
pub trait RequestExt {
    /// The parsed query string (empty when there is none).
    ///
    /// ```
    /// use handoff_sdk::{Body, RequestExt};
    ///
    /// let req = http::Request::get("/hello?name=Ada%20L&x=1").body(Body::empty()).unwrap();
    /// assert_eq!(req.query().get("name"), Some("Ada L"));
    /// ```
    fn query(&self) -> Query;

    /// The path parameters the [`Router`](crate::Router) matched (empty outside a router).
    fn params(&self) -> &Params;

    /// One path parameter the [`Router`](crate::Router) matched, e.g. `id` for `/items/:id`.
    fn param(&self, name: &str) -> Option<&str> {
        self.params().get(name)
    }

    /// The path below the route's prefix, always starting with `/`: `/items/7` for a request
    /// to `/shop/items/7` on route `/shop`, and `/` for `/shop` itself.
    ///
    /// The host passes handlers the full path. The prefix is taken from the deploy-time config
    /// [`HANDOFF_ROUTE_PREFIX`](config::ROUTE_PREFIX_KEY) when it is set, and is otherwise the
    /// path's first segment (a route's default prefix is `/{name}`). Deploy a route at a longer
    /// prefix, or at `/`, with `config=HANDOFF_ROUTE_PREFIX=/that/prefix`.
    ///
    /// ```
    /// use handoff_sdk::{Body, RequestExt};
    ///
    /// let req = http::Request::get("/shop/items/7?x=1").body(Body::empty()).unwrap();
    /// assert_eq!(req.route_path(), "/items/7");
    /// ```
    fn route_path(&self) -> &str;
}

impl<B> RequestExt for http::Request<B> {
    fn query(&self) -> Query {
        Query::parse(self.uri().query().unwrap_or(""))
    }

    fn params(&self) -> &Params {
        static NONE: Params = Params { pairs: Vec::new() };
        self.extensions().get::<Params>().unwrap_or(&NONE)
    }

    fn route_path(&self) -> &str {
        let path = self.uri().path();
        strip_route_prefix(path, config::get(ROUTE_PREFIX_KEY).as_deref()).unwrap_or(path)
    }
}

/// `path` below `prefix`, or below its own first segment when `prefix` is `None`; `None` when
/// `path` is not under `prefix` (on a segment boundary).
pub(crate) fn strip_route_prefix<'a>(path: &'a str, prefix: Option<&str>) -> Option<&'a str> {
    let rest = match prefix.map(|p| p.trim_end_matches('/')) {
        Some("") => path,
        Some(prefix) => match path.strip_prefix(prefix) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
            _ => return None,
        },
        None => match path.get(1..).and_then(|p| p.find('/')) {
            Some(slash) => &path[slash + 1..],
            None => "",
        },
    };
    Some(if rest.is_empty() { "/" } else { rest })
}

/// A parsed query string (`application/x-www-form-urlencoded`): `+` is a space, `%XX` escapes
/// are decoded, a key may repeat, a key without `=` has the value `""`.
///
/// The typed getters answer 400 Bad Request, naming the parameter, when a value does not
/// parse, so a handler can use `?` on them:
///
/// ```
/// use handoff_sdk::Query;
///
/// let query = Query::parse("chunks=5&tag=a&tag=b&verbose");
/// assert_eq!(query.get_or("chunks", 3u32).unwrap(), 5);
/// assert_eq!(query.get_or("delay_ms", 200u64).unwrap(), 200);
/// assert_eq!(query.get_all("tag").collect::<Vec<_>>(), ["a", "b"]);
/// assert!(query.contains("verbose"));
///
/// let error = Query::parse("chunks=many").get_or("chunks", 3u32).unwrap_err();
/// assert_eq!(error.status(), handoff_sdk::StatusCode::BAD_REQUEST);
/// assert_eq!(
///     error.to_string(),
///     "query parameter `chunks` has an invalid value `many`: invalid digit found in string"
/// );
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Parses a raw query string, with or without its leading `?`.
    pub fn parse(raw: &str) -> Self {
        let raw = raw.strip_prefix('?').unwrap_or(raw);
        let pairs = raw
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (
                    decode(key, true).into_owned(),
                    decode(value, true).into_owned(),
                )
            })
            .collect();
        Self { pairs }
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.get_all(key).next()
    }

    /// Every value of `key`, in order.
    pub fn get_all<'a>(&'a self, key: &str) -> impl Iterator<Item = &'a str> {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether `key` is present, with or without a value.
    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The first value of `key` parsed as `T`; `Ok(None)` when absent, a 400 when it does not
    /// parse.
    pub fn get_as<T>(&self, key: &str) -> Result<Option<T>, Error>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        self.get(key)
            .map(|value| parse_value("query parameter", key, value))
            .transpose()
    }

    /// The first value of `key` parsed as `T`, or `default` when absent; a 400 when it does
    /// not parse.
    pub fn get_or<T>(&self, key: &str, default: T) -> Result<T, Error>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        Ok(self.get_as(key)?.unwrap_or(default))
    }

    /// The first value of `key` parsed as `T`; a 400 when it is absent or does not parse.
    pub fn require<T>(&self, key: &str) -> Result<T, Error>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        self.get_as(key)?
            .ok_or_else(|| Error::bad_request(format!("query parameter `{key}` is required")))
    }

    /// Every `(key, value)` pair, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

/// The path parameters a [`Router`](crate::Router) pattern matched, percent-decoded; read
/// them with [`RequestExt::param`] or [`RequestExt::params`].
///
/// ```
/// use handoff_sdk::{Body, RequestExt, Response, Router};
///
/// let router = Router::new().get("/items/:id", |req| {
///     let id: u32 = req.params().get_as("id")?;
///     Ok(Response::new(Body::from(format!("item {id}"))))
/// });
/// let req = http::Request::get("/shop/items/7").body(Body::empty()).unwrap();
/// assert_eq!(router.handle(req).unwrap().into_body().text().unwrap(), "item 7");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    pub(crate) fn new(pairs: Vec<(String, String)>) -> Self {
        Self { pairs }
    }

    /// The value of parameter `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of parameter `name` parsed as `T`: a 400 when it does not parse, a 500 when
    /// the matched pattern has no such parameter (a bug in the handler).
    pub fn get_as<T>(&self, name: &str) -> Result<T, Error>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        let value = self
            .get(name)
            .ok_or_else(|| Error::msg(format!("the matched pattern has no parameter `{name}`")))?;
        parse_value("path parameter", name, value)
    }

    /// Every `(name, value)` pair, in pattern order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

fn parse_value<T>(what: &str, name: &str, value: &str) -> Result<T, Error>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    value.parse().map_err(|e| {
        Error::bad_request(format!(
            "{what} `{name}` has an invalid value `{}`: {e}",
            value.escape_debug()
        ))
    })
}

/// Percent-decodes `raw` (and `+` into a space when `plus_is_space`, as in query strings).
/// Malformed escapes stay as they are; bytes that are not UTF-8 become U+FFFD.
pub(crate) fn decode(raw: &str, plus_is_space: bool) -> Cow<'_, str> {
    let escaped = raw.contains('%') || (plus_is_space && raw.contains('+'));
    if !escaped {
        return Cow::Borrowed(raw);
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            byte => out.push(byte),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Body;
    use http::StatusCode;

    #[test]
    fn route_prefix_defaults_to_the_first_segment() {
        assert_eq!(strip_route_prefix("/hello", None), Some("/"));
        assert_eq!(strip_route_prefix("/hello/", None), Some("/"));
        assert_eq!(strip_route_prefix("/hello/a/b", None), Some("/a/b"));
        assert_eq!(strip_route_prefix("/", None), Some("/"));
        assert_eq!(strip_route_prefix("", None), Some("/"));
    }

    #[test]
    fn a_configured_route_prefix_is_stripped_on_a_segment_boundary() {
        assert_eq!(
            strip_route_prefix("/api/v1/items", Some("/api/v1")),
            Some("/items")
        );
        assert_eq!(strip_route_prefix("/api/v1", Some("/api/v1/")), Some("/"));
        assert_eq!(strip_route_prefix("/api/v10", Some("/api/v1")), None);
        assert_eq!(strip_route_prefix("/items", Some("/")), Some("/items"));
        assert_eq!(strip_route_prefix("", Some("/")), Some("/"));
        assert_eq!(strip_route_prefix("/elsewhere", Some("/api")), None);
    }

    #[test]
    fn route_path_ignores_the_query() {
        let req = http::Request::get("/r/x?y=/z").body(Body::empty()).unwrap();
        assert_eq!(req.route_path(), "/x");
    }

    #[test]
    fn queries_decode_escapes_and_plus() {
        let query = Query::parse("?a=1+2&b=%41%2f%zz&c&=v&&d=%E2%9C%93&e=%");
        assert_eq!(query.get("a"), Some("1 2"));
        assert_eq!(query.get("b"), Some("A/%zz"));
        assert_eq!(query.get("c"), Some(""));
        assert_eq!(query.get(""), Some("v"));
        assert_eq!(query.get("d"), Some("✓"));
        assert_eq!(query.get("e"), Some("%"));
        assert_eq!(query.get("missing"), None);
        assert_eq!(query.iter().count(), 6);
        assert!(Query::parse("").is_empty());
    }

    #[test]
    fn typed_query_values_answer_400_naming_the_parameter() {
        let query = Query::parse("n=12&bad=x");
        assert_eq!(query.get_as::<u8>("n").unwrap(), Some(12));
        assert_eq!(query.get_as::<u8>("none").unwrap(), None);
        assert_eq!(query.require::<u8>("n").unwrap(), 12);
        let missing = query.require::<u8>("none").unwrap_err();
        assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
        assert_eq!(missing.to_string(), "query parameter `none` is required");
        let bad = query.get_or("bad", 1u8).unwrap_err();
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        assert!(
            bad.to_string()
                .starts_with("query parameter `bad` has an invalid value `x`")
        );
    }

    #[test]
    fn params_outside_a_router_are_empty() {
        let req = http::Request::get("/r").body(Body::empty()).unwrap();
        assert_eq!(req.param("id"), None);
        assert_eq!(req.params().iter().count(), 0);
        let error = req.params().get_as::<u32>("id").unwrap_err();
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
