//! Progressive delivery: weighted and sticky splits, the pin header and the documented hash,
//! versions leaving a split (rollouts: `rollouts.rs`; shadows: `shadow.rs`).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use handoff::api::RolloutStatus;
use handoff::config::Config;
use handoff_tests::{Connection, TestServer, detail, eventually, guests, typed};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

pub(crate) const GENEROUS: Duration = Duration::from_secs(60);

pub(crate) fn in_dir(dir: &Path) -> Config {
    Config {
        data_dir: Some(dir.to_path_buf()),
        ..Config::ephemeral()
    }
}

/// Starts a rollout of `version` on `route` with `options` (merged into the request).
pub(crate) async fn rollout(
    server: &TestServer,
    route: &str,
    version: &str,
    options: Value,
) -> RolloutStatus {
    let mut body = json!({ "version": version });
    for (key, value) in options.as_object().unwrap() {
        body[key] = value.clone();
    }
    let (status, answer) = server
        .post_json(&format!("/v1/routes/{route}/rollout"), body)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    typed(&answer)
}

pub(crate) async fn set_weight(server: &TestServer, route: &str, weight: f64) -> RolloutStatus {
    let (status, answer) = server
        .admin_json(
            Method::PATCH,
            &format!("/v1/routes/{route}/rollout"),
            json!({ "weight": weight }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    typed(&answer)
}

/// GET `path` on `conn` with one extra header; the body as text.
pub(crate) async fn get_with(
    conn: &mut Connection,
    path: &str,
    header: (&str, &str),
) -> (StatusCode, String) {
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
pub(crate) async fn tally(
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
    assert_eq!((started.state.as_str(), started.weight), ("running", 30.0));
    let counts = tally(&server, "/app", 10_000, 8).await;
    let share = counts.get("v2").copied().unwrap_or(0) as f64 / 10_000.0;
    assert!(
        (0.28..=0.32).contains(&share),
        "the candidate got {share} of 10,000 requests at weight 30: {counts:?}"
    );
    let status = server.route("app").await;
    let roles: Vec<(&str, f64)> = status
        .versions
        .iter()
        .map(|v| (v.role.as_str(), v.weight))
        .collect();
    assert_eq!(roles, [("stable", 70.0), ("candidate", 30.0)]);
    // A plain deploy, a rollback or a second rollout while one runs: 409 naming it.
    let (status, body) = server
        .deploy_bytes("app", "", guests::bytes(guests::TAGGED_V2))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(detail(&body).contains(&v2), "{body}");
    let (status, body) = server
        .post_json("/v1/routes/app/rollback", Value::Null)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(detail(&body).contains(&v2), "{body}");
    let (status, body) = server
        .post_json("/v1/routes/app/activate", json!({"version": v2}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(detail(&body).contains(&v2), "{body}");
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
    assert_eq!(server.rollout("app").await.weight, 50.0);
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
    let v1 = server.deployed("app", guests::TAGGED_V1).await.version;
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
    assert_eq!(typed::<RolloutStatus>(&body).state, "aborted", "{body}");
    assert_eq!(
        server.get("/app").await.1,
        "v1",
        "new requests: the stable version"
    );
    let draining = server.route("app").await.draining;
    assert_eq!(draining[0].version.version, v2, "{draining:?}");
    assert_eq!(draining[0].version.in_flight, 1);
    let bytes = stream.await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&bytes),
        "v2 0\nv2 1\nv2 2\nv2 3\nv2 4\nv2 5\n"
    );
    eventually("the candidate to drain", GENEROUS, || async {
        server.route("app").await.draining.is_empty().then_some(())
    })
    .await;
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
