//! A crowd of hostile connections against the real binary: thousands of clients that connect
//! and say nothing, or trickle half a request head. The server's memory stays bounded (measured
//! from its own /proc entry), each of them is closed after the idle timeout, and a real client
//! is served throughout.

use std::time::{Duration, Instant};

use handoff_tests::guests;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{get, handoff, serve};

/// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

/// Raises this process's soft limit on open files to `wanted` (within the hard limit): a
/// common default of 1024 is too few for a thousand clients beside the other tests.
#[cfg(target_os = "linux")]
fn raise_open_files_limit(wanted: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some_and(|current| current < wanted) {
        let raised = limit.maximum.map_or(wanted, |hard| hard.min(wanted));
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(raised),
                maximum: limit.maximum,
            },
        );
    }
}

/// Connects `n` clients; `head` (if any) is what each sends before going quiet.
async fn crowd(addr: std::net::SocketAddr, n: usize, head: &[u8]) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        if !head.is_empty() {
            stream.write_all(head).await.expect("send");
        }
        streams.push(stream);
    }
    streams
}

/// Reads each stream until the server closes it; panics if one stays open past `limit`.
async fn all_closed_by_server(streams: Vec<TcpStream>, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    for mut stream in streams {
        let mut sink = Vec::new();
        tokio::time::timeout_at(deadline, stream.read_to_end(&mut sink))
            .await
            .expect("the server closes every idle or slow connection")
            .ok();
    }
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_silent_and_slow_connections_is_bounded_and_timed_out() {
    const CAP: usize = 500;
    const CLIENTS: usize = 1_000;
    raise_open_files_limit(CLIENTS as u64 + 512);
    let (server, ready) = serve(&[
        "--max-connections",
        &CAP.to_string(),
        "--idle-timeout",
        "1s",
        "--request-timeout",
        "3s",
    ])
    .await;
    let admin = ready.admin_url();
    handoff(&["deploy", "good", guests::TAGGED_V1, "--admin", &admin])
        .await
        .ok();
    for _ in 0..20 {
        assert_eq!(get(&ready, "/good").await, (200, "v1".into()));
    }
    let pid = server.pid();
    let before = status_kib(pid, "VmRSS");

    // Half of them connect and say nothing; half send half a request head. Twice the
    // connection limit, so half of them wait in the listen backlog.
    let started = Instant::now();
    let mut streams = crowd(ready.data, CLIENTS / 2, b"").await;
    streams.extend(
        crowd(
            ready.data,
            CLIENTS / 2,
            b"GET /good HTTP/1.1\r\nHost: a\r\nX-Slow: ",
        )
        .await,
    );

    // A real client gets through once the idle timeout frees slots.
    let (status, body) = get(&ready, "/good").await;
    assert_eq!((status, body.as_str()), (200, "v1"));
    let served_after = started.elapsed();

    all_closed_by_server(streams, Duration::from_secs(60)).await;
    let all_closed_after = started.elapsed();
    let peak = status_kib(pid, "VmHWM");
    let after = status_kib(pid, "VmRSS");
    let growth = peak.saturating_sub(before);
    eprintln!(
        "{CLIENTS} hostile connections, limit {CAP}: RSS {before} KiB before, peak {peak} KiB \
         (+{growth} KiB, {} bytes per connection slot), {after} KiB after; a real client \
         served after {served_after:?}; all closed by the server after {all_closed_after:?}",
        growth * 1024 / CAP as u64
    );
    // Generous: hyper's buffers and a task per connection are a few KiB each. Unbounded
    // buffering, or a task per connection left behind, would blow through this.
    assert!(
        growth < 64 * 1024,
        "the crowd grew the server by {growth} KiB"
    );
    // And it still serves.
    assert_eq!(get(&ready, "/good").await, (200, "v1".into()));

    // The idle timeout never cuts a request in progress: a guest that takes longer than it
    // runs into its request deadline (504), not a closed connection.
    handoff(&["deploy", "hostile", guests::HOSTILE, "--admin", &admin])
        .await
        .ok();
    let started = Instant::now();
    let (status, _) = get(&ready, "/hostile/sleep").await;
    assert_eq!(status, 504);
    assert!(started.elapsed() >= Duration::from_secs(3));
}
