//! A guest that floods its log, against the real binary whose stderr is a pipe read slowly: a
//! neighbour route keeps its latency, and the lines the flood lost are counted in the log and
//! in `/metrics`.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use handoff_tests::guests;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::support::{Ready, handoff, parse_ready, serve_command};

/// How long each phase drives the neighbour.
const PHASE: Duration = Duration::from_secs(2);
/// Rounds of (silent spinning, log flooding) phases, their order alternating, so that drift in
/// the machine's load hits both alike.
const ROUNDS: usize = 3;
/// The request deadline of the server (and so of each flooding request).
const DEADLINE: &str = "2s";
/// The longest one neighbour request may take before it counts as stuck.
const STUCK: Duration = Duration::from_secs(10);

/// The server's stderr, read slowly until told to catch up.
#[derive(Clone, Default)]
struct SlowStderr {
    text: Arc<Mutex<String>>,
    fast: Arc<AtomicBool>,
}

impl SlowStderr {
    /// Reads `stream`: 1 KiB every 20 ms (about 50 KiB/s), everything once [`Self::catch_up`].
    fn follow(&self, mut stream: tokio::process::ChildStderr) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let fast = this.fast.load(Ordering::Relaxed);
                let want = if fast { buf.len() } else { 1 << 10 };
                match stream.read(&mut buf[..want]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => this
                        .text
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                }
                if !fast {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
    }

    fn catch_up(&self) {
        self.fast.store(true, Ordering::Relaxed);
    }

    fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }
}

/// Latencies of sequential GETs of `path` on one keep-alive connection, for [`PHASE`] (at
/// least 20 requests); a request that takes longer than [`STUCK`] counts as `STUCK` and ends
/// the phase.
async fn neighbour(ready: &Ready, path: &str) -> Vec<Duration> {
    let mut connection = handoff_tests::Connection::open(ready.data).await;
    let mut latencies = Vec::new();
    let started = Instant::now();
    while started.elapsed() < PHASE || latencies.len() < 20 {
        let sent = Instant::now();
        match tokio::time::timeout(STUCK, connection.get(path)).await {
            Ok(Ok((status, body))) => {
                assert_eq!(status, 200, "{path}");
                assert_eq!(&body[..], b"v1");
                latencies.push(sent.elapsed());
            }
            Ok(Err(error)) => panic!("GET {path}: {error}"),
            Err(_) => {
                latencies.push(STUCK);
                break;
            }
        }
        assert!(latencies.len() < 1_000_000);
    }
    latencies
}

fn p99(latencies: &mut [Duration]) -> Duration {
    latencies.sort();
    latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)]
}

/// The server's `/metrics` text.
async fn metrics(ready: &Ready) -> String {
    let get = http::Request::builder()
        .uri("/metrics")
        .header("host", ready.admin.to_string())
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let request = handoff_tests::send(ready.admin, get);
    let (status, body) = tokio::time::timeout(Duration::from_secs(60), request)
        .await
        .expect("/metrics answers within a minute");
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body).into_owned()
}

/// The value of the sample of `family` whose labels start with `route="ROUTE"`.
fn sample(metrics: &str, family: &str, route: &str) -> Option<u64> {
    let prefix = format!("{family}{{route=\"{route}\"");
    metrics
        .lines()
        .find(|line| line.starts_with(&prefix))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

/// The neighbour's latencies while `clients` clients each send requests for `path` one after
/// another (each runs until the request deadline) for the whole phase.
async fn neighbour_beside(ready: &Ready, path: &str, clients: usize) -> Vec<Duration> {
    let route = path.split('/').nth(1).expect("/route/...");
    let stop = Arc::new(AtomicBool::new(false));
    let mut attackers = Vec::new();
    for _ in 0..clients {
        let (stop, data, path) = (stop.clone(), ready.data, path.to_owned());
        attackers.push(tokio::spawn(async move {
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) && sent < 1_000 {
                let request = handoff_tests::send(data, handoff_tests::get_request(&path));
                let (status, _) = tokio::time::timeout(Duration::from_secs(60), request)
                    .await
                    .expect("the request deadline ends every attacking request");
                assert_eq!(status, 504, "{path} runs until its deadline");
                sent += 1;
            }
        }));
    }
    // The phase starts once every attacker's request is running.
    let started = Instant::now();
    while sample(&metrics(ready).await, "handoff_route_in_flight", route) < Some(clients as u64) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{clients} requests on {route} were not all running within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let latencies = neighbour(ready, "/good").await;
    stop.store(true, Ordering::Relaxed);
    for attacker in attackers {
        attacker.await.expect("attacker");
    }
    latencies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_flooding_its_log_slows_no_neighbour_and_is_reported() {
    let mut server = serve_command(&["--request-timeout", DEADLINE])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stderr = SlowStderr::default();
    stderr.follow(server.stderr.take().expect("piped stderr"));
    let mut stdout = BufReader::new(server.stdout.take().expect("piped stdout")).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stdout.next_line().await.expect("stdout") {
            if let Some(ready) = parse_ready(&line) {
                return ready;
            }
        }
        panic!("exited before the ready line");
    })
    .await
    .expect("a ready line within 30 s");
    let admin = ready.admin_url();
    for (route, guest) in [
        ("good", guests::TAGGED_V1),
        ("spin", guests::HOSTILE),
        ("flood", guests::HOSTILE),
    ] {
        handoff(&["deploy", route, guest, "--admin", &admin])
            .await
            .ok();
    }
    // As many attackers as the server has worker threads (one per core).
    let clients = std::thread::available_parallelism().map_or(2, |n| n.get().min(8));

    let mut alone = neighbour(&ready, "/good").await;
    // The baseline: the same number of guests spinning until their deadline, silently, so
    // that the comparison below measures what logging costs, not what the CPU they take does.
    let mut baseline = Vec::new();
    let mut flooded = Vec::new();
    for round in 0..ROUNDS {
        let mut phases = [
            ("/spin/loop", &mut baseline),
            ("/flood/log-flood", &mut flooded),
        ];
        if round % 2 == 1 {
            phases.reverse();
        }
        for (path, latencies) in phases {
            latencies.extend(neighbour_beside(&ready, path, clients).await);
        }
    }
    let (alone_p99, baseline_p99, flooded_p99) =
        (p99(&mut alone), p99(&mut baseline), p99(&mut flooded));
    eprintln!(
        "neighbour p99: alone {alone_p99:?} ({} requests), beside {clients} spinning guests \
         {baseline_p99:?} ({}), beside {clients} guests flooding their log {flooded_p99:?} ({})",
        alone.len(),
        baseline.len(),
        flooded.len()
    );
    assert!(
        flooded_p99 <= baseline_p99 * 2,
        "a guest flooding its log took the neighbour's p99 from {baseline_p99:?} (beside \
         silent spinning guests) to {flooded_p99:?}"
    );

    // What the flood lost is reported, with its route and version, in the log...
    stderr.catch_up();
    let started = Instant::now();
    let report = loop {
        let text = stderr.text();
        let found = text
            .lines()
            .find(|line| {
                line.contains("guest log lines suppressed")
                    && line.contains("route=flood")
                    && line.contains("version=")
            })
            .map(str::to_owned);
        if let Some(line) = found {
            break line;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no report of suppressed lines within 30 s; the log ends with:\n{}",
            &text[text.len().saturating_sub(4000)..]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let suppressed: u64 = report
        .split_whitespace()
        .find_map(|field| field.strip_prefix("suppressed="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {report}"));
    assert!(suppressed > 0, "{report}");
    // ... and in /metrics, beside the count of lines stderr could not take.
    let metrics = metrics(&ready).await;
    let counted = sample(
        &metrics,
        "handoff_version_guest_log_lines_suppressed_total",
        "flood",
    );
    assert!(counted >= Some(suppressed), "{metrics}");
    assert!(
        metrics.contains("\nhandoff_log_lines_dropped_total "),
        "{metrics}"
    );
    // The neighbour's guest, which logs nothing, lost nothing.
    assert_eq!(
        sample(
            &metrics,
            "handoff_version_guest_log_lines_suppressed_total",
            "good"
        ),
        Some(0),
        "{metrics}"
    );
    eprintln!("{report}");
}
