//! Running the real `handoff` binary: one-shot commands under a deadline, and long-running
//! `serve` / `dev` children whose stdout and stderr are collected in the background, whose ready
//! line gives their addresses, and which are killed when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// The binary under test.
pub const HANDOFF: &str = env!("CARGO_BIN_EXE_handoff");

/// Environment that would change what the binary does; cleared for every run.
const AMBIENT: [&str; 17] = [
    "HANDOFF_ADMIN_CA",
    "HANDOFF_ADMIN_TOKEN",
    "HANDOFF_TOKENS_FILE",
    "HANDOFF_ADMIN_URL",
    "HANDOFF_CONFIG",
    "HANDOFF_LISTEN",
    "HANDOFF_ADMIN_LISTEN",
    "HANDOFF_DATA_DIR",
    "HANDOFF_EPHEMERAL",
    "HANDOFF_CLUSTER",
    "HANDOFF_NODE_NAME",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "TRACEPARENT",
    "TRACESTATE",
];

/// What a finished command did.
#[derive(Debug)]
pub struct Output {
    /// Its exit code.
    pub code: i32,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
}

impl Output {
    /// Asserts success and returns stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "expected success: {self:#?}");
        &self.stdout
    }

    /// Asserts exit code `code` and a single-line reason on stderr containing `reason`.
    pub fn fails(&self, code: i32, reason: &str) {
        assert_eq!(self.code, code, "exit code: {self:#?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr: {self:#?}");
        assert!(lines[0].starts_with("handoff: "), "{self:#?}");
        assert!(
            lines[0].contains(reason),
            "stderr lacks {reason:?}: {self:#?}"
        );
    }
}

/// A `handoff` command with a clean environment.
pub fn command(args: &[&str]) -> Command {
    let mut command = Command::new(HANDOFF);
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    for var in AMBIENT {
        command.env_remove(var);
    }
    command
}

/// Runs `handoff ARGS` to completion, killing it if it takes longer than `limit`.
pub async fn run_within(limit: Duration, mut command: Command) -> Output {
    let output = tokio::time::timeout(limit, command.output())
        .await
        .unwrap_or_else(|_| panic!("{command:?} did not finish within {limit:?}"))
        .expect("the binary runs");
    Output {
        code: output
            .status
            .code()
            .expect("exited, not killed by a signal"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `handoff ARGS` to completion (a minute at most).
pub async fn handoff(args: &[&str]) -> Output {
    run_within(Duration::from_secs(60), command(args)).await
}

/// Runs `handoff ARGS` to completion with one environment variable set (a minute at most).
pub async fn handoff_with(args: &[&str], var: &str, value: impl AsRef<std::ffi::OsStr>) -> Output {
    let mut command = command(args);
    command.env(var, value);
    run_within(Duration::from_secs(60), command).await
}

/// A text buffer filled by a background reader.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<String>>);

impl Captured {
    /// Everything read so far.
    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    /// Waits (up to `limit`) until the text so far satisfies `done`.
    pub async fn wait_for(&self, what: &str, limit: Duration, done: impl Fn(&str) -> bool) {
        let started = Instant::now();
        while !done(&self.text()) {
            assert!(
                started.elapsed() < limit,
                "no {what} within {limit:?} in:\n{}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn follow(&self, stream: impl AsyncRead + Unpin + Send + 'static) {
        let buffer = self.0.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut buffer = buffer.lock().unwrap();
                buffer.push_str(&line);
                buffer.push('\n');
            }
        });
    }
}

/// A long-running `handoff serve` or `handoff dev`, killed on drop.
pub struct Running {
    child: Child,
    /// Its stdout so far.
    pub stdout: Captured,
    /// Its stderr so far.
    pub stderr: Captured,
}

/// The addresses of a ready server.
#[derive(Debug, Clone, Copy)]
pub struct Ready {
    /// Data plane.
    pub data: SocketAddr,
    /// Admin API.
    pub admin: SocketAddr,
}

impl Ready {
    /// The admin API's URL, as `--admin` takes it.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }
}

impl Running {
    /// Starts `command` with its output collected.
    pub fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let stdout = Captured::default();
        let stderr = Captured::default();
        stdout.follow(child.stdout.take().expect("piped stdout"));
        stderr.follow(child.stderr.take().expect("piped stderr"));
        Self {
            child,
            stdout,
            stderr,
        }
    }

    /// Waits (up to `limit`) until stdout holds a line for which `pick` returns `Some`.
    pub async fn wait_for_line<T>(
        &mut self,
        what: &str,
        limit: Duration,
        pick: impl Fn(&str) -> Option<T>,
    ) -> T {
        let started = Instant::now();
        loop {
            if let Some(found) = self.stdout.text().lines().find_map(&pick) {
                return found;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the readers drain the pipes before reporting.
                tokio::time::sleep(Duration::from_millis(100)).await;
                panic!(
                    "exited ({status}) before printing {what}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout.text(),
                    self.stderr.text()
                );
            }
            assert!(
                started.elapsed() < limit,
                "no {what} within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                self.stdout.text(),
                self.stderr.text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the ready line and returns the addresses it gives.
    pub async fn ready(&mut self, limit: Duration) -> Ready {
        self.wait_for_line("the ready line", limit, parse_ready)
            .await
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("still running")
    }

    /// Kills the process with SIGKILL (no chance to clean up) and waits for it.
    pub async fn kill9(mut self) {
        self.child.start_kill().expect("sending SIGKILL");
        let _ = self.child.wait().await;
    }

    /// Sends SIGTERM and waits (up to `limit`) for the exit.
    pub async fn terminate(mut self, limit: Duration) -> ExitStatus {
        self.signal("TERM");
        self.exit_within(limit).await
    }

    /// Sends signal `name` (`TERM`, `INT`) without waiting.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("still running");
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .expect("running kill");
        assert!(status.success());
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits (up to `limit`) for the process to exit.
    pub async fn exit_within(&mut self, limit: Duration) -> ExitStatus {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("no exit within {limit:?}\nstderr:\n{}", self.stderr.text()))
            .expect("waiting for the child")
    }
}

/// `handoff ready data=http://A admin=http://B` → the two addresses.
pub fn parse_ready(line: &str) -> Option<Ready> {
    let rest = line.strip_prefix("handoff ready ")?;
    let mut data = None;
    let mut admin = None;
    for part in rest.split_whitespace() {
        let strip = |key: &str| {
            part.strip_prefix(key).and_then(|rest| {
                rest.strip_prefix("http://")
                    .or_else(|| rest.strip_prefix("https://"))
            })
        };
        if let Some(addr) = strip("data=") {
            data = addr.parse().ok();
        } else if let Some(addr) = strip("admin=") {
            admin = addr.parse().ok();
        }
    }
    Some(Ready {
        data: data?,
        admin: admin?,
    })
}

/// The command `handoff serve` on ephemeral ports with `extra` flags.
pub fn serve_command(extra: &[&str]) -> Command {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--ephemeral",
    ];
    args.extend_from_slice(extra);
    command(&args)
}

/// `handoff serve` on ephemeral ports with `extra` flags, once it is ready.
pub async fn serve(extra: &[&str]) -> (Running, Ready) {
    let mut server = Running::spawn(serve_command(extra));
    let ready = server.ready(Duration::from_secs(30)).await;
    (server, ready)
}

/// The command `handoff serve` on ephemeral ports keeping its state in `dir`.
pub fn serve_in_command(dir: &Path) -> Command {
    command(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.to_str().unwrap(),
    ])
}

/// `handoff serve` on ephemeral ports keeping its state in `dir`, once it is ready.
pub async fn serve_in(dir: &Path) -> (Running, Ready) {
    let mut server = Running::spawn(serve_in_command(dir));
    let ready = server.ready(Duration::from_secs(30)).await;
    (server, ready)
}

/// A GET on the data plane: status and body (within a minute).
pub async fn get(ready: &Ready, path: &str) -> (u16, String) {
    let request = handoff_tests::send(ready.data, handoff_tests::get_request(path));
    let (status, body) = tokio::time::timeout(Duration::from_secs(60), request)
        .await
        .unwrap_or_else(|_| panic!("GET {path} did not finish within a minute"));
    (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
}

/// A directory under the workspace's target directory shared by every run of these tests, so
/// nested wasm builds compile their dependencies once.
pub fn shared_target_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

/// A cargo command in `dir` as a person would run it: the host-only flags of this test build
/// removed, the target directory shared across runs.
pub fn cargo(dir: &Path, target_dir: &Path) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target_dir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
    ] {
        command.env_remove(var);
    }
    command
}

/// A GET on the data plane: status, `x-request-id` (if any) and body.
pub async fn get_with_id(ready: &Ready, path: &str) -> (u16, Option<String>, String) {
    let mut conn = handoff_tests::Connection::open(ready.data).await;
    let exchange = async {
        let response = conn
            .send(handoff_tests::get_request(path))
            .await
            .expect("an answer");
        let status = response.status().as_u16();
        let id = response
            .headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, id, String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path} did not finish within a minute"))
}

/// GETs `path`, whose guest panics with `message`: the 500's problem document names the id
/// the response carries, and `server`'s log says it in a `WARN guest failed` line with that id
/// (waited for). Returns the id.
pub async fn get_trap(server: &Running, ready: &Ready, path: &str, message: &str) -> String {
    let (status, id, body) = get_with_id(ready, path).await;
    assert_eq!(status, 500, "{body}");
    let id = id.expect("x-request-id on the trap's 500");
    assert!(body.contains(&id), "the problem document names it: {body}");
    let field = format!("request_id={id}");
    server
        .stderr
        .wait_for("the trap in the log", Duration::from_secs(30), |text| {
            text.lines().any(|l| {
                l.contains(&field)
                    && l.contains("WARN")
                    && l.contains("guest failed")
                    && l.contains(message)
            })
        })
        .await;
    id
}

/// The JSON a command printed (`--json`); panics, showing the text, if it is not JSON.
pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}
