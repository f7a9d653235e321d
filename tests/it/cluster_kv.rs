//! Guests' key-value buckets in a cluster live in JetStream: every node reads and writes the
//! same data, and increments, compare-and-swap, quotas, listings and expiry hold across nodes.

use std::time::{Duration, Instant};

use handoff_tests::nats::{NatsServer, start_nodes};
use handoff_tests::{Connection, assert_each_value_once, eventually, guests, increments};
use http::{Method, StatusCode};
use serde_json::json;

/// A bound against hangs only.
const LIMIT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_incremented_through_three_nodes_concurrently_ends_exactly_right() {
    const CLIENTS_PER_NODE: usize = 4;
    const EACH: usize = 100;
    let nats = NatsServer::start();
    let url = nats.url();
    let nodes = start_nodes(&[("a", &url), ("b", &url), ("c", &url)]).await;
    nodes[0].deploy("count", guests::KV_PLAIN).await;
    let started = Instant::now();
    let deadline = started + LIMIT;
    let mut clients = Vec::new();
    for node in &nodes {
        for _ in 0..CLIENTS_PER_NODE {
            clients.push(tokio::spawn(increments(
                node.data,
                "/count/incr?key=hits",
                EACH,
                deadline,
            )));
        }
    }
    let mut all = Vec::new();
    for client in clients {
        all.extend(client.await.unwrap());
    }
    let total = (3 * CLIENTS_PER_NODE * EACH) as u64;
    assert_each_value_once(all, total);
    eprintln!(
        "cluster kv: {total} increments through 3 nodes in {:?}",
        started.elapsed()
    );
    for node in &nodes {
        let (status, body) = node.get("/count/get?key=hits").await;
        assert_eq!((status, body), (StatusCode::OK, total.to_string()));
    }
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_listings_quotas_and_expiry_hold_across_nodes() {
    const CLIENTS_PER_NODE: usize = 2;
    const EACH: usize = 20;
    let nats = NatsServer::start();
    let url = nats.url();
    let nodes = start_nodes(&[("a", &url), ("b", &url), ("c", &url)]).await;
    let plain = guests::bytes(guests::KV_PLAIN);
    let (status, body) = nodes[0].deploy_bytes("app", "", plain.clone()).await;
    assert!(status.is_success(), "{body}");

    // Compare-and-swap from every node: no update lost.
    let mut clients = Vec::new();
    for node in &nodes {
        for _ in 0..CLIENTS_PER_NODE {
            let addr = node.data;
            clients.push(tokio::spawn(async move {
                let mut conn = Connection::open(addr).await;
                for _ in 0..EACH {
                    let (status, body) = conn.get_text("/app/cas-incr?key=n").await;
                    assert_eq!(status, StatusCode::OK, "{body}");
                }
            }));
        }
    }
    for client in clients {
        client.await.unwrap();
    }
    let (_, total) = nodes[2].get("/app/get?key=n").await;
    assert_eq!(total, (3 * CLIENTS_PER_NODE * EACH).to_string());

    // Written through a, listed through b: more than one page, in order.
    let (_, body) = nodes[0].get("/app/batch?n=1100").await;
    assert_eq!(body, "1100");
    let (status, keys) = nodes[1].get("/app/list").await;
    assert_eq!(status, StatusCode::OK);
    let keys: Vec<&str> = keys.lines().collect();
    assert_eq!(keys.len(), 1101, "the batch's keys and `n`");
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "in order");

    // A quota counts what every node wrote.
    let (status, body) = nodes[0]
        .deploy_bytes("small", "?kv-max-keys=10", plain)
        .await;
    assert!(status.is_success(), "{body}");
    let (_, body) = nodes[1].get("/small/fill?n=6").await;
    assert_eq!(body, "wrote 6");
    let (status, body) = nodes[2].get("/small/set?key=seven&value=7").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    let (status, body) = nodes[0].get("/small/fill?n=20").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("kv-max-keys"), "{body}");
    let (_, listed) = nodes[1]
        .admin(Method::GET, "/v1/routes/small/kv/keys")
        .await;
    assert_eq!(listed["keys"].as_array().unwrap().len(), 10, "{listed}");

    // Set with a time to live through a's admin API: read through c, then gone everywhere.
    let (status, body) = nodes[0]
        .admin_json(
            Method::PUT,
            "/v1/routes/app/kv/keys/short",
            json!({"value": "lived", "ttl_ms": 1500}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = nodes[2]
        .admin(Method::GET, "/v1/routes/app/kv/keys/short")
        .await;
    assert_eq!((status, &body["value"]), (StatusCode::OK, &json!("lived")));
    for node in &nodes {
        eventually("the key expires", Duration::from_secs(10), || async {
            let (status, _) = node.get("/app/get?key=short").await;
            (status == StatusCode::NOT_FOUND).then_some(())
        })
        .await;
    }
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_holds_while_three_nodes_race_to_fill_a_bucket() {
    const QUOTA: usize = 30;
    const CLIENTS_PER_NODE: usize = 4;
    const EACH: usize = 15;
    let nats = NatsServer::start();
    let url = nats.url();
    let nodes = start_nodes(&[("a", &url), ("b", &url), ("c", &url)]).await;
    let (status, body) = nodes[0]
        .deploy_bytes(
            "race",
            &format!("?kv-max-keys={QUOTA}"),
            guests::bytes(guests::KV_PLAIN),
        )
        .await;
    assert!(status.is_success(), "{body}");
    // 180 new keys, written at once through three nodes: the quota lets exactly 30 in, however
    // the writes interleave.
    let started = Instant::now();
    let mut clients = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for client in 0..CLIENTS_PER_NODE {
            let addr = node.data;
            clients.push(tokio::spawn(async move {
                let mut conn = Connection::open(addr).await;
                let mut written = 0;
                for i in 0..EACH {
                    assert!(started.elapsed() < LIMIT, "writes are too slow");
                    let path = format!("/race/set?key=k{n}-{client}-{i}&value=x");
                    let (status, body) = conn.get_text(&path).await;
                    match status {
                        StatusCode::OK => written += 1,
                        StatusCode::BAD_REQUEST if body.contains("kv-max-keys") => {}
                        _ => panic!("{status} {body}"),
                    }
                }
                written
            }));
        }
    }
    let mut written = 0;
    for client in clients {
        written += client.await.unwrap();
    }
    assert_eq!(written, QUOTA, "writes that succeeded");
    let (_, listed) = nodes[1].admin(Method::GET, "/v1/routes/race/kv/keys").await;
    assert_eq!(listed["keys"].as_array().unwrap().len(), QUOTA, "{listed}");
    // The usage the quota is judged on counts exactly what the bucket holds.
    let usage = nodes[0]
        .metric("handoff_kv_keys{scope=\"route\",bucket=\"race\"}")
        .await;
    assert_eq!(usage, QUOTA as f64);
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_keys_are_deleted_and_free_their_quota() {
    const QUOTA: usize = 5;
    let nats = NatsServer::start();
    let url = nats.url();
    let nodes = start_nodes(&[("a", &url), ("b", &url)]).await;
    let (status, body) = nodes[0]
        .deploy_bytes(
            "sessions",
            &format!("?kv-max-keys={QUOTA}"),
            guests::bytes(guests::KV_PLAIN),
        )
        .await;
    assert!(status.is_success(), "{body}");
    // A full bucket of keys that live 1 s, written through b.
    for i in 0..QUOTA {
        let (status, body) = nodes[1]
            .admin_json(
                Method::PUT,
                &format!("/v1/routes/sessions/kv/keys/s{i}"),
                json!({"value": "session", "ttl_ms": 1000}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, body) = nodes[1].get("/sessions/set?key=more&value=x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "full: {body}");
    // Once they expire, the leader deletes them: the usage the quota judges falls to 0 ...
    let series = "handoff_kv_keys{scope=\"route\",bucket=\"sessions\"}";
    eventually("the expired keys are deleted", LIMIT, || async {
        (nodes[1].metric(series).await == 0.0).then_some(())
    })
    .await;
    // ... and the bucket takes as many new keys as before.
    for i in 0..QUOTA {
        let (status, body) = nodes[1]
            .get(&format!("/sessions/set?key=n{i}&value=x"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (_, listed) = nodes[0]
        .admin(Method::GET, "/v1/routes/sessions/kv/keys")
        .await;
    assert_eq!(listed["keys"].as_array().unwrap().len(), QUOTA, "{listed}");
    for node in nodes {
        node.shutdown().await;
    }
}
