//! What a change tells the event bus. Every change to a route ends in [`super::commit`] (made
//! here through [`super::apply::change`], or recorded by another node and applied by
//! [`super::remote::reconcile`]), which hands the record before and after to [`publish`]: the events are read off the difference (a
//! new stable version, a rollout that started, stepped, paused, was promoted or rolled back, a
//! shadow that started or stopped), so a change made by any path (an admin call, the rollout
//! controller, another node) is published the same way. Who made it comes from the history entry the change added, or from the task's
//! actor ([`crate::events::actor`]).
//!
//! Also the shadow figures: once every [`SHADOW_EVERY`], for each route with a shadow whose
//! counters changed, one [`Kind::ShadowFigures`] event.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::events::{CONTROLLER, Event, Kind, ShadowCounts, actor};
use crate::names::RouteName;
use crate::runtime::Runtime;
use crate::state::{RolloutState, RouteRecord};

/// How often the shadows' figures are looked at (and published when they changed).
pub const SHADOW_EVERY: Duration = Duration::from_secs(1);

/// Publishes the events of route `name` changing from `before` to `after` (`None`: absent).
pub(crate) fn publish(
    rt: &Runtime,
    name: &RouteName,
    before: Option<&RouteRecord>,
    after: Option<&RouteRecord>,
) {
    for event in events(name.as_str(), before, after, actor()) {
        rt.events.publish(event);
    }
}

/// The events of route `route` changing from `before` to `after`, made by `actor` where the
/// records do not say who.
pub(crate) fn events(
    route: &str,
    before: Option<&RouteRecord>,
    after: Option<&RouteRecord>,
    actor: Option<String>,
) -> Vec<Event> {
    let mut events = Vec::new();
    let Some(after) = after else {
        if let Some(before) = before {
            events.push(Event {
                by: actor,
                ..Event::new(Kind::Deleted, route).version(&before.active)
            });
        }
        return events;
    };
    let added = match before {
        Some(before) if before.history.last() == after.history.last() => None,
        _ => after.history.last(),
    };
    let activated = before.is_none_or(|b| b.active != after.active || b.settings != after.settings);
    if activated {
        events.push(Event {
            previous: before.map(|b| b.active.clone()),
            by: added.map(|e| e.by.clone()).or_else(|| actor.clone()),
            action: added.map(|e| e.action.clone()),
            label: added.and_then(|e| e.label.clone()),
            message: added.and_then(|e| e.message.clone()),
            ..Event::new(Kind::Activated, route).version(&after.active)
        });
    }
    if let Some(now) = &after.rollout {
        let was = before
            .and_then(|b| b.rollout.as_ref())
            .filter(|was| was.state.is_live() && was.candidate == now.candidate);
        let base = Event {
            previous: Some(now.stable.clone()),
            weight: Some(now.weight),
            step: Some(now.step),
            by: actor.clone(),
            ..Event::new(Kind::Unknown, route).version(&now.candidate)
        };
        let kind = match was {
            None if now.state.is_live() => Some(Kind::RolloutStarted),
            None => None,
            Some(was) => match (was.state, now.state) {
                (_, RolloutState::Promoted) => Some(Kind::RolloutPromoted),
                (_, RolloutState::RolledBack) => Some(Kind::RolloutRolledBack),
                (_, RolloutState::Aborted) => Some(Kind::RolloutAborted),
                (RolloutState::Paused, RolloutState::Running) => Some(Kind::RolloutResumed),
                (_, RolloutState::Paused) if was.weight != now.weight => Some(Kind::RolloutWeight),
                (RolloutState::Running, RolloutState::Paused) => Some(Kind::RolloutPaused),
                _ if was.step != now.step => Some(Kind::RolloutStep),
                _ => None,
            },
        };
        if let Some(kind) = kind {
            events.push(Event {
                kind,
                by: match kind {
                    Kind::RolloutStarted => Some(now.by.clone()),
                    Kind::RolloutPromoted => added.map(|e| e.by.clone()).or(base.by.clone()),
                    // A change another node's controller made (cluster mode) is the
                    // controller's here too.
                    _ => base
                        .by
                        .clone()
                        .or_else(|| now.driver.as_ref().map(|_| CONTROLLER.to_owned())),
                },
                reason: now
                    .reason
                    .clone()
                    .filter(|_| kind == Kind::RolloutRolledBack),
                // In a cluster, the node whose controller made the change.
                node: now.driver.clone().filter(|_| {
                    matches!(
                        kind,
                        Kind::RolloutStep | Kind::RolloutPromoted | Kind::RolloutRolledBack
                    )
                }),
                ..base
            });
        }
    }
    let shadow_before = before.and_then(|b| b.shadow.as_ref());
    match (shadow_before, &after.shadow) {
        (was, Some(now)) if was != Some(now) => events.push(Event {
            weight: Some(now.percent),
            by: actor,
            ..Event::new(Kind::ShadowStarted, route).version(&now.version)
        }),
        (Some(was), None) => events.push(Event {
            by: actor,
            ..Event::new(Kind::ShadowStopped, route).version(&was.version)
        }),
        _ => {}
    }
    events
}

/// Starts the task that publishes the shadows' figures when they change; it ends when the
/// server stops.
pub fn spawn_shadow_figures(rt: &Arc<Runtime>) {
    rt.background.spawn(shadow_figures(Arc::downgrade(rt)));
}

async fn shadow_figures(rt: Weak<Runtime>) {
    let mut published: HashMap<(String, String), ShadowCounts> = HashMap::new();
    loop {
        tokio::time::sleep(SHADOW_EVERY).await;
        let Some(rt) = rt.upgrade() else {
            return;
        };
        let mut seen = HashMap::new();
        for route in rt.routes.snapshot().iter() {
            let Some(shadow) = route.record.shadow.as_ref() else {
                continue;
            };
            let status = route.state.shadow.status(shadow);
            let counts = status.counts;
            let key = (route.name.as_str().to_owned(), shadow.version.clone());
            if published.get(&key) != Some(&counts) && counts != ShadowCounts::default() {
                rt.events.publish(Event {
                    shadow: Some(counts),
                    weight: Some(shadow.percent),
                    ..Event::new(Kind::ShadowFigures, route.name.as_str()).version(&shadow.version)
                });
            }
            seen.insert(key, counts);
        }
        published = seen;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{CandidateRecord, HistoryEntry, RolloutRecord, ShadowRecord};

    fn entry(version: &str, action: &str, by: &str) -> HistoryEntry {
        HistoryEntry {
            version: version.into(),
            size_bytes: 1,
            activated_at_ms: 1,
            by: by.into(),
            action: action.into(),
            label: Some("l".into()),
            message: None,
            config: vec![],
            limits: None,
            outbound: None,
            dir: None,
            kv: None,
        }
    }

    fn record(active: &str) -> RouteRecord {
        RouteRecord {
            prefix: "/a".into(),
            active: active.into(),
            settings: Default::default(),
            candidate: None,
            shadow: None,
            rollout: None,
            history: vec![entry(active, "deploy", "ci")],
            revision: 1,
            trace: None,
        }
    }

    fn rollout(state: RolloutState, step: usize, weight: f64) -> RolloutRecord {
        RolloutRecord {
            state,
            stable: "sha256:s".into(),
            candidate: "sha256:c".into(),
            steps: vec![5.0, 50.0, 100.0],
            step,
            weight,
            step_time_ms: 1,
            step_requests: 1,
            sticky: None,
            max_error_rate: 0.01,
            max_p99_ratio: 2.0,
            min_requests: 1,
            waves: None,
            driver: None,
            manual: false,
            step_started_ms: 1,
            by: "alice".into(),
            reason: Some("too many errors".into()),
        }
    }

    fn with(mut record: RouteRecord, rollout: RolloutRecord) -> RouteRecord {
        record.candidate = rollout.state.is_live().then(|| CandidateRecord {
            version: rollout.candidate.clone(),
            settings: Default::default(),
            weight: rollout.weight,
            sticky: None,
        });
        record.rollout = Some(rollout);
        record
    }

    fn kinds(events: &[Event]) -> Vec<Kind> {
        events.iter().map(|e| e.kind).collect()
    }

    #[test]
    fn deploys_and_deletes_are_read_off_the_records() {
        let v1 = record("sha256:1");
        let created = events("a", None, Some(&v1), Some("x".into()));
        assert_eq!(kinds(&created), [Kind::Activated]);
        assert_eq!(created[0].by.as_deref(), Some("ci"), "the history says who");
        assert_eq!(created[0].action.as_deref(), Some("deploy"));
        assert_eq!(created[0].label.as_deref(), Some("l"));
        let mut v2 = record("sha256:2");
        v2.history.insert(0, entry("sha256:1", "deploy", "ci"));
        let replaced = events("a", Some(&v1), Some(&v2), None);
        assert_eq!(replaced[0].previous.as_deref(), Some("sha256:1"));
        assert!(events("a", Some(&v1), Some(&v1), None).is_empty());
        let deleted = events("a", Some(&v1), None, Some("bob".into()));
        assert_eq!(kinds(&deleted), [Kind::Deleted]);
        assert_eq!(deleted[0].by.as_deref(), Some("bob"));
    }

    #[test]
    fn every_rollout_transition_has_its_kind() {
        let base = record("sha256:s");
        let running =
            |step, weight| with(base.clone(), rollout(RolloutState::Running, step, weight));
        let paused = |weight| with(base.clone(), rollout(RolloutState::Paused, 0, weight));
        let ended = |state| with(base.clone(), rollout(state, 1, 0.0));
        let cases = [
            (base.clone(), running(0, 5.0), Kind::RolloutStarted),
            (running(0, 5.0), running(1, 50.0), Kind::RolloutStep),
            (running(0, 5.0), paused(5.0), Kind::RolloutPaused),
            (running(0, 5.0), paused(30.0), Kind::RolloutWeight),
            (paused(5.0), paused(30.0), Kind::RolloutWeight),
            (paused(5.0), running(0, 5.0), Kind::RolloutResumed),
            (
                running(1, 50.0),
                ended(RolloutState::Aborted),
                Kind::RolloutAborted,
            ),
            (
                running(1, 50.0),
                ended(RolloutState::RolledBack),
                Kind::RolloutRolledBack,
            ),
        ];
        for (before, after, kind) in cases {
            let got = events("a", Some(&before), Some(&after), Some("op".into()));
            assert_eq!(kinds(&got), [kind], "{before:?} -> {after:?}");
            assert_eq!(got[0].version.as_deref(), Some("sha256:c"));
            let reason = got[0].reason.is_some();
            assert_eq!(reason, kind == Kind::RolloutRolledBack);
        }
        let started = events("a", Some(&base), Some(&running(0, 5.0)), Some("op".into()));
        assert_eq!(started[0].by.as_deref(), Some("alice"), "who started it");
        // A promotion makes the candidate stable: an activation too.
        let mut promoted = ended(RolloutState::Promoted);
        promoted.active = "sha256:c".into();
        promoted
            .history
            .push(entry("sha256:c", "promote", "rollout"));
        let got = events("a", Some(&running(2, 100.0)), Some(&promoted), None);
        assert_eq!(kinds(&got), [Kind::Activated, Kind::RolloutPromoted]);
        assert_eq!(got[0].action.as_deref(), Some("promote"));
        assert_eq!(got[1].by.as_deref(), Some("rollout"));
        // An ended rollout that stays in the record says nothing more.
        let after_it = ended(RolloutState::Aborted);
        assert!(events("a", Some(&after_it), Some(&after_it), None).is_empty());
    }

    #[test]
    fn shadows_starting_and_stopping_are_events() {
        let plain = record("sha256:s");
        let mut shadowed = plain.clone();
        shadowed.shadow = Some(ShadowRecord {
            version: "sha256:w".into(),
            settings: Default::default(),
            percent: 50.0,
            compare_headers: vec![],
            allow_outbound: false,
        });
        let got = events("a", Some(&plain), Some(&shadowed), None);
        assert_eq!(kinds(&got), [Kind::ShadowStarted]);
        assert_eq!(got[0].weight, Some(50.0));
        let got = events("a", Some(&shadowed), Some(&plain), None);
        assert_eq!(kinds(&got), [Kind::ShadowStopped]);
        assert_eq!(got[0].version.as_deref(), Some("sha256:w"));
    }
}
