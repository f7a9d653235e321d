//! Progressive delivery of WASI 0.3 versions, fresh and shared: rollout gates judge a 0.3
//! candidate (and not what its clients do to it: stalled request bodies), a 0.3 version runs
//! as a shadow without side effects, and a 0.3 version deployed through one node of a cluster
//! is served by every node.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use handoff::api::{Deployed, RolloutStatus};
use handoff_tests::nats::{NatsServer, start_nodes};
use handoff_tests::{Connection, TestServer, eventually, guests, typed};
use http::{Method, StatusCode};
use serde_json::json;

use crate::delivery::rollout;
use crate::shadow::shadow_after;
use crate::wasi3_promises::{GENEROUS, HELLO, SHARED, deploy, upstream};

/// Drives `path` with 4 keep-alive clients until `route`'s rollout is decided; the rollout
/// then and the answers the clients got (status and body), counted.
async fn drive(
    server: &TestServer,
    route: &str,
    path: &str,
) -> (RolloutStatus, HashMap<String, usize>) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (addr, stop, path) = (server.data, stop.clone(), path.to_owned());
        load.push(tokio::spawn(async move {
            let mut conn = Connection::open(addr).await;
            let mut seen: HashMap<String, usize> = HashMap::new();
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < GENEROUS {
                let (status, body) = conn.get_text(&path).await;
                *seen
                    .entry(format!("{} {body}", status.as_u16()))
                    .or_default() += 1;
            }
            seen
        }));
    }
    let rollout = eventually("the rollout to be decided", GENEROUS, || async {
        let rollout = server.rollout(route).await;
        (rollout.state != "running").then_some(rollout)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut answers: HashMap<String, usize> = HashMap::new();
    for task in load {
        for (answer, count) in task.await.unwrap() {
            *answers.entry(answer).or_default() += count;
        }
    }
    (rollout, answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_gates_judge_a_03_candidate() {
    let server = TestServer::start().await;
    // A trapping 0.3 candidate beside a 0.2 stable version: `/app/trap` is a 200 from the
    // stable version and a trap on the candidate. The error gate takes it out.
    server.deploy("app", guests::TAGGED_V1).await;
    let candidate = server.upload(guests::P3_HELLO).await;
    rollout(
        &server,
        "app",
        &candidate,
        json!({"steps": [50, 100], "step_time": "1m", "min_requests": 20}),
    )
    .await;
    let (decided, _) = drive(&server, "app", "/app/trap").await;
    assert_eq!(decided.state, "rolled_back", "{decided:?}");
    assert!(
        decided
            .reason
            .as_ref()
            .is_some_and(|r| r.contains("error rate")),
        "{decided:?}"
    );
    assert_eq!(server.get("/app/trap").await, (StatusCode::OK, "v1".into()));

    // A healthy 0.3 candidate (on shared instances) is promoted, failing nothing: the route
    // had served it before, so its settings (shared instances, config) are the route's and
    // stay so under the 0.2 version deployed after it.
    deploy(
        &server,
        "app03",
        &format!("{SHARED}&config=TAG=new"),
        guests::P3_HELLO,
    )
    .await;
    let p3 = server.route("app03").await.active.version;
    server.deploy("app03", guests::TAGGED_V2).await;
    assert_eq!(server.get("/app03").await.1, "v2");
    rollout(
        &server,
        "app03",
        &p3,
        json!({"steps": [10, 50, 100], "step_time": "300ms", "step_requests": 20, "min_requests": 10}),
    )
    .await;
    let (decided, answers) = drive(&server, "app03", "/app03").await;
    assert_eq!(decided.state, "promoted", "{decided:?}");
    let hello = format!("200 {HELLO} new");
    assert!(
        answers.keys().all(|a| *a == "200 v2" || *a == hello),
        "only 200s from either version: {answers:?}"
    );
    assert!(answers.contains_key(&hello), "{answers:?}");
    let active = server.route("app03").await.active;
    assert_eq!(
        (active.version.as_str(), active.wasi.as_str()),
        (p3.as_str(), "0.3"),
        "{active:?}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_bodies_pinned_to_a_healthy_03_candidate_do_not_roll_it_back() {
    // The 0.3 guest's `/echo` reads the whole body before it answers.
    crate::rollouts::stalled_bodies_do_not_count_against(
        guests::P3_HELLO,
        "/app/echo",
        "/app/count",
        408,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_bodies_read_after_a_03_head_do_not_roll_the_candidate_back() {
    // The 0.3 guest's `/relay` answers 200 at once, then copies the body as it comes: the
    // client's unfinished body ends the response body at the deadline.
    crate::rollouts::stalled_bodies_do_not_count_against(
        guests::P3_HELLO,
        "/app/relay",
        "/app/count",
        200,
    )
    .await;
}

async fn start_shadow(server: &TestServer, route: &str, version: &str) {
    let (status, body) = server
        .admin_json(
            Method::PUT,
            &format!("/v1/routes/{route}/shadow"),
            json!({"version": version, "percent": 100}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_03_version_runs_as_a_shadow_without_side_effects() {
    let server = TestServer::start().await;
    // A 0.3 shadow of a 0.2 version: compared, never seen by the client.
    server.deploy("app", guests::TAGGED_V1).await;
    let p3 = server.upload(guests::P3_HELLO).await;
    start_shadow(&server, "app", &p3).await;
    let mut conn = Connection::open(server.data).await;
    for _ in 0..20 {
        assert_eq!(conn.get_text("/app/x").await, (StatusCode::OK, "v1".into()));
    }
    let figures = shadow_after(&server, "app", 20).await;
    assert_eq!(figures.counts.mismatches, 20, "{figures:?}");
    assert_eq!(figures.samples[0].shadow_start, HELLO, "{figures:?}");

    // A 0.3 version shadowing itself on shared instances: deterministic answers match; its
    // copies' key-value writes go nowhere and their outbound calls are denied.
    deploy(&server, "kv", SHARED, guests::P3_KV).await;
    let kv = server.route("kv").await.active.version;
    start_shadow(&server, "kv", &kv).await;
    let mut conn = Connection::open(server.data).await;
    for n in 1..=10 {
        assert_eq!(
            conn.get_text("/kv/incr?key=s").await,
            (StatusCode::OK, n.to_string()),
            "the copies' increments are not the route's"
        );
    }
    shadow_after(&server, "kv", 10).await;
    assert_eq!(server.get("/kv/get?key=s").await.1, "10");

    let (up, calls) = upstream().await;
    deploy(
        &server,
        "out",
        &format!("allow-outbound=http://{up}&{SHARED}"),
        guests::P3_HELLO,
    )
    .await;
    let out = server.route("out").await.active.version;
    start_shadow(&server, "out", &out).await;
    for _ in 0..5 {
        assert_eq!(
            conn.get_text(&format!("/out/fetch?url=http://{up}/x"))
                .await,
            (StatusCode::OK, "200 hello from upstream".into())
        );
    }
    for _ in 0..10 {
        assert_eq!(
            conn.get_text("/out/same").await,
            (StatusCode::OK, HELLO.into())
        );
    }
    let figures = shadow_after(&server, "out", 15).await;
    assert_eq!(figures.counts.matches, 10, "{figures:?}");
    assert_eq!(
        calls.load(Ordering::Relaxed),
        5,
        "only the clients' requests went out: {figures:?}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_03_version_deployed_through_one_node_is_served_by_every_node() {
    let nats = NatsServer::start();
    let url = nats.url();
    let nodes = start_nodes(&[("a", &url), ("b", &url), ("c", &url)]).await;
    let (status, body) = nodes[0]
        .deploy_bytes("api", "", guests::bytes(guests::TAGGED_V1))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = nodes[1]
        .deploy_bytes(
            "api",
            &format!("?{SHARED}&config=TAG=everywhere"),
            guests::bytes(guests::P3_HELLO),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answered: Deployed = typed(&body);
    assert!(answered.cluster.is_some_and(|c| c.converged), "{body}");
    for node in &nodes {
        assert_eq!(
            node.get("/api").await,
            (StatusCode::OK, format!("{HELLO} everywhere")),
            "right after the PUT returned"
        );
        let status = node.route("api").await;
        assert_eq!(status.active.wasi, "0.3", "{status:?}");
        assert_eq!(status.limits.instance_concurrency, 8, "{status:?}");
    }
    // Back to 0.2 through a third node.
    let (status, body) = nodes[2]
        .admin(Method::POST, "/v1/routes/api/rollback")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for node in &nodes {
        assert_eq!(node.get("/api").await, (StatusCode::OK, "v1".into()));
    }
    for node in nodes {
        node.shutdown().await;
    }
}
