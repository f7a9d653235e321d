//! `handoff events` and `handoff status ROUTE --watch` against a real `handoff serve`: events
//! as JSON lines while a route is deployed and rolled out, and a watch that prints the rollout
//! as it steps and exits 0 once it is promoted (plain lines: stdout is a pipe here).

use std::time::Duration;

use bytes::Bytes;
use handoff::api::{Event, EventKind};
use handoff_tests::guests;
use http::{Method, Request, StatusCode};
use http_body_util::Full;

use crate::support::{Running, command, handoff, serve};

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_status_watch_follow_a_rollout_to_its_promotion() {
    let (_server, ready) = serve(&[]).await;
    let admin = ready.admin_url();
    handoff(&["deploy", "app", guests::TAGGED_V1, "--admin", &admin])
        .await
        .ok();
    let mut events = Running::spawn(command(&["events", "--admin", &admin, "--json"]));
    let mut other = Running::spawn(command(&[
        "events", "--route", "nothing", "--admin", &admin,
    ]));
    let mut watch = Running::spawn(command(&["status", "app", "--watch", "--admin", &admin]));
    watch
        .wait_for_line("the first summary", LIMIT, |l| {
            l.starts_with("app: stable ").then_some(())
        })
        .await;
    let uploaded = handoff(&["upload", guests::TAGGED_V2, "--admin", &admin]).await;
    let version = uploaded
        .ok()
        .split_whitespace()
        .nth(1)
        .expect("the version")
        .to_owned();
    // Steps every 100 ms without waiting for traffic; the gates never fire.
    let body = serde_json::json!({"version": version, "steps": [50, 100], "step_time": "100ms",
                                  "step_requests": 0, "min_requests": 1000000});
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/routes/app/rollout")
        .header("host", ready.admin.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let (status, answer) = handoff_tests::send(ready.admin, request).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let code = watch.exit_within(LIMIT).await;
    let text = watch.stdout.text();
    assert!(code.success(), "the watch failed: {code}\n{text}");
    for expected in [
        "rollout_started  app  ",
        "rollout_step  app  ",
        "rollout_promoted  app  ",
        "rollout running step 1/2 at 50%",
        "rollout promoted step 2/2 at 100%",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
    // The JSON lines of `handoff events` carry every kind on the way.
    events
        .wait_for_line("the promotion", LIMIT, |line| {
            let event: Event = serde_json::from_str(line).ok()?;
            (event.kind == EventKind::Drained && event.route.as_deref() == Some("app"))
                .then_some(())
        })
        .await;
    let seen: Vec<Event> = events
        .stdout
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let kinds: Vec<EventKind> = seen.iter().map(|e| e.kind).collect();
    for kind in [
        EventKind::RolloutStarted,
        EventKind::RolloutStep,
        EventKind::Activated,
        EventKind::RolloutPromoted,
        EventKind::Retired,
        EventKind::Drained,
    ] {
        assert!(kinds.contains(&kind), "{kind:?} not in {kinds:?}");
    }
    assert!(seen.windows(2).all(|w| w[1].id > w[0].id), "ids increase");
    // A filter for another route printed nothing.
    assert_eq!(other.stdout.text(), "");
    assert!(!other.exited());
    // A watch of a route that does not exist fails with the server's reason.
    handoff(&["status", "nowhere", "--watch", "--admin", &admin])
        .await
        .fails(1, "nowhere");
}
