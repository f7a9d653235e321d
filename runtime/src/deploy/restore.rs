//! Restart: every stored route is built from its record (artifacts loaded, or recompiled when
//! missing, corrupt or compiled by another build) and committed, through the same building
//! ([`super::apply::build`]) and commit tail ([`super::commit`]) as any change. A route whose version cannot be built is published as unavailable:
//! it keeps its prefix, answers 503, and can be deployed again or deleted.

use std::sync::Arc;

use super::apply;
use super::commit::{self, Commit, Source};
use crate::names::RouteName;
use crate::route::{Route, Serving};
use crate::runtime::Runtime;

/// What a restart restored.
#[derive(Debug, Default)]
pub struct Restored {
    /// Routes serving again.
    pub routes: usize,
    /// How many components had to be recompiled (artifact missing, corrupt or for another
    /// build).
    pub recompiled: usize,
    /// Routes that could not be restored, with the reason.
    pub failed: Vec<(String, String)>,
}

/// Restores every stored route (a `restore` span when tracing is on).
pub async fn restore(rt: &Arc<Runtime>) -> Restored {
    let restoring = async {
        let restored = restore_now(rt).await;
        crate::trace::annotate(|| {
            vec![
                crate::trace::KeyValue::new("handoff.routes", restored.routes as i64),
                crate::trace::KeyValue::new("handoff.recompiled", restored.recompiled as i64),
                crate::trace::KeyValue::new("handoff.failed", restored.failed.len() as i64),
            ]
        });
        Ok::<_, std::convert::Infallible>(restored)
    };
    match crate::trace::change(rt.trace.as_deref(), "restore", Vec::new(), restoring).await {
        Ok(restored) => restored,
        Err(never) => match never {},
    }
}

/// [`restore`], within its span.
async fn restore_now(rt: &Arc<Runtime>) -> Restored {
    let mut report = Restored::default();
    let stored = match rt.state.routes().await {
        Ok(stored) => stored,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "the stored routes are unreadable");
            return report;
        }
    };
    let compiles_before = rt.compiles();
    for stored in stored {
        let name = stored.name;
        let record = stored.record;
        let prefix = record.claimed_prefix(&name);
        // A route recorded at a prefix another route holds (two were recorded at one prefix
        // before prefixes were claims) is not served: the holder keeps the prefix.
        let claimed = match commit::claimed_elsewhere(rt, &name, &prefix).await {
            Ok(claimed) => claimed,
            Err(error) => Some(format!("its prefix claim is unreadable: {error:#}")),
        };
        if let Some(reason) = claimed {
            refuse(&mut report, &name, reason);
            continue;
        }
        let guard = rt.registry.lock(&name).await;
        let serving = match apply::build(rt, &name, &record, None, &[]).await {
            Ok(split) => {
                report.routes += 1;
                Serving::Live(split)
            }
            Err(error) => {
                let reason = error.to_string();
                tracing::error!(route = %name.as_str(), version = %record.active, error = %reason, "route not restored");
                report
                    .failed
                    .push((name.as_str().to_owned(), reason.clone()));
                Serving::Unavailable(reason.into())
            }
        };
        let route = Route {
            name: name.clone(),
            prefix: prefix.clone(),
            serving,
            state: guard.state.clone(),
            record: Arc::new(record),
        };
        let live = route.split().is_some();
        let writer = rt.routes.writer().await;
        let commit = Commit {
            name: &name,
            live: None,
            before: None,
            built: &[],
            source: Source::Restore,
        };
        if let Err(held) = commit::commit(rt, writer, commit, Some(route)).await {
            report.routes -= usize::from(live);
            refuse(&mut report, &name, commit::held(&prefix, &held.holder));
        }
    }
    report.recompiled = (rt.compiles() - compiles_before) as usize;
    report
}

/// Reports route `name` as not restored, for `reason`.
fn refuse(report: &mut Restored, name: &RouteName, reason: String) {
    tracing::error!(route = %name.as_str(), error = %reason, "route not restored");
    report.failed.push((name.as_str().to_owned(), reason));
}
