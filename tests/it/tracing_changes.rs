//! Changes as traces: a deploy is a span with its phases as children (a later deploy's drain of
//! the version it retires among them), a rollback and a failed deploy are spans (the failure an
//! error span with its sentence), and a restart's restore is a span of its own.

use handoff_tests::otlp::{self, Receiver, Span};
use handoff_tests::{TestServer, guests};
use http::StatusCode;
use serde_json::json;

use crate::tracing::{GENEROUS, traced};

/// The spans of the trace whose root is `root`, by name, with their parent's name.
/// Waits for a deploy span's six phases and names each as `child < parent`.
pub(crate) async fn deploy_phases(receiver: &Receiver, deploy: &Span) -> Vec<String> {
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

pub(crate) fn children<'a>(spans: &'a [Span], root: &Span) -> Vec<(&'a str, &'a str)> {
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
