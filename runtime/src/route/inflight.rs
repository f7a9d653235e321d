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
    route: Arc<RouteState>,
}

impl InFlight {
    /// Takes a token on `version` for a request through a route whose concurrency slot
    /// (`route`) the caller has already taken. Call it while the table snapshot that named
    /// `version` is still held, so a retirement can never miss it.
    pub(crate) fn enter(version: &Arc<Version>, route: &Arc<RouteState>) -> Self {
        version.enter();
        Self {
            version: version.clone(),
            route: route.clone(),
        }
    }

    /// The version this request runs on.
    pub fn version(&self) -> &Arc<Version> {
        &self.version
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.route.leave();
        self.version.leave();
    }
}
