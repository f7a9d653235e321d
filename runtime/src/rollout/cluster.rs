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
//!   two of its looks at a live record ([`Tallies`]): a node whose record lapses, restarts or
//!   joins adds from then on, never its whole history into the step being judged. Figures lag
//!   by up to about a second and a half (the heartbeat plus [`PERIOD`]): a gate fires that much
//!   later than on one node.
//!
//! Outside a cluster nothing here runs and [`figures`] is the version's own counters.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::cluster::Figures;
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
/// live node's figures for the same digest grew by while this node watched them ([`Tallies`]).
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
    let counted = TALLIES
        .lock()
        .expect("poisoned")
        .entry((route.as_str().to_owned(), version.digest.to_string()))
        .or_default()
        .observe(sightings);
    add_snapshot(&mut total, &counted);
    total
}

/// What this node has counted of other nodes' figures, by route and digest (only the driving
/// node reads it; entries go with their rollout, see [`spawn`]).
static TALLIES: std::sync::LazyLock<std::sync::Mutex<HashMap<(String, String), Tallies>>> =
    std::sync::LazyLock::new(Default::default);

/// One node's figures for one version, as a look at its record found them (`None`: the node
/// is not live, or has none).
#[derive(Debug, Clone)]
pub struct Sighting {
    /// The node.
    pub node: String,
    /// Its process (a restarted node counts from zero again).
    pub process: String,
    /// Its cumulative figures.
    pub figures: Option<Figures>,
}

/// Other nodes' figures for one version, counted as they grow: each look adds what a node's
/// cumulative figures grew by since the last look that found it live, in the same process.
/// A node first seen, back after its record lapsed, or restarted adds nothing at that look:
/// what it did before is not counted into the current step.
#[derive(Debug, Default)]
pub struct Tallies {
    /// The figures each node had at the last look that found it live.
    last: HashMap<String, (String, Figures)>,
    /// Everything counted so far (only grows).
    counted: Snapshot,
}

impl Tallies {
    /// Takes a look; returns everything counted so far.
    pub fn observe(&mut self, sightings: impl IntoIterator<Item = Sighting>) -> Snapshot {
        for sighting in sightings {
            let Some(figures) = sighting.figures else {
                self.last.remove(&sighting.node);
                continue;
            };
            if let Some((process, last)) = self.last.get(&sighting.node)
                && *process == sighting.process
                && let Some(grown) = grown(last, &figures)
            {
                add(&mut self.counted, &grown);
            }
            self.last.insert(sighting.node, (sighting.process, figures));
        }
        self.counted
    }
}

/// What `now` grew by since `before`; `None` if any figure fell (the counters restarted).
fn grown(before: &Figures, now: &Figures) -> Option<Figures> {
    let sub = |a: u64, b: u64| a.checked_sub(b);
    Some(Figures {
        completed: sub(now.completed, before.completed)?,
        errors: sub(now.errors, before.errors)?,
        classes: {
            let mut classes = [0; 5];
            for (i, class) in classes.iter_mut().enumerate() {
                *class = sub(now.classes[i], before.classes[i])?;
            }
            classes
        },
        latency: now
            .latency
            .iter()
            .zip(before.latency.iter().chain(std::iter::repeat(&0)))
            .map(|(n, b)| sub(*n, *b))
            .collect::<Option<Vec<u64>>>()?,
        latency_us: sub(now.latency_us, before.latency_us)?,
    })
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

/// In a cluster: every [`PERIOD`], refreshes this node's figures ([`publish_figures`]) and
/// forgets the tallies of rollouts that ended. Ends when the node leaves.
pub fn share_figures(rt: &std::sync::Arc<Runtime>) {
    let Some(joined) = rt.cluster.clone() else {
        return;
    };
    let weak = std::sync::Arc::downgrade(rt);
    let stop = joined.nodes.stopping();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(PERIOD) => {}
            }
            let Some(rt) = weak.upgrade() else { return };
            publish_figures(&rt);
            forget_tallies(&rt.routes.snapshot());
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
pub fn forget_tallies(table: &crate::route::Table) {
    TALLIES.lock().expect("poisoned").retain(|(route, _), _| {
        RouteName::parse(route)
            .ok()
            .and_then(|n| table.get(&n).cloned())
            .is_some_and(|r| r.record.rollout.as_ref().is_some_and(|r| r.state.is_live()))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(node: &str, process: &str, completed: Option<u64>) -> Sighting {
        Sighting {
            node: node.into(),
            process: process.into(),
            figures: completed.map(|completed| Figures {
                completed,
                errors: completed / 2,
                classes: [0, completed, 0, 0, 0],
                latency: vec![completed],
                latency_us: completed * 10,
            }),
        }
    }

    #[test]
    fn a_node_that_lapses_returns_or_restarts_adds_only_what_it_does_afterwards() {
        let mut tallies = Tallies::default();
        // b has served 1,000 requests before the first look: history, not counted.
        assert_eq!(tallies.observe([seen("b", "1", Some(1000))]).completed, 0);
        assert_eq!(tallies.observe([seen("b", "1", Some(1010))]).completed, 10);
        let step_start = tallies.observe([seen("b", "1", Some(1020))]);
        assert_eq!(step_start.completed, 20);
        assert_eq!(step_start.errors, 10);
        // b's record lapses (it serves 500 meanwhile), then returns: only what it serves after
        // its return counts. (Summing live nodes' cumulative figures counted 1,520 at once.)
        assert_eq!(tallies.observe([seen("b", "1", None)]).completed, 20);
        assert_eq!(tallies.observe([seen("b", "1", Some(1520))]).completed, 20);
        assert_eq!(tallies.observe([seen("b", "1", Some(1525))]).completed, 25);
        // b restarts: its counters start again; a new node joins with history.
        let now = tallies.observe([seen("b", "2", Some(3)), seen("c", "1", Some(700))]);
        assert_eq!(now.completed, 25);
        let now = tallies.observe([seen("b", "2", Some(5)), seen("c", "1", Some(701))]);
        assert_eq!(now.completed, 28);
        assert_eq!(now.classes[1], 28);
        assert_eq!(now.latency[0], 28);
        assert_eq!(now.latency_us, 280);
        // Counted figures never fall, so a step window's difference is never negative.
        assert!(tallies.observe([]).completed >= 28);
    }
}
