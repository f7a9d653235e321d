//! OpenTelemetry traces: a server span per request with the HTTP conventions and handoff's own
//! attributes, continuing the caller's trace; outbound calls as client spans whose
//! `traceparent` continues the trace in the next service; errors as error spans with their
//! reason; the arms of a rollout; a shadow copy's own span. Changes as spans (an admin
//! request's `traceparent` among them, rollout steps, a cluster node's apply) are in
//! `tracing_changes`, sending spans (gRPC, the flush at shutdown, an unreachable collector) in
//! `tracing_export`. Spans are received by a small OTLP/HTTP collector on loopback
//! (`handoff_tests::otlp`, decoding with `opentelemetry-proto`).

use std::time::Duration;

use bytes::Bytes;
use handoff::config::Config;
use handoff::trace::{Protocol, Settings};
use handoff_tests::otlp::{self, Receiver, Span};
use handoff_tests::{Connection, TestServer, guests, send};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::json;

pub(crate) const GENEROUS: Duration = Duration::from_secs(20);

/// Tracing to `receiver`, batches sent every 50 ms.
pub(crate) fn traced(receiver: &Receiver) -> Config {
    traced_to(receiver.endpoint())
}

pub(crate) fn traced_to(endpoint: String) -> Config {
    let mut settings = Settings::new(endpoint, Protocol::HttpProtobuf);
    settings.batching.delay = Duration::from_millis(50);
    Config {
        tracing: Some(settings),
        ..Config::ephemeral()
    }
}

/// GET `path` with extra `headers`.
pub(crate) async fn get(
    server: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header("host", "handoff.test")
        .header("user-agent", "tracing-test");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let (status, body) = send(server.data, req.body(Full::new(Bytes::new())).unwrap()).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The server span of the request for `path`.
pub(crate) fn server_span<'a>(spans: &'a [Span], path: &str) -> Option<&'a Span> {
    spans
        .iter()
        .find(|s| s.kind == otlp::SERVER && s.attr("url.path") == path)
}

pub(crate) const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
pub(crate) const PARENT: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_a_server_span_with_its_route_version_and_guest_log_lines() {
    let receiver = Receiver::start().await;
    let server = TestServer::start_with(traced(&receiver)).await;
    let deployed = server.deploy("api", guests::HOSTILE).await;
    let version = deployed["version"].as_str().unwrap().to_owned();
    // Follow the route's guest log lines (JSON, one per SSE message).
    let mut tail = Connection::open(server.admin).await;
    let follow = Request::builder()
        .uri("/v1/routes/api/logs")
        .header("host", handoff_tests::ADMIN_HOST)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut followed = tail.send(follow).await.expect("log tail").into_body();
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let (status, body) = get(
        &server,
        "/api/log",
        &[("traceparent", &traceparent), ("tracestate", "vendor=1")],
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "logged"));
    let span = receiver
        .wait_for("the request's server span", GENEROUS, |spans| {
            server_span(spans, "/api/log").cloned()
        })
        .await;
    // The caller's trace continues.
    assert_eq!(
        (span.trace_id.as_str(), span.parent_span_id.as_str()),
        (TRACE, PARENT)
    );
    assert_eq!(span.service, "handoff");
    assert_eq!(span.name, "GET /api");
    let data = server.data;
    for (key, value) in [
        ("http.request.method", "GET"),
        ("url.path", "/api/log"),
        ("url.scheme", "http"),
        ("http.route", "/api"),
        ("http.response.status_code", "200"),
        ("network.protocol.version", "1.1"),
        ("server.address", "handoff.test"),
        ("client.address", &data.ip().to_string()),
        ("user_agent.original", "tracing-test"),
        ("handoff.route", "api"),
        ("handoff.version", &version),
        ("handoff.arm", "stable"),
        ("handoff.instance.reused", "false"),
    ] {
        assert_eq!(span.attr(key), value, "{key} in {:?}", span.attributes);
    }
    assert_eq!(span.status_code, 0, "{span:?}");
    assert!(span.end_ns >= span.start_ns);
    // The guest's log lines are the span's events.
    let lines: Vec<(&str, &str, &str)> = span
        .events
        .iter()
        .filter(|(name, _)| name == "guest log")
        .map(|(_, a)| {
            (
                a["log.iostream"].as_str(),
                a["log.level"].as_str(),
                a["message"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            ("stdout", "info", "hostile says hello on stdout"),
            ("stderr", "warn", "hostile warns on stderr"),
        ]
    );
    // The JSON log line names the trace and the span.
    let line = tokio::time::timeout(GENEROUS, async {
        let mut text = String::new();
        loop {
            let frame = followed.frame().await.expect("a frame").expect("the tail");
            if let Some(data) = frame.data_ref() {
                text.push_str(&String::from_utf8_lossy(data));
            }
            if let Some(line) = text
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .find(|l| l.contains("hostile says hello"))
            {
                return serde_json::from_str::<serde_json::Value>(line).unwrap();
            }
        }
    })
    .await
    .expect("the log line");
    assert_eq!(line["trace_id"], TRACE, "{line}");
    assert_eq!(line["span_id"], span.span_id.as_str(), "{line}");

    // A request without a traceparent starts a trace; a reused instance says so.
    server
        .deploy_bytes("again", "?reuse=8", guests::bytes(guests::HOSTILE))
        .await;
    for _ in 0..2 {
        assert_eq!(get(&server, "/again/ok", &[]).await.0, StatusCode::OK);
    }
    let spans = receiver
        .wait_for("two spans of /again/ok", GENEROUS, |spans| {
            let found: Vec<Span> = spans
                .iter()
                .filter(|s| s.attr("url.path") == "/again/ok")
                .cloned()
                .collect();
            (found.len() == 2).then_some(found)
        })
        .await;
    assert!(
        spans
            .iter()
            .all(|s| s.parent_span_id.is_empty() && s.trace_id != TRACE)
    );
    let mut reused: Vec<&str> = spans
        .iter()
        .map(|s| s.attr("handoff.instance.reused"))
        .collect();
    reused.sort();
    assert_eq!(reused, ["false", "true"]);

    // A WASI 0.3 guest's request has its span too.
    server.deploy("p3", guests::P3_HELLO).await;
    assert_eq!(get(&server, "/p3", &[]).await.0, StatusCode::OK);
    let span = receiver
        .wait_for("the 0.3 request's span", GENEROUS, |spans| {
            server_span(spans, "/p3").cloned()
        })
        .await;
    assert_eq!(
        (
            span.attr("handoff.route"),
            span.attr("http.response.status_code")
        ),
        ("p3", "200")
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_call_is_a_client_span_and_the_next_route_continues_the_trace() {
    let receiver = Receiver::start().await;
    let server = TestServer::start_with(traced(&receiver)).await;
    let data = server.data;
    let (code, body) = server
        .deploy_bytes(
            "front",
            &format!("?allow-outbound=http://{data}"),
            guests::bytes(guests::HOSTILE),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    server.deploy("back", guests::HOSTILE).await;
    let (status, body) = get(
        &server,
        &format!("/front/fetch?url=http://{data}/back/ok"),
        &[],
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "upstream 200 ok"));
    let (front, client, back) = receiver
        .wait_for("three spans of one trace", GENEROUS, |spans| {
            let served = |route| {
                spans
                    .iter()
                    .find(|s| s.kind == otlp::SERVER && s.attr("handoff.route") == route)
            };
            let (front, back) = (served("front")?, served("back")?);
            let client = spans.iter().find(|s| s.kind == otlp::CLIENT)?;
            Some((front.clone(), client.clone(), back.clone()))
        })
        .await;
    assert_eq!(front.kind, otlp::SERVER);
    assert_eq!(client.trace_id, front.trace_id);
    assert_eq!(client.parent_span_id, front.span_id);
    assert_eq!(back.trace_id, front.trace_id, "the traceparent went out");
    assert_eq!(back.parent_span_id, client.span_id);
    assert_eq!(client.name, "GET");
    for (key, value) in [
        ("http.request.method", "GET"),
        ("server.address", &data.ip().to_string()),
        ("server.port", &data.port().to_string()),
        ("url.full", &format!("http://{data}/back/ok")),
        ("http.response.status_code", "200"),
    ] {
        assert_eq!(client.attr(key), value, "{key} in {:?}", client.attributes);
    }
    // The client span lies within its server span.
    assert!(front.start_ns <= client.start_ns && client.end_ns <= front.end_ns);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_error_spans_with_their_reason() {
    let receiver = Receiver::start().await;
    let server = TestServer::start_with(traced(&receiver)).await;
    let (code, body) = server
        .deploy_bytes("bad", "?request-timeout=1s", guests::bytes(guests::HOSTILE))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert_eq!(
        get(&server, "/bad/trap", &[]).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        get(&server, "/bad/loop", &[]).await.0,
        StatusCode::GATEWAY_TIMEOUT
    );
    assert_eq!(get(&server, "/nowhere", &[]).await.0, StatusCode::NOT_FOUND);
    // A response whose body the guest leaves unfinished: the head says 200, the span says why
    // the body failed.
    let mut conn = Connection::open(server.data).await;
    let _ = conn.get("/bad/trap-mid-body").await;
    let spans = receiver
        .wait_for("four spans", GENEROUS, |spans| {
            let of = |path| server_span(spans, path).cloned();
            Some([
                of("/bad/trap")?,
                of("/bad/loop")?,
                of("/nowhere")?,
                of("/bad/trap-mid-body")?,
            ])
        })
        .await;
    let [trap, timeout, missing, mid_body] = spans;
    assert_eq!(trap.status_code, otlp::ERROR);
    assert!(
        trap.status_message.contains("trapped"),
        "{}",
        trap.status_message
    );
    assert_eq!(trap.attr("http.response.status_code"), "500");
    assert_eq!(trap.attr("error.type"), "500");
    assert_eq!(timeout.status_code, otlp::ERROR);
    assert!(
        timeout.status_message.contains("deadline"),
        "{}",
        timeout.status_message
    );
    assert_eq!(timeout.attr("http.response.status_code"), "504");
    // Not the server's failure: no error, no route.
    assert_eq!(missing.status_code, 0);
    assert_eq!(missing.attr("http.response.status_code"), "404");
    assert_eq!(missing.attr("handoff.route"), "");
    assert_eq!(mid_body.status_code, otlp::ERROR, "{mid_body:?}");
    assert!(
        mid_body
            .status_message
            .contains("did not finish the response body"),
        "{}",
        mid_body.status_message
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollouts_arms_show_in_spans() {
    let receiver = Receiver::start().await;
    let mut config = traced(&receiver);
    config.pin_header = Some("x-pin".parse().unwrap());
    let server = TestServer::start_with(config).await;
    let v1 = server.deployed("app", guests::TAGGED_V1).await.version;
    let v2 = server.upload(guests::TAGGED_V2).await;
    let (status, answer) = server
        .post_json(
            "/v1/routes/app/rollout",
            json!({"version": v2, "steps": [50], "manual": true}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let weigh = |weight: f64| {
        let server = &server;
        async move {
            let (status, answer) = server
                .admin_json(
                    Method::PATCH,
                    "/v1/routes/app/rollout",
                    json!({ "weight": weight }),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{answer}");
        }
    };
    weigh(100.0).await;
    assert_eq!(
        get(&server, "/app/candidate", &[]).await,
        (StatusCode::OK, "v2".into())
    );
    weigh(0.0).await;
    assert_eq!(
        get(&server, "/app/stable", &[]).await,
        (StatusCode::OK, "v1".into())
    );
    let pin = v2.trim_start_matches("sha256:")[..12].to_owned();
    assert_eq!(
        get(&server, "/app/pinned", &[("x-pin", &pin)]).await,
        (StatusCode::OK, "v2".into())
    );
    let spans = receiver
        .wait_for("three arms", GENEROUS, |spans| {
            let of = |path| server_span(spans, path).cloned();
            Some([
                of("/app/candidate")?,
                of("/app/stable")?,
                of("/app/pinned")?,
            ])
        })
        .await;
    let arms: Vec<(&str, &str)> = spans
        .iter()
        .map(|s| (s.attr("handoff.arm"), s.attr("handoff.version")))
        .collect();
    assert_eq!(
        arms,
        [
            ("candidate", v2.as_str()),
            ("stable", v1.as_str()),
            ("pinned", v2.as_str())
        ]
    );
    // The rollout's start and each weight set by hand are changes in the trace.
    receiver
        .wait_for("the rollout's changes", GENEROUS, |spans| {
            let start = spans.iter().find(|s| s.name == "rollout start")?;
            assert_eq!(
                (start.attr("handoff.route"), start.attr("handoff.version")),
                ("app", v2.as_str())
            );
            let actions: Vec<&str> = spans
                .iter()
                .filter(|s| s.name == "rollout action")
                .map(|s| s.attr("handoff.rollout.action"))
                .collect();
            (actions.len() == 2).then_some(())?;
            assert_eq!(actions, ["weight", "weight"]);
            let mut weights: Vec<&str> = spans
                .iter()
                .filter(|s| s.name == "rollout action")
                .map(|s| s.attr("handoff.rollout.weight"))
                .collect();
            weights.sort();
            assert_eq!(weights, ["0", "100"]);
            Some(())
        })
        .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_copy_has_its_own_span_linked_to_the_request() {
    let receiver = Receiver::start().await;
    let server = TestServer::start_with(traced(&receiver)).await;
    server.deploy("app", guests::TAGGED_V1).await;
    let shadow = server.upload(guests::TAGGED_V1B).await;
    let (status, body) = server
        .admin_json(
            Method::PUT,
            "/v1/routes/app/shadow",
            json!({"version": shadow, "percent": 100}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        get(&server, "/app/copied", &[]).await,
        (StatusCode::OK, "v1".into())
    );
    let (status, body) = server.admin(Method::DELETE, "/v1/routes/app/shadow").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    receiver
        .wait_for(
            "the copy's span and the shadow's changes",
            GENEROUS,
            |spans| {
                let original = server_span(spans, "/app/copied")?;
                let copy = spans.iter().find(|s| s.name == "shadow copy app")?;
                assert_ne!(copy.trace_id, original.trace_id);
                assert_eq!(
                    copy.links,
                    [(original.trace_id.clone(), original.span_id.clone())]
                );
                assert_eq!(
                    (copy.attr("handoff.arm"), copy.attr("handoff.version")),
                    ("shadow", shadow.as_str())
                );
                assert_eq!(copy.attr("http.response.status_code"), "200");
                assert_eq!(original.attr("handoff.arm"), "stable");
                spans.iter().find(|s| s.name == "shadow start")?;
                spans.iter().find(|s| s.name == "shadow stop")?;
                Some(())
            },
        )
        .await;
    server.shutdown().await;
}
