//! Progressive delivery: weighted and sticky splits, the pin header, versions leaving a split,
//! rollouts stepping, promoted, and rolled back by their gates (shadows: `shadow.rs`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use handoff::config::Config;
use handoff_tests::{Connection, TestServer, eventually, guests};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

const GENEROUS: Duration = Duration::from_secs(60);

fn in_dir(dir: &Path) -> Config {
    Config {
        data_dir: Some(dir.to_path_buf()),
        ..Config::ephemeral()
    }
}

/// Starts a rollout of `version` on `route` with `options` (merged into the request).
async fn rollout(server: &TestServer, route: &str, version: &str, options: Value) -> Value {
    let mut body = json!({ "version": version });
    for (key, value) in options.as_object().unwrap() {
        body[key] = value.clone();
    }
    let (status, answer) = server
        .post_json(&format!("/v1/routes/{route}/rollout"), body)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    answer
}

async fn set_weight(server: &TestServer, route: &str, weight: f64) -> Value {
    let (status, answer) = server
        .admin_json(
            Method::PATCH,
            &format!("/v1/routes/{route}/rollout"),
            json!({ "weight": weight }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer
}

async fn rollout_state(server: &TestServer, route: &str) -> Value {
    server.status(route).await["rollout"].clone()
}

/// GET `path` on `conn` with one extra header; the body as text.
async fn get_with(conn: &mut Connection, path: &str, header: (&str, &str)) -> (StatusCode, String) {
    let req = Request::builder()
        .uri(path)
        .header("host", "handoff.test")
        .header(header.0, header.1)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = conn.send(req).await.expect("request sent");
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// `requests` GETs of `path` over `connections` keep-alive connections; how many answered
/// each body. Fails on anything but 200.
async fn tally(
    server: &TestServer,
    path: &str,
    requests: usize,
    connections: usize,
) -> HashMap<String, usize> {
    let mut tasks = Vec::new();
    for c in 0..connections {
        let addr = server.data;
        let path = path.to_owned();
        let share = requests / connections + usize::from(c < requests % connections);
        tasks.push(tokio::spawn(async move {
            let mut conn = Connection::open(addr).await;
            let mut seen: HashMap<String, usize> = HashMap::new();
            for _ in 0..share {
                let (status, body) = conn.get(&path).await.expect("request");
                assert_eq!(status, StatusCode::OK, "{body:?}");
                *seen
                    .entry(String::from_utf8_lossy(&body).into_owned())
                    .or_default() += 1;
            }
            seen
        }));
    }
    let mut total: HashMap<String, usize> = HashMap::new();
    for task in tasks {
        for (body, count) in task.await.unwrap() {
            *total.entry(body).or_default() += count;
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_split_sends_the_candidate_its_share() {
    let server = TestServer::start().await;
    server.deploy("app", guests::TAGGED_V1).await;
    let v2 = server.upload(guests::TAGGED_V2).await;
    let started = rollout(&server, "app", &v2, json!({"steps": [30], "manual": true})).await;
    assert_eq!(started["state"], "running");
    assert_eq!(started["weight"], 30.0);
    let counts = tally(&server, "/app", 10_000, 8).await;
    let share = counts.get("v2").copied().unwrap_or(0) as f64 / 10_000.0;
    assert!(
        (0.28..=0.32).contains(&share),
        "the candidate got {share} of 10,000 requests at weight 30: {counts:?}"
    );
    let status = server.status("app").await;
    let roles: Vec<_> = status["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["role"].as_str().unwrap().to_owned(),
                v["weight"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(roles, [("stable".into(), 70.0), ("candidate".into(), 30.0)]);
    // A plain deploy, a rollback or a second rollout while one runs: 409 naming it.
    let (status, body) = server
        .deploy_bytes("app", "", guests::bytes(guests::TAGGED_V2))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["detail"].as_str().unwrap().contains(&v2), "{body}");
    let (status, body) = server
        .post_json("/v1/routes/app/rollback", Value::Null)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["detail"].as_str().unwrap().contains(&v2), "{body}");
    let (status, body) = server
        .post_json("/v1/routes/app/activate", json!({"version": v2}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["detail"].as_str().unwrap().contains(&v2), "{body}");
    let (status, _) = server
        .post_json("/v1/routes/app/rollout", json!({"version": v2}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_keys_never_flip_back_as_the_weight_rises_and_keep_their_side_across_a_restart() {
    const KEYS: usize = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(in_dir(dir.path())).await;
    server.deploy("app", guests::TAGGED_V1).await;
    let v2 = server.upload(guests::TAGGED_V2).await;
    rollout(
        &server,
        "app",
        &v2,
        json!({"steps": [5, 25, 50, 100], "sticky": "header:x-user", "manual": true}),
    )
    .await;
    let sides = async |server: &TestServer| {
        let mut conn = Connection::open(server.data).await;
        let mut sides = Vec::with_capacity(KEYS);
        for key in 0..KEYS {
            let (status, body) =
                get_with(&mut conn, "/app", ("x-user", &format!("user-{key}"))).await;
            assert_eq!(status, StatusCode::OK);
            sides.push(body == "v2");
        }
        sides
    };
    let mut before = vec![false; KEYS];
    for weight in [5.0, 25.0, 50.0] {
        set_weight(&server, "app", weight).await;
        let now = sides(&server).await;
        for key in 0..KEYS {
            assert!(
                !before[key] || now[key],
                "user-{key} moved back from the candidate at weight {weight}"
            );
        }
        let share = now.iter().filter(|v2| **v2).count() as f64 / KEYS as f64 * 100.0;
        assert!(
            (share - weight).abs() <= 4.0,
            "{share} % of keys on the candidate at weight {weight}"
        );
        before = now;
    }
    // The same key, the same version, after a restart.
    server.shutdown().await;
    let server = TestServer::start_with(in_dir(dir.path())).await;
    assert_eq!(rollout_state(&server, "app").await["weight"], 50.0);
    assert_eq!(
        sides(&server).await,
        before,
        "keys changed sides across a restart"
    );
    set_weight(&server, "app", 100.0).await;
    assert!(sides(&server).await.iter().all(|v2| *v2));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_header_sends_a_request_to_the_version_it_names() {
    let server = TestServer::start_with(Config {
        pin_header: Some("x-pin".parse().unwrap()),
        ..Config::ephemeral()
    })
    .await;
    let v1 = server.deploy("app", guests::TAGGED_V1).await["version"]
        .as_str()
        .unwrap()
        .to_owned();
    let v2 = server.upload(guests::TAGGED_V2).await;
    rollout(&server, "app", &v2, json!({"steps": [50], "manual": true})).await;
    set_weight(&server, "app", 0.0).await;
    let mut conn = Connection::open(server.data).await;
    let hex = |v: &str| v.trim_start_matches("sha256:").to_owned();
    for (pin, expected) in [
        (hex(&v2)[..8].to_owned(), "v2"),
        (v2.clone(), "v2"),
        (hex(&v1)[..12].to_owned(), "v1"),
        // Too short, or naming no version serving the route: ignored.
        (hex(&v2)[..7].to_owned(), "v1"),
        ("0123456789abcdef".to_owned(), "v1"),
    ] {
        for _ in 0..20 {
            assert_eq!(
                get_with(&mut conn, "/app", ("x-pin", &pin)).await,
                (StatusCode::OK, expected.to_owned()),
                "pinned to {pin}"
            );
        }
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_leaving_the_split_drains_like_after_a_deploy() {
    let server = TestServer::start().await;
    server.deploy("app", guests::TAGGED_V1).await;
    let v2 = server.upload(guests::TAGGED_V2).await;
    rollout(&server, "app", &v2, json!({"steps": [100], "manual": true})).await;
    // A slow stream on the candidate.
    let mut conn = Connection::open(server.data).await;
    let response = conn
        .send(handoff_tests::get_request("/app?chunks=6&delay_ms=200"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let stream =
        tokio::spawn(async move { response.into_body().collect().await.unwrap().to_bytes() });
    let (status, body) = server
        .post_json("/v1/routes/app/rollout/abort", Value::Null)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "aborted");
    assert_eq!(
        server.get("/app").await.1,
        "v1",
        "new requests: the stable version"
    );
    let draining = server.status("app").await["draining"].clone();
    assert_eq!(draining[0]["version"], v2, "{draining}");
    assert_eq!(draining[0]["in_flight"], 1);
    let bytes = stream.await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&bytes),
        "v2 0\nv2 1\nv2 2\nv2 3\nv2 4\nv2 5\n"
    );
    eventually("the candidate to drain", GENEROUS, || async {
        let status = server.status("app").await;
        status["draining"]
            .as_array()
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;
    server.shutdown().await;
}

/// Drives `path` with `clients` keep-alive clients until the route's rollout reaches a state
/// other than running; returns the rollout then and how long after the candidate could first
/// be judged (it had `min_requests` in the step, as the status showed) the rollout ended.
async fn drive_until_decided(
    server: &TestServer,
    path: &str,
    clients: usize,
    min_requests: u64,
) -> (Value, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..clients {
        let (addr, stop, path) = (server.data, stop.clone(), path.to_owned());
        load.push(tokio::spawn(async move {
            let mut conn = Connection::open(addr).await;
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < GENEROUS {
                let _ = conn.get(&path).await;
            }
        }));
    }
    let started = Instant::now();
    let mut judgeable: Option<Instant> = None;
    let rollout = loop {
        assert!(
            started.elapsed() < GENEROUS,
            "the rollout did not end in time"
        );
        let rollout = rollout_state(server, "app").await;
        if rollout["state"] != "running" {
            break rollout;
        }
        let candidate = rollout["versions"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["role"] == "candidate"))
            .and_then(|v| v["requests"].as_u64())
            .unwrap_or(0);
        if candidate >= min_requests && judgeable.is_none() {
            judgeable = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = judgeable.map_or(Duration::ZERO, |at| at.elapsed());
    eprintln!(
        "rollout ended {} {took:?} after the candidate could be judged",
        rollout["state"]
    );
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    (rollout, took)
}

/// After a rollback: the route serves the stable version, and `requests` requests all succeed.
async fn serves_stable_only(server: &TestServer, path: &str) {
    let counts = tally(server, path, 200, 4).await;
    assert_eq!(counts, HashMap::from([("v1".to_owned(), 200)]));
    let status = server.status("app").await;
    assert_eq!(status["versions"].as_array().unwrap().len(), 1, "{status}");
}

/// Rolls `candidate` out on a route serving the tagged v1, drives `path` with `clients` until
/// a gate takes the candidate out, and checks what every rollback must show: weight 0 within
/// 1.5 s of the candidate becoming judgeable, the reason in the rollout and the history (by
/// `rollout`), `/metrics` saying so, and only the stable version serving afterwards. Returns
/// the server and the reason.
async fn rolled_back_by_a_gate(
    candidate: &str,
    path: &str,
    clients: usize,
    gates: Value,
) -> (TestServer, String) {
    let server = TestServer::start().await;
    server.deploy("app", guests::TAGGED_V1).await;
    let version = server.upload(candidate).await;
    let mut options = json!({"steps": [50, 100], "step_time": "1m", "min_requests": 20});
    options
        .as_object_mut()
        .unwrap()
        .extend(gates.as_object().unwrap().clone());
    rollout(&server, "app", &version, options).await;
    let (rollout, took) = drive_until_decided(&server, path, clients, 20).await;
    assert_eq!(rollout["state"], "rolled_back", "{rollout}");
    assert_eq!(rollout["weight"], 0.0);
    assert!(
        took < Duration::from_millis(1_500),
        "the candidate was taken out {took:?} after it could be judged"
    );
    let reason = rollout["reason"].as_str().unwrap().to_owned();
    let (_, history) = server.admin(Method::GET, "/v1/routes/app/versions").await;
    let last = history["versions"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (last["action"].as_str(), last["by"].as_str()),
        (Some("rollback"), Some("rollout"))
    );
    assert_eq!(last["message"].as_str(), Some(reason.as_str()));
    let state = "handoff_rollout_state{route=\"app\",state=\"rolled_back\"}";
    assert_eq!(server.metric(state).await, 1.0);
    let weight = format!("handoff_rollout_weight_percent{{route=\"app\",candidate=\"{version}\"}}");
    assert_eq!(server.metric(&weight).await, 0.0);
    serves_stable_only(&server, path).await;
    (server, reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_candidate_is_taken_out_within_a_second_and_the_reason_recorded() {
    // `/app/error`: the stable version answers 200, the candidate 500.
    let (server, reason) = rolled_back_by_a_gate(guests::FAILING, "/app/error", 4, json!({})).await;
    assert!(reason.contains("error rate"), "{reason}");
    assert!(reason.contains("max_error_rate 0.01"), "{reason}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_candidate_is_taken_out_by_the_error_gate() {
    // `/app/trap`: the stable version answers 200, the candidate traps (a 500 from the host).
    let (server, reason) = rolled_back_by_a_gate(guests::HOSTILE, "/app/trap", 4, json!({})).await;
    assert!(reason.contains("error rate"), "{reason}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_candidate_is_taken_out_by_the_p99_gate() {
    let gates = json!({"max_p99_ratio": 2.0});
    let (server, reason) = rolled_back_by_a_gate(guests::TAGGED_SLOW, "/app", 8, gates).await;
    assert!(reason.contains("p99"), "{reason}");
    assert!(reason.contains("above max_p99_ratio 2"), "{reason}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_candidate_steps_through_and_is_promoted_with_zero_failed_requests() {
    let server = TestServer::start().await;
    server.deploy("app", guests::TAGGED_V1).await;
    let v2 = server.upload(guests::TAGGED_V2).await;
    rollout(
        &server,
        "app",
        &v2,
        json!({"steps": [10, 50, 100], "step_time": "300ms", "step_requests": 20, "min_requests": 10}),
    )
    .await;
    // Load throughout: every response a 200 from v1 or v2.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (addr, stop) = (server.data, stop.clone());
        load.push(tokio::spawn(async move {
            let mut conn = Connection::open(addr).await;
            let mut answers: HashMap<String, usize> = HashMap::new();
            let mut failures = Vec::new();
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < GENEROUS {
                match conn.get("/app").await {
                    Ok((StatusCode::OK, body)) => {
                        *answers
                            .entry(String::from_utf8_lossy(&body).into_owned())
                            .or_default() += 1
                    }
                    other => failures.push(format!("{other:?}")),
                }
            }
            (answers, failures)
        }));
    }
    let mut weights = Vec::new();
    let started = Instant::now();
    let finished = loop {
        assert!(
            started.elapsed() < GENEROUS,
            "not promoted in time: {weights:?}"
        );
        let rollout = rollout_state(&server, "app").await;
        let weight = rollout["weight"].as_f64().unwrap();
        if weights.last() != Some(&weight) {
            weights.push(weight);
        }
        if rollout["state"] != "running" {
            break rollout;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // A little more load on the promoted version, then stop.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut answers: HashMap<String, usize> = HashMap::new();
    for task in load {
        let (seen, failures) = task.await.unwrap();
        assert!(failures.is_empty(), "failed requests: {failures:?}");
        for (body, count) in seen {
            *answers.entry(body).or_default() += count;
        }
    }
    assert_eq!(finished["state"], "promoted", "{finished}");
    assert!(weights.starts_with(&[10.0, 50.0]), "{weights:?}");
    assert!(
        answers.keys().all(|b| b == "v1" || b == "v2"),
        "{answers:?}"
    );
    let status = server.status("app").await;
    assert_eq!(status["active"]["version"], v2);
    assert_eq!(status["versions"].as_array().unwrap().len(), 1);
    assert_eq!(server.get("/app").await.1, "v2");
    let (_, history) = server.admin(Method::GET, "/v1/routes/app/versions").await;
    let last = history["versions"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["action"], "promote");
    assert_eq!(last["version"], v2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_continues_after_a_restart_where_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(in_dir(dir.path())).await;
    server.deploy("app", guests::TAGGED_V1).await;
    let v2 = server.upload(guests::TAGGED_V2).await;
    // Without traffic it cannot leave its first step (it needs candidate requests).
    rollout(
        &server,
        "app",
        &v2,
        json!({"steps": [20, 100], "step_time": "100ms", "step_requests": 10, "min_requests": 5}),
    )
    .await;
    server.shutdown().await;

    let server = TestServer::start_with(in_dir(dir.path())).await;
    let resumed = rollout_state(&server, "app").await;
    assert_eq!(
        (&resumed["state"], &resumed["step"], &resumed["weight"]),
        (&json!("running"), &json!(0), &json!(20.0)),
        "{resumed}"
    );
    // Traffic: the controller of the new process steps it on and promotes it.
    let (finished, _) = drive_until_decided(&server, "/app", 4, 5).await;
    assert_eq!(finished["state"], "promoted", "{finished}");
    assert_eq!(server.get("/app").await.1, "v2");
    server.shutdown().await;
}

/// The sticky hash exactly as `docs/delivery.md` documents it: FNV-1a (64 bit) over the route's name,
/// one `0xff` byte and the key, the SplitMix64 finalizer, modulo 10,000. Written here again so
/// the test checks the documentation, not the server against itself.
fn documented_bucket(route: &str, key: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in route.bytes().chain([0xff]).chain(key.iter().copied()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x100_0000_01b3);
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    hash % 10_000
}

/// One GET of `/app` from source address `from` on a fresh connection: the body.
async fn get_from(from: std::net::Ipv4Addr, to: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((from, 0).into()).unwrap();
    let mut stream = socket.connect(to).await.unwrap();
    stream
        .write_all(b"GET /app HTTP/1.1\r\nhost: handoff.test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = text.split_once("\r\n\r\n").unwrap().1;
    if body.contains("v2") { "v2" } else { "v1" }.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_hash_places_header_cookie_and_ip_keys() {
    let server = TestServer::start().await;
    server.deploy("app", guests::TAGGED_V1).await;
    let v2 = server.upload(guests::TAGGED_V2).await;
    let weight = 37.5;
    let expected = |key: &[u8]| {
        if documented_bucket("app", key) < 3_750 {
            "v2"
        } else {
            "v1"
        }
    };
    // Each rollout after the first retries the same candidate after an abort: it stays stored.
    for (sticky, header) in [("header:x-user", "x-user"), ("cookie:session", "cookie")] {
        rollout(
            &server,
            "app",
            &v2,
            json!({"steps": [weight], "sticky": sticky, "manual": true}),
        )
        .await;
        let mut conn = Connection::open(server.data).await;
        let mut on_candidate = 0;
        for key in 0..400 {
            let key = format!("user-{key}");
            let value = match header {
                "cookie" => format!("theme=dark; session={key}; lang=en"),
                _ => key.clone(),
            };
            let (status, body) = get_with(&mut conn, "/app", (header, &value)).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body, expected(key.as_bytes()), "{sticky} key {key}");
            on_candidate += usize::from(body == "v2");
        }
        assert!(
            (100..=200).contains(&on_candidate),
            "{on_candidate} of 400 on the candidate"
        );
        let (status, body) = server
            .post_json("/v1/routes/app/rollout/abort", Value::Null)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // `ip`: the client's address as its 4 octets. Loopback answers from all of 127/8.
    rollout(
        &server,
        "app",
        &v2,
        json!({"steps": [weight], "sticky": "ip", "manual": true}),
    )
    .await;
    let mut sides = [0usize; 2];
    for last in 1..=60u8 {
        let from = std::net::Ipv4Addr::new(127, 0, 0, last);
        let body = get_from(from, server.data).await;
        assert_eq!(body, expected(&from.octets()), "from {from}");
        assert_eq!(
            get_from(from, server.data).await,
            body,
            "from {from}, again"
        );
        sides[usize::from(body == "v2")] += 1;
    }
    assert!(sides[0] > 0 && sides[1] > 0, "both sides: {sides:?}");
    server.shutdown().await;
}

/// POSTs to `path` on a connection of its own, pinned to `version`, declaring a 1,000-byte body
/// but sending only 10 bytes of it; the response's status once the server answers.
async fn stalled_post(addr: std::net::SocketAddr, path: &str, version: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: handoff.test\r\nx-pin: {version}\r\ncontent-length: 1000\r\n\r\n0123456789"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(GENEROUS, stream.read(&mut buf))
            .await
            .expect("an answer within the deadline")
            .unwrap();
        assert!(n > 0, "the connection closed without an answer");
        answer.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&answer);
    line.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_bodies_pinned_to_a_healthy_candidate_do_not_roll_it_back() {
    let server = TestServer::start_with(Config {
        pin_header: Some("x-pin".parse().unwrap()),
        limits: handoff::config::Limits {
            request_timeout: Duration::from_secs(1),
            ..Default::default()
        },
        ..Config::ephemeral()
    })
    .await;
    server.deploy("app", guests::TAGGED_V1).await;
    let candidate = server.upload(guests::HOSTILE).await;
    rollout(
        &server,
        "app",
        &candidate,
        json!({"steps": [50, 100], "step_time": "1m", "min_requests": 10}),
    )
    .await;
    // The step's window opens at the controller's first look.
    eventually("the step's figures", GENEROUS, || async {
        let rollout = rollout_state(&server, "app").await;
        rollout["versions"]
            .as_array()
            .is_some_and(|v| !v.is_empty())
            .then_some(())
    })
    .await;
    // Twelve POSTs pinned to the candidate, whose guest reads the body the client never sends:
    // the client's doing, answered 408, not the candidate's failure.
    let stalled: Vec<_> = (0..12)
        .map(|_| {
            let (addr, candidate) = (server.data, candidate.clone());
            tokio::spawn(async move { stalled_post(addr, "/app/read-body", &candidate).await })
        })
        .collect();
    // And twenty healthy requests pinned to it, so that its gates judge the step.
    let mut conn = Connection::open(server.data).await;
    for _ in 0..20 {
        assert_eq!(
            get_with(&mut conn, "/app/ok", ("x-pin", &candidate)).await,
            (StatusCode::OK, "ok".into())
        );
    }
    for post in stalled {
        assert_eq!(post.await.unwrap(), 408, "a stalled request body");
    }
    // The controller judges every 100 ms: give it a dozen looks at the step.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1_200) {
        let rollout = rollout_state(&server, "app").await;
        assert_eq!(rollout["state"], "running", "{rollout}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rollout = rollout_state(&server, "app").await;
    let figures = rollout["versions"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["role"] == "candidate").cloned())
        .expect("the candidate's figures");
    assert_eq!(figures["requests"], 20, "{rollout}");
    assert_eq!(figures["error_rate"], 0.0, "{rollout}");
    server.shutdown().await;
}
