//! What a version's requests share, built once with the version: its `/data` directory is
//! opened then, not per request. Changes to the files show at once; a directory replaced as a
//! whole shows from the route's next activation.

use std::time::{Duration, Instant};

use handoff::config::Config;
use handoff_tests::{Connection, TestServer, guests};
use http::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_opens_its_directory_once() {
    let root = tempfile::tempdir().unwrap();
    let site = root.path().join("site");
    std::fs::create_dir(&site).unwrap();
    std::fs::write(site.join("hello.txt"), "one").unwrap();
    let server = TestServer::start_with(Config {
        guest_dirs: Some(root.path().to_path_buf()),
        ..Config::ephemeral()
    })
    .await;
    let hostile = guests::bytes(guests::HOSTILE);
    let (code, body) = server
        .deploy_bytes("files", "?dir=site", hostile.clone())
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let read = || async { server.get("/files/data").await.1 };
    assert_eq!(read().await, "one; write denied; escape denied");

    // A file changed in place: the next request reads the new contents.
    std::fs::write(site.join("hello.txt"), "two").unwrap();
    assert_eq!(read().await, "two; write denied; escape denied");

    // The directory replaced as a whole: this version keeps the one it opened...
    std::fs::rename(&site, root.path().join("site-old")).unwrap();
    std::fs::create_dir(&site).unwrap();
    std::fs::write(site.join("hello.txt"), "three").unwrap();
    assert_eq!(read().await, "two; write denied; escape denied");

    // ... and the next version of the route (here: new config) opens the new one.
    let (code, body) = server
        .deploy_bytes("files", "?config=NEXT=1", hostile)
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(read().await, "three; write denied; escape denied");
    server.shutdown().await;
}

/// Latencies of `connections` keep-alive clients sending `GET path` for `time`.
async fn load(
    data: std::net::SocketAddr,
    path: &str,
    connections: usize,
    time: Duration,
) -> Vec<Duration> {
    let mut clients = Vec::new();
    for _ in 0..connections {
        let path = path.to_owned();
        clients.push(tokio::spawn(async move {
            let mut connection = Connection::open(data).await;
            let mut latencies = Vec::new();
            let started = Instant::now();
            while started.elapsed() < time {
                let sent = Instant::now();
                let (status, _) = connection.get(&path).await.expect("request");
                assert_eq!(status, StatusCode::OK);
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for client in clients {
        all.extend(client.await.expect("client"));
    }
    all
}

/// A measurement, not a check (run it with `cargo test --release -p handoff-tests --test it
/// host::what_a_config_and_a_directory_cost_per_request -- --ignored --nocapture`): requests/s
/// and latency of a route with 16 config pairs and a mounted directory against the same guest
/// on a route with neither, 8 connections, 6 interleaved rounds of 3 s each. Before the host
/// template, every request opened the directory and copied the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run it in release mode"]
async fn what_a_config_and_a_directory_cost_per_request() {
    const ROUND: Duration = Duration::from_secs(3);
    const ROUNDS: u32 = 6;
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("site")).unwrap();
    std::fs::write(root.path().join("site/hello.txt"), "hi").unwrap();
    let server = TestServer::start_with(Config {
        guest_dirs: Some(root.path().to_path_buf()),
        ..Config::ephemeral()
    })
    .await;
    let hostile = guests::bytes(guests::HOSTILE);
    let mut query = String::from("?dir=site");
    for i in 0..16 {
        query.push_str(&format!("&config=KEY_{i}={}", "v".repeat(64)));
    }
    let (code, body) = server.deploy_bytes("full", &query, hostile.clone()).await;
    assert!(code.is_success(), "{body}");
    let (code, body) = server.deploy_bytes("plain", "", hostile).await;
    assert!(code.is_success(), "{body}");
    load(server.data, "/full/ok", 8, Duration::from_secs(2)).await;
    let mut results = [
        ("16 config pairs and a directory", "/full/ok", Vec::new()),
        ("neither", "/plain/ok", Vec::new()),
    ];
    for round in 0..ROUNDS {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let latencies = load(server.data, results[i].1, 8, ROUND).await;
            results[i].2.extend(latencies);
        }
    }
    let mut rates = Vec::new();
    for (name, _, latencies) in &mut results {
        latencies.sort();
        let n = latencies.len();
        let rate = n as f64 / (ROUND * ROUNDS).as_secs_f64();
        rates.push(rate);
        println!(
            "{name}: {rate:.0} req/s, p50 {:.3} ms, p99 {:.3} ms ({n} requests)",
            latencies[n / 2].as_secs_f64() * 1e3,
            latencies[n * 99 / 100].as_secs_f64() * 1e3
        );
    }
    println!("ratio: {:.2}x", rates[0] / rates[1]);
    server.shutdown().await;
}
