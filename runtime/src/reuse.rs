//! Instance reuse, opt-in per route (`reuse=N`): a version keeps the instances that finished a
//! request cleanly, idle, and serves its next requests from them, up to N requests per
//! instance, one request at a time.
//!
//! What this trades away: guest memory (globals, heap, caches) persists between the requests
//! one instance serves. What it keeps:
//!
//! * an instance is never shared between versions: each version has its own idle instances
//!   ([`Instances`]), so a swap starts fresh instances, and a retired version's idle instances
//!   are dropped at once ([`Instances::close`]; drain still waits for the requests running);
//! * only an instance whose request ended cleanly is kept: the handler returned, it set a
//!   response, and it finished every body it started. A trap, a deadline, a cut-off, a client
//!   that left before the guest returned, or a request the guest did not finish discards it;
//! * an instance idle for [`IDLE_TIMEOUT`] is dropped (it holds a slot of the instance pool
//!   until then), and so is one that has served its N requests.
//!
//! An instance goes back to its version ([`Instances::give_back`]) only once both sides of its
//! request are known: the guest's (it returned cleanly, every body finished) and the client's
//! (the guest's response head reached it). The request's dispatch (`crate::dispatch`) knows
//! both when the guest returns: before the head went out, it waited for the guest; after, it
//! knew the head's fate when it let the guest run on in a task of its own.
//!
//! Nothing here runs unless a route sets `reuse` above 1: [`Instances::take`] returns at once.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::Proxy;

use crate::host::Host;

/// How long an idle instance is kept for its version's next request (the `wasmtime serve`
/// default for `--idle-instance-timeout`).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// The most idle instances one version keeps; an instance finishing past it is dropped. Idle
/// instances hold slots of the server's instance pool, so this bounds what one route can hold
/// back from the others.
pub const MAX_IDLE: usize = 64;

/// A store and, once instantiated, the guest instance in it, with the requests it has served.
pub struct Instance {
    /// The store; its host state is reset for every request ([`Host::reset`]).
    pub store: Store<Host>,
    /// The instance, `None` until the first request instantiates it.
    pub proxy: Option<Proxy>,
    /// Requests this instance has served.
    served: u32,
}

impl Instance {
    /// A fresh store, not instantiated yet.
    pub fn fresh(store: Store<Host>) -> Self {
        Self {
            store,
            proxy: None,
            served: 0,
        }
    }
}

/// One version's idle instances.
pub struct Instances {
    /// Requests one instance may serve (`reuse`); 1 or less: no reuse.
    max_uses: u32,
    idle: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    /// Parked instances, least recently parked first (the sweeper drops from the front, requests
    /// take from the back).
    parked: Vec<(Instance, Instant)>,
    /// The version retired: nothing is parked any more.
    closed: bool,
    /// A sweeper task is running.
    sweeping: bool,
}

impl Instances {
    /// Idle instances for a version whose instances serve up to `reuse` requests each.
    pub fn new(reuse: u32) -> Arc<Self> {
        Arc::new(Self {
            max_uses: reuse,
            idle: Mutex::default(),
        })
    }

    /// Whether this version reuses instances at all.
    pub fn enabled(&self) -> bool {
        self.max_uses > 1
    }

    /// An idle instance, if one is parked (the most recently parked: its memory is warmest).
    pub fn take(&self) -> Option<Instance> {
        if !self.enabled() {
            return None;
        }
        self.lock().parked.pop().map(|(instance, _)| instance)
    }

    /// Parks `instance`, which has just served a request cleanly, for the version's next
    /// request, unless it has served its `reuse` requests, the version has retired, or
    /// [`MAX_IDLE`] are parked already (then it is dropped).
    pub fn give_back(self: &Arc<Self>, mut instance: Instance) {
        instance.served += 1;
        if !self.enabled() || instance.served >= self.max_uses {
            return;
        }
        let mut idle = self.lock();
        if idle.closed || idle.parked.len() >= MAX_IDLE {
            drop(idle);
            return;
        }
        idle.parked.push((instance, Instant::now()));
        if !idle.sweeping {
            idle.sweeping = true;
            drop(idle);
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
    }

    /// Drops every idle instance and parks none from now on: the version has retired.
    pub fn close(&self) {
        let parked = {
            let mut idle = self.lock();
            idle.closed = true;
            std::mem::take(&mut idle.parked)
        };
        drop(parked);
    }

    /// Requests one instance may serve.
    pub fn max_uses(&self) -> u32 {
        self.max_uses
    }

    /// Idle instances parked now.
    pub fn idle(&self) -> usize {
        self.lock().parked.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        // A panic while holding the lock leaves the list consistent (pushes and pops only).
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Drops the version's instances idle for [`IDLE_TIMEOUT`], until none is left (or the version
/// is gone); a later park starts it again.
async fn sweep(instances: Weak<Instances>) {
    loop {
        let Some(this) = instances.upgrade() else {
            return;
        };
        let now = Instant::now();
        let (expired, next) = {
            let mut idle = this.lock();
            let stale = idle
                .parked
                .iter()
                .take_while(|(_, since)| now.duration_since(*since) >= IDLE_TIMEOUT)
                .count();
            let expired: Vec<_> = idle.parked.drain(..stale).collect();
            let next = idle.parked.first().map(|(_, since)| *since + IDLE_TIMEOUT);
            if next.is_none() {
                idle.sweeping = false;
            }
            (expired, next)
        };
        // Stores are dropped outside the lock.
        drop(expired);
        drop(this);
        match next {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => return,
        }
    }
}
