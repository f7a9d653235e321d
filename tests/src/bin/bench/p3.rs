//! WASI 0.3 rows: the `spin-sdk` 7 hello (a `wasi:http/service` component) on handoff against
//! `wasmtime serve -O pooling-allocator` 48.0.8, same component, same run: with shared
//! instances (handoff `reuse=128&instance-concurrency=16` against wasmtime serve's 0.3
//! defaults, 128 × 16) and with a fresh instance per request on both; then handoff's resident
//! memory with both engines loaded (a 0.2 and a 0.3 route served).

use handoff_tests::guests;

use super::peers::wasmtime_serve;
use super::table::{Plan, Table, Target};
use super::{Options, put_route_with, rss, start_handoff};

/// The rows.
pub async fn rows(opts: &Options, hello02: &[u8], table: &mut Table, plan: Plan) {
    let spin = guests::bytes(guests::SPIN_HELLO);
    let (server, data, admin) = start_handoff(&opts.handoff, &[]);
    put_route_with(admin, "p3", "", &spin).await;
    put_route_with(
        admin,
        "p3-shared",
        "?reuse=128&instance-concurrency=16",
        &spin,
    )
    .await;
    let shared_peer = wasmtime_serve(&opts.wasmtime, guests::SPIN_HELLO, &[]);
    let fresh_peer = wasmtime_serve(
        &opts.wasmtime,
        guests::SPIN_HELLO,
        &[
            "--max-instance-reuse-count",
            "1",
            "--max-instance-concurrent-reuse-count",
            "1",
        ],
    );
    let (Some(shared_peer), Some(fresh_peer)) = (shared_peer, fresh_peer) else {
        return;
    };
    table
        .compare(
            "WASI 0.3 hello (spin-sdk 7), shared instances 128 × 16",
            (
                "handoff",
                &Target::get(data, "/p3-shared").pid(server.0.id()),
            ),
            (
                "wasmtime serve (pooling, 0.3 defaults)",
                &Target::get(shared_peer.1, "/").pid(shared_peer.0.0.id()),
            ),
            plan,
            ("≥ 1.10", "≤ 1.00"),
        )
        .await;
    table
        .compare(
            "WASI 0.3 hello (spin-sdk 7), fresh instances",
            ("handoff", &Target::get(data, "/p3").pid(server.0.id())),
            (
                "wasmtime serve (pooling, 1 × 1)",
                &Target::get(fresh_peer.1, "/").pid(fresh_peer.0.0.id()),
            ),
            plan,
            ("", ""),
        )
        .await;
    // Both engines loaded: a 0.2 route served beside the 0.3 ones.
    put_route_with(admin, "p2", "", hello02).await;
    let mut conn = handoff_tests::Connection::open(data).await;
    for path in ["/p2", "/p3", "/p3-shared"] {
        let (status, _) = conn.get(path).await.expect("a request");
        assert!(status.is_success(), "{path}: {status}");
    }
    let with_both = rss(server.0.id());
    let only_03 = rss(shared_peer.0.0.id());
    table.row(
        "resident memory after the rows above, both engines loaded (handoff) / wasmtime serve (0.3)",
        format!("{:.1} MiB", with_both as f64 / f64::from(1 << 20)),
        format!("{:.1} MiB", only_03 as f64 / f64::from(1 << 20)),
        Some(with_both as f64 / only_03.max(1) as f64),
        "",
    );
    drop((shared_peer, fresh_peer));
}
