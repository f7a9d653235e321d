//! Guests built with other standard tools than our SDK, as users build them: `wstd` (Rust,
//! `tests/guests/wstd-hello`), componentize-js (JavaScript, `tests/guests/js-hello`, built
//! at test time with the `componentize-js` that `tests/install-tools` installs), and two WASI
//! 0.3 toolchains: the Spin SDK 7 (`tests/guests/spin-hello`) and the `wasip3` crate's
//! `http_compat` layer (`tests/guests/wasip3-hello`). Each deploys, reads a request body,
//! answers with its own headers, and swaps with a version from another toolchain (0.3 with 0.2
//! both ways) under load without a failed request.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use handoff_tests::{Connection, TestServer, guests};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};

/// The `componentize-js` command: `$HANDOFF_COMPONENTIZE_JS`, else the one
/// `tests/install-tools` installs (`target/tools-node`), else `componentize-js` on the PATH.
fn componentize_js() -> PathBuf {
    if let Some(path) = std::env::var_os("HANDOFF_COMPONENTIZE_JS") {
        return path.into();
    }
    let installed = handoff_tests::tools_node().join("node_modules/.bin/componentize-js");
    if installed.exists() {
        installed
    } else {
        "componentize-js".into()
    }
}

/// The JavaScript guest, built once for this test binary's tests.
async fn js_guest() -> Vec<u8> {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let path = tokio::task::spawn_blocking(|| BUILT.get_or_init(build_js).clone())
        .await
        .unwrap();
    std::fs::read(path).unwrap()
}

fn build_js() -> PathBuf {
    let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("guests/js-hello");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("js-hello");
    std::fs::create_dir_all(&out).unwrap();
    let wasm = out.join("js_hello.wasm");
    let output = Command::new(componentize_js())
        .arg("--wit")
        .arg(app.join("wit"))
        .args(["-n", "app", "-o"])
        .arg(&wasm)
        .arg(app.join("app.js"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{}` ({e}); run `tests/install-tools` (it installs \
                 componentize-js 0.23.0 into target/tools-node) or set HANDOFF_COMPONENTIZE_JS",
                componentize_js().display()
            )
        });
    assert!(
        output.status.success() && wasm.is_file(),
        "componentize-js failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    wasm
}

/// `method path` with `body`: status, the `x-guest` header, body.
async fn call(
    server: &TestServer,
    method: Method,
    path: &str,
    body: &str,
) -> (StatusCode, String, String) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "handoff.test")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let mut conn = Connection::open(server.data).await;
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

/// Deploys `next` over what serves route `app` while 2 clients send requests: every request
/// answers 200, and once the deploy returned every answer is `next`'s.
async fn swap_under_load(server: &TestServer, next: Vec<u8>, next_says: &'static str) {
    swap_under_load_with(server, "", next, next_says).await;
}

/// [`swap_under_load`], deploying with `query` (the route's settings).
async fn swap_under_load_with(
    server: &TestServer,
    query: &str,
    next: Vec<u8>,
    next_says: &'static str,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    const CLIENTS: usize = 2;
    const AFTER: usize = 20;
    let deployed = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let addr = server.data;
        let (deployed, answered) = (deployed.clone(), answered.clone());
        clients.push(tokio::spawn(async move {
            let mut conn = Connection::open(addr).await;
            let started = Instant::now();
            let mut after = 0;
            while after < AFTER {
                assert!(started.elapsed() < Duration::from_secs(120), "too slow");
                let deployed_before = deployed.load(Ordering::SeqCst);
                let (status, body) = conn.get("/app/load").await.expect("a response");
                assert_eq!(status, StatusCode::OK, "{body:?}");
                answered.fetch_add(1, Ordering::SeqCst);
                if deployed_before {
                    let body = String::from_utf8_lossy(&body).into_owned();
                    assert!(body.starts_with(next_says), "after the deploy: {body}");
                    after += 1;
                }
            }
        }));
    }
    // The deploy lands in the middle of the load.
    handoff_tests::eventually("the load to start", Duration::from_secs(60), || async {
        (answered.load(Ordering::SeqCst) >= 2 * CLIENTS).then_some(())
    })
    .await;
    let (status, body) = server.deploy_bytes("app", query, next).await;
    assert!(status.is_success(), "{body}");
    deployed.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wstd_guest_reads_its_request_and_swaps_with_an_sdk_guest() {
    let server = TestServer::start().await;
    server.deploy("app", guests::WSTD_HELLO).await;
    assert_eq!(
        call(&server, Method::POST, "/app/items", "twelve bytes").await,
        (
            StatusCode::OK,
            "wstd".into(),
            "wstd POST /app/items 12\n".into()
        )
    );
    swap_under_load(&server, guests::bytes(guests::TAGGED_V1), "v1").await;
    swap_under_load(
        &server,
        guests::bytes(guests::WSTD_HELLO),
        "wstd GET /app/load 0",
    )
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_componentize_js_guest_reads_its_request_and_swaps_with_a_rust_guest() {
    let js = js_guest().await;
    let server = TestServer::start().await;
    let (status, body) = server.deploy_bytes("app", "", js.clone()).await;
    assert!(status.is_success(), "{body}");
    assert_eq!(
        call(&server, Method::POST, "/app/items", "twelve bytes").await,
        (
            StatusCode::OK,
            "componentize-js".into(),
            "js POST /app/items 12\n".into()
        )
    );
    swap_under_load(&server, guests::bytes(guests::WSTD_HELLO), "wstd").await;
    swap_under_load(&server, js, "js GET /app/load 0").await;
    server.shutdown().await;
}

/// A WASI 0.3 guest of another toolchain on route `app`: it says it is 0.3, reads its request,
/// then swaps under load with a 0.2 guest and back; the 0.3 versions are deployed with
/// `query`, the 0.2 one with `p2_query`.
async fn a_wasi_0_3_guest_serves_and_swaps_with_0_2(
    guest: &str,
    header: &str,
    says: &'static str,
    (query, p2_query): (&str, &str),
) {
    let server = TestServer::start().await;
    let (status, body) = server
        .deploy_bytes("app", query, guests::bytes(guest))
        .await;
    assert!(status.is_success(), "{body}");
    assert_eq!(server.route("app").await.active.wasi, "0.3");
    assert_eq!(
        call(&server, Method::POST, "/app/items", "twelve bytes").await,
        (
            StatusCode::OK,
            header.into(),
            format!("{says} POST /app/items 12\n")
        )
    );
    swap_under_load_with(&server, p2_query, guests::bytes(guests::TAGGED_V1), "v1").await;
    assert_eq!(server.route("app").await.active.wasi, "0.2");
    let back: &'static str = format!("{says} GET /app/load 0").leak();
    swap_under_load_with(&server, query, guests::bytes(guest), back).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spin_sdk_guest_reads_its_request_and_swaps_with_a_wasi_0_2_guest() {
    a_wasi_0_3_guest_serves_and_swaps_with_0_2(guests::SPIN_HELLO, "spin-sdk", "spin", ("", ""))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spin_sdk_guest_on_shared_instances_swaps_with_a_wasi_0_2_guest() {
    a_wasi_0_3_guest_serves_and_swaps_with_0_2(
        guests::SPIN_HELLO,
        "spin-sdk",
        "spin",
        // A route's settings carry over to its next deploy: the 0.2 version says its own.
        (
            "?reuse=128&instance-concurrency=16",
            "?reuse=128&instance-concurrency=1",
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasip3_guest_reads_its_request_and_swaps_with_a_wasi_0_2_guest() {
    a_wasi_0_3_guest_serves_and_swaps_with_0_2(guests::WASIP3_HELLO, "wasip3", "wasip3", ("", ""))
        .await;
}
