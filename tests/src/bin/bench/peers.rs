//! handoff against `wasmtime serve` 48.0.8 with the pooling allocator on both, fresh instances
//! and instance reuse, on the `hello` component and on `body4k`, over HTTP/1.1 and h2c.

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use bytes::Bytes;
use handoff_tests::guests;

use super::table::{Plan, Table, Target};
use super::{Killed, Options, put_route_with, start_handoff, wait_for_line};

/// Requests one instance serves when reuse is on, on both servers.
pub const REUSE: u32 = 128;

/// `wasmtime serve` options for the pool settings handoff uses where the kernel has
/// `PAGEMAP_SCAN` (`runtime/src/engine.rs`): the row with them shows what is left of handoff's
/// lead once the reference host's pool is tuned the same way.
const TUNED_POOL: &str =
    "pooling-memory-keep-resident=2097152,pooling-table-keep-resident=65536,pooling-pagemap-scan=y";

/// The request body `body4k` reads.
const BODY: usize = 256;

/// Starts `wasmtime serve` on `component` with `extra` options; `None` (said why) if it cannot.
pub(super) fn wasmtime_serve(
    wasmtime: &str,
    component: &str,
    extra: &[&str],
) -> Option<(Killed, SocketAddr)> {
    let mut child = match Command::new(wasmtime)
        .args([
            "serve",
            "-Scli",
            "-O",
            "pooling-allocator",
            "--addr",
            "127.0.0.1:0",
        ])
        .args(extra)
        .arg(component)
        // The same environment for every server: no library backtraces (wasmtime captures
        // one per dropped store when `RUST_BACKTRACE` is set; handoff turns that off itself).
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            println!(
                "wasmtime serve not run ({wasmtime}: {e}); install it with `cargo install wasmtime-cli --version 48.0.8 --locked`"
            );
            return None;
        }
    };
    let line = wait_for_line(&mut child, |l| {
        l.contains("Serving HTTP on").then(|| l.to_owned())
    });
    let addr = line
        .split_whitespace()
        .last()
        .map(|a| a.trim_start_matches("http://").trim_end_matches('/'))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    Some((Killed(child), addr))
}

/// The rows against `wasmtime serve`.
pub async fn rows(opts: &Options, hello: &[u8], table: &mut Table, plan: Plan) {
    let body4k = guests::bytes(guests::BODY4K);
    let (server, data, admin) = start_handoff(&opts.handoff, &[]);
    let pid = server.0.id();
    let reuse = format!("?reuse={REUSE}");
    put_route_with(admin, "hello", "", hello).await;
    put_route_with(admin, "body", "", &body4k).await;
    put_route_with(admin, "hello-reuse", &reuse, hello).await;
    put_route_with(admin, "body-reuse", &reuse, &body4k).await;
    let reuse_flag = REUSE.to_string();
    let reuse_args = ["--max-instance-reuse-count", reuse_flag.as_str()];
    let tuned_args = ["-O", TUNED_POOL];
    let Some(tuned_peer) = wasmtime_serve(&opts.wasmtime, &opts.guest, &tuned_args) else {
        return;
    };
    let peers = (
        wasmtime_serve(&opts.wasmtime, &opts.guest, &[]),
        wasmtime_serve(&opts.wasmtime, guests::BODY4K, &[]),
        wasmtime_serve(&opts.wasmtime, &opts.guest, &reuse_args),
        wasmtime_serve(&opts.wasmtime, guests::BODY4K, &reuse_args),
    );
    let (Some(hello_peer), Some(body_peer), Some(hello_reuse_peer), Some(body_reuse_peer)) = peers
    else {
        return;
    };
    let post = Bytes::from(vec![b'x'; BODY]);
    // Targets on handoff (`at`) and on a peer (`on`), their servers known to `--cpu`.
    let at = |path: &str| Target::get(data, path).pid(pid);
    let on = |peer: &(Killed, SocketAddr)| Target::get(peer.1, "/").pid(peer.0.0.id());
    let fresh = "wasmtime serve (pooling)";
    let reused = format!("wasmtime serve (pooling, reuse {REUSE})");
    let goals = ("≥ 1.10", "≤ 1.00");
    let tuned = "wasmtime serve (pooling, handoff's pool settings)";
    let rows: [(&str, &str, Target, Target, &str); 7] = [
        (
            "hello, HTTP/1.1",
            "handoff",
            at("/hello"),
            on(&hello_peer),
            fresh,
        ),
        (
            "hello, HTTP/1.1, both pools keeping written memory resident",
            "handoff",
            at("/hello"),
            on(&tuned_peer),
            tuned,
        ),
        (
            "body4k (256 B in, 4 KiB out), HTTP/1.1",
            "handoff",
            at("/body").post(post.clone()),
            on(&body_peer).post(post.clone()),
            fresh,
        ),
        (
            "hello, handoff over h2c (wasmtime serve: HTTP/1.1 only)",
            "handoff h2c",
            at("/hello").h2(),
            on(&hello_peer),
            fresh,
        ),
        (
            "body4k, handoff over h2c",
            "handoff h2c",
            at("/body").post(post.clone()).h2(),
            on(&body_peer).post(post.clone()),
            fresh,
        ),
        (
            "hello, instance reuse",
            "handoff reuse=128",
            at("/hello-reuse"),
            on(&hello_reuse_peer),
            &reused,
        ),
        (
            "body4k, instance reuse",
            "handoff reuse=128",
            at("/body-reuse").post(post.clone()),
            on(&body_reuse_peer).post(post),
            &reused,
        ),
    ];
    for (what, a_name, a, b, b_name) in rows {
        let goals = if what.contains("reuse") {
            ("≥ 1.00", "≤ 1.00")
        } else if what.contains("resident") {
            ("", "")
        } else {
            goals
        };
        table
            .compare(what, (a_name, &a), (b_name, &b), plan, goals)
            .await;
    }
    drop((
        server,
        hello_peer,
        body_peer,
        hello_reuse_peer,
        body_reuse_peer,
        tuned_peer,
    ));
}
