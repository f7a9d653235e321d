//! The commit tail: the one place where a route's next state, once decided, becomes what
//! serves. Every change to the route table ends here, whoever made it: a change made on this
//! node ([`super::apply::change`]: deploy, activate, rollback, delete, a rollout's start, steps
//! and end, a shadow started or stopped), a change another node recorded
//! ([`super::remote::reconcile`]), and a stored record applied at startup
//! ([`super::restore`]). Under the table's writer (which the caller took, so that its prefix
//! check, and for a local change the state-log append, happen under it), [`commit`]:
//!
//! 1. **publishes** the route into the table (or removes it and forgets its state), waiting out
//!    readers of the old snapshot;
//! 2. logs the activation and publishes the change's events, read off the records before and
//!    after ([`super::notify`]), except at startup: a restored route serves what it served
//!    before, and restore logs one summary line;
//! 3. **retires** every version that left (it drains in the background);
//! 4. writes what this node now serves on the route into its node record (cluster mode);
//! 5. tells the rollout supervisor (`crate::rollout::supervise`), which keeps a controller
//!    running for each live rollout;
//! 6. collects garbage (not at startup, as before).
//!
//! So a restart and another node's change are published exactly as a local change is.

use std::sync::Arc;

use super::gc;
use super::prepare::Built;
use crate::cluster::{NodeError, NodeRoute};
use crate::names::{Prefix, RouteName};
pub(crate) use crate::route::state::Source;
use crate::route::table::{PrefixHeld, Writer};
use crate::route::{Route, Serving};
use crate::runtime::Runtime;
use crate::state::RouteRecord;
use crate::version::Version;

/// What is being committed, besides the route itself.
pub(crate) struct Commit<'a> {
    /// The route's name.
    pub name: &'a RouteName,
    /// The route as it served before (`None`: it was not in the table).
    pub live: Option<&'a Route>,
    /// The record the change's events are read against: the stored record a local change was
    /// planned against, or the record that served before.
    pub before: Option<&'a RouteRecord>,
    /// Components this change compiled or loaded (their compile time is logged).
    pub built: &'a [Built],
    /// Who made the change.
    pub source: Source,
}

/// Publishes `next` as route `commit.name` (`None`: removes it) through `writer`, then does
/// the rest of the tail in this module's header. Returns the route as it now stands.
///
/// `Err`: another route holds `next`'s prefix in the table, so nothing was published and
/// nothing else was done. Callers check the prefix under the same writer first, so this only
/// happens to a restored record whose prefix a route restored earlier took; the caller
/// says so.
pub(crate) async fn commit(
    rt: &Arc<Runtime>,
    mut writer: Writer<'_>,
    commit: Commit<'_>,
    next: Option<Route>,
) -> Result<Option<Route>, PrefixHeld> {
    let Commit {
        name,
        live,
        before,
        built,
        source,
    } = commit;
    let swapping = std::time::Instant::now();
    let now = match next {
        Some(route) => {
            crate::trace::phase(rt.trace.as_deref(), "swap", writer.put(route.clone())).await?;
            Some(route)
        }
        None => {
            writer.remove(name).await;
            rt.registry.forget(name);
            None
        }
    };
    // The swap step alone: publishing the new table until no reader holds the old one.
    let swap = swapping.elapsed();
    drop(writer);
    if source != Source::Restore {
        log_activation(name, now.as_ref(), live, built, swap);
        super::notify::publish(rt, name, before, now.as_ref().map(|r| r.record.as_ref()));
    }
    retire_leaving(rt, name, live, now.as_ref());
    let failed = now.as_ref().and_then(|route| match &route.serving {
        Serving::Unavailable(reason) => Some((route.record.revision, reason.to_string())),
        Serving::Live(_) => None,
    });
    report(rt, name, failed);
    rt.registry.committed(name, source);
    if source != Source::Restore {
        gc::collect(rt);
    }
    Ok(now)
}

/// Why route `name` may not serve at `prefix`, as its stored record asks: another route holds
/// the prefix's claim in the state log. A restart and a change another node recorded check
/// this before publishing a stored record; [`super::apply::change`] has the state log check it
/// as it records, and the table's writer refuses a prefix another route serves in every case.
pub(crate) async fn claimed_elsewhere(
    rt: &Runtime,
    name: &RouteName,
    prefix: &Prefix,
) -> anyhow::Result<Option<String>> {
    Ok(rt
        .state
        .prefix_owner(prefix.as_str())
        .await?
        .filter(|holder| holder != name)
        .map(|holder| held(prefix, &holder)))
}

/// The sentence for a prefix another route holds.
pub(crate) fn held(prefix: &Prefix, holder: &RouteName) -> String {
    format!(
        "the prefix `{}` is held by route `{}`",
        prefix.as_str(),
        holder.as_str()
    )
}

/// Logs what a change activated; `swap` is how long the table swap took (the bench reads it).
fn log_activation(
    name: &RouteName,
    now: Option<&Route>,
    before: Option<&Route>,
    built: &[Built],
    swap: std::time::Duration,
) {
    let Some(stable) = now.and_then(Route::stable) else {
        return;
    };
    let compile_ms = built
        .iter()
        .find(|b| b.digest == stable.digest)
        .and_then(|b| b.compile_time)
        .map(|t| t.as_secs_f64() * 1e3);
    tracing::info!(
        route = name.as_str(),
        prefix = now.map(|r| r.prefix.as_str()),
        version = %stable.digest,
        previous = before.and_then(Route::stable).map(|v| v.digest.as_str()),
        compile_ms,
        swap_us = swap.as_micros() as u64,
        "version activated"
    );
}

/// Retires every version that served `before` and does not serve `now`.
fn retire_leaving(
    rt: &Arc<Runtime>,
    name: &RouteName,
    before: Option<&Route>,
    now: Option<&Route>,
) {
    let Some(before) = before.and_then(Route::split) else {
        return;
    };
    let staying: Vec<&Arc<Version>> = now
        .and_then(Route::split)
        .map(|s| s.versions().map(|(_, v, _)| v).collect())
        .unwrap_or_default();
    for (_, version, _) in before.versions() {
        if staying.iter().any(|v| Arc::ptr_eq(v, version)) {
            continue;
        }
        let weak = Arc::downgrade(rt);
        // The drain is a phase of the change that retired the version; it ends when the
        // version is freed, after the change itself.
        let draining = crate::trace::Later::start(
            rt.trace.as_deref(),
            "drain",
            vec![crate::trace::KeyValue::new(
                "handoff.version",
                version.digest.to_string(),
            )],
        );
        rt.drains.retire(
            name.clone(),
            version.clone(),
            rt.config.drain_timeout,
            move || {
                drop(draining);
                if let Some(rt) = weak.upgrade() {
                    gc::collect(&rt);
                }
            },
        );
    }
}

/// Writes what this node serves on route `name` into its node record (published with the next
/// heartbeat, or by the caller); `failed` is the revision this node could not serve and why.
pub(crate) fn report(rt: &Runtime, name: &RouteName, failed: Option<(u64, String)>) {
    let Some(cluster) = &rt.cluster else {
        return;
    };
    let live = rt.routes.snapshot().get(name).cloned();
    cluster.nodes.update(|me| match live {
        None => {
            me.routes.remove(name.as_str());
        }
        Some(route) => {
            let error = failed
                .map(|(revision, reason)| NodeError { revision, reason })
                .or_else(|| {
                    me.routes
                        .get(name.as_str())
                        .and_then(|r| r.error.clone())
                        .filter(|e| e.revision > route.record.revision)
                });
            me.routes.insert(
                name.as_str().to_owned(),
                NodeRoute {
                    revision: route.record.revision,
                    version: route.stable().map(|v| v.digest.to_string()),
                    error,
                },
            );
        }
    });
}
