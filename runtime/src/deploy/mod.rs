//! Deploy, rollback, activate, upload and delete: what an operator asks for, turned into a
//! change of what serves.
//!
//! Each entry point here only *proposes*: it validates its input, compiles or loads the
//! component off the async threads (for a deploy of new bytes, before anything is locked), and
//! hands [`apply::change`] a planner that turns the route's current record into its next one.
//! [`apply`] is the one activation path: under the route's change lock it plans, builds the
//! versions the next record names (loaded, linked, trial-instantiated), records the change in
//! the state log, swaps it into the route table, retires what left, and collects garbage. A
//! restart ([`restore`]) applies the stored records through the same building and swapping.
//!
//! Everything that can fail does so before the route table is touched, so a failed change
//! never disturbs what serves; a change is durable before it is visible, so a crash at any
//! moment leaves each route on its old or its new version.

pub mod apply;
pub(crate) mod commit;
pub mod converged;
pub mod error;
pub mod gc;
pub mod notify;
pub mod prepare;
pub mod remote;
pub mod restore;
pub mod shadow;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::digest::Digest;
use crate::names::{Prefix, RouteName};
use crate::route::Route;
use crate::runtime::Runtime;
use crate::settings::SettingsPatch;
use crate::state::{HistoryEntry, ModuleRecord, RouteRecord, SettingsRecord};
use apply::{Current, Plan, Planned};

pub use crate::units::unix_ms;
pub use error::{DeployError, Deployed, parse_digest};
pub use restore::{Restored, restore};

pub(crate) use error::internal;

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
    /// The component.
    pub bytes: Bytes,
    /// The upload's signature (`Handoff-Signature`), kept with the module.
    pub signature: Option<String>,
    /// Who deploys (recorded in the history).
    pub by: String,
    /// An optional label for this version (`stable`, `v1.2.0`...), usable for rollback.
    pub label: Option<String>,
    /// An optional message recorded in the history.
    pub message: Option<String>,
    /// Its settings to change (config, limits, allow-list, directory, key-value grants); the
    /// others keep their current values (the server's defaults for a new route).
    pub settings: SettingsPatch,
    /// When the upload began and ended arriving (the deploy's `upload` phase in its trace).
    pub uploaded: Option<(std::time::SystemTime, std::time::SystemTime)>,
}

/// Which version a rollback goes to.
#[derive(Debug, Clone)]
pub enum Target {
    /// The most recent history entry that differs from what serves now (its version or its
    /// settings).
    Previous,
    /// A version by digest: from the route's history, or an uploaded module.
    Version(Digest),
    /// The most recent history entry with this label.
    Label(String),
}

/// How an activation is recorded in the route's history.
struct Activation {
    action: &'static str,
    by: String,
    label: Option<String>,
    message: Option<String>,
}

impl Activation {
    /// The history entry for `digest` of `size` bytes running with `settings`.
    fn entry(self, digest: &Digest, size: u64, settings: &SettingsRecord) -> HistoryEntry {
        HistoryEntry {
            version: digest.to_string(),
            size_bytes: size,
            activated_at_ms: unix_ms(),
            by: self.by,
            action: self.action.to_owned(),
            label: self.label,
            message: self.message,
            config: settings.config.clone(),
            limits: settings.limits,
            outbound: Some(settings.outbound.clone()),
            dir: settings.dir.clone(),
            kv: Some(settings.kv.clone()),
        }
    }
}

/// Deploys a component to a route (creating it, or replacing its version). Returns once the new
/// version is compiled, pre-instantiated, durably committed and active.
pub async fn deploy(rt: &Arc<Runtime>, request: DeployRequest) -> Result<Deployed, DeployError> {
    let route = vec![crate::trace::KeyValue::new(
        "handoff.route",
        request.name.as_str().to_owned(),
    )];
    let began = request.uploaded.map(|(began, _)| began);
    let deploying = deploy_now(rt, request);
    crate::trace::change_since(rt.trace.as_deref(), "deploy", began, route, deploying).await
}

/// [`deploy`], within its span.
async fn deploy_now(rt: &Arc<Runtime>, request: DeployRequest) -> Result<Deployed, DeployError> {
    let DeployRequest {
        name,
        prefix,
        bytes,
        signature,
        by,
        label,
        message,
        settings: patch,
        uploaded,
    } = request;
    if let Some((began, ended)) = uploaded {
        crate::trace::past_phase(rt.trace.as_deref(), "upload", began, ended);
    }
    check_preamble(&bytes)?;
    if let Some(dir) = &patch.dir {
        rt.config
            .guest_dir(dir)
            .map_err(DeployError::InvalidLimits)?;
    }
    let digest = Digest::of(&bytes);
    let _pending = rt.pending.hold(&digest);
    // Compile (or find) the component before taking the route's lock: a slow compile holds up
    // nothing. The compile limits are the route's as they stand now, with this deploy's.
    let stored = rt.state.route(&name).await.map_err(internal)?;
    let asked = patch.limits.apply(prepare::route_limits(
        rt,
        stored.as_ref().map(|s| &s.record.settings),
    ));
    asked
        .check(&rt.config.limits)
        .map_err(DeployError::InvalidLimits)?;
    let compile_limits = asked.compile();
    crate::trace::annotate(|| {
        vec![crate::trace::KeyValue::new(
            "handoff.version",
            digest.to_string(),
        )]
    });
    let compiling = prepare::ensure(rt, &name, &digest, bytes.clone(), compile_limits);
    let built = crate::trace::phase(rt.trace.as_deref(), "compile", compiling).await?;
    // Asking for shared instances of a component that cannot share them is a mistake to name;
    // a value carried over from the route's earlier 0.3 versions is kept for them and ignored
    // by this one (`Version::new`).
    if let Some(concurrency) = patch.limits.instance_concurrency.filter(|n| *n > 1)
        && built.pre.wasi() == crate::engine::Wasi::P2
    {
        return Err(DeployError::InvalidLimits(format!(
            "instance-concurrency is {concurrency}, but {} is a WASI 0.2 component, whose instances serve one request at a time; leave instance-concurrency out (or set it to 1), or deploy a WASI 0.3 `wasi:http/service` component",
            digest.short()
        )));
    }
    // Every node must be able to fetch the bytes before a record references them.
    prepare::share_bytes(rt, &digest, bytes).await?;
    let compile_time = built.compile_time;
    let applied = apply::change(rt, &name, async |current: Current| {
        current.refuse_during_rollout()?;
        let settings = prepare::patched(rt, &current.settings(), &patch);
        prepare::check_settings(rt, &settings)?;
        let prefix = prefix
            .or_else(|| current.prefix())
            .unwrap_or_else(|| Prefix::for_route(&name));
        if current.serves(&digest, &settings, &prefix) {
            tracing::info!(route = name.as_str(), version = %digest, "deploy unchanged: this version is already active");
            return Ok(Planned::Unchanged);
        }
        let module = ModuleRecord {
            size_bytes: built.size as u64,
            pinned: false,
            signature: signature.or(current.signature_of(rt, &digest).await?),
        };
        let entry = Activation {
            action: "deploy",
            by,
            label,
            message,
        }
        .entry(&digest, module.size_bytes, &settings);
        Ok(Planned::Change(Box::new(Plan {
            next: Some(current.next(rt, &prefix, &digest, settings, entry)),
            modules: vec![(digest.clone(), module)],
            built: vec![built],
        })))
    })
    .await?;
    Ok(applied.deployed(compile_time))
}

/// Rolls route `name` back to `target`: the same atomic swap and drain as a deploy, loading the
/// stored artifact instead of compiling when it is on disk.
pub async fn rollback(
    rt: &Arc<Runtime>,
    name: &RouteName,
    target: Target,
    by: String,
) -> Result<Deployed, DeployError> {
    let route = vec![crate::trace::KeyValue::new(
        "handoff.route",
        name.as_str().to_owned(),
    )];
    crate::trace::change(
        rt.trace.as_deref(),
        "rollback",
        route,
        rollback_now(rt, name, target, by),
    )
    .await
}

/// [`rollback`], within its span.
async fn rollback_now(
    rt: &Arc<Runtime>,
    name: &RouteName,
    target: Target,
    by: String,
) -> Result<Deployed, DeployError> {
    let applied = apply::change(rt, name, async |current: Current| {
        let record = current
            .stored()
            .ok_or_else(|| DeployError::UnknownRoute(name.as_str().to_owned()))?;
        current.refuse_during_rollout()?;
        let entry = match &target {
            Target::Previous => record.history.iter().rev().find(|e| {
                e.version != record.active || e.settings(&record.settings) != record.settings
            }),
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
        let (digest, settings, label) = match (entry, &target) {
            (Some(e), _) => (
                parse_digest(&e.version)?,
                e.settings(&record.settings),
                e.label.clone(),
            ),
            (None, Target::Previous) => {
                return Err(DeployError::NothingToRollBackTo(name.as_str().to_owned()));
            }
            // Not in the history: an uploaded module, with the route's current settings.
            (None, Target::Version(digest)) => (digest.clone(), record.settings.clone(), None),
            (None, Target::Label(label)) => {
                return Err(DeployError::UnknownVersion(format!(
                    "route `{}` has no version labelled `{label}` in its history",
                    name.as_str()
                )));
            }
        };
        let activation = Activation {
            action: "rollback",
            by,
            label,
            message: None,
        };
        activate_stored(rt, &current, None, digest, settings, activation).await
    })
    .await?;
    Ok(applied.deployed(None))
}

/// Activates a stored module (uploaded with [`upload`], or in the history) on route `name`,
/// creating the route when it does not exist. The route keeps its settings (a new route gets
/// the server's defaults).
pub async fn activate(
    rt: &Arc<Runtime>,
    name: &RouteName,
    prefix: Option<Prefix>,
    digest: Digest,
    by: String,
    label: Option<String>,
) -> Result<Deployed, DeployError> {
    let attributes = vec![
        crate::trace::KeyValue::new("handoff.route", name.as_str().to_owned()),
        crate::trace::KeyValue::new("handoff.version", digest.to_string()),
    ];
    let activating = activate_now(rt, name, prefix, digest, by, label);
    crate::trace::change(rt.trace.as_deref(), "activate", attributes, activating).await
}

/// [`activate`], within its span.
async fn activate_now(
    rt: &Arc<Runtime>,
    name: &RouteName,
    prefix: Option<Prefix>,
    digest: Digest,
    by: String,
    label: Option<String>,
) -> Result<Deployed, DeployError> {
    let applied = apply::change(rt, name, async |current: Current| {
        current.refuse_during_rollout()?;
        let settings = current.settings();
        let activation = Activation {
            action: "activate",
            by,
            label,
            message: None,
        };
        activate_stored(rt, &current, prefix, digest, settings, activation).await
    })
    .await?;
    Ok(applied.deployed(None))
}

/// Plans serving the stored module `digest` with `settings` on the route `current` describes.
async fn activate_stored(
    rt: &Arc<Runtime>,
    current: &Current<'_>,
    prefix: Option<Prefix>,
    digest: Digest,
    settings: SettingsRecord,
    activation: Activation,
) -> Result<Planned, DeployError> {
    prepare::check_settings(rt, &settings)?;
    let prefix = prefix
        .or_else(|| current.prefix())
        .unwrap_or_else(|| Prefix::for_route(current.name()));
    if current.serves(&digest, &settings, &prefix) {
        return Ok(Planned::Unchanged);
    }
    let mut module = rt
        .state
        .module(&digest)
        .await
        .map_err(internal)?
        .ok_or_else(|| {
            DeployError::UnknownVersion(format!(
                "no module {digest} is stored; deploy or upload it first"
            ))
        })?;
    prepare::check_stored_signature(rt, &digest, &module).await?;
    module.pinned = false;
    let entry = activation.entry(&digest, module.size_bytes, &settings);
    Ok(Planned::Change(Box::new(Plan {
        next: Some(current.next(rt, &prefix, &digest, settings, entry)),
        modules: vec![(digest, module)],
        built: Vec::new(),
    })))
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
/// from garbage collection) until a route activates it or it is deleted. Uploading bytes that
/// are already stored pins them too.
pub async fn upload(
    rt: &Arc<Runtime>,
    bytes: Bytes,
    signature: Option<String>,
) -> Result<Uploaded, DeployError> {
    crate::trace::change(
        rt.trace.as_deref(),
        "upload",
        Vec::new(),
        upload_now(rt, bytes, signature),
    )
    .await
}

/// [`upload`], within its span.
async fn upload_now(
    rt: &Arc<Runtime>,
    bytes: Bytes,
    signature: Option<String>,
) -> Result<Uploaded, DeployError> {
    check_preamble(&bytes)?;
    let digest = Digest::of(&bytes);
    let size_bytes = bytes.len();
    let _pending = rt.pending.hold(&digest);
    let stored = rt.state.module(&digest).await.map_err(internal)?;
    let compile_time = match &stored {
        Some(_) => {
            // Repair the stored bytes if they were damaged; the artifact is checked on load.
            let files_rt = rt.clone();
            let (d, b) = (digest.clone(), bytes.clone());
            tokio::task::spawn_blocking(move || files_rt.files.save_module(&d, &b))
                .await
                .map_err(internal)?
                .map_err(internal)?;
            None
        }
        None => {
            let limits = rt.config.limits.compile();
            Some(
                prepare::compile_and_store(rt, &digest, bytes.clone(), limits)
                    .await?
                    .compile_time,
            )
        }
    };
    prepare::share_bytes(rt, &digest, bytes).await?;
    let record = ModuleRecord {
        size_bytes: size_bytes as u64,
        pinned: true,
        signature: signature.or(stored.and_then(|s| s.signature)),
    };
    rt.state
        .put_modules(vec![(digest.clone(), record)])
        .await
        .map_err(internal)?;
    tracing::info!(version = %digest, size_bytes, "module uploaded");
    Ok(Uploaded {
        digest,
        size_bytes,
        compile_time: compile_time.flatten(),
    })
}

/// Deletes route `name`: stops routing to it at once, forgets it durably, drains its versions
/// in the background. An unavailable route (stored, but its module could not be loaded) is
/// deleted the same way. Returns the route as it stood, and the revision of the delete.
pub async fn delete(rt: &Arc<Runtime>, name: &RouteName) -> Result<(Route, u64), DeployError> {
    let route = vec![crate::trace::KeyValue::new(
        "handoff.route",
        name.as_str().to_owned(),
    )];
    crate::trace::change(rt.trace.as_deref(), "delete", route, delete_now(rt, name)).await
}

/// [`delete`], within its span.
async fn delete_now(rt: &Arc<Runtime>, name: &RouteName) -> Result<(Route, u64), DeployError> {
    let applied = apply::change(rt, name, async |current: Current| {
        if current.stored().is_none() && current.live().is_none() {
            return Err(DeployError::UnknownRoute(name.as_str().to_owned()));
        }
        Ok(Planned::Change(Box::new(Plan {
            next: None,
            modules: Vec::new(),
            built: Vec::new(),
        })))
    })
    .await?;
    let revision = applied.revision;
    let route = applied
        .previous
        .ok_or_else(|| DeployError::UnknownRoute(name.as_str().to_owned()))?;
    tracing::info!(route = name.as_str(), "route deleted");
    Ok((route, revision))
}

/// The stored history of route `name`, oldest first.
pub async fn history(rt: &Runtime, name: &RouteName) -> Result<RouteRecord, DeployError> {
    rt.state
        .route(name)
        .await
        .map_err(internal)?
        .map(|stored| stored.record)
        .ok_or_else(|| DeployError::UnknownRoute(name.as_str().to_owned()))
}

/// A stored module and the routes that use it.
pub struct StoredModule {
    /// Its digest.
    pub digest: Digest,
    /// Its record.
    pub record: ModuleRecord,
    /// Routes that serve it or keep it in their history.
    pub used_by: Vec<String>,
}

/// Every stored module, with the routes that use it.
pub async fn modules(rt: &Runtime) -> Result<Vec<StoredModule>, DeployError> {
    let routes = rt.state.routes().await.map_err(internal)?;
    let modules = rt.state.modules().await.map_err(internal)?;
    Ok(modules
        .into_iter()
        .map(|(digest, record)| StoredModule {
            used_by: routes
                .iter()
                .filter(|r| r.record.references().any(|d| d == digest.as_str()))
                .map(|r| r.name.as_str().to_owned())
                .collect(),
            digest,
            record,
        })
        .collect())
}

/// Deletes a stored module that no route uses (neither serving it nor in its history).
pub async fn delete_module(rt: &Arc<Runtime>, digest: &Digest) -> Result<(), DeployError> {
    let _pending = rt.pending.hold(digest);
    if rt.state.module(digest).await.map_err(internal)?.is_none() {
        return Err(DeployError::UnknownVersion(format!(
            "no module {digest} is stored"
        )));
    }
    if let Some(user) = modules(rt)
        .await?
        .into_iter()
        .find(|m| m.digest == *digest)
        .and_then(|m| m.used_by.into_iter().next())
    {
        return Err(DeployError::ModuleInUse(digest.to_string(), user));
    }
    if gc::in_use(rt).contains(digest) {
        return Err(DeployError::ModuleInUse(
            digest.to_string(),
            "(a version still draining)".into(),
        ));
    }
    if !rt.state.remove_module(digest).await.map_err(internal)? {
        return Err(DeployError::ModuleInUse(
            digest.to_string(),
            "(another route, just now)".into(),
        ));
    }
    drop(_pending);
    tracing::info!(version = %digest, "module deleted");
    gc::collect(rt);
    Ok(())
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
