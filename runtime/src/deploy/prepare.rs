//! Turning bytes and records into versions, off the async threads: compile (in the compile
//! worker) or load a stored artifact, link and pre-instantiate, store the bytes and the
//! artifact, resolve a record's settings, and instantiate a new version once under its limits
//! before it may serve.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::error::{DeployError, internal};
use crate::compile::CompileLimits;
use crate::digest::Digest;
use crate::engine::{Pre, Wasi};
use crate::host::Host;
use crate::names::RouteName;
use crate::runtime::Runtime;
use crate::settings::{Limits, SettingsPatch};
use crate::state::{ModuleRecord, SettingsRecord};
use crate::version::{Settings, Version};

/// A linked, pre-instantiated component, ready to become versions.
#[derive(Clone)]
pub(crate) struct Built {
    /// Its digest.
    pub digest: Digest,
    /// The pre-instantiated component, shared by every version of it ([`Engine::shared_code`]).
    ///
    /// [`Engine::shared_code`]: crate::engine::Engine::shared_code
    pub pre: Pre,
    /// Size of its bytes.
    pub size: usize,
    /// Compile and link time, when it was compiled (not loaded).
    pub compile_time: Option<Duration>,
}

impl Built {
    /// The compiled code of a version that already exists.
    pub fn of(version: &Version) -> Self {
        Self {
            digest: version.digest.clone(),
            pre: version.pre.clone(),
            size: version.size_bytes,
            compile_time: None,
        }
    }
}

/// The component `bytes` (of `digest`), for a deploy to route `name`: the compiled code of a
/// version of the same bytes that serves already, else the stored artifact, else compiled now
/// under `limits`. Either way the bytes are stored (a damaged stored copy is replaced).
pub(crate) async fn ensure(
    rt: &Arc<Runtime>,
    name: &RouteName,
    digest: &Digest,
    bytes: Bytes,
    limits: CompileLimits,
) -> Result<Built, DeployError> {
    let live = rt.routes.snapshot().get(name).and_then(|route| {
        route
            .split()?
            .versions()
            .find(|(_, v, _)| v.digest == *digest)
            .map(|(_, v, _)| Built::of(v))
    });
    let stored = rt.state.module(digest).await.map_err(internal)?.is_some();
    let found = match live {
        Some(live) => Some(live),
        None if stored => load_stored(rt, digest, limits).await.ok(),
        None => None,
    };
    match found {
        Some(found) => {
            let files_rt = rt.clone();
            let digest = digest.clone();
            tokio::task::spawn_blocking(move || files_rt.files.save_module(&digest, &bytes))
                .await
                .map_err(internal)?
                .map_err(|e| DeployError::Internal(format!("storing the module: {e:#}")))?;
            Ok(found)
        }
        None => compile_and_store(rt, digest, bytes, limits).await,
    }
}

/// Compiles `bytes` under `limits` for the engine of its WASI ([`Wasi::of`]), links it, and
/// stores the bytes and the artifact durably.
pub(crate) async fn compile_and_store(
    rt: &Arc<Runtime>,
    digest: &Digest,
    bytes: Bytes,
    limits: CompileLimits,
) -> Result<Built, DeployError> {
    let started = Instant::now();
    let wasi = Wasi::of(&bytes);
    let compiled = rt
        .compiles
        .compile(&rt.engine, bytes.clone(), wasi, limits)
        .await
        .inspect_err(
            |error| tracing::warn!(version = %digest, error = ?error, "compile refused"),
        )?;
    let worker = rt.clone();
    let key = digest.clone();
    let size = bytes.len();
    let shared = digest.clone();
    let pre = tokio::task::spawn_blocking(move || -> Result<_, DeployError> {
        let pre = worker
            .engine
            .share_code(&shared, worker.engine.link(&compiled.component, wasi)?);
        let storing =
            |e: anyhow::Error| DeployError::Internal(format!("storing the module: {e:#}"));
        worker.files.save_module(&key, &bytes).map_err(storing)?;
        worker
            .files
            .save_artifact(&key, wasi, &compiled.artifact)
            .map_err(storing)?;
        Ok(pre)
    })
    .await
    .map_err(internal)??;
    let took = started.elapsed();
    tracing::info!(
        version = %digest,
        wasi = %wasi,
        size_bytes = size,
        compile_ms = took.as_secs_f64() * 1e3,
        "component compiled"
    );
    Ok(Built {
        digest: digest.clone(),
        pre,
        size,
        compile_time: Some(took),
    })
}

/// Loads a stored module: from its artifact when present and intact, else recompiled from its
/// bytes under `limits` (and the artifact rewritten).
pub(crate) async fn load_stored(
    rt: &Arc<Runtime>,
    digest: &Digest,
    limits: CompileLimits,
) -> Result<Built, DeployError> {
    let record = rt
        .state
        .module(digest)
        .await
        .map_err(internal)?
        .ok_or_else(|| {
            DeployError::UnknownVersion(format!(
                "no module {digest} is stored; deploy or upload it first"
            ))
        })?;
    if let Some(pre) = rt.engine.shared_code(digest) {
        return Ok(Built {
            digest: digest.clone(),
            pre,
            size: record.size_bytes as usize,
            compile_time: None,
        });
    }
    let worker = rt.clone();
    let key = digest.clone();
    let loaded = tokio::task::spawn_blocking(move || -> Result<_, DeployError> {
        let loaded = worker.files.read_artifact(&key).and_then(|(wasi, bytes)| {
            worker
                .engine
                .load_artifact(&bytes, wasi)
                .map(|component| (wasi, component))
                .map_err(|e| format!("{e:#}"))
        });
        match loaded {
            Ok((wasi, component)) => Ok(Ok(worker
                .engine
                .share_code(&key, worker.engine.link(&component, wasi)?))),
            Err(reason) => Ok(Err(reason)),
        }
    })
    .await
    .map_err(internal)??;
    let reason = match loaded {
        Ok(pre) => {
            return Ok(Built {
                digest: digest.clone(),
                pre,
                size: record.size_bytes as usize,
                compile_time: None,
            });
        }
        Err(reason) => reason,
    };
    tracing::info!(version = %digest, reason = %reason, "no usable artifact; compiling the stored module");
    let bytes = module_bytes(rt, digest).await?;
    compile_and_store(rt, digest, bytes, limits).await
}

/// The stored bytes of module `digest`: the data directory's copy, else (in a cluster) the
/// cluster's, which is then kept in the data directory.
pub(crate) async fn module_bytes(rt: &Arc<Runtime>, digest: &Digest) -> Result<Bytes, DeployError> {
    let reader = rt.clone();
    let key = digest.clone();
    let local = tokio::task::spawn_blocking(move || reader.files.read_module(&key))
        .await
        .map_err(internal)?;
    let error = match local {
        Ok(bytes) => return Ok(Bytes::from(bytes)),
        Err(error) => error,
    };
    let fetched = rt.state.fetch_bytes(digest).await.map_err(|e| {
        DeployError::ModuleUnavailable(format!(
            "{digest} cannot be fetched from the cluster: {e:#}"
        ))
    })?;
    let Some(bytes) = fetched else {
        return Err(DeployError::ModuleUnavailable(format!(
            "{digest} cannot be read: {error:#}"
        )));
    };
    let writer = rt.clone();
    let (key, copy) = (digest.clone(), bytes.clone());
    tokio::task::spawn_blocking(move || writer.files.save_module(&key, &copy))
        .await
        .map_err(internal)?
        .map_err(|e| DeployError::Internal(format!("storing the module: {e:#}")))?;
    tracing::info!(version = %digest, size_bytes = bytes.len(), "module fetched from the cluster");
    Ok(bytes)
}

/// Keeps `bytes` where every node of a cluster can fetch them (nothing to do on one node).
pub(crate) async fn share_bytes(
    rt: &Runtime,
    digest: &Digest,
    bytes: Bytes,
) -> Result<(), DeployError> {
    rt.state
        .store_bytes(digest, bytes)
        .await
        .map_err(|e| DeployError::ClusterUnavailable(format!("{e:#}")))
}

/// The limits `settings` give, or the server's defaults; a stored limit above what the server
/// now allows (it restarted with a smaller `--max-memory`) is capped.
pub(crate) fn route_limits(rt: &Runtime, settings: Option<&SettingsRecord>) -> Limits {
    let mut limits = settings.and_then(|s| s.limits).unwrap_or(rt.config.limits);
    limits.max_memory_bytes = limits
        .max_memory_bytes
        .min(rt.config.limits.max_memory_bytes);
    limits
}

/// Checks settings a change asks for, in a sentence.
pub(crate) fn check_settings(rt: &Runtime, settings: &SettingsRecord) -> Result<(), DeployError> {
    settings
        .limits
        .unwrap_or(rt.config.limits)
        .check(&rt.config.limits)
        .map_err(DeployError::InvalidLimits)?;
    if let Some(dir) = &settings.dir {
        rt.config
            .guest_dir(dir)
            .map_err(DeployError::InvalidLimits)?;
    }
    for name in &settings.kv {
        crate::kv::BucketName::shared(name).map_err(DeployError::InvalidLimits)?;
    }
    Ok(())
}

/// The settings `base` (a route's stored ones) with what a deploy's `patch` changes.
pub(crate) fn patched(
    rt: &Runtime,
    base: &SettingsRecord,
    patch: &SettingsPatch,
) -> SettingsRecord {
    SettingsRecord {
        config: patch
            .config
            .as_ref()
            .map_or_else(|| base.config.clone(), |c| c.to_vec()),
        limits: Some(patch.limits.apply(route_limits(rt, Some(base)))),
        outbound: patch.outbound.as_ref().map_or_else(
            || base.outbound.clone(),
            |rules| rules.iter().map(ToString::to_string).collect(),
        ),
        dir: match &patch.dir {
            Some(dir) if dir.is_empty() => None,
            Some(dir) => Some(dir.clone()),
            None => base.dir.clone(),
        },
        kv: patch.kv.clone().unwrap_or_else(|| base.kv.clone()),
    }
}

/// The runtime form of route `name`'s stored settings. Rules and directories that no longer
/// resolve (the server restarted with other `--guest-dirs`) are dropped with a warning.
pub(crate) fn settings_of(rt: &Runtime, name: &RouteName, record: &SettingsRecord) -> Settings {
    Settings {
        kv: rt.kv.grants(name, &record.kv),
        config: record.config.clone().into(),
        limits: route_limits(rt, Some(record)),
        outbound: crate::outbound::parse_rules(record.outbound.iter().map(String::as_str))
            .unwrap_or_else(|error| {
                tracing::warn!(error = %error, "a route's stored allow-list is unusable; denying all");
                Vec::new().into()
            }),
        dir: record.dir.as_deref().and_then(|name| match rt.config.guest_dir(name) {
            Ok(dir) => dir,
            Err(error) => {
                tracing::warn!(error = %error, "a route's stored directory is unusable; not mounted");
                None
            }
        }),
    }
}

/// Under `--signatures require`, checks that module `digest` was stored with a signature that
/// verifies against a key the server trusts now. Bytes this node lacks (another node of a
/// cluster uploaded the module) are fetched first, so every path that activates a stored
/// module (activate, a rollout's candidate, a shadow) checks the same way.
pub(crate) async fn check_stored_signature(
    rt: &Arc<Runtime>,
    digest: &Digest,
    module: &ModuleRecord,
) -> Result<(), DeployError> {
    use crate::signing::{self, Mode};
    if rt.config.signature_mode != Mode::Require {
        return Ok(());
    }
    let unsigned = || DeployError::Unsigned(digest.to_string());
    let signature = module.signature.as_deref().ok_or_else(unsigned)?;
    let bytes = module_bytes(rt, digest).await?;
    signing::signer(&rt.config.signing_keys, &bytes, signature)
        .map(drop)
        .ok_or_else(unsigned)
}

/// Instantiates `version` once, under its own limits, before it may serve: a component whose
/// instances cannot exist (a memory or table larger than its limits allow, a start function
/// that traps or never returns) is refused instead of failing every request.
pub(crate) async fn trial_instance(
    rt: &Runtime,
    version: &Arc<Version>,
) -> Result<(), DeployError> {
    let deadline = Instant::now() + version.limits.request_timeout.min(TRIAL_DEADLINE);
    let engine = rt.engine.wasmtime_for(version.pre.wasi());
    let mut store = Host::store(engine, &version.guest, &"/".into(), deadline);
    // A start function runs here: whatever it writes to the key-value store is discarded.
    store.data_mut().kv_scratch();
    let trial = async {
        match &version.pre {
            Pre::P2(pre) => pre.instantiate_async(&mut store).await.map(drop),
            Pre::P3(pre) => pre.instantiate_async(&mut store).await.map(drop),
        }
    };
    match tokio::time::timeout(TRIAL_DEADLINE, trial).await {
        Ok(Ok(())) => Ok(()),
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
