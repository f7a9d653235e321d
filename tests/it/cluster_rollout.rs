//! Rollouts in a cluster: one node (the live node with the smallest name) drives each
//! rollout (the next one takes over when it leaves), and its gates count the requests every
//! node served.

use std::time::{Duration, Instant};

use handoff::api::{Problem, RolloutStatus};
use handoff_tests::nats::{NatsServer, start_nodes, until_live};
use handoff_tests::{Connection, TestServer, eventually, guests, typed};
use http::StatusCode;
use serde_json::json;

/// Waves of node names, as a rollout's status shows them.
fn waves(names: &[&[&str]]) -> Vec<Vec<String>> {
    names
        .iter()
        .map(|wave| wave.iter().map(|n| n.to_string()).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_candidate_is_rolled_back_everywhere_on_requests_another_node_served() {
    let nats = NatsServer::start();
    let url = nats.url();
    let a = TestServer::start_node(&url, "a", None).await;
    let b = TestServer::start_node(&url, "b", None).await;
    until_live(&b, 2).await;
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
        (a.route("app")
            .await
            .rollout
            .is_some_and(|r| r.state == "running"))
        .then_some(())
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
        let rollout = a.rollout("app").await;
        if rollout.state != "running" {
            break rollout;
        }
    };
    assert_eq!(state.state, "rolled_back", "{state:?}");
    let reason = state.reason.as_deref().unwrap_or_default();
    assert!(reason.contains("error rate"), "{reason}");
    eventually(
        "b applies the rollback",
        Duration::from_secs(10),
        || async {
            (b.route("app")
                .await
                .rollout
                .is_some_and(|r| r.state == "rolled_back"))
            .then_some(())
        },
    )
    .await;
    for node in [&a, &b] {
        let (status, _) = node.get("/app/error").await;
        assert_eq!(status, StatusCode::OK, "only the stable version serves");
    }
    // One rollback, recorded by the rollout's driver.
    let history = b.history("app").await;
    let rollbacks = history
        .versions
        .iter()
        .filter(|v| v.action == "rollback")
        .count();
    assert_eq!(rollbacks, 1, "{history:?}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_candidate_in_waves_of_one_node_is_stopped_after_the_first_wave() {
    let nats = NatsServer::start();
    let url = nats.url();
    let nodes = start_nodes(&[("a", &url), ("b", &url), ("c", &url)]).await;
    nodes[0].deploy("app", guests::TAGGED_V1).await;
    let candidate = nodes[1].upload(guests::FAILING).await;

    // What is refused: steps with waves, a node that does not exist.
    for (options, says) in [
        (json!({"waves": 1, "steps": [50, 100]}), "not both"),
        (json!({"waves": ["a", "zz"]}), "no live node is named `zz`"),
    ] {
        let mut body = json!({"version": candidate});
        body.as_object_mut()
            .unwrap()
            .extend(options.as_object().unwrap().clone());
        let (status, answer) = nodes[1].post_json("/v1/routes/app/rollout", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        let problem: Problem = typed(&answer);
        assert!(problem.detail.contains(says), "{answer}");
    }

    let (status, body) = nodes[1]
        .post_json(
            "/v1/routes/app/rollout",
            json!({"version": candidate, "waves": 1, "step_time": "1m", "min_requests": 20}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let started: RolloutStatus = typed(&body);
    assert_eq!(
        started.waves,
        Some(waves(&[&["a"], &["b"], &["c"]])),
        "{body}"
    );
    assert_eq!(started.steps, [100.0, 100.0, 100.0], "{body}");
    for node in &nodes {
        eventually(
            "the rollout is applied",
            Duration::from_secs(10),
            || async {
                (node
                    .route("app")
                    .await
                    .rollout
                    .is_some_and(|r| r.state == "running"))
                .then_some(())
            },
        )
        .await;
    }

    // The first wave is a alone: a serves the candidate (500 on /app/error), b and c only the
    // stable version, until a's gate takes the candidate out.
    let mut conns = Vec::new();
    for node in &nodes {
        conns.push(Connection::open(node.data).await);
    }
    let started = Instant::now();
    let mut candidate_answers = 0;
    let state = loop {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no decision after {candidate_answers} candidate answers"
        );
        for (i, conn) in conns.iter_mut().enumerate() {
            let (status, body) = conn.get("/app/error").await.expect("a request");
            if i == 0 {
                candidate_answers += usize::from(status == StatusCode::INTERNAL_SERVER_ERROR);
            } else {
                assert_eq!(
                    (status, &body[..]),
                    (StatusCode::OK, &b"v1"[..]),
                    "node {} is not in the first wave",
                    ["a", "b", "c"][i]
                );
            }
        }
        let rollout = nodes[0].rollout("app").await;
        if rollout.state != "running" {
            break rollout;
        }
    };
    assert!(candidate_answers >= 20, "a served the candidate");
    assert_eq!(state.state, "rolled_back", "{state:?}");
    assert_eq!(state.step, 0, "stopped in the first wave: {state:?}");
    for node in &nodes {
        eventually(
            "the rollback is applied",
            Duration::from_secs(10),
            || async { (node.get("/app/error").await.0 == StatusCode::OK).then_some(()) },
        )
        .await;
    }
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_candidate_reaches_the_nodes_wave_by_wave_in_the_order_named() {
    let nats = NatsServer::start();
    let url = nats.url();
    let nodes = start_nodes(&[("a", &url), ("b", &url), ("c", &url)]).await;
    nodes[0].deploy("app", guests::TAGGED_V1).await;
    let candidate = nodes[0].upload(guests::TAGGED_V2).await;
    let (status, body) = nodes[0]
        .post_json(
            "/v1/routes/app/rollout",
            json!({"version": candidate, "waves": ["c", "a"], "step_time": "300ms",
                   "step_requests": 10, "min_requests": 10}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let started: RolloutStatus = typed(&body);
    assert_eq!(
        started.waves,
        Some(waves(&[&["c"], &["a"], &["b"]])),
        "{body}"
    );

    // Each node's first v2 answer, by round.
    let mut conns = Vec::new();
    for node in &nodes {
        conns.push(Connection::open(node.data).await);
    }
    let mut first_v2: [Option<usize>; 3] = [None; 3];
    let started = Instant::now();
    for round in 0.. {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not promoted: first v2 answers by round {first_v2:?}"
        );
        for (i, conn) in conns.iter_mut().enumerate() {
            let (status, body) = conn.get("/app").await.expect("a request");
            assert_eq!(status, StatusCode::OK);
            if body == "v2" && first_v2[i].is_none() {
                first_v2[i] = Some(round);
            }
        }
        if first_v2.iter().all(Option::is_some) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let [a, b, c] = first_v2.map(Option::unwrap);
    assert!(
        c < a && a < b,
        "waves c, a, b; first v2 rounds a {a}, b {b}, c {c}"
    );
    // The last wave steps to promotion on its own requests: keep them coming until it does.
    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes[1]
        .route("app")
        .await
        .rollout
        .is_none_or(|r| r.state != "promoted")
    {
        assert!(Instant::now() < deadline, "not promoted within 30 s");
        for conn in &mut conns {
            let (status, _) = conn.get("/app").await.expect("a request");
            assert_eq!(status, StatusCode::OK);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_node_drives_a_rollout_and_the_next_takes_over_when_it_leaves() {
    use handoff::api::EventKind;
    let nats = NatsServer::start();
    let url = nats.url();
    let mut nodes = start_nodes(&[("a", &url), ("b", &url), ("c", &url)]).await;
    nodes[0].deploy("app", guests::TAGGED_V1).await;
    // Every node publishes the same events, read off the same records: c's stream tells which
    // node's controller made each change.
    let mut events = handoff::client::AdminClient::new(&format!("http://{}", nodes[2].admin))
        .unwrap()
        .events(Some("app"), None)
        .await
        .expect("c's event stream opens");
    // Started through c; a (the smallest name) drives it. A step needs 10 candidate requests
    // and 1 s, so without traffic nothing steps.
    let candidate = nodes[2].upload(guests::TAGGED_V2).await;
    let (status, body) = nodes[2]
        .post_json(
            "/v1/routes/app/rollout",
            json!({"version": candidate, "steps": [20, 50, 100], "step_time": "1s",
                   "step_requests": 10, "min_requests": 10}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // Traffic through every node until the first step.
    let mut conns = Vec::new();
    for node in &nodes {
        conns.push(Connection::open(node.data).await);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        assert!(Instant::now() < deadline, "no step within 60 s");
        for conn in &mut conns {
            let (status, _) = conn.get("/app").await.expect("a request");
            assert_eq!(status, StatusCode::OK);
        }
        let rollout = nodes[2].rollout("app").await;
        if rollout.step != 0 {
            break rollout;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(first.step, 1, "{first:?}");
    assert_eq!(first.driver.as_deref(), Some("a"), "{first:?}");

    // The driver leaves (SIGTERM: it drains and deregisters); b, now the smallest live name,
    // takes over and finishes the rollout on b's and c's requests.
    let a = nodes.remove(0);
    conns.remove(0);
    a.shutdown().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        assert!(
            Instant::now() < deadline,
            "not promoted within 60 s of a leaving"
        );
        for conn in &mut conns {
            let (status, _) = conn.get("/app").await.expect("a request");
            assert_eq!(status, StatusCode::OK);
        }
        let rollout = nodes[1].rollout("app").await;
        if rollout.state != "running" {
            break rollout;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(done.state, "promoted", "{done:?}");
    assert_eq!(done.driver.as_deref(), Some("b"), "{done:?}");

    // Every change the controllers made, in order: the first step by a, the rest by b; never
    // two nodes for one change, never c.
    let mut made = Vec::new();
    let read = async {
        while let Some(event) = events.next().await.expect("the stream reads") {
            if matches!(
                event.kind,
                EventKind::RolloutStep | EventKind::RolloutPromoted
            ) {
                assert_eq!(event.by.as_deref(), Some("rollout"), "{event:?}");
            }
            match event.kind {
                EventKind::RolloutStep => made.push((event.step, event.node.clone())),
                EventKind::RolloutPromoted => {
                    made.push((None, event.node.clone()));
                    return;
                }
                EventKind::RolloutRolledBack => panic!("rolled back: {event:?}"),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("c publishes the promotion");
    let a_name = Some("a".to_owned());
    let b_name = Some("b".to_owned());
    assert_eq!(made.first(), Some(&(Some(1), a_name)), "{made:?}");
    assert_eq!(made.last(), Some(&(None, b_name.clone())), "{made:?}");
    assert_eq!(
        made.len(),
        3,
        "steps 1 and 2 and the promotion, once each: {made:?}"
    );
    assert_eq!(made[1], (Some(2), b_name), "{made:?}");
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_in_one_process_count_their_rollouts_apart() {
    // Two clusters, each on its own NATS server, of two nodes each, all in this process; the
    // same route and the same failing candidate on both. Only cluster y's second node serves
    // requests: y's driver rolls back, x's (which saw no request) keeps its rollout running.
    let (nats_x, nats_y) = (NatsServer::start(), NatsServer::start());
    let (url_x, url_y) = (nats_x.url(), nats_y.url());
    let a = TestServer::start_node(&url_x, "a", None).await;
    let b = TestServer::start_node(&url_x, "b", None).await;
    let c = TestServer::start_node(&url_y, "c", None).await;
    let d = TestServer::start_node(&url_y, "d", None).await;
    until_live(&b, 2).await;
    until_live(&d, 2).await;
    for (driver, other) in [(&a, &b), (&c, &d)] {
        driver.deploy("app", guests::TAGGED_V1).await;
        let candidate = other.upload(guests::FAILING).await;
        let (status, body) = other
            .post_json(
                "/v1/routes/app/rollout",
                json!({"version": candidate, "steps": [50, 100], "step_time": "1m", "min_requests": 20}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        eventually(
            "the driver applies the rollout",
            Duration::from_secs(10),
            || async {
                (driver
                    .route("app")
                    .await
                    .rollout
                    .is_some_and(|r| r.state == "running"))
                .then_some(())
            },
        )
        .await;
    }
    // Each node of x has published its figures (none) and a has looked at b's: the tallies of
    // both drivers have started.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut conn = Connection::open(d.data).await;
    let started = Instant::now();
    let mut sent = 0;
    let state = loop {
        assert!(
            started.elapsed() < Duration::from_secs(30) && sent < 20_000,
            "no decision after {sent} requests on d"
        );
        conn.get("/app/error").await.expect("a request to d");
        sent += 1;
        let rollout = c.rollout("app").await;
        if rollout.state != "running" {
            break rollout;
        }
    };
    assert_eq!(state.state, "rolled_back", "{state:?}");
    // x's driver judges every half second or so: give it several looks at the figures it
    // would have shared with y's driver.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let x = a.rollout("app").await;
    assert_eq!(
        x.state, "running",
        "x saw none of y's requests, so its gates have nothing to judge: {x:?}"
    );
    for node in [a, b, c, d] {
        node.shutdown().await;
    }
}
