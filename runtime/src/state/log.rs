//! The [`StateLog`] interface: the seam between recording a change and applying it.

use std::future::Future;
use std::pin::Pin;

use super::records::{ModuleRecord, RouteRecord};

use crate::names::RouteName;
use crate::version::Digest;

/// A boxed future, for the object-safe [`StateLog`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A route's record with the revision it was read at. Revisions count the route's changes:
/// every committed change adds one; a route that does not exist is at revision 0.
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

    /// Records `change` durably, atomically, if the route is still at `change.base`. Returns
    /// the route's new revision. Once this returns `Ok`, a crash at any moment leaves the
    /// change recorded.
    fn append(&self, change: Change) -> BoxFuture<'_, Result<u64, AppendError>>;

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
}
