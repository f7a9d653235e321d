//! OpenTelemetry traces: a server span per request with the HTTP conventions and handoff's own
//! attributes, continuing the caller's trace; outbound calls as client spans whose
//! `traceparent` continues the trace in the next service; errors as error spans with their
//! reason; the arms of a rollout; a shadow copy's own span. Changes as spans are in
//! `tracing_changes`, sending spans (the flush at shutdown, an unreachable collector) in
//! `tracing_export`. Spans are received by a small OTLP/HTTP collector on loopback
//! (`handoff_tests::otlp`, decoding with `opentelemetry-proto`).

use std::time::{Duration, Instant};

use crate::tracing_changes::{children, deploy_phases};
use bytes::Bytes;
use handoff::config::Config;
use handoff::trace::{Protocol, Settings};
use handoff_tests::nats::{NatsServer, until_live};
use handoff_tests::otlp::{self, Receiver, Span};
use handoff_tests::{Connection, TestServer, guests, node_config, send};
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

/// An admin request to `server` with `headers` and a body (`content-type` given among the
/// headers when there is one).
async fn admin_with(
    server: &TestServer,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", handoff_tests::ADMIN_HOST);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let (status, body) = send(
        server.admin,
        req.body(Full::new(Bytes::from(body))).unwrap(),
    )
    .await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_requests_traceparent_parents_the_change_it_causes() {
    let receiver = Receiver::start().await;
    let server = TestServer::start_with(traced(&receiver)).await;
    // A deploy from a CI job whose span is `PARENT` in trace `TRACE`.
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let (status, body) = admin_with(
        &server,
        Method::PUT,
        "/v1/routes/api",
        &[
            ("content-type", "application/wasm"),
            ("traceparent", &traceparent),
            ("tracestate", "ci=1"),
        ],
        guests::bytes(guests::HOSTILE),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let deploy = receiver
        .wait_for("the deploy's span", GENEROUS, |spans| {
            spans.iter().find(|s| s.name == "deploy").cloned()
        })
        .await;
    assert_eq!(
        (deploy.trace_id.as_str(), deploy.parent_span_id.as_str()),
        (TRACE, PARENT)
    );
    // Its phases are still its own children (not the caller's).
    let phases = deploy_phases(&receiver, &deploy).await;
    assert_eq!(
        phases,
        [
            "build < deploy",
            "compile < deploy",
            "record < deploy",
            "swap < deploy",
            "trial instance < build",
            "upload < deploy",
        ]
    );

    // A deploy the caller does not sample (flags 00): not recorded, nor its phases.
    const UNSAMPLED: &str = "0af7651916cd43dd8448eb211c80319c";
    let (status, body) = admin_with(
        &server,
        Method::PUT,
        "/v1/routes/api",
        &[
            ("content-type", "application/wasm"),
            (
                "traceparent",
                &format!("00-{UNSAMPLED}-b7ad6b7169203331-00"),
            ),
        ],
        guests::bytes(guests::TAGGED_V1),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A rollback the caller samples: a child of its span.
    const SAMPLED: &str = "5b8efff798038103d269b633813fc60c";
    let (status, body) = admin_with(
        &server,
        Method::POST,
        "/v1/routes/api/rollback",
        &[("traceparent", &format!("00-{SAMPLED}-eee19b7ec3c1b174-01"))],
        Vec::new(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rollback = receiver
        .wait_for("the rollback's span", GENEROUS, |spans| {
            spans.iter().find(|s| s.name == "rollback").cloned()
        })
        .await;
    assert_eq!(
        (rollback.trace_id.as_str(), rollback.parent_span_id.as_str()),
        (SAMPLED, "eee19b7ec3c1b174")
    );
    assert_eq!(rollback.attr("handoff.route"), "api");
    // Spans leave in the order they end: the unsampled deploy's would have come first.
    let spans = receiver.spans();
    assert!(
        spans.iter().all(|s| s.trace_id != UNSAMPLED),
        "the caller did not sample its trace: {:?}",
        spans
            .iter()
            .filter(|s| s.trace_id == UNSAMPLED)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        spans.iter().filter(|s| s.name == "deploy").count(),
        1,
        "one deploy recorded"
    );
    // A rollout started with a traceparent: its span joins that trace too.
    let v2 = server.upload(guests::TAGGED_V2).await;
    const ROLLOUT: &str = "11111111111111111111111111111111";
    let (status, body) = admin_with(
        &server,
        Method::POST,
        "/v1/routes/api/rollout",
        &[
            ("content-type", "application/json"),
            ("traceparent", &format!("00-{ROLLOUT}-2222222222222222-01")),
        ],
        json!({"version": v2, "steps": [50], "manual": true})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let start = receiver
        .wait_for("the rollout's start", GENEROUS, |spans| {
            spans.iter().find(|s| s.name == "rollout start").cloned()
        })
        .await;
    assert_eq!(
        (start.trace_id.as_str(), start.parent_span_id.as_str()),
        (ROLLOUT, "2222222222222222")
    );
    server.shutdown().await;
}

/// `GET /v1/routes/{route}/rollout`'s `state`, sending requests to `path` on one connection
/// until it is no longer `running` (at most 5,000 requests within [`GENEROUS`]).
async fn drive_until_decided(server: &TestServer, route: &str, path: &str) -> String {
    let mut conn = Connection::open(server.data).await;
    let started = Instant::now();
    for sent in 0.. {
        assert!(
            started.elapsed() < GENEROUS && sent < 5_000,
            "no decision after {sent} requests"
        );
        conn.get(path).await.expect("a request");
        let rollout = server.status(route).await["rollout"].clone();
        if rollout["state"] != "running" {
            return rollout["state"].as_str().unwrap_or_default().to_owned();
        }
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollouts_steps_are_spans_with_the_gates_decision() {
    let receiver = Receiver::start().await;
    let server = TestServer::start_with(traced(&receiver)).await;
    // A healthy candidate: advanced to its second step, then promoted.
    server.deploy("app", guests::TAGGED_V1).await;
    let v2 = server.upload(guests::TAGGED_V2).await;
    let (status, body) = server
        .post_json(
            "/v1/routes/app/rollout",
            json!({"version": v2, "steps": [50, 100], "step_time": "100ms",
                   "step_requests": 5, "min_requests": 5}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        drive_until_decided(&server, "app", "/app").await,
        "promoted"
    );
    // A failing candidate (`/bad/error`: 500 from it, 200 from the stable version): rolled
    // back by the error gate.
    server.deploy("bad", guests::TAGGED_V1).await;
    let failing = server.upload(guests::FAILING).await;
    let (status, body) = server
        .post_json(
            "/v1/routes/bad/rollout",
            json!({"version": failing, "steps": [50, 100], "step_time": "1m", "min_requests": 5}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        drive_until_decided(&server, "bad", "/bad/error").await,
        "rolled_back"
    );
    let steps = receiver
        .wait_for("three rollout steps and their phases", GENEROUS, |spans| {
            let steps: Vec<Span> = spans
                .iter()
                .filter(|s| s.name == "rollout step")
                .cloned()
                .collect();
            (steps.len() == 3).then_some(())?;
            // Each step's change recorded and swapped in as its phases.
            for step in &steps {
                let phases = children(spans, step);
                (phases.contains(&("record", "rollout step"))
                    && phases.contains(&("swap", "rollout step")))
                .then_some(())?;
            }
            Some(steps)
        })
        .await;
    let decided: Vec<(&str, &str, &str, &str, &str)> = steps
        .iter()
        .map(|s| {
            (
                s.attr("handoff.route"),
                s.attr("handoff.rollout.decision"),
                s.attr("handoff.rollout.step"),
                s.attr("handoff.rollout.weight"),
                s.attr("handoff.version"),
            )
        })
        .collect();
    assert_eq!(
        decided,
        [
            ("app", "advance", "1", "50", v2.as_str()),
            ("app", "promote", "2", "100", v2.as_str()),
            ("bad", "roll back", "1", "50", failing.as_str()),
        ]
    );
    for step in &steps {
        // The controller's own decisions: each the root of a trace, and not an error (the
        // change happened; a rollback's reason is an attribute).
        assert!(step.parent_span_id.is_empty(), "{step:?}");
        assert_eq!(step.kind, otlp::INTERNAL);
        assert_eq!(step.status_code, 0, "{step:?}");
    }
    assert_eq!(steps[0].attr("handoff.rollout.reason"), "");
    let reason = steps[2].attr("handoff.rollout.reason");
    assert!(reason.contains("error rate"), "{reason}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cluster_node_applying_a_change_is_a_span_of_its_own() {
    let nats = NatsServer::start();
    let url = nats.url();
    let receiver = Receiver::start().await;
    let node = |name: &str| {
        let mut config = node_config(&url, name, None);
        config.tracing = traced(&receiver).tracing;
        TestServer::start_with(config)
    };
    let a = node("a").await;
    let b = node("b").await;
    until_live(&a, 2).await;
    until_live(&b, 2).await;
    // A deploy through a: b applies it.
    let (status, body) = a
        .deploy_bytes("api", "", guests::bytes(guests::TAGGED_V1))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["cluster"]["converged"], true, "{body}");
    let v1 = body["version"].as_str().unwrap().to_owned();
    // A second deploy, through b: a applies it.
    let (status, body) = b
        .deploy_bytes("api", "", guests::bytes(guests::TAGGED_V2))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v2 = body["version"].as_str().unwrap().to_owned();
    let applied = receiver
        .wait_for("a's and b's cluster applies", GENEROUS, |spans| {
            let applies: Vec<Span> = spans
                .iter()
                .filter(|s| s.name == "cluster apply")
                .cloned()
                .collect();
            let on = |node: &str, version: &str| {
                applies
                    .iter()
                    .any(|s| s.attr("handoff.node") == node && s.attr("handoff.version") == version)
            };
            (on("b", &v1) && on("a", &v2)).then_some(applies)
        })
        .await;
    // One span per node that applied a change another node made; none where it was made.
    let mut seen: Vec<(&str, &str)> = applied
        .iter()
        .map(|s| (s.attr("handoff.node"), s.attr("handoff.version")))
        .collect();
    seen.sort();
    let mut expected = vec![("a", v2.as_str()), ("b", v1.as_str())];
    expected.sort();
    assert_eq!(seen, expected);
    let spans = receiver.spans();
    for apply in &applied {
        assert_eq!(apply.attr("handoff.route"), "api");
        assert_eq!(apply.kind, otlp::INTERNAL);
        assert_eq!(apply.status_code, 0, "{apply:?}");
        // The node's spans name it in their resource.
        assert_eq!(
            apply
                .resource
                .get("service.instance.id")
                .map(String::as_str),
            Some(apply.attr("handoff.node"))
        );
        // Its phases: the versions built, and the new table swapped in.
        let phases = children(&spans, apply);
        for phase in [
            ("build", "cluster apply"),
            ("compile", "build"),
            ("trial instance", "build"),
            ("swap", "cluster apply"),
        ] {
            assert!(phases.contains(&phase), "{phase:?} in {phases:?}");
        }
    }
    // The change's own span is on the node that made it, and the other node applied it
    // within the change's trace, as a child of the change's span.
    for (node, version) in [("a", &v1), ("b", &v2)] {
        let deploy = spans
            .iter()
            .find(|s| s.name == "deploy" && s.attr("handoff.version") == version.as_str())
            .unwrap_or_else(|| panic!("no deploy span of {version}"));
        assert_eq!(
            deploy
                .resource
                .get("service.instance.id")
                .map(String::as_str),
            Some(node)
        );
        let apply = applied
            .iter()
            .find(|s| s.attr("handoff.version") == version.as_str())
            .expect("the other node's apply");
        assert_ne!(apply.attr("handoff.node"), node);
        assert_eq!(
            (apply.trace_id.as_str(), apply.parent_span_id.as_str()),
            (deploy.trace_id.as_str(), deploy.span_id.as_str()),
            "{apply:?}"
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}
