//! The rollout supervisor: keeps "a controller runs for each live rollout" true. It is fed by
//! the commit path: every change committed to the route table ([`crate::deploy`]'s commit
//! tail, whoever made it) is a [`Committed`] on the registry's feed, and for each the
//! supervisor looks at the route as it now serves:
//!
//! * no live rollout (none, promoted, rolled back, aborted, or the route deleted): its
//!   controller is stopped;
//! * a live rollout started, changed by an operator here, or restored at startup: its
//!   controller is (re)started, counting a fresh step window;
//! * a step the controller made itself, or a change another node recorded: a controller is
//!   started only if none runs for this rollout (its stable version, candidate and author), so
//!   in a cluster every node runs the controller of every live rollout, whichever node began
//!   it.
//!
//! Controllers are started nowhere else.

use std::collections::HashMap;
use std::sync::Arc;

use super::controller;
use crate::names::RouteName;
use crate::route::state::{Committed, Source};
use crate::runtime::Runtime;

/// Which rollout a controller was started for: its stable version, candidate and author.
type Key = (String, String, String);

/// Starts the supervisor; it ends when the server stops. Changes committed before it starts
/// (a restore's) are waiting on the feed, so the rollouts a restart restored continue.
pub fn supervise(rt: &Arc<Runtime>) {
    let Some(mut feed) = rt.registry.take_feed() else {
        return;
    };
    let weak = Arc::downgrade(rt);
    rt.background.spawn(async move {
        // The rollout each route's controller was started for, by route.
        let mut running: HashMap<RouteName, Key> = HashMap::new();
        // Ends when the runtime, which holds the feed's sender, is gone.
        while let Some(committed) = feed.recv().await {
            let Some(rt) = weak.upgrade() else {
                return;
            };
            follow(&rt, &mut running, committed);
        }
    });
}

/// Keeps route `committed.route`'s controller in step with its rollout.
fn follow(rt: &Arc<Runtime>, running: &mut HashMap<RouteName, Key>, committed: Committed) {
    let Committed {
        route: name,
        source,
    } = committed;
    let rollout = rt
        .routes
        .snapshot()
        .get(&name)
        .and_then(|route| route.record.rollout.clone())
        .filter(|rollout| rollout.state.is_live());
    let Some(rollout) = rollout else {
        if running.remove(&name).is_some()
            && let Some(state) = rt.registry.get(&name)
        {
            if let Some(token) = state.replace_controller(None) {
                token.cancel();
            }
            state.set_window(None);
        }
        return;
    };
    let key = (rollout.stable, rollout.candidate, rollout.by);
    let restart = match source {
        Source::Local | Source::Restore => true,
        Source::Controller | Source::Remote => running.get(&name) != Some(&key),
    };
    if restart {
        controller::spawn(rt, &name);
        running.insert(name, key);
    }
}
