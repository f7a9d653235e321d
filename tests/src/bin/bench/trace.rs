//! What tracing costs a request (issue 23): the same hello guest under the same load on three
//! servers started side by side: one with no tracing configuration at all; one configured but
//! off (`OTEL_EXPORTER_OTLP_ENDPOINT` set and `OTEL_SDK_DISABLED=true`); one on, every request
//! sampled (`OTEL_TRACES_SAMPLER=always_on`) and exported over OTLP/HTTP to a receiver in this
//! process (`handoff_tests::otlp`, which counts each export's spans by walking the protobuf
//! wire format, so that a collector's decoding on the same cores does not blur what tracing
//! costs the server). A second unconfigured server against
//! the first shows how far two identical servers differ in this run. Goals: off ≥ 0.99×, on
//! ≥ 0.9× the unconfigured server's req/s. Then what became of the traced server's spans:
//! the receiver's count against the spans the server ended (exported + dropped, `/metrics`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use handoff_tests::otlp::Receiver;

use super::table::{Plan, Table, Target};
use super::{Options, put_route, start_handoff_env};

/// The rows.
pub async fn rows(opts: &Options, hello: &[u8], table: &mut Table, plan: Plan) {
    let receiver = Receiver::counting().await;
    let endpoint = format!("http://{}", receiver.addr);
    let none = start_handoff_env(&opts.handoff, &[]);
    let again = start_handoff_env(&opts.handoff, &[]);
    let off = start_handoff_env(
        &opts.handoff,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SDK_DISABLED", "true"),
        ],
    );
    let on = start_handoff_env(
        &opts.handoff,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_TRACES_SAMPLER", "always_on"),
        ],
    );
    for (_, _, admin) in [&none, &again, &off, &on] {
        put_route(*admin, "hello", hello).await;
    }
    let unconfigured = Target::get(none.1, "/hello").pid(none.0.0.id());
    table
        .compare(
            "hello, two servers without tracing configured (the noise between them)",
            (
                "second",
                &Target::get(again.1, "/hello").pid(again.0.0.id()),
            ),
            ("first", &unconfigured),
            plan,
            ("", ""),
        )
        .await;
    table
        .compare(
            "hello, tracing configured but off (OTEL_SDK_DISABLED=true)",
            ("off", &Target::get(off.1, "/hello").pid(off.0.0.id())),
            ("not configured", &unconfigured),
            plan,
            ("≥ 0.99", ""),
        )
        .await;
    table
        .compare(
            "hello, tracing on (100 % sampled, OTLP/HTTP to a receiver on the same cores)",
            ("on", &Target::get(on.1, "/hello").pid(on.0.0.id())),
            ("not configured", &unconfigured),
            plan,
            ("≥ 0.90", ""),
        )
        .await;
    // Every span the traced server ended either reached the receiver or was counted as
    // dropped; once its queue has drained (a batch leaves at the latest 1 s after its first
    // span), the counts stop moving.
    let admin = on.2;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (ended, exported, dropped) = loop {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let exported = metric(admin, "handoff_trace_spans_exported_total").await;
        let full = metric(
            admin,
            "handoff_trace_spans_dropped_total{reason=\"queue_full\"}",
        )
        .await;
        let failed = metric(
            admin,
            "handoff_trace_spans_dropped_total{reason=\"export_failed\"}",
        )
        .await;
        let ended = exported + full + failed;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let later = metric(admin, "handoff_trace_spans_exported_total").await;
        if later == exported || Instant::now() > deadline {
            break (ended, exported, (full, failed));
        }
    };
    let received = receiver.count();
    table.row(
        "tracing on: spans the receiver took / spans the server ended",
        format!("{received}"),
        format!("{ended:.0}"),
        Some(received as f64 / ended.max(1.0)),
        "1.00",
    );
    println!(
        "  tracing on: {exported:.0} spans exported, {:.0} dropped (queue full), {:.0} dropped (export failed)",
        dropped.0, dropped.1
    );
    drop((none, again, off, on));
}

/// The value of the `/metrics` sample starting with `series` on `admin` (0 if none).
async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let req = http::Request::builder()
        .uri("/metrics")
        .header("host", admin.to_string())
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let (_, body) = handoff_tests::send(admin, req).await;
    String::from_utf8_lossy(&body)
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}
