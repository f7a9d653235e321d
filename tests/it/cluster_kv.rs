//! Guests' key-value buckets in a cluster live in JetStream: every node reads and writes the
//! same data, and increments, compare-and-swap, quotas, listings and expiry hold across nodes.

use std::time::{Duration, Instant};

use handoff_tests::nats::{NatsServer, start_nodes};
use handoff_tests::{Connection, eventually, guests};
use http::{Method, StatusCode};
use serde_json::json;

/// A bound against hangs only.
const LIMIT: Duration = Duration::from_secs(180);

async fn get(conn: &mut Connection, path: &str) -> (StatusCode, String) {
    let (status, body) = conn.get(path).await.expect("request");
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_incremented_through_three_nodes_concurrently_ends_exactly_right() {
    const CLIENTS_PER_NODE: usize = 4;
    const EACH: usize = 100;
    let nats = NatsServer::start();
    let url = nats.url();
    let nodes = start_nodes(&[("a", &url), ("b", &url), ("c", &url)]).await;
    nodes[0].deploy("count", guests::KV_PLAIN).await;
    let started = Instant::now();
    let mut clients = Vec::new();
    for node in &nodes {
        for _ in 0..CLIENTS_PER_NODE {
            let addr = node.data;
            clients.push(tokio::spawn(async move {
                let mut conn = Connection::open(addr).await;
                let mut seen = Vec::with_capacity(EACH);
                for _ in 0..EACH {
                    assert!(started.elapsed() < LIMIT, "increments are too slow");
                    let (status, body) = get(&mut conn, "/count/incr?key=hits").await;
                    assert_eq!(status, StatusCode::OK, "{body}");
                    seen.push(body.parse::<u64>().expect("a number"));
                }
                seen
            }));
        }
    }
    let mut all = Vec::new();
    for client in clients {
        all.extend(client.await.unwrap());
    }
    let total = (3 * CLIENTS_PER_NODE * EACH) as u64;
    all.sort_unstable();
    let expected: Vec<u64> = (1..=total).collect();
    assert!(all == expected, "increments were lost or repeated");
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
                    let (status, body) = get(&mut conn, "/app/cas-incr?key=n").await;
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
