//! `just bench`: handoff against `wasmtime serve` on the same component, the same load
//! generator and the same machine, in one run, side by side.
//!
//! For each server: start it (a child process), deploy the component (handoff: time from the
//! `PUT` to the first 200), warm up, then drive `--connections` keep-alive connections for
//! `--seconds` and report requests/s and p50/p99/max latency. Ratios are handoff / peer.
//! The load generator runs on the same cores as the server, so compare the two columns with
//! each other, not with numbers from other machines.
//!
//! Then a well-behaved route's latency under attack from a hostile guest and a crowd of slow
//! connections, against the same route without the attack.
//!
//! Then, in process: restart with 100 stored routes (time until every route serves again) and
//! rollback (time from the call to the old version serving).
//!
//! Then the key-value store (`bench/kv.rs`): get and set latency inside a guest, and a counter
//! route's throughput against a plain route.
//!
//! Usage: `bench [--handoff PATH] [--wasmtime PATH] [--connections N] [--seconds S] [--guest PATH]
//! [--attack loop,grow,recurse,trap,crowd] [--only-attack] [--only-kv]`

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use handoff_tests::{Connection, guests};
use http::StatusCode;

#[path = "bench/kv.rs"]
mod kv;

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
}

fn options() -> Options {
    let mut opts = Options {
        handoff: "target/release/handoff".into(),
        wasmtime: "wasmtime".into(),
        connections: 32,
        seconds: 10,
        guest: default_guest(),
        attack: ["loop", "grow", "recurse", "trap", "crowd"]
            .map(String::from)
            .to_vec(),
        only_attack: false,
        only_kv: false,
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
            // Keep draining the pipes so the child never blocks on a full pipe.
            std::thread::spawn(move || while rx.recv().is_ok() {});
            return found;
        }
    }
    panic!("the server printed no address within 60 s");
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
}

/// What one or more load runs against one server recorded.
#[derive(Default)]
struct Samples {
    latencies: Vec<Duration>,
    errors: usize,
    elapsed: Duration,
}

impl Samples {
    fn add(&mut self, other: Samples) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        self.elapsed += other.elapsed;
    }

    fn rps(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
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
    let duration = Duration::from_secs(opts.seconds);
    let warmup = Duration::from_secs(2);
    let wasm = std::fs::read(&opts.guest).expect("reading the guest");
    if opts.only_attack {
        under_attack(&opts, &wasm).await;
        return;
    }
    if opts.only_kv {
        kv::bench(&opts.handoff, opts.connections, opts.seconds).await;
        return;
    }
    println!(
        "component: {} ({} bytes); {} connections, {} s per server in {ROUNDS} interleaved runs, load generator on the same cores",
        opts.guest,
        wasm.len(),
        opts.connections,
        opts.seconds
    );

    // handoff
    let (_handoff, data, admin) = start_handoff(&opts.handoff, &[]);
    let put = http::Request::builder()
        .method("PUT")
        .uri("/v1/routes/bench?prefix=/")
        .header("host", admin.to_string())
        .header("content-type", "application/wasm")
        .body(http_body_util::Full::new(bytes::Bytes::from(wasm.clone())))
        .unwrap();
    let t = Instant::now();
    let (status, body) = handoff_tests::send(admin, put).await;
    let put_took = t.elapsed();
    assert!(
        status.is_success(),
        "deploy failed: {}",
        String::from_utf8_lossy(&body)
    );
    let mut conn = Connection::open(data).await;
    let (status, _) = conn.get("/").await.expect("first request");
    let first_ok = t.elapsed();
    assert_eq!(status, StatusCode::OK);
    // The same bytes to a second route: stored already, so loaded rather than compiled.
    let put = http::Request::builder()
        .method("PUT")
        .uri("/v1/routes/again")
        .header("host", admin.to_string())
        .header("content-type", "application/wasm")
        .body(http_body_util::Full::new(bytes::Bytes::from(wasm.clone())))
        .unwrap();
    let t = Instant::now();
    let (status, _) = handoff_tests::send(admin, put).await;
    assert!(status.is_success());
    let (status, _) = conn.get("/again").await.expect("request");
    assert_eq!(status, StatusCode::OK);
    let stored_ok = t.elapsed();

    // wasmtime serve, running beside handoff; the two take turns under load.
    let peer = match Command::new(&opts.wasmtime)
        .args(["serve", "-Scli", "--addr", "127.0.0.1:0", &opts.guest])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            let line = wait_for_line(&mut child, |l| {
                l.contains("Serving HTTP on").then(|| l.to_owned())
            });
            let addr: SocketAddr = line
                .split_whitespace()
                .last()
                .map(|a| a.trim_start_matches("http://").trim_end_matches('/'))
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no address in {line:?}"));
            Some((Killed(child), addr))
        }
        Err(e) => {
            println!(
                "wasmtime serve not run ({}: {e}); install it with `cargo install wasmtime-cli --version 48.0.8 --locked`",
                opts.wasmtime
            );
            None
        }
    };
    let mut servers = vec![("handoff", data)];
    if let Some((_, addr)) = &peer {
        servers.push(("wasmtime serve -Scli", *addr));
    }
    for (_, addr) in &servers {
        load(*addr, "/", opts.connections, warmup).await;
    }
    // Interleaved rounds, the order alternating, so drift over time hits both alike.
    let per_run = duration / ROUNDS;
    let mut samples: Vec<Samples> = servers.iter().map(|_| Samples::default()).collect();
    for round in 0..ROUNDS {
        let mut order: Vec<usize> = (0..servers.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        let mut line = format!("round {}:", round + 1);
        for i in order {
            let run = load(servers[i].1, "/", opts.connections, per_run).await;
            line.push_str(&format!(" {} {:.0} req/s;", servers[i].0, run.rps()));
            samples[i].add(run);
        }
        println!("{}", line.trim_end_matches(';'));
    }
    let mut stats = samples.into_iter().map(Samples::stats);
    let handoff = stats.next().expect("handoff ran");
    let peer = stats.next();

    println!();
    let mut rows = vec![("handoff", &handoff)];
    rows.extend(peer.as_ref().map(|p| ("wasmtime serve -Scli", p)));
    print_table("server", &rows);
    if let Some(peer) = &peer {
        println!();
        println!(
            "ratio handoff/wasmtime: throughput {:.2}x, p50 {:.2}x, p99 {:.2}x (lower latency ratio is better)",
            handoff.rps / peer.rps,
            ms(handoff.p50) / ms(peer.p50),
            ms(handoff.p99) / ms(peer.p99)
        );
    }
    println!();
    println!(
        "deploy: PUT answered in {:.1} ms (compile + pre-instantiate + store + activate); first 200 after {:.1} ms",
        ms(put_took),
        ms(first_ok)
    );
    println!(
        "deploy of stored bytes to a new route (artifact loaded, no compile): first 200 after {:.1} ms",
        ms(stored_ok)
    );
    println!(
        "requests measured: handoff {}, peer {}",
        handoff.requests,
        peer.map(|p| p.requests).unwrap_or(0)
    );
    drop(_handoff);

    under_attack(&opts, &wasm).await;
    persistence(&wasm).await;
    kv::bench(&opts.handoff, opts.connections, opts.seconds).await;
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
    let mut child = Command::new(path)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--ephemeral",
        ])
        .args(extra)
        .env("RUST_LOG", "warn")
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
    let put = http::Request::builder()
        .method("PUT")
        .uri(format!("/v1/routes/{route}"))
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

/// A well-behaved route's latency while a hostile guest on another route loops, blows its
/// memory and its stack, and a crowd of connections sends nothing or half a request head;
/// against the same route's latency without the attack, in the same run.
async fn under_attack(opts: &Options, wasm: &[u8]) {
    const GOOD_CONNECTIONS: usize = 8;
    const CROWD: usize = 1_000;
    let run = Duration::from_secs(opts.seconds.clamp(2, 10));
    let (_server, data, admin) = start_handoff(
        &opts.handoff,
        &[
            "--request-timeout",
            "1s",
            "--max-memory",
            "64MiB",
            "--idle-timeout",
            "2s",
        ],
    );
    put_route(admin, "good", wasm).await;
    put_route(
        admin,
        "hostile",
        &std::fs::read(guests::HOSTILE).expect("hostile guest"),
    )
    .await;
    load(data, "/good", GOOD_CONNECTIONS, Duration::from_secs(1)).await;
    let baseline = load(data, "/good", GOOD_CONNECTIONS, run).await.stats();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut attackers = Vec::new();
    // Two clients per kind of hostile request.
    let kinds: Vec<String> = opts
        .attack
        .iter()
        .filter(|k| *k != "crowd")
        .map(|k| format!("/hostile/{k}"))
        .collect();
    for path in kinds.iter().flat_map(|p| [p.clone(), p.clone()]) {
        let stop = stop.clone();
        attackers.push(tokio::spawn(async move {
            let mut sent = 0u64;
            let mut conn = Connection::open(data).await;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                sent += 1;
                if conn.get(&path).await.is_err() {
                    conn = Connection::open(data).await;
                }
            }
            sent
        }));
    }
    let crowd_size = if opts.attack.iter().any(|k| k == "crowd") {
        CROWD
    } else {
        0
    };
    let mut crowd = Vec::with_capacity(crowd_size);
    for i in 0..crowd_size {
        use tokio::io::AsyncWriteExt;
        let Ok(mut stream) = tokio::net::TcpStream::connect(data).await else {
            break;
        };
        if i % 2 == 1 {
            let _ = stream
                .write_all(b"GET /good HTTP/1.1\r\nHost: a\r\nX-Slow: ")
                .await;
        }
        crowd.push(stream);
    }
    let attacked = load(data, "/good", GOOD_CONNECTIONS, run).await.stats();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut hostile_requests = 0;
    for attacker in attackers {
        hostile_requests += attacker.await.expect("attacker");
    }
    drop(crowd);

    println!();
    println!(
        "a well-behaved route under attack ({GOOD_CONNECTIONS} connections, {} s each; the attack: 2 clients \
         each sending {} ({hostile_requests} requests sent, 1 s deadline) and {crowd_size} silent or \
         half-sent connections)",
        run.as_secs(),
        kinds.join(", ")
    );
    print_table("", &[("no attack", &baseline), ("under attack", &attacked)]);
    println!(
        "ratio under attack/no attack: throughput {:.2}x, p50 {:.2}x, p99 {:.2}x",
        attacked.rps / baseline.rps,
        ms(attacked.p50) / ms(baseline.p50),
        ms(attacked.p99) / ms(baseline.p99)
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

/// Restart with 100 routes, and rollback, measured in process.
async fn persistence(wasm: &[u8]) {
    const ROUTES: usize = 100;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = || handoff::config::Config {
        data_dir: Some(dir.path().to_path_buf()),
        ..handoff::config::Config::ephemeral()
    };
    let server = handoff_tests::TestServer::start_with(config()).await;
    for i in 0..ROUTES {
        let (status, body) = server
            .deploy_bytes(&format!("r{i}"), "", variant(wasm, i))
            .await;
        assert!(status.is_success(), "deploy r{i}: {body}");
    }
    server.shutdown().await;

    let t = Instant::now();
    let server = handoff_tests::TestServer::start_with(config()).await;
    let started = t.elapsed();
    let mut conn = Connection::open(server.data).await;
    for i in 0..ROUTES {
        let (status, _) = conn.get(&format!("/r{i}")).await.expect("request");
        assert_eq!(status, StatusCode::OK, "route r{i} after restart");
    }
    let all_serve = t.elapsed();
    let recompiled = server.server().runtime().compiles();

    // Rollback: r0 gets a second version, then rolls back and forth between the two.
    let (status, body) = server.deploy_bytes("r0", "", variant(wasm, 1_000)).await;
    assert!(status.is_success(), "{body}");
    let mut samples = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let req = http::Request::builder()
            .method("POST")
            .uri("/v1/routes/r0/rollback")
            .header("host", "admin")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let (status, body) = handoff_tests::send(server.admin, req).await;
        assert!(
            status.is_success(),
            "rollback: {}",
            String::from_utf8_lossy(&body)
        );
        let (status, _) = conn.get("/r0").await.expect("request");
        assert_eq!(status, StatusCode::OK);
        samples.push(t.elapsed());
    }
    samples.sort_unstable();
    println!();
    println!(
        "restart with {ROUTES} routes: ready after {:.1} ms, all {ROUTES} served after {:.1} ms ({recompiled} recompiled)",
        ms(started),
        ms(all_serve)
    );
    println!(
        "rollback (admin call returns, then the old version answers), 20 rollbacks: p50 {:.2} ms, max {:.2} ms",
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() - 1])
    );
    server.shutdown().await;
}
