//! What the node driving a rollout has counted of other nodes' request figures (see
//! `crate::rollout::cluster`): one [`Tallies`] per route and version, kept in the node's
//! [`super::Cluster`] (never process-wide, so two nodes in one process count apart).

use std::collections::HashMap;
use std::sync::Mutex;

use super::record::Figures;
use crate::stats::Snapshot;

/// This node's tallies, by route and digest (only the driving node reads them; entries go with
/// their rollout).
#[derive(Debug, Default)]
pub struct Book {
    tallies: Mutex<HashMap<(String, String), Tallies>>,
}

impl Book {
    /// Takes a look at `sightings` of `route`'s version `digest`; returns everything counted
    /// of it so far.
    pub fn observe(
        &self,
        route: &str,
        digest: &str,
        sightings: impl IntoIterator<Item = Sighting>,
    ) -> Snapshot {
        self.tallies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((route.to_owned(), digest.to_owned()))
            .or_default()
            .observe(sightings)
    }

    /// Keeps only the tallies of routes `keep` says yes to.
    pub fn retain(&self, mut keep: impl FnMut(&str) -> bool) {
        self.tallies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(route, _), _| keep(route));
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Figures;

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
