//! Guests built with our SDK are plain `wasi:http/proxy` components: they run unchanged on the
//! reference host, `wasmtime serve` (wasmtime-cli 48.0.8, installed by `.ci/run`).

use std::process::Stdio;
use std::time::Duration;

use handoff_tests::{Connection, guests};
use http::StatusCode;
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
