//! The event stream (`GET /v1/events`): resuming with `Last-Event-ID` misses nothing the
//! buffer holds, a stalled client is dropped with a notice and slows no deploy, the events of
//! a rollout and of drains arrive with who and why, `?route=` filters, and shutdown ends the
//! streams.

use std::time::{Duration, Instant};

use handoff::api::{Event, EventKind};
use handoff::client::AdminClient;
use handoff::client::events::EventStream;
use handoff_tests::{TestServer, eventually, guests};
use http::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GENEROUS: Duration = Duration::from_secs(60);

fn client(server: &TestServer) -> AdminClient {
    AdminClient::new(&format!("http://{}", server.admin)).unwrap()
}

async fn open(server: &TestServer, route: Option<&str>, last: Option<u64>) -> EventStream {
    client(server)
        .events(route, last)
        .await
        .expect("the event stream opens")
}

/// Reads events until `done` says the last one read is the one waited for; all of them.
async fn read_until(stream: &mut EventStream, done: impl Fn(&Event) -> bool) -> Vec<Event> {
    let mut seen = Vec::new();
    let read = async {
        while let Some(event) = stream.next().await.expect("the stream reads") {
            let last = done(&event);
            seen.push(event);
            if last {
                return;
            }
        }
        panic!("the stream ended early after {seen:?}");
    };
    tokio::time::timeout(GENEROUS, read)
        .await
        .expect("the awaited event arrives");
    seen
}

fn is(kind: EventKind, version: &str) -> impl Fn(&Event) -> bool {
    move |e: &Event| e.kind == kind && e.version.as_deref() == Some(version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_resumes_with_last_event_id_misses_nothing() {
    let server = TestServer::start().await;
    let mut steady = open(&server, None, None).await;
    let mut resuming = open(&server, None, None).await;
    let v1 = server.deployed("app", guests::TAGGED_V1).await.version;
    let first = read_until(&mut resuming, is(EventKind::Activated, &v1)).await;
    let last_seen = first.last().unwrap().id;
    assert_eq!(first[0].by.as_deref(), Some("anonymous"));
    assert_eq!(first[0].action.as_deref(), Some("deploy"));
    drop(resuming);
    // While it is away: a redeploy (activation, retirement, drain), a second route, a rollback
    // and a delete.
    let v2 = server.deployed("app", guests::TAGGED_V2).await.version;
    server.deploy("other", guests::TAGGED_V1).await;
    let (status, body) = server
        .post_json("/v1/routes/app/rollback", serde_json::Value::Null)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = server.admin(Method::DELETE, "/v1/routes/other").await;
    assert_eq!(status, StatusCode::OK);
    let all = read_until(&mut steady, |e| {
        e.kind == EventKind::Deleted && e.route.as_deref() == Some("other")
    })
    .await;
    let expected: Vec<u64> = all
        .iter()
        .map(|e| e.id)
        .filter(|id| *id > last_seen)
        .collect();
    assert!(expected.len() >= 6, "{all:?}");
    let mut resumed = open(&server, None, Some(last_seen)).await;
    let last = *expected.last().unwrap();
    let replayed = read_until(&mut resumed, |e| e.id == last).await;
    let ids: Vec<u64> = replayed.iter().map(|e| e.id).collect();
    assert_eq!(
        ids, expected,
        "the resumed stream replays exactly what it missed"
    );
    for pair in ids.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "no gap: {ids:?}");
    }
    let kinds: Vec<EventKind> = replayed.iter().map(|e| e.kind).collect();
    for kind in [EventKind::Activated, EventKind::Retired, EventKind::Deleted] {
        assert!(kinds.contains(&kind), "{kind:?} missing from {kinds:?}");
    }
    let rollback = replayed
        .iter()
        .find(|e| e.kind == EventKind::Activated && e.action.as_deref() == Some("rollback"))
        .expect("the rollback's activation");
    assert_eq!(rollback.version.as_deref(), Some(v1.as_str()));
    assert_eq!(rollback.previous.as_deref(), Some(v2.as_str()));
    // An id older than anything the server sent (a client of an earlier run) is told so.
    let mut stale = open(&server, None, Some(1)).await;
    let notice = stale.next().await.unwrap().unwrap();
    assert_eq!(notice.kind, EventKind::Missed);
    assert_eq!(notice.id, 0, "the notice has no id to resume from");
    // A Last-Event-ID that is not an id is refused.
    let req = http::Request::builder()
        .uri("/v1/events")
        .header("host", "admin")
        .header("last-event-id", "yesterday")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let (status, body) = handoff_tests::send(server.admin, req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("Last-Event-ID"));
    server.shutdown().await;
}

/// An event stream whose client never reads, on a socket with a small receive buffer.
async fn stalled_subscriber(server: &TestServer) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(server.admin).await.unwrap();
    stream
        .write_all(b"GET /v1/events HTTP/1.1\r\nhost: admin\r\n\r\n")
        .await
        .unwrap();
    stream
}

/// Deploys alternating stored versions `rounds` times; how long each took.
async fn timed_deploys(server: &TestServer, rounds: usize) -> Vec<Duration> {
    let v1 = guests::bytes(guests::TAGGED_V1);
    let v2 = guests::bytes(guests::TAGGED_V2);
    let mut took = Vec::new();
    for round in 0..rounds {
        let bytes = if round % 2 == 0 {
            v2.clone()
        } else {
            v1.clone()
        };
        let started = Instant::now();
        let (status, body) = server.deploy_bytes("app", "", bytes).await;
        took.push(started.elapsed());
        assert!(status.is_success(), "{status} {body}");
    }
    took
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_dropped_with_a_notice_and_deploys_are_not_slowed() {
    let server = TestServer::start().await;
    let bus = server.server().runtime().events.clone();
    // Both versions stored and compiled: later deploys only load and swap.
    server.deploy("app", guests::TAGGED_V1).await;
    server.deploy("app", guests::TAGGED_V2).await;
    server.deploy("app", guests::TAGGED_V1).await;
    let alone = timed_deploys(&server, 10).await;
    let mut stalled = stalled_subscriber(&server).await;
    eventually("the stalled client to subscribe", GENEROUS, || async {
        (bus.subscribers() == 1).then_some(())
    })
    .await;
    // Fill its socket and its queue: 2 KiB events until the bus lets it go (bounded).
    let filler = "x".repeat(2048);
    let mut published = 0;
    while bus.subscribers() > 0 {
        assert!(published < 50_000, "the stalled client was never dropped");
        bus.publish(Event {
            message: Some(filler.clone()),
            ..Event::new(EventKind::Unknown, "filler")
        });
        published += 1;
        if published % 256 == 0 {
            // Let the connection's task write what it can.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert!(published > handoff::events::QUEUE, "{published}");
    // A second stalled client, not yet dropped, holding a full socket while deploys publish.
    let _held = stalled_subscriber(&server).await;
    eventually(
        "the second stalled client to subscribe",
        GENEROUS,
        || async { (bus.subscribers() == 1).then_some(()) },
    )
    .await;
    let beside = timed_deploys(&server, 10).await;
    let (alone_median, beside_median) = (median(alone.clone()), median(beside.clone()));
    let bound = alone_median * 5 + Duration::from_millis(250);
    assert!(
        beside_median <= bound,
        "deploys beside a stalled client took {beside_median:?} (median), alone {alone_median:?}: {beside:?}"
    );
    for took in &beside {
        assert!(*took < Duration::from_secs(10), "{beside:?}");
    }
    // The dropped client, once it reads, gets what was queued, then the notice, then the end.
    let mut received = Vec::new();
    let read = async {
        let mut buffer = vec![0u8; 1 << 16];
        loop {
            let n = stalled.read(&mut buffer).await.unwrap();
            assert!(n > 0, "the connection closed before the notice");
            received.extend_from_slice(&buffer[..n]);
            // The whole notice: its `event:` line, its `data:` line and the blank line after.
            let notice = received.windows(14).position(|w| w == b"event: dropped");
            if notice.is_some_and(|at| received[at..].windows(2).any(|w| w == b"\n\n")) {
                return;
            }
        }
    };
    tokio::time::timeout(GENEROUS, read)
        .await
        .expect("the dropped notice arrives");
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.contains("fell 256 events behind"),
        "{}",
        &text[text.len().saturating_sub(400)..]
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_and_its_rollback_are_events_with_who_and_why() {
    let server = TestServer::start().await;
    server.deploy("app", guests::TAGGED_V1).await;
    server.deploy("quiet", guests::TAGGED_V1).await;
    let mut stream = open(&server, Some("app"), None).await;
    let failing = server.upload(guests::FAILING).await;
    let (status, body) = server
        .post_json(
            "/v1/routes/app/rollout",
            json!({"version": failing, "steps": [50, 100], "min_requests": 5,
                   "step_time": "60m"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Meanwhile, a route the stream does not follow.
    server.deploy("quiet", guests::TAGGED_V2).await;
    let started = read_until(&mut stream, is(EventKind::RolloutStarted, &failing)).await;
    assert_eq!(started.last().unwrap().weight, Some(50.0));
    assert_eq!(started.last().unwrap().by.as_deref(), Some("anonymous"));
    // Traffic until the error-rate gate takes the candidate out (bounded).
    let mut conn = handoff_tests::Connection::open(server.data).await;
    let deadline = Instant::now() + GENEROUS;
    loop {
        let (_, _) = conn.get("/app/error").await.unwrap();
        let state = server.rollout("app").await.state;
        if state == "rolled_back" {
            break;
        }
        assert!(Instant::now() < deadline, "never rolled back: {state}");
    }
    let seen = read_until(&mut stream, is(EventKind::RolloutRolledBack, &failing)).await;
    let rolled_back = seen.last().unwrap();
    assert_eq!(rolled_back.by.as_deref(), Some("rollout"));
    assert!(
        rolled_back
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("error rate")),
        "{rolled_back:?}"
    );
    let retired = read_until(&mut stream, is(EventKind::Retired, &failing)).await;
    assert!(
        retired
            .iter()
            .chain(&started)
            .chain(&seen)
            .all(|e| e.route.as_deref() == Some("app")),
        "only the followed route's events"
    );
    read_until(&mut stream, is(EventKind::Drained, &failing)).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_the_open_streams() {
    let server = TestServer::start().await;
    let mut stream = open(&server, None, None).await;
    let started = Instant::now();
    server.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "an open event stream held the shutdown for {:?}",
        started.elapsed()
    );
    let end = tokio::time::timeout(GENEROUS, stream.next())
        .await
        .expect("the stream ends");
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_limit_get_503_and_a_single_server_has_no_nodes() {
    let server = TestServer::start().await;
    let mut streams = Vec::new();
    for _ in 0..handoff::events::MAX_SUBSCRIBERS {
        streams.push(open(&server, None, None).await);
    }
    let (status, body) = server.admin(Method::GET, "/v1/events").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    // One closes: the next one opens.
    streams.pop();
    eventually("a stream slot to free", GENEROUS, || async {
        client(&server).events(None, None).await.ok()
    })
    .await;
    // `GET /v1/nodes` is for clusters: a server on its own answers 404, saying why.
    let (status, body) = server.admin(Method::GET, "/v1/nodes").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("cluster")),
        "{body}"
    );
    server.shutdown().await;
}
