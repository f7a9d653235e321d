//! Cluster mode: three in-process nodes (each its own runtime, data directory and node name)
//! on a real nats-server started here (`handoff_tests::nats`), or on three clustered ones.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use handoff::api::{Convergence, Health, NodeList, NodeStatus, Problem, RouteOnNode};
use handoff::server::Server;
use handoff_tests::nats::{NatsServer, start_nodes};
use handoff_tests::{Connection, TestServer, eventually, guests, node_config, typed};
use http::{Method, StatusCode};
use serde_json::Value;

const NAMES: [&str; 3] = ["a", "b", "c"];

/// How long a node may take to converge after a NATS server of the cluster is lost (an upper
/// bound against hangs, not a measure).
const ELECTION: Duration = Duration::from_secs(90);

/// The body of `GET path` on `node`'s data plane.
async fn answer(node: &TestServer, path: &str) -> String {
    let (status, body) = node.get(path).await;
    format!("{} {body}", status.as_u16())
}

/// How the nodes answered the change whose answer (`Deployed` or `Deleted`) is `body`.
fn cluster(body: &Value) -> Convergence {
    typed(&body["cluster"])
}

/// Each node's answer to the change whose answer is `body`: (node, state).
fn states(body: &Value) -> Vec<(String, String)> {
    cluster(body)
        .nodes
        .into_iter()
        .map(|n| (n.node, n.state))
        .collect()
}

/// What each node serves on `route`, as `node`'s status of it says.
async fn on_nodes(node: &TestServer, route: &str) -> Vec<RouteOnNode> {
    let status = node.route(route).await;
    match status.nodes {
        Some(nodes) => nodes,
        None => panic!("no nodes in route {route}'s status (not a cluster?)"),
    }
}

/// Node `name` as `list` shows it.
fn listed<'a>(list: &'a NodeList, name: &str) -> &'a NodeStatus {
    list.nodes
        .iter()
        .find(|n| n.node == name)
        .unwrap_or_else(|| panic!("{name} listed in {list:?}"))
}

async fn shutdown(nodes: Vec<TestServer>) {
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_node_is_served_by_every_node_when_it_returns() {
    let nats = NatsServer::start();
    let url = nats.url();
    let nodes = start_nodes(&[("a", &url), ("b", &url), ("c", &url)]).await;
    let v1 = guests::bytes(guests::TAGGED_V1);
    let v2 = guests::bytes(guests::TAGGED_V2);

    let (status, body) = nodes[0].deploy_bytes("api", "", v1).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(cluster(&body).converged, "{body}");
    let answered = states(&body);
    assert_eq!(answered.len(), 3, "{body}");
    assert!(answered.iter().all(|(_, s)| s == "activated"), "{body}");
    for node in &nodes {
        assert_eq!(answer(node, "/api").await, "200 v1");
    }

    let (status, body) = nodes[1].deploy_bytes("api", "", v2).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for node in &nodes {
        assert_eq!(
            answer(node, "/api").await,
            "200 v2",
            "right after the PUT returned"
        );
    }

    let (status, body) = nodes[2]
        .admin(Method::POST, "/v1/routes/api/rollback")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(cluster(&body).converged, "{body}");
    for node in &nodes {
        assert_eq!(answer(node, "/api").await, "200 v1", "after the rollback");
    }

    // Every node lists every node, and what each serves.
    let list: NodeList = nodes[0].read("/v1/nodes").await;
    assert_eq!(list.this, "a");
    let names: Vec<&str> = list.nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(names, NAMES);
    for node in &list.nodes {
        let route = &node.routes[0];
        assert_eq!(
            (route.route.as_str(), route.converged),
            ("api", true),
            "{node:?}"
        );
    }
    let per_node = on_nodes(&nodes[1], "api").await;
    assert_eq!(per_node.len(), 3);
    assert!(per_node.iter().all(|n| n.converged), "{per_node:?}");
    let health: Health = nodes[2].read("/healthz").await;
    assert_eq!(health.status, "ok");
    let of_cluster = health.cluster.expect("a node's health names its cluster");
    assert_eq!(
        (of_cluster.node.as_str(), of_cluster.connected),
        ("c", true)
    );

    // The query key is checked, and `local` does not ask the others.
    let (status, body) = nodes[0]
        .admin(Method::DELETE, "/v1/routes/api?wait=sometimes")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = nodes[0]
        .deploy_bytes("other", "?wait=local", guests::bytes(guests::TAGGED_V2))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(cluster(&body).wait, "local");

    let (status, body) = nodes[0].admin(Method::DELETE, "/v1/routes/api").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(cluster(&body).converged, "{body}");
    for node in &nodes {
        assert_eq!(answer(node, "/api").await.split(' ').next(), Some("404"));
    }

    // A second node may not take a live node's name.
    let error = Server::start(node_config(&url, "a", None))
        .await
        .err()
        .expect("a second node named `a` is refused");
    assert!(format!("{error:#}").contains("in use"), "{error:#}");
    shutdown(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_on_any_node_while_deploys_alternate_through_different_nodes() {
    const CLIENTS_PER_NODE: usize = 6;
    const DEPLOYS: usize = 24;
    const LIMIT: Duration = Duration::from_secs(180);
    let nats = NatsServer::start();
    let url = nats.url();
    let nodes = start_nodes(&[("a", &url), ("b", &url), ("c", &url)]).await;
    let versions = [
        (guests::bytes(guests::TAGGED_V1), "v1"),
        (guests::bytes(guests::TAGGED_V2), "v2"),
    ];
    nodes[0]
        .deploy_bytes("swap", "", versions[0].0.clone())
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut clients = Vec::new();
    for node in &nodes {
        for _ in 0..CLIENTS_PER_NODE {
            let (stop, addr) = (stop.clone(), node.data);
            clients.push(tokio::spawn(async move {
                let mut conn = Connection::open(addr).await;
                let (mut served, mut errors) = (0usize, Vec::new());
                while !stop.load(Ordering::Relaxed) && started.elapsed() < LIMIT {
                    match conn.get("/swap").await {
                        Ok((StatusCode::OK, body)) if body == "v1" || body == "v2" => served += 1,
                        Ok((status, body)) => errors.push(format!("{status}: {body:?}")),
                        Err(error) => {
                            errors.push(format!("connection error: {error}"));
                            conn = Connection::open(addr).await;
                        }
                    }
                }
                (served, errors)
            }));
        }
    }
    for round in 1..=DEPLOYS {
        assert!(started.elapsed() < LIMIT, "deploys are too slow");
        let (bytes, tag) = &versions[round % 2];
        let through = &nodes[round % 3];
        let (status, body) = through.deploy_bytes("swap", "", bytes.clone()).await;
        assert_eq!(status, StatusCode::OK, "deploy {round}: {body}");
        assert!(cluster(&body).converged, "deploy {round}: {body}");
        for node in &nodes {
            assert_eq!(
                answer(node, "/swap").await,
                format!("200 {tag}"),
                "deploy {round} returned: every node serves it"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (mut served, mut errors) = (0, Vec::new());
    for client in clients {
        let (s, e) = client.await.expect("client task");
        served += s;
        errors.extend(e);
    }
    assert!(
        errors.is_empty(),
        "{} failed requests, first: {:?}",
        errors.len(),
        errors.first()
    );
    assert!(
        served > 3 * CLIENTS_PER_NODE * 10,
        "too few requests: {served}"
    );
    eprintln!(
        "cluster swap under load: {served} requests on 3 nodes, {DEPLOYS} deploys in {:?}, 0 errors",
        started.elapsed()
    );
    shutdown(nodes).await;
}

async fn connected(node: &TestServer, up: bool) {
    eventually(
        "the node's view of the cluster",
        Duration::from_secs(30),
        || async {
            let health: Health = node.read("/healthz").await;
            (health.cluster?.connected == up).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nats_every_node_serves_and_refuses_changes_then_all_converge() {
    let mut nats = NatsServer::start();
    let url = nats.url();
    let nodes = start_nodes(&[("a", &url), ("b", &url), ("c", &url)]).await;
    nodes[0].deploy("api", guests::TAGGED_V1).await;

    nats.stop();
    for node in &nodes {
        connected(node, false).await;
        let health: Health = node.read("/healthz").await;
        assert_eq!(health.status, "degraded", "{health:?}");
    }
    for round in 0..3 {
        for node in &nodes {
            assert_eq!(answer(node, "/api").await, "200 v1", "round {round}");
        }
    }
    let (status, body) = nodes[1]
        .deploy_bytes("api", "", guests::bytes(guests::TAGGED_V2))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let problem: Problem = typed(&body);
    assert!(
        problem.detail.contains("cannot reach the cluster"),
        "{problem:?}"
    );
    let (status, _) = nodes[2].admin(Method::DELETE, "/v1/routes/api").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer(&nodes[2], "/api").await, "200 v1", "nothing changed");

    nats.restart();
    for node in &nodes {
        connected(node, true).await;
    }
    let (status, body) = nodes[2]
        .deploy_bytes("api", "", guests::bytes(guests::TAGGED_V2))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(cluster(&body).converged, "{body}");
    for node in &nodes {
        assert_eq!(answer(node, "/api").await, "200 v2");
    }
    shutdown(nodes).await;
}

/// The route's revision as `node` reports it.
async fn revision(node: &TestServer, route: &str) -> u64 {
    let nodes = on_nodes(node, route).await;
    let me = nodes
        .iter()
        .find(|n| n.converged)
        .unwrap_or_else(|| panic!("no node serves the current revision: {nodes:?}"));
    me.revision.expect("the revision it serves")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_three_nats_servers_losing_one_loses_no_acknowledged_deploy() {
    let mut servers = NatsServer::start_cluster();
    let urls: Vec<String> = servers.iter().map(NatsServer::url).collect();
    let nodes = start_nodes(&[("a", &urls[0]), ("b", &urls[1]), ("c", &urls[2])]).await;
    nodes[0].deploy("api", guests::TAGGED_V1).await;

    // c's server goes: c moves to a server left (the client learned them all), and a deploy
    // through a is acknowledged and served everywhere, c included.
    servers[2].stop();
    let (status, body) = nodes[0]
        .deploy_bytes("api", "", guests::bytes(guests::TAGGED_V2))
        .await;
    assert!(status.is_success(), "{body}");
    let acknowledged = cluster(&body).revision;
    for node in &nodes {
        // Generous: a stream leader election after a server's loss takes seconds, and more
        // on a loaded machine.
        eventually("every node serves v2", ELECTION, || async {
            (answer(node, "/api").await == "200 v2").then_some(())
        })
        .await;
    }

    // It comes back; then a's server goes: the deploy a acknowledged is still there for b,
    // and b records the next one on the two servers left.
    servers[2].restart();
    servers[2].wait_ready(Duration::from_secs(60));
    servers[0].stop();
    assert_eq!(revision(&nodes[1], "api").await, acknowledged);
    let (status, body) = nodes[1]
        .deploy_bytes("api", "", guests::bytes(guests::TAGGED_SLOW))
        .await;
    assert!(status.is_success(), "{body}");
    assert!(cluster(&body).revision > acknowledged, "{body}");
    for node in &nodes {
        eventually("every node serves the next deploy", ELECTION, || async {
            (answer(node, "/api").await == "200 slow").then_some(())
        })
        .await;
    }
    servers[0].restart();
    shutdown(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_node_on_a_fresh_machine_compiles_from_the_object_store_before_it_is_ready() {
    let nats = NatsServer::start();
    let url = nats.url();
    let a = TestServer::start_node(&url, "a", None).await;
    let b = TestServer::start_node(&url, "b", None).await;
    a.deploy("api", guests::TAGGED_V1).await;
    assert_eq!(answer(&b, "/api").await, "200 v1");
    // b leaves (SIGTERM: drains, deregisters) ...
    b.shutdown().await;
    let list: NodeList = a.read("/v1/nodes").await;
    assert_eq!(list.nodes.len(), 1, "b deregistered: {list:?}");
    // ... and comes back upgraded: other engine settings (on-demand allocation, another
    // memory cap) and an empty data directory, as on a fresh machine: no artifact and no
    // module bytes of its own, as after an upgrade whose engine key changed.
    let data = tempfile::tempdir().unwrap();
    let mut config = node_config(&url, "b", Some(data.path().join("b")));
    config.max_instances = 0;
    config.limits.max_memory_bytes = 64 << 20;
    let b = TestServer::start_with(config).await;
    let new_key = b.server().runtime().files.engine_key().to_owned();
    // Ready means caught up: it compiled the route's module from the Object Store's bytes.
    assert_eq!(b.server().runtime().compiles(), 1);
    assert_eq!(answer(&b, "/api").await, "200 v1");
    let list: NodeList = a.read("/v1/nodes").await;
    assert_eq!(listed(&list, "b").engine_key, new_key);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_with_another_opt_level_recompiles_before_it_is_ready() {
    let nats = NatsServer::start();
    let url = nats.url();
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("b");
    let a = TestServer::start_node(&url, "a", None).await;
    let b = TestServer::start_with(node_config(&url, "b", Some(dir.clone()))).await;
    a.deploy("api", guests::TAGGED_V1).await;
    assert_eq!(answer(&b, "/api").await, "200 v1");
    let old_key = b.server().runtime().files.engine_key().to_owned();

    // The same settings again: the artifact in its data directory loads, nothing compiles.
    b.shutdown().await;
    let b = TestServer::start_with(node_config(&url, "b", Some(dir.clone()))).await;
    assert_eq!(b.server().runtime().files.engine_key(), old_key);
    assert_eq!(b.server().runtime().compiles(), 0, "the artifact loaded");
    let old_artifacts: Vec<String> = std::fs::read_dir(dir.join("artifacts"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !old_artifacts.is_empty(),
        "the first start wrote an artifact"
    );
    assert_eq!(answer(&b, "/api").await, "200 v1");

    // Another engine setting: a new engine key, so before it is ready it compiled the route's
    // module again (through the compile worker, which must compile at the same level for its
    // artifact to load).
    b.shutdown().await;
    let mut config = node_config(&url, "b", Some(dir.clone()));
    config.opt_level = handoff::engine::OptLevel::None;
    let b = TestServer::start_with(config).await;
    let new_key = b.server().runtime().files.engine_key().to_owned();
    assert_ne!(new_key, old_key, "--opt-level is part of the engine key");
    assert_eq!(
        b.server().runtime().compiles(),
        1,
        "recompiled before ready"
    );
    assert_eq!(answer(&b, "/api").await, "200 v1");
    let artifacts: Vec<String> = std::fs::read_dir(dir.join("artifacts"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    // Artifacts are named by the key of the engine that compiled them (one per WASI, both
    // part of the node's key): the new engine wrote one that was not there before.
    assert!(
        artifacts.iter().any(|name| !old_artifacts.contains(name)),
        "an artifact for the new engine: {artifacts:?}, before: {old_artifacts:?}"
    );
    let list: NodeList = a.read("/v1/nodes").await;
    assert_eq!(listed(&list, "b").engine_key, new_key);
    // And it keeps up with the cluster: the next deploy converges on it too.
    a.deploy("api", guests::TAGGED_V2).await;
    assert_eq!(answer(&b, "/api").await, "200 v2");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_activate_a_change_is_named_and_the_change_is_partial() {
    let nats = NatsServer::start();
    let url = nats.url();
    let a = TestServer::start_node(&url, "a", None).await;
    // b's guests may have 64 KiB of memory (one wasm page): no real guest instantiates there.
    let mut config = node_config(&url, "b", None);
    config.max_instances = 0;
    config.limits.max_memory_bytes = 64 << 10;
    let b = TestServer::start_with(config).await;
    eventually("a sees b", Duration::from_secs(10), || async {
        let list: NodeList = a.read("/v1/nodes").await;
        (list.nodes.len() == 2).then_some(())
    })
    .await;

    let (status, body) = a
        .deploy_bytes("api", "", guests::bytes(guests::TAGGED_V1))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "partial: {body}");
    let answered = cluster(&body);
    assert!(!answered.converged, "{body}");
    let b_answer = &answered.nodes[1];
    assert_eq!(
        (b_answer.node.as_str(), b_answer.state.as_str()),
        ("b", "failed"),
        "{body}"
    );
    assert!(
        b_answer.error.as_ref().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    assert_eq!(answer(&a, "/api").await, "200 v1");
    // The route's status names b as not converged, with its reason.
    let per_node = on_nodes(&a, "api").await;
    let on_b = per_node
        .iter()
        .find(|n| n.node == "b")
        .unwrap_or_else(|| panic!("b in {per_node:?}"));
    assert!(!on_b.converged, "{on_b:?}");
    assert!(on_b.error.is_some(), "{on_b:?}");

    // wait=none and wait=local answer without asking b.
    for wait in ["none", "local"] {
        let (status, body) = a
            .deploy_bytes(
                &format!("r-{wait}"),
                &format!("?wait={wait}"),
                guests::bytes(guests::TAGGED_V2),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let answered = cluster(&body);
        assert_eq!(answered.wait, wait, "{body}");
        assert!(answered.converged, "{body}");
        assert!(answered.nodes.is_empty(), "{body}");
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_catching_up_with_a_change_is_an_event_on_any_node() {
    let nats = NatsServer::start();
    let url = nats.url();
    let nodes = start_nodes(&[("a", &url), ("b", &url), ("c", &url)]).await;
    let mut events = handoff::client::AdminClient::new(&format!("http://{}", nodes[0].admin))
        .unwrap()
        .events(Some("api"), None)
        .await
        .expect("the event stream opens");
    let version = nodes[1].deployed("api", guests::TAGGED_V1).await.version;
    // Read on a's stream until every node has said it serves the version.
    let mut converged = std::collections::BTreeSet::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while converged.len() < 3 {
            let event = events
                .next()
                .await
                .expect("the stream reads")
                .expect("open");
            if event.kind == handoff::api::EventKind::NodeConverged {
                assert_eq!(
                    event.version.as_deref(),
                    Some(version.as_str()),
                    "{event:?}"
                );
                assert!(event.revision.is_some(), "{event:?}");
                converged.insert(event.node.clone().expect("a node"));
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("node_converged from a, b and c; got {converged:?}"));
    assert_eq!(converged, ["a", "b", "c"].map(String::from).into());
    for node in nodes {
        node.shutdown().await;
    }
}
