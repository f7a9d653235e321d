//! Cluster mode with the real binary: three `handoff serve --cluster` processes on a real
//! nats-server (`handoff_tests::nats`), `handoff nodes`, a node killed with SIGKILL named in
//! the partial deploy that could not wait for it, and its restart caught up before its ready
//! line.

use std::time::{Duration, Instant};

use handoff::api::NodeList;
use handoff_tests::guests;
use handoff_tests::nats::NatsServer;

use crate::support::{Ready, Running, get, handoff, serve};

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
