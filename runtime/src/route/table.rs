//! The route table: which route serves which path prefix, and what each serves.
//!
//! Reads are lock-free: a request loads the current snapshot (`ArcSwap`), finds the longest
//! matching prefix, picks a version and takes its in-flight token before letting go of the
//! snapshot ([`RouteTable::resolve`]). Writes go through one [`Writer`] at a time: it builds a
//! new table, swaps it in whole, and waits until no reader holds the old snapshot (see the
//! invariant in `crate::route`). A writer never compiles; requests never wait on a change.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::HeaderMap;
use http::header::HeaderName;

use super::inflight::InFlight;
use super::serving::{Serving, Split};
use super::state::RouteState;
use crate::names::{Prefix, RouteName};
use crate::state::RouteRecord;
use crate::version::Version;

/// One route as it stands in a table snapshot. Immutable: a change makes a new `Route`.
#[derive(Clone)]
pub struct Route {
    /// The route's name.
    pub name: RouteName,
    /// The path prefix it serves.
    pub prefix: Prefix,
    /// What serves it.
    pub serving: Serving,
    /// State shared by every version of the route.
    pub state: Arc<RouteState>,
    /// The stored record this entry was built from (its rollout, its shadow's settings, its
    /// revision), for status pages and controllers; never read on the hot path.
    pub record: Arc<RouteRecord>,
}

impl Route {
    /// The versions serving it, when it is live.
    pub fn split(&self) -> Option<&Split> {
        self.serving.split()
    }

    /// Its stable version, when it is live.
    pub fn stable(&self) -> Option<&Arc<Version>> {
        self.split().map(|s| &s.stable)
    }
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

    /// This table with `route` in it, replacing the route of the same name; refused, naming
    /// the holder, when another route holds its prefix (never overwritten: the other route's
    /// name would then resolve to this one).
    fn with(&self, route: Route) -> Result<Self, RouteName> {
        if let Some(holder) = self.by_prefix.get(route.prefix.as_str())
            && holder.name != route.name
        {
            return Err(holder.name.clone());
        }
        let mut next = self.without(&route.name);
        next.by_name
            .insert(route.name.clone(), route.prefix.shared());
        next.by_prefix.insert(route.prefix.shared(), route);
        Ok(next)
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
    /// The route exists but nothing can serve it.
    Unavailable {
        /// The route.
        route: Arc<str>,
    },
}

/// A request's grip on its route: the version and its in-flight token.
pub struct Routed {
    /// The route's name, for logs.
    pub route: Arc<str>,
    /// The prefix it matched (the guest sees it as `HANDOFF_ROUTE_PREFIX`).
    pub prefix: Arc<str>,
    /// The token; it also holds the version.
    pub in_flight: InFlight,
    /// When the request is copied to the route's shadow: the copy's token and the route.
    pub shadow: Option<(InFlight, Arc<RouteState>, Arc<RouteRecord>)>,
    /// Which arm of the route's split the version is.
    pub arm: Arm,
}

/// Which arm of its route's split a request went to (`handoff.arm` in its span).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    /// The route's stable version.
    Stable,
    /// The candidate of a split or rollout.
    Candidate,
    /// The version the request's pin header named.
    Pinned,
}

impl Arm {
    /// The name spans give it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stable => "stable",
            Self::Candidate => "candidate",
            Self::Pinned => "pinned",
        }
    }
}

/// The route table.
#[derive(Default)]
pub struct RouteTable {
    table: ArcSwap<Table>,
    writer: tokio::sync::Mutex<()>,
}

/// Longest a writer waits for readers of an old snapshot; readers hold it for nanoseconds, so
/// reaching this means something is badly wrong, and it is logged.
const READER_WAIT_LIMIT: Duration = Duration::from_secs(5);

impl RouteTable {
    /// Routes a request for `path` to a version and takes its in-flight token, in one step.
    /// `headers` and `ip` decide a sticky split; the value of the pin header (`pin`) a pinned
    /// version.
    pub fn resolve(
        &self,
        path: &str,
        headers: &HeaderMap,
        ip: Option<IpAddr>,
        pin: Option<&HeaderName>,
    ) -> Result<Routed, Refused> {
        let table = self.table.load();
        let route = table.lookup(path).ok_or(Refused::NoRoute)?;
        let Serving::Live(split) = &route.serving else {
            return Err(Refused::Unavailable {
                route: route.name.shared(),
            });
        };
        route.state.count_request();
        let limit = split.stable.limits.max_concurrency;
        if !route.state.try_enter(limit) {
            return Err(Refused::Full {
                route: route.name.shared(),
                limit,
            });
        }
        let pinned = pin
            .and_then(|name| headers.get(name))
            .and_then(|value| split.pinned(value.as_bytes()));
        let version = pinned.unwrap_or_else(|| split.pick(route.name.as_str(), headers, ip));
        let shadow = match pinned {
            Some(_) => None,
            None => split.shadowed().map(|shadow| {
                (
                    InFlight::copy(shadow),
                    route.state.clone(),
                    route.record.clone(),
                )
            }),
        };
        let arm = if pinned.is_some() {
            Arm::Pinned
        } else if Arc::ptr_eq(version, &split.stable) {
            Arm::Stable
        } else {
            Arm::Candidate
        };
        Ok(Routed {
            arm,
            route: route.name.shared(),
            prefix: route.prefix.shared(),
            in_flight: InFlight::enter(version, &route.state),
            shadow,
        })
    }

    /// The current snapshot (for status pages; never hold it across a long wait).
    pub fn snapshot(&self) -> Arc<Table> {
        self.table.load_full()
    }

    /// The table's writer, once any other writer is done.
    pub async fn writer(&self) -> Writer<'_> {
        Writer {
            table: self,
            _guard: self.writer.lock().await,
        }
    }
}

/// Why [`Writer::put`] refused a route: another route holds its prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixHeld {
    /// The route that holds it.
    pub holder: RouteName,
}

/// The one writer of the route table.
pub struct Writer<'a> {
    table: &'a RouteTable,
    _guard: tokio::sync::MutexGuard<'a, ()>,
}

impl Writer<'_> {
    /// The table as it stands.
    pub fn current(&self) -> Arc<Table> {
        self.table.table.load_full()
    }

    /// The route other than `name` that serves `prefix`, if any.
    pub fn prefix_owner(&self, name: &RouteName, prefix: &Prefix) -> Option<RouteName> {
        let current = self.table.table.load();
        current
            .by_prefix
            .get(prefix.as_str())
            .filter(|owner| owner.name != *name)
            .map(|owner| owner.name.clone())
    }

    /// Puts `route` in the table (replacing the route of the same name) and returns the route
    /// it replaced. When this returns, every new request sees `route`. Refused, naming the
    /// holder and changing nothing, when another route holds its prefix.
    pub async fn put(&mut self, route: Route) -> Result<Option<Route>, PrefixHeld> {
        let current = self.table.table.load_full();
        let previous = current.get(&route.name).cloned();
        let next = current
            .with(route)
            .map_err(|holder| PrefixHeld { holder })?;
        drop(current);
        self.publish(Arc::new(next)).await;
        Ok(previous)
    }

    /// Removes route `name`; returns it (`None` if there was none). When this returns, no new
    /// request reaches it.
    pub async fn remove(&mut self, name: &RouteName) -> Option<Route> {
        let current = self.table.table.load_full();
        let previous = current.get(name).cloned()?;
        let next = Arc::new(current.without(name));
        drop(current);
        self.publish(next).await;
        Some(previous)
    }

    /// Swaps `next` in and waits until no reader holds the previous snapshot, so every token on
    /// a version that left the table has been taken already.
    async fn publish(&mut self, next: Arc<Table>) {
        let old = self.table.table.swap(next);
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

    fn route(name: &str, prefix: &str) -> Route {
        Route {
            name: RouteName::parse(name).unwrap(),
            prefix: Prefix::parse(prefix).unwrap(),
            serving: Serving::Unavailable("test".into()),
            state: Arc::default(),
            record: Arc::new(RouteRecord {
                prefix: prefix.into(),
                active: "sha256:00".into(),
                settings: Default::default(),
                candidate: None,
                shadow: None,
                rollout: None,
                history: Vec::new(),
                revision: 1,
                trace: None,
            }),
        }
    }

    #[tokio::test]
    async fn a_route_never_overwrites_another_at_its_prefix() {
        let table = RouteTable::default();
        let mut writer = table.writer().await;
        writer.put(route("x", "/p")).await.unwrap();
        let Err(held) = writer.put(route("y", "/p")).await else {
            panic!("y took x's prefix");
        };
        assert_eq!(held.holder.as_str(), "x");
        let snapshot = writer.current();
        assert!(snapshot.get(&RouteName::parse("y").unwrap()).is_none());
        assert_eq!(snapshot.lookup("/p").unwrap().name.as_str(), "x");
        // The same route may move, and its old prefix is free.
        writer.put(route("x", "/q")).await.unwrap();
        writer.put(route("y", "/p")).await.unwrap();
        assert_eq!(writer.current().lookup("/p").unwrap().name.as_str(), "y");
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
}
