//! Two versions of one route on one set of data: the `todo` example's v1 (`done: bool`) and v2
//! (`status`, `tags`) read each other's writes across swaps, while clients keep writing through
//! them, and under a 50 % split (a manual rollout).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use handoff::config::Config;
use handoff_tests::{Connection, TestServer, guests};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

/// A bound against hangs only.
const LIMIT: Duration = Duration::from_secs(120);

/// One request to the todo route: status, the `todo-version` that answered, the JSON body.
async fn call(
    conn: &mut Connection,
    method: Method,
    path: &str,
    body: Option<Value>,
    pin: Option<&str>,
) -> (StatusCode, String, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "handoff.test");
    if let Some(pin) = pin {
        request = request.header("x-pin", pin);
    }
    let bytes = match body {
        Some(body) => {
            request = request.header("content-type", "application/json");
            Bytes::from(body.to_string())
        }
        None => Bytes::new(),
    };
    let response = conn
        .send(request.body(Full::new(bytes)).unwrap())
        .await
        .expect("request");
    let status = response.status();
    let version = response
        .headers()
        .get("todo-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, version, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_v2_read_each_others_writes_across_swaps() {
    let server = TestServer::start().await;
    let v1 = guests::bytes(guests::TODO_V1);
    let v2 = guests::bytes(guests::TODO_V2);
    server.deploy_bytes("todo", "", v1.clone()).await;
    let mut conn = Connection::open(server.data).await;
    let (status, version, a) = call(
        &mut conn,
        Method::POST,
        "/todo/items",
        Some(json!({"title": "milk"})),
        None,
    )
    .await;
    assert_eq!((status, version.as_str()), (StatusCode::CREATED, "1"));
    call(
        &mut conn,
        Method::PATCH,
        "/todo/items/1",
        Some(json!({"done": true})),
        None,
    )
    .await;
    assert_eq!(a["id"], 1);

    // v2 reads v1's item, upgraded; what it writes keeps the `done` v1 reads.
    server.deploy_bytes("todo", "", v2.clone()).await;
    let (_, version, item) = call(&mut conn, Method::GET, "/todo/items/1", None, None).await;
    assert_eq!(version, "2");
    assert_eq!(
        item,
        json!({"id": 1, "title": "milk", "status": "done", "tags": []})
    );
    let (status, _, b) = call(
        &mut conn,
        Method::POST,
        "/todo/items",
        Some(json!({"title": "bread", "tags": ["shop"]})),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{b}");
    call(
        &mut conn,
        Method::PATCH,
        "/todo/items/2",
        Some(json!({"status": "archived"})),
        None,
    )
    .await;

    // Back to v1: it reads v2's items, and its edits keep v2's fields.
    server.deploy_bytes("todo", "", v1.clone()).await;
    let (_, version, items) = call(&mut conn, Method::GET, "/todo/items", None, None).await;
    assert_eq!(version, "1");
    assert_eq!(
        items,
        json!([
            {"id": 1, "title": "milk", "done": true},
            {"id": 2, "title": "bread", "done": false}
        ])
    );
    call(
        &mut conn,
        Method::PATCH,
        "/todo/items/2",
        Some(json!({"title": "rye bread"})),
        None,
    )
    .await;

    // v2 again: v1's edit is there, and so are the status and tags v1 does not know.
    server.deploy_bytes("todo", "", v2.clone()).await;
    let (_, _, item) = call(&mut conn, Method::GET, "/todo/items/2", None, None).await;
    assert_eq!(
        item,
        json!({"id": 2, "title": "rye bread", "status": "archived", "tags": ["shop"]})
    );

    // Under load: clients create and read back items while deploys alternate v1 and v2.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut clients = Vec::new();
    for client in 0..8 {
        let stop = stop.clone();
        let addr = server.data;
        clients.push(tokio::spawn(async move {
            let mut conn = Connection::open(addr).await;
            let mut made = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && started.elapsed() < LIMIT {
                let title = format!("c{client}-{i}");
                let (status, _, item) = call(
                    &mut conn,
                    Method::POST,
                    "/todo/items",
                    Some(json!({"title": title})),
                    None,
                )
                .await;
                assert_eq!(status, StatusCode::CREATED, "{item}");
                let id = item["id"].as_u64().unwrap();
                // Whichever version answers reads what either one wrote.
                let (status, _, read) = call(
                    &mut conn,
                    Method::GET,
                    &format!("/todo/items/{id}"),
                    None,
                    None,
                )
                .await;
                assert_eq!((status, &read["title"]), (StatusCode::OK, &json!(title)));
                made.push((id, title));
                i += 1;
            }
            made
        }));
    }
    for round in 0..10 {
        let bytes = if round % 2 == 0 { &v1 } else { &v2 };
        let (status, body) = server.deploy_bytes("todo", "", bytes.clone()).await;
        assert!(status.is_success(), "{body}");
    }
    stop.store(true, Ordering::Relaxed);
    let mut made = Vec::new();
    for client in clients {
        made.extend(client.await.unwrap());
    }
    assert!(!made.is_empty());
    let (_, version, items) = call(&mut conn, Method::GET, "/todo/items", None, None).await;
    assert_eq!(version, "2");
    let items = items.as_array().unwrap();
    for (id, title) in &made {
        assert!(
            items
                .iter()
                .any(|i| i["id"] == *id && i["title"] == *title.as_str()),
            "item {id} ({title}) is missing"
        );
    }
    assert_eq!(items.len(), made.len() + 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_v2_read_each_others_writes_under_a_fifty_percent_split() {
    let server = TestServer::start_with(Config {
        pin_header: Some("x-pin".parse().unwrap()),
        ..Config::ephemeral()
    })
    .await;
    let v1 = server.deployed("todo", guests::TODO_V1).await.version;
    let v2 = server.upload(guests::TODO_V2).await;
    let (status, body) = server
        .post_json(
            "/v1/routes/todo/rollout",
            json!({"version": v2, "steps": [50], "manual": true}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut conn = Connection::open(server.data).await;
    let mut served = [0; 2];
    for i in 0..200 {
        let (status, version, _) = call(
            &mut conn,
            Method::POST,
            "/todo/items",
            Some(json!({"title": format!("t{i}")})),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        served[usize::from(version == "2")] += 1;
    }
    assert!(served[0] > 40 && served[1] > 40, "not a split: {served:?}");
    // Each side lists every item, whichever side created it.
    for (pin, version) in [(&v1, "1"), (&v2, "2")] {
        let (_, answered, items) =
            call(&mut conn, Method::GET, "/todo/items", None, Some(pin)).await;
        assert_eq!(answered, version);
        assert_eq!(items.as_array().unwrap().len(), 200, "v{version}");
    }
    // And each sees the other's changes at once.
    call(
        &mut conn,
        Method::PATCH,
        "/todo/items/7",
        Some(json!({"status": "done", "tags": ["x"]})),
        Some(&v2),
    )
    .await;
    let (_, _, item) = call(&mut conn, Method::GET, "/todo/items/7", None, Some(&v1)).await;
    assert_eq!(item["done"], true);
    call(
        &mut conn,
        Method::PATCH,
        "/todo/items/7",
        Some(json!({"done": false, "title": "t7!"})),
        Some(&v1),
    )
    .await;
    let (_, _, item) = call(&mut conn, Method::GET, "/todo/items/7", None, Some(&v2)).await;
    assert_eq!(
        item,
        json!({"id": 7, "title": "t7!", "status": "open", "tags": ["x"]})
    );
    server.shutdown().await;
}
