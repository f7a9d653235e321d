//! Changes as traces: a deploy is a span with its phases as children (a later deploy's drain of
//! the version it retires among them), a rollback and a failed deploy are spans (the failure an
//! error span with its sentence), and a restart's restore is a span of its own. An admin
//! request's `traceparent` parents the change it causes; a rollout's steps are spans with the
//! gates' decision; each cluster node applying another's change is a span of its own.

use std::time::Instant;

use bytes::Bytes;
use handoff_tests::nats::{NatsServer, until_live};
use handoff_tests::otlp::{self, Receiver, Span};
use handoff_tests::{Connection, TestServer, guests, node_config, send};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::tracing::{GENEROUS, PARENT, TRACE, traced};

/// A deploy's phases as [`deploy_phases`] names them, in order.
const DEPLOY_PHASES: [&str; 6] = [
    "build < deploy",
    "compile < deploy",
    "record < deploy",
    "swap < deploy",
    "trial instance < build",
    "upload < deploy",
];

/// Waits for a deploy span's six phases and names each as `child < parent`.
async fn deploy_phases(receiver: &Receiver, deploy: &Span) -> Vec<String> {
    receiver
        .wait_for("the deploy's phases", GENEROUS, |spans| {
            let found = children(spans, deploy);
            (found.len() >= 6).then(|| {
                found
                    .iter()
                    .map(|(a, b)| format!("{a} < {b}"))
                    .collect::<Vec<_>>()
            })
        })
        .await
}

/// The spans of the trace whose root is `root`, by name, with their parent's name.
fn children<'a>(spans: &'a [Span], root: &Span) -> Vec<(&'a str, &'a str)> {
    let name_of = |id: &str| {
        spans
            .iter()
            .find(|s| s.span_id == id)
            .map_or("", |s| s.name.as_str())
    };
    let mut found: Vec<(&str, &str)> = spans
        .iter()
        .filter(|s| s.trace_id == root.trace_id && s.span_id != root.span_id)
        .map(|s| (s.name.as_str(), name_of(&s.parent_span_id)))
        .collect();
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_spans_with_their_phases() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = traced(&receiver);
    config.data_dir = Some(dir.path().to_owned());
    let server = TestServer::start_with(config.clone()).await;
    let first = server.deployed("api", guests::HOSTILE).await.version;
    let deploy = receiver
        .wait_for("the deploy's span", GENEROUS, |spans| {
            spans
                .iter()
                .find(|s| s.name == "deploy" && s.attr("handoff.version") == first)
                .cloned()
        })
        .await;
    assert_eq!(deploy.kind, otlp::INTERNAL);
    assert!(deploy.parent_span_id.is_empty());
    assert_eq!(deploy.attr("handoff.route"), "api");
    assert_eq!(deploy.status_code, 0);
    assert_eq!(deploy_phases(&receiver, &deploy).await, DEPLOY_PHASES);
    // Every phase lies within the deploy.
    let spans = receiver.spans();
    for phase in spans.iter().filter(|s| s.trace_id == deploy.trace_id) {
        assert!(
            phase.start_ns >= deploy.start_ns && phase.end_ns <= deploy.end_ns,
            "{phase:?}"
        );
    }

    // A second deploy retires the first version: its drain is a phase too.
    let second = server.deployed("api", guests::TAGGED_V1).await.version;
    receiver
        .wait_for("the second deploy's drain", GENEROUS, |spans| {
            let deploy = spans
                .iter()
                .find(|s| s.name == "deploy" && s.attr("handoff.version") == second)?;
            spans
                .iter()
                .find(|s| {
                    s.name == "drain"
                        && s.parent_span_id == deploy.span_id
                        && s.attr("handoff.version") == first
                })
                .map(drop)
        })
        .await;

    // A rollback, and a deploy that fails: an error span with its sentence.
    let (status, body) = server
        .post_json("/v1/routes/api/rollback", json!(null))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = server
        .deploy_bytes("api", "", b"\0asm\x01\0\0\0junk".to_vec())
        .await;
    assert!(status.is_client_error());
    receiver
        .wait_for("the rollback and the failed deploy", GENEROUS, |spans| {
            let rollback = spans.iter().find(|s| s.name == "rollback")?;
            assert_eq!(rollback.attr("handoff.route"), "api");
            let failed = spans
                .iter()
                .find(|s| s.name == "deploy" && s.status_code == otlp::ERROR)?;
            assert!(!failed.status_message.is_empty());
            Some(())
        })
        .await;
    server.shutdown().await;

    // A restart restores the route in a span of its own.
    let server = TestServer::start_with(config).await;
    // (The first start restored nothing.)
    receiver
        .wait_for("the restore of one route", GENEROUS, |spans| {
            spans
                .iter()
                .find(|s| s.name == "restore" && s.attr("handoff.routes") == "1")
                .map(drop)
        })
        .await;
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
    assert_eq!(deploy_phases(&receiver, &deploy).await, DEPLOY_PHASES);

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
