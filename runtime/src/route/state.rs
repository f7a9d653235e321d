//! Route-lifetime state: what every version of a route shares and what outlives any one table
//! snapshot: the route's request counters, its change lock, its rollout controller and shadow
//! statistics. Its key-value bucket is route-lifetime too, kept by the route's name in
//! `crate::kv::Kv`.
//!
//! The [`Registry`] maps route names to their state in a concurrent map (`dashmap`): looked up
//! by name off the hot path (a change, a status page), never held across an `.await` (clone the
//! `Arc` out in one expression). The hot path never touches the registry: each route in a table
//! snapshot carries its own `Arc<RouteState>`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use crate::digest::Digest;
use crate::names::RouteName;
use crate::stats::Snapshot;

/// State shared by every version of one route.
#[derive(Default, Debug)]
pub struct RouteState {
    requests: AtomicU64,
    in_flight: AtomicUsize,
    /// Held while a change to this route is planned and applied, so changes to one route are
    /// read-modify-write in turn while changes to other routes proceed.
    change: Arc<tokio::sync::Mutex<()>>,
    /// Stops the route's rollout controller, when one runs.
    controller: Mutex<Option<CancellationToken>>,
    /// Where the rollout's current step started counting (off the hot path).
    window: Mutex<Option<StepWindow>>,
    /// What the route's shadow found.
    pub shadow: crate::shadow::ShadowStats,
}

/// The counters of a rollout step's two versions when the step started: the step's figures
/// are the counters now minus these.
#[derive(Debug, Clone)]
pub struct StepWindow {
    /// The step (an index into the rollout's steps).
    pub step: usize,
    /// When it started counting.
    pub started: Instant,
    /// The stable version and its counters then.
    pub stable: (Digest, Snapshot),
    /// The candidate and its counters then.
    pub candidate: (Digest, Snapshot),
}

impl RouteState {
    /// Requests routed to this route so far, across versions.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests on this route now, across versions.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Counts a routed request.
    pub(crate) fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a concurrency slot unless `limit` (0: none) are taken; `false` when full.
    pub(crate) fn try_enter(&self, limit: u32) -> bool {
        let before = self.in_flight.fetch_add(1, Ordering::SeqCst);
        if limit > 0 && before >= limit as usize {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Gives a concurrency slot back.
    pub(crate) fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// Makes `token` the one that stops this route's rollout controller; returns the previous
    /// one (whose controller the caller stops).
    pub fn replace_controller(
        &self,
        token: Option<CancellationToken>,
    ) -> Option<CancellationToken> {
        std::mem::replace(&mut *self.controller.lock().expect("poisoned"), token)
    }

    /// The rollout step's window, if a rollout counts one.
    pub fn window(&self) -> Option<StepWindow> {
        self.window.lock().expect("poisoned").clone()
    }

    /// Sets (or clears) the rollout step's window.
    pub fn set_window(&self, window: Option<StepWindow>) {
        *self.window.lock().expect("poisoned") = window;
    }
}

/// The route-lifetime state of every route, by name.
pub struct Registry {
    routes: DashMap<RouteName, Arc<RouteState>>,
    /// Every committed change, for the rollout supervisor (`crate::rollout::supervise`), which
    /// keeps a controller running for each live rollout.
    committed: tokio::sync::mpsc::UnboundedSender<Committed>,
    /// The receiving end, until the supervisor takes it.
    feed: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Committed>>>,
}

impl Default for Registry {
    fn default() -> Self {
        let (committed, feed) = tokio::sync::mpsc::unbounded_channel();
        Self {
            routes: DashMap::new(),
            committed,
            feed: Mutex::new(Some(feed)),
        }
    }
}

/// Where a committed change comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A change made on this node by an operator (or anything but the rollout controller).
    Local,
    /// A change the route's rollout controller made on this node.
    Controller,
    /// A change another node recorded, watched in the state log.
    Remote,
    /// A stored record applied at startup.
    Restore,
}

/// A change committed to the route table (`crate::deploy::commit`), as the rollout supervisor
/// hears of it.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The route.
    pub route: RouteName,
    /// Who made the change.
    pub source: Source,
}

/// The right to change one route, held while the change is planned and applied.
pub struct ChangeGuard {
    /// The route's state.
    pub state: Arc<RouteState>,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Registry {
    /// The state of route `name`, if it has any.
    pub fn get(&self, name: &RouteName) -> Option<Arc<RouteState>> {
        self.routes.get(name).map(|entry| entry.value().clone())
    }

    /// Takes route `name`'s change lock (creating its state if it has none), waiting for any
    /// change to it in progress.
    pub async fn lock(&self, name: &RouteName) -> ChangeGuard {
        loop {
            let state = self.routes.entry(name.clone()).or_default().value().clone();
            let guard = ChangeGuard::lock(state).await;
            // A delete may have forgotten this state while we waited; then start again with
            // the route's current one, so two changes never hold two different locks.
            if self
                .routes
                .get(name)
                .is_some_and(|current| Arc::ptr_eq(current.value(), &guard.state))
            {
                return guard;
            }
        }
    }

    /// Forgets route `name`'s state (it was deleted). Call it holding the route's change lock.
    pub fn forget(&self, name: &RouteName) {
        self.routes.remove(name);
    }

    /// Tells the rollout supervisor that a change to route `name` was committed.
    pub(crate) fn committed(&self, name: &RouteName, source: Source) {
        // Before the supervisor starts, changes queue (a restore's, say); after the runtime is
        // gone nobody listens, and nothing is lost.
        let _ = self.committed.send(Committed {
            route: name.clone(),
            source,
        });
    }

    /// The feed of committed changes; the first caller (the rollout supervisor) gets it.
    pub(crate) fn take_feed(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Committed>> {
        self.feed.lock().expect("poisoned").take()
    }
}

impl ChangeGuard {
    async fn lock(state: Arc<RouteState>) -> Self {
        let guard = state.change.clone().lock_owned().await;
        Self {
            state,
            _guard: guard,
        }
    }
}
