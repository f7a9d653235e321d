//! Deploy, rollback, activate, upload, delete and restore: upload → validate → compile →
//! pre-instantiate → persist → activate, and the reverse.
//!
//! Everything that can fail does so before the route table is touched, so a failed deploy
//! never disturbs what serves. The durable commit (module bytes and artifact fsynced, then one
//! database transaction) happens under the route table's writer lock, before the swap, so a
//! crash at any moment leaves each route on its old or its new version. Compiling, loading and
//! writing run on the blocking pool, never on the async threads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;

use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::Runtime;
use crate::compile::{self, CompileLimits};
use crate::engine::CompileError;
use crate::host::Host;
use crate::outbound::Outbound;
use crate::persist::{HistoryEntry, ModuleRecord, RouteRecord};
use crate::routes::{ActivateError, Commit, Prefix, Route, RouteName};
use crate::version::{Digest, Limits, RouteConfig, Settings, Version};

/// What a deploy did.
#[derive(Clone)]
pub struct Deployed {
    /// The route as it now stands.
    pub route: Route,
    /// The version it replaced, if any.
    pub previous: Option<Digest>,
    /// Whether the route's version or prefix changed (false: the same bytes were already active).
    pub changed: bool,
    /// Whether the route was new.
    pub created: bool,
    /// Compile and link time, when this deploy compiled.
    pub compile_time: Option<Duration>,
}

impl Deployed {
    /// A deploy that found `route` already serving what was asked.
    fn unchanged(route: Route) -> Self {
        Self {
            previous: Some(route.active.digest.clone()),
            route,
            changed: false,
            created: false,
            compile_time: None,
        }
    }
}

/// Why a deploy or delete was refused. Every message is a sentence a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The upload is not WebAssembly at all.
    #[error(
        "the upload is not a WebAssembly binary (it does not start with `\\0asm`); upload the `.wasm` file your build produced"
    )]
    NotWasm,
    /// A core module where a component is needed.
    #[error(
        "the upload is a core WebAssembly module, not a component; build for the `wasm32-wasip2` target, or wrap the module with `wasm-tools component new`"
    )]
    CoreModule,
    /// The engine rejected it.
    #[error("the component is invalid: {0}")]
    Invalid(String),
    /// It imports something handoff does not provide.
    #[error("the component cannot be linked: {0}. handoff provides WASI 0.2 and wasi:http 0.2")]
    Unlinkable(String),
    /// It has no HTTP handler.
    #[error(
        "the component does not export `wasi:http/incoming-handler` (the `wasi:http/proxy` world), so it cannot serve requests: {0}"
    )]
    NoHandler(String),
    /// Compiling it took longer than the compile deadline; the compile was stopped.
    #[error(
        "compiling the component took longer than the compile-timeout of {}; nothing changed. Upload a smaller component, or raise the limit (`compile-timeout=` on the deploy, up to the server's --compile-timeout)",
        crate::config::format_duration(*.0)
    )]
    CompileTimeout(Duration),
    /// Compiling it needed more memory than allowed; the compile was stopped.
    #[error(
        "compiling the component needed more than the compile-memory limit of {}; nothing changed. Upload a smaller component, or raise the limit (`compile-memory=` on the deploy, up to the server's --compile-memory)",
        crate::config::format_bytes(*.0)
    )]
    CompileMemory(u64),
    /// Another route serves the requested prefix.
    #[error(
        "the prefix `{prefix}` is already served by route `{owner}`; choose another prefix or delete that route first"
    )]
    PrefixTaken {
        /// The prefix asked for.
        prefix: String,
        /// The route that has it.
        owner: String,
    },
    /// No such route.
    #[error("there is no route named `{0}`")]
    UnknownRoute(String),
    /// No such version in the route's history or among uploaded modules.
    #[error("{0}")]
    UnknownVersion(String),
    /// A rollback with nothing to roll back to.
    #[error("route `{0}` has no earlier version to roll back to")]
    NothingToRollBackTo(String),
    /// A stored module can no longer be loaded.
    #[error("the stored module {0}; deploy it again")]
    ModuleUnavailable(String),
    /// It compiles but cannot be instantiated under the route's limits.
    #[error(
        "the component cannot be instantiated under this route's limits (max-memory, the instance pool's table size): {0}"
    )]
    Uninstantiable(String),
    /// A limit or setting asked for is out of range or unusable.
    #[error("{0}")]
    InvalidLimits(String),
    /// A host failure.
    #[error("the server failed while deploying; its log has the details")]
    Internal(String),
}

impl DeployError {
    /// The HTTP status this error is reported with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotWasm | Self::InvalidLimits(_) => StatusCode::BAD_REQUEST,
            Self::CoreModule
            | Self::Invalid(_)
            | Self::Unlinkable(_)
            | Self::NoHandler(_)
            | Self::CompileTimeout(_)
            | Self::CompileMemory(_)
            | Self::Uninstantiable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PrefixTaken { .. }
            | Self::NothingToRollBackTo(_)
            | Self::ModuleUnavailable(_) => StatusCode::CONFLICT,
            Self::UnknownRoute(_) | Self::UnknownVersion(_) => StatusCode::NOT_FOUND,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<CompileError> for DeployError {
    fn from(error: CompileError) -> Self {
        match error {
            CompileError::Invalid(e) => Self::Invalid(e),
            CompileError::Unlinkable(e) => Self::Unlinkable(e),
            CompileError::NoHandler(e) => Self::NoHandler(e),
            CompileError::TooSlow(limit) => Self::CompileTimeout(limit),
            CompileError::TooMuchMemory(limit) => Self::CompileMemory(limit),
            CompileError::Failed(e) => Self::Internal(format!("compiling: {e}")),
        }
    }
}

/// Checks the 8-byte preamble, so the common mistakes get a precise message.
fn check_preamble(bytes: &[u8]) -> Result<(), DeployError> {
    const MAGIC: &[u8; 4] = b"\0asm";
    const CORE_VERSION: [u8; 4] = [1, 0, 0, 0];
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(DeployError::NotWasm);
    }
    if bytes[4..8] == CORE_VERSION {
        return Err(DeployError::CoreModule);
    }
    Ok(())
}

/// What to deploy: the component's bytes and where and how it serves.
pub struct DeployRequest {
    /// The route to create or replace.
    pub name: RouteName,
    /// Its path prefix; `None` keeps the route's current one (`/{name}` for a new route).
    pub prefix: Option<Prefix>,
    /// Its configuration; `None` keeps the route's current one (none for a new route).
    pub config: Option<RouteConfig>,
    /// The component.
    pub bytes: Bytes,
    /// Who deploys (recorded in the history).
    pub by: String,
    /// An optional label for this version (`stable`, `v1.2.0`...), usable for rollback.
    pub label: Option<String>,
    /// An optional message recorded in the history.
    pub message: Option<String>,
    /// Limits to change for this route; the others keep their current (or default) values.
    pub limits: LimitOverrides,
    /// The route's outbound allow-list; `None` keeps the current one (none for a new route).
    pub outbound: Option<Outbound>,
    /// The directory (under `--guest-dirs`) to mount at `/data`; `None` keeps the current one,
    /// `""` unmounts.
    pub dir: Option<String>,
}

/// Per-route limits a deploy sets; `None` keeps the route's current value (the server's
/// default for a new route).
#[derive(Debug, Clone, Copy, Default)]
pub struct LimitOverrides {
    /// Linear-memory cap per instance.
    pub max_memory_bytes: Option<usize>,
    /// Deadline per request.
    pub request_timeout: Option<Duration>,
    /// Concurrent requests (0: no per-route limit).
    pub max_concurrency: Option<u32>,
    /// Request body limit (0: none).
    pub max_request_body: Option<u64>,
    /// Response body limit (0: none).
    pub max_response_body: Option<u64>,
    /// Compile deadline.
    pub compile_timeout: Option<Duration>,
    /// Compile memory limit.
    pub compile_memory: Option<u64>,
}

impl LimitOverrides {
    /// `base` with these overrides applied.
    pub fn apply(&self, base: Limits) -> Limits {
        Limits {
            max_memory_bytes: self.max_memory_bytes.unwrap_or(base.max_memory_bytes),
            request_timeout: self.request_timeout.unwrap_or(base.request_timeout),
            max_concurrency: self.max_concurrency.unwrap_or(base.max_concurrency),
            max_request_body: self.max_request_body.unwrap_or(base.max_request_body),
            max_response_body: self.max_response_body.unwrap_or(base.max_response_body),
            compile_timeout: self.compile_timeout.unwrap_or(base.compile_timeout),
            compile_memory: self.compile_memory.unwrap_or(base.compile_memory),
        }
    }
}

/// The settings route `name` runs with now: its active version's, else its stored ones, else
/// the server's defaults (no config, no outbound access).
fn route_settings(rt: &Runtime, name: &RouteName) -> Settings {
    if let Some(route) = rt.routes.snapshot().get(name) {
        return route.active.settings();
    }
    match stored_route(rt, name).ok().flatten() {
        Some(record) => stored_settings(rt, &record),
        None => Settings {
            config: Vec::new().into(),
            limits: rt.config.default_limits(),
            outbound: Vec::new().into(),
            dir: None,
        },
    }
}

/// The settings a stored route record describes (rules that no longer parse are dropped).
fn stored_settings(rt: &Runtime, record: &RouteRecord) -> Settings {
    let mut limits = record.limits.unwrap_or_else(|| rt.config.default_limits());
    // A server restarted with a smaller --max-memory caps the stored limit.
    limits.max_memory_bytes = limits
        .max_memory_bytes
        .min(usize::try_from(rt.config.max_memory_bytes).unwrap_or(usize::MAX));
    Settings {
        config: record.config.clone().into(),
        limits,
        outbound: crate::outbound::parse_rules(record.outbound.iter().map(String::as_str))
            .unwrap_or_else(|_| Vec::new().into()),
        dir: record.dir.as_deref().and_then(|name| match rt.config.guest_dir(name) {
            Ok(dir) => dir,
            Err(error) => {
                tracing::warn!(error = %error, "a route's stored directory is unusable; not mounted");
                None
            }
        }),
    }
}

/// Which version a rollback goes to.
#[derive(Debug, Clone)]
pub enum Target {
    /// The most recent history entry with a different version than the active one.
    Previous,
    /// A version by digest: from the route's history, or an uploaded module.
    Version(Digest),
    /// The most recent history entry with this label.
    Label(String),
}

/// Deploys a component to a route (creating it, or replacing its version). Returns once the new
/// version is compiled, pre-instantiated, durably committed and active.
pub async fn deploy(rt: &Arc<Runtime>, request: DeployRequest) -> Result<Deployed, DeployError> {
    let DeployRequest {
        name,
        prefix,
        config,
        bytes,
        by,
        label,
        message,
        limits,
        outbound,
        dir,
    } = request;
    check_preamble(&bytes)?;
    let base = route_settings(rt, &name);
    let settings = Settings {
        limits: limits.apply(base.limits),
        config: config.unwrap_or(base.config),
        outbound: outbound.unwrap_or(base.outbound),
        dir: match dir {
            Some(name) => rt
                .config
                .guest_dir(&name)
                .map_err(DeployError::InvalidLimits)?,
            None => base.dir,
        },
    };
    rt.config
        .check_limits(&settings.limits)
        .map_err(DeployError::InvalidLimits)?;
    let digest = Digest::of(&bytes);
    let current = rt.routes.snapshot().get(&name).cloned();
    let same_bytes = current.as_ref().filter(|r| r.active.digest == digest);
    let same_version = same_bytes.filter(|r| r.active.settings() == settings);
    if let Some(route) = same_version
        && prefix.as_ref().is_none_or(|p| *p == route.prefix)
    {
        tracing::info!(route = name.as_str(), version = %digest, "deploy unchanged: this version is already active");
        return Ok(Deployed::unchanged(route.clone()));
    }
    let _pending = rt.persist.pending(&digest);
    let stored = rt.persist.module(&digest).ok().flatten().is_some();
    let (pre, module, compile_time, size) = match same_bytes {
        // Same bytes (new config or prefix): the compiled component is reused.
        Some(route) => (
            route.active.pre.clone(),
            None,
            None,
            route.active.size_bytes,
        ),
        // Stored already (another route, or this route's history): load, don't compile.
        // If the stored copy is broken, the bytes in hand repair it below.
        None if stored
            && let Ok((pre, module, size)) =
                load_stored(rt, &digest, settings.limits.compile()).await =>
        {
            (pre, module, None, size)
        }
        None => {
            let size = bytes.len();
            let (pre, module, took) =
                compile_and_store(rt, &digest, bytes, false, settings.limits.compile()).await?;
            (pre, Some(module), Some(took), size)
        }
    };
    let version = new_version(&name, digest, pre, settings, size, compile_time);
    let history = History {
        action: "deploy",
        by,
        label,
        message,
    };
    activate_version(rt, &name, prefix, version, history, module, compile_time).await
}

/// Rolls route `name` back to `target`: the same atomic swap and drain as a deploy, loading the
/// stored artifact instead of compiling when it is on disk.
pub async fn rollback(
    rt: &Arc<Runtime>,
    name: &RouteName,
    target: Target,
    by: String,
) -> Result<Deployed, DeployError> {
    let record = stored_route(rt, name)?
        .ok_or_else(|| DeployError::UnknownRoute(name.as_str().to_owned()))?;
    let active = rt
        .routes
        .snapshot()
        .get(name)
        .map(|r| r.active.digest.to_string())
        .unwrap_or_else(|| record.active.clone());
    let entry = match &target {
        Target::Previous => record.history.iter().rev().find(|e| e.version != active),
        Target::Version(digest) => record
            .history
            .iter()
            .rev()
            .find(|e| e.version == digest.as_str()),
        Target::Label(label) => record
            .history
            .iter()
            .rev()
            .find(|e| e.label.as_deref() == Some(label)),
    };
    let (digest, config, label) = match (entry, &target) {
        (Some(e), _) => (parse_digest(&e.version)?, e.config.clone(), e.label.clone()),
        (None, Target::Previous) => {
            return Err(DeployError::NothingToRollBackTo(name.as_str().to_owned()));
        }
        (None, Target::Version(digest)) => {
            // Not in the history: an uploaded module, with the route's current config.
            (digest.clone(), record.config.clone(), None)
        }
        (None, Target::Label(label)) => {
            return Err(DeployError::UnknownVersion(format!(
                "route `{}` has no version labelled `{label}` in its history",
                name.as_str()
            )));
        }
    };
    let history = History {
        action: "rollback",
        by,
        label,
        message: None,
    };
    activate_stored(rt, name, None, digest, config.into(), history).await
}

/// Activates a stored module (uploaded with [`upload`], or in the history) on route `name`,
/// creating the route when it does not exist.
pub async fn activate(
    rt: &Arc<Runtime>,
    name: &RouteName,
    prefix: Option<Prefix>,
    digest: Digest,
    config: Option<RouteConfig>,
    by: String,
    label: Option<String>,
) -> Result<Deployed, DeployError> {
    let config = config
        .or_else(|| {
            rt.routes
                .snapshot()
                .get(name)
                .map(|r| r.active.config.clone())
        })
        .unwrap_or_else(|| Vec::new().into());
    let history = History {
        action: "activate",
        by,
        label,
        message: None,
    };
    activate_stored(rt, name, prefix, digest, config, history).await
}

/// What an upload stored.
pub struct Uploaded {
    /// The module's digest, to activate later.
    pub digest: Digest,
    /// Its size.
    pub size_bytes: usize,
    /// Compile time (`None` when it was already stored).
    pub compile_time: Option<Duration>,
}

/// Validates, compiles and stores a component without activating it; it stays pinned (safe
/// from garbage collection) until a route uses it.
pub async fn upload(rt: &Arc<Runtime>, bytes: Bytes) -> Result<Uploaded, DeployError> {
    check_preamble(&bytes)?;
    let digest = Digest::of(&bytes);
    let size_bytes = bytes.len();
    let _pending = rt.persist.pending(&digest);
    if let Ok(Some(_)) = rt.persist.module(&digest) {
        return Ok(Uploaded {
            digest,
            size_bytes,
            compile_time: None,
        });
    }
    let (_, module, took) = compile_and_store(
        rt,
        &digest,
        bytes,
        true,
        rt.config.default_limits().compile(),
    )
    .await?;
    let persist_rt = rt.clone();
    let commit_digest = digest.clone();
    tokio::task::spawn_blocking(move || {
        persist_rt
            .persist
            .commit(None, &[(&commit_digest, &module)])
    })
    .await
    .map_err(|e| DeployError::Internal(e.to_string()))?
    .map_err(|e| DeployError::Internal(format!("{e:#}")))?;
    tracing::info!(version = %digest, size_bytes, "module uploaded");
    Ok(Uploaded {
        digest,
        size_bytes,
        compile_time: Some(took),
    })
}

/// Deletes route `name`: stops routing to it at once, forgets it durably, drains its version in
/// the background.
pub async fn delete(rt: &Arc<Runtime>, name: &RouteName) -> Result<Route, DeployError> {
    let persist_rt = rt.clone();
    let key = name.as_str().to_owned();
    let commit: Commit = Box::new(move |_, _| {
        persist_rt
            .persist
            .commit(Some((&key, None)), &[])
            .map_err(|e| format!("{e:#}"))
    });
    let route = rt
        .routes
        .remove(name, Some(commit))
        .await
        .map_err(activate_error)?
        .ok_or_else(|| DeployError::UnknownRoute(name.as_str().to_owned()))?;
    tracing::info!(route = name.as_str(), version = %route.active.digest, "route deleted");
    rt.retire(name.clone(), route.active.clone());
    Ok(route)
}

/// The stored history of route `name`, oldest first.
pub fn history(rt: &Runtime, name: &RouteName) -> Result<RouteRecord, DeployError> {
    stored_route(rt, name)?.ok_or_else(|| DeployError::UnknownRoute(name.as_str().to_owned()))
}

/// What a restart restored.
#[derive(Debug, Default)]
pub struct Restored {
    /// Routes serving again.
    pub routes: usize,
    /// Of those, how many needed a recompile (artifact missing, corrupt or for another build).
    pub recompiled: usize,
    /// Routes that could not be restored, with the reason.
    pub failed: Vec<(String, String)>,
}

/// Restores every stored route, from precompiled artifacts where possible. A route whose
/// module is missing is reported and skipped; the others serve.
pub async fn restore(rt: &Arc<Runtime>) -> Restored {
    let mut report = Restored::default();
    let stored = match rt.persist.routes() {
        Ok(stored) => stored,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "the stored routes are unreadable");
            return report;
        }
    };
    for (name, record) in stored {
        let outcome = restore_route(rt, &name, &record).await;
        match outcome {
            Ok(recompiled) => {
                report.routes += 1;
                report.recompiled += usize::from(recompiled);
            }
            Err(reason) => {
                tracing::error!(route = %name, version = %record.active, error = %reason, "route not restored");
                rt.set_unavailable(&name, Some(reason.clone()));
                report.failed.push((name, reason));
            }
        }
    }
    report
}

async fn restore_route(
    rt: &Arc<Runtime>,
    name: &str,
    record: &RouteRecord,
) -> Result<bool, String> {
    let name = RouteName::parse(name)?;
    let prefix = Prefix::parse(&record.prefix)?;
    let digest = parse_digest(&record.active).map_err(|e| e.to_string())?;
    let _pending = rt.persist.pending(&digest);
    let settings = stored_settings(rt, record);
    let (pre, updated, size) = load_stored(rt, &digest, settings.limits.compile())
        .await
        .map_err(|e| e.to_string())?;
    let recompiled = updated.is_some();
    if let Some(module) = updated {
        let persist_rt = rt.clone();
        let d = digest.clone();
        let _ =
            tokio::task::spawn_blocking(move || persist_rt.persist.commit(None, &[(&d, &module)]))
                .await;
    }
    let version = new_version(&name, digest, pre, settings, size, None);
    rt.routes
        .activate(&name, Some(prefix), version, None)
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(recompiled)
}

/// How an activation is recorded in the route's history.
struct History {
    action: &'static str,
    by: String,
    label: Option<String>,
    message: Option<String>,
}

async fn activate_stored(
    rt: &Arc<Runtime>,
    name: &RouteName,
    prefix: Option<Prefix>,
    digest: Digest,
    config: RouteConfig,
    history: History,
) -> Result<Deployed, DeployError> {
    if let Some(route) = rt.routes.snapshot().get(name)
        && route.active.digest == digest
        && route.active.config == config
        && prefix.as_ref().is_none_or(|p| *p == route.prefix)
    {
        return Ok(Deployed::unchanged(route.clone()));
    }
    let settings = Settings {
        config,
        ..route_settings(rt, name)
    };
    let _pending = rt.persist.pending(&digest);
    let (pre, updated, size) = load_stored(rt, &digest, settings.limits.compile()).await?;
    let version = new_version(name, digest, pre, settings, size, None);
    activate_version(rt, name, prefix, version, history, updated, None).await
}

/// Swaps `version` in, committing the route record (and `module`, when given) durably first.
async fn activate_version(
    rt: &Arc<Runtime>,
    name: &RouteName,
    prefix: Option<Prefix>,
    version: Arc<Version>,
    history: History,
    module: Option<ModuleRecord>,
    compile_time: Option<Duration>,
) -> Result<Deployed, DeployError> {
    trial_instance(rt, &version).await?;
    let created = rt.routes.snapshot().get(name).is_none();
    let commit = commit_activation(rt, name, history, module);
    let (route, previous) = rt
        .routes
        .activate(name, prefix.clone(), version, Some(commit))
        .await
        .map_err(|error| match error {
            ActivateError::PrefixTaken { owner } => DeployError::PrefixTaken {
                prefix: prefix.map(|p| p.as_str().to_owned()).unwrap_or_default(),
                owner,
            },
            other => activate_error(other),
        })?;
    rt.set_unavailable(name.as_str(), None);
    tracing::info!(
        route = name.as_str(), prefix = route.prefix.as_str(), version = %route.active.digest,
        previous = previous.as_ref().map(|p| p.digest.as_str()),
        compile_ms = compile_time.map(|t| t.as_secs_f64() * 1e3),
        "version activated"
    );
    let previous_digest = previous.as_ref().map(|p| p.digest.clone());
    if let Some(old) = previous {
        rt.retire(name.clone(), old);
    }
    rt.collect_garbage();
    Ok(Deployed {
        route,
        previous: previous_digest,
        changed: true,
        created,
        compile_time,
    })
}

/// Instantiates `version` once, under its own limits, before it may serve: a component whose
/// instances cannot exist (a memory or table larger than its limits allow, a start function
/// that traps or never returns) is refused at deploy instead of failing every request.
async fn trial_instance(rt: &Runtime, version: &Arc<Version>) -> Result<(), DeployError> {
    let deadline = std::time::Instant::now() + version.limits.request_timeout.min(TRIAL_DEADLINE);
    let host = Host::new(version, &"/".into(), deadline, rt.config.outbound_private);
    let mut store = wasmtime::Store::new(rt.engine.wasmtime(), host);
    Host::install(&mut store);
    let trial = version.pre.instantiate_async(&mut store);
    match tokio::time::timeout(TRIAL_DEADLINE, trial).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) if error.is::<wasmtime::PoolConcurrencyLimitError>() => {
            // The pool is busy serving: that says nothing about this component.
            Ok(())
        }
        Ok(Err(error)) => Err(DeployError::Uninstantiable(format!("{error:#}"))),
        Err(_) => Err(DeployError::Uninstantiable(
            "instantiating it did not finish in time".into(),
        )),
    }
}

/// The longest a trial instantiation may take.
const TRIAL_DEADLINE: Duration = Duration::from_secs(10);

/// The durable half of an activation: the route record with a new history entry (trimmed to
/// the retention limit) and the module record, in one transaction.
fn commit_activation(
    rt: &Arc<Runtime>,
    name: &RouteName,
    history: History,
    module: Option<ModuleRecord>,
) -> Commit {
    let rt = rt.clone();
    let key = name.as_str().to_owned();
    Box::new(move |next, _previous| {
        let next = next.expect("an activation has a route");
        let version = &next.active;
        let mut record = rt
            .persist
            .route(&key)
            .map_err(|e| format!("{e:#}"))?
            .unwrap_or_else(|| RouteRecord {
                prefix: String::new(),
                active: String::new(),
                config: Vec::new(),
                history: Vec::new(),
                limits: None,
                outbound: Vec::new(),
                dir: None,
            });
        record.prefix = next.prefix.as_str().to_owned();
        record.active = version.digest.to_string();
        record.config = version.config.to_vec();
        record.limits = Some(version.limits);
        record.outbound = version.outbound.iter().map(ToString::to_string).collect();
        record.dir = version.dir.as_ref().map(|d| d.name.to_string());
        record.history.push(HistoryEntry {
            version: version.digest.to_string(),
            size_bytes: version.size_bytes as u64,
            activated_at_ms: unix_ms(),
            by: history.by,
            action: history.action.to_owned(),
            label: history.label,
            message: history.message,
            config: version.config.to_vec(),
        });
        let excess = record.history.len().saturating_sub(rt.config.history_limit);
        record.history.drain(..excess);
        let module = match module {
            Some(m) => Some(m),
            None => rt
                .persist
                .module(&version.digest)
                .map_err(|e| format!("{e:#}"))?,
        }
        .map(|mut m| {
            m.pinned = false;
            m
        });
        let modules: Vec<(&Digest, &ModuleRecord)> =
            module.iter().map(|m| (&version.digest, m)).collect();
        rt.persist
            .commit(Some((&key, Some(&record))), &modules)
            .map_err(|e| format!("{e:#}"))
    })
}

fn activate_error(error: ActivateError) -> DeployError {
    match error {
        ActivateError::PrefixTaken { owner } => DeployError::PrefixTaken {
            prefix: String::new(),
            owner,
        },
        ActivateError::Commit(e) => DeployError::Internal(format!("committing: {e}")),
    }
}

/// Compiles `bytes` (counted) under `limits`, links it, and stores the bytes and the artifact
/// durably.
async fn compile_and_store(
    rt: &Arc<Runtime>,
    digest: &Digest,
    bytes: Bytes,
    pinned: bool,
    limits: CompileLimits,
) -> Result<(ProxyPre<Host>, ModuleRecord, Duration), DeployError> {
    let _slot = rt
        .compile_slots
        .acquire()
        .await
        .map_err(|e| DeployError::Internal(e.to_string()))?;
    let started = Instant::now();
    let compiled = compile::compile(rt, &rt.config.compiler, bytes.clone(), limits)
        .await
        .inspect_err(
            |error| tracing::warn!(version = %digest, error = ?error, "compile refused"),
        )?;
    rt.count_compile();
    let worker = rt.clone();
    let digest = digest.clone();
    let (pre, module) = tokio::task::spawn_blocking(move || -> Result<_, DeployError> {
        let pre = worker.engine.link(&compiled.component)?;
        let module = store_module(&worker, &digest, &bytes, &compiled.artifact, pinned)?;
        Ok((pre, module))
    })
    .await
    .map_err(|e| DeployError::Internal(e.to_string()))??;
    let took = started.elapsed();
    tracing::info!(
        size_bytes = module.size_bytes,
        compile_ms = took.as_secs_f64() * 1e3,
        "component compiled"
    );
    Ok((pre, module, took))
}

/// Writes the module bytes and the compiled artifact; returns the record describing them.
fn store_module(
    rt: &Runtime,
    digest: &Digest,
    bytes: &[u8],
    artifact: &[u8],
    pinned: bool,
) -> Result<ModuleRecord, DeployError> {
    let storage = |e: anyhow::Error| DeployError::Internal(format!("storing the module: {e:#}"));
    rt.persist.save_module(digest, bytes).map_err(storage)?;
    let sha = rt
        .persist
        .save_artifact(digest, artifact)
        .map_err(storage)?;
    Ok(ModuleRecord {
        size_bytes: bytes.len() as u64,
        artifact_sha256: Some(sha),
        artifact_key: Some(rt.persist.engine_key().to_owned()),
        pinned,
    })
}

/// Loads a stored module: from its artifact when present and intact, else recompiled from
/// its bytes under `limits` (and the artifact rewritten). Returns the updated module record
/// when it recompiled, and the module's size.
async fn load_stored(
    rt: &Arc<Runtime>,
    digest: &Digest,
    limits: CompileLimits,
) -> Result<(ProxyPre<Host>, Option<ModuleRecord>, usize), DeployError> {
    let worker = rt.clone();
    let key = digest.clone();
    let loaded = tokio::task::spawn_blocking(move || -> Result<_, DeployError> {
        let record = worker
            .persist
            .module(&key)
            .map_err(|e| DeployError::Internal(format!("{e:#}")))?
            .ok_or_else(|| {
                DeployError::UnknownVersion(format!(
                    "no module {key} is stored; deploy or upload it first"
                ))
            })?;
        let loaded = worker
            .persist
            .read_artifact(&key, &record)
            .and_then(|bytes| {
                worker
                    .engine
                    .load_artifact(&bytes)
                    .map_err(|e| format!("{e:#}"))
            });
        match loaded {
            Ok(component) => {
                let pre = worker.engine.link(&component)?;
                Ok(Ok((pre, record.size_bytes as usize)))
            }
            Err(reason) => Ok(Err((record, reason))),
        }
    })
    .await
    .map_err(|e| DeployError::Internal(e.to_string()))??;
    let (record, reason) = match loaded {
        Ok((pre, size)) => return Ok((pre, None, size)),
        Err(unusable) => unusable,
    };
    tracing::warn!(version = %digest, reason = %reason, "artifact unusable; recompiling from the stored module");
    let reader = rt.clone();
    let key = digest.clone();
    let bytes = tokio::task::spawn_blocking(move || reader.persist.read_module(&key))
        .await
        .map_err(|e| DeployError::Internal(e.to_string()))?
        .map_err(|e| DeployError::ModuleUnavailable(format!("{digest} cannot be read: {e:#}")))?;
    let size = bytes.len();
    let (pre, module, _) =
        compile_and_store(rt, digest, Bytes::from(bytes), record.pinned, limits).await?;
    Ok((pre, Some(module), size))
}

fn new_version(
    name: &RouteName,
    digest: Digest,
    pre: ProxyPre<Host>,
    settings: Settings,
    size: usize,
    compile_time: Option<Duration>,
) -> Arc<Version> {
    Arc::new(Version::new(
        digest,
        name.shared(),
        pre,
        settings,
        size,
        compile_time.unwrap_or_default(),
    ))
}

fn stored_route(rt: &Runtime, name: &RouteName) -> Result<Option<RouteRecord>, DeployError> {
    rt.persist
        .route(name.as_str())
        .map_err(|e| DeployError::Internal(format!("{e:#}")))
}

/// Parses `sha256:<64 hex>`.
pub fn parse_digest(text: &str) -> Result<Digest, DeployError> {
    Digest::parse(text).ok_or_else(|| {
        DeployError::UnknownVersion(format!(
            "`{}` is not a version; versions look like sha256:<64 hex digits>",
            text.escape_debug()
        ))
    })
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_catches_common_mistakes() {
        assert!(matches!(check_preamble(b""), Err(DeployError::NotWasm)));
        assert!(matches!(
            check_preamble(b"<html>hello</html>"),
            Err(DeployError::NotWasm)
        ));
        assert!(matches!(
            check_preamble(b"\0asm\x01\0\0\0"),
            Err(DeployError::CoreModule)
        ));
        assert!(check_preamble(b"\0asm\x0d\0\x01\0").is_ok());
    }
}
