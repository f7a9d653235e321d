//! A route's prefix is a recorded claim (issue 21, item 6): two routes are never recorded at one
//! prefix, whichever nodes record them, and a restart never lets one route overwrite another.

use std::path::Path;
use std::time::Duration;

use handoff::config::Config;
use handoff_tests::nats::{NatsServer, start_nodes};
use handoff_tests::{TestServer, eventually, guests, node_config};
use http::{Method, StatusCode};

fn in_dir(dir: &Path) -> Config {
    Config {
        data_dir: Some(dir.to_path_buf()),
        ..Config::ephemeral()
    }
}

/// `status body` of `GET path` on `node`'s data plane.
async fn answer(node: &TestServer, path: &str) -> String {
    let (status, body) = node.get(path).await;
    format!("{} {body}", status.as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_racing_for_one_prefix_record_one_route() {
    let nats = NatsServer::start();
    let url = nats.url();
    let nodes = start_nodes(&[("a", &url), ("b", &url)]).await;
    // Both nodes have the bytes compiled already, so the race is between recording, not
    // compiling.
    nodes[0].deploy("warm-1", guests::TAGGED_V1).await;
    nodes[1].deploy("warm-2", guests::TAGGED_V2).await;
    for round in 0..3 {
        let prefix = format!("/p{round}");
        let query = format!("?prefix={prefix}");
        let (x_name, y_name) = (format!("x{round}"), format!("y{round}"));
        let (x, y) = tokio::join!(
            nodes[0].deploy_bytes(&x_name, &query, guests::bytes(guests::TAGGED_V1)),
            nodes[1].deploy_bytes(&y_name, &query, guests::bytes(guests::TAGGED_V2)),
        );
        let won: Vec<bool> = [&x, &y].iter().map(|(s, _)| s.is_success()).collect();
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            1,
            "round {round}: exactly one route takes {prefix}: {x:?} {y:?}"
        );
        let (winner, expected, (status, body)) = match won[0] {
            true => (format!("x{round}"), "200 v1", y),
            false => (format!("y{round}"), "200 v2", x),
        };
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(&winner), "names the holder: {body}");
        for node in &nodes {
            assert_eq!(answer(node, &prefix).await, expected, "round {round}");
        }
    }
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_held_by_a_change_a_node_could_not_apply_is_refused_there() {
    let nats = NatsServer::start();
    let url = nats.url();
    let a = TestServer::start_node(&url, "a", None).await;
    // On b a guest may have 256 KiB of memory: one with eight 64 KiB memories cannot exist.
    let mut config = node_config(&url, "b", None);
    config.max_instances = 0;
    config.limits.max_memory_bytes = 256 << 10;
    let b = TestServer::start_with(config).await;
    handoff_tests::nats::until_live(&a, 2).await;

    let (status, body) = a
        .deploy_bytes("x", "?prefix=/x", handoff_tests::many_memories(1, 0))
        .await;
    assert_eq!(status, StatusCode::CREATED, "both nodes serve it: {body}");
    assert_eq!(answer(&b, "/x").await, "200 ");
    // x moves to /p with a version b cannot instantiate: b keeps serving it at /x.
    let (status, body) = a
        .deploy_bytes("x", "?prefix=/p", handoff_tests::many_memories(8, 0))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "partial: b failed: {body}");
    assert_eq!(answer(&b, "/p").await.split(' ').next(), Some("404"));

    // /p is x's all the same, on b too.
    let (status, body) = b
        .deploy_bytes("y", "?prefix=/p", handoff_tests::many_memories(2, 0))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["detail"].as_str().unwrap_or_default().contains("`x`"),
        "{body}"
    );
    let (status, _) = a.admin(Method::GET, "/v1/routes/y").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was recorded");
    // x moving away frees /p for y.
    let (status, body) = a
        .deploy_bytes("x", "?prefix=/x", handoff_tests::many_memories(1, 0))
        .await;
    assert!(status.is_success(), "{body}");
    let (status, body) = b
        .deploy_bytes("y", "?prefix=/p", handoff_tests::many_memories(2, 0))
        .await;
    assert!(status.is_success(), "{body}");
    eventually("a serves y at /p", Duration::from_secs(10), || async {
        (a.route("y").await.prefix == "/p").then_some(())
    })
    .await;
    assert_eq!(answer(&a, "/p").await, "200 ");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_route_keeps_its_prefix_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(in_dir(dir.path())).await;
    let (status, body) = server
        .deploy_bytes("x", "?prefix=/p", guests::bytes(guests::TAGGED_V1))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    server.shutdown().await;
    // x's module and artifacts are lost: after a restart it is unavailable, at /p.
    for sub in ["modules", "artifacts"] {
        for entry in std::fs::read_dir(dir.path().join(sub)).unwrap().flatten() {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
    for _ in 0..2 {
        let server = TestServer::start_with(in_dir(dir.path())).await;
        assert_eq!(server.get("/p").await.0, StatusCode::SERVICE_UNAVAILABLE);
        let (status, body) = server
            .deploy_bytes("y", "?prefix=/p", guests::bytes(guests::TAGGED_V2))
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_never_lets_one_route_overwrite_another_at_its_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(in_dir(dir.path())).await;
    server.deploy("x", guests::TAGGED_V1).await;
    let (status, body) = server
        .deploy_bytes("x", "?prefix=/p", guests::bytes(guests::TAGGED_V1))
        .await;
    assert!(status.is_success(), "{body}");
    server.deploy("y", guests::TAGGED_V2).await;
    server.shutdown().await;
    // A data directory in which two routes were recorded at /p (an older handoff could record
    // that), without the prefix claims.
    {
        use redb::{ReadableDatabase as _, TableDefinition};
        const ROUTES: TableDefinition<&str, &[u8]> = TableDefinition::new("routes");
        const PREFIXES: TableDefinition<&str, &str> = TableDefinition::new("prefixes");
        let db = redb::Database::create(dir.path().join("handoff.redb")).unwrap();
        let mut y: serde_json::Value = {
            let txn = db.begin_read().unwrap();
            let routes = txn.open_table(ROUTES).unwrap();
            serde_json::from_slice(routes.get("y").unwrap().unwrap().value()).unwrap()
        };
        y["prefix"] = "/p".into();
        let txn = db.begin_write().unwrap();
        txn.open_table(ROUTES)
            .unwrap()
            .insert("y", serde_json::to_vec(&y).unwrap().as_slice())
            .unwrap();
        let _ = txn.delete_table(PREFIXES);
        txn.commit().unwrap();
    }
    let server = TestServer::start_with(in_dir(dir.path())).await;
    // x keeps /p; y is not served; each name is its own route.
    assert_eq!(server.get("/p").await, (StatusCode::OK, "v1".into()));
    assert_eq!(server.route("x").await.prefix, "/p");
    let (status, body) = server.admin(Method::GET, "/v1/routes/y").await;
    assert_ne!(body["prefix"], "/p", "{status} {body}");
    // Deleting y leaves x serving /p.
    server.admin(Method::DELETE, "/v1/routes/y").await;
    assert_eq!(server.get("/p").await, (StatusCode::OK, "v1".into()));
    server.shutdown().await;
    let server = TestServer::start_with(in_dir(dir.path())).await;
    assert_eq!(server.get("/p").await, (StatusCode::OK, "v1".into()));
    server.shutdown().await;
}
