//! Rollouts: a candidate version takes a growing share of a route's requests, step by step,
//! while gates in this process watch it (its error rate, and its p99 against the stable
//! version's, over each step); a breach takes it out of the split within a second and records
//! why. A healthy candidate is promoted at the end. Operators can promote, abort, pause, resume
//! or set the weight by hand.
//!
//! Every change a rollout makes (start, a step, a weight, promote, roll back, abort) is a route
//! change like any other: planned against the stored record, recorded in the state log, applied
//! through `crate::deploy::apply`. The rollout's plan and state live in the record
//! ([`RolloutRecord`]), so a restart continues where it was. Its controller ([`controller`]) is
//! route-lifetime state: one task per route with a live rollout, stopped through the route's
//! [`crate::route::RouteState`], started and stopped only by the [`supervise`] task, which
//! follows every committed change.

pub mod cluster;
pub mod controller;
pub mod evidence;
pub mod plan;
mod supervisor;

use std::sync::Arc;

use plan::{change, live, plan, promote, with_rollout};
pub use supervisor::supervise;

use crate::api;
use crate::deploy::apply::{self, Current, Plan, Planned};
use crate::deploy::{DeployError, Deployed, parse_digest, unix_ms};
use crate::names::RouteName;
use crate::route::{Route, Weight};
use crate::runtime::Runtime;
use crate::state::{CandidateRecord, RolloutState};

/// Starts a rollout of the stored module `request.version` on route `name`: the candidate
/// serves the first step's share at once. A second rollout while one runs is refused.
pub async fn start(
    rt: &Arc<Runtime>,
    name: &RouteName,
    request: api::RolloutRequest,
    by: String,
) -> Result<Route, DeployError> {
    let attributes = vec![
        crate::trace::KeyValue::new("handoff.route", name.as_str().to_owned()),
        crate::trace::KeyValue::new("handoff.version", request.version.clone()),
    ];
    crate::trace::change(
        rt.trace.as_deref(),
        "rollout start",
        attributes,
        start_now(rt, name, request, by),
    )
    .await
}

/// [`start`], within its span.
async fn start_now(
    rt: &Arc<Runtime>,
    name: &RouteName,
    request: api::RolloutRequest,
    by: String,
) -> Result<Route, DeployError> {
    let digest = parse_digest(&request.version)?;
    let applied = apply::change(rt, name, async |current: Current| {
        let record = current
            .stored()
            .ok_or_else(|| DeployError::UnknownRoute(name.as_str().to_owned()))?;
        current.refuse_during_rollout()?;
        if record.active == digest.as_str() {
            return Err(DeployError::InvalidLimits(format!(
                "{digest} is already the stable version of route `{}`",
                name.as_str()
            )));
        }
        let mut rollout =
            plan(&request, &record.active, &by).map_err(DeployError::InvalidLimits)?;
        if let Some(waves) = &request.waves {
            let waves = cluster::waves(rt, waves).map_err(DeployError::InvalidLimits)?;
            rollout.steps = vec![100.0; waves.len()];
            rollout.weight = 100.0;
            rollout.waves = Some(waves);
        }
        let mut module = rt
            .state
            .module(&digest)
            .await
            .map_err(crate::deploy::internal)?
            .ok_or_else(|| {
                DeployError::UnknownVersion(format!(
                    "no module {digest} is stored; upload it first (POST /v1/modules, handoff upload)"
                ))
            })?;
        crate::deploy::prepare::check_stored_signature(rt, &digest, &module).await?;
        module.pinned = false;
        let mut next = record.clone();
        next.candidate = Some(CandidateRecord {
            version: digest.to_string(),
            settings: record.settings.clone(),
            weight: rollout.weight,
            sticky: rollout.sticky.clone(),
        });
        let next = with_rollout(next, rollout);
        Ok(Planned::Change(Box::new(Plan {
            next: Some(next),
            modules: vec![(digest.clone(), module)],
            built: Vec::new(),
        })))
    })
    .await?;
    tracing::info!(target: "audit", who = %by, route = name.as_str(), candidate = %digest, "rollout started");
    applied
        .route
        .ok_or_else(|| DeployError::UnknownRoute(name.as_str().to_owned()))
}

/// What an operator does to a running rollout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    /// Make the candidate the stable version now.
    Promote,
    /// Take the candidate out of the split; it drains.
    Abort,
    /// Stop stepping (gates keep watching).
    Pause,
    /// Step again.
    Resume,
    /// Set the weight by hand (percent) and pause.
    Weight(f64),
}

/// Applies `action` to route `name`'s rollout for `by`.
pub async fn act(
    rt: &Arc<Runtime>,
    name: &RouteName,
    action: Action,
    by: &str,
) -> Result<Deployed, DeployError> {
    // The action as the API names it (`POST .../rollout/{action}`; `weight` for a PATCH).
    let what = match action {
        Action::Promote => "promote",
        Action::Abort => "abort",
        Action::Pause => "pause",
        Action::Resume => "resume",
        Action::Weight(_) => "weight",
    };
    let mut attributes = vec![
        crate::trace::KeyValue::new("handoff.route", name.as_str().to_owned()),
        crate::trace::KeyValue::new("handoff.rollout.action", what),
    ];
    if let Action::Weight(weight) = action {
        attributes.push(crate::trace::KeyValue::new(
            "handoff.rollout.weight",
            weight,
        ));
    }
    crate::trace::change(
        rt.trace.as_deref(),
        "rollout action",
        attributes,
        act_now(rt, name, action, by),
    )
    .await
}

/// [`act`], within its span.
async fn act_now(
    rt: &Arc<Runtime>,
    name: &RouteName,
    action: Action,
    by: &str,
) -> Result<Deployed, DeployError> {
    if let Action::Weight(weight) = action {
        Weight::from_percent(weight).map_err(DeployError::InvalidLimits)?;
    }
    let applied = apply::change(rt, name, async |current: Current| {
        let (record, mut rollout) = live(&current)?;
        rollout.driver = None;
        match action {
            Action::Promote => return Ok(promote(record, rollout, by)),
            Action::Abort => {
                rollout.state = RolloutState::Aborted;
                rollout.weight = 0.0;
            }
            Action::Pause => rollout.state = RolloutState::Paused,
            Action::Resume => {
                rollout.state = RolloutState::Running;
                rollout.step_started_ms = unix_ms();
            }
            Action::Weight(weight) => {
                rollout.state = RolloutState::Paused;
                rollout.weight = weight;
            }
        }
        change(with_rollout(record, rollout))
    })
    .await?;
    tracing::info!(target: "audit", who = by, route = name.as_str(), action = ?action, "rollout changed");
    Ok(applied.deployed(None))
}

/// The rollout of `route` as the admin API shows it, with each version's figures over the
/// current step.
pub fn status(route: &Route) -> Option<api::RolloutStatus> {
    let rollout = route.record.rollout.as_ref()?;
    let mut versions = Vec::new();
    if let (Some(window), Some(split)) = (route.state.window(), route.split())
        && window.step == rollout.step
    {
        let sides = split
            .versions()
            .filter(|(role, _, _)| *role != crate::route::Role::Shadow);
        for (role, version, _) in sides {
            let start = if version.digest == window.candidate.0 {
                &window.candidate.1
            } else if version.digest == window.stable.0 {
                &window.stable.1
            } else {
                continue;
            };
            let step = version.stats.snapshot().since(start);
            versions.push(api::StepFigures {
                version: version.digest.to_string(),
                role: role.as_str().to_owned(),
                requests: step.completed,
                error_rate: step.error_rate(),
                p50_ms: step.percentile_ms(0.5),
                p99_ms: step.percentile_ms(0.99),
            });
        }
    }
    Some(api::RolloutStatus {
        state: serde_json::to_value(rollout.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        stable: rollout.stable.clone(),
        candidate: rollout.candidate.clone(),
        weight: rollout.weight,
        step: rollout.step,
        steps: rollout.steps.clone(),
        sticky: rollout.sticky.clone(),
        step_time_ms: rollout.step_time_ms,
        step_requests: rollout.step_requests,
        max_error_rate: rollout.max_error_rate,
        max_p99_ratio: rollout.max_p99_ratio,
        min_requests: rollout.min_requests,
        manual: rollout.manual,
        step_started_ms: rollout.step_started_ms,
        by: rollout.by.clone(),
        reason: rollout.reason.clone(),
        waves: rollout.waves.clone(),
        driver: rollout.driver.clone(),
        versions,
    })
}
