//! Cluster mode at NATS' limits and under faults (issue 21, items 7, 8, 11, 12): messages no
//! larger than the server's `max_payload`, a write whose acknowledgement is lost, signatures
//! of modules uploaded through another node, and reads (and routes gone before a node applies
//! them) that create nothing. A nats-server with
//! a small `max_payload` makes the limits cheap to reach.

use std::time::Duration;

use bytes::Bytes;
use handoff::api::NodeList;
use handoff::config::Config;
use handoff::kv::Backend as _;
use handoff::kv::backend::{Change, Outcome, Quota, Write};
use handoff_tests::nats::{NatsServer, start_nodes, until_live};
use handoff_tests::{TestServer, guests, node_config};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

/// The `max_payload` of the small server: 64 KiB.
const SMALL: usize = 64 << 10;

fn small_nats() -> NatsServer {
    NatsServer::start_with_config(&format!("max_payload: {SMALL}\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_ack_is_lost_lands_once_and_keeps_its_reservation() {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let kv = handoff::kv::jetstream::JetStreamKv::new(async_nats::jetstream::new(client), 1);
    let quota = Quota {
        max_keys: 1,
        max_bytes: 0,
    };
    let increment = || Write::new("n".into(), Change::Increment { delta: 1 }, quota);
    // The acknowledgements of the next two publishes (the quota's reservation, then the key)
    // are dropped after they were sent: both landed, and the answers never came.
    kv.lose_acks(2);
    let outcome = kv.write("route/t", increment()).await;
    assert!(
        matches!(
            outcome,
            Ok(Outcome::Done {
                number: Some(1),
                ..
            })
        ),
        "{outcome:?}"
    );
    let entry = kv.get("route/t", "n").await.unwrap().unwrap();
    assert_eq!(entry.value, b"1", "the increment landed once");
    assert_eq!(kv.usage("route/t").await.unwrap().keys, 1, "still reserved");
    // The quota holds: a second key is refused.
    let other = Write::new(
        "m".into(),
        Change::Set {
            value: b"x".to_vec(),
            ttl_ms: None,
        },
        quota,
    );
    let refused = kv.write("route/t", other).await;
    assert!(refused.is_err(), "{refused:?}");
    kv.lose_acks(1);
    let outcome = kv.write("route/t", increment()).await;
    assert!(
        matches!(
            outcome,
            Ok(Outcome::Done {
                number: Some(2),
                ..
            })
        ),
        "{outcome:?}"
    );
    assert_eq!(kv.get("route/t", "n").await.unwrap().unwrap().value, b"2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_and_route_records_at_the_payload_limit() {
    let nats = small_nats();
    let url = nats.url();
    let a = TestServer::start_node(&url, "a", None).await;

    // A value larger than one message is refused with a sentence, not a 500.
    let big = "x".repeat(SMALL);
    let (status, body) = a
        .admin_json(
            Method::PUT,
            "/v1/kv/shared-big/keys/k",
            json!({ "value": big }),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("max_payload"),
        "{body}"
    );
    let fits = "y".repeat(SMALL - (8 << 10));
    let (status, body) = a
        .admin_json(
            Method::PUT,
            "/v1/kv/shared-big/keys/k",
            json!({ "value": fits }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // An import with one line too large writes nothing.
    let lines = format!(
        "{}\n{}\n",
        json!({"key": "a", "value": "small"}),
        json!({"key": "b", "value": big})
    );
    let import = Request::builder()
        .method(Method::POST)
        .uri("/v1/kv/shared-big/import")
        .header("host", "admin")
        .header("content-type", "application/x-ndjson")
        .body(Full::new(Bytes::from(lines)))
        .unwrap();
    let (status, body) = handoff_tests::send(a.admin, import).await;
    assert_eq!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (_, keys) = a.admin(Method::GET, "/v1/kv/shared-big/keys").await;
    assert_eq!(
        keys["keys"],
        json!(["k"]),
        "nothing of the import was written"
    );

    // A route whose record outgrows one message (20 KB of config, kept in each history
    // entry) keeps taking changes, and every node reads it whole.
    for i in 0..6 {
        let query: Vec<String> = (0..5)
            .map(|k| format!("config=K{k}={}{i}", "c".repeat(4000)))
            .collect();
        let query = format!("?{}", query.join("&"));
        let started = std::time::Instant::now();
        let (status, body) = a
            .deploy_bytes("app", &query, guests::bytes(guests::TAGGED_V1))
            .await;
        assert!(status.is_success(), "deploy {i}: {body}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "deploy {i} hung"
        );
    }
    let b = TestServer::start_node(&url, "b", None).await;
    until_live(&a, 2).await;
    let status = b.route("app").await;
    assert!(
        status.config.get("K4").is_some_and(|v| v.ends_with('5')),
        "{:?}",
        status.config.get("K4")
    );
    let (_, versions) = b.admin(Method::GET, "/v1/routes/app/versions").await;
    assert!(versions.to_string().len() > SMALL, "the history is whole");
    assert_eq!(b.get("/app").await.1, "v1");
    // Moving back to a small record drops the parts.
    let (status, body) = a
        .deploy_bytes("app", "?config=K0=small", guests::bytes(guests::TAGGED_V2))
        .await;
    assert!(status.is_success(), "{body}");
    assert_eq!(b.get("/app").await.1, "v2");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_require_a_module_uploaded_through_another_node_rolls_out_and_shadows() {
    let nats = NatsServer::start();
    let url = nats.url();
    let (private, public) = handoff::signing::generate().unwrap();
    let config = |name: &str| Config {
        signature_mode: handoff::signing::Mode::Require,
        signing_keys: vec![handoff::signing::TrustedKey::new("release", &public).unwrap()],
        ..node_config(&url, name, None)
    };
    let a = TestServer::start_with(config("a")).await;
    let b = TestServer::start_with(config("b")).await;
    until_live(&a, 2).await;
    let upload = |node: &TestServer, guest: &str| {
        let bytes = guests::bytes(guest);
        let signature = handoff::signing::sign(&private, &bytes).unwrap();
        let admin = node.admin;
        async move {
            let req = Request::builder()
                .method(Method::POST)
                .uri("/v1/modules")
                .header("host", "admin")
                .header("content-type", "application/wasm")
                .header("handoff-signature", signature)
                .body(Full::new(Bytes::from(bytes)))
                .unwrap();
            let (status, body) = handoff_tests::send(admin, req).await;
            assert!(status.is_success(), "{status}");
            serde_json::from_slice::<Value>(&body).unwrap()["version"].clone()
        }
    };
    let stable = upload(&a, guests::TAGGED_V1).await;
    let (status, body) = a
        .post_json("/v1/routes/app/activate", json!({"version": stable}))
        .await;
    assert!(status.is_success(), "{body}");
    // Uploaded through a; a rollout and a shadow started through b.
    let candidate = upload(&a, guests::TAGGED_V2).await;
    let (status, body) = b
        .post_json(
            "/v1/routes/app/rollout",
            json!({"version": candidate, "steps": [50], "manual": true}),
        )
        .await;
    assert!(status.is_success(), "a rollout through b: {body}");
    let (status, body) = b.admin(Method::POST, "/v1/routes/app/rollout/abort").await;
    assert!(status.is_success(), "{body}");
    let shadow = upload(&a, guests::TAGGED_V1B).await;
    let (status, body) = b
        .admin_json(
            Method::PUT,
            "/v1/routes/app/shadow",
            json!({"version": shadow, "percent": 100}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "a shadow through b: {body}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_an_unknown_bucket_makes_no_stream() {
    let nats = NatsServer::start();
    let url = nats.url();
    let nodes = start_nodes(&[("a", &url)]).await;
    for path in ["/v1/kv/nobody/keys", "/v1/routes/ghost/kv/keys"] {
        let (status, body) = nodes[0].admin(Method::GET, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut names = js.stream_names();
    let mut streams = Vec::new();
    while let Some(name) = futures_util::StreamExt::next(&mut names).await {
        streams.push(name.unwrap());
    }
    assert!(
        !streams.iter().any(|s| s.starts_with("KV_handoff_kv_")),
        "{streams:?}"
    );
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_gone_before_a_node_applies_them_leave_no_route_state_there() {
    let nats = NatsServer::start();
    let url = nats.url();
    let nodes = start_nodes(&[("a", &url), ("b", &url)]).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let b_rt = b.server().runtime().clone();
    // Routes created and deleted again through a at once (a CI job's preview routes, say):
    // b applies each change by reading the route as it is now, often after it is gone.
    let names: Vec<String> = (0..6).map(|i| format!("preview-{i}")).collect();
    let bytes = guests::bytes(guests::TAGGED_V1);
    for name in &names {
        let (status, body) = a.deploy_bytes(name, "?wait=none", bytes.clone()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, body) = a
            .admin(Method::DELETE, &format!("/v1/routes/{name}?wait=none"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let last = a.server().runtime().state.position().await.unwrap();
    handoff_tests::eventually(
        "b applied every change",
        Duration::from_secs(30),
        || async {
            let (_, list) = b.admin(Method::GET, "/v1/nodes").await;
            let me = list["nodes"]
                .as_array()?
                .iter()
                .find(|n| n["node"] == "b")?
                .clone();
            (me["position"].as_u64()? >= last).then_some(())
        },
    )
    .await;
    let stateless = |name: &str| {
        let name = handoff::names::RouteName::parse(name).unwrap();
        b_rt.registry.get(&name).is_none()
    };
    for name in &names {
        assert!(stateless(name), "b keeps route state for {name}, gone");
    }
    // The step b's watch makes for a change whose route is gone, made here for a name b never
    // served: it leaves nothing either.
    for name in names.iter().map(String::as_str).chain(["never-here"]) {
        let route = handoff::names::RouteName::parse(name).unwrap();
        handoff::deploy::remote::reconcile(&b_rt, &route)
            .await
            .expect("the log reads");
        assert!(
            stateless(name),
            "applying a gone route {name} left route state"
        );
    }
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_records_with_more_routes_than_one_message_holds_keep_their_heartbeats() {
    // 16 KiB messages; 150 routes of long names make each node's record about 24 KB.
    let nats = NatsServer::start_with_config("max_payload: 16384\n");
    let url = nats.url();
    let a = TestServer::start_node(&url, "a", None).await;
    let b = TestServer::start_node(&url, "b", None).await;
    until_live(&a, 2).await;
    let bytes = guests::bytes(guests::TAGGED_V1);
    const ROUTES: usize = 150;
    let name = |i: usize| format!("a-rather-long-route-name-that-fills-node-records-{i:03}");
    for i in 0..ROUTES {
        let (status, body) = a.deploy_bytes(&name(i), "?wait=local", bytes.clone()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    // Both nodes still heartbeat, and each reads the other's record whole: every route, at
    // the revision the route has now.
    until_live(&a, 2).await;
    until_live(&b, 2).await;
    for (reader, other) in [(&a, "b"), (&b, "a")] {
        handoff_tests::eventually(
            "the other node's record with every route",
            Duration::from_secs(20),
            || async {
                let list: NodeList = reader.read("/v1/nodes").await;
                let node = list.nodes.into_iter().find(|n| n.node == other)?;
                (node.alive && node.routes.len() == ROUTES).then_some(())
            },
        )
        .await;
    }
    // A change through b waits for a, which reports it.
    let (status, body) = b
        .deploy_bytes(&name(0), "?wait=all", guests::bytes(guests::TAGGED_V2))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(a.get(&format!("/{}/", name(0))).await.1, "v2");
    a.shutdown().await;
    b.shutdown().await;
}
