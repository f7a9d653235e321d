//! `just bench`: one table, every row a ratio of two measurements taken in the same run on the
//! same machine with the same load generator, A and B interleaved (`bench/table.rs`):
//!
//! * a WASI 0.3 hello (`spin-sdk` 7) on handoff against `wasmtime serve` on shared instances
//!   (128 × 16) and fresh ones, and resident memory with both engines loaded (`bench/p3.rs`);
//! * handoff against `wasmtime serve -O pooling-allocator` (fresh instances), on the `hello`
//!   component and on `body4k` (reads a small request body, answers 4 KiB), over HTTP/1.1 and
//!   h2c (`wasmtime serve` speaks HTTP/1.1 only); handoff with `reuse=128` against `wasmtime
//!   serve --max-instance-reuse-count 128` (`bench/peers.rs`);
//! * a 50 % sticky split against a plain route, a 100 % shadow against none, and a route with
//!   16 config pairs and a directory against a plain one (`bench/delivery.rs`);
//! * 1 route against 1,000 (req/s, resident memory, restart until all serve), a deploy of known
//!   bytes against a compile, and the swap: deploy to the first request on the new version, and
//!   the table swap alone as the server logs it (`bench/scale.rs`).
//!
//! Then a well-behaved route's latency under attack from a hostile guest and a crowd of slow
//! connections, against the same route without the attack (`bench/attack.rs`), and the
//! key-value store (`bench/kv.rs`), and the cluster (`bench/cluster.rs`: deploy-to-converged
//! across three nodes, a cluster node's data plane against a node on its own), and a takeover
//! of a server with 1,000 routes under load (`bench/takeover.rs`: the longest pause, the time). Other modules add rows to the table, or tables of their own.
//! The load generator runs on the same cores as the servers, so compare A with B, not with
//! numbers from other machines.
//!
//! Usage: `bench [--handoff PATH] [--wasmtime PATH] [--connections N] [--seconds S] [--guest PATH]
//! [--attack loop,grow,recurse,trap,crowd] [--only-attack] [--only-kv] [--only-table]
//! [--only-cluster] [--only-takeover] [--only-peers] [--cpu] [--rows TEXT]`: `--cpu` adds each
//! server's CPU time per request (from `/proc`, its user and system time over the rounds) to
//! each comparison, a figure that a busy machine disturbs much less than requests per second;
//! `--rows TEXT` runs only the comparisons whose name contains TEXT.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use handoff_tests::{Connection, guests};
use http::StatusCode;

#[path = "bench/attack.rs"]
mod attack;
#[path = "bench/cluster.rs"]
mod cluster;
#[path = "bench/delivery.rs"]
mod delivery;
#[path = "bench/kv.rs"]
mod kv;
#[path = "bench/p3.rs"]
mod p3;
#[path = "bench/peers.rs"]
mod peers;
#[path = "bench/scale.rs"]
mod scale;
#[path = "bench/table.rs"]
mod table;
#[path = "bench/takeover.rs"]
mod takeover;

/// Load runs per server, interleaved.
const ROUNDS: u32 = 4;

struct Options {
    handoff: String,
    wasmtime: String,
    connections: usize,
    seconds: u64,
    guest: String,
    attack: Vec<String>,
    only_attack: bool,
    only_kv: bool,
    only_table: bool,
    only_cluster: bool,
    only_takeover: bool,
    only_peers: bool,
    cpu: bool,
    rows: Option<String>,
}

fn options() -> Options {
    let mut opts = Options {
        handoff: "target/release/handoff".into(),
        wasmtime: "wasmtime".into(),
        connections: 32,
        seconds: 6,
        guest: default_guest(),
        attack: ["loop", "grow", "recurse", "trap", "crowd"]
            .map(String::from)
            .to_vec(),
        only_attack: false,
        only_kv: false,
        only_table: false,
        only_cluster: false,
        only_takeover: false,
        only_peers: false,
        cpu: false,
        rows: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| panic!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--handoff" => opts.handoff = value(),
            "--wasmtime" => opts.wasmtime = value(),
            "--connections" => opts.connections = value().parse().expect("a number"),
            "--seconds" => opts.seconds = value().parse().expect("a number"),
            "--guest" => opts.guest = value(),
            "--only-attack" => opts.only_attack = true,
            "--only-kv" => opts.only_kv = true,
            "--only-cluster" => opts.only_cluster = true,
            "--only-takeover" => opts.only_takeover = true,
            "--only-table" => opts.only_table = true,
            "--only-peers" => opts.only_peers = true,
            "--cpu" => opts.cpu = true,
            "--rows" => opts.rows = Some(value()),
            "--attack" => opts.attack = value().split(',').map(String::from).collect(),
            other => panic!("unknown flag {other}"),
        }
    }
    opts
}

/// The hello example when it exists, else the raw-wasip2 tagged guest.
fn default_guest() -> String {
    guests::ALL
        .iter()
        .find(|p| p.ends_with("/hello.wasm"))
        .unwrap_or(&guests::TAGGED_V1)
        .to_string()
}

/// A child process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads the child's stdout/stderr lines until `find` returns an address.
fn wait_for_line(child: &mut Child, find: impl Fn(&str) -> Option<String>) -> String {
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    for stream in [
        Box::new(stdout) as Box<dyn std::io::Read + Send>,
        Box::new(stderr),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if let Some(found) = find(&line) {
            // Keep draining the pipes so the child never blocks on a full pipe; keep the table
            // swap times the server logs (`scale.rs` reads them).
            std::thread::spawn(move || {
                while let Ok(line) = rx.recv() {
                    if let Some(us) = swap_us(&line) {
                        SWAPS.lock().unwrap().push(us);
                    }
                }
            });
            return found;
        }
    }
    panic!("the server printed no address within 60 s");
}

/// Table swap times (µs) from servers' "version activated" log lines.
static SWAPS: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());

/// The `swap_us` field of a log line (text or JSON).
fn swap_us(line: &str) -> Option<u64> {
    let at = line.find("swap_us")? + "swap_us".len();
    let digits: String = line[at..]
        .trim_start_matches(['=', '"', ':', ' '])
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .map(|v| {
            v.trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned()
        })
}

struct Stats {
    requests: usize,
    errors: usize,
    rps: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    /// The server's CPU time per request (`bench --cpu`), if its process was known.
    cpu_per_request: Option<Duration>,
}

/// What one or more load runs against one server recorded.
#[derive(Default)]
struct Samples {
    latencies: Vec<Duration>,
    errors: usize,
    elapsed: Duration,
    /// The server's CPU time over these runs, if its process was known.
    cpu: Option<Duration>,
}

impl Samples {
    fn add(&mut self, other: Samples) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        if let Some(cpu) = other.cpu {
            self.cpu = Some(self.cpu.unwrap_or_default() + cpu);
        }
    }

    fn stats(mut self) -> Stats {
        self.latencies.sort_unstable();
        let all = &self.latencies;
        let pct = |p: f64| {
            all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        Stats {
            requests: all.len(),
            errors: self.errors,
            rps: all.len() as f64 / self.elapsed.as_secs_f64(),
            p50: pct(0.50),
            p99: pct(0.99),
            max: all.last().copied().unwrap_or_default(),
            cpu_per_request: self.cpu.map(|cpu| {
                cpu / u32::try_from((all.len() + self.errors).max(1)).unwrap_or(u32::MAX)
            }),
        }
    }
}

/// Drives `connections` keep-alive connections at `addr` for `duration`.
async fn load(addr: SocketAddr, path: &str, connections: usize, duration: Duration) -> Samples {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let path = path.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut conn = Connection::open(addr).await;
            let mut latencies = Vec::with_capacity(64 * 1024);
            let mut errors = 0;
            while started.elapsed() < duration {
                let t = Instant::now();
                match conn.get(&path).await {
                    Ok((StatusCode::OK, _)) => latencies.push(t.elapsed()),
                    Ok(_) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        conn = Connection::open(addr).await;
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut samples = Samples::default();
    for task in tasks {
        let (l, e) = task.await.expect("load task");
        samples.latencies.extend(l);
        samples.errors += e;
    }
    samples.elapsed = started.elapsed();
    samples
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let opts = options();
    let wasm = std::fs::read(&opts.guest).expect("reading the guest");
    if opts.only_attack {
        attack::under_attack(&opts, &wasm).await;
        return;
    }
    if opts.only_cluster {
        cluster::bench(&opts.handoff, &wasm, opts.connections, opts.seconds).await;
        return;
    }
    if opts.only_takeover {
        takeover::bench(&opts.handoff, &wasm, opts.connections, opts.seconds).await;
        return;
    }
    if opts.only_kv {
        kv::bench(&opts.handoff, opts.connections, opts.seconds, true).await;
        return;
    }
    let plan = table::Plan {
        clients: opts.connections,
        rounds: ROUNDS,
        per_round: Duration::from_secs_f64(opts.seconds as f64 / f64::from(ROUNDS)),
        warmup: Duration::from_secs(1),
    };
    println!(
        "component: {} ({} bytes); {} clients, {} s per side in {ROUNDS} interleaved rounds (after a 1 s warm-up), load generator on the same cores",
        opts.guest,
        wasm.len(),
        opts.connections,
        opts.seconds
    );
    let mut table = table::Table::default();
    table.cpu = opts.cpu;
    table.only = opts.rows.clone();
    peers::rows(&opts, &wasm, &mut table, plan).await;
    p3::rows(&opts, &wasm, &mut table, plan).await;
    if opts.only_peers {
        table.print();
        return;
    }
    delivery::rows(&opts, &wasm, &mut table, plan).await;
    scale::rows(&opts, &wasm, &mut table, plan).await;
    kv::listing_row(&opts.handoff, opts.connections, opts.seconds, &mut table).await;
    table.print();
    if opts.only_table {
        return;
    }
    attack::under_attack(&opts, &wasm).await;
    kv::bench(&opts.handoff, opts.connections, opts.seconds, false).await;
    cluster::bench(&opts.handoff, &wasm, opts.connections, opts.seconds).await;
    takeover::bench(&opts.handoff, &wasm, opts.connections, opts.seconds).await;
}

/// Prints one row per named result under a header whose first column is `first`.
fn print_table(first: &str, rows: &[(&str, &Stats)]) {
    println!(
        "{:<22} {:>12} {:>10} {:>10} {:>10} {:>8}",
        first, "req/s", "p50 ms", "p99 ms", "max ms", "errors"
    );
    for (name, s) in rows {
        println!(
            "{:<22} {:>12.0} {:>10.3} {:>10.3} {:>10.3} {:>8}",
            name,
            s.rps,
            ms(s.p50),
            ms(s.p99),
            ms(s.max),
            s.errors
        );
    }
}

/// Starts `handoff serve` with `extra` flags; returns the child and its data and admin
/// addresses.
fn start_handoff(path: &str, extra: &[&str]) -> (Killed, SocketAddr, SocketAddr) {
    let mut args = vec!["--ephemeral"];
    args.extend(extra);
    start_handoff_with(path, &args, "warn")
}

/// Starts `handoff serve` with `args` (no `--ephemeral` unless given) and `RUST_LOG=log`.
fn start_handoff_with(path: &str, args: &[&str], log: &str) -> (Killed, SocketAddr, SocketAddr) {
    let mut child = Command::new(path)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .env("RUST_LOG", log)
        // The same environment for every server: no library backtraces (wasmtime captures
        // one per dropped store when `RUST_BACKTRACE` is set; handoff turns that off itself).
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {path}: {e}"));
    let ready = wait_for_line(&mut child, |l| {
        l.starts_with("handoff ready").then(|| l.to_owned())
    });
    let data = field(&ready, "data=").unwrap().parse().unwrap();
    let admin = field(&ready, "admin=").unwrap().parse().unwrap();
    (Killed(child), data, admin)
}

/// `PUT /v1/routes/{route}` on `admin`; panics unless it succeeds.
async fn put_route(admin: SocketAddr, route: &str, wasm: &[u8]) {
    put_route_with(admin, route, "", wasm).await;
}

/// `PUT /v1/routes/{route}{query}` on `admin`; panics unless it succeeds.
async fn put_route_with(admin: SocketAddr, route: &str, query: &str, wasm: &[u8]) {
    let put = http::Request::builder()
        .method("PUT")
        .uri(format!("/v1/routes/{route}{query}"))
        .header("host", admin.to_string())
        .header("content-type", "application/wasm")
        .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
            wasm,
        )))
        .unwrap();
    let (status, body) = handoff_tests::send(admin, put).await;
    assert!(
        status.is_success(),
        "deploying {route}: {}",
        String::from_utf8_lossy(&body)
    );
}

/// `bytes` with a custom section appended: the same code under a different digest.
fn variant(bytes: &[u8], n: usize) -> Vec<u8> {
    let name = b"handoff-bench";
    let payload = n.to_le_bytes();
    let content = 1 + name.len() + payload.len();
    let mut out = bytes.to_vec();
    out.push(0); // custom section
    out.push(u8::try_from(content).expect("small section"));
    out.push(u8::try_from(name.len()).expect("short name"));
    out.extend_from_slice(name);
    out.extend_from_slice(&payload);
    out
}

/// An admin call with a JSON body on `admin`; panics unless it succeeds.
async fn admin_json(admin: SocketAddr, method: &str, path: &str, body: serde_json::Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", admin.to_string())
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    let (status, body) = handoff_tests::send(admin, req).await;
    assert!(
        status.is_success(),
        "{method} {path}: {}",
        String::from_utf8_lossy(&body)
    );
}

/// `POST /v1/modules` on `admin`; returns the version.
async fn upload(admin: SocketAddr, wasm: &[u8]) -> String {
    let req = http::Request::builder()
        .method("POST")
        .uri("/v1/modules")
        .header("host", admin.to_string())
        .header("content-type", "application/wasm")
        .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
            wasm,
        )))
        .unwrap();
    let (status, body) = handoff_tests::send(admin, req).await;
    assert!(
        status.is_success(),
        "upload: {}",
        String::from_utf8_lossy(&body)
    );
    let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    body["version"].as_str().expect("a version").to_owned()
}

/// The resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
