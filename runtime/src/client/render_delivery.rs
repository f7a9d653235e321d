//! How rollouts and shadows print: a rollout's state, gates and per-version figures over the
//! step ([`render`]); a shadow's counts, what its mismatches were and examples of each
//! ([`render_shadow`]). Pure functions of the typed answers, unit-tested.

use std::fmt::Write as _;
use std::time::SystemTime;

use super::render::{ago, key_values, short, table};
use crate::api::{self, RolloutStatus, ShadowStatus};

fn percent(weight: f64) -> String {
    format!("{} %", (weight * 1_000.0).round() / 1_000.0)
}

fn millis(ms: Option<f64>) -> String {
    ms.map_or("-".to_owned(), |ms| format!("{ms:.1} ms"))
}

/// A rollout: where it stands, its gates, each version's figures over the step.
pub fn render(body: &RolloutStatus) -> String {
    let state = match body.state.as_str() {
        "running" | "paused" => format!(
            "{}, step {} of {} at {}{}",
            body.state,
            body.step + 1,
            body.steps.len(),
            percent(body.weight),
            if body.manual { " (manual)" } else { "" }
        ),
        _ => body.state.replace('_', " "),
    };
    let steps = match &body.waves {
        // In waves, each step is a wave of nodes serving the candidate fully.
        Some(waves) => waves
            .iter()
            .map(|wave| wave.join(", "))
            .collect::<Vec<_>>()
            .join(" → "),
        None => body
            .steps
            .iter()
            .map(|s| percent(*s))
            .collect::<Vec<_>>()
            .join(" → "),
    };
    let mut lines = vec![
        ("rollout", state),
        ("candidate", body.candidate.clone()),
        ("stable", body.stable.clone()),
        (
            if body.waves.is_some() {
                "waves"
            } else {
                "steps"
            },
            steps,
        ),
        (
            "sticky",
            body.sticky
                .clone()
                .unwrap_or_else(|| "none (a random split per request)".to_owned()),
        ),
        (
            "gates",
            format!(
                "error rate ≤ {}, p99 ≤ {}× stable, once the candidate has {} requests in the step",
                body.max_error_rate, body.max_p99_ratio, body.min_requests
            ),
        ),
        (
            "a step",
            format!(
                "at least {} and {} candidate requests",
                ago(body.step_time_ms),
                body.step_requests
            ),
        ),
    ];
    if let Some(reason) = &body.reason {
        lines.push(("reason", reason.clone()));
    }
    if let Some(node) = &body.driver {
        lines.push((
            "driven by",
            format!("node {node} (its last step, promotion or rollback)"),
        ));
    }
    let mut out = key_values(&lines);
    if !body.versions.is_empty() {
        let rows: Vec<[String; 6]> = body
            .versions
            .iter()
            .map(|v| {
                [
                    short(&v.version).to_owned(),
                    v.role.clone(),
                    v.requests.to_string(),
                    format!("{:.2} %", v.error_rate * 100.0),
                    millis(v.p50_ms),
                    millis(v.p99_ms),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(
            &["VERSION", "ROLE", "REQUESTS", "ERRORS", "P50", "P99"],
            &rows,
        ));
    }
    out
}

/// A shadow: what it was compared on and what it found, the latest mismatches last.
pub fn render_shadow(body: &ShadowStatus, now: SystemTime) -> String {
    let now_ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut out = key_values(&[
        ("shadow", body.version.clone()),
        ("copied", percent(body.percent)),
        (
            "compared",
            format!("status, body digest, {}", body.compare_headers.join(", ")),
        ),
        (
            "outbound",
            if body.allow_outbound {
                "allowed to the route's allow-list".to_owned()
            } else {
                "denied (copies have no side effects)".to_owned()
            },
        ),
        (
            "requests",
            format!(
                "{} compared: {} match, {} mismatch, {} noise, {} errors; {} skipped",
                body.counts.requests,
                body.counts.matches,
                body.counts.mismatches,
                body.counts.noise,
                body.counts.errors,
                body.counts.skipped
            ),
        ),
    ]);
    let kinds = kinds(body);
    if !kinds.is_empty() {
        let _ = writeln!(
            out,
            "\nmismatches by kind (at most {EXAMPLES} of the latest examples each):"
        );
    }
    let width = kinds
        .iter()
        .map(|(_, count)| count.to_string().len())
        .max()
        .unwrap_or(1);
    for (kind, count) in &kinds {
        let _ = writeln!(out, "  {count:>width$}  {kind}");
        let examples = body
            .samples
            .iter()
            .rev()
            .filter(|sample| &sample_kind(sample) == kind)
            .take(EXAMPLES);
        for sample in examples {
            let _ = writeln!(
                out,
                "  {:width$}    {} {} ({} ago): stable {} {} bytes {:?}, shadow {} {} bytes {:?}",
                "",
                sample.method,
                sample.path,
                ago(now_ms.saturating_sub(sample.at_ms)),
                sample.stable_status,
                sample.stable_size,
                sample.stable_start,
                sample.shadow_status,
                sample.shadow_size,
                sample.shadow_start,
            );
        }
    }
    out
}

/// Examples shown per kind of mismatch.
const EXAMPLES: usize = 3;

/// A sample's kind (as a server that names none would have named it).
fn sample_kind(sample: &api::ShadowSample) -> String {
    if !sample.kind.is_empty() {
        return sample.kind.clone();
    }
    let mut parts = Vec::new();
    if sample.stable_status != sample.shadow_status {
        parts.push(format!(
            "status {} → {}",
            sample.stable_status, sample.shadow_status
        ));
    }
    if sample.stable_digest != sample.shadow_digest {
        parts.push("body".to_owned());
    }
    parts.extend(sample.headers.iter().map(|h| format!("header {h}")));
    parts.join(", ")
}

/// The kinds of mismatch and their counts, the most frequent first: the server's (every
/// mismatch), else the samples' own.
fn kinds(body: &ShadowStatus) -> Vec<(String, u64)> {
    if !body.kinds.is_empty() {
        return body
            .kinds
            .iter()
            .map(|k| (k.kind.clone(), k.count))
            .collect();
    }
    let mut kinds: Vec<(String, u64)> = Vec::new();
    for sample in &body.samples {
        let kind = sample_kind(sample);
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, count)) => *count += 1,
            None => kinds.push((kind, 1)),
        }
    }
    kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
    kinds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout() -> RolloutStatus {
        RolloutStatus {
            state: "running".into(),
            stable: "sha256:aaaaaaaaaaaaaaaa".into(),
            candidate: "sha256:bbbbbbbbbbbbbbbb".into(),
            weight: 25.0,
            step: 1,
            steps: vec![5.0, 25.0, 50.0, 100.0],
            sticky: Some("header:x-user".into()),
            step_time_ms: 30_000,
            step_requests: 100,
            max_error_rate: 0.01,
            max_p99_ratio: 2.0,
            min_requests: 20,
            manual: false,
            step_started_ms: 0,
            by: "admin".into(),
            reason: None,
            waves: None,
            driver: None,
            versions: vec![api::StepFigures {
                version: "sha256:bbbbbbbbbbbbbbbb".into(),
                role: "candidate".into(),
                requests: 42,
                error_rate: 0.025,
                p50_ms: Some(1.25),
                p99_ms: None,
            }],
        }
    }

    #[test]
    fn a_rollout_shows_its_step_gates_and_figures() {
        let text = render(&rollout());
        for part in [
            "running, step 2 of 4 at 25 %",
            "5 % → 25 % → 50 % → 100 %",
            "header:x-user",
            "error rate ≤ 0.01, p99 ≤ 2× stable, once the candidate has 20 requests",
            "at least 30 s and 100 candidate requests",
            "bbbbbbbbbbbb  candidate  42",
            "2.50 %",
            "1.2 ms",
        ] {
            assert!(text.contains(part), "{part:?} missing from\n{text}");
        }
        let mut ended = rollout();
        ended.state = "rolled_back".into();
        ended.reason = Some("error rate 0.5 > max_error_rate 0.01".into());
        let text = render(&ended);
        assert!(text.starts_with("rollout    rolled back\n"), "{text}");
        assert!(text.contains("reason     error rate 0.5"), "{text}");
    }

    #[test]
    fn a_shadow_groups_its_mismatches_by_kind() {
        let sample = |path: &str, shadow_status: u16, at_ms: u64, kind: &str| api::ShadowSample {
            method: "GET".into(),
            path: path.into(),
            stable_status: 200,
            shadow_status,
            headers: vec![],
            stable_size: 2,
            shadow_size: 5,
            stable_digest: "sha256:1".into(),
            shadow_digest: "sha256:2".into(),
            stable_start: "ok".into(),
            shadow_start: "oops!".into(),
            at_ms,
            outbound_denied: false,
            kind: kind.into(),
        };
        let mut samples: Vec<_> = (0..48)
            .map(|i| sample(&format!("/app/{i}"), 500, 1_000, "status 200 → 500, body"))
            .collect();
        samples.push(sample("/app/h", 200, 2_000, "header content-type"));
        samples.push(sample("/app/last", 500, 2_500, "status 200 → 500, body"));
        let mut body = ShadowStatus {
            version: "sha256:cc".into(),
            percent: 100.0,
            compare_headers: vec!["content-type".into()],
            allow_outbound: false,
            counts: api::ShadowCounts {
                requests: 70,
                matches: 7,
                mismatches: 60,
                noise: 1,
                errors: 0,
                skipped: 2,
            },
            kinds: vec![
                api::ShadowKind {
                    kind: "status 200 → 500, body".into(),
                    count: 59,
                },
                api::ShadowKind {
                    kind: "header content-type".into(),
                    count: 1,
                },
            ],
            samples,
        };
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(3_000);
        let text = render_shadow(&body, now);
        for part in [
            "70 compared: 7 match, 60 mismatch, 1 noise, 0 errors; 2 skipped",
            "outbound  denied",
            "  59  status 200 → 500, body\n",
            "GET /app/last (500 ms ago): stable 200 2 bytes \"ok\", shadow 500 5 bytes \"oops!\"",
            "   1  header content-type\n",
            "GET /app/h (1 s ago): stable 200",
        ] {
            assert!(text.contains(part), "{part:?} missing from\n{text}");
        }
        assert!(text.lines().count() < 20, "{text}");
        assert_eq!(text.matches("GET /app/").count(), 1 + EXAMPLES);
        // From a server that names no kinds: grouped from the samples.
        body.kinds.clear();
        for sample in &mut body.samples {
            sample.kind.clear();
        }
        let text = render_shadow(&body, now);
        assert!(text.contains("  49  status 200 → 500, body\n"), "{text}");
    }
}
