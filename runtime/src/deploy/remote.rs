//! Changes another node recorded (cluster mode), applied through the same path as a local
//! change: [`super::apply::build`] builds the versions the record names (the artifact loaded,
//! or the bytes fetched from the cluster and compiled), then [`super::commit`], the tail every
//! change shares, publishes the route, publishes the change's events (as on the node that made
//! it), retires what left, reports what this node serves and collects garbage.
//!
//! [`follow`] watches the state log from the last position this node applied, in order. For
//! each route a watched change touches, [`reconcile`] takes the route's change lock, reads the
//! route's *current* record, and makes the route serve it, unless it already does (this node
//! recorded it, or a later change was applied already). Reading the current record rather than
//! the watched one makes every step idempotent, so a watch that is restarted (after a lost
//! connection) from the last position seen converges whatever it delivers twice.
//!
//! After each step the node's record ([`crate::cluster::nodes`]) says which revision of the
//! route it serves, or why it could not: what a deploy on another node waits for.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::apply;
use super::commit::{self, Commit, Source, report};
use super::error::DeployError;
use crate::names::RouteName;
use crate::route::{Route, Serving};
use crate::runtime::Runtime;

/// How often a route whose module could not be fetched is tried again.
const RETRY_EVERY: Duration = Duration::from_secs(2);

/// How [`reconcile`] left a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconciled {
    /// It serves what the state log has (or failed for good: a module that does not compile
    /// fails again).
    Done,
    /// Its module's bytes could not be fetched (the cluster was busy or unreachable for a
    /// moment): try again later.
    RetryLater,
}

/// Applies the route `name` as the state log has it now, unless it serves that already.
/// `Err`: the state log could not be read (the watch is restarted).
///
/// With tracing on, applying a change is a span, `cluster apply`, with `handoff.node`: a child
/// of the change's span when the node that made it traced it (the record carries its
/// `traceparent`), else the root of a trace of its own; a change this node serves already (it
/// made it, or applied it before) makes none.
pub async fn reconcile(rt: &Arc<Runtime>, name: &RouteName) -> anyhow::Result<Reconciled> {
    let had_state = rt.registry.get(name).is_some();
    let guard = rt.registry.lock(name).await;
    let live = rt.routes.snapshot().get(name).cloned();
    let stored = match rt.state.route(name).await {
        Ok(stored) => stored,
        Err(error) => {
            // Taking the lock made the state of a route this node never had: it goes again.
            if !had_state && live.is_none() {
                rt.registry.forget(name);
            }
            return Err(error);
        }
    };
    let current = match &stored {
        None => live.is_none(),
        Some(stored) => live
            .as_ref()
            .is_some_and(|l| l.record.revision == stored.record.revision && l.split().is_some()),
    };
    if current {
        if stored.is_none() {
            // Neither recorded nor served here (created and deleted again before this node
            // applied it, or never served here): no route state is kept for it.
            rt.registry.forget(name);
        }
        report(rt, name, None);
        return Ok(Reconciled::Done);
    }
    let mut attributes = vec![crate::trace::KeyValue::new(
        "handoff.route",
        name.as_str().to_owned(),
    )];
    if let Some(cluster) = &rt.cluster {
        attributes.push(crate::trace::KeyValue::new(
            "handoff.node",
            cluster.node_name().to_owned(),
        ));
    }
    if let Some(stored) = &stored {
        attributes.push(crate::trace::KeyValue::new(
            "handoff.version",
            stored.record.active.to_string(),
        ));
        attributes.push(crate::trace::KeyValue::new(
            "handoff.revision",
            stored.record.revision as i64,
        ));
    }
    // A change traced where it was made is applied within its trace.
    let origin = stored
        .as_ref()
        .and_then(|s| s.record.trace.as_deref())
        .and_then(crate::trace::Caller::origin);
    let applying = apply_now(rt, name, guard, stored, live);
    let span = crate::trace::change(rt.trace.as_deref(), "cluster apply", attributes, applying);
    match origin {
        Some(origin) => crate::trace::within(origin, span).await,
        None => span.await,
    }
}

/// [`reconcile`] of a route that does not serve its stored record (`None`: deleted), within
/// its span.
async fn apply_now(
    rt: &Arc<Runtime>,
    name: &RouteName,
    guard: crate::route::state::ChangeGuard,
    stored: Option<crate::state::Stored>,
    live: Option<Route>,
) -> anyhow::Result<Reconciled> {
    let Some(stored) = stored else {
        if let Some(live) = live {
            let writer = rt.routes.writer().await;
            let commit = Commit {
                name,
                live: Some(&live),
                before: Some(&live.record),
                built: &[],
                source: Source::Remote,
            };
            // Removing a route cannot be refused.
            let _ = commit::commit(rt, writer, commit, None).await;
            tracing::info!(
                route = name.as_str(),
                "route deleted (recorded by another node)"
            );
        }
        return Ok(Reconciled::Done);
    };
    let record = stored.record;
    let prefix = record.claimed_prefix(name);
    if let Some(reason) = commit::claimed_elsewhere(rt, name, &prefix).await? {
        tracing::error!(route = name.as_str(), reason = %reason, "change not applied");
        crate::trace::fail(&reason);
        report(rt, name, Some((record.revision, reason)));
        return Ok(Reconciled::Done);
    }
    let building = apply::build(rt, name, &record, live.as_ref(), &[]);
    let built = crate::trace::phase(rt.trace.as_deref(), "build", building).await;
    let writer = rt.routes.writer().await;
    if let Some(owner) = writer.prefix_owner(name, &prefix) {
        drop(writer);
        let reason = format!(
            "the prefix `{}` is served by route `{}` on this node",
            prefix.as_str(),
            owner.as_str()
        );
        tracing::error!(route = name.as_str(), reason = %reason, "change not applied");
        crate::trace::fail(&reason);
        report(rt, name, Some((record.revision, reason)));
        return Ok(Reconciled::Done);
    }
    let retry = match &built {
        Err(DeployError::ModuleUnavailable(_)) => Reconciled::RetryLater,
        _ => Reconciled::Done,
    };
    let serving = match built {
        Ok(split) => Serving::Live(split),
        Err(error) => {
            let reason = error.to_string();
            tracing::error!(route = name.as_str(), version = %record.active, error = %reason, "change recorded by another node not applied; serving what was here");
            crate::trace::fail(&reason);
            if live.as_ref().is_some_and(|l| l.split().is_some()) {
                drop(writer);
                report(rt, name, Some((record.revision, reason)));
                return Ok(retry);
            }
            // A route this node did not serve yet: it keeps its prefix and answers 503, as
            // after a restart.
            Serving::Unavailable(reason.clone().into())
        }
    };
    let failed = matches!(serving, Serving::Unavailable(_));
    let route = Route {
        name: name.clone(),
        prefix,
        serving,
        state: guard.state.clone(),
        record: Arc::new(record),
    };
    let commit = Commit {
        name,
        live: live.as_ref(),
        // The same events as on the node that made the change, read off the same records.
        before: live.as_ref().map(|l| l.record.as_ref()),
        built: &[],
        source: Source::Remote,
    };
    // The prefix was checked above under this writer.
    if let Err(held) = commit::commit(rt, writer, commit, Some(route)).await {
        crate::trace::fail("the route's prefix is held by another route on this node");
        tracing::error!(
            route = name.as_str(),
            holder = held.holder.as_str(),
            "change not applied"
        );
    }
    drop(guard);
    Ok(if failed { retry } else { Reconciled::Done })
}

/// Writes every route this node serves into its node record, at `position`, and says it is
/// ready (after a restart caught up).
pub async fn report_all(rt: &Runtime, position: u64) {
    let Some(cluster) = &rt.cluster else {
        return;
    };
    for route in rt.routes.snapshot().iter() {
        let failed = match &route.serving {
            Serving::Unavailable(reason) => Some((route.record.revision, reason.to_string())),
            Serving::Live(_) => None,
        };
        report(rt, &route.name, failed);
    }
    cluster.nodes.update(|me| {
        me.position = me.position.max(position);
        me.ready = true;
    });
    cluster.nodes.publish().await;
}

/// Applies every change recorded after `after`, as it is recorded, until the node leaves (or
/// the server stops): a change is applied whole, the stop is seen between changes.
pub fn follow(rt: &Arc<Runtime>, after: u64) {
    let Some(cluster) = rt.cluster.clone() else {
        return;
    };
    let weak = Arc::downgrade(rt);
    let stop = cluster.nodes.stopping();
    rt.background.spawn_job(async move {
        let mut position = after;
        let mut reconnects = cluster.reconnects();
        // Routes whose module could not be fetched: tried again every RETRY_EVERY.
        let mut retry: BTreeSet<RouteName> = BTreeSet::new();
        loop {
            let watch = {
                let Some(rt) = weak.upgrade() else {
                    return;
                };
                rt.state.watch(position).await
            };
            let mut changes = match watch {
                Ok(Some(changes)) => changes,
                Ok(None) => return,
                Err(error) => {
                    tracing::debug!(error = %format!("{error:#}"), "cannot watch the cluster yet");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(250)) => continue,
                    }
                }
            };
            reconnects.borrow_and_update();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = reconnects.changed() => {
                        tracing::info!(position, "reconnected to the cluster; catching up from the last change applied");
                        break;
                    }
                    _ = tokio::time::sleep(RETRY_EVERY), if !retry.is_empty() => {
                        let Some(rt) = weak.upgrade() else { return };
                        for name in std::mem::take(&mut retry) {
                            if !matches!(reconcile(&rt, &name).await, Ok(Reconciled::Done)) {
                                retry.insert(name);
                            }
                        }
                        cluster.nodes.publish().await;
                    }
                    change = changes.recv() => {
                        let Some(change) = change else { break };
                        let Some(rt) = weak.upgrade() else { return };
                        match reconcile(&rt, &change.route).await {
                            Ok(Reconciled::Done) => {
                                retry.remove(&change.route);
                            }
                            Ok(Reconciled::RetryLater) => {
                                retry.insert(change.route.clone());
                            }
                            Err(error) => {
                                tracing::warn!(route = change.route.as_str(), error = %format!("{error:#}"), "cannot read a change from the cluster; watching again");
                                break;
                            }
                        }
                        position = position.max(change.position);
                        if changes.is_empty() {
                            cluster.nodes.update(|me| me.position = me.position.max(position));
                            cluster.nodes.publish().await;
                        }
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    });
}
