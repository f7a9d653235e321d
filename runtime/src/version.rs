//! A version: one immutable, compiled and pre-instantiated guest, named by the sha256 digest of
//! its bytes, with its in-flight tracker and counters.
//!
//! A version is shared as `Arc<Version>`. The route table holds one reference while it is
//! active; every in-flight request holds an [`InFlight`] token. A version must never be mutated
//! after it is built, except through its atomics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::digest::Digest;
use crate::engine::{Pre, Wasi};
use crate::host::Guest;
pub use crate::settings::{GuestDir, Limits, RouteConfig, Settings, parse_config};

/// One compiled, pre-instantiated guest serving (or having served) a route.
pub struct Version {
    /// The digest of the component's bytes: the version's name.
    pub digest: Digest,
    /// The digest's first 12 hex digits, shared into every request's logs without allocating.
    pub short: Arc<str>,
    /// The route this version was deployed to.
    pub route: Arc<str>,
    /// The pre-instantiated component, shared with every other version of the same bytes;
    /// which WASI it is for.
    pub pre: Pre,
    /// The sandbox its requests run in, set up once.
    pub guest: Arc<Guest>,
    /// Its idle instances, kept for its next requests when its route reuses instances
    /// (`reuse` above 1); never shared with another version. WASI 0.2 only.
    pub instances: Arc<crate::reuse::Instances>,
    /// The instances of a WASI 0.3 version, and how its requests reach them; `None` for 0.2.
    pub service: Option<crate::service::Service>,
    /// What its requests did: errors, status classes, latency.
    pub stats: crate::stats::VersionStats,
    /// Limits for its requests.
    pub limits: Limits,
    /// Its deploy-time configuration (the guest's environment).
    pub config: RouteConfig,
    /// Where its guests may send outbound HTTP requests.
    pub outbound: crate::outbound::Outbound,
    /// The directory mounted read-only at `/data`, if any.
    pub dir: Option<GuestDir>,
    /// The key-value buckets its guests may open.
    pub kv: crate::kv::Grants,
    /// Size of the uploaded component.
    pub size_bytes: usize,
    /// How long compiling and linking took.
    pub compile_time: Duration,
    /// When it was deployed.
    pub deployed_at: SystemTime,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    guest_failures: AtomicU64,
    retired: AtomicBool,
    drained: Notify,
    cut_off: CancellationToken,
}

impl Version {
    /// Wraps a freshly compiled guest; its sandbox is built here, once (`outbound_private` is
    /// the server's `--outbound-private`; `engine`: the server's engines, for a 0.3 version's
    /// instances).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        engine: &crate::engine::Engine,
        digest: Digest,
        route: Arc<str>,
        pre: Pre,
        settings: Settings,
        size_bytes: usize,
        compile_time: Duration,
        outbound_private: bool,
    ) -> Self {
        let short: Arc<str> = digest.short().into();
        let guest = Arc::new(Guest::new(
            route.clone(),
            short.clone(),
            &settings,
            outbound_private,
        ));
        let Settings {
            config,
            limits,
            outbound,
            dir,
            kv,
        } = settings;
        let cut_off = CancellationToken::new();
        let (instances, service) = match &pre {
            Pre::P2(_) => (crate::reuse::Instances::new(limits.reuse), None),
            Pre::P3(pre) => (
                crate::reuse::Instances::new(1),
                Some(crate::service::Service::new(
                    engine.wasmtime_for(Wasi::P3),
                    pre.clone(),
                    guest.clone(),
                    limits.reuse,
                    limits.instance_concurrency,
                    limits.request_timeout,
                    cut_off.clone(),
                )),
            ),
        };
        Self {
            short,
            digest,
            route,
            pre,
            guest,
            instances,
            service,
            stats: Default::default(),
            limits,
            config,
            outbound,
            dir,
            kv,
            size_bytes,
            compile_time,
            deployed_at: SystemTime::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            guest_failures: AtomicU64::new(0),
            retired: AtomicBool::new(false),
            drained: Notify::new(),
            cut_off,
        }
    }

    /// Which WASI it is.
    pub fn wasi(&self) -> Wasi {
        self.pre.wasi()
    }

    /// Counts a request that now holds this version (see `crate::route::InFlight`).
    pub(crate) fn enter(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request that let go of this version, waking its drain if it was the last.
    pub(crate) fn leave(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 && self.retired.load(Ordering::SeqCst)
        {
            self.drained.notify_waiters();
        }
    }

    /// This version's settings.
    pub fn settings(&self) -> Settings {
        Settings {
            config: self.config.clone(),
            limits: self.limits,
            outbound: self.outbound.clone(),
            dir: self.dir.clone(),
            kv: self.kv.clone(),
        }
    }

    /// Requests currently holding this version.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Requests routed to this version so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests on this version that failed: what the rollout gates count (a 5xx the
    /// version caused, whether the host or the guest answered it, or a response body that
    /// ended in an error). The one definition of "failed" in the status, the console and
    /// `/metrics`.
    pub fn failures(&self) -> u64 {
        self.stats.errors()
    }

    /// Requests whose guest failed (trapped, ran out of time, was cut off, or returned without
    /// a response or without finishing a body), whether or not its response had already gone
    /// out whole: a guest that fails after a complete response is counted here, not in
    /// [`Self::failures`].
    pub fn guest_failures(&self) -> u64 {
        self.guest_failures.load(Ordering::Relaxed)
    }

    /// Counts a guest failure.
    pub fn record_failure(&self) {
        self.guest_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Resolves when the version's requests must stop at once (its drain deadline passed, or
    /// the server is shutting down hard).
    pub fn cut_off(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cut_off.cancelled()
    }

    /// The token cancelled at this version's cut-off (see [`Version::cut_off`]).
    pub(crate) fn cut_off_token(&self) -> &CancellationToken {
        &self.cut_off
    }

    /// Ends this version's in-flight requests now.
    pub fn cut_off_now(&self) {
        self.cut_off.cancel();
    }

    /// Stops new requests from counting as on time, then waits up to `grace` for the in-flight
    /// ones. Returns what happened. Must be called only after the version has left the route
    /// table and every reader of the old table is gone.
    pub async fn drain(&self, grace: Duration) -> DrainOutcome {
        let started = Instant::now();
        self.retired.store(true, Ordering::SeqCst);
        // Idle instances serve no one any more: drop them now (the running requests keep
        // theirs, which are then dropped too).
        self.instances.close();
        if let Some(service) = &self.service {
            service.close();
        }
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let remaining = self.in_flight();
            if remaining == 0 {
                return DrainOutcome::Drained {
                    waited: started.elapsed(),
                };
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = &mut deadline => {
                    self.cut_off.cancel();
                    return DrainOutcome::CutOff { remaining };
                }
            }
        }
    }
}

impl Drop for Version {
    fn drop(&mut self) {
        tracing::debug!(route = %self.route, version = %self.digest, "version freed");
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every in-flight request finished.
    Drained {
        /// How long that took.
        waited: Duration,
    },
    /// The grace period ran out; these requests were cut off.
    CutOff {
        /// In-flight requests at the deadline.
        remaining: usize,
    },
}
