//! Sending spans: those still queued are flushed at shutdown, and a collector that takes the
//! connection and never answers, or is not there, slows and fails no request.

use std::time::{Duration, Instant};

use handoff_tests::otlp::{self, Receiver, Span};
use handoff_tests::{Connection, TestServer, guests};
use http::StatusCode;

use crate::tracing::{GENEROUS, get, traced, traced_to};

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
