//! `serve --takeover` in `just bench`: the longest pause a client sees across a takeover of a
//! server with 1,000 routes (p99 and max latency of the requests that started while the new
//! process loaded and the old one drained, against those of a stretch before), and how long
//! the takeover takes: spawn to the new process's ready line, and to the old process's exit.
//! The clients are HTTP/1.1 keep-alive connections that reconnect when told `Connection:
//! close`, as a browser or a proxy does; an error is any request that failed.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use super::table::Table;
use super::{Killed, ms, put_route, start_handoff_with, wait_for_line};

/// Routes on the server taken over.
const ROUTES: usize = 1_000;

/// One request: when it started, how long it took.
type Sample = (Instant, Duration);

/// Drives one keep-alive connection (again after `Connection: close`) until `stop`.
async fn client(addr: SocketAddr, path: String, stop: Arc<AtomicBool>) -> (Vec<Sample>, usize) {
    let mut samples = Vec::with_capacity(64 * 1024);
    let mut errors = 0;
    let mut sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let mut current = match sender.take() {
            Some(current) => current,
            None => {
                let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
                    errors += 1;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (current, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .expect("handshake");
                tokio::spawn(connection);
                current
            }
        };
        if current.ready().await.is_err() {
            continue;
        }
        let request = http::Request::get(path.as_str())
            .header(http::header::HOST, "localhost")
            .body(Full::default())
            .unwrap();
        match current.send_request(request).await {
            Err(error) if error.is_canceled() => {}
            Err(_) => errors += 1,
            Ok(response) => {
                let close = response
                    .headers()
                    .get(http::header::CONNECTION)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                let ok = response.status() == 200;
                match response.into_body().collect().await {
                    Ok(_) if ok => samples.push((started, started.elapsed())),
                    _ => errors += 1,
                }
                if !close {
                    sender = Some(current);
                }
            }
        }
    }
    (samples, errors)
}

/// p99 and max of `latencies`.
fn tail(mut latencies: Vec<Duration>) -> (Duration, Duration, usize) {
    latencies.sort_unstable();
    let n = latencies.len();
    let p99 = latencies
        .get(((n as f64 * 0.99) as usize).min(n.saturating_sub(1)))
        .copied()
        .unwrap_or_default();
    (p99, latencies.last().copied().unwrap_or_default(), n)
}

/// The takeover rows, in a table of their own.
pub async fn bench(handoff: &str, wasm: &[u8], connections: usize, seconds: u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let data_dir = data_dir.to_str().expect("a UTF-8 path");
    let (mut old, data, admin) = start_handoff_with(handoff, &["--data-dir", data_dir], "warn");
    for i in 0..ROUTES {
        put_route(admin, &format!("r{i}"), wasm).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(client(data, format!("/r{}", ROUTES / 2), stop.clone())))
        .collect();
    let before = Duration::from_secs(seconds.max(2) / 2);
    tokio::time::sleep(before).await;
    let spawned = Instant::now();
    let mut new = Command::new(handoff)
        .args(["serve", "--data-dir", data_dir, "--takeover"])
        .env("RUST_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {handoff}: {e}"));
    let new_ready = tokio::task::spawn_blocking(move || {
        wait_for_line(&mut new, |l| {
            l.starts_with("handoff ready").then(|| l.to_owned())
        });
        new
    })
    .await
    .expect("the new process");
    let ready = spawned.elapsed();
    let new = Killed(new_ready);
    let exited = loop {
        if let Ok(Some(status)) = old.0.try_wait() {
            assert!(status.success(), "the old process exits 0: {status}");
            break spawned.elapsed();
        }
        assert!(
            spawned.elapsed() < Duration::from_secs(120),
            "the old process never exited"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut samples, mut errors) = (Vec::new(), 0);
    for client in clients {
        let (s, e) = client.await.expect("a client");
        samples.extend(s);
        errors += e;
    }
    let during_end = spawned + exited;
    let start = spawned - before;
    let (before_p99, before_max, before_n) = tail(
        samples
            .iter()
            .filter(|(t, _)| *t >= start && *t < spawned)
            .map(|(_, d)| *d)
            .collect(),
    );
    let (during_p99, during_max, during_n) = tail(
        samples
            .iter()
            .filter(|(t, _)| *t >= spawned && *t < during_end)
            .map(|(_, d)| *d)
            .collect(),
    );
    println!(
        "\ntakeover of a server with {ROUTES} routes, {connections} keep-alive clients on one route: {before_n} requests before, {during_n} during, {errors} errors"
    );
    let mut table = Table::default();
    table.row(
        "takeover, 1,000 routes: p99 latency, during / before",
        format!("{:.2} ms", ms(during_p99)),
        format!("{:.2} ms", ms(before_p99)),
        Some(ms(during_p99) / ms(before_p99)),
        "no failed request",
    );
    table.row(
        "takeover, 1,000 routes: max latency (the longest pause), during / before",
        format!("{:.2} ms", ms(during_max)),
        format!("{:.2} ms", ms(before_max)),
        Some(ms(during_max) / ms(before_max)),
        "",
    );
    table.row(
        "takeover, 1,000 routes: spawn to the new ready line / to the old process's exit",
        format!("{:.0} ms", ms(ready)),
        format!("{:.0} ms", ms(exited)),
        None,
        "",
    );
    table.print();
    drop(new);
}
