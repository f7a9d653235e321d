//! A guest not built with our SDK, in another language: the Python app in
//! `tests/guests/kv-python` (componentize-py, from PyPI; `.ci/run` installs it), importing
//! `wasi:keyvalue@0.2.0-draft2`, built from its committed sources at test time and counting
//! correctly under concurrent clients, on one server and across a cluster's nodes (its 19 MB
//! travel through JetStream's Object Store).

use std::path::{Path, PathBuf};
use std::process::Command;

use handoff_tests::nats::{NatsServer, until_live};
use handoff_tests::{Connection, TestServer, node_config};
use http::StatusCode;

/// The `componentize-py` binary: `$HANDOFF_COMPONENTIZE_PY`, else the one
/// `tests/install-tools` installs (`target/tools-venv`), else `componentize-py` on the PATH.
fn componentize_py() -> String {
    std::env::var("HANDOFF_COMPONENTIZE_PY").unwrap_or_else(|_| {
        let installed = handoff_tests::tools_venv().join("bin/componentize-py");
        if installed.is_file() {
            installed.display().to_string()
        } else {
            "componentize-py".into()
        }
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The Python guest, built once for this test binary's tests.
async fn python_guest() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    tokio::task::spawn_blocking(|| BUILT.get_or_init(build).clone())
        .await
        .unwrap()
}

/// Builds the Python guest into the test's target directory and returns its path.
fn build() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let app = root.join("tests/guests/kv-python");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kv-python");
    let _ = std::fs::remove_dir_all(&out);
    // The app's world and the wasi:http packages, with the repository's wasi:keyvalue draft2.
    let wit = out.join("wit");
    copy_dir(&app.join("wit"), &wit);
    copy_dir(
        &root.join("wit/keyvalue-0.2.0-draft2"),
        &wit.join("deps/keyvalue"),
    );
    let wasm = out.join("kv_python.wasm");
    let output = Command::new(componentize_py())
        .arg("-d")
        .arg(&wit)
        .args(["-w", "app", "componentize", "app", "-p"])
        .arg(&app)
        .arg("-o")
        .arg(&wasm)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{}` ({e}); run `tests/install-tools` (it installs \
                 componentize-py 0.25.1 into target/tools-venv) or set HANDOFF_COMPONENTIZE_PY",
                componentize_py()
            )
        });
    assert!(
        output.status.success(),
        "componentize-py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    wasm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_guest_counts_correctly_with_wasi_keyvalue_draft2() {
    const CLIENTS: usize = 4;
    const EACH: usize = 50;
    let wasm = python_guest().await;
    let server = TestServer::start().await;
    let (status, body) = server
        .deploy_bytes("py", "", std::fs::read(&wasm).unwrap())
        .await;
    assert!(status.is_success(), "{body}");
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let addr = server.data;
        clients.push(tokio::spawn(async move {
            let mut conn = Connection::open(addr).await;
            for _ in 0..EACH {
                let (status, body) = conn.get("/py/incr?key=hits").await.unwrap();
                assert_eq!(status, StatusCode::OK, "{body:?}");
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    let (status, body) = server.get("/py/get?key=hits").await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, (CLIENTS * EACH).to_string())
    );
    assert_eq!(
        server.get("/py/get?key=none").await.0,
        StatusCode::NOT_FOUND
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_guest_deployed_to_a_cluster_counts_across_its_nodes() {
    const EACH: usize = 40;
    let wasm = python_guest().await;
    let bytes = std::fs::read(&wasm).unwrap();
    // componentize-py's components are large (CPython inside): the Object Store carries them.
    assert!(bytes.len() > 10 << 20, "{} bytes", bytes.len());
    let nats = NatsServer::start();
    let url = nats.url();
    // Each node compiles CPython's component (20-30 s on a busy 2-core machine, one after the
    // other): the change waits for both, so the nodes wait longer than the usual 20 s.
    let mut nodes = Vec::new();
    for name in ["a", "b"] {
        let mut config = node_config(&url, name, None);
        if let Some(cluster) = config.cluster.as_mut() {
            cluster.timeout = std::time::Duration::from_secs(120);
        }
        nodes.push(TestServer::start_with(config).await);
    }
    for node in &nodes {
        until_live(node, nodes.len()).await;
    }
    // Through a; when it returns, b fetched the bytes from the Object Store, compiled them and
    // serves them.
    let (status, body) = nodes[0].deploy_bytes("py", "", bytes).await;
    assert!(status.is_success(), "{body}");
    assert_eq!(body["cluster"]["converged"], true, "{body}");
    let mut conns = Vec::new();
    for node in &nodes {
        conns.push(Connection::open(node.data).await);
    }
    for _ in 0..EACH {
        for conn in &mut conns {
            let (status, body) = conn.get("/py/incr?key=hits").await.unwrap();
            assert_eq!(status, StatusCode::OK, "{body:?}");
        }
    }
    for node in &nodes {
        let (status, body) = node.get("/py/get?key=hits").await;
        assert_eq!((status, body), (StatusCode::OK, (2 * EACH).to_string()));
    }
    for node in nodes {
        node.shutdown().await;
    }
}
