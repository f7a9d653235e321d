//! Rollouts in a cluster: one node (the live node with the smallest name) drives each
//! rollout, and its gates count the requests every node served.

use std::time::{Duration, Instant};

use handoff_tests::nats::NatsServer;
use handoff_tests::{Connection, TestServer, eventually, guests};
use http::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_candidate_is_rolled_back_everywhere_on_requests_another_node_served() {
    let nats = NatsServer::start();
    let url = nats.url();
    let a = TestServer::start_node(&url, "a", None).await;
    let b = TestServer::start_node(&url, "b", None).await;
    eventually(
        "a and b see each other",
        Duration::from_secs(10),
        || async {
            let (_, list) = b.admin(Method::GET, "/v1/nodes").await;
            let live = list["nodes"]
                .as_array()?
                .iter()
                .filter(|n| n["alive"] == true && n["ready"] == true)
                .count();
            (live == 2).then_some(())
        },
    )
    .await;
    a.deploy("app", guests::TAGGED_V1).await;
    // `/app/error`: the stable version answers 200, the candidate 500. Started through b;
    // a (the smallest name) drives it; only b serves requests.
    let candidate = b.upload(guests::FAILING).await;
    let (status, body) = b
        .post_json(
            "/v1/routes/app/rollout",
            json!({"version": candidate, "steps": [50, 100], "step_time": "1m", "min_requests": 20}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    eventually("a applies the rollout", Duration::from_secs(10), || async {
        (a.status("app").await["rollout"]["state"] == "running").then_some(())
    })
    .await;

    let mut conn = Connection::open(b.data).await;
    let started = Instant::now();
    let mut sent = 0;
    let state = loop {
        assert!(
            started.elapsed() < Duration::from_secs(30) && sent < 20_000,
            "no decision after {sent} requests on b"
        );
        conn.get("/app/error").await.expect("a request to b");
        sent += 1;
        let rollout = a.status("app").await["rollout"].clone();
        if rollout["state"] != "running" {
            break rollout;
        }
    };
    assert_eq!(state["state"], "rolled_back", "{state}");
    let reason = state["reason"].as_str().unwrap();
    assert!(reason.contains("error rate"), "{reason}");
    eventually(
        "b applies the rollback",
        Duration::from_secs(10),
        || async { (b.status("app").await["rollout"]["state"] == "rolled_back").then_some(()) },
    )
    .await;
    for node in [&a, &b] {
        let (status, _) = node.get("/app/error").await;
        assert_eq!(status, StatusCode::OK, "only the stable version serves");
    }
    // One rollback, recorded by the rollout's driver.
    let (_, history) = b.admin(Method::GET, "/v1/routes/app/versions").await;
    let rollbacks = history["versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["action"] == "rollback")
        .count();
    assert_eq!(rollbacks, 1, "{history}");
    a.shutdown().await;
    b.shutdown().await;
}
