//! Sending spans: to a gRPC collector with the headers and resource the standard environment
//! variables configure, those still queued flushed at shutdown, and a collector that takes the
//! connection and never answers, or is not there, slowing and failing no request.

use std::time::{Duration, Instant};

use handoff::config::Config;
use handoff::trace::{Protocol, Settings};
use handoff_tests::otlp::{self, Receiver, Span};
use handoff_tests::{Connection, TestServer, guests};
use http::StatusCode;

use crate::tracing::{GENEROUS, PARENT, TRACE, get, server_span, traced, traced_to};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_still_queued_are_flushed_at_shutdown() {
    let receiver = Receiver::start().await;
    let mut config = traced(&receiver);
    // Nothing would go out for a minute but for the shutdown.
    config.tracing.as_mut().unwrap().batching.delay = Duration::from_secs(60);
    let server = TestServer::start_with(config).await;
    server.deploy("api", guests::HOSTILE).await;
    for i in 0..5 {
        assert_eq!(
            get(&server, &format!("/api/{i}"), &[]).await.0,
            StatusCode::OK
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        receiver.spans().iter().all(|s| s.kind != otlp::SERVER),
        "nothing is sent before the batch is due"
    );
    let started = Instant::now();
    server.shutdown().await;
    let took = started.elapsed();
    let served: Vec<Span> = receiver
        .spans()
        .into_iter()
        .filter(|s| s.kind == otlp::SERVER)
        .collect();
    assert_eq!(
        served.len(),
        5,
        "every request's span arrived before shutdown returned"
    );
    assert!(took < GENEROUS, "shutdown took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_neither_slows_nor_fails_requests() {
    // A collector that takes the connection and never answers, and one that is not there.
    let hole = otlp::black_hole().await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    for (collector, queue_full) in [(hole, true), (closed, false)] {
        let mut config = traced_to(format!("http://{collector}/v1/traces"));
        let settings = config.tracing.as_mut().unwrap();
        settings.batching.max_queue = 4;
        settings.batching.max_batch = 4;
        settings.batching.delay = Duration::from_millis(10);
        settings.batching.export_timeout = Duration::from_secs(30);
        // The flush at shutdown waits at most the drain bound (here 1 s + the release wait).
        config.drain_timeout = Duration::from_secs(1);
        let server = TestServer::start_with(config).await;
        server.deploy("api", guests::HOSTILE).await;
        let mut conn = Connection::open(server.data).await;
        let started = Instant::now();
        for _ in 0..100 {
            let (status, body) = conn.get_text("/api/ok").await;
            assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
        }
        let took = started.elapsed();
        // Far less than one export timeout: no request waited for the collector.
        assert!(took < Duration::from_secs(15), "100 requests took {took:?}");
        let series = if queue_full {
            "handoff_trace_spans_dropped_total{reason=\"queue_full\"}"
        } else {
            "handoff_trace_spans_dropped_total{reason=\"export_failed\"}"
        };
        handoff_tests::eventually("dropped spans counted", GENEROUS, || async {
            (server.metric(series).await > 0.0).then_some(())
        })
        .await;
        assert_eq!(
            server.metric("handoff_trace_spans_exported_total").await,
            0.0
        );
        server.shutdown().await;
    }
}

/// The settings `serve` reads from `vars` (the standard environment variables).
fn from_env(vars: &[(&str, &str)]) -> Settings {
    let vars: std::collections::HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::from_env(|name| vars.get(name).cloned())
        .expect("valid settings")
        .expect("tracing on")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_exports_to_a_grpc_collector_with_the_headers_and_resource_configured() {
    let receiver = Receiver::start_grpc().await;
    let endpoint = format!("http://{}", receiver.addr);
    let settings = from_env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s3cret%21"),
        ("OTEL_SERVICE_NAME", "edge"),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=test,service.version=9.9",
        ),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
    ]);
    assert_eq!(
        (settings.protocol, settings.endpoint.as_str()),
        (Protocol::Grpc, endpoint.as_str())
    );
    let server = TestServer::start_with(Config {
        tracing: Some(settings),
        ..Config::ephemeral()
    })
    .await;
    let version = server.deploy("api", guests::HOSTILE).await["version"]
        .as_str()
        .unwrap()
        .to_owned();
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    assert_eq!(
        get(&server, "/api/ok", &[("traceparent", &traceparent)]).await,
        (StatusCode::OK, "ok".into())
    );
    let (span, deploy) = receiver
        .wait_for(
            "the request's and the deploy's spans over gRPC",
            GENEROUS,
            |spans| {
                let span = server_span(spans, "/api/ok")?;
                let deploy = spans.iter().find(|s| s.name == "deploy")?;
                Some((span.clone(), deploy.clone()))
            },
        )
        .await;
    assert_eq!(
        (span.trace_id.as_str(), span.parent_span_id.as_str()),
        (TRACE, PARENT)
    );
    assert_eq!(
        (
            span.name.as_str(),
            span.attr("handoff.route"),
            span.attr("handoff.version"),
            span.attr("http.response.status_code")
        ),
        ("GET /api", "api", version.as_str(), "200")
    );
    assert_eq!(deploy.attr("handoff.version"), version);
    // The resource: the service name and attributes configured (the operator's
    // `service.version` wins over handoff's), and the SDK's own.
    assert_eq!(span.service, "edge");
    for (key, value) in [
        ("deployment.environment.name", "test"),
        ("service.version", "9.9"),
        ("telemetry.sdk.language", "rust"),
        ("telemetry.sdk.name", "opentelemetry"),
    ] {
        assert_eq!(
            span.resource.get(key).map(String::as_str),
            Some(value),
            "{key} in {:?}",
            span.resource
        );
    }
    // The headers go out as gRPC metadata.
    let headers = receiver.headers();
    assert_eq!(
        headers.get("api-key").and_then(|v| v.to_str().ok()),
        Some("s3cret!"),
        "{headers:?}"
    );
    assert!(
        headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc")),
        "{headers:?}"
    );
    server.shutdown().await;
}
