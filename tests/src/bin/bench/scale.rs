//! The scale of the table and the swap: one route against 1,000 (req/s, resident memory,
//! restart until every route serves), a deploy of bytes the server knows against a compile,
//! and the swap, from a deploy of compiled bytes to the first request on the new version and
//! the table swap alone as the server logs it (`swap_us` on "version activated").

use std::path::Path;
use std::time::{Duration, Instant};

use handoff_tests::{Connection, guests};
use http::StatusCode;

use super::table::{Plan, Table, Target};
use super::{Killed, SWAPS, ms, put_route, rss, start_handoff_with};

/// Routes on the large server.
const ROUTES: usize = 1_000;
/// Swaps timed.
const SWAPS_TIMED: usize = 40;
/// The server's log filter: warnings, and the deploy module's activation lines.
const LOG: &str = "warn,handoff::deploy=info";

fn serve(handoff: &str, dir: &Path) -> (Killed, std::net::SocketAddr, std::net::SocketAddr) {
    let dir = dir.to_str().expect("a UTF-8 path");
    start_handoff_with(handoff, &["--data-dir", dir], LOG)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// PUTs `wasm` to `route` and waits for its first 200; returns how long that took.
async fn deploy_until_served(
    admin: std::net::SocketAddr,
    conn: &mut Connection,
    route: &str,
    wasm: &[u8],
) -> Duration {
    let t = Instant::now();
    put_route(admin, route, wasm).await;
    let (status, _) = conn.get(&format!("/{route}")).await.expect("request");
    assert_eq!(status, StatusCode::OK, "{route}");
    t.elapsed()
}

/// Starts a server on `dir` and times it from the spawn until each of `routes` has answered.
async fn restart(handoff: &str, dir: &Path, routes: usize) -> (Killed, Addrs, Duration) {
    let t = Instant::now();
    let (server, data, admin) = serve(handoff, dir);
    let mut conn = Connection::open(data).await;
    for i in 0..routes {
        let (status, _) = conn.get(&format!("/r{i}")).await.expect("request");
        assert_eq!(status, StatusCode::OK, "r{i} after the restart");
    }
    (server, (data, admin), t.elapsed())
}

/// A server's data and admin addresses.
type Addrs = (std::net::SocketAddr, std::net::SocketAddr);

/// The scale and swap rows.
pub async fn rows(opts: &super::Options, hello: &[u8], table: &mut Table, plan: Plan) {
    let dirs = tempfile::tempdir().expect("temp dir");
    let (one_dir, many_dir) = (dirs.path().join("one"), dirs.path().join("many"));
    let (one, one_data, one_admin) = serve(&opts.handoff, &one_dir);
    let mut conn = Connection::open(one_data).await;
    let compiled = deploy_until_served(one_admin, &mut conn, "r0", hello).await;

    let (many, many_data, many_admin) = serve(&opts.handoff, &many_dir);
    let mut conn = Connection::open(many_data).await;
    deploy_until_served(many_admin, &mut conn, "r0", hello).await;
    let mut known = Vec::with_capacity(ROUTES);
    for i in 1..ROUTES {
        known.push(deploy_until_served(many_admin, &mut conn, &format!("r{i}"), hello).await);
    }
    known.sort_unstable();
    table.row(
        "deploy, PUT to first 200: bytes the server has compiled (p50, of 999) / a compile",
        format!(
            "{:.2} ms (p99 {:.2} ms)",
            ms(percentile(&known, 0.5)),
            ms(percentile(&known, 0.99))
        ),
        format!("{:.1} ms", ms(compiled)),
        Some(ms(percentile(&known, 0.5)) / ms(compiled)),
        "",
    );

    let middle = format!("/r{}", ROUTES / 2);
    table
        .compare(
            "routing",
            ("1,000 routes", &Target::get(many_data, &middle)),
            ("1 route", &Target::get(one_data, "/r0")),
            plan,
            ("≥ 0.98 (flat)", ""),
        )
        .await;
    let (rss_many, rss_one) = (rss(many.0.id()), rss(one.0.id()));
    table.row(
        &format!(
            "resident memory after the load, 1,000 routes / 1 route: {:.0} KiB per route",
            (rss_many.saturating_sub(rss_one)) as f64 / (ROUTES - 1) as f64 / 1024.0
        ),
        format!("{:.1} MiB", rss_many as f64 / (1 << 20) as f64),
        format!("{:.1} MiB", rss_one as f64 / (1 << 20) as f64),
        Some(rss_many as f64 / rss_one as f64),
        "",
    );
    drop((one, many));

    let (many, _, many_took) = restart(&opts.handoff, &many_dir, ROUTES).await;
    drop(many);
    let (_one, (data, admin), one_took) = restart(&opts.handoff, &one_dir, 1).await;
    table.row(
        "restart, spawn to every route served: 1,000 routes / 1 route",
        format!("{:.0} ms", ms(many_took)),
        format!("{:.0} ms", ms(one_took)),
        Some(ms(many_took) / ms(one_took)),
        "",
    );

    // The swap: two versions the server has compiled, deployed in turn.
    let versions = [
        (guests::bytes(guests::TAGGED_V1), "v1"),
        (guests::bytes(guests::TAGGED_V2), "v2"),
    ];
    let mut conn = Connection::open(data).await;
    for (wasm, _) in &versions {
        deploy_until_served(admin, &mut conn, "swap", wasm).await;
    }
    SWAPS.lock().unwrap().clear();
    let mut took = Vec::with_capacity(SWAPS_TIMED);
    for i in 0..SWAPS_TIMED {
        let (wasm, tag) = &versions[i % 2];
        let t = Instant::now();
        put_route(admin, "swap", wasm).await;
        for attempt in 0.. {
            let (status, body) = conn.get("/swap").await.expect("request");
            assert_eq!(status, StatusCode::OK);
            if body.as_ref() == tag.as_bytes() {
                break;
            }
            assert!(attempt < 100, "the new version never answered");
        }
        took.push(t.elapsed());
    }
    took.sort_unstable();
    table.row(
        "swap: deploy of compiled bytes to the first request on the new version (HTTP included)",
        format!("p50 {:.2} ms", ms(percentile(&took, 0.5))),
        format!("p99 {:.2} ms", ms(percentile(&took, 0.99))),
        None,
        "",
    );
    let limit = Instant::now() + Duration::from_secs(5);
    while SWAPS.lock().unwrap().len() < SWAPS_TIMED && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut swaps: Vec<Duration> = SWAPS
        .lock()
        .unwrap()
        .iter()
        .map(|us| Duration::from_micros(*us))
        .collect();
    swaps.sort_unstable();
    if swaps.is_empty() {
        println!("  no swap times in the server's log");
        return;
    }
    table.row(
        &format!(
            "swap step alone (table swap until no reader holds the old one, server log, {} swaps): p99 / goal",
            swaps.len()
        ),
        format!(
            "{:.3} ms (p50 {:.3} ms)",
            ms(percentile(&swaps, 0.99)),
            ms(percentile(&swaps, 0.5))
        ),
        "1 ms".to_owned(),
        Some(ms(percentile(&swaps, 0.99)) / 1.0),
        "≤ 1.00",
    );
}
