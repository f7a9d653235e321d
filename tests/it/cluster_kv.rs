//! Guests' key-value buckets in a cluster live in JetStream: every node reads and writes the
//! same data, and increments, compare-and-swap, quotas, listings and expiry hold across nodes.

use std::time::{Duration, Instant};

use handoff_tests::nats::{NatsServer, start_nodes};
use handoff_tests::{
    Connection, TestServer, assert_each_value_once, eventually, guests, increments,
};
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

/// A bucket of this many keys: a listing that costs a message per key sends at least as many.
const MANY: usize = 500;
/// What one page may cost in messages to the nats-server, the messages the node's own
/// heartbeats and sweeps send meanwhile included: far below [`MANY`].
const PAGE_COST: u64 = 25;

/// Issue 21, item 4: a listing page in a cluster cost one NATS request per key it read (502
/// messages for a guest's listing of 500 keys); now a few, counted by the nats-server itself
/// (`in_msgs`: every message a client sent it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_a_large_bucket_costs_a_few_nats_messages() {
    let nats = NatsServer::start();
    let node = TestServer::start_node(&nats.url(), "a", None).await;
    let (status, body) = node
        .deploy_bytes("app", "", guests::bytes(guests::KV_PLAIN))
        .await;
    assert!(status.is_success(), "{body}");
    let (_, body) = node.get(&format!("/app/batch?n={MANY}")).await;
    assert_eq!(body, MANY.to_string());
    let mut all: Vec<String> = (0..MANY).map(|i| format!("b-{i}")).collect();
    all.sort();

    // One page through the admin API, then the next one after its cursor.
    let mut cursor: Option<String> = None;
    for page in all.chunks(100).take(2) {
        let path = match &cursor {
            None => "/v1/routes/app/kv/keys?limit=100".to_owned(),
            Some(after) => format!("/v1/routes/app/kv/keys?limit=100&cursor={after}"),
        };
        let before = nats.in_msgs();
        let (status, listed) = node.admin(Method::GET, &path).await;
        let cost = nats.in_msgs() - before;
        eprintln!("cluster kv: a page of 100 of {MANY} keys: {cost} messages to NATS");
        assert_eq!(status, StatusCode::OK, "{listed}");
        assert_eq!(listed["keys"], json!(page), "{listed}");
        assert!(
            cost <= PAGE_COST,
            "a page of 100 of {MANY} keys sent {cost} messages to NATS"
        );
        cursor = listed["cursor"].as_str().map(str::to_owned);
        assert_eq!(cursor.as_deref(), page.last().map(String::as_str));
    }

    // A guest's whole listing: one page of up to 1,000 keys, whatever the bucket holds.
    let before = nats.in_msgs();
    let (status, body) = node.get("/app/list").await;
    let cost = nats.in_msgs() - before;
    eprintln!("cluster kv: a guest's listing of {MANY} keys: {cost} messages to NATS");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.lines().collect::<Vec<_>>(), all);
    assert!(cost <= PAGE_COST, "a guest's listing sent {cost} messages");
    node.shutdown().await;
}

/// The backend on a nats-server of its own (no node, so no sweep deletes what expired): scans
/// read values only for the page, the older draft's offsets, and expired keys never listed,
/// whether their messages carry the expiry header or predate it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_skip_expired_keys_and_read_values_only_for_their_page() {
    use handoff::kv::Backend as _;
    use handoff::kv::backend::{Change, Quota, Start, Write};
    use handoff::kv::jetstream::JetStreamKv;
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let kv = JetStreamKv::new(js.clone(), 1);
    let set = |key: String, ttl_ms: Option<u64>| {
        let value = key.clone().into_bytes();
        Write::new(key, Change::Set { value, ttl_ms }, Quota::default())
    };
    let writes = (0..MANY).map(|i| set(format!("k{i:03}"), None)).collect();
    for outcome in kv.write_all("b", writes).await.unwrap() {
        outcome.unwrap();
    }
    // Keys that expire at once, before, among and after the others.
    for key in ["a-gone", "k100-gone", "z-gone"] {
        kv.write("b", set(key.into(), Some(1))).await.unwrap();
    }
    // Entries written without the expiry header (as before it existed): one live, one expired.
    let store = js.get_key_value(stream_bucket("b")).await.unwrap();
    for (key, expires) in [("k200-old", 0u64), ("k201-old-gone", 1)] {
        let mut entry = 7u64.to_le_bytes().to_vec();
        entry.extend_from_slice(&expires.to_le_bytes());
        entry.extend_from_slice(key.as_bytes());
        let stored = format!("k{}", base64_url(key));
        store.put(stored, entry.into()).await.unwrap();
    }
    eventually("the short keys expire", Duration::from_secs(10), || async {
        kv.get("b", "a-gone").await.unwrap().is_none().then_some(())
    })
    .await;

    // Once from this node's index of the bucket's keys, once by a pass per page (as a bucket
    // too large to index is listed).
    let passes = JetStreamKv::new(js.clone(), 1);
    passes.limit_indexes(0);
    for (how, kv) in [("indexed", &kv), ("by passes", &passes)] {
        let before = nats.in_msgs();
        let page = kv.scan("b", Start::After("k099"), 10).await.unwrap();
        let cost = nats.in_msgs() - before;
        eprintln!("cluster kv, {how}: a scan of 10 entries of {MANY}: {cost} messages to NATS");
        let keys: Vec<&str> = page.items.iter().map(|(k, _)| k.as_str()).collect();
        let expected: Vec<String> = (100..110).map(|i| format!("k{i}")).collect();
        assert_eq!(keys, expected, "{how}");
        assert!(page.items.iter().all(|(k, e)| e.value == k.as_bytes()));
        assert!(page.more);
        assert!(
            cost <= 10 + PAGE_COST,
            "{how}: a scan of 10 sent {cost} messages"
        );

        let page = kv.list("b", Start::After("k199"), 3).await.unwrap();
        assert_eq!(page.items, ["k200", "k200-old", "k201"], "{how}");
        // The older draft's numeric cursor counts live keys: `k200-old` is one of them.
        let page = kv.list("b", Start::Offset(499), 10).await.unwrap();
        let last = (vec!["k498".to_owned(), "k499".into()], false);
        assert_eq!((page.items, page.more), last, "{how}");
        let page = kv.list("b", Start::First, 2).await.unwrap();
        let first = (vec!["k000".to_owned(), "k001".into()], true);
        assert_eq!((page.items, page.more), first, "{how}");
        let before = nats.in_msgs();
        let page = kv.list("b", Start::First, 1000).await.unwrap();
        let cost = nats.in_msgs() - before;
        eprintln!(
            "cluster kv, {how}: a listing of {} keys: {cost} messages",
            MANY + 1
        );
        assert_eq!(
            page.items.len(),
            MANY + 1,
            "{how}: every live key, `k200-old` too"
        );
        let gone: Vec<&String> = page.items.iter().filter(|k| k.contains("gone")).collect();
        assert!(gone.is_empty(), "{how}: {gone:?}");
        assert!(!page.more);
        assert!(cost <= PAGE_COST, "{how}: a listing sent {cost} messages");
    }

    // Another node adds, deletes and expires keys: the next page of both sees it at once.
    let other = JetStreamKv::new(js.clone(), 1);
    other
        .write("b", set("k000-new".into(), None))
        .await
        .unwrap();
    let delete = Write::new("k001".into(), Change::Delete, Quota::default());
    other.write("b", delete).await.unwrap();
    other.write("b", set("k002".into(), Some(1))).await.unwrap();
    eventually("k002 expires", Duration::from_secs(10), || async {
        other
            .get("b", "k002")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    for kv in [&kv, &passes] {
        let page = kv.list("b", Start::First, 3).await.unwrap();
        assert_eq!(page.items, ["k000", "k000-new", "k003"]);
    }
}

/// The JetStream bucket of handoff bucket `bucket` (as `kv/jetstream/layout.rs` names it).
fn stream_bucket(bucket: &str) -> String {
    let hex: String = bucket.bytes().map(|b| format!("{b:02x}")).collect();
    format!("handoff_kv_{hex}")
}

fn base64_url(key: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
}
