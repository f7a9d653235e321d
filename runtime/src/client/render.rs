//! How the `handoff` admin commands print the server's answers as text: tables and aligned
//! `key  value` lines. Pure functions of the typed answers ([`crate::api`]), unit-tested.

use std::fmt::Write as _;
use std::time::SystemTime;

use crate::api::{Deployed, History, RouteList, RouteStatus};

/// What a deploy, rollback or activation did.
pub fn deploy(body: &Deployed) -> String {
    let route = &body.route;
    let headline = if !body.changed {
        format!("route {route} unchanged: this version was already active")
    } else if body.created {
        format!("created route {route}")
    } else {
        format!("replaced the version of route {route}")
    };
    let previous = match &body.previous_version {
        Some(previous) => previous.clone(),
        None => "none (new route)".to_owned(),
    };
    let compiled = match body.compile_ms {
        Some(ms) => format!("in {ms:.1} ms"),
        None => "not needed (already compiled)".to_owned(),
    };
    let details = key_values(&[
        ("prefix", body.prefix.clone()),
        ("version", body.version.clone()),
        ("previous", previous),
        ("compiled", compiled),
    ]);
    let mut out = format!("{headline}\n");
    for line in details.lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

/// The routes, one per row.
pub fn routes(body: &RouteList) -> String {
    let mut out = String::new();
    if body.routes.is_empty() && body.unavailable.is_empty() {
        return "no routes; deploy one with `handoff deploy ROUTE FILE.wasm`\n".to_owned();
    }
    if !body.routes.is_empty() {
        let header = [
            "ROUTE",
            "PREFIX",
            "VERSION",
            "REQUESTS",
            "IN-FLIGHT",
            "DRAINING",
        ];
        let rows: Vec<[String; 6]> = body
            .routes
            .iter()
            .map(|route| {
                [
                    route.route.clone(),
                    route.prefix.clone(),
                    versions(route),
                    route.requests.to_string(),
                    route.active.in_flight.to_string(),
                    route.draining.len().to_string(),
                ]
            })
            .collect();
        out.push_str(&table(&header, &rows));
    }
    for unavailable in &body.unavailable {
        let _ = writeln!(
            out,
            "unavailable: {} ({})",
            unavailable.route, unavailable.reason
        );
    }
    out
}

/// The versions serving a route: the stable one's short digest, and each other one with its
/// role and weight.
fn versions(route: &RouteStatus) -> String {
    if route.versions.len() <= 1 {
        return short(&route.active.version).to_owned();
    }
    route
        .versions
        .iter()
        .map(|v| format!("{} {} {}%", v.role, short(&v.version.version), v.weight))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One route in detail.
pub fn status(body: &RouteStatus, now: SystemTime) -> String {
    let active = &body.active;
    let config = if body.config.is_empty() {
        "(none)".to_owned()
    } else {
        body.config
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let now_ms = unix_ms(now);
    let mut lines = vec![
        ("route", body.route.clone()),
        ("prefix", body.prefix.clone()),
        ("version", active.version.clone()),
        ("wasi", active.wasi.clone()),
        (
            "deployed",
            format!(
                "{} ago; {} bytes, compiled in {:.1} ms",
                ago(now_ms.saturating_sub(active.deployed_at_ms)),
                active.size_bytes,
                active.compile_ms
            ),
        ),
        (
            "requests",
            format!(
                "{} on the route; {} on this version, {} failed, {} in flight",
                body.requests, active.requests, active.failures, active.in_flight
            ),
        ),
        ("config", config),
    ];
    if !body.kv.is_empty() {
        lines.push(("kv", body.kv.join(" ")));
    }
    if body.versions.len() > 1 {
        lines.push(("split", versions(body)));
    }
    if body.draining.is_empty() {
        lines.push(("draining", "(none)".to_owned()));
    }
    for (i, draining) in body.draining.iter().enumerate() {
        lines.push((
            if i == 0 { "draining" } else { "" },
            format!(
                "{}: {} in flight, retired {} ago",
                short(&draining.version.version),
                draining.version.in_flight,
                ago(draining.retired_ms_ago)
            ),
        ));
    }
    key_values(&lines)
}

/// A route's history, newest last, the active version marked; deploy messages quoted and
/// escaped.
pub fn history(body: &History, now: SystemTime) -> String {
    let now_ms = unix_ms(now);
    let header = ["", "VERSION", "ACTION", "WHEN", "BY", "LABEL", "MESSAGE"];
    let last_active = body.versions.iter().rposition(|e| e.version == body.active);
    let rows: Vec<[String; 7]> = body
        .versions
        .iter()
        .enumerate()
        .map(|(i, e)| {
            [
                if Some(i) == last_active {
                    "*".into()
                } else {
                    String::new()
                },
                short(&e.version).to_owned(),
                e.action.clone(),
                format!("{} ago", ago(now_ms.saturating_sub(e.activated_at_ms))),
                e.by.clone(),
                e.label.clone().unwrap_or_default(),
                // A deploy message is anyone's text: quoted and escaped, as `handoff events`
                // prints it, so it cannot move the cursor or recolour the terminal.
                e.message
                    .as_ref()
                    .map(|m| format!("{m:?}"))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    table(&header, &rows)
}

/// `key   value` lines, values aligned.
pub fn key_values(lines: &[(&str, String)]) -> String {
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in lines {
        let _ = writeln!(out, "{key:<width$}  {value}");
    }
    out
}

/// A table with a header row, columns left-aligned to their widest cell.
pub fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// `1a2b3c4d5e6f` from `sha256:1a2b3c4d5e6f...`: the first 12 hex digits, as the logs show.
pub fn short(version: &str) -> &str {
    let hex = version.strip_prefix("sha256:").unwrap_or(version);
    hex.get(..12).unwrap_or(hex)
}

/// `850 ms`, `12 s`, `5 min`, `3 h`.
pub fn ago(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..120_000 => format!("{} s", ms / 1_000),
        120_000..7_200_000 => format!("{} min", ms / 60_000),
        _ => format!("{} h", ms / 3_600_000),
    }
}

fn unix_ms(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::api::{DrainingStatus, VersionStatus};

    #[test]
    fn tables_align() {
        let rows = [
            ["hello".to_owned(), "1".to_owned()],
            ["x".to_owned(), "22".to_owned()],
        ];
        assert_eq!(
            table(&["ROUTE", "N"], &rows),
            "ROUTE  N\nhello  1\nx      22\n"
        );
    }

    #[test]
    fn a_deploy_says_what_it_did() {
        let mut body = Deployed {
            route: "hello".into(),
            prefix: "/hello".into(),
            version: "sha256:22".into(),
            changed: true,
            created: false,
            previous_version: Some("sha256:11".into()),
            compile_ms: Some(12.34),
            cluster: None,
        };
        assert_eq!(
            deploy(&body),
            "replaced the version of route hello\n  prefix    /hello\n  version   sha256:22\n  \
             previous  sha256:11\n  compiled  in 12.3 ms\n"
        );
        body.changed = false;
        body.compile_ms = None;
        let text = deploy(&body);
        assert!(text.starts_with("route hello unchanged"), "{text}");
        assert!(text.contains("compiled  not needed"), "{text}");
    }

    fn version(digest: &str, in_flight: usize, requests: u64) -> VersionStatus {
        VersionStatus {
            version: digest.into(),
            size_bytes: 10,
            deployed_at_ms: 1_000,
            compile_ms: 1.5,
            wasi: "0.3".into(),
            in_flight,
            requests,
            failures: 0,
            guest_failures: 0,
            figures: None,
        }
    }

    #[test]
    fn status_shows_every_field() {
        let body = RouteStatus {
            route: "hello".into(),
            prefix: "/hello".into(),
            requests: 7,
            config: [("GREETING".to_owned(), "hi".to_owned())].into(),
            limits: (&crate::settings::Limits::default()).into(),
            outbound: vec![],
            dir: None,
            kv: vec!["orders".into()],
            in_flight: 1,
            active: version("sha256:00112233445566778899", 1, 5),
            versions: vec![],
            draining: vec![DrainingStatus {
                version: version("sha256:aabbccddeeff0011", 2, 2),
                retired_ms_ago: 1500,
                time_left_ms: 28_500,
            }],
            rollout: None,
            shadow: None,
            nodes: None,
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(4_000);
        let text = status(&body, now);
        assert!(
            text.contains("version   sha256:00112233445566778899\n"),
            "{text}"
        );
        assert!(
            text.contains("3 s ago; 10 bytes, compiled in 1.5 ms"),
            "{text}"
        );
        assert!(
            text.contains("7 on the route; 5 on this version, 0 failed, 1 in flight"),
            "{text}"
        );
        assert!(text.contains("config    GREETING=hi\n"), "{text}");
        assert!(text.contains("wasi      0.3\n"), "{text}");
        assert!(text.contains("kv        orders\n"), "{text}");
        assert!(
            text.contains("draining  aabbccddeeff: 2 in flight, retired 1 s ago"),
            "{text}"
        );
    }
}
