//! A rollout's record and how it changes: the plan a request asks for (with the defaults), and
//! the next route record for a step, a weight, a promotion or a rollback. Pure functions of
//! records, shared by the operator's actions and the controller.

use std::time::Duration;

use crate::api;
use crate::deploy::apply::{Current, Plan, Planned};
use crate::deploy::{DeployError, unix_ms};
use crate::route::{Sticky, Weight};
use crate::state::{CandidateRecord, HistoryEntry, RolloutRecord, RolloutState, RouteRecord};
use crate::units::parse_duration;

/// The weights of a rollout's steps unless it says otherwise, in percent.
pub const DEFAULT_STEPS: [f64; 4] = [5.0, 25.0, 50.0, 100.0];
/// The minimum time per step unless a rollout says otherwise.
pub const DEFAULT_STEP_TIME: Duration = Duration::from_secs(30);
/// The minimum candidate requests per step unless a rollout says otherwise.
pub const DEFAULT_STEP_REQUESTS: u64 = 100;
/// The highest candidate error rate over a step unless a rollout says otherwise.
pub const DEFAULT_MAX_ERROR_RATE: f64 = 0.01;
/// The highest candidate p99 over stable p99 unless a rollout says otherwise.
pub const DEFAULT_MAX_P99_RATIO: f64 = 2.0;
/// Candidate requests in a step before a gate may fire unless a rollout says otherwise.
pub const DEFAULT_MIN_REQUESTS: u64 = 20;

/// Checks a rollout request, filling in the defaults; the error is a sentence.
pub fn plan(
    request: &api::RolloutRequest,
    stable: &str,
    by: &str,
) -> Result<RolloutRecord, String> {
    if request.waves.is_some() && request.steps.is_some() {
        return Err(
            "give steps or waves, not both: a rollout in waves takes one wave per step".into(),
        );
    }
    let steps = request
        .steps
        .clone()
        .unwrap_or_else(|| DEFAULT_STEPS.to_vec());
    if steps.is_empty() || steps.len() > 100 {
        return Err("a rollout needs 1 to 100 steps".into());
    }
    for pair in steps.windows(2) {
        if pair[1] <= pair[0] {
            return Err(format!(
                "steps must rise: {} comes after {}",
                pair[1], pair[0]
            ));
        }
    }
    for (i, step) in steps.iter().enumerate() {
        Weight::from_percent(*step)
            .map_err(|e| format!("step {} of {} ({step} %): {e}", i + 1, steps.len()))?;
        if *step <= 0.0 {
            return Err("every step must give the candidate more than 0 %".into());
        }
    }
    let step_time = match &request.step_time {
        Some(text) => parse_duration(text).map_err(|e| format!("step_time: {e}"))?,
        None => DEFAULT_STEP_TIME,
    };
    if let Some(sticky) = &request.sticky {
        Sticky::parse(sticky)?;
    }
    let max_error_rate = request.max_error_rate.unwrap_or(DEFAULT_MAX_ERROR_RATE);
    if !(0.0..=1.0).contains(&max_error_rate) {
        return Err(format!(
            "max_error_rate is a share from 0 to 1; got {max_error_rate}"
        ));
    }
    let max_p99_ratio = request.max_p99_ratio.unwrap_or(DEFAULT_MAX_P99_RATIO);
    if !(max_p99_ratio.is_finite() && max_p99_ratio > 0.0) {
        return Err(format!(
            "max_p99_ratio must be more than 0; got {max_p99_ratio}"
        ));
    }
    Ok(RolloutRecord {
        state: RolloutState::Running,
        stable: stable.to_owned(),
        candidate: request.version.clone(),
        weight: steps[0],
        steps,
        step: 0,
        step_time_ms: step_time.as_millis() as u64,
        step_requests: request.step_requests.unwrap_or(DEFAULT_STEP_REQUESTS),
        sticky: request.sticky.clone(),
        max_error_rate,
        max_p99_ratio,
        min_requests: request.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS),
        manual: request.manual.unwrap_or(false),
        step_started_ms: unix_ms(),
        by: by.to_owned(),
        waves: None,
        reason: None,
        driver: None,
    })
}

/// The live rollout of the route `current` describes, or why there is none.
pub(crate) fn live(current: &Current<'_>) -> Result<(RouteRecord, RolloutRecord), DeployError> {
    let record = current
        .stored()
        .ok_or_else(|| DeployError::UnknownRoute(current.name().as_str().to_owned()))?;
    match &record.rollout {
        Some(rollout) if rollout.state.is_live() => Ok((record.clone(), rollout.clone())),
        _ => Err(DeployError::NoRollout(current.name().as_str().to_owned())),
    }
}

/// `record` with its rollout as `rollout` and the candidate at the rollout's weight (or out of
/// the split, when the rollout is over).
pub(crate) fn with_rollout(mut record: RouteRecord, rollout: RolloutRecord) -> RouteRecord {
    record.candidate = match (&record.candidate, rollout.state.is_live()) {
        (Some(candidate), true) => Some(CandidateRecord {
            weight: rollout.weight,
            sticky: rollout.sticky.clone(),
            ..candidate.clone()
        }),
        _ => None,
    };
    record.rollout = Some(rollout);
    record
}

/// A history entry for `version` with `settings` of `record`.
pub(crate) fn history_entry(
    version: &str,
    settings: &crate::state::SettingsRecord,
    action: &str,
    by: &str,
    message: Option<String>,
) -> HistoryEntry {
    HistoryEntry {
        version: version.to_owned(),
        size_bytes: 0,
        activated_at_ms: unix_ms(),
        by: by.to_owned(),
        action: action.to_owned(),
        label: None,
        message,
        config: settings.config.clone(),
        limits: settings.limits,
        outbound: Some(settings.outbound.clone()),
        dir: settings.dir.clone(),
        kv: Some(settings.kv.clone()),
    }
}

/// A plan that records `next`.
pub(crate) fn change(next: RouteRecord) -> Result<Planned, DeployError> {
    Ok(Planned::Change(Box::new(Plan {
        next: Some(next),
        modules: Vec::new(),
        built: Vec::new(),
    })))
}

/// The plan that makes the rollout's candidate the stable version.
pub(crate) fn promote(record: RouteRecord, mut rollout: RolloutRecord, by: &str) -> Planned {
    let Some(candidate) = record.candidate.clone() else {
        return Planned::Unchanged;
    };
    rollout.state = RolloutState::Promoted;
    rollout.weight = 100.0;
    let mut next = with_rollout(record, rollout);
    next.active = candidate.version.clone();
    next.settings = candidate.settings.clone();
    next.history.push(history_entry(
        &candidate.version,
        &candidate.settings,
        "promote",
        by,
        None,
    ));
    Planned::Change(Box::new(Plan {
        next: Some(next),
        modules: Vec::new(),
        built: Vec::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollout_request_gets_defaults_and_its_mistakes_named() {
        let request = api::RolloutRequest {
            version: "sha256:aa".into(),
            ..Default::default()
        };
        let rollout = plan(&request, "sha256:bb", "ci").unwrap();
        assert_eq!(rollout.steps, DEFAULT_STEPS);
        assert_eq!(rollout.weight, 5.0);
        assert_eq!(rollout.step_time_ms, 30_000);
        assert_eq!(rollout.step_requests, 100);
        assert_eq!(rollout.min_requests, 20);
        for (bad, says) in [
            (
                api::RolloutRequest {
                    steps: Some(vec![50.0, 25.0]),
                    ..request.clone()
                },
                "must rise",
            ),
            (
                api::RolloutRequest {
                    steps: Some(vec![0.0, 100.0]),
                    ..request.clone()
                },
                "more than 0",
            ),
            (
                api::RolloutRequest {
                    steps: Some(vec![50.0, 150.0]),
                    ..request.clone()
                },
                "0 to 100",
            ),
            (
                api::RolloutRequest {
                    step_time: Some("soon".into()),
                    ..request.clone()
                },
                "step_time",
            ),
            (
                api::RolloutRequest {
                    sticky: Some("query:x".into()),
                    ..request.clone()
                },
                "sticky",
            ),
            (
                api::RolloutRequest {
                    max_error_rate: Some(2.0),
                    ..request.clone()
                },
                "max_error_rate",
            ),
        ] {
            let error = plan(&bad, "sha256:bb", "ci").unwrap_err();
            assert!(error.contains(says), "{error}");
        }
    }
}
