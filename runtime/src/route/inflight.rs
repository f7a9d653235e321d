//! The in-flight token: proof that a request holds a version, from routing until its response
//! body has ended (its last byte written, or the client gone) and its guest's task has ended
//! (a guest may work after its response, under its deadline). The response body and the guest
//! task share it; dropping its last holder is what lets a retired version drain and frees the
//! route's concurrency slot.

use std::sync::Arc;

use super::state::RouteState;
use crate::version::Version;

/// A request's hold on its version and its route's concurrency slot.
pub struct InFlight {
    version: Arc<Version>,
    /// The route whose concurrency slot this request holds (`None` for a copy: a shadow run
    /// takes no slot from the route's clients).
    route: Option<Arc<RouteState>>,
}

impl InFlight {
    /// Takes a token on `version` for a request through a route whose concurrency slot
    /// (`route`) the caller has already taken. Call it while the table snapshot that named
    /// `version` is still held, so a retirement can never miss it.
    pub(crate) fn enter(version: &Arc<Version>, route: &Arc<RouteState>) -> Self {
        version.enter();
        Self {
            version: version.clone(),
            route: Some(route.clone()),
        }
    }

    /// Takes a token on `version` for a copy of a request (a shadow run), which holds the
    /// version (its drain waits for the copy) but no concurrency slot of the route. Call it
    /// while the snapshot that named `version` is held.
    pub(crate) fn copy(version: &Arc<Version>) -> Self {
        version.enter();
        Self {
            version: version.clone(),
            route: None,
        }
    }

    /// The version this request runs on.
    pub fn version(&self) -> &Arc<Version> {
        &self.version
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(route) = &self.route {
            route.leave();
        }
        self.version.leave();
    }
}
