//! `GET /metrics`: Prometheus text exposition (format 0.0.4) of the routes, their versions, their
//! rollouts and shadows, the process (logs, traces, the compiler) and the key-value buckets,
//! each family group written by a function of its own. A `read` token may scrape it.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::header;

use super::delivery::shadow_of;
use crate::kv::Bucket;
use crate::kv::backend::Usage;
use crate::names::RouteName;
use crate::route::{Draining, Role, Table};
use crate::runtime::Runtime;
use crate::version::Version;

/// `GET /metrics`.
pub(super) async fn metrics(State(rt): State<Arc<Runtime>>) -> Response {
    // Every bucket used since the start, with what it holds now (read before rendering).
    let mut buckets = Vec::new();
    for bucket in rt.kv.buckets() {
        let usage = rt.kv.backend().usage(&bucket.id).await.unwrap_or_default();
        // Bucket names are route names or checked the same way: [a-z0-9._-], no escaping.
        let labels = format!(
            "{{scope=\"{}\",bucket=\"{}\"}}",
            bucket.name.scope(),
            bucket.name.name()
        );
        buckets.push((labels, bucket, usage));
    }
    let table = rt.routes.snapshot();
    let mut out = Exposition(String::with_capacity(1024));
    routes(&mut out, &table);
    versions(&mut out, &table, &rt.draining());
    delivery(&mut out, &table);
    process(&mut out, &rt);
    kv(&mut out, &buckets);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out.0,
    )
        .into_response()
}

/// The text exposition being written.
struct Exposition(String);

impl Exposition {
    /// Writes one metric family: its help and type lines, then one line per (labels, value).
    fn family(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: &mut dyn Iterator<Item = (String, String)>,
    ) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(self.0, "{name}{labels} {value}");
        }
    }
}

/// `{route="NAME"}`.
fn route_label(route: &RouteName) -> String {
    format!("{{route=\"{}\"}}", route.as_str())
}

/// `{route="NAME",version="DIGEST",state="STATE"}`. Route names, digests and the fixed states
/// need no escaping: all are [a-z0-9._:-].
fn version_label(route: &RouteName, version: &Version, state: &str) -> String {
    format!(
        "{{route=\"{}\",version=\"{}\",state=\"{state}\"}}",
        route.as_str(),
        version.digest
    )
}

/// Requests per route, across its versions.
fn routes(out: &mut Exposition, table: &Table) {
    out.family(
        "handoff_route_requests_total",
        "counter",
        "Requests routed to the route, across its versions.",
        &mut table
            .iter()
            .map(|r| (route_label(&r.name), r.state.requests().to_string())),
    );
    out.family(
        "handoff_route_in_flight",
        "gauge",
        "Requests in progress on the route, across its versions.",
        &mut table
            .iter()
            .map(|r| (route_label(&r.name), r.state.in_flight().to_string())),
    );
}

/// Per version (serving or draining): requests, failures, instances, latency and outcomes, and
/// what its log budget held back.
fn versions(out: &mut Exposition, table: &Table, draining: &[Draining]) {
    // A serving version's state is `active` for the stable one, else its role.
    let versions = || {
        table
            .iter()
            .filter_map(|r| Some((&r.name, r.split()?)))
            .flat_map(|(name, split)| {
                split.versions().map(move |(role, v, _)| {
                    let state = match role {
                        Role::Stable => "active",
                        other => other.as_str(),
                    };
                    (name, v, state)
                })
            })
            .chain(draining.iter().map(|d| (&d.route, &d.version, "draining")))
    };
    out.family(
        "handoff_version_requests_total",
        "counter",
        "Requests routed to a version that is active or still draining.",
        &mut versions()
            .map(|(route, v, state)| (version_label(route, v, state), v.requests().to_string())),
    );
    out.family(
        "handoff_version_failures_total",
        "counter",
        "Requests on a version that failed, as the rollout gates count them: a 5xx it caused, or a body that ended in an error.",
        &mut versions()
            .map(|(route, v, state)| (version_label(route, v, state), v.failures().to_string())),
    );
    out.family(
        "handoff_version_guest_failures_total",
        "counter",
        "Requests whose guest failed (trap, deadline, no response, unfinished body), also after a complete response.",
        &mut versions().map(|(route, v, state)| {
            (
                version_label(route, v, state),
                v.guest_failures().to_string(),
            )
        }),
    );
    out.family(
        "handoff_version_in_flight",
        "gauge",
        "Requests in progress on a version.",
        &mut versions()
            .map(|(route, v, state)| (version_label(route, v, state), v.in_flight().to_string())),
    );
    out.family(
        "handoff_version_idle_instances",
        "gauge",
        "Instances a version keeps idle for its next requests (routes with reuse above 1).",
        &mut versions().map(|(route, v, state)| {
            (
                version_label(route, v, state),
                v.instances.idle().to_string(),
            )
        }),
    );
    out.family(
        "handoff_version_instances",
        "gauge",
        "Instances alive for a WASI 0.3 version, busy or idle (0 for WASI 0.2 versions, whose instances are counted by handoff_version_idle_instances while idle).",
        &mut versions().map(|(route, v, state)| {
            (
                version_label(route, v, state),
                v.service
                    .as_ref()
                    .map_or(0, |service| service.instances())
                    .to_string(),
            )
        }),
    );
    // Latency and outcomes per version, from counters the hot path keeps with atomics only.
    let snapshots: Vec<_> = versions()
        .map(|(route, v, state)| {
            let labels = version_label(route, v, state);
            (labels[..labels.len() - 1].to_owned(), v.stats.snapshot())
        })
        .collect();
    out.family(
        "handoff_version_request_duration_seconds",
        "histogram",
        "Time from routing to the end of the response, per version.",
        &mut snapshots.iter().flat_map(|(open, s)| {
            s.cumulative()
                .map(move |(le, count)| (format!("_bucket{open},le=\"{le}\"}}"), count.to_string()))
                .chain([
                    (
                        format!("_sum{open}}}"),
                        format!("{}", s.latency_us as f64 / 1e6),
                    ),
                    (format!("_count{open}}}"), s.completed.to_string()),
                ])
        }),
    );
    out.family(
        "handoff_version_responses_total",
        "counter",
        "Responses per version by status class (1xx to 5xx).",
        &mut snapshots.iter().flat_map(|(open, s)| {
            s.classes.iter().enumerate().map(move |(i, count)| {
                (format!("{open},class=\"{}xx\"}}", i + 1), count.to_string())
            })
        }),
    );
    out.family(
        "handoff_version_errors_total",
        "counter",
        "Requests per version that failed (the same count as handoff_version_failures_total).",
        &mut snapshots
            .iter()
            .map(|(open, s)| (format!("{open}}}"), s.errors.to_string())),
    );
    out.family(
        "handoff_version_guest_log_lines_suppressed_total",
        "counter",
        "Guest log lines not written because the version was over its log budget.",
        &mut versions().map(|(route, v, state)| {
            let suppressed = v.guest.logs().suppressed_lines();
            (version_label(route, v, state), suppressed.to_string())
        }),
    );
    out.family(
        "handoff_version_outbound_warnings_suppressed_total",
        "counter",
        "Outbound warnings (denied, refused, failed requests) not logged: over the version's budget.",
        &mut versions().map(|(route, v, state)| {
            let suppressed = v.guest.logs().suppressed_outbound_warnings();
            (version_label(route, v, state), suppressed.to_string())
        }),
    );
}

/// Each route's current rollout and what its shadow found.
fn delivery(out: &mut Exposition, table: &Table) {
    let rollouts: Vec<_> = table
        .iter()
        .filter_map(|r| Some((&r.name, crate::rollout::status(r)?)))
        .collect();
    out.family(
        "handoff_rollout_state",
        "gauge",
        "1 for the state the route's rollout is in (running, paused, promoted, rolled_back, aborted).",
        &mut rollouts.iter().map(|(route, r)| {
            (
                format!("{{route=\"{}\",state=\"{}\"}}", route.as_str(), r.state),
                "1".to_owned(),
            )
        }),
    );
    out.family(
        "handoff_rollout_weight_percent",
        "gauge",
        "The rollout candidate's weight, in percent.",
        &mut rollouts.iter().map(|(route, r)| {
            (
                format!(
                    "{{route=\"{}\",candidate=\"{}\"}}",
                    route.as_str(),
                    r.candidate
                ),
                r.weight.to_string(),
            )
        }),
    );
    out.family(
        "handoff_rollout_step",
        "gauge",
        "The index of the rollout's current step.",
        &mut rollouts
            .iter()
            .map(|(route, r)| (route_label(route), r.step.to_string())),
    );
    let shadows: Vec<_> = table
        .iter()
        .filter_map(|r| Some((&r.name, shadow_of(r)?)))
        .collect();
    out.family(
        "handoff_shadow_copies_total",
        "counter",
        "Requests copied to the route's shadow by outcome (match, mismatch, noise, error, skipped).",
        &mut shadows.iter().flat_map(|(route, s)| {
            [
                ("match", s.counts.matches),
                ("mismatch", s.counts.mismatches),
                ("noise", s.counts.noise),
                ("error", s.counts.errors),
                ("skipped", s.counts.skipped),
            ]
            .map(|(outcome, count)| {
                (
                    format!(
                        "{{route=\"{}\",version=\"{}\",outcome=\"{outcome}\"}}",
                        route.as_str(),
                        s.version
                    ),
                    count.to_string(),
                )
            })
        }),
    );
}

/// The process: log lines dropped, spans, routes that could not be restored, the compiler.
fn process(out: &mut Exposition, rt: &Runtime) {
    out.family(
        "handoff_log_lines_dropped_total",
        "counter",
        "Log events dropped because stderr could not keep up.",
        &mut std::iter::once((String::new(), crate::telemetry::dropped_lines().to_string())),
    );
    let spans = rt.trace.as_ref().map(|t| t.figures()).unwrap_or_default();
    out.family(
        "handoff_trace_spans_exported_total",
        "counter",
        "Spans the OpenTelemetry collector took (0 with tracing off).",
        &mut std::iter::once((String::new(), spans.exported.to_string())),
    );
    out.family(
        "handoff_trace_spans_dropped_total",
        "counter",
        "Spans that never reached the collector: the export queue was full, or the export failed or timed out.",
        &mut [
            (
                "{reason=\"queue_full\"}".to_owned(),
                spans.dropped_queue_full.to_string(),
            ),
            (
                "{reason=\"export_failed\"}".to_owned(),
                spans.dropped_export_failed.to_string(),
            ),
        ]
        .into_iter(),
    );
    out.family(
        "handoff_routes_unavailable",
        "gauge",
        "Stored routes that could not be restored at startup.",
        &mut std::iter::once((String::new(), rt.unavailable().len().to_string())),
    );
    out.family(
        "handoff_compiles_total",
        "counter",
        "Components this process compiled (loading a stored artifact does not count).",
        &mut std::iter::once((String::new(), rt.compiles().to_string())),
    );
    out.family(
        "handoff_compile_workers",
        "gauge",
        "Compile worker processes running now.",
        &mut std::iter::once((String::new(), rt.compile_workers().to_string())),
    );
}

/// Per key-value bucket (its labels, the bucket, what it holds now): operations, bytes, size.
fn kv(out: &mut Exposition, buckets: &[(String, Arc<Bucket>, Usage)]) {
    type Counter = fn(&Bucket) -> u64;
    let kv_counters: [(&str, &str, Counter); 4] = [
        (
            "handoff_kv_operations_total",
            "Key-value operations on a bucket, from every route and version that opens it.",
            |b| b.stats.operations(),
        ),
        (
            "handoff_kv_errors_total",
            "Key-value operations that failed (quota, size, unusable key, store failure).",
            |b| b.stats.errors(),
        ),
        (
            "handoff_kv_read_bytes_total",
            "Value bytes guests read from a bucket.",
            |b| b.stats.read_bytes(),
        ),
        (
            "handoff_kv_written_bytes_total",
            "Value bytes guests wrote to a bucket.",
            |b| b.stats.written_bytes(),
        ),
    ];
    for (name, help, value) in kv_counters {
        out.family(
            name,
            "counter",
            help,
            &mut buckets
                .iter()
                .map(|(labels, b, _)| (labels.clone(), value(b).to_string())),
        );
    }
    out.family(
        "handoff_kv_keys",
        "gauge",
        "Keys a bucket holds.",
        &mut buckets
            .iter()
            .map(|(labels, _, usage)| (labels.clone(), usage.keys.to_string())),
    );
    out.family(
        "handoff_kv_bytes",
        "gauge",
        "Bytes of keys and values a bucket holds.",
        &mut buckets
            .iter()
            .map(|(labels, _, usage)| (labels.clone(), usage.bytes.to_string())),
    );
}
