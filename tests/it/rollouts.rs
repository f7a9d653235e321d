//! Rollouts: a healthy candidate steps through and is promoted with no failed request; a
//! failing, trapping or slow one is taken out by its gate with the reason recorded; a rollout
//! continues after a restart where it was; request bodies stalled on a healthy candidate do not
//! roll it back; a process handing over to one taking over from it makes no step.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use handoff::api::RolloutStatus;
use handoff::config::Config;
use handoff_tests::{Connection, TestServer, eventually, guests};
use http::StatusCode;
use serde_json::{Value, json};

use crate::delivery::{GENEROUS, get_with, in_dir, rollout, tally};

/// The candidate's requests in the rollout's current step (0 before its first figures).
fn candidate_requests(rollout: &RolloutStatus) -> u64 {
    rollout
        .versions
        .iter()
        .find(|v| v.role == "candidate")
        .map_or(0, |v| v.requests)
}

/// Drives `path` with `clients` keep-alive clients until the route's rollout reaches a state
/// other than running; returns the rollout then and how long after the candidate could first
/// be judged (it had `min_requests` in the step, as the status showed) the rollout ended.
async fn drive_until_decided(
    server: &TestServer,
    path: &str,
    clients: usize,
    min_requests: u64,
) -> (RolloutStatus, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..clients {
        let (addr, stop, path) = (server.data, stop.clone(), path.to_owned());
        load.push(tokio::spawn(async move {
            let mut conn = Connection::open(addr).await;
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < GENEROUS {
                let _ = conn.get(&path).await;
            }
        }));
    }
    let started = Instant::now();
    let mut judgeable: Option<Instant> = None;
    let rollout = loop {
        assert!(
            started.elapsed() < GENEROUS,
            "the rollout did not end in time"
        );
        let rollout = server.rollout("app").await;
        if rollout.state != "running" {
            break rollout;
        }
        if candidate_requests(&rollout) >= min_requests && judgeable.is_none() {
            judgeable = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = judgeable.map_or(Duration::ZERO, |at| at.elapsed());
    eprintln!(
        "rollout ended {} {took:?} after the candidate could be judged",
        rollout.state
    );
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    (rollout, took)
}

/// After a rollback: the route serves the stable version, and `requests` requests all succeed.
async fn serves_stable_only(server: &TestServer, path: &str) {
    let counts = tally(server, path, 200, 4).await;
    assert_eq!(counts, HashMap::from([("v1".to_owned(), 200)]));
    let status = server.route("app").await;
    assert_eq!(status.versions.len(), 1, "{status:?}");
}

/// Rolls `candidate` out on a route serving the tagged v1, drives `path` with `clients` until
/// a gate takes the candidate out, and checks what every rollback must show: weight 0 within
/// 1.5 s of the candidate becoming judgeable, the reason in the rollout and the history (by
/// `rollout`), `/metrics` saying so, and only the stable version serving afterwards. Returns
/// the server and the reason.
async fn rolled_back_by_a_gate(
    candidate: &str,
    path: &str,
    clients: usize,
    gates: Value,
) -> (TestServer, String) {
    let server = TestServer::start().await;
    server.deploy("app", guests::TAGGED_V1).await;
    let version = server.upload(candidate).await;
    let mut options = json!({"steps": [50, 100], "step_time": "1m", "min_requests": 20});
    options
        .as_object_mut()
        .unwrap()
        .extend(gates.as_object().unwrap().clone());
    rollout(&server, "app", &version, options).await;
    let (rollout, took) = drive_until_decided(&server, path, clients, 20).await;
    assert_eq!(rollout.state, "rolled_back", "{rollout:?}");
    assert_eq!(rollout.weight, 0.0);
    assert!(
        took < Duration::from_millis(1_500),
        "the candidate was taken out {took:?} after it could be judged"
    );
    let reason = rollout.reason.clone().expect("a rollback's reason");
    let history = server.history("app").await;
    let last = history.versions.last().unwrap();
    assert_eq!(
        (last.action.as_str(), last.by.as_str()),
        ("rollback", "rollout")
    );
    assert_eq!(last.message.as_deref(), Some(reason.as_str()));
    let state = "handoff_rollout_state{route=\"app\",state=\"rolled_back\"}";
    assert_eq!(server.metric(state).await, 1.0);
    let weight = format!("handoff_rollout_weight_percent{{route=\"app\",candidate=\"{version}\"}}");
    assert_eq!(server.metric(&weight).await, 0.0);
    serves_stable_only(&server, path).await;
    (server, reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_candidate_is_taken_out_within_a_second_and_the_reason_recorded() {
    // `/app/error`: the stable version answers 200, the candidate 500.
    let (server, reason) = rolled_back_by_a_gate(guests::FAILING, "/app/error", 4, json!({})).await;
    assert!(reason.contains("error rate"), "{reason}");
    assert!(reason.contains("max_error_rate 0.01"), "{reason}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_candidate_is_taken_out_by_the_error_gate() {
    // `/app/trap`: the stable version answers 200, the candidate traps (a 500 from the host).
    let (server, reason) = rolled_back_by_a_gate(guests::HOSTILE, "/app/trap", 4, json!({})).await;
    assert!(reason.contains("error rate"), "{reason}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_candidate_is_taken_out_by_the_p99_gate() {
    let gates = json!({"max_p99_ratio": 2.0});
    let (server, reason) = rolled_back_by_a_gate(guests::TAGGED_SLOW, "/app", 8, gates).await;
    assert!(reason.contains("p99"), "{reason}");
    assert!(reason.contains("above max_p99_ratio 2"), "{reason}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_candidate_steps_through_and_is_promoted_with_zero_failed_requests() {
    let server = TestServer::start().await;
    server.deploy("app", guests::TAGGED_V1).await;
    let v2 = server.upload(guests::TAGGED_V2).await;
    rollout(
        &server,
        "app",
        &v2,
        json!({"steps": [10, 50, 100], "step_time": "300ms", "step_requests": 20, "min_requests": 10}),
    )
    .await;
    // Load throughout: every response a 200 from v1 or v2.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (addr, stop) = (server.data, stop.clone());
        load.push(tokio::spawn(async move {
            let mut conn = Connection::open(addr).await;
            let mut answers: HashMap<String, usize> = HashMap::new();
            let mut failures = Vec::new();
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < GENEROUS {
                match conn.get("/app").await {
                    Ok((StatusCode::OK, body)) => {
                        *answers
                            .entry(String::from_utf8_lossy(&body).into_owned())
                            .or_default() += 1
                    }
                    other => failures.push(format!("{other:?}")),
                }
            }
            (answers, failures)
        }));
    }
    let mut weights = Vec::new();
    let started = Instant::now();
    let finished = loop {
        assert!(
            started.elapsed() < GENEROUS,
            "not promoted in time: {weights:?}"
        );
        let rollout = server.rollout("app").await;
        let weight = rollout.weight;
        if weights.last() != Some(&weight) {
            weights.push(weight);
        }
        if rollout.state != "running" {
            break rollout;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // A little more load on the promoted version, then stop.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut answers: HashMap<String, usize> = HashMap::new();
    for task in load {
        let (seen, failures) = task.await.unwrap();
        assert!(failures.is_empty(), "failed requests: {failures:?}");
        for (body, count) in seen {
            *answers.entry(body).or_default() += count;
        }
    }
    assert_eq!(finished.state, "promoted", "{finished:?}");
    assert!(weights.starts_with(&[10.0, 50.0]), "{weights:?}");
    assert!(
        answers.keys().all(|b| b == "v1" || b == "v2"),
        "{answers:?}"
    );
    let status = server.route("app").await;
    assert_eq!(status.active.version, v2);
    assert_eq!(status.versions.len(), 1);
    assert_eq!(server.get("/app").await.1, "v2");
    let history = server.history("app").await;
    let last = history.versions.last().unwrap();
    assert_eq!(last.action, "promote");
    assert_eq!(last.version, v2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_continues_after_a_restart_where_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(in_dir(dir.path())).await;
    server.deploy("app", guests::TAGGED_V1).await;
    let v2 = server.upload(guests::TAGGED_V2).await;
    // Without traffic it cannot leave its first step (it needs candidate requests).
    rollout(
        &server,
        "app",
        &v2,
        json!({"steps": [20, 100], "step_time": "100ms", "step_requests": 10, "min_requests": 5}),
    )
    .await;
    server.shutdown().await;

    let server = TestServer::start_with(in_dir(dir.path())).await;
    let resumed = server.rollout("app").await;
    assert_eq!(
        (resumed.state.as_str(), resumed.step, resumed.weight),
        ("running", 0, 20.0),
        "{resumed:?}"
    );
    // Traffic: the controller of the new process steps it on and promotes it.
    let (finished, _) = drive_until_decided(&server, "/app", 4, 5).await;
    assert_eq!(finished.state, "promoted", "{finished:?}");
    assert_eq!(server.get("/app").await.1, "v2");
    server.shutdown().await;
}

/// POSTs to `path` on a connection of its own, pinned to `version`, declaring a 1,000-byte body
/// but sending only 10 bytes of it; the response's status once the server answers (for a 200,
/// once the server has also ended the response body).
pub(crate) async fn stalled_post(addr: std::net::SocketAddr, path: &str, version: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: handoff.test\r\nx-pin: {version}\r\ncontent-length: 1000\r\n\r\n0123456789"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(GENEROUS, stream.read(&mut buf))
            .await
            .expect("an answer within the deadline")
            .unwrap();
        assert!(n > 0, "the connection closed without an answer");
        answer.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&answer);
    let status = line.split(' ').nth(1).unwrap().parse().unwrap();
    // A head sent before the body was read: the client stays until the server ends the body.
    if status == 200 {
        while tokio::time::timeout(GENEROUS, stream.read(&mut buf))
            .await
            .expect("the body ended within the deadline")
            .is_ok_and(|n| n > 0)
        {}
    }
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_bodies_pinned_to_a_healthy_candidate_do_not_roll_it_back() {
    stalled_bodies_do_not_count_against(guests::HOSTILE, "/app/read-body", "/app/ok", 408).await;
}

/// A rollout to `candidate` (a guest whose `stalled` path reads the whole request body and
/// whose `healthy` path answers 200) on a route whose requests time out after 1 s: twelve
/// POSTs pinned to the candidate whose bodies the client never finishes are answered
/// `status` (408, or 200 from a guest that answers before it reads, its body then cut at the
/// deadline), the client's doing, and do not count against it; twenty healthy requests do.
pub(crate) async fn stalled_bodies_do_not_count_against(
    candidate: &str,
    stalled: &str,
    healthy: &str,
    status: u16,
) {
    let server = TestServer::start_with(Config {
        pin_header: Some("x-pin".parse().unwrap()),
        limits: handoff::config::Limits {
            request_timeout: Duration::from_secs(1),
            ..Default::default()
        },
        ..Config::ephemeral()
    })
    .await;
    server.deploy("app", guests::TAGGED_V1).await;
    let candidate = server.upload(candidate).await;
    rollout(
        &server,
        "app",
        &candidate,
        json!({"steps": [50, 100], "step_time": "1m", "min_requests": 10}),
    )
    .await;
    step_window_opened(&server, "app").await;
    let stalled_posts: Vec<_> = (0..12)
        .map(|_| {
            let (addr, candidate, path) = (server.data, candidate.clone(), stalled.to_owned());
            tokio::spawn(async move { stalled_post(addr, &path, &candidate).await })
        })
        .collect();
    // And twenty healthy requests pinned to it, so that its gates judge the step.
    let mut conn = Connection::open(server.data).await;
    for _ in 0..20 {
        let (status, _) = get_with(&mut conn, healthy, ("x-pin", &candidate)).await;
        assert_eq!(status, StatusCode::OK);
    }
    for post in stalled_posts {
        assert_eq!(post.await.unwrap(), status, "a stalled request body");
    }
    // The controller judges every 100 ms: give it a dozen looks at the step.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1_200) {
        let rollout = server.rollout("app").await;
        assert_eq!(rollout.state, "running", "{rollout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rollout = server.rollout("app").await;
    let figures = rollout
        .versions
        .iter()
        .find(|v| v.role == "candidate")
        .expect("the candidate's figures");
    assert_eq!(
        (figures.requests, figures.error_rate),
        (20, 0.0),
        "{rollout:?}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_handing_over_makes_no_rollout_step_and_drives_again_if_it_switches_back() {
    let server = TestServer::start().await;
    let rt = server.server().runtime().clone();
    server.deploy("app", guests::TAGGED_V1).await;
    let v2 = server.upload(guests::TAGGED_V2).await;
    rollout(
        &server,
        "app",
        &v2,
        json!({"steps": [50, 100], "step_time": "300ms", "step_requests": 5, "min_requests": 1000}),
    )
    .await;
    step_window_opened(&server, "app").await;
    let app = handoff::names::RouteName::parse("app").unwrap();
    let step = || {
        let table = rt.routes.snapshot();
        let rollout = table.get(&app).and_then(|r| r.record.rollout.clone());
        rollout.expect("the rollout runs").step
    };
    // A takeover begins (`serve --takeover`): from its first step the state is on its way to
    // the new process, as the admin API says (503). The data plane serves on, the candidate
    // gets its share, and the step falls due.
    rt.handover.set_released(true);
    let counts = tally(&server, "/app", 40, 2).await;
    assert!(counts.get("v2").is_some_and(|&n| n >= 5), "{counts:?}");
    // The controller judges every 100 ms: a dozen looks past the step's due time, no step
    // from this process.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1_500) {
        assert_eq!(step(), 0, "a process handing over stepped the rollout");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The new process failed before it was ready: this one takes changes again, and its
    // controller drives the rollout on (counting the step afresh).
    rt.handover.set_released(false);
    let started = Instant::now();
    while step() == 0 {
        assert!(started.elapsed() < GENEROUS, "the rollout never stepped");
        tally(&server, "/app", 10, 1).await;
    }
    server.shutdown().await;
}

/// Waits until `route`'s rollout step has a window: the controller opens it at its first look.
async fn step_window_opened(server: &TestServer, route: &str) {
    eventually("the step's figures", GENEROUS, || async {
        (!server.rollout(route).await.versions.is_empty()).then_some(())
    })
    .await;
}
