//! The key-value part of `just bench`: get and set latency as a guest sees it (the plain
//! `wit-bindgen` test guest times one call with the monotonic clock and answers the
//! nanoseconds), and the throughput of a counter route (every request an atomic increment,
//! durable before it answers) against a plain route of the same guest (a path that touches no
//! bucket), in interleaved runs on one server.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use handoff_tests::{Connection, guests};
use http::StatusCode;

use super::{Samples, Stats, load, ms, print_table, put_route, start_handoff, table};

/// Runs of each route, interleaved.
const ROUNDS: u32 = 4;
/// Connections timing single calls.
const TIMING_CONNECTIONS: usize = 8;

/// Drives `connections` connections at `path` for `duration`; collects the guest-measured call
/// times the answers carry.
async fn timed(
    addr: SocketAddr,
    path: &str,
    connections: usize,
    duration: Duration,
) -> Vec<Duration> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let path = path.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut conn = Connection::open(addr).await;
            let mut took = Vec::new();
            while started.elapsed() < duration {
                if let Ok((StatusCode::OK, body)) = conn.get(&path).await
                    && let Ok(ns) = std::str::from_utf8(&body).unwrap_or("").parse::<u64>()
                {
                    took.push(Duration::from_nanos(ns));
                }
            }
            took
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("timing task"));
    }
    all.sort_unstable();
    all
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// The key-value benchmark against the `handoff` binary at `handoff`.
/// The key-value section; with `listing`, the listing neighbour too (a full `just bench` has
/// it as a row of the main table, [`listing_row`]).
pub async fn bench(handoff: &str, connections: usize, seconds: u64, listing: bool) {
    println!();
    println!("key-value store (kv.redb, group commit, fsync per batch):");
    let (_server, data, admin) = start_handoff(handoff, &[]);
    put_route(admin, "kv", &guests::bytes(guests::KV_PLAIN)).await;
    let mut conn = Connection::open(data).await;
    let (status, _) = conn.get("/kv/set?key=k&value=v").await.expect("seed");
    assert_eq!(status, StatusCode::OK);
    let per_run = Duration::from_secs(seconds.max(ROUNDS as u64)) / ROUNDS;

    // Call latency inside the guest, under TIMING_CONNECTIONS concurrent requests.
    let gets = timed(data, "/kv/timed-get?key=k", TIMING_CONNECTIONS, per_run).await;
    let sets = timed(data, "/kv/timed-set?key=k", TIMING_CONNECTIONS, per_run).await;
    println!(
        "{:<22} {:>12} {:>10} {:>10} {:>10}",
        "call (in the guest)", "calls", "p50 ms", "p99 ms", "max ms"
    );
    for (name, took) in [("get, 100 B", &gets), ("set, 100 B (durable)", &sets)] {
        println!(
            "{:<22} {:>12} {:>10.3} {:>10.3} {:>10.3}",
            name,
            took.len(),
            ms(percentile(took, 0.50)),
            ms(percentile(took, 0.99)),
            ms(took.last().copied().unwrap_or_default())
        );
    }

    // A counter route against a plain one, interleaved.
    let routes = [
        ("counter route", "/kv/incr?key=c"),
        ("plain route", "/kv/about"),
    ];
    for (_, path) in routes {
        load(data, path, connections, Duration::from_secs(1)).await;
    }
    let mut samples = [Samples::default(), Samples::default()];
    for round in 0..ROUNDS {
        let mut order = [0, 1];
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            samples[i].add(load(data, routes[i].1, connections, per_run).await);
        }
    }
    let [counter, plain] = samples.map(Samples::stats);
    println!();
    print_table(
        "route",
        &[
            ("counter (increment)", &counter),
            ("plain (same guest)", &plain),
        ],
    );
    println!(
        "ratio counter/plain: throughput {:.2}x, p50 {:.2}x, p99 {:.2}x",
        counter.rps / plain.rps,
        ms(counter.p50) / ms(plain.p50),
        ms(counter.p99) / ms(plain.p99)
    );
    // A fresh connection: the first one sat idle through the runs (past --idle-timeout).
    let mut conn = Connection::open(data).await;
    let (_, body) = conn.get("/kv/get?key=c").await.expect("the counter");
    println!(
        "counter after the runs: {} (the runs' {} increments, and the warm-up's)",
        String::from_utf8_lossy(&body),
        counter.requests
    );
    if listing {
        listing_neighbour(data, admin, connections, per_run).await;
    }
}

/// Issue 21 item 4's goal as a row of the main table: a neighbour route's p99 while guests
/// list a full bucket in a loop, over its p99 alone (goal: under 2×), on a server of its own.
pub async fn listing_row(
    handoff: &str,
    connections: usize,
    seconds: u64,
    table: &mut table::Table,
) {
    let (_server, data, admin) = start_handoff(handoff, &[]);
    let per_run = Duration::from_secs(seconds.max(ROUNDS as u64)) / ROUNDS;
    let (alone, beside, listings) = listing_neighbour(data, admin, connections, per_run).await;
    table.row(
        &format!(
            "kv listing: neighbour p99 beside {LISTERS} clients listing {LISTED_KEYS} keys ({listings} listings) / alone"
        ),
        format!("{:.2} ms", ms(beside.p99)),
        format!("{:.2} ms", ms(alone.p99)),
        Some(ms(beside.p99) / ms(alone.p99)),
        "< 2×",
    );
}

/// Keys (of [`LISTED_VALUE_BYTES`] each) in the bucket a guest lists in a loop.
const LISTED_KEYS: usize = 10_000;
/// The size of each listed key's value.
const LISTED_VALUE_BYTES: usize = 8 << 10;
/// Connections that list the full bucket, one listing per request, while the neighbour runs.
const LISTERS: usize = 2;

/// A neighbour route's latency alone, then while guests list a full bucket in a loop (every
/// listing walks 10,000 keys of 8 KiB values, ten pages): the listing must not stall the
/// workers that serve the neighbour. `bench/cluster.rs` runs it on a cluster node too.
pub(super) async fn listing_neighbour(
    data: SocketAddr,
    admin: SocketAddr,
    connections: usize,
    per_run: Duration,
) -> (Stats, Stats, usize) {
    put_route(admin, "lists", &guests::bytes(guests::KV_PLAIN)).await;
    put_route(admin, "neighbour", &guests::bytes(guests::KV_PLAIN)).await;
    // Fill the bucket over 16 connections (group commit takes many writes per fsync).
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut fillers = Vec::new();
    for _ in 0..16 {
        let next = next.clone();
        fillers.push(tokio::spawn(async move {
            let mut conn = Connection::open(data).await;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= LISTED_KEYS {
                    return;
                }
                let path = format!("/lists/big?key=key-{i:05}&bytes={LISTED_VALUE_BYTES}");
                let (status, body) = conn.get(&path).await.expect("a fill request");
                assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
            }
        }));
    }
    for filler in fillers {
        filler.await.expect("filler");
    }
    let mut conn = Connection::open(data).await;
    let (status, body) = conn.get("/lists/list").await.expect("a listing");
    assert_eq!(status, StatusCode::OK);
    let listed = body.split(|b| *b == b'\n').count();
    assert_eq!(listed, LISTED_KEYS, "the listing sees every key");
    load(
        data,
        "/neighbour/about",
        connections,
        Duration::from_secs(1),
    )
    .await;
    let alone = load(data, "/neighbour/about", connections, per_run)
        .await
        .stats();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listings = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut listers = Vec::new();
    for _ in 0..LISTERS {
        let (stop, listings) = (stop.clone(), listings.clone());
        listers.push(tokio::spawn(async move {
            let mut conn = Connection::open(data).await;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((StatusCode::OK, _)) = conn.get("/lists/list").await {
                    listings.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    let beside = load(data, "/neighbour/about", connections, per_run)
        .await
        .stats();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for lister in listers {
        lister.await.expect("lister");
    }
    println!();
    println!(
        "a neighbour route while {LISTERS} clients list a bucket of {LISTED_KEYS} keys x {} KiB in a loop:",
        LISTED_VALUE_BYTES >> 10
    );
    print_table(
        "neighbour",
        &[("alone", &alone), ("beside the listings", &beside)],
    );
    let listings = listings.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "full listings meanwhile: {listings}; neighbour p99 ratio {:.2}x (goal: under 2x)",
        ms(beside.p99) / ms(alone.p99)
    );
    (alone, beside, listings)
}
