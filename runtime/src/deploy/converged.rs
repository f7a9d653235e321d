//! Cluster mode: a `node_converged` event each time a node's record says it now serves a new
//! revision of a route (the version it serves, or none once the route is deleted there), so the
//! event stream of any node shows every node catching up with a change. Read off the node
//! records this node already follows; nothing here is on the request path.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::events::{Event, Kind};
use crate::runtime::Runtime;

/// How often this node's own record is looked at besides the changes of others'.
const EVERY: Duration = Duration::from_millis(250);

/// Starts the task (in cluster mode; nothing otherwise); it ends with the runtime.
pub fn spawn(rt: &Arc<Runtime>) {
    let Some(cluster) = rt.cluster.as_ref() else {
        return;
    };
    let changes = cluster.nodes.changes();
    tokio::spawn(follow(Arc::downgrade(rt), changes));
}

async fn follow(rt: Weak<Runtime>, mut changes: tokio::sync::watch::Receiver<u64>) {
    // (node, route) -> the revision last seen; what is there at the start is not news.
    let mut seen: Option<HashMap<(String, String), u64>> = None;
    loop {
        let Some(rt) = rt.upgrade() else {
            return;
        };
        let Some(cluster) = rt.cluster.as_ref() else {
            return;
        };
        let mut now = HashMap::new();
        for node in cluster.nodes.all() {
            if !node.alive() {
                continue;
            }
            for (route, served) in &node.record.routes {
                let key = (node.record.name.clone(), route.clone());
                let failed = served
                    .error
                    .as_ref()
                    .is_some_and(|e| e.revision >= served.revision);
                if let Some(before) = &seen
                    && before.get(&key).is_none_or(|&r| r < served.revision)
                    && !failed
                {
                    rt.events.publish(Event {
                        node: Some(node.record.name.clone()),
                        revision: Some(served.revision),
                        version: served.version.clone(),
                        ..Event::new(Kind::NodeConverged, route)
                    });
                }
                now.insert(key, served.revision);
            }
        }
        seen = Some(now);
        drop(rt);
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return; },
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}
