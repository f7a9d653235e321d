//! `handoff status ROUTE --watch`: the route's split, its rollout's step and gates, each
//! version's figures over the step (requests, error rate, p50, p99) and its draining versions,
//! redrawn on every event about the route (`GET /v1/events?route=ROUTE`) and once a second
//! (`GET /v1/routes/{name}`), until a rollout it saw running ends: exit 0 when it was promoted,
//! 1 (with the reason) when it was rolled back or aborted. On a terminal the screen is redrawn;
//! otherwise each event is a line, and so is each change of the figures (at most one a second).

use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::time::{Duration, SystemTime};

use http::Method;

use super::admin::{AdminClient, encode, print};
use super::events::line;
use super::render::{ago, key_values, short, table};
use crate::api::{EventKind, RouteStatus};
use crate::exit::{self, Failure};

/// How often the figures are read again between events.
const REFRESH: Duration = Duration::from_secs(1);

/// Watches route `route` until its rollout ends.
pub async fn watch(client: AdminClient, route: &str) -> Result<(), Failure> {
    let terminal = std::io::stdout().is_terminal();
    let path = format!("/v1/routes/{}", encode(route));
    let read = async || -> Result<RouteStatus, Failure> {
        client.call("status", Method::GET, &path, None, false).await
    };
    let mut stream = client.events(Some(route), None).await?;
    let mut status = read().await?;
    let mut last_id = None;
    let mut was_live = false;
    let mut end_seen = false;
    let mut shown = String::new();
    let mut tick = tokio::time::interval(REFRESH);
    loop {
        let live = status
            .rollout
            .as_ref()
            .is_some_and(|r| matches!(r.state.as_str(), "running" | "paused"));
        let text = if terminal {
            screen(&status, SystemTime::now())
        } else {
            summary(&status)
        };
        if text != shown {
            if terminal {
                print(format!("\x1b[H\x1b[2J{text}").as_bytes());
            } else {
                print(text.as_bytes());
            }
            shown = text;
        }
        if was_live && !live {
            // The event that ended it may still be on its way: print it too (briefly).
            let wait = Duration::from_secs(2);
            while !terminal && !end_seen {
                match tokio::time::timeout(wait, stream.next()).await {
                    Ok(Ok(Some(event))) => {
                        print(line(&event).as_bytes());
                        end_seen = ends(event.kind);
                    }
                    _ => break,
                }
            }
            return ended(route, &status);
        }
        was_live |= live;
        tokio::select! {
            next = stream.next() => match next? {
                Some(event) => {
                    if event.id != 0 {
                        last_id = Some(event.id);
                    }
                    if !terminal {
                        print(line(&event).as_bytes());
                    }
                    end_seen = ends(event.kind)
                        || (end_seen && event.kind != EventKind::RolloutStarted);
                    if event.kind == EventKind::Deleted {
                        return Err(Failure::new(exit::FAILED, format!("route {route} was deleted")));
                    }
                }
                None => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    stream = client.events(Some(route), last_id).await?;
                }
            },
            _ = tick.tick() => {}
        }
        status = read().await?;
    }
}

/// Whether an event of `kind` ends a rollout.
fn ends(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::RolloutPromoted | EventKind::RolloutRolledBack | EventKind::RolloutAborted
    )
}

/// How the watch ends once the rollout it saw running is over.
fn ended(route: &str, status: &RouteStatus) -> Result<(), Failure> {
    let Some(rollout) = &status.rollout else {
        return Err(Failure::new(
            exit::FAILED,
            format!("route {route} has no rollout any more"),
        ));
    };
    match rollout.state.as_str() {
        "promoted" => Ok(()),
        "rolled_back" => Err(Failure::new(
            exit::FAILED,
            format!(
                "the rollout of {} on route {route} was rolled back: {}",
                short(&rollout.candidate),
                rollout.reason.as_deref().unwrap_or("no reason recorded")
            ),
        )),
        other => Err(Failure::new(
            exit::FAILED,
            format!(
                "the rollout of {} on route {route} ended {}",
                short(&rollout.candidate),
                other.replace('_', " ")
            ),
        )),
    }
}

/// The split: each version serving the route with its role and weight.
fn split(status: &RouteStatus) -> String {
    status
        .versions
        .iter()
        .map(|v| format!("{} {} {}%", v.role, short(&v.version.version), v.weight))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ms(value: Option<f64>) -> String {
    value.map_or("-".to_owned(), |v| format!("{v:.1} ms"))
}

/// The whole screen.
pub fn screen(status: &RouteStatus, now: SystemTime) -> String {
    let now_ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut lines = vec![
        ("route", format!("{} at {}", status.route, status.prefix)),
        ("split", split(status)),
    ];
    if let Some(r) = &status.rollout {
        lines.push((
            "rollout",
            format!(
                "{}, step {} of {} at {}% ({}), {} in the step, started by {}",
                r.state.replace('_', " "),
                r.step + 1,
                r.steps.len(),
                r.weight,
                r.steps
                    .iter()
                    .map(|s| format!("{s}"))
                    .collect::<Vec<_>>()
                    .join(" → "),
                ago(now_ms.saturating_sub(r.step_started_ms)),
                r.by
            ) + &r
                .driver
                .as_ref()
                .map_or(String::new(), |node| format!(", driven by node {node}")),
        ));
        lines.push((
            "advances",
            match r.manual {
                true => "by hand only (manual)".to_owned(),
                false => format!(
                    "after {} and {} candidate requests per step",
                    ago(r.step_time_ms),
                    r.step_requests
                ),
            },
        ));
        lines.push((
            "gates",
            format!(
                "error rate ≤ {}, p99 ≤ {}× stable, after {} candidate requests",
                r.max_error_rate, r.max_p99_ratio, r.min_requests
            ),
        ));
        if let Some(reason) = &r.reason {
            lines.push(("reason", reason.clone()));
        }
    }
    let mut out = key_values(&lines);
    if let Some(r) = &status.rollout
        && !r.versions.is_empty()
    {
        let rows: Vec<[String; 6]> = r
            .versions
            .iter()
            .map(|v| {
                [
                    short(&v.version).to_owned(),
                    v.role.clone(),
                    v.requests.to_string(),
                    format!("{:.3}", v.error_rate),
                    ms(v.p50_ms),
                    ms(v.p99_ms),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(
            &["VERSION", "ROLE", "REQUESTS", "ERROR-RATE", "P50", "P99"],
            &rows,
        ));
    }
    for draining in &status.draining {
        let _ = writeln!(
            out,
            "draining  {}: {} in flight, {} left",
            short(&draining.version.version),
            draining.version.in_flight,
            ago(draining.time_left_ms)
        );
    }
    out
}

/// One line: the split, the rollout's state and step, each version's figures, what drains.
pub fn summary(status: &RouteStatus) -> String {
    let mut parts = vec![format!("{}: {}", status.route, split(status))];
    if let Some(r) = &status.rollout {
        parts.push(format!(
            "rollout {} step {}/{} at {}%",
            r.state,
            r.step + 1,
            r.steps.len(),
            r.weight
        ));
        for v in &r.versions {
            parts.push(format!(
                "{} {}: {} requests, error rate {:.3}, p50 {}, p99 {}",
                v.role,
                short(&v.version),
                v.requests,
                v.error_rate,
                ms(v.p50_ms),
                ms(v.p99_ms)
            ));
        }
        if let Some(reason) = &r.reason {
            parts.push(format!("reason: {reason}"));
        }
    }
    for d in &status.draining {
        parts.push(format!(
            "draining {} ({} in flight)",
            short(&d.version.version),
            d.version.in_flight
        ));
    }
    parts.join(" | ") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{RolloutStatus, StepFigures};

    fn rollout() -> RolloutStatus {
        RolloutStatus {
            state: "running".into(),
            stable: "sha256:aaaaaaaaaaaaaaaa".into(),
            candidate: "sha256:bbbbbbbbbbbbbbbb".into(),
            weight: 25.0,
            step: 1,
            steps: vec![5.0, 25.0, 100.0],
            sticky: None,
            step_time_ms: 30_000,
            step_requests: 100,
            max_error_rate: 0.01,
            max_p99_ratio: 2.0,
            min_requests: 20,
            manual: false,
            step_started_ms: 1_000,
            by: "ci".into(),
            reason: None,
            waves: None,
            driver: Some("web-1".into()),
            versions: vec![StepFigures {
                version: "sha256:bbbbbbbbbbbbbbbb".into(),
                role: "candidate".into(),
                requests: 40,
                error_rate: 0.025,
                p50_ms: Some(2.0),
                p99_ms: None,
            }],
        }
    }

    fn status() -> RouteStatus {
        let json = serde_json::json!({
            "route": "app", "prefix": "/app", "requests": 1, "config": {},
            "limits": serde_json::to_value(crate::api::LimitsStatus::from(&crate::settings::Limits::default())).unwrap(),
            "outbound": [], "dir": null, "in_flight": 0,
            "active": {"version": "sha256:aaaaaaaaaaaaaaaa", "size_bytes": 1, "deployed_at_ms": 0,
                       "compile_ms": 1.0, "in_flight": 0, "requests": 0, "failures": 0},
            "draining": [{"version": "sha256:cccccccccccccccc", "size_bytes": 1, "deployed_at_ms": 0,
                          "compile_ms": 1.0, "in_flight": 3, "requests": 0, "failures": 0,
                          "retired_ms_ago": 1000, "time_left_ms": 29000}],
        });
        let mut status: RouteStatus = serde_json::from_value(json).unwrap();
        status.rollout = Some(rollout());
        status
    }

    #[test]
    fn the_screen_shows_step_gates_figures_and_drains() {
        let text = screen(&status(), SystemTime::UNIX_EPOCH + Duration::from_secs(3));
        for part in [
            "running, step 2 of 3 at 25% (5 → 25 → 100), 2 s in the step, started by ci, driven by node web-1",
            "after 30 s and 100 candidate requests per step",
            "error rate ≤ 0.01, p99 ≤ 2× stable, after 20 candidate requests",
            "bbbbbbbbbbbb  candidate  40        0.025       2.0 ms  -",
            "draining  cccccccccccc: 3 in flight, 29 s left",
        ] {
            assert!(text.contains(part), "{part:?} not in:\n{text}");
        }
        let line = summary(&status());
        assert!(line.contains("rollout running step 2/3 at 25%"), "{line}");
        assert!(
            line.contains(
                "candidate bbbbbbbbbbbb: 40 requests, error rate 0.025, p50 2.0 ms, p99 -"
            ),
            "{line}"
        );
        assert!(
            line.ends_with("draining cccccccccccc (3 in flight)\n"),
            "{line}"
        );
    }

    #[test]
    fn the_watch_ends_by_how_the_rollout_ended() {
        let mut status = status();
        let r = status.rollout.as_mut().unwrap();
        r.state = "promoted".into();
        assert!(ended("app", &status).is_ok());
        let r = status.rollout.as_mut().unwrap();
        r.state = "rolled_back".into();
        r.reason = Some("error rate 0.5".into());
        let failure = ended("app", &status).unwrap_err();
        assert_eq!(failure.code, exit::FAILED);
        assert!(
            failure.message.ends_with("rolled back: error rate 0.5"),
            "{failure}"
        );
    }
}
