//! Cluster mode: a `node_converged` event each time a node's record says it now serves a new
//! revision of a route (the version it serves, or none once the route is deleted there), so the
//! event stream of any node shows every node catching up with a change. Read off the node
//! records this node already follows; nothing here is on the request path.
//!
//! Only changes are news: a node that joins, restarts or whose record lapses and returns
//! reports every route it serves at once, and the revisions this node already served when it
//! first saw that node's process are not published again (with a few hundred routes they
//! would drop every event-stream client and flush the resume buffer).

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::events::{Event, Kind};
use crate::runtime::Runtime;

/// How often this node's own record is looked at besides the changes of others'.
const EVERY: Duration = Duration::from_millis(250);

/// Starts the task (in cluster mode; nothing otherwise); it ends when the server stops.
pub fn spawn(rt: &Arc<Runtime>) {
    let Some(cluster) = rt.cluster.as_ref() else {
        return;
    };
    let changes = cluster.nodes.changes();
    rt.background.spawn(follow(Arc::downgrade(rt), changes));
}

async fn follow(rt: Weak<Runtime>, mut changes: tokio::sync::watch::Receiver<u64>) {
    let mut news = News::default();
    loop {
        let Some(rt) = rt.upgrade() else {
            return;
        };
        let Some(cluster) = rt.cluster.as_ref() else {
            return;
        };
        let known: HashMap<String, u64> = rt
            .routes
            .snapshot()
            .iter()
            .map(|r| (r.name.as_str().to_owned(), r.record.revision))
            .collect();
        for event in news.look(cluster.nodes.all(), &known) {
            rt.events.publish(event);
        }
        drop(rt);
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return; },
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

/// What the node records said at the last look, to tell what is news.
#[derive(Default)]
struct News {
    /// (node, route) -> the revision last seen; `None` before the first look (what is there
    /// at the start is not news).
    seen: Option<HashMap<(String, String), u64>>,
    /// Per live node process: the revision of each route this node served when it first saw
    /// that process. A route reported at or below it is not news (the node caught up with
    /// nothing: it joined, restarted or came back).
    baselines: HashMap<(String, String), HashMap<String, u64>>,
}

impl News {
    /// The `node_converged` events the records `nodes` hold; `known` is the revision of each
    /// route this node serves.
    fn look(
        &mut self,
        nodes: Vec<crate::cluster::nodes::Seen>,
        known: &HashMap<String, u64>,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        let mut now = HashMap::new();
        let mut processes = HashMap::new();
        for node in nodes {
            if !node.alive() {
                continue;
            }
            let process = (node.record.name.clone(), node.record.id.clone());
            let baseline = self
                .baselines
                .remove(&process)
                .unwrap_or_else(|| known.clone());
            for (route, served) in &node.record.routes {
                let key = (node.record.name.clone(), route.clone());
                let failed = served
                    .error
                    .as_ref()
                    .is_some_and(|e| e.revision >= served.revision);
                let old = baseline.get(route).is_some_and(|&r| served.revision <= r);
                if let Some(before) = &self.seen
                    && before.get(&key).is_none_or(|&r| r < served.revision)
                    && !failed
                    && !old
                {
                    events.push(Event {
                        node: Some(node.record.name.clone()),
                        revision: Some(served.revision),
                        version: served.version.clone(),
                        ..Event::new(Kind::NodeConverged, route)
                    });
                }
                now.insert(key, served.revision);
            }
            processes.insert(process, baseline);
        }
        self.seen = Some(now);
        self.baselines = processes;
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::nodes::Seen;
    use crate::cluster::{NodeRecord, NodeRoute};

    fn node(name: &str, process: &str, routes: &[(&str, u64)]) -> Seen {
        Seen {
            record: NodeRecord {
                name: name.into(),
                id: process.into(),
                routes: routes
                    .iter()
                    .map(|(route, revision)| {
                        let served = NodeRoute {
                            revision: *revision,
                            version: Some("sha256:v".into()),
                            error: None,
                        };
                        (route.to_string(), served)
                    })
                    .collect(),
                ..NodeRecord::default()
            },
            at: std::time::Instant::now(),
        }
    }

    fn routes(count: usize, revision: u64) -> Vec<(String, u64)> {
        (0..count).map(|i| (format!("r{i}"), revision)).collect()
    }

    #[test]
    fn a_node_that_joins_or_restarts_is_news_only_for_what_changed() {
        let many = routes(300, 5);
        let known: HashMap<String, u64> = many.iter().cloned().collect();
        let served: Vec<(&str, u64)> = many.iter().map(|(r, n)| (r.as_str(), *n)).collect();
        let mut news = News::default();
        assert!(news.look(vec![node("a", "1", &served)], &known).is_empty());
        // b joins and reports all 300 routes it restored: nothing it caught up with is new.
        let events = news.look(vec![node("a", "1", &served), node("b", "1", &[])], &known);
        assert!(events.is_empty());
        let events = news.look(
            vec![node("a", "1", &served), node("b", "1", &served)],
            &known,
        );
        assert!(events.is_empty(), "{} events", events.len());
        // A change to r0 (revision 6) is news on each node that reports it.
        let mut changed = served.clone();
        changed[0].1 = 6;
        let mut known_now = known.clone();
        known_now.insert("r0".into(), 6);
        let events = news.look(
            vec![node("a", "1", &changed), node("b", "1", &served)],
            &known_now,
        );
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].node.as_deref(), Some("a"));
        let events = news.look(
            vec![node("a", "1", &changed), node("b", "1", &changed)],
            &known_now,
        );
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].node.as_deref(), Some("b"));
        // b restarts: a new process reports everything again; no news.
        let events = news.look(
            vec![node("a", "1", &changed), node("b", "2", &changed)],
            &known_now,
        );
        assert!(events.is_empty(), "{} events", events.len());
        // A route created after b was first seen is news when b serves it.
        let mut more = changed.clone();
        more.push(("new", 1));
        known_now.insert("new".into(), 1);
        let events = news.look(
            vec![node("a", "1", &more), node("b", "2", &more)],
            &known_now,
        );
        assert_eq!(events.len(), 2);
    }
}
