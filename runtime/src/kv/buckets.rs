//! Which buckets exist and who may open them.
//!
//! A route's own bucket (`open("default")`) belongs to the route, not to a version: every
//! version of the route (stable, candidate, shadow, draining) opens the same one. Other buckets
//! are shared by name and opened only by routes granted them at deploy time (`kv=orders`).
//!
//! [`Kv`] is process-wide: the backend, and one [`Bucket`] handle per bucket in use (its
//! counters for `/metrics`), kept in a map by name so every version of every route that opens a
//! bucket counts into the same handle. A version resolves its [`Grants`] once, when it is
//! built; a request only clones an `Arc` and never touches the map.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use super::backend::{Backend, KvError};
use crate::names::RouteName;

/// The identifier a guest opens its route's own bucket with.
pub const DEFAULT_BUCKET: &str = "default";

/// A bucket's name: a route's own, or a shared one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BucketName {
    /// The route's own bucket.
    Route(RouteName),
    /// A bucket shared by the routes granted it.
    Shared(Arc<str>),
}

impl BucketName {
    /// A shared bucket's name, checked: 1-64 of `a-z 0-9 - _ .`, not `default`.
    pub fn shared(name: &str) -> Result<Self, String> {
        if name == DEFAULT_BUCKET {
            return Err(
                "`default` is every route's own bucket; grant other names with `kv=NAME`".into(),
            );
        }
        RouteName::parse(name)
            .map(|n| Self::Shared(n.shared()))
            .map_err(|e| e.replace("route name", "bucket name"))
    }

    /// `route` for a route's own bucket, `shared` otherwise.
    pub fn scope(&self) -> &'static str {
        match self {
            Self::Route(_) => "route",
            Self::Shared(_) => "shared",
        }
    }

    /// The route's or the shared bucket's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Route(route) => route.as_str(),
            Self::Shared(name) => name,
        }
    }

    /// The identifier a guest opens it with: `default` for a route's own bucket.
    pub fn opened_as(&self) -> &str {
        match self {
            Self::Route(_) => DEFAULT_BUCKET,
            Self::Shared(name) => name,
        }
    }

    /// Its id in the backend: `route/NAME` or `shared/NAME` (never a NUL).
    pub fn id(&self) -> String {
        format!("{}/{}", self.scope(), self.name())
    }
}

impl std::fmt::Display for BucketName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Route(route) => write!(f, "the own bucket of route `{}`", route.as_str()),
            Self::Shared(name) => write!(f, "bucket `{name}`"),
        }
    }
}

/// Counters of one bucket, across every route and version that uses it: relaxed atomics.
#[derive(Debug, Default)]
pub struct BucketStats {
    operations: AtomicU64,
    errors: AtomicU64,
    read_bytes: AtomicU64,
    written_bytes: AtomicU64,
}

impl BucketStats {
    /// Counts an operation that read `read` and wrote `written` bytes, failed or not.
    pub fn count(&self, ok: bool, read: usize, written: usize) {
        self.operations.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if read > 0 {
            self.read_bytes.fetch_add(read as u64, Ordering::Relaxed);
        }
        if written > 0 {
            self.written_bytes
                .fetch_add(written as u64, Ordering::Relaxed);
        }
    }

    /// Operations so far.
    pub fn operations(&self) -> u64 {
        self.operations.load(Ordering::Relaxed)
    }

    /// Operations that failed (quota, size, a backend failure; not a missing key or a lost
    /// compare-and-swap).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Value bytes read.
    pub fn read_bytes(&self) -> u64 {
        self.read_bytes.load(Ordering::Relaxed)
    }

    /// Value bytes written.
    pub fn written_bytes(&self) -> u64 {
        self.written_bytes.load(Ordering::Relaxed)
    }
}

/// A bucket in use: its name, its id in the backend and its counters.
#[derive(Debug)]
pub struct Bucket {
    /// Its name.
    pub name: BucketName,
    /// Its id in the backend.
    pub id: Arc<str>,
    /// Its counters.
    pub stats: BucketStats,
}

/// The key-value service of the process: the backend and a handle per bucket in use.
pub struct Kv {
    backend: Arc<dyn Backend>,
    buckets: DashMap<BucketName, Arc<Bucket>>,
}

impl Kv {
    /// The service over `backend`.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self {
            backend,
            buckets: DashMap::new(),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The handle of bucket `name` (made on first use).
    pub fn bucket(&self, name: &BucketName) -> Arc<Bucket> {
        if let Some(found) = self.buckets.get(name) {
            return found.value().clone();
        }
        self.buckets
            .entry(name.clone())
            .or_insert_with(|| {
                Arc::new(Bucket {
                    id: name.id().into(),
                    name: name.clone(),
                    stats: BucketStats::default(),
                })
            })
            .value()
            .clone()
    }

    /// The bucket `name` if it exists: a handle is in use (a route's own bucket, or a shared
    /// one a route is granted), or the backend holds keys in it. A bucket found only in the
    /// backend gets a handle of its own that is not kept: looking creates nothing.
    pub async fn existing(&self, name: &BucketName) -> Result<Option<Arc<Bucket>>, KvError> {
        if let Some(found) = self.buckets.get(name) {
            return Ok(Some(found.value().clone()));
        }
        let id: Arc<str> = name.id().into();
        if self.backend.usage(&id).await?.keys == 0 {
            return Ok(None);
        }
        Ok(Some(Arc::new(Bucket {
            id,
            name: name.clone(),
            stats: BucketStats::default(),
        })))
    }

    /// Drops the handle of route `route`'s own bucket (a change that would have made the route
    /// failed; its data, if any, stays in the backend).
    pub fn forget_route(&self, route: &RouteName) {
        self.buckets.remove(&BucketName::Route(route.clone()));
    }

    /// Every bucket used since the server started, by name.
    pub fn buckets(&self) -> Vec<Arc<Bucket>> {
        let mut all: Vec<_> = self.buckets.iter().map(|e| e.value().clone()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// What route `route` may open: its own bucket and the shared buckets `shared` (names a
    /// deploy checked; one that no longer parses is left out with a warning).
    pub fn grants(&self, route: &RouteName, shared: &[String]) -> Grants {
        let mut granted: Vec<Arc<Bucket>> = Vec::with_capacity(shared.len());
        for name in shared {
            match BucketName::shared(name) {
                Ok(name) => granted.push(self.bucket(&name)),
                Err(error) => {
                    tracing::warn!(route = route.as_str(), error = %error, "a stored bucket grant is unusable; left out");
                }
            }
        }
        granted.sort_by(|a, b| a.name.cmp(&b.name));
        granted.dedup_by(|a, b| a.name == b.name);
        Grants(Arc::new(GrantsInner {
            backend: self.backend.clone(),
            own: self.bucket(&BucketName::Route(route.clone())),
            shared: granted.into(),
        }))
    }
}

/// The buckets one route may open, resolved once per version: cloned into each request.
#[derive(Clone)]
pub struct Grants(Arc<GrantsInner>);

struct GrantsInner {
    backend: Arc<dyn Backend>,
    own: Arc<Bucket>,
    shared: Arc<[Arc<Bucket>]>,
}

impl Grants {
    /// The bucket a guest's `open(identifier)` names, if the route may open it.
    pub fn open(&self, identifier: &str) -> Option<&Arc<Bucket>> {
        if identifier == DEFAULT_BUCKET {
            return Some(&self.0.own);
        }
        self.0.shared.iter().find(|b| b.name.name() == identifier)
    }

    /// The route's own bucket.
    pub fn own(&self) -> &Arc<Bucket> {
        &self.0.own
    }

    /// The shared buckets granted, by name.
    pub fn shared(&self) -> impl Iterator<Item = &str> {
        self.0.shared.iter().map(|b| b.name.name())
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.0.backend
    }
}

impl PartialEq for Grants {
    fn eq(&self, other: &Self) -> bool {
        self.0.own.name == other.0.own.name && self.shared().eq(other.shared())
    }
}

impl Eq for Grants {}

impl std::fmt::Debug for Grants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grants")
            .field("own", &self.0.own.name)
            .field("shared", &self.shared().collect::<Vec<_>>())
            .finish()
    }
}
