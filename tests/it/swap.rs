//! The headline promise: swaps under load fail no request, and once a deploy has returned no
//! new request is served by the version it replaced.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use handoff_tests::{Connection, TestServer, guests};
use http::StatusCode;

const CLIENTS: usize = 32;
const MIN_DEPLOYS: usize = 50;
const MIN_DURATION: Duration = Duration::from_secs(5);
/// A bound against hangs only; the run takes about `MIN_DURATION`.
const LIMIT: Duration = Duration::from_secs(120);

struct Deploy {
    issued: Instant,
    returned: Instant,
    tag: &'static str,
}

struct Sample {
    started: Instant,
    finished: Instant,
    tag: String,
}

/// `CLIENTS` keep-alive clients sending `GET /swap` until `stop` (or `LIMIT` after `started`):
/// each answer's body and times, and every failure.
fn load(
    addr: std::net::SocketAddr,
    stop: &Arc<AtomicBool>,
    started: Instant,
) -> Vec<tokio::task::JoinHandle<(Vec<Sample>, Vec<String>)>> {
    (0..CLIENTS)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut conn = Connection::open(addr).await;
                let mut samples = Vec::new();
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < LIMIT {
                    let sent = Instant::now();
                    match conn.get("/swap").await {
                        Ok((StatusCode::OK, body)) => samples.push(Sample {
                            started: sent,
                            finished: Instant::now(),
                            tag: String::from_utf8_lossy(&body).into_owned(),
                        }),
                        Ok((status, body)) => errors.push(format!("{status}: {body:?}")),
                        Err(error) => {
                            errors.push(format!("connection error: {error}"));
                            conn = Connection::open(addr).await;
                        }
                    }
                }
                (samples, errors)
            })
        })
        .collect()
}

/// Every client's answers, once all have stopped; fails on any failed request.
async fn finish(clients: Vec<tokio::task::JoinHandle<(Vec<Sample>, Vec<String>)>>) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut errors = Vec::new();
    for client in clients {
        let (s, e) = client.await.expect("client task");
        samples.extend(s);
        errors.extend(e);
    }
    assert!(
        errors.is_empty(),
        "{} failed requests, first: {:?}",
        errors.len(),
        errors.first()
    );
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_under_load_fails_no_request() {
    swap_soak("").await;
}

/// The same with instance reuse on: versions' idle instances never serve another version, and
/// a retired version's are dropped while its running requests finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_under_load_with_reuse_fails_no_request() {
    swap_soak("?reuse=64").await;
}

/// Deploys alternating versions to `swap` with `query` while `CLIENTS` clients keep it busy.
async fn swap_soak(query: &str) {
    let server = TestServer::start().await;
    let v1 = guests::bytes(guests::TAGGED_V1);
    let v2 = guests::bytes(guests::TAGGED_V2);
    let initial_returned = {
        server.deploy_bytes("swap", query, v1.clone()).await;
        Instant::now()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let test_started = Instant::now();

    let clients = load(server.data, &stop, test_started);

    let mut deploys = vec![Deploy {
        issued: test_started,
        returned: initial_returned,
        tag: "v1",
    }];
    let mut next_is_v2 = true;
    while deploys.len() <= MIN_DEPLOYS || test_started.elapsed() < MIN_DURATION {
        assert!(test_started.elapsed() < LIMIT, "deploys are too slow");
        let (bytes, tag) = if next_is_v2 { (&v2, "v2") } else { (&v1, "v1") };
        let issued = Instant::now();
        let (status, body) = server.deploy_bytes("swap", query, bytes.clone()).await;
        let returned = Instant::now();
        assert_eq!(status, StatusCode::OK, "deploy failed: {body}");
        assert_eq!(body["changed"], true);
        deploys.push(Deploy {
            issued,
            returned,
            tag,
        });
        next_is_v2 = !next_is_v2;
    }
    if query.contains("reuse") {
        // Instances do wait idle for the next requests (the load is still on).
        handoff_tests::eventually("an idle instance under load", LIMIT, || async {
            let (_, metrics) = server.admin(http::Method::GET, "/metrics").await;
            let idle: f64 = metrics
                .as_str()
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("handoff_version_idle_instances{route=\"swap\""))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            (idle > 0.0).then_some(())
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);

    let samples = finish(clients).await;
    assert!(
        samples.len() >= CLIENTS * 10,
        "too few requests to mean anything: {}",
        samples.len()
    );

    // Every response comes from v1 or v2, and from the version the latest returned deploy
    // activated, unless a later deploy began before the response ended.
    let mut seen = [0usize; 2];
    for sample in &samples {
        match sample.tag.as_str() {
            "v1" => seen[0] += 1,
            "v2" => seen[1] += 1,
            other => panic!("a response from neither version: {other:?}"),
        }
        let latest = deploys
            .iter()
            .rposition(|d| d.returned <= sample.started)
            .expect("requests start after the first deploy");
        let overlapped = deploys[latest + 1..]
            .iter()
            .any(|d| d.issued <= sample.finished);
        if !overlapped {
            assert_eq!(
                sample.tag, deploys[latest].tag,
                "a request that started after a deploy returned was served by the older version"
            );
        }
    }
    assert!(seen[0] > 0 && seen[1] > 0, "both versions served: {seen:?}");
    eprintln!(
        "swap under load: {} requests on {CLIENTS} connections, {} deploys in {:?}, 0 errors",
        samples.len(),
        deploys.len() - 1,
        test_started.elapsed()
    );
    server.shutdown().await;
}

/// Rollouts stepping through their weights and promoted, one after another, while clients keep
/// every connection busy: no request fails, every answer comes from one of the two versions,
/// and once a promotion is seen, requests that start later (before the next rollout) get the
/// promoted version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_stepping_and_promoted_under_load_fail_no_request() {
    const ROLLOUTS: usize = 6;
    let server = TestServer::start().await;
    server.deploy("swap", guests::TAGGED_V1).await;
    let versions = [
        (server.upload(guests::TAGGED_V2).await, "v2"),
        (server.upload(guests::TAGGED_V1).await, "v1"),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let test_started = Instant::now();
    let clients = load(server.data, &stop, test_started);

    let mut probe = Connection::open(server.data).await;
    // Each promotion: when it was seen, and when the next rollout was issued.
    let mut promotions: Vec<(Instant, Option<Instant>, &'static str)> = Vec::new();
    for round in 0..ROLLOUTS {
        let (version, tag) = &versions[round % 2];
        let issued = Instant::now();
        if let Some(last) = promotions.last_mut() {
            last.1 = Some(issued);
        }
        let (status, body) = server
            .post_json(
                "/v1/routes/swap/rollout",
                serde_json::json!({
                    "version": version, "steps": [10, 50, 100], "step_time": "50ms",
                    "step_requests": 20, "min_requests": 10
                }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        loop {
            assert!(
                test_started.elapsed() < LIMIT,
                "rollout {round} did not finish"
            );
            let (_, rollout) = server
                .admin(http::Method::GET, "/v1/routes/swap/rollout")
                .await;
            match rollout["state"].as_str() {
                Some("running") => tokio::time::sleep(Duration::from_millis(10)).await,
                Some("promoted") => break,
                other => panic!("rollout {round} ended {other:?}: {rollout}"),
            }
        }
        promotions.push((Instant::now(), None, tag));
        // Requests that start now get the promoted version.
        for _ in 0..20 {
            assert_eq!(
                probe.get("/swap").await.unwrap(),
                (StatusCode::OK, (*tag).into())
            );
        }
    }
    stop.store(true, Ordering::Relaxed);

    let samples = finish(clients).await;
    for sample in &samples {
        assert!(sample.tag == "v1" || sample.tag == "v2", "{:?}", sample.tag);
        let after = promotions.iter().rev().find(|(seen, next, _)| {
            *seen <= sample.started && next.is_none_or(|next| sample.finished < next)
        });
        if let Some((_, _, tag)) = after {
            assert_eq!(
                sample.tag, *tag,
                "a request after a promotion got the old version"
            );
        }
    }
    eprintln!(
        "rollouts under load: {} requests on {CLIENTS} connections, {ROLLOUTS} rollouts promoted in {:?}, 0 errors",
        samples.len(),
        test_started.elapsed()
    );
    server.shutdown().await;
}
