//! Rollouts in a cluster: exactly one node drives each rollout, and its gates count every
//! node's requests.
//!
//! * **One driver**: every node runs a controller for each live rollout it serves (started by
//!   the supervisor, `super::supervise`, when another node's change brings one, and on
//!   restore), but only
//!   the *leader*, the live node with the smallest name
//!   ([`crate::cluster::nodes::Nodes::leader`]), judges and steps; the others hold. When the
//!   leader leaves or dies, the next one takes over within the node records' TTL, judging a
//!   fresh step window.
//! * **Cluster-wide figures**: each node puts the request figures of the versions of every
//!   route with a live rollout in its node record ([`publish_figures`], every [`PERIOD`] from
//!   [`share_figures`], republished with its heartbeat), and the leader's gates read
//!   [`figures`]: its own counters plus every other live node's figures. A node's figures are
//!   cumulative since it built the version, so the leader counts only what they grew by between
//!   two of its looks at a live record (`crate::cluster::tallies`): a node whose record lapses, restarts or
//!   joins adds from then on, never its whole history into the step being judged. Figures lag
//!   by up to about a second and a half (the heartbeat plus [`PERIOD`]): a gate fires that much
//!   later than on one node.
//!
//! Outside a cluster nothing here runs and [`figures`] is the version's own counters.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::cluster::tallies::Sighting;
use crate::cluster::{Cluster, Figures};
use crate::names::RouteName;
use crate::runtime::Runtime;
use crate::stats::Snapshot;
use crate::version::Version;

/// How often a node refreshes its figures.
pub const PERIOD: Duration = Duration::from_millis(500);

/// The waves `asked` names, as node names per wave: every live node in exactly one wave.
pub fn waves(rt: &Runtime, asked: &crate::api::Waves) -> Result<Vec<Vec<String>>, String> {
    let Some(cluster) = &rt.cluster else {
        return Err("waves activate a rollout node by node in a cluster; this server runs on its own (no --cluster): give steps instead".into());
    };
    let live: Vec<String> = cluster
        .nodes
        .all()
        .into_iter()
        .filter(|s| s.live())
        .map(|s| s.record.name)
        .collect();
    let waves: Vec<Vec<String>> = match asked {
        crate::api::Waves::Size(0) => return Err("a wave needs at least 1 node".into()),
        crate::api::Waves::Size(size) => live.chunks(*size).map(<[String]>::to_vec).collect(),
        crate::api::Waves::Nodes(names) => {
            let mut waves = Vec::new();
            for name in names {
                if !live.contains(name) {
                    return Err(format!(
                        "no live node is named `{}`; `handoff nodes` lists them",
                        name.escape_debug()
                    ));
                }
                if waves.iter().any(|w: &Vec<String>| w.contains(name)) {
                    return Err(format!("node `{}` is named twice", name.escape_debug()));
                }
                waves.push(vec![name.clone()]);
            }
            let rest: Vec<String> = live
                .iter()
                .filter(|n| !names.contains(n))
                .cloned()
                .collect();
            if !rest.is_empty() {
                waves.push(rest);
            }
            waves
        }
    };
    if waves.is_empty() || waves.len() > 100 {
        return Err("a rollout needs 1 to 100 waves".into());
    }
    Ok(waves)
}

/// Whether this node drives rollouts now: always on its own, the leader in a cluster.
pub fn drives(rt: &Runtime) -> bool {
    match &rt.cluster {
        None => true,
        Some(cluster) => cluster.nodes.leader().as_deref() == Some(cluster.node_name()),
    }
}

/// `version`'s figures on route `route`: its own counters, plus in a cluster what every other
/// live node's figures for the same digest grew by while this node watched them (`crate::cluster::tallies`,
/// kept in this node's [`Cluster`], so two nodes in one process never share counts).
/// Only ever grows, so a step window's difference counts what happened during the step.
pub fn figures(rt: &Runtime, route: &RouteName, version: &Version) -> Snapshot {
    let mut total = version.stats.snapshot();
    let Some(cluster) = &rt.cluster else {
        return total;
    };
    let me = cluster.node_name();
    let others = cluster
        .nodes
        .all()
        .into_iter()
        .filter(|seen| seen.record.name != me);
    let sightings: Vec<Sighting> = others
        .map(|seen| Sighting {
            figures: match seen.live() {
                true => seen
                    .record
                    .figures
                    .get(route.as_str())
                    .and_then(|versions| versions.get(version.digest.as_str()))
                    .cloned(),
                false => None,
            },
            node: seen.record.name,
            process: seen.record.id,
        })
        .collect();
    let counted = cluster
        .tallies
        .observe(route.as_str(), version.digest.as_str(), sightings);
    add_snapshot(&mut total, &counted);
    total
}

fn add_snapshot(total: &mut Snapshot, more: &Snapshot) {
    total.completed += more.completed;
    total.errors += more.errors;
    for (sum, n) in total.classes.iter_mut().zip(more.classes) {
        *sum += n;
    }
    for (sum, n) in total.latency.iter_mut().zip(more.latency) {
        *sum += n;
    }
    total.latency_us += more.latency_us;
}

fn record(snapshot: &Snapshot) -> Figures {
    Figures {
        completed: snapshot.completed,
        errors: snapshot.errors,
        classes: snapshot.classes,
        latency: snapshot.latency.to_vec(),
        latency_us: snapshot.latency_us,
    }
}

/// In a cluster: every [`PERIOD`], refreshes this node's figures ([`publish_figures`]) and
/// forgets the tallies of rollouts that ended. Ends when the node leaves (or the server stops).
pub fn share_figures(rt: &std::sync::Arc<Runtime>) {
    let Some(joined) = rt.cluster.clone() else {
        return;
    };
    let weak = std::sync::Arc::downgrade(rt);
    let stop = joined.nodes.stopping();
    rt.background.spawn_until(stop, async move {
        loop {
            tokio::time::sleep(PERIOD).await;
            let Some(rt) = weak.upgrade() else { return };
            publish_figures(&rt);
            forget_tallies(&joined, &rt.routes.snapshot());
        }
    });
}

/// Puts the figures of every version of every route with a live rollout into this node's
/// record (published with the next heartbeat).
pub fn publish_figures(rt: &Runtime) {
    let Some(cluster) = &rt.cluster else {
        return;
    };
    let mut all = BTreeMap::new();
    for route in rt.routes.snapshot().iter() {
        let live = route
            .record
            .rollout
            .as_ref()
            .is_some_and(|r| r.state.is_live());
        let Some(split) = route.split().filter(|_| live) else {
            continue;
        };
        let versions: BTreeMap<String, Figures> = split
            .versions()
            .map(|(_, version, _)| {
                (
                    version.digest.to_string(),
                    record(&version.stats.snapshot()),
                )
            })
            .collect();
        all.insert(route.name.as_str().to_owned(), versions);
    }
    cluster.nodes.update(|me| me.figures = all);
}

/// Forgets the tallies of routes of `table` that have no live rollout any more (and of routes
/// gone from it).
pub fn forget_tallies(cluster: &Cluster, table: &crate::route::Table) {
    cluster.tallies.retain(|route| {
        RouteName::parse(route)
            .ok()
            .and_then(|n| table.get(&n).cloned())
            .is_some_and(|r| r.record.rollout.as_ref().is_some_and(|r| r.state.is_live()))
    });
}
