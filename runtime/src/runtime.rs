//! The process lifetime: [`Runtime`] holds what exists once per server: the engine and linker,
//! the compiler, the route table with its route-lifetime state and drains, the state log, the
//! data directory's files and the event bus. Built once at startup; everything else borrows it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::background::Background;
use crate::compile::Compiles;
use crate::config::Config;
use crate::engine::Engine;
use crate::events::Bus;
use crate::route::{Draining, Drains, Registry, RouteTable, Serving};
use crate::state::StateLog;
use crate::state::files::Files;
use crate::state::pending::Pending;
use crate::state::redb::RedbLog;

/// Copies of requests to shadows that may run at once across the server.
pub const MAX_COPIES: usize = 64;

/// Process-wide state.
pub struct Runtime {
    /// The validated configuration.
    pub config: Config,
    /// The engine and linker.
    pub engine: Arc<Engine>,
    /// The compiler.
    pub compiles: Compiles,
    /// The route table.
    pub routes: RouteTable,
    /// Route-lifetime state, by route name.
    pub registry: Registry,
    /// Versions that left the table and are finishing their requests.
    pub drains: Arc<Drains>,
    /// The durable record of routes and modules.
    pub state: Arc<dyn StateLog>,
    /// Module bytes and compiled artifacts.
    pub files: Files,
    /// The key-value store's buckets (`kv.redb` in the data directory; in a cluster, JetStream).
    pub kv: crate::kv::Kv,
    /// Copies of requests to shadows that may run at once; more are skipped.
    pub copy_slots: Arc<tokio::sync::Semaphore>,
    /// What happened to routes, versions, rollouts and shadows, for `GET /v1/events`.
    pub events: Bus,
    /// Event streams that may be open at once (the bus's `MAX_SUBSCRIBERS`), held until their
    /// connection is gone: a stream holds an admin connection, so they may take only part of
    /// the admin listener's.
    pub event_streams: Arc<tokio::sync::Semaphore>,
    /// The followers of guest log lines, for `GET /v1/routes/{name}/logs`.
    pub guest_logs: Arc<crate::guest_log::Tail>,
    /// Digests a change is working on (safe from garbage collection).
    pub(crate) pending: Pending,
    /// This node's membership of a cluster (`--cluster`); `None`: one node on its own.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// OpenTelemetry traces (`config.tracing`); `None`: off, and a request checks only this.
    pub trace: Option<Arc<crate::trace::Tracing>>,
    /// What this process hands to one that takes over from it (`serve --takeover`).
    pub handover: Handover,
    /// The owner of every background task (`Server::shutdown` stops it and waits for them).
    pub(crate) background: Background,
    request_ids: AtomicU64,
}

/// What a process hands to the one that takes over from it (`crate::takeover`), and the gate
/// that keeps admin changes whole across it.
pub struct Handover {
    /// The state log, as it can be closed and reopened (one node: `handoff.redb` is locked by
    /// the process that opens it). `None` in a cluster: JetStream is reached by every process.
    pub state: Option<Arc<crate::state::switch::Switchable>>,
    /// The key-value store, as it can be closed, reached through another process, or reopened
    /// (one node: `kv.redb`). `None` in a cluster.
    pub kv: Option<Arc<crate::kv::switch::Switch>>,
    /// In a process taking over: the key-value store not opened yet (the old process still
    /// owns it while this one loads); calls wait until the takeover fills it.
    pub kv_pending: std::sync::Mutex<Option<crate::kv::switch::Held>>,
    /// Held (read) by every admin request that may change something, for as long as it runs; a
    /// takeover takes it (write) before the state moves, so no change is half done then.
    pub admin: Arc<tokio::sync::RwLock<()>>,
    /// Set while the state is with another process or on its way there: the admin API answers
    /// 503 with `Retry-After`.
    released: std::sync::atomic::AtomicBool,
}

impl Handover {
    /// Whether the state is with another process (or on its way there).
    pub fn released(&self) -> bool {
        self.released.load(Ordering::SeqCst)
    }

    /// Marks the state as leaving (`true`) or back (`false`).
    pub fn set_released(&self, released: bool) {
        self.released.store(released, Ordering::SeqCst);
    }

    /// Holds the gate for a change this process makes (an admin change, a rollout
    /// controller's step, a garbage collection) for as long as the guard lives, so a takeover
    /// waits for it; `None` once the state is with another process or on its way there: then
    /// the change is not this process's to make (the new one makes it, or it is refused).
    pub async fn hold(&self) -> Option<tokio::sync::OwnedRwLockReadGuard<()>> {
        if self.released() {
            return None;
        }
        let gate = self.admin.clone().read_owned().await;
        (!self.released()).then_some(gate)
    }
}

impl Runtime {
    /// Builds the engine, opens the data directory and its state log; the route table starts
    /// empty (`crate::deploy::restore` fills it from the state log).
    pub fn new(config: Config) -> anyhow::Result<Self> {
        anyhow::ensure!(
            config.cluster.is_none(),
            "a cluster node is opened with Runtime::open"
        );
        let (config, engine, files) = Self::parts(config)?;
        let state = Arc::new(crate::state::switch::Switchable::new(Arc::new(
            RedbLog::open(files.dir())?,
        )));
        Self::assemble(
            config,
            engine,
            files,
            state.clone(),
            Some(state),
            None,
            Background::new(),
        )
    }

    /// As [`Runtime::new`]; with `config.cluster`, joins the cluster first and keeps the state
    /// log in it (the data directory then holds module bytes and artifacts only).
    pub async fn open(config: Config) -> anyhow::Result<Self> {
        let Some(cluster) = config.cluster.clone() else {
            return Self::new(config);
        };
        let (config, engine, files) = Self::parts(config)?;
        let background = Background::new();
        let (cluster, log) = crate::cluster::Cluster::connect(
            cluster,
            files.engine_key(),
            config.takeover,
            &background,
        )
        .await?;
        Self::assemble(
            config,
            engine,
            files,
            Arc::new(log),
            None,
            Some(cluster),
            background,
        )
    }

    fn parts(config: Config) -> anyhow::Result<(Config, Arc<Engine>, Files)> {
        config.validate().map_err(anyhow::Error::msg)?;
        let engine = Arc::new(Engine::new(
            crate::engine::Pool {
                slots: config.max_instances,
                max_memory: config.limits.max_memory_bytes,
            },
            config.opt_level,
        )?);
        let files = Files::open(
            config.data_dir.as_deref(),
            crate::engine::Wasi::ALL.map(|wasi| engine.wasmtime_for(wasi)),
        )?;
        Ok((config, engine, files))
    }

    fn assemble(
        config: Config,
        engine: Arc<Engine>,
        files: Files,
        state: Arc<dyn StateLog>,
        switchable: Option<Arc<crate::state::switch::Switchable>>,
        cluster: Option<Arc<crate::cluster::Cluster>>,
        background: Background,
    ) -> anyhow::Result<Self> {
        let mut kv_switch = None;
        let mut kv_pending = None;
        let events = Bus::new();
        // Guests' buckets: in the cluster's JetStream, else `kv.redb` in the data directory.
        let backend: Arc<dyn crate::kv::Backend> = match &cluster {
            Some(cluster) => {
                let (js, replicas) = cluster.jetstream();
                let kv = Arc::new(crate::kv::jetstream::JetStreamKv::new(js, replicas));
                // One node at a time deletes expired entries: the one that drives rollouts.
                let leader = cluster.clone();
                background.spawn_until(
                    cluster.nodes.stopping(),
                    crate::kv::jetstream::sweep_while(&kv, move || {
                        leader.nodes.leader().as_deref() == Some(leader.node_name())
                    }),
                );
                kv
            }
            // Taking over: the old process hands the store over once everything is loaded.
            None if config.takeover => {
                let (switch, held) = crate::kv::switch::Switch::closed();
                kv_pending = Some(held);
                let switch = Arc::new(switch);
                kv_switch = Some(switch.clone());
                switch
            }
            None => {
                let kv_path = files.dir().join("kv.redb");
                crate::state::private::prepare_private_file(&kv_path)?;
                let switch = Arc::new(crate::kv::switch::Switch::new(Arc::new(
                    crate::kv::redb::RedbBackend::open(&kv_path)?,
                )));
                kv_switch = Some(switch.clone());
                switch
            }
        };
        let kv = crate::kv::Kv::new(backend);
        let trace = config
            .tracing
            .as_ref()
            .map(|settings| {
                // A cluster node's spans say which node made them.
                let mut settings = settings.clone();
                if let Some(cluster) = &config.cluster {
                    settings.default_instance(&cluster.node_name);
                }
                crate::trace::Tracing::start(&settings)
            })
            .transpose()?;
        Ok(Self {
            trace,
            kv,
            compiles: Compiles::new(config.compiler.clone()),
            config,
            engine,
            routes: RouteTable::default(),
            registry: Registry::default(),
            drains: Arc::new(Drains::new(events.clone(), background.clone())),
            state,
            files,
            events,
            guest_logs: crate::guest_log::Tail::new(),
            pending: Pending::default(),
            copy_slots: Arc::new(tokio::sync::Semaphore::new(MAX_COPIES)),
            event_streams: Arc::new(tokio::sync::Semaphore::new(
                crate::events::bus::MAX_SUBSCRIBERS,
            )),
            request_ids: AtomicU64::new(1),
            background,
            cluster,
            handover: Handover {
                state: switchable,
                kv: kv_switch,
                kv_pending: std::sync::Mutex::new(kv_pending),
                admin: Arc::new(tokio::sync::RwLock::new(())),
                released: std::sync::atomic::AtomicBool::new(false),
            },
        })
    }

    /// How many components this process has compiled (loading an artifact does not count).
    pub fn compiles(&self) -> u64 {
        self.compiles.compiled()
    }

    /// How many compile worker processes are running now.
    pub fn compile_workers(&self) -> u64 {
        self.compiles.workers()
    }

    /// A fresh request id (unique within this process).
    pub fn next_request_id(&self) -> u64 {
        self.request_ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Versions still draining, oldest first.
    pub fn draining(&self) -> Vec<Draining> {
        self.drains.list()
    }

    /// Routes that are stored but cannot serve (their module could not be loaded), with the
    /// reason.
    pub fn unavailable(&self) -> Vec<(String, String)> {
        self.routes
            .snapshot()
            .iter()
            .filter_map(|route| match &route.serving {
                Serving::Unavailable(reason) => {
                    Some((route.name.as_str().to_owned(), reason.to_string()))
                }
                Serving::Live(_) => None,
            })
            .collect()
    }

    /// Requests in flight on every version that serves or drains, work after the response
    /// included.
    pub fn in_flight(&self) -> usize {
        let serving: usize = self
            .routes
            .snapshot()
            .iter()
            .filter_map(|route| route.split())
            .flat_map(|split| {
                split
                    .versions()
                    .map(|(_, v, _)| v.in_flight())
                    .collect::<Vec<_>>()
            })
            .sum();
        serving
            + self
                .draining()
                .iter()
                .map(|d| d.version.in_flight())
                .sum::<usize>()
    }

    /// Resolves once no request is in flight anywhere ([`Runtime::in_flight`]): what a shutdown
    /// waits for after its connections have closed.
    pub async fn requests_ended(&self) {
        while self.in_flight() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Cuts off every version's requests at once (the end of a shutdown's grace period).
    pub fn cut_off_all(&self) {
        for route in self.routes.snapshot().iter() {
            if let Some(split) = route.split() {
                for (_, version, _) in split.versions() {
                    version.cut_off_now();
                }
            }
        }
        self.drains.cut_off_all();
    }
}
