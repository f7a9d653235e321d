//! `handoff serve` reads the OpenTelemetry variables from its environment and exports spans
//! to the collector they name (a small OTLP/HTTP receiver here, `handoff_tests::otlp`); a bad
//! value stops it with a sentence naming the variable; and a client command run with
//! `TRACEPARENT` set makes the change it causes part of the caller's trace.

use std::time::Duration;

use handoff::exit;
use handoff_tests::guests;
use handoff_tests::otlp::{self, Receiver};

use crate::support::{Running, get, handoff_with, run_within, serve_command};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const GENEROUS: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exports_to_the_collector_its_environment_names_and_the_cli_passes_traceparent_on() {
    let receiver = Receiver::start().await;
    let mut command = serve_command(&[]);
    command
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{}", receiver.addr),
        )
        .env("OTEL_SERVICE_NAME", "shop")
        .env("OTEL_BSP_SCHEDULE_DELAY", "50");
    let mut server = Running::spawn(command);
    let ready = server.ready(Duration::from_secs(30)).await;
    let admin = ready.admin_url();
    // A CI job's span: the deploy it runs is a child of it.
    handoff_with(
        &["deploy", "api", guests::HOSTILE, "--admin", &admin],
        "TRACEPARENT",
        format!("00-{TRACE}-{PARENT}-01"),
    )
    .await
    .ok();
    assert_eq!(get(&ready, "/api/ok").await, (200, "ok".to_owned()));
    let (deploy, request) = receiver
        .wait_for("the deploy's and the request's spans", GENEROUS, |spans| {
            let deploy = spans.iter().find(|s| s.name == "deploy")?;
            let request = spans
                .iter()
                .find(|s| s.kind == otlp::SERVER && s.attr("url.path") == "/api/ok")?;
            Some((deploy.clone(), request.clone()))
        })
        .await;
    assert_eq!(
        (deploy.trace_id.as_str(), deploy.parent_span_id.as_str()),
        (TRACE, PARENT)
    );
    assert_eq!(deploy.attr("handoff.route"), "api");
    assert_eq!(
        (deploy.service.as_str(), request.service.as_str()),
        ("shop", "shop")
    );
    assert_eq!(request.name, "GET /api");
    assert_eq!(request.attr("http.response.status_code"), "200");
    assert!(server.terminate(GENEROUS).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracing_variable_serve_cannot_use_stops_it_with_a_sentence_naming_it() {
    for (var, value) in [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
    ] {
        let mut command = serve_command(&[]);
        command.env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        command.env(var, value);
        let out = run_within(Duration::from_secs(30), command).await;
        let named = if var == "OTEL_EXPORTER_OTLP_ENDPOINT" {
            "OTEL_EXPORTER_OTLP_ENDPOINT=`collector:4318`"
        } else {
            var
        };
        out.fails(exit::CONFIG as i32, named);
    }
}
