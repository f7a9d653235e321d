//! Rollouts in a cluster: exactly one node drives each rollout, and its gates count every
//! node's requests.
//!
//! * **One driver**: every node runs a controller for each live rollout it serves (started by
//!   `super::follow_cluster` when another node's change brings one, and on restore), but only
//!   the *leader*, the live node with the smallest name
//!   ([`crate::cluster::nodes::Nodes::leader`]), judges and steps; the others hold. When the
//!   leader leaves or dies, the next one takes over within the node records' TTL, judging a
//!   fresh step window.
//! * **Cluster-wide figures**: each node puts the request figures of the versions of every
//!   route with a live rollout in its node record ([`publish_figures`], every [`PERIOD`] from
//!   `super::follow_cluster`, republished with its heartbeat), and the leader's gates read
//!   [`figures`]: its own counters plus every other live node's last record. Figures lag by up
//!   to about a second and a half (the heartbeat plus [`PERIOD`]): a gate fires that much later
//!   than on one node.
//!
//! Outside a cluster nothing here runs and [`figures`] is the version's own counters.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::cluster::Figures;
use crate::names::RouteName;
use crate::runtime::Runtime;
use crate::stats::Snapshot;
use crate::version::Version;

/// How often a node refreshes its figures and looks for rollouts it should run a controller
/// for.
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

/// `version`'s figures on route `route`: its own counters, plus in a cluster every other
/// live node's figures for the same digest.
pub fn figures(rt: &Runtime, route: &RouteName, version: &Version) -> Snapshot {
    let mut total = version.stats.snapshot();
    let Some(cluster) = &rt.cluster else {
        return total;
    };
    let me = cluster.node_name();
    for seen in cluster.nodes.all() {
        if seen.record.name == me || !seen.live() {
            continue;
        }
        if let Some(figures) = seen
            .record
            .figures
            .get(route.as_str())
            .and_then(|versions| versions.get(version.digest.as_str()))
        {
            add(&mut total, figures);
        }
    }
    total
}

fn add(total: &mut Snapshot, figures: &Figures) {
    total.completed += figures.completed;
    total.errors += figures.errors;
    for (sum, n) in total.classes.iter_mut().zip(figures.classes) {
        *sum += n;
    }
    for (sum, n) in total.latency.iter_mut().zip(&figures.latency) {
        *sum += n;
    }
    total.latency_us += figures.latency_us;
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
