//! The route table: which version serves which path prefix.
//!
//! Reads are lock-free: a request loads the current table snapshot (`ArcSwap`), finds the
//! longest matching prefix and takes its in-flight token before letting go of the snapshot.
//! Writes (activate, remove) are serialized by an async mutex, build a new table, swap it in
//! whole, and then wait until no reader still holds the old snapshot. After that wait, the old
//! version's in-flight count is exact and no new request can reach it. A write never holds the
//! table while compiling; requests never wait on a deploy.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::version::{InFlight, Version};

/// A route's name: 1-64 of `a-z 0-9 - _ .`, not `.` or `..`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteName(Arc<str>);

impl RouteName {
    /// Validates `name`, saying what is wrong in a sentence.
    pub fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() || name.len() > 64 {
            return Err(format!(
                "a route name must be 1 to 64 characters long; `{}` has {}",
                name.escape_debug(),
                name.chars().count()
            ));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-' | '_' | '.'))
        {
            return Err(format!(
                "a route name may use only a-z, 0-9, `-`, `_` and `.`; `{}` contains `{}`",
                name.escape_debug(),
                bad.escape_debug()
            ));
        }
        if name == "." || name == ".." {
            return Err(format!("`{name}` is not a usable route name"));
        }
        Ok(Self(name.into()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a shared string.
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

/// A path prefix: `/` or `/seg/seg` with no trailing slash, no empty, `.` or `..` segments.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Prefix(Arc<str>);

impl Prefix {
    /// Validates `prefix`, saying what is wrong in a sentence. A trailing `/` is dropped.
    pub fn parse(prefix: &str) -> Result<Self, String> {
        if !prefix.starts_with('/') {
            return Err(format!(
                "a route prefix must start with `/`; got `{}`",
                prefix.escape_debug()
            ));
        }
        if prefix.len() > 256 {
            return Err("a route prefix may be at most 256 characters long".into());
        }
        let trimmed = if prefix.len() > 1 {
            prefix.trim_end_matches('/')
        } else {
            prefix
        };
        if trimmed.len() > 1 {
            for segment in trimmed[1..].split('/') {
                if segment.is_empty() || segment == "." || segment == ".." {
                    return Err(format!(
                        "a route prefix may not contain empty, `.` or `..` segments; got `{}`",
                        prefix.escape_debug()
                    ));
                }
                if let Some(bad) = segment
                    .chars()
                    .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~')))
                {
                    return Err(format!(
                        "a route prefix may use only letters, digits, `-`, `_`, `.`, `~` and `/`; `{}` contains `{}`",
                        prefix.escape_debug(),
                        bad.escape_debug()
                    ));
                }
            }
        }
        Ok(Self(if trimmed.is_empty() { "/" } else { trimmed }.into()))
    }

    /// The default prefix of a route: `/{name}`.
    pub fn for_route(name: &RouteName) -> Self {
        Self(format!("/{}", name.as_str()).into())
    }

    /// The prefix.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Per-route counters that outlive any one version.
#[derive(Default, Debug)]
pub struct RouteCounters {
    requests: AtomicU64,
    in_flight: Arc<AtomicUsize>,
}

impl RouteCounters {
    /// Requests routed to this route so far, across versions.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests on this route now, across versions.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

/// Why a request was not routed.
#[derive(Debug)]
pub enum Refused {
    /// No route's prefix matches.
    NoRoute,
    /// The route runs as many requests as its `max_concurrency` allows.
    Full {
        /// The route.
        route: Arc<str>,
        /// Its limit.
        limit: u32,
    },
}

/// One route as it stands in a table snapshot. Immutable: a change makes a new `Route`.
#[derive(Clone)]
pub struct Route {
    /// The route's name.
    pub name: RouteName,
    /// The path prefix it serves.
    pub prefix: Prefix,
    /// The version new requests go to.
    pub active: Arc<Version>,
    /// Counters shared by every version of this route.
    pub counters: Arc<RouteCounters>,
}

/// One immutable snapshot of all routes.
#[derive(Default, Clone)]
pub struct Table {
    by_prefix: HashMap<Arc<str>, Route>,
    by_name: BTreeMap<RouteName, Arc<str>>,
}

impl Table {
    /// The route whose prefix is the longest one matching `path` on a segment boundary.
    pub fn lookup(&self, path: &str) -> Option<&Route> {
        prefix_candidates(path).find_map(|candidate| self.by_prefix.get(candidate))
    }

    /// The route named `name`.
    pub fn get(&self, name: &RouteName) -> Option<&Route> {
        self.by_name.get(name).and_then(|p| self.by_prefix.get(p))
    }

    /// All routes, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.by_name.values().filter_map(|p| self.by_prefix.get(p))
    }

    fn with(&self, route: Route) -> Self {
        let mut next = self.without(&route.name);
        next.by_name
            .insert(route.name.clone(), route.prefix.0.clone());
        next.by_prefix.insert(route.prefix.0.clone(), route);
        next
    }

    fn without(&self, name: &RouteName) -> Self {
        let mut next = self.clone();
        if let Some(prefix) = next.by_name.remove(name) {
            next.by_prefix.remove(&prefix);
        }
        next
    }
}

/// The prefixes that match `path` on a segment boundary, longest first: `/a/b` yields `/a/b`,
/// `/a`, `/`. No allocation; at most one hash lookup per segment.
fn prefix_candidates(path: &str) -> impl Iterator<Item = &str> {
    let mut next = path.starts_with('/').then_some(path);
    std::iter::from_fn(move || {
        let current = next?;
        next = match current.rfind('/') {
            Some(0) if current.len() > 1 => Some("/"),
            Some(0) | None => None,
            Some(i) => Some(&current[..i]),
        };
        Some(current)
    })
}

/// A request's grip on its route: the version and its in-flight token.
pub struct Routed {
    /// The route's name, for logs.
    pub route: Arc<str>,
    /// The prefix it matched (the guest sees it as `HANDOFF_ROUTE_PREFIX`).
    pub prefix: Arc<str>,
    /// The token; it also holds the version.
    pub in_flight: InFlight,
}

/// Why an activation was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ActivateError {
    /// Another route already serves this prefix.
    PrefixTaken {
        /// The route that has it.
        owner: String,
    },
    /// Making the change durable failed; nothing changed.
    Commit(String),
}

/// Makes a route change durable before it is published. It runs under the writer lock, on the
/// blocking pool, with the route as it will stand (`None` for a removal) and as it stood.
pub type Commit = Box<dyn FnOnce(Option<&Route>, Option<&Route>) -> Result<(), String> + Send>;

/// The route table and its writer lock.
#[derive(Default)]
pub struct Routes {
    table: ArcSwap<Table>,
    writer: tokio::sync::Mutex<()>,
}

async fn run_commit(
    commit: Option<Commit>,
    next: Option<Route>,
    previous: Option<Route>,
) -> Result<(), ActivateError> {
    let Some(commit) = commit else {
        return Ok(());
    };
    tokio::task::spawn_blocking(move || commit(next.as_ref(), previous.as_ref()))
        .await
        .map_err(|e| ActivateError::Commit(e.to_string()))?
        .map_err(ActivateError::Commit)
}

/// Longest a writer waits for readers of an old snapshot; readers hold it for nanoseconds, so
/// reaching this means something is badly wrong, and it is logged.
const READER_WAIT_LIMIT: Duration = Duration::from_secs(5);

impl Routes {
    /// Routes the request path to a version and takes its in-flight token, in one step.
    pub fn resolve(&self, path: &str) -> Result<Routed, Refused> {
        let table = self.table.load();
        let route = table.lookup(path).ok_or(Refused::NoRoute)?;
        route.counters.requests.fetch_add(1, Ordering::Relaxed);
        let limit = route.active.limits.max_concurrency;
        let before = route.counters.in_flight.fetch_add(1, Ordering::SeqCst);
        if limit > 0 && before >= limit as usize {
            route.counters.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(Refused::Full {
                route: route.name.shared(),
                limit,
            });
        }
        Ok(Routed {
            route: route.name.shared(),
            prefix: route.prefix.0.clone(),
            in_flight: route.active.enter(route.counters.in_flight.clone()),
        })
    }

    /// The current snapshot (for status pages; never hold it across a long wait).
    pub fn snapshot(&self) -> Arc<Table> {
        self.table.load_full()
    }

    /// Makes `version` the active version of `name` at `prefix` (the route's current prefix, or
    /// `/{name}` for a new route, when `None`). Returns the route as it now stands and the
    /// version it replaced. When this returns, every new request gets `version`.
    pub async fn activate(
        &self,
        name: &RouteName,
        prefix: Option<Prefix>,
        version: Arc<Version>,
        commit: Option<Commit>,
    ) -> Result<(Route, Option<Arc<Version>>), ActivateError> {
        let _writer = self.writer.lock().await;
        let current = self.table.load_full();
        let existing = current.get(name).cloned();
        let prefix = prefix
            .or_else(|| existing.as_ref().map(|r| r.prefix.clone()))
            .unwrap_or_else(|| Prefix::for_route(name));
        if let Some(owner) = current.by_prefix.get(prefix.as_str())
            && owner.name != *name
        {
            return Err(ActivateError::PrefixTaken {
                owner: owner.name.as_str().to_owned(),
            });
        }
        let route = Route {
            name: name.clone(),
            prefix,
            active: version,
            counters: existing
                .as_ref()
                .map(|r| r.counters.clone())
                .unwrap_or_default(),
        };
        let next = Arc::new(current.with(route.clone()));
        drop(current);
        run_commit(commit, Some(route.clone()), existing.clone()).await?;
        self.publish(next).await;
        let previous = existing
            .map(|r| r.active)
            .filter(|old| !Arc::ptr_eq(old, &route.active));
        Ok((route, previous))
    }

    /// Removes route `name`. Returns the removed route (`None` if there was none); its
    /// version is no longer reachable.
    pub async fn remove(
        &self,
        name: &RouteName,
        commit: Option<Commit>,
    ) -> Result<Option<Route>, ActivateError> {
        let _writer = self.writer.lock().await;
        let current = self.table.load_full();
        let Some(existing) = current.get(name).cloned() else {
            return Ok(None);
        };
        let next = Arc::new(current.without(name));
        drop(current);
        run_commit(commit, None, Some(existing.clone())).await?;
        self.publish(next).await;
        Ok(Some(existing))
    }

    /// Swaps `next` in and waits until no reader holds the previous snapshot, so every token on
    /// a version that left the table has been taken already.
    async fn publish(&self, next: Arc<Table>) {
        let old = self.table.swap(next);
        // (The caller must not hold a snapshot either: it would wait for itself.)
        // `ArcSwap` turns the guards readers still hold into full references during `swap`,
        // so the strong count is exact from here on. Readers never hold a snapshot across an
        // await point; this loop ends within microseconds.
        let started = Instant::now();
        while Arc::strong_count(&old) > 1 {
            if started.elapsed() > READER_WAIT_LIMIT {
                tracing::error!(
                    holders = Arc::strong_count(&old) - 1,
                    "a route table snapshot is still held after a swap; drain counts may be low"
                );
                break;
            }
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_names_are_validated() {
        for good in ["a", "hello", "api-v1", "a_b.c", &"x".repeat(64)] {
            assert!(RouteName::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "Hello",
            "a/b",
            "a b",
            "%2e%2e",
            "a\0b",
            "caf\u{e9}",
            &"x".repeat(65),
        ] {
            assert!(RouteName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn longest_prefix_first_on_segment_boundaries() {
        fn all(path: &str) -> Vec<&str> {
            prefix_candidates(path).collect()
        }
        assert_eq!(all("/api/v1/x"), ["/api/v1/x", "/api/v1", "/api", "/"]);
        assert_eq!(all("/api/"), ["/api/", "/api", "/"]);
        assert_eq!(all("/apix"), ["/apix", "/"]);
        assert_eq!(all("/"), ["/"]);
        assert!(all("*").is_empty());
    }

    #[test]
    fn prefixes_are_normalized_and_validated() {
        assert_eq!(Prefix::parse("/").unwrap().as_str(), "/");
        assert_eq!(Prefix::parse("/api/v1/").unwrap().as_str(), "/api/v1");
        assert_eq!(Prefix::parse("/api").unwrap().as_str(), "/api");
        for bad in ["api", "/a//b", "/a/../b", "/a b", "/a?x"] {
            assert!(Prefix::parse(bad).is_err(), "{bad}");
        }
    }
}
