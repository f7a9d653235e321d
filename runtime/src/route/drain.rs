//! Versions that left the route table and are finishing their in-flight requests: retire,
//! drain, cut off. A retired version is freed when its last request ends, or its remaining
//! requests are cut off when its drain deadline passes. Each of the three is published on the
//! event bus.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::background::Background;
use crate::events::{Bus, Event, Kind};
use crate::names::RouteName;
use crate::version::{DrainOutcome, Version};

/// A retired version whose in-flight requests are still finishing.
#[derive(Clone)]
pub struct Draining {
    /// The route it served.
    pub route: RouteName,
    /// The version.
    pub version: Arc<Version>,
    /// When it was retired.
    pub since: Instant,
}

/// The versions still draining.
#[derive(Default)]
pub struct Drains {
    list: Mutex<Vec<Draining>>,
    events: Bus,
    /// Where each drain waits (a shutdown waits for it).
    background: Background,
}

impl Drains {
    /// No version draining yet; retirements, drains and cut-offs are published on `events`,
    /// and each drain waits as a task of `background`.
    pub(crate) fn new(events: Bus, background: Background) -> Self {
        Self {
            list: Mutex::default(),
            events,
            background,
        }
    }

    /// Versions still draining, oldest first.
    pub fn list(&self) -> Vec<Draining> {
        self.list.lock().expect("drain list poisoned").clone()
    }

    /// Retires `version` of `route` (already out of the route table, every reader of the old
    /// table gone): waits in the background for its in-flight requests for up to `grace`, cuts
    /// off what is left, forgets it, then runs `after` (garbage collection). Holds only a weak
    /// reference to `self`.
    pub fn retire(
        self: &Arc<Self>,
        route: RouteName,
        version: Arc<Version>,
        grace: Duration,
        after: impl FnOnce() + Send + 'static,
    ) {
        self.list
            .lock()
            .expect("drain list poisoned")
            .push(Draining {
                route: route.clone(),
                version: version.clone(),
                since: Instant::now(),
            });
        tracing::info!(
            route = %route.as_str(), version = %version.digest,
            in_flight = version.in_flight(), "version retired; draining"
        );
        let event = |kind| Event::new(kind, route.as_str()).version(version.digest.as_str());
        self.events.publish(Event {
            in_flight: Some(version.in_flight() as u64),
            ..event(Kind::Retired)
        });
        let drains = Arc::downgrade(self);
        let events = self.events.clone();
        self.background.spawn_job(async move {
            let event = |kind| Event::new(kind, route.as_str()).version(version.digest.as_str());
            match version.drain(grace).await {
                DrainOutcome::Drained { waited } => {
                    tracing::info!(
                        route = %route.as_str(), version = %version.digest,
                        waited_ms = waited.as_millis() as u64, "version drained"
                    );
                    events.publish(Event {
                        waited_ms: Some(waited.as_millis() as u64),
                        ..event(Kind::Drained)
                    });
                }
                DrainOutcome::CutOff { remaining } => {
                    tracing::warn!(
                        route = %route.as_str(), version = %version.digest, cut_off = remaining,
                        "drain deadline passed; cutting off the remaining requests"
                    );
                    events.publish(Event {
                        in_flight: Some(remaining as u64),
                        ..event(Kind::CutOff)
                    });
                }
            }
            if let Some(drains) = drains.upgrade() {
                drains
                    .list
                    .lock()
                    .expect("drain list poisoned")
                    .retain(|d| !Arc::ptr_eq(&d.version, &version));
            }
            drop(version);
            after();
        });
    }

    /// Cuts off every draining version's requests at once.
    pub fn cut_off_all(&self) {
        for draining in self.list() {
            draining.version.cut_off_now();
        }
    }
}
