//! Guests built with our SDK are plain `wasi:http/proxy` components: they run unchanged on the
//! reference host, `wasmtime serve` (wasmtime-cli 48.0.8, installed by `.ci/run`). The WASI 0.3
//! guests other toolchains build (`spin-sdk` 7, the `wasip3` crate) serve there too: the
//! reference the tests in `toolchains.rs` compare handoff with.

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use handoff_tests::{Connection, TestServer, guests};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// The `wasmtime` binary: `$HANDOFF_WASMTIME`, else `wasmtime` on the PATH.
fn wasmtime() -> String {
    std::env::var("HANDOFF_WASMTIME").unwrap_or_else(|_| "wasmtime".into())
}

/// Starts `wasmtime serve -Scli` on `guest` with `env` and returns it with its address.
async fn wasmtime_serve(
    guest: &str,
    env: &[&str],
) -> (tokio::process::Child, std::net::SocketAddr) {
    let mut command = Command::new(wasmtime());
    command.args(["serve", "-Scli", "--addr", "127.0.0.1:0"]);
    for pair in env {
        command.args(["--env", pair]);
    }
    let mut child = command
        .arg(guest)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{} serve` ({e}); install it with \
                 `cargo install wasmtime-cli --version 48.0.8 --locked` or set HANDOFF_WASMTIME",
                wasmtime()
            )
        });
    // It announces its address on stderr.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("Serving HTTP on http://") {
                return rest.trim_end_matches('/').parse().unwrap();
            }
        }
        // (The rest of stderr is not read after this: the guests here print nothing.)
        panic!("wasmtime serve exited without serving");
    })
    .await
    .expect("wasmtime serve printed its address within a minute");
    (child, addr)
}

fn example(name: &str) -> &'static str {
    guests::ALL
        .iter()
        .find(|p| p.ends_with(&format!("/{name}.wasm")))
        .unwrap_or_else(|| panic!("example {name} was not built"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_guests_run_unchanged_on_wasmtime_serve() {
    let (_hello, addr) = wasmtime_serve(example("hello"), &[]).await;
    let mut conn = Connection::open(addr).await;
    let (status, body) = conn.get("/hello/there").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "Hello from handoff! You asked for GET /hello/there\n");

    let (_config, addr) = wasmtime_serve(example("config"), &["GREETING=Bonjour"]).await;
    let mut conn = Connection::open(addr).await;
    let (status, body) = conn.get("/config").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        String::from_utf8_lossy(&body).contains("Bonjour"),
        "{body:?}"
    );

    let (_streaming, addr) = wasmtime_serve(example("streaming"), &[]).await;
    let mut conn = Connection::open(addr).await;
    let (status, body) = conn.get("/streaming?chunks=3&delay_ms=10").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        String::from_utf8_lossy(&body).lines().count(),
        3,
        "{body:?}"
    );
}

/// `POST /app/items` with a 12-byte body on `addr`: status, the `x-guest` header, body.
async fn post_items(addr: std::net::SocketAddr) -> (StatusCode, String, String) {
    let request = Request::builder()
        .method(Method::POST)
        .uri("/app/items")
        .header("host", "handoff.test")
        .body(Full::new(Bytes::from_static(b"twelve bytes")))
        .unwrap();
    let mut conn = Connection::open(addr).await;
    let response = conn.send(request).await.expect("a response");
    let status = response.status();
    let guest = response
        .headers()
        .get("x-guest")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, guest, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasi_0_3_guests_of_other_toolchains_serve_on_wasmtime_serve() {
    for (guest, name, says) in [
        (guests::SPIN_HELLO, "spin-sdk", "spin"),
        (guests::WASIP3_HELLO, "wasip3", "wasip3"),
    ] {
        let (_serve, addr) = wasmtime_serve(guest, &[]).await;
        let (status, header, body) = post_items(addr).await;
        assert_eq!((status, header.as_str()), (StatusCode::OK, name), "{body}");
        // (`wasmtime serve` hands 0.3 guests a URI that these toolchains print as
        // `//app/items`; the method and the body they read are what is compared.)
        assert!(
            body.starts_with(&format!("{says} POST /")) && body.ends_with("/app/items 12\n"),
            "{name}: {body:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_async_sdk_example_runs_its_lookups_at_once_on_wasmtime_serve() {
    let (_lookups, addr) = wasmtime_serve(example("lookups"), &[]).await;
    let mut conn = Connection::open(addr).await;
    let (status, body) = conn.get("/lookups?n=4&delay_ms=250").await.unwrap();
    let body = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, StatusCode::OK, "{body}");
    let lines: Vec<&str> = body.lines().collect();
    // Started slowest first, answered fastest first: the lookups waited at the same time.
    assert_eq!(
        lines[..4],
        [
            "lookup 1 answered after 250 ms",
            "lookup 2 answered after 500 ms",
            "lookup 3 answered after 750 ms",
            "lookup 4 answered after 1000 ms",
        ],
        "{body}"
    );
    let total: u64 = lines[4]
        .strip_prefix("all 4 in ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("{body}"));
    assert!(
        (1000..2500).contains(&total),
        "one after another the lookups take 2500 ms: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasi_0_3_guests_answer_on_handoff_as_on_wasmtime_serve() {
    let server = TestServer::start().await;
    for guest in [guests::SPIN_HELLO, guests::WASIP3_HELLO] {
        let (_serve, addr) = wasmtime_serve(guest, &[]).await;
        server.deploy("app", guest).await;
        let reference = post_items(addr).await;
        let ours = post_items(server.data).await;
        assert_eq!(
            ours, reference,
            "{guest} on handoff, then on wasmtime serve"
        );
    }
    server.shutdown().await;
}
