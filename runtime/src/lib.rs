//! handoff: serve HTTP handlers as sandboxed WebAssembly components (`wasi:http/proxy`) and
//! replace them while serving, without failing a request.
//!
//! # Architecture: three lifetimes, three types
//!
//! * **Process** — [`Runtime`]: the wasmtime engine and linker ([`engine`]), the route table
//!   ([`routes`]), the configuration and the set of draining versions. Built once.
//! * **Version** — [`version::Version`], shared as `Arc`: a compiled, linked and
//!   pre-instantiated guest with its limits, in-flight count and counters. Built at deploy time
//!   ([`deploy`]), off the async threads, and never changed afterwards.
//! * **Request** — [`host::Host`], the data of one wasmtime `Store`: a closed WASI context,
//!   the HTTP context, the resource table and the memory limiter. Built per request in
//!   [`dispatch`], the hot path, which does nothing else per request.
//!
//! A deploy compiles, validates and pre-instantiates the new version, then swaps it into the
//! route table atomically ([`routes::Routes::activate`]). Requests that already hold the old
//! version finish on it, response bodies included; the old version is then drained and freed.
//! The admin API ([`admin`]) and the data plane run on separate listeners ([`server`]).
//!
//! The `handoff` binary is thin: [`cli`] parses, and besides `serve` it runs the admin-API
//! clients ([`client`]: `deploy`, `routes`, `status`, `delete`), the guest scaffold
//! ([`scaffold`]: `new`) and the local loop ([`dev`]: build, serve, watch, redeploy).

pub mod admin;
pub mod auth;
pub mod cli;
pub mod client;
pub mod compile;
pub mod config;
pub mod deploy;
pub mod dev;
pub mod dispatch;
pub mod engine;
mod fuzz;
pub mod guest_log;
pub mod host;
pub mod outbound;
pub mod persist;
pub mod routes;
pub mod scaffold;
pub mod server;
pub mod signing;
pub mod telemetry;
pub mod tls;
pub mod version;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::config::Config;
use crate::engine::Engine;
use crate::persist::Persist;
use crate::routes::{RouteName, Routes};
use crate::version::{DrainOutcome, Version};

/// How many deploys may compile at once; more wait their turn (compiling is CPU-bound).
const CONCURRENT_COMPILES: usize = 4;

/// Process-wide state: engine, route table, configuration, draining versions.
pub struct Runtime {
    /// The validated configuration.
    pub config: Config,
    /// The engine and linker.
    pub engine: Engine,
    /// The route table.
    pub routes: Routes,
    /// The data directory.
    pub persist: Persist,
    compile_slots: tokio::sync::Semaphore,
    draining: Mutex<Vec<Draining>>,
    unavailable: Mutex<Vec<(String, String)>>,
    request_ids: AtomicU64,
    compiles: AtomicU64,
    compile_workers: AtomicU64,
}

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

impl Runtime {
    /// Builds the engine and an empty route table.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        config.validate().map_err(anyhow::Error::msg)?;
        let engine = Engine::new(&config)?;
        let persist = Persist::open(config.data_dir.as_deref(), engine.wasmtime())?;
        Ok(Self {
            config,
            engine,
            routes: Routes::default(),
            persist,
            compile_slots: tokio::sync::Semaphore::new(CONCURRENT_COMPILES),
            draining: Mutex::new(Vec::new()),
            unavailable: Mutex::new(Vec::new()),
            request_ids: AtomicU64::new(1),
            compiles: AtomicU64::new(0),
            compile_workers: AtomicU64::new(0),
        })
    }

    /// How many components this process has compiled (loading an artifact does not count).
    pub fn compiles(&self) -> u64 {
        self.compiles.load(Ordering::Relaxed)
    }

    /// How many compile worker processes are running now. A worker counts until it has exited
    /// and been reaped (or, on its deadline, killed and reaped).
    pub fn compile_workers(&self) -> u64 {
        self.compile_workers.load(Ordering::Relaxed)
    }

    /// Counts a compile.
    fn count_compile(&self) {
        self.compiles.fetch_add(1, Ordering::Relaxed);
    }

    /// Stored routes that could not be restored at startup, with the reason.
    pub fn unavailable(&self) -> Vec<(String, String)> {
        self.unavailable
            .lock()
            .expect("unavailable poisoned")
            .clone()
    }

    fn set_unavailable(&self, route: &str, reason: Option<String>) {
        let mut list = self.unavailable.lock().expect("unavailable poisoned");
        list.retain(|(r, _)| r != route);
        if let Some(reason) = reason {
            list.push((route.to_owned(), reason));
        }
    }

    /// Digests of every version active or draining in memory.
    fn in_use(&self) -> std::collections::HashSet<String> {
        let mut set: std::collections::HashSet<String> = self
            .routes
            .snapshot()
            .iter()
            .map(|r| r.active.digest.to_string())
            .collect();
        set.extend(self.draining().iter().map(|d| d.version.digest.to_string()));
        set
    }

    /// A fresh request id (unique within this process).
    pub fn next_request_id(&self) -> u64 {
        self.request_ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Versions still draining, oldest first.
    pub fn draining(&self) -> Vec<Draining> {
        self.draining
            .lock()
            .expect("draining list poisoned")
            .clone()
    }

    /// Retires `version` (already out of the route table): waits in the background for its
    /// in-flight requests, up to the drain deadline, then forgets it.
    pub fn retire(self: &Arc<Self>, route: RouteName, version: Arc<Version>) {
        let entry = Draining {
            route: route.clone(),
            version: version.clone(),
            since: Instant::now(),
        };
        self.draining
            .lock()
            .expect("draining list poisoned")
            .push(entry);
        tracing::info!(
            route = %route.as_str(), version = %version.digest,
            in_flight = version.in_flight(), "version retired; draining"
        );
        // The drain holds only a weak reference, so a stopped runtime is not kept alive by it.
        let rt = Arc::downgrade(self);
        let grace = self.config.drain_timeout;
        tokio::spawn(async move {
            match version.drain(grace).await {
                DrainOutcome::Drained { waited } => tracing::info!(
                    route = %route.as_str(), version = %version.digest,
                    waited_ms = waited.as_millis() as u64, "version drained"
                ),
                DrainOutcome::CutOff { remaining } => tracing::warn!(
                    route = %route.as_str(), version = %version.digest, cut_off = remaining,
                    "drain deadline passed; cutting off the remaining requests"
                ),
            }
            let Some(rt) = rt.upgrade() else {
                return;
            };
            rt.draining
                .lock()
                .expect("draining list poisoned")
                .retain(|d| !Arc::ptr_eq(&d.version, &version));
            drop(version);
            rt.collect_garbage();
        });
    }

    /// Removes stored modules that nothing references any more, in the background.
    pub fn collect_garbage(self: &Arc<Self>) {
        let rt = self.clone();
        tokio::task::spawn_blocking(move || match rt.persist.collect_garbage(&rt.in_use()) {
            Ok(0) => {}
            Ok(removed) => {
                tracing::info!(removed, "stored modules no route references were removed")
            }
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "garbage collection failed")
            }
        });
    }

    /// Cuts off every version's requests at once (the end of a shutdown's grace period).
    pub fn cut_off_all(&self) {
        for route in self.routes.snapshot().iter() {
            route.active.cut_off_now();
        }
        for draining in self.draining() {
            draining.version.cut_off_now();
        }
    }
}
