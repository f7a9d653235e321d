//! Cluster mode with the real binary: three `handoff serve --cluster` processes on a real
//! nats-server (`handoff_tests::nats`), `handoff nodes`, a node killed with SIGKILL named in
//! the partial deploy that could not wait for it, and its restart caught up before its ready
//! line; a node stopped (SIGSTOP) until its record lapses, whose requests from before do not
//! count again in the rollout step it returns to.

use std::time::{Duration, Instant};

use handoff::api::NodeList;
use handoff_tests::guests;
use handoff_tests::nats::NatsServer;
use serde_json::Value;

use crate::support::{Ready, Running, get, handoff, serve};

/// `method path` on `ready`'s admin API with an optional JSON body: status and JSON answer.
async fn admin(
    ready: &Ready,
    method: http::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", ready.admin.to_string());
    let bytes = match body {
        Some(body) => {
            request = request.header("content-type", "application/json");
            serde_json::to_vec(&body).unwrap()
        }
        None => Vec::new(),
    };
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::from(bytes)))
        .unwrap();
    let (status, body) = handoff_tests::send(ready.admin, request).await;
    (
        status.as_u16(),
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

/// `count` GETs of `path` on `ready`'s data plane pinned to `version` (`x-pin`), on one
/// connection; each must answer `status`.
async fn pinned(ready: &Ready, path: &str, version: &str, count: usize, status: u16) {
    let mut conn = handoff_tests::Connection::open(ready.data).await;
    for _ in 0..count {
        let request = http::Request::builder()
            .uri(path)
            .header("host", "handoff.test")
            .header("x-pin", version)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let response = conn.send(request).await.expect("an answer");
        assert_eq!(response.status().as_u16(), status, "{path}");
        let _ = http_body_util::BodyExt::collect(response.into_body()).await;
    }
}

/// `handoff serve --cluster URL --node-name NAME`, waiting 2 s for the other nodes.
async fn node(url: &str, name: &str) -> (Running, Ready) {
    serve(&[
        "--cluster",
        url,
        "--node-name",
        name,
        "--cluster-timeout",
        "2s",
    ])
    .await
}

/// `handoff nodes --json` through `admin`.
async fn nodes(admin: &str) -> NodeList {
    let listed = handoff(&["nodes", "--admin", admin, "--json"]).await;
    serde_json::from_str(listed.ok()).expect("a node list from handoff nodes --json")
}

/// The names of the nodes `admin` lists as alive and ready.
async fn live(admin: &str) -> Vec<String> {
    nodes(admin)
        .await
        .nodes
        .into_iter()
        .filter(|n| n.alive && n.ready)
        .map(|n| n.node)
        .collect()
}

/// Polls (every 100 ms, up to `limit`) until `admin` lists exactly `names` as live.
async fn wait_live(admin: &str, names: &[&str], limit: Duration) {
    let started = Instant::now();
    loop {
        let now = live(admin).await;
        if now == names {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{admin} lists {now:?}, not {names:?}, after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_named_in_a_partial_deploy_and_catches_up_before_it_is_ready_again() {
    let nats = NatsServer::start();
    let url = nats.url();
    let (_a, a) = node(&url, "a").await;
    let (_b, b) = node(&url, "b").await;
    let (c_process, c) = node(&url, "c").await;
    let admin = a.admin_url();
    wait_live(&admin, &["a", "b", "c"], Duration::from_secs(10)).await;

    let text = handoff(&["nodes", "--admin", &admin]).await;
    let text = text.ok();
    assert!(text.starts_with("NODE "), "{text}");
    assert!(text.contains("a *"), "this node is marked: {text}");

    let deployed = handoff(&["deploy", "api", guests::TAGGED_V1, "--admin", &admin]).await;
    assert!(
        deployed.ok().contains("activated on a, b, c"),
        "{deployed:#?}"
    );
    for node in [&a, &b, &c] {
        assert_eq!(get(node, "/api").await, (200, "v1".to_owned()));
    }

    // c dies without a word: its record lives on for its TTL, so the next deploy waits for
    // it, names it, and is partial (exit 1), while a and b serve the new version.
    c_process.kill9().await;
    let partial = handoff(&["deploy", "api", guests::TAGGED_V2, "--admin", &admin]).await;
    partial.fails(1, "not activated on c (timeout)");
    assert!(partial.stdout.contains("activated on a, b"), "{partial:#?}");
    assert_eq!(get(&a, "/api").await, (200, "v2".to_owned()));
    assert_eq!(get(&b, "/api").await, (200, "v2".to_owned()));

    // Once its record expires it is no longer waited for: a change converges on a and b.
    wait_live(&admin, &["a", "b"], Duration::from_secs(15)).await;
    let rolled = handoff(&["rollback", "api", "--admin", &b.admin_url()]).await;
    // This node (b) first.
    assert!(rolled.ok().contains("activated on b, a\n"), "{rolled:#?}");

    // c comes back (an empty data directory): by its ready line it serves the current
    // revision, fetched from the Object Store and compiled.
    let (c_process, c) = node(&url, "c").await;
    assert_eq!(get(&c, "/api").await, (200, "v1".to_owned()));
    wait_live(&admin, &["a", "b", "c"], Duration::from_secs(10)).await;
    let listed = nodes(&admin).await;
    for node in &listed.nodes {
        assert!(node.routes[0].converged, "{listed:?}");
    }

    // SIGTERM: c drains and deregisters.
    let status = c_process.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}");
    wait_live(&admin, &["a", "b"], Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_nodes_on_a_node_without_a_cluster_says_so() {
    let (_server, ready) = serve(&[]).await;
    let listed = handoff(&["nodes", "--admin", &ready.admin_url()]).await;
    listed.fails(1, "started without --cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_record_lapses_and_returns_adds_none_of_its_past_to_the_rollouts_step() {
    let nats = NatsServer::start();
    let url = nats.url();
    let pinning = |name: &'static str| {
        let url = url.clone();
        async move {
            serve(&[
                "--cluster",
                &url,
                "--node-name",
                name,
                "--cluster-timeout",
                "2s",
                "--pin-header",
                "x-pin",
            ])
            .await
        }
    };
    let (_a_process, a) = pinning("a").await;
    let (b_process, b) = pinning("b").await;
    let admin_url = a.admin_url();
    wait_live(&admin_url, &["a", "b"], Duration::from_secs(10)).await;
    handoff(&["deploy", "app", guests::TAGGED_V1, "--admin", &admin_url])
        .await
        .ok();
    // The candidate: `/app/ok` answers 200, `/app/trap` fails. a (the smallest name) drives.
    let upload = http::Request::builder()
        .method(http::Method::POST)
        .uri("/v1/modules")
        .header("host", a.admin.to_string())
        .header("content-type", "application/wasm")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            guests::bytes(guests::HOSTILE),
        )))
        .unwrap();
    let (status, body) = handoff_tests::send(a.admin, upload).await;
    assert!(status.is_success(), "{status}");
    let candidate = serde_json::from_slice::<Value>(&body).unwrap()["version"]
        .as_str()
        .unwrap()
        .to_owned();
    let rollout = serde_json::json!({"version": candidate, "steps": [10, 50, 100],
        "step_time": "1s", "step_requests": 10, "min_requests": 10, "max_error_rate": 0.2});
    let (status, body) = admin(
        &a,
        http::Method::POST,
        "/v1/routes/app/rollout",
        Some(rollout),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = admin(&a, http::Method::POST, "/v1/routes/app/rollout/pause", None).await;
    assert_eq!(status, 200, "{body}");

    // The step's figures as a shows them: its own requests to the candidate since the step's
    // window opened (`None` before the controller's first look).
    let window = async |ready: &Ready| {
        let (_, status) = admin(ready, http::Method::GET, "/v1/routes/app", None).await;
        status["rollout"]["versions"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["role"] == "candidate"))
            .and_then(|v| v["requests"].as_u64())
    };
    // b serves the candidate too (it applies the rollout a recorded): pinned requests reach it.
    let started = Instant::now();
    loop {
        let (_, status) = admin(&b, http::Method::GET, "/v1/routes/app", None).await;
        let serves = status["versions"].as_array().is_some_and(|versions| {
            versions
                .iter()
                .any(|v| v["role"] == "candidate" && v["version"] == candidate.as_str())
        });
        if serves {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "b never served the candidate: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    while window(&a).await.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no step window"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Paused (the gates still judge): 200 good requests to the candidate on a, then 30 failing
    // and 10 good ones on b. Together 30 of 240 failed (0.125), under max_error_rate 0.2.
    pinned(&a, "/app/ok", &candidate, 200, 200).await;
    pinned(&b, "/app/trap", &candidate, 30, 500).await;
    pinned(&b, "/app/ok", &candidate, 10, 200).await;
    let (_, status) = admin(&a, http::Method::GET, "/v1/routes/app", None).await;
    assert_eq!(status["rollout"]["state"], "paused", "{status}");
    assert_eq!(window(&a).await, Some(200), "{status}");

    // b stops (a stall, a partition) until its record lapses; the rollout resumes meanwhile,
    // so its step starts counting while b is away.
    b_process.signal("STOP");
    wait_live(&admin_url, &["a"], Duration::from_secs(15)).await;
    let (status, body) = admin(
        &a,
        http::Method::POST,
        "/v1/routes/app/rollout/resume",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The resumed controller opens a fresh window at its first look, with b away.
    let started = Instant::now();
    while window(&a).await != Some(0) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no fresh step window"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // b comes back, the same process with the same cumulative figures: what it served before
    // (30 of its 40 failed) is not this step's. Counted into it, the step would be 30 of 40
    // failed and roll the candidate back at a's next look.
    b_process.signal("CONT");
    wait_live(&admin_url, &["a", "b"], Duration::from_secs(15)).await;
    let started = Instant::now();
    let decided = loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the rollout was not decided within 60 s"
        );
        pinned(&a, "/app/ok", &candidate, 5, 200).await;
        let (_, status) = admin(&a, http::Method::GET, "/v1/routes/app", None).await;
        if status["rollout"]["state"] != "running" {
            break status["rollout"].clone();
        }
    };
    assert_eq!(decided["state"], "promoted", "{decided}");
    b_process.terminate(Duration::from_secs(30)).await;
}
