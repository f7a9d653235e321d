//! Garbage collection of stored modules: a module's record and files go once no route serves
//! it or keeps it in its history, it is not pinned (uploaded, not yet activated), no version
//! of it is serving or draining in memory, and no change is working on it
//! ([`crate::state::pending::Pending`]).
//!
//! The record is removed atomically with respect to state-log appends
//! ([`crate::state::StateLog::collect`]); the files after, each one re-checked just before it
//! is removed. A change marks its digest pending before it reads or writes anything for it, so
//! a collection never removes what a change is about to reference. No lock is held across a
//! commit. A collection holds the handover gate (shared, as admin changes do) from start to
//! end, and none runs once a process taking over has the data directory ([`collect`]).

use std::collections::HashSet;
use std::sync::Arc;

use crate::digest::Digest;
use crate::runtime::Runtime;

/// Digests of every version serving or draining in memory.
pub fn in_use(rt: &Runtime) -> HashSet<Digest> {
    let mut set: HashSet<Digest> = rt
        .routes
        .snapshot()
        .iter()
        .filter_map(|route| route.split())
        .flat_map(|split| {
            split
                .versions()
                .map(|(_, v, _)| v.digest.clone())
                .collect::<Vec<_>>()
        })
        .collect();
    set.extend(rt.draining().into_iter().map(|d| d.version.digest.clone()));
    set
}

/// Collects garbage in the background (a shutdown waits for it).
///
/// A collection holds the handover gate as an admin change does, from its first read of the
/// state to its last removed file, and none starts once a process taking over has the state:
/// the data directory is the new process's then (in a cluster too, where the state log is not
/// closed), and what it is compiling, loading or deploying there (its artifacts for another
/// engine, the files of a deploy not recorded yet) is nothing this process knows of.
pub fn collect(rt: &Arc<Runtime>) {
    let rt = rt.clone();
    rt.background.clone().spawn_job(async move {
        let Some(_gate) = rt.handover.hold().await else {
            tracing::debug!(
                "garbage collection skipped: the data directory is with the process that took over"
            );
            return;
        };
        let serving = in_use(&rt);
        let protector = rt.clone();
        let protect =
            Box::new(move |d: &Digest| serving.contains(d) || protector.pending.contains(d));
        let removed = match rt.state.collect(protect).await {
            Ok(removed) => removed.len(),
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "garbage collection failed");
                return;
            }
        };
        let known: HashSet<Digest> = match rt.state.modules().await {
            Ok(modules) => modules.into_iter().map(|(d, _)| d).collect(),
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "garbage collection failed");
                return;
            }
        };
        let sweeper = rt.clone();
        let swept = tokio::task::spawn_blocking(move || {
            let serving = in_use(&sweeper);
            sweeper
                .files
                .sweep(&|d| known.contains(d) || serving.contains(d) || sweeper.pending.contains(d))
        })
        .await
        .unwrap_or(0);
        if removed > 0 || swept > 0 {
            tracing::info!(
                removed,
                files = swept,
                "stored modules no route references were removed"
            );
        }
    });
}
