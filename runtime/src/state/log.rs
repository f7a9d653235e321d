//! The [`StateLog`] interface: the seam between recording a change and applying it.

use std::future::Future;
use std::pin::Pin;

use super::records::{ModuleRecord, RouteRecord};

use crate::digest::Digest;
use crate::names::RouteName;

/// A boxed future, for the object-safe [`StateLog`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A route's record with the revision it was read at. Revisions grow with every committed change
/// of the route (the redb log counts the route's changes; a cluster log uses the position of the
/// change in the bucket, which also grows across a delete and a re-creation); a route that does
/// not exist is at revision 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The route's name.
    pub name: RouteName,
    /// Its record.
    pub record: RouteRecord,
}

/// One change to one route, planned against the revision the planner read.
#[derive(Debug, Clone)]
pub struct Change {
    /// The route.
    pub route: RouteName,
    /// The revision the change was planned against (0: the route did not exist). The log
    /// refuses the change if the route has moved on since ([`AppendError::Conflict`]).
    pub base: u64,
    /// The route as it will stand (its `revision` is set by the log), or `None` to delete it.
    pub next: Option<RouteRecord>,
    /// Module records to write with it (modules this change brings in or un-pins).
    pub modules: Vec<(Digest, ModuleRecord)>,
}

/// A change another writer recorded, as a watch reports it.
#[derive(Debug, Clone)]
pub struct Watched {
    /// The route.
    pub route: RouteName,
    /// Where the change stands in the log; a watch resumes after it.
    pub position: u64,
}

/// Why a change was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another change to the same route was recorded first.
    #[error("route `{route}` changed while this change was planned (now at revision {now})")]
    Conflict {
        /// The route.
        route: String,
        /// Its revision now.
        now: u64,
    },
    /// Another route holds the prefix the change's record claims. A route's prefix is a claim
    /// recorded in the same write as the route, so two routes never hold one prefix, whichever
    /// nodes record them.
    #[error("the prefix `{prefix}` is held by route `{owner}`")]
    PrefixTaken {
        /// The prefix.
        prefix: String,
        /// The route that holds it.
        owner: String,
    },
    /// The log could not be written.
    #[error("the state log could not be written: {0:#}")]
    Failed(#[from] anyhow::Error),
}

/// The durable record of routes and modules.
///
/// Every method may block on I/O; implementations run it off the async threads themselves.
pub trait StateLog: Send + Sync + 'static {
    /// Every route, by name.
    fn routes(&self) -> BoxFuture<'_, anyhow::Result<Vec<Stored>>>;

    /// One route (`None` if it does not exist).
    fn route<'a>(&'a self, name: &'a RouteName) -> BoxFuture<'a, anyhow::Result<Option<Stored>>>;

    /// One module's record.
    fn module<'a>(
        &'a self,
        digest: &'a Digest,
    ) -> BoxFuture<'a, anyhow::Result<Option<ModuleRecord>>>;

    /// Every module's record.
    fn modules(&self) -> BoxFuture<'_, anyhow::Result<Vec<(Digest, ModuleRecord)>>>;

    /// Records `change` durably, atomically, if the route is still at `change.base` and no
    /// other route holds the prefix its record claims ([`RouteRecord::claimed_prefix`]).
    /// The claim is written with the route in one atomic write: the route takes its new
    /// prefix and lets go of its old one (or, deleted, of its prefix) together. Returns the
    /// route's new revision. Once this returns `Ok`, a crash at any moment leaves the change
    /// recorded.
    fn append(&self, change: Change) -> BoxFuture<'_, Result<u64, AppendError>>;

    /// The route that holds `prefix`, if any (see [`StateLog::append`]).
    fn prefix_owner<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Option<RouteName>>>;

    /// Writes module records without touching any route (an upload).
    fn put_modules(
        &self,
        modules: Vec<(Digest, ModuleRecord)>,
    ) -> BoxFuture<'_, anyhow::Result<()>>;

    /// Removes the records of modules that no route references (as its stable, candidate or
    /// shadow version, or in its history), that are not pinned, and for which `protect` is
    /// false, atomically with respect to [`StateLog::append`]. Returns the removed digests.
    fn collect(
        &self,
        protect: Box<dyn Fn(&Digest) -> bool + Send>,
    ) -> BoxFuture<'_, anyhow::Result<Vec<Digest>>>;

    /// Removes one module's record if nothing references it and it is not protected; `Ok(false)`
    /// if a route or its history still references it.
    fn remove_module<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, anyhow::Result<bool>>;

    /// Keeps module bytes where every node can fetch them, before a change references them.
    /// One node (the default) keeps them in its data directory only: nothing to do.
    fn store_bytes<'a>(
        &'a self,
        _digest: &'a Digest,
        _bytes: bytes::Bytes,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }

    /// Module bytes this node lacks, fetched from where [`StateLog::store_bytes`] put them
    /// (`None`: nowhere else to look, the default).
    fn fetch_bytes<'a>(
        &'a self,
        _digest: &'a Digest,
    ) -> BoxFuture<'a, anyhow::Result<Option<bytes::Bytes>>> {
        Box::pin(async { Ok(None) })
    }

    /// The position of the last change recorded so far (what a watch started now would
    /// resume after). One node has no other writers: 0, the default.
    fn position(&self) -> BoxFuture<'_, anyhow::Result<u64>> {
        Box::pin(async { Ok(0) })
    }

    /// Watches for changes recorded after `after` by anyone (this node included), in order:
    /// each one is sent as it is recorded. `Ok(None)` when nobody else writes (one node, the
    /// default). The channel closes when the watch breaks (the connection was lost); watch
    /// again from the last position seen.
    fn watch(
        &self,
        _after: u64,
    ) -> BoxFuture<'_, anyhow::Result<Option<tokio::sync::mpsc::Receiver<Watched>>>> {
        Box::pin(async { Ok(None) })
    }
}
