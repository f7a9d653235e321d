//! The rollout controller: one task per route with a live rollout. Every [`TICK`] it compares
//! the candidate's figures over the current step with the gates, and steps, promotes or rolls
//! back through the route's ordinary change path. Each of its changes is planned against the
//! stored record and refused (unchanged) if the rollout moved on meanwhile (an operator paused
//! it, say), so an operator and the controller never undo each other. Like an admin change, a
//! step holds the handover gate: a process handing over to one taking over from it (`serve
//! --takeover`) makes none once the handover begins.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::cluster;
use super::evidence::breached;
use super::plan::{history_entry, promote, with_rollout};
use crate::deploy::apply::{self, Current, Plan, Planned};
use crate::deploy::unix_ms;
use crate::names::RouteName;
use crate::route::state::StepWindow;
use crate::runtime::Runtime;
use crate::state::{RolloutRecord, RolloutState};
use crate::stats::Snapshot;

/// How often the gates are checked: a breach takes the candidate out within this (plus the
/// change itself, milliseconds).
pub const TICK: Duration = Duration::from_millis(100);

/// The p99 gate fires only when the candidate's p99 is also this much above the stable
/// version's: below it, the two are within the noise of the machine and of the histogram's
/// buckets.
pub const P99_FLOOR_MS: f64 = 10.0;

/// Who the controller's changes are recorded as.
pub const BY: &str = crate::events::CONTROLLER;

/// Starts (or restarts) route `name`'s controller, stopping the one it had.
pub(super) fn spawn(rt: &Arc<Runtime>, name: &RouteName) {
    let Some(state) = rt.registry.get(name) else {
        return;
    };
    // Stopped by the next start, by the supervisor, or when the server stops; a step in
    // progress is applied whole first.
    let token = rt.background.scope();
    if let Some(old) = state.replace_controller(Some(token.clone())) {
        old.cancel();
    }
    state.set_window(None);
    rt.background
        .spawn_job(run(Arc::downgrade(rt), name.clone(), token));
}

/// What the gates say about a step.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Keep going.
    Hold,
    /// Go to the next step.
    Advance,
    /// The last step is done: make the candidate stable.
    Promote,
    /// A gate is breached: take the candidate out, for this reason.
    RollBack(String),
}

/// Judges a step: `stable` and `candidate` are the versions' figures over it, `elapsed` its
/// age.
pub fn judge(
    rollout: &RolloutRecord,
    stable: &Snapshot,
    candidate: &Snapshot,
    elapsed: Duration,
) -> Verdict {
    let step = rollout.step;
    // As the status, the console and the events say it: counted from 1.
    let shown = || format!("step {} of {}", step + 1, rollout.steps.len());
    if candidate.completed >= rollout.min_requests {
        let rate = candidate.error_rate();
        if breached(
            candidate.errors,
            candidate.completed,
            rollout.max_error_rate,
        ) {
            return Verdict::RollBack(format!(
                "the candidate's error rate {rate:.3} ({} of {} requests) in {} is above max_error_rate {}",
                candidate.errors,
                candidate.completed,
                shown(),
                rollout.max_error_rate
            ));
        }
        // The p99 gate: more than 1 % of the candidate's requests slower than the stable
        // version's p99 times the ratio (and the floor above it).
        if stable.completed >= rollout.min_requests
            && let (Some(theirs), Some(ours)) =
                (stable.percentile_ms(0.99), candidate.percentile_ms(0.99))
        {
            let limit = (theirs * rollout.max_p99_ratio).max(theirs + P99_FLOOR_MS);
            let slower = candidate.slower_than_ms(limit);
            if breached(slower, candidate.completed, 0.01) {
                return Verdict::RollBack(format!(
                    "the candidate's p99 {ours:.1} ms is {:.2}x the stable version's {theirs:.1} ms in {}: {slower} of its {} requests took over {limit:.1} ms, more than 1 % (the stable version: {} requests), above max_p99_ratio {}",
                    ours / theirs.max(f64::MIN_POSITIVE),
                    shown(),
                    candidate.completed,
                    stable.completed,
                    rollout.max_p99_ratio
                ));
            }
        }
    }
    let due = elapsed.as_millis() as u64 >= rollout.step_time_ms
        && candidate.completed >= rollout.step_requests;
    if rollout.state != RolloutState::Running || rollout.manual || !due {
        return Verdict::Hold;
    }
    if step + 1 < rollout.steps.len() {
        Verdict::Advance
    } else {
        Verdict::Promote
    }
}

async fn run(rt: Weak<Runtime>, name: RouteName, token: CancellationToken) {
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        let Some(rt) = rt.upgrade() else {
            return;
        };
        let Some(route) = rt.routes.snapshot().get(&name).cloned() else {
            return;
        };
        let Some(rollout) = route.record.rollout.clone().filter(|r| r.state.is_live()) else {
            route.state.set_window(None);
            return;
        };
        let Some((stable, candidate)) = route.split().and_then(|split| {
            let candidate = split.candidate.as_ref()?.version.clone();
            Some((split.stable.clone(), candidate))
        }) else {
            continue;
        };
        // In a cluster only the leader judges and steps; the others hold, ready to take over.
        // A process handing over to one taking over from it (`serve --takeover`) holds too:
        // the new process drives from its start, and a switch back starts a fresh window.
        if !cluster::drives(&rt) || rt.handover.released() {
            route.state.set_window(None);
            continue;
        }
        let window = match route.state.window() {
            Some(window)
                if window.step == rollout.step
                    && window.stable.0 == stable.digest
                    && window.candidate.0 == candidate.digest =>
            {
                window
            }
            _ => {
                let window = StepWindow {
                    step: rollout.step,
                    started: Instant::now(),
                    stable: (stable.digest.clone(), cluster::figures(&rt, &name, &stable)),
                    candidate: (
                        candidate.digest.clone(),
                        cluster::figures(&rt, &name, &candidate),
                    ),
                };
                route.state.set_window(Some(window.clone()));
                window
            }
        };
        let stable_step = cluster::figures(&rt, &name, &stable).since(&window.stable.1);
        let candidate_step = cluster::figures(&rt, &name, &candidate).since(&window.candidate.1);
        let elapsed = Duration::from_millis(unix_ms().saturating_sub(rollout.step_started_ms));
        let verdict = judge(&rollout, &stable_step, &candidate_step, elapsed);
        if verdict == Verdict::Hold {
            continue;
        }
        if let Verdict::RollBack(reason) = &verdict {
            tracing::warn!(route = name.as_str(), candidate = %rollout.candidate, reason = %reason, "rollout gate breached; rolling back");
        }
        // The step, with the gate's decision, is a change of its own in the trace.
        let decided = match &verdict {
            Verdict::Hold => "hold",
            Verdict::Advance => "advance",
            Verdict::Promote => "promote",
            Verdict::RollBack(_) => "roll back",
        };
        let mut attributes = vec![
            crate::trace::KeyValue::new("handoff.route", name.as_str().to_owned()),
            crate::trace::KeyValue::new("handoff.version", rollout.candidate.clone()),
            crate::trace::KeyValue::new("handoff.rollout.step", rollout.step as i64 + 1),
            crate::trace::KeyValue::new("handoff.rollout.weight", rollout.weight),
            crate::trace::KeyValue::new("handoff.rollout.decision", decided),
        ];
        if let Verdict::RollBack(reason) = &verdict {
            attributes.push(crate::trace::KeyValue::new(
                "handoff.rollout.reason",
                reason.clone(),
            ));
        }
        // A step is a change as an admin one is: it holds the handover gate while it is made,
        // so a takeover waits for it, and none is made here once the state is on its way to
        // another process (which judges with windows of its own).
        let Some(_gate) = rt.handover.hold().await else {
            continue;
        };
        let step = crate::trace::change(
            rt.trace.as_deref(),
            "rollout step",
            attributes,
            act(&rt, &name, &rollout, verdict.clone()),
        );
        let acting = crate::events::ACTOR.scope(BY.to_owned(), step);
        match acting.await {
            Ok(()) => {
                tracing::info!(target: "audit", who = BY, route = name.as_str(), verdict = ?verdict, "rollout stepped");
                route.state.set_window(None);
            }
            Err(error) => {
                tracing::warn!(route = name.as_str(), error = %error, "a rollout step failed; trying again");
            }
        }
    }
}

/// Carries out `verdict` on the rollout that was `observed`, unless it moved on meanwhile.
async fn act(
    rt: &Arc<Runtime>,
    name: &RouteName,
    observed: &RolloutRecord,
    verdict: Verdict,
) -> Result<(), crate::deploy::DeployError> {
    apply::change(rt, name, async |current: Current| {
        let Some(record) = current.stored() else {
            return Ok(Planned::Unchanged);
        };
        let Some(rollout) = record.rollout.clone() else {
            return Ok(Planned::Unchanged);
        };
        let same = rollout.state == observed.state
            && rollout.step == observed.step
            && rollout.candidate == observed.candidate
            && rollout.weight == observed.weight;
        if !same {
            return Ok(Planned::Unchanged);
        }
        let mut rollout = rollout;
        rollout.driver = rt.cluster.as_ref().map(|c| c.node_name().to_owned());
        let next = match verdict {
            Verdict::Hold => return Ok(Planned::Unchanged),
            Verdict::Promote => return Ok(promote(record.clone(), rollout, BY)),
            Verdict::Advance => {
                rollout.step += 1;
                rollout.weight = rollout.steps[rollout.step];
                rollout.step_started_ms = unix_ms();
                with_rollout(record.clone(), rollout)
            }
            Verdict::RollBack(reason) => {
                rollout.state = RolloutState::RolledBack;
                rollout.weight = 0.0;
                rollout.reason = Some(reason.clone());
                let mut next = with_rollout(record.clone(), rollout);
                next.history.push(history_entry(
                    &next.active.clone(),
                    &next.settings.clone(),
                    "rollback",
                    BY,
                    Some(reason),
                ));
                next
            }
        };
        Ok(Planned::Change(Box::new(Plan {
            next: Some(next),
            modules: Vec::new(),
            built: Vec::new(),
        })))
    })
    .await
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::VersionStats;

    fn rollout() -> RolloutRecord {
        crate::rollout::plan::plan(
            &crate::api::RolloutRequest {
                version: "sha256:cc".into(),
                steps: Some(vec![10.0, 100.0]),
                step_time: Some("1s".into()),
                step_requests: Some(50),
                min_requests: Some(20),
                ..Default::default()
            },
            "sha256:ss",
            "test",
        )
        .unwrap()
    }

    fn figures(requests: u64, failing: u64, ms: u64) -> Snapshot {
        let stats = VersionStats::default();
        for i in 0..requests {
            stats.record(
                if i < failing { 500 } else { 200 },
                Duration::from_millis(ms),
                false,
            );
        }
        stats.snapshot()
    }

    #[test]
    fn gates_wait_for_enough_requests_then_judge() {
        let rollout = rollout();
        let second = Duration::from_secs(1);
        // Too few candidate requests: even all failing, nothing fires yet.
        assert_eq!(
            judge(&rollout, &figures(100, 0, 2), &figures(10, 10, 2), second),
            Verdict::Hold
        );
        assert!(matches!(
            judge(&rollout, &figures(100, 0, 2), &figures(30, 10, 2), second),
            Verdict::RollBack(reason) if reason.contains("error rate 0.333 (10 of 30 requests) in step 1 of 2")
        ));
        // One failed or one slow request among thirty: luck, not a breach.
        assert_eq!(
            judge(
                &rollout,
                &figures(100, 0, 2),
                &figures(30, 1, 2),
                Duration::ZERO
            ),
            Verdict::Hold
        );
        let mut one_slow = figures(29, 0, 2);
        one_slow.completed += 1;
        one_slow.latency[7] += 1; // 100-200 ms
        assert_eq!(
            judge(&rollout, &figures(100, 0, 2), &one_slow, Duration::ZERO),
            Verdict::Hold
        );
        assert!(matches!(
            judge(&rollout, &figures(100, 0, 2), &figures(30, 0, 300), Duration::ZERO),
            Verdict::RollBack(reason) if reason.contains("in step 1 of 2: 30 of its 30 requests took over 12.0 ms")
        ));
        // Within the floor: not a breach.
        assert_eq!(
            judge(
                &rollout,
                &figures(100, 0, 1),
                &figures(30, 0, 4),
                Duration::ZERO
            ),
            Verdict::Hold
        );
        // Healthy: advances once the step's time and requests are in.
        assert_eq!(
            judge(&rollout, &figures(100, 0, 2), &figures(30, 0, 2), second),
            Verdict::Hold,
            "too few requests for the step"
        );
        assert_eq!(
            judge(&rollout, &figures(100, 0, 2), &figures(60, 0, 2), second),
            Verdict::Advance
        );
        let last = RolloutRecord {
            step: 1,
            ..rollout.clone()
        };
        assert_eq!(
            judge(&last, &figures(0, 0, 2), &figures(60, 0, 2), second),
            Verdict::Promote
        );
        let manual = RolloutRecord {
            manual: true,
            ..rollout
        };
        assert_eq!(
            judge(&manual, &figures(100, 0, 2), &figures(60, 0, 2), second),
            Verdict::Hold
        );
    }
}
