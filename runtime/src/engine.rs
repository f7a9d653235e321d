//! The process-wide wasmtime engines, the `Linker` every version is linked against, and the
//! epoch ticker that drives CPU deadlines.
//!
//! There are two engines, one per WASI, each with its linker and instance pool ([`Wasi`]): WASI
//! 0.2 `wasi:http/proxy` components run on an engine without the component model's concurrency
//! support (a call from the guest into the host then makes no host task: 10-20 % cheaper), WASI
//! 0.3 `wasi:http/service` components on one with it. A deploy reads which WASI a component is
//! for from its exports ([`Wasi::of`]) and compiles it for that engine.
//!
//! Built once at startup. Nothing here runs per request; compiling a guest happens through
//! [`Engine::compile`], which callers must run off the async threads.

mod ticker;
mod wasi;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wasmtime::component::{Component, Linker};
use wasmtime::{InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p3::bindings::ServicePre;

use crate::digest::Digest;
use crate::host::Host;
use crate::limiter;
pub use ticker::EPOCH_TICK;
use ticker::EpochTicker;
use wasi::{P3_HANDLER, WeakPre};
pub use wasi::{Pre, Wasi};

/// How the engine allocates guest instances.
#[derive(Debug, Clone, Copy)]
pub struct Pool {
    /// Instance slots in the pooling allocator; 0 allocates on demand.
    pub slots: u32,
    /// The largest linear memory a slot holds.
    pub max_memory: usize,
}

/// How hard Cranelift optimises guest code (`serve --opt-level`). An engine setting: it shapes
/// compiled code, so it is part of the engine key, and a server started with another level
/// compiles again what it serves instead of loading its artifacts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OptLevel {
    /// No optimisation: the fastest compile, the slowest guest code.
    None,
    /// Optimise for speed (the default, as `wasmtime`'s).
    #[default]
    Speed,
    /// Optimise for speed and code size.
    SpeedAndSize,
}

impl OptLevel {
    /// The level's name, as `--opt-level` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Speed => "speed",
            Self::SpeedAndSize => "speed-and-size",
        }
    }

    /// The level named `name` (see [`OptLevel::as_str`]).
    pub fn parse(name: &str) -> Option<Self> {
        [Self::None, Self::Speed, Self::SpeedAndSize]
            .into_iter()
            .find(|level| level.as_str() == name)
    }

    fn cranelift(self) -> wasmtime::OptLevel {
        match self {
            Self::None => wasmtime::OptLevel::None,
            Self::Speed => wasmtime::OptLevel::Speed,
            Self::SpeedAndSize => wasmtime::OptLevel::SpeedAndSize,
        }
    }
}

impl std::fmt::Display for OptLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Concurrent guest calls one WASI 0.3 instance slot may have on average: each call that waits
/// holds a stack of the pool. Every pooled stack is two memory mappings (the stack and its
/// guard page), mapped when the engine starts, against Linux's 65,530 per process
/// (`vm.max_map_count`): at 17 per slot the 0.3 engine alone took 34,000 of them, a server
/// 36,000, and a second server in one process (tests, embedders) ran the process out of
/// mappings (a thread that could not map its signal stack aborted it). At 4, 4,000 stacks for
/// the default 1,000 slots: a server maps about 10,000.
const P3_STACKS_PER_SLOT: u32 = 4;

/// Bytes of a pool slot's linear memory (and of its tables, [`TABLE_KEEP_RESIDENT`]) kept
/// resident when its instance ends, where the kernel offers `PAGEMAP_SCAN` (Linux 6.7 and
/// later): the pages the instance wrote, up to this much, are put back to their initial
/// contents with `memcpy` and stay mapped, instead of being dropped with `madvise` and faulted
/// in again by the slot's next instance. What an instance wrote beyond it is dropped as before.
/// Either way the next instance sees only the component's initial memory
/// (`hostile::a_new_instance_never_sees_an_earlier_instances_memory`). Measured on the bench
/// machine with `wasmtime serve` and the `hello` example: 2.1x the requests per second of the
/// default pool on fresh instances, sys time per request 125 µs to 30 µs.
const MEMORY_KEEP_RESIDENT: usize = 2 << 20;

/// The same for a slot's tables.
const TABLE_KEEP_RESIDENT: usize = 64 << 10;

/// Core instances the pool holds per instance slot, on average (the total is slots times
/// this). Rust guests use 3, componentize-js 4, componentize-py 14.
const CORE_INSTANCES_PER_SLOT: u32 = 10;

/// One WASI's wasmtime engine and the linker its components are linked against.
struct Flavour {
    engine: wasmtime::Engine,
    linker: Linker<Host>,
}

/// The engines, their linkers and the epoch ticker.
pub struct Engine {
    p2: Flavour,
    p3: Flavour,
    pooling: bool,
    opt_level: OptLevel,
    /// Linked code by digest, shared by every version of the same component on any route
    /// while one holds it ([`Engine::shared_code`]).
    code: Mutex<HashMap<Digest, WeakPre>>,
    _ticker: EpochTicker,
}

impl Engine {
    /// Builds the engine, compiling at `opt_level`. It uses the pooling allocator sized by
    /// `pool`, and falls back to on-demand allocation (with a warning) where the pool cannot be
    /// reserved, for example under a `ulimit -v`.
    pub fn new(pool: Pool, opt_level: OptLevel) -> anyhow::Result<Self> {
        let (p2, pooling) = wasmtime_engine(&pool, opt_level, Wasi::P2)?;
        let (p3, _) = wasmtime_engine(&pool, opt_level, Wasi::P3)?;
        let ticker = EpochTicker::start(vec![p2.clone(), p3.clone()]);
        Ok(Self {
            p2: Flavour {
                linker: linker(&p2, Wasi::P2)?,
                engine: p2,
            },
            p3: Flavour {
                linker: linker(&p3, Wasi::P3)?,
                engine: p3,
            },
            pooling,
            opt_level,
            code: Mutex::default(),
            _ticker: ticker,
        })
    }

    fn flavour(&self, wasi: Wasi) -> &Flavour {
        match wasi {
            Wasi::P2 => &self.p2,
            Wasi::P3 => &self.p3,
        }
    }

    /// The wasmtime engine of WASI 0.2 components.
    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.p2.engine
    }

    /// The wasmtime engine of `wasi`'s components.
    pub fn wasmtime_for(&self, wasi: Wasi) -> &wasmtime::Engine {
        &self.flavour(wasi).engine
    }

    /// Whether instances come from the pooling allocator.
    pub fn pooling(&self) -> bool {
        self.pooling
    }

    /// How hard guest code is optimised.
    pub fn opt_level(&self) -> OptLevel {
        self.opt_level
    }

    /// Compiles `bytes`: the blocking, CPU-heavy half of a deploy. Call it from
    /// `spawn_blocking`, never from an async task.
    ///
    /// wasmtime compiles functions in parallel on rayon's current pool. Each compile gets a pool
    /// of its own, so the OS shares the cores between concurrent deploys: on the global pool, a
    /// small component's functions would queue behind every function of a large one.
    pub fn compile(&self, bytes: &[u8], wasi: Wasi) -> Result<Component, CompileError> {
        let engine = &self.flavour(wasi).engine;
        let compile =
            || Component::new(engine, bytes).map_err(|e| CompileError::Invalid(format!("{e:#}")));
        match rayon::ThreadPoolBuilder::new()
            .num_threads(compile_threads())
            .thread_name(|i| format!("handoff-compile-{i}"))
            .build()
        {
            Ok(pool) => pool.install(compile),
            Err(error) => {
                tracing::warn!(error = %error, "no compile thread pool; compiling on the shared one");
                compile()
            }
        }
    }

    /// Links and pre-instantiates a component compiled for `wasi`, checking that every
    /// import is provided and that it exports the HTTP handler.
    pub fn link(&self, component: &Component, wasi: Wasi) -> Result<Pre, CompileError> {
        let pre = self
            .flavour(wasi)
            .linker
            .instantiate_pre(component)
            .map_err(|e| CompileError::Unlinkable(format!("{e:#}")))?;
        let no_handler = |e: wasmtime::Error| CompileError::NoHandler(format!("{e:#}"));
        Ok(match wasi {
            Wasi::P2 => Pre::P2(Arc::new(ProxyPre::new(pre).map_err(no_handler)?)),
            Wasi::P3 => {
                // `ServicePre::new` finds the export; its type is checked only when an
                // instance is made. Check the handler's shape now, so a component named like a
                // handler but not one is refused for what it is.
                self.check_p3_handler(component)
                    .map_err(CompileError::NoHandler)?;
                Pre::P3(Arc::new(ServicePre::new(pre).map_err(no_handler)?))
            }
        })
    }

    /// Checks that `component` exports `wasi:http/handler@0.3.x` with a `handle` function of
    /// one parameter (the request) and one result (the response or an error code), lifted
    /// `async`.
    fn check_p3_handler(&self, component: &Component) -> Result<(), String> {
        use wasmtime::component::types::ComponentItem;
        let engine = &self.p3.engine;
        let ty = component.component_type();
        let (name, handler) = ty
            .exports(engine)
            .find(|(name, _)| name.starts_with(P3_HANDLER))
            .ok_or_else(|| format!("no export named `{P3_HANDLER}.x`"))?;
        let ComponentItem::ComponentInstance(handler) = handler.ty else {
            return Err(format!("`{name}` is not an instance"));
        };
        let handle = handler
            .get_export(engine, "handle")
            .ok_or_else(|| format!("`{name}` has no `handle` function"))?;
        match handle.ty {
            ComponentItem::ComponentFunc(func)
                if func.params().len() == 1 && func.results().len() == 1 && func.async_() =>
            {
                Ok(())
            }
            _ => Err(format!(
                "`{name}#handle` is not `async func(request) -> result<response, error-code>`"
            )),
        }
    }

    /// The linked code of component `digest`, if a version of it is loaded (on any route):
    /// every version of the same bytes shares one copy of the machine code, which a component
    /// otherwise holds per load (the `hello` example: about 650 KiB).
    pub fn shared_code(&self, digest: &Digest) -> Option<Pre> {
        self.code_map().get(digest)?.upgrade()
    }

    /// Shares `pre`, just linked for component `digest`, with the versions loaded later; returns
    /// the copy to use (one loaded meanwhile wins). Forgets the code no version holds any more.
    pub fn share_code(&self, digest: &Digest, pre: Pre) -> Pre {
        let mut code = self.code_map();
        if let Some(live) = code.get(digest).and_then(WeakPre::upgrade) {
            return live;
        }
        code.retain(|_, held| held.alive());
        code.insert(digest.clone(), pre.downgrade());
        pre
    }

    fn code_map(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, WeakPre>> {
        // Inserts and removals only: a panic while holding the lock leaves the map usable.
        self.code
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Loads an artifact previously produced by `Component::serialize` on an engine with the
    /// same compatibility key as `wasi`'s.
    #[allow(unsafe_code)]
    pub fn load_artifact(&self, bytes: &[u8], wasi: Wasi) -> anyhow::Result<Component> {
        // SAFETY: `Component::deserialize` requires bytes produced by `serialize` of a
        // compatible engine and not modified since. Callers pass only artifacts read back from
        // the data directory (`Persist::read_artifact`), which (1) were written by
        // `Component::serialize` in this or an earlier handoff process, (2) carry this engine's
        // compatibility key (hash of the engine configuration and handoff/wasmtime version), so
        // any other build recompiles instead, and (3) are checked against the sha256 recorded
        // in the database when they were written, so a truncated or altered file is refused.
        // wasmtime also verifies its own header (version, target, settings) and fails cleanly
        // on a mismatch. The data directory must be as trusted as the binary itself.
        unsafe { Component::deserialize(&self.flavour(wasi).engine, bytes) }
            .map_err(|e| anyhow::anyhow!("loading a compiled artifact: {e:#}"))
    }

    /// Loads the artifact a compile worker ([`crate::compile`]) just produced for `wasi`.
    #[allow(unsafe_code)]
    pub fn load_compiled(&self, bytes: &[u8], wasi: Wasi) -> anyhow::Result<Component> {
        // SAFETY: `Component::deserialize` requires bytes produced by `serialize` of a
        // compatible engine and not modified since. Callers pass only the stdout of a compile
        // worker that exited successfully: this same binary (started through /proc/self/exe,
        // or the embedder's worker built from this crate), whose `worker_main` writes nothing
        // to stdout but `Component::serialize` of the component it compiled, on an engine built
        // by `compile_engine` with the settings `wasi`'s engine was built with (the pooling
        // allocator does not change compiled code). The bytes travel over a pipe only this
        // process and the worker hold. The worker runs no guest code, so the component being
        // compiled cannot influence what it writes beyond what Cranelift emits for it.
        // wasmtime checks its header (version, target, settings) and fails cleanly on a
        // mismatch.
        unsafe { Component::deserialize(&self.flavour(wasi).engine, bytes) }
            .map_err(anyhow::Error::from)
    }
}

/// An engine for compiling only, with the compile settings of [`Engine::new`]'s engine for
/// `wasi` at `opt_level`: what a compile worker uses. Its artifacts load into that engine.
pub fn compile_engine(opt_level: OptLevel, wasi: Wasi) -> wasmtime::Result<wasmtime::Engine> {
    wasmtime::Engine::new(&base_config(opt_level, wasi))
}

/// The settings that shape compiled code, shared by the server's engines and compile workers.
fn base_config(opt_level: OptLevel, wasi: Wasi) -> wasmtime::Config {
    let mut cfg = wasmtime::Config::new();
    cfg.epoch_interruption(true);
    cfg.cranelift_opt_level(opt_level.cranelift());
    match wasi {
        // `wasi:http/proxy` 0.2 components never run concurrently within a store: without the
        // component model's concurrency machinery, a call from the guest into the host makes
        // no host task (an allocation and table entries per call).
        Wasi::P2 => {
            cfg.concurrency_support(false);
        }
        // 0.3 handlers are lifted `async`, and one instance may serve several requests at once.
        Wasi::P3 => {
            cfg.concurrency_support(true);
            cfg.wasm_component_model_async(true);
        }
    }
    cfg
}

/// The linker of `wasi`'s components: full WASI 0.2, not just the proxy world (std-built guests
/// import `wasi:cli` and friends; the closed `WasiCtx` in `host.rs` keeps them sandboxed),
/// `wasi:http` and the key-value interfaces; for 0.3, also `wasi:http@0.3` and the 0.3 clocks,
/// random and cli (what `wasmtime serve` links for a service).
fn linker(engine: &wasmtime::Engine, wasi: Wasi) -> anyhow::Result<Linker<Host>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(|e| anyhow::anyhow!("linking WASI: {e}"))?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
        .map_err(|e| anyhow::anyhow!("linking wasi:http: {e}"))?;
    if wasi == Wasi::P3 {
        wasmtime_wasi_http::p3::add_to_linker(&mut linker)
            .map_err(|e| anyhow::anyhow!("linking wasi:http 0.3: {e}"))?;
        wasmtime_wasi::p3::clocks::add_to_linker(&mut linker)
            .and_then(|()| wasmtime_wasi::p3::random::add_to_linker(&mut linker))
            .and_then(|()| wasmtime_wasi::p3::cli::add_to_linker(&mut linker))
            .map_err(|e| anyhow::anyhow!("linking WASI 0.3: {e}"))?;
    }
    crate::host::add_to_linker(&mut linker, wasi == Wasi::P3)?;
    crate::kv::add_to_linker(&mut linker, Host::kv_view)?;
    Ok(linker)
}

/// `wasi`'s engine with the pooling allocator sized by `pool`, falling back to on-demand
/// allocation (with a warning) where the pool cannot be reserved, for example under a
/// `ulimit -v`. Says whether it pools.
fn wasmtime_engine(
    pool: &Pool,
    opt_level: OptLevel,
    wasi: Wasi,
) -> anyhow::Result<(wasmtime::Engine, bool)> {
    if pool.slots > 0 {
        match wasmtime::Engine::new(&wasmtime_config(pool, opt_level, wasi, true)) {
            Ok(engine) => return Ok((engine, true)),
            Err(error) => tracing::warn!(
                error = %error, wasi = %wasi,
                "the instance pool could not be reserved; allocating instances on demand"
            ),
        }
    }
    Ok((new_engine(pool, opt_level, wasi, false)?, false))
}

/// Threads per compile: one per core.
fn compile_threads() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

/// Why a component could not become a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompileError {
    /// Not valid WebAssembly, or rejected by the engine's validator or compiler.
    Invalid(String),
    /// It imports something the host does not provide.
    Unlinkable(String),
    /// It does not export `wasi:http/incoming-handler`.
    NoHandler(String),
    /// Compiling it took longer than the compile deadline.
    TooSlow(std::time::Duration),
    /// Compiling it needed more memory than the compile memory limit (bytes).
    TooMuchMemory(u64),
    /// The compiler could not be run, or failed for another reason.
    Failed(String),
}

fn new_engine(
    config: &Pool,
    opt_level: OptLevel,
    wasi: Wasi,
    pooling: bool,
) -> anyhow::Result<wasmtime::Engine> {
    wasmtime::Engine::new(&wasmtime_config(config, opt_level, wasi, pooling))
        .map_err(|e| anyhow::anyhow!("creating the wasmtime engine: {e}"))
}

fn wasmtime_config(
    config: &Pool,
    opt_level: OptLevel,
    wasi: Wasi,
    pooling: bool,
) -> wasmtime::Config {
    let mut cfg = base_config(opt_level, wasi);
    let stacks_per_slot = match wasi {
        Wasi::P2 => 1,
        Wasi::P3 => P3_STACKS_PER_SLOT,
    };
    if pooling {
        let slots = config.slots;
        let mut pool = PoolingAllocationConfig::default();
        // Per component: what real guests need, with room (measured with the guests the
        // limiter's constants name). A component over these counts is refused at deploy, so
        // one instance can never take more than its share of the pool; the limiter applies
        // the same counts per store without the pool, and caps the memories' total.
        pool.total_component_instances(slots)
            .total_core_instances(slots.saturating_mul(CORE_INSTANCES_PER_SLOT))
            .total_memories(slots.saturating_mul(2))
            .total_tables(slots.saturating_mul(4))
            .total_stacks(slots.saturating_mul(stacks_per_slot))
            .max_core_instances_per_component(limiter::MAX_CORE_INSTANCES as u32)
            .max_memories_per_component(limiter::MAX_MEMORIES as u32)
            .max_tables_per_component(limiter::MAX_TABLES as u32)
            .table_elements(limiter::MAX_TABLE_ELEMENTS)
            .max_memory_size(config.max_memory);
        // Without PAGEMAP_SCAN, keeping memory resident means a `memset` of its first bytes
        // whether written or not: the default (`madvise` everything) is kept there.
        if PoolingAllocationConfig::is_pagemap_scan_available() {
            pool.pagemap_scan(wasmtime::Enabled::Yes)
                .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT)
                .table_keep_resident(TABLE_KEEP_RESIDENT);
        }
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    cfg
}
