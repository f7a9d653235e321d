//! The one activation path of a change made on this node. Every change to what a route serves
//! (deploy, rollback, activate, delete, a rollout's start, steps and end, a shadow started or
//! stopped) goes through [`change`]:
//!
//! 1. **lock** the route's change lock (other routes change meanwhile);
//! 2. **plan**: read the route's stored record and what serves it now, and let the caller's
//!    planner turn them into the next record (or decide nothing changes);
//! 3. **build** every version the next record names that is not serving already: load its
//!    artifact (or recompile it), link, pre-instantiate, and instantiate it once under its
//!    limits; reuse what serves where digest and settings match;
//! 4. **record** the change in the state log (durable), under the route table's writer, after
//!    checking the prefix is free;
//! 5. **commit** ([`super::commit`], the tail every change shares, a restart's and another
//!    node's too): publish the new route into the table, announce it, retire every version
//!    that left (it drains in the background), collect garbage.
//!
//! Steps 1-3 may fail and change nothing; from step 4 on the change is durable and is applied
//! whole. A restart runs steps 3 and 5 for every stored record (see [`super::restore`]), and
//! another node's change steps 1, 3 and 5 ([`super::remote`]).

use std::sync::Arc;

use super::commit::{Commit, Source};
use super::error::{DeployError, Deployed, internal, parse_digest};
use super::prepare::{self, Built};
use crate::digest::Digest;
use crate::names::{Prefix, RouteName};
use crate::route::{Candidate, Route, Serving, Shadow, Split, Sticky, Weight};
use crate::runtime::Runtime;
use crate::state::{AppendError, Change, ModuleRecord, RouteRecord, SettingsRecord};
use crate::version::Version;

/// What a change will do, as its planner decided it.
pub(crate) struct Plan {
    /// The route as it will stand; `None` deletes it.
    pub next: Option<RouteRecord>,
    /// Module records written with the change.
    pub modules: Vec<(Digest, ModuleRecord)>,
    /// Components already compiled or loaded for this change (a deploy's new bytes).
    pub built: Vec<Built>,
}

/// A planner's decision.
pub(crate) enum Planned {
    /// What was asked for already serves.
    Unchanged,
    /// This change.
    Change(Box<Plan>),
}

/// What a planner sees: the route as stored and as serving.
pub(crate) struct Current<'a> {
    name: &'a RouteName,
    stored: Option<&'a RouteRecord>,
    live: Option<&'a Route>,
}

impl Current<'_> {
    /// The route's name.
    pub fn name(&self) -> &RouteName {
        self.name
    }

    /// The stored record, if the route exists.
    pub fn stored(&self) -> Option<&RouteRecord> {
        self.stored
    }

    /// The route as it serves now, if it is in the table.
    pub fn live(&self) -> Option<&Route> {
        self.live
    }

    /// Refuses a change that would replace the stable version while a rollout runs.
    pub fn refuse_during_rollout(&self) -> Result<(), DeployError> {
        match self.stored.and_then(|r| r.rollout.as_ref()) {
            Some(rollout) if rollout.state.is_live() => Err(DeployError::RolloutRunning {
                route: self.name.as_str().to_owned(),
                candidate: rollout.candidate.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// The stable version's settings (none for a new route).
    pub fn settings(&self) -> SettingsRecord {
        self.stored.map(|r| r.settings.clone()).unwrap_or_default()
    }

    /// The route's prefix, if it has one.
    pub fn prefix(&self) -> Option<Prefix> {
        self.stored
            .and_then(|r| Prefix::parse(&r.prefix).ok())
            .or_else(|| self.live.map(|r| r.prefix.clone()))
    }

    /// Whether the route already serves exactly `digest` with `settings` at `prefix` as its
    /// only split (a shadow may run beside it).
    pub fn serves(&self, digest: &Digest, settings: &SettingsRecord, prefix: &Prefix) -> bool {
        let stored = self.stored.is_some_and(|r| {
            r.active == digest.as_str()
                && r.settings == *settings
                && r.prefix == prefix.as_str()
                && r.candidate.is_none()
        });
        let live = self
            .live
            .and_then(Route::split)
            .is_some_and(|s| s.stable.digest == *digest && s.candidate.is_none());
        stored && live
    }

    /// The signature stored with module `digest`, if any.
    pub async fn signature_of(
        &self,
        rt: &Runtime,
        digest: &Digest,
    ) -> Result<Option<String>, DeployError> {
        Ok(rt
            .state
            .module(digest)
            .await
            .map_err(internal)?
            .and_then(|m| m.signature))
    }

    /// The next record: `digest` with `settings` at `prefix` as the stable version and no
    /// candidate (a shadow stays), `entry` added to the history (trimmed to the retention
    /// limit).
    pub fn next(
        &self,
        rt: &Runtime,
        prefix: &Prefix,
        digest: &Digest,
        settings: SettingsRecord,
        entry: crate::state::HistoryEntry,
    ) -> RouteRecord {
        let mut history = self.stored.map(|r| r.history.clone()).unwrap_or_default();
        history.push(entry);
        let excess = history.len().saturating_sub(rt.config.history_limit);
        history.drain(..excess);
        RouteRecord {
            prefix: prefix.as_str().to_owned(),
            active: digest.to_string(),
            settings,
            candidate: None,
            shadow: self.stored.and_then(|r| r.shadow.clone()),
            rollout: None,
            history,
            revision: self.stored.map_or(0, |r| r.revision),
            trace: None,
        }
    }
}

/// What a change did.
pub(crate) struct Applied {
    /// The route as it stands now (`None` after a delete).
    pub route: Option<Route>,
    /// The route as it stood before.
    pub previous: Option<Route>,
    /// Whether the route was new.
    pub created: bool,
    /// Whether anything changed.
    pub changed: bool,
    /// The route's revision after the change (its revision before, when nothing changed).
    pub revision: u64,
}

impl Applied {
    /// As a deploy's answer. Call it only for changes that leave the route in place.
    pub fn deployed(self, compile_time: Option<std::time::Duration>) -> Deployed {
        let route = self.route.expect("the change leaves the route in place");
        let previous = match self.changed {
            true => self.previous.as_ref().and_then(Route::stable),
            false => route.stable(),
        }
        .map(|v| v.digest.clone());
        Deployed {
            route,
            previous,
            changed: self.changed,
            created: self.created,
            compile_time,
        }
    }
}

/// Whatever path planned `record` (a deploy, a rollout's promotion or rollback), its history
/// keeps the retention limit (`--history`), and the entries it added carry their version's
/// size.
async fn complete_history(rt: &Runtime, record: &mut RouteRecord) -> Result<(), DeployError> {
    let excess = record
        .history
        .len()
        .saturating_sub(rt.config.history_limit.max(1));
    record.history.drain(..excess);
    for entry in record.history.iter_mut().filter(|e| e.size_bytes == 0) {
        let Some(digest) = Digest::parse(&entry.version) else {
            continue;
        };
        if let Some(module) = rt.state.module(&digest).await.map_err(internal)? {
            entry.size_bytes = module.size_bytes;
        }
    }
    Ok(())
}

/// Changes route `name` as `plan` decides, through the steps in this module's header.
pub(crate) async fn change<F>(
    rt: &Arc<Runtime>,
    name: &RouteName,
    plan: F,
) -> Result<Applied, DeployError>
where
    F: for<'c> AsyncFnOnce(Current<'c>) -> Result<Planned, DeployError>,
{
    // Whether the route had state here before this change: if not, and the change fails, what
    // taking its lock created goes again, even when the state log could not say whether the
    // route exists (a failed read: a JetStream timeout, a disk error).
    let had_state = rt.registry.get(name).is_some();
    let guard = rt.registry.lock(name).await;
    let live = rt.routes.snapshot().get(name).cloned();
    let (applied, unknown) = match rt.state.route(name).await {
        Ok(stored) => {
            let unknown = stored.is_none() && live.is_none();
            (
                change_locked(rt, name, &guard, stored, live, plan).await,
                unknown,
            )
        }
        Err(error) => (Err(internal(error)), !had_state && live.is_none()),
    };
    if applied.is_err() && unknown {
        // A failed change to a route that does not exist leaves nothing behind: no route
        // state, no bucket handle.
        rt.registry.forget(name);
        rt.kv.forget_route(name);
    }
    drop(guard);
    applied
}

/// [`change`]'s steps under the route's change lock.
async fn change_locked<F>(
    rt: &Arc<Runtime>,
    name: &RouteName,
    guard: &crate::route::state::ChangeGuard,
    stored: Option<crate::state::Stored>,
    live: Option<Route>,
    plan: F,
) -> Result<Applied, DeployError>
where
    F: for<'c> AsyncFnOnce(Current<'c>) -> Result<Planned, DeployError>,
{
    let current = Current {
        name,
        stored: stored.as_ref().map(|s| &s.record),
        live: live.as_ref(),
    };
    let plan = match plan(current).await? {
        Planned::Unchanged => {
            return Ok(Applied {
                route: live.clone(),
                previous: live,
                created: false,
                changed: false,
                revision: stored.as_ref().map_or(0, |s| s.record.revision),
            });
        }
        Planned::Change(plan) => *plan,
    };
    let mut plan = plan;
    if let Some(record) = plan.next.as_mut() {
        complete_history(rt, record).await?;
        // Whatever planned it, the record names the change that wrote it (if traced), not
        // an earlier one it was copied from.
        record.trace = crate::trace::origin();
    }
    let next = match &plan.next {
        Some(record) => {
            let prefix = Prefix::parse(&record.prefix).map_err(internal)?;
            let building = build(rt, name, record, live.as_ref(), &plan.built);
            let split = crate::trace::phase(rt.trace.as_deref(), "build", building).await?;
            Some((prefix, split))
        }
        None => None,
    };
    let writer = rt.routes.writer().await;
    if let Some((prefix, _)) = &next
        && let Some(owner) = writer.prefix_owner(name, prefix)
    {
        return Err(DeployError::PrefixTaken {
            prefix: prefix.as_str().to_owned(),
            owner: owner.as_str().to_owned(),
        });
    }
    let change = Change {
        route: name.clone(),
        base: stored.as_ref().map_or(0, |s| s.record.revision),
        next: plan.next.clone(),
        modules: plan.modules,
    };
    let recording = rt.state.append(change);
    let recorded = crate::trace::phase(rt.trace.as_deref(), "record", recording).await;
    let revision = recorded.map_err(|error| match error {
        AppendError::Conflict { route, .. } => DeployError::Conflict(route),
        AppendError::PrefixTaken { prefix, owner } => DeployError::PrefixTaken { prefix, owner },
        AppendError::Failed(error) => DeployError::Internal(format!("committing: {error:#}")),
    })?;
    let route = next.map(|(prefix, split)| {
        let mut record = plan.next.clone().expect("a route that stays has a record");
        record.revision = revision;
        Route {
            name: name.clone(),
            prefix,
            serving: Serving::Live(split),
            state: guard.state.clone(),
            record: Arc::new(record),
        }
    });
    let commit = Commit {
        name,
        live: live.as_ref(),
        before: stored.as_ref().map(|s| &s.record),
        built: &plan.built,
        source: match crate::events::actor().as_deref() {
            Some(crate::events::CONTROLLER) => Source::Controller,
            _ => Source::Local,
        },
    };
    // The prefix was checked above under this writer: nothing can hold it now.
    let route = super::commit::commit(rt, writer, commit, route)
        .await
        .map_err(|held| DeployError::PrefixTaken {
            prefix: plan
                .next
                .as_ref()
                .map(|r| r.prefix.clone())
                .unwrap_or_default(),
            owner: held.holder.as_str().to_owned(),
        })?;
    Ok(Applied {
        route,
        previous: live,
        created: stored.is_none(),
        changed: true,
        revision,
    })
}

/// Builds the versions `record` names into a split, reusing what serves `live` where digest
/// and settings match (the same `Arc`), and the compiled code of any version of the same
/// digest that serves or drains. Nothing here touches the table.
pub(crate) async fn build(
    rt: &Arc<Runtime>,
    name: &RouteName,
    record: &RouteRecord,
    live: Option<&Route>,
    built: &[Built],
) -> Result<Split, DeployError> {
    let serving: Vec<Arc<Version>> = live
        .and_then(Route::split)
        .map(|s| s.versions().map(|(_, v, _)| v.clone()).collect())
        .unwrap_or_default();
    let draining: Vec<Arc<Version>> = rt
        .draining()
        .into_iter()
        .filter(|d| d.route == *name)
        .map(|d| d.version)
        .collect();
    let reuse = Reuse {
        serving: &serving,
        draining: &draining,
        built,
    };
    let stable = version(rt, name, &record.active, &record.settings, &reuse).await?;
    // A rollout in waves gives the candidate its weight only on the nodes it has reached.
    let node = rt.cluster.as_ref().map(|c| c.node_name());
    let candidate = match &record.candidate {
        Some(c) => Some(Candidate {
            version: version(rt, name, &c.version, &c.settings, &reuse).await?,
            weight: Weight::from_percent(
                record
                    .rollout
                    .as_ref()
                    .map_or(c.weight, |r| r.weight_on(node, c.weight)),
            )
            .map_err(internal)?,
            sticky: c
                .sticky
                .as_deref()
                .map(Sticky::parse)
                .transpose()
                .map_err(internal)?,
        }),
        None => None,
    };
    let shadow = match &record.shadow {
        Some(s) => Some(Shadow {
            version: version(rt, name, &s.version, &s.settings, &reuse).await?,
            percent: Weight::from_percent(s.percent).map_err(internal)?,
        }),
        None => None,
    };
    Ok(Split {
        stable,
        candidate,
        shadow,
    })
}

/// What a change may reuse instead of loading.
struct Reuse<'a> {
    /// Versions serving the route now: reused whole when digest and settings match.
    serving: &'a [Arc<Version>],
    /// Versions of the route still draining: their compiled code is reused (never the version
    /// itself, whose drain deadline would cut off the new requests).
    draining: &'a [Arc<Version>],
    /// Components this change compiled or loaded.
    built: &'a [Built],
}

/// The version of `digest` with `settings` on route `name`.
async fn version(
    rt: &Arc<Runtime>,
    name: &RouteName,
    digest: &str,
    settings: &SettingsRecord,
    reuse: &Reuse<'_>,
) -> Result<Arc<Version>, DeployError> {
    let digest = parse_digest(digest)?;
    let settings = prepare::settings_of(rt, name, settings);
    if let Some(same) = reuse
        .serving
        .iter()
        .find(|v| v.digest == digest && v.settings() == settings)
    {
        return Ok(same.clone());
    }
    let code = reuse
        .built
        .iter()
        .find(|b| b.digest == digest)
        .cloned()
        .or_else(|| {
            reuse
                .serving
                .iter()
                .chain(reuse.draining)
                .find(|v| v.digest == digest)
                .map(|v| Built::of(v))
        });
    let code = match code {
        Some(code) => code,
        None => {
            let loading = prepare::load_stored(rt, &digest, settings.limits.compile());
            crate::trace::phase(rt.trace.as_deref(), "compile", loading).await?
        }
    };
    // `instance-concurrency` is the route's and applies to its WASI 0.3 versions; a 0.2
    // version's instances serve one request at a time whatever it says (a deploy that asks
    // for more with a 0.2 component is refused before this: `deploy::deploy`).
    let version = Arc::new(Version::new(
        &rt.engine,
        digest,
        name.shared(),
        code.pre,
        settings,
        code.size,
        code.compile_time.unwrap_or_default(),
        rt.config.outbound_private,
    ));
    version.guest.logs().tail_to(&rt.guest_logs);
    crate::trace::phase(
        rt.trace.as_deref(),
        "trial instance",
        prepare::trial_instance(rt, &version),
    )
    .await?;
    Ok(version)
}
