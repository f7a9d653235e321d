//! A WASI 0.3 guest's calls into the host are its own request's, also on an instance that
//! serves several requests at once: each log line carries the id of the request whose task
//! wrote it and is an event of that request's span; each outbound call is a client span under
//! the request that made it, with `traceparent` injected. The guest is the SDK's async test
//! guest (`tests/guests/sdk-async`): `/slowlog` logs, waits, logs again; `/fetch` calls a URL
//! with the SDK's client.

use std::time::Duration;

use bytes::Bytes;
use handoff::config::Config;
use handoff::trace::{Protocol, Settings};
use handoff_tests::otlp::{self, Receiver, Span};
use handoff_tests::{Connection, TestServer, get_request, guests};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

const GENEROUS: Duration = Duration::from_secs(20);
/// Instances that serve up to 16 requests, 4 at once.
const SHARED: &str = "reuse=16&instance-concurrency=4";

fn traced(receiver: &Receiver) -> Config {
    let mut settings = Settings::new(receiver.endpoint(), Protocol::HttpProtobuf);
    settings.batching.delay = Duration::from_millis(50);
    Config {
        tracing: Some(settings),
        ..Config::ephemeral()
    }
}

/// GET `path` on a connection of its own: status and body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (StatusCode, String) {
    let mut conn = Connection::open(addr).await;
    let response = conn.send(get_request(path)).await.expect("a response");
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The request id of `line`, which must have one.
fn id_of(line: &Value) -> String {
    line["request_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no request id: {line}"))
        .to_owned()
}

/// The guest log lines of `route` as its tail streams them (JSON values), read as they come.
struct Tail {
    body: hyper::body::Incoming,
    text: String,
    lines: Vec<Value>,
    _conn: Connection,
}

impl Tail {
    async fn follow(server: &TestServer, route: &str) -> Self {
        let mut conn = Connection::open(server.admin).await;
        let follow = Request::builder()
            .uri(format!("/v1/routes/{route}/logs"))
            .header("host", handoff_tests::ADMIN_HOST)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let body = conn.send(follow).await.expect("log tail").into_body();
        Self {
            body,
            text: String::new(),
            lines: Vec::new(),
            _conn: conn,
        }
    }

    /// Reads until a line whose message is `message` came; that line.
    async fn until(&mut self, message: &str) -> Value {
        tokio::time::timeout(GENEROUS, async {
            loop {
                if let Some(line) = self.lines.iter().find(|l| l["message"] == message) {
                    return line.clone();
                }
                let frame = self.body.frame().await.expect("a frame").expect("the tail");
                if let Some(data) = frame.data_ref() {
                    self.text.push_str(&String::from_utf8_lossy(data));
                }
                while let Some(end) = self.text.find("\n\n") {
                    let message: String = self.text.drain(..end + 2).collect();
                    for data in message.lines().filter_map(|l| l.strip_prefix("data: ")) {
                        if let Ok(line) = serde_json::from_str::<Value>(data) {
                            self.lines.push(line);
                        }
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no log line {message:?} in {:?}", self.lines))
    }
}

/// The `guest log` events of `span`: their messages.
fn logged(span: &Span) -> Vec<&str> {
    span.events
        .iter()
        .filter(|(name, _)| name == "guest log")
        .map(|(_, a)| a["message"].as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_shared_03_instance_each_log_line_is_its_own_requests() {
    let receiver = Receiver::start().await;
    let server = TestServer::start_with(traced(&receiver)).await;
    let (code, body) = server
        .deploy_bytes(
            "shared",
            &format!("?{SHARED}"),
            guests::bytes(guests::SDK_ASYNC),
        )
        .await;
    assert!(code.is_success(), "{body}");
    let mut tail = Tail::follow(&server, "shared").await;

    // A logs, then waits; B starts on A's instance while A waits, and ends first.
    let addr = server.data;
    let a = tokio::spawn(async move { get(addr, "/shared/slowlog?tag=A&delay_ms=1500").await });
    tail.until("A before").await;
    let (status, body) = get(addr, "/shared/slowlog?tag=B&delay_ms=1").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "B logged\n"));
    assert_eq!(
        server
            .metric("handoff_version_instances{route=\"shared\",version=")
            .await,
        1.0,
        "B was served by A's instance, while A waited"
    );
    let (status, body) = a.await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "A logged\n"));

    // Each line carries the id of the request that wrote it (A's second line came after B
    // started and ended), and its span.
    let a_id = id_of(&tail.until("A before").await);
    let b_id = id_of(&tail.until("B before").await);
    assert_ne!(a_id, b_id);
    assert_eq!(id_of(&tail.until("B after").await), b_id);
    assert_eq!(id_of(&tail.until("A after").await), a_id);
    let spans = receiver
        .wait_for("both requests' spans", GENEROUS, |spans| {
            let of = |tag: &str| {
                spans
                    .iter()
                    .find(|s| {
                        s.kind == otlp::SERVER
                            && s.attributes
                                .get("url.path")
                                .is_some_and(|p| p == "/shared/slowlog")
                            && logged(s).first().is_some_and(|m| m.starts_with(tag))
                    })
                    .cloned()
            };
            Some((of("A")?, of("B")?))
        })
        .await;
    let (a_span, b_span) = spans;
    assert_eq!(logged(&a_span), ["A before", "A after"], "{a_span:?}");
    assert_eq!(logged(&b_span), ["B before", "B after"], "{b_span:?}");
    let a_after = tail.until("A after").await;
    assert_eq!(a_after["span_id"], a_span.span_id.as_str(), "{a_after}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_03_guests_outbound_call_is_a_client_span_and_its_log_lines_are_span_events() {
    let receiver = Receiver::start().await;
    let server = TestServer::start_with(traced(&receiver)).await;
    let data = server.data;
    server.deploy("back", guests::SDK_ASYNC).await;
    // On a fresh instance (the default) and on a shared one.
    for (route, settings) in [("fresh", String::new()), ("shared", format!("&{SHARED}"))] {
        let (code, body) = server
            .deploy_bytes(
                route,
                &format!("?allow-outbound=http://{data}{settings}"),
                guests::bytes(guests::SDK_ASYNC),
            )
            .await;
        assert!(code.is_success(), "{body}");
        let url = format!("http://{data}/back/hello");
        let (status, body) = get(data, &format!("/{route}/fetch?url={url}")).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "sdk-async hello\n")
        );
        let (front, client, back) = receiver
            .wait_for("three spans of one trace", GENEROUS, |spans| {
                let front = spans
                    .iter()
                    .find(|s| s.kind == otlp::SERVER && s.attr("handoff.route") == route)?;
                let client = spans
                    .iter()
                    .find(|s| s.kind == otlp::CLIENT && s.parent_span_id == front.span_id)?;
                let back = spans.iter().find(|s| {
                    s.kind == otlp::SERVER
                        && s.attr("handoff.route") == "back"
                        && s.parent_span_id == client.span_id
                })?;
                Some((front.clone(), client.clone(), back.clone()))
            })
            .await;
        assert_eq!(client.trace_id, front.trace_id, "{route}");
        assert_eq!(
            back.trace_id, front.trace_id,
            "{route}: the traceparent went out"
        );
        assert_eq!(client.name, "GET");
        for (key, value) in [
            ("http.request.method", "GET"),
            ("url.full", url.as_str()),
            ("http.response.status_code", "200"),
        ] {
            assert_eq!(
                client.attr(key),
                value,
                "{route}: {key} in {:?}",
                client.attributes
            );
        }
        assert!(front.start_ns <= client.start_ns && client.end_ns <= front.end_ns);
        assert_eq!(
            logged(&front),
            [format!("sdk-async fetches {url}").as_str()],
            "{route}: {front:?}"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_of_03_requests_sharing_an_instance_carry_their_own_ids_untraced() {
    // Without tracing the same holds for the ids (a server that traces nothing still knows
    // which task logs).
    let server = TestServer::start().await;
    let (code, body) = server
        .deploy_bytes(
            "shared",
            &format!("?{SHARED}"),
            guests::bytes(guests::SDK_ASYNC),
        )
        .await;
    assert!(code.is_success(), "{body}");
    let mut tail = Tail::follow(&server, "shared").await;
    let addr = server.data;
    let a = tokio::spawn(async move { get(addr, "/shared/slowlog?tag=A&delay_ms=1500").await });
    tail.until("A before").await;
    assert_eq!(
        get(addr, "/shared/slowlog?tag=B&delay_ms=1").await.0,
        StatusCode::OK
    );
    assert_eq!(a.await.unwrap().0, StatusCode::OK);
    let a_id = id_of(&tail.until("A before").await);
    let b_id = id_of(&tail.until("B before").await);
    assert_ne!(a_id, b_id);
    assert_eq!(id_of(&tail.until("A after").await), a_id);
    assert_eq!(id_of(&tail.until("B after").await), b_id);
    server.shutdown().await;
}
