//! The admin listener's limits and the process's shutdown, against the real binary: a
//! half-sent request head cannot hold up a shutdown, shutdown ends within the drain timeout
//! plus `RELEASE_WAIT`, a second signal exits at once, and admin connections are capped and
//! closed when idle.

use std::time::{Duration, Instant};

use handoff::server::{ADMIN_MAX_CONNECTIONS, RELEASE_WAIT};
use handoff_tests::guests;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{handoff, serve};

/// Reads from `stream` until what was read contains `marker` (within 30 s).
async fn read_until(stream: &mut TcpStream, marker: &str) -> String {
    let mut seen = Vec::new();
    let reading = async {
        let mut buffer = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains(marker) {
            let n = stream.read(&mut buffer).await.expect("reading");
            assert!(
                n > 0,
                "closed before {marker:?}: {:?}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buffer[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(30), reading)
        .await
        .unwrap_or_else(|_| panic!("no {marker:?} within 30 s"));
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_admin_request_head_does_not_hold_up_shutdown() {
    let drain = Duration::from_secs(1);
    let (mut server, ready) = serve(&["--drain-timeout", "1s"]).await;
    // Half a request head on a fresh connection...
    let mut half = TcpStream::connect(ready.admin).await.unwrap();
    half.write_all(b"GET /v1/routes HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: ")
        .await
        .unwrap();
    // ...accepted before a later connection is answered (connections are accepted in order).
    let mut whole = TcpStream::connect(ready.admin).await.unwrap();
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", ready.admin);
    whole.write_all(request.as_bytes()).await.unwrap();
    read_until(&mut whole, "\"ok\"}").await;
    let started = Instant::now();
    server.signal("TERM");
    let status = server.exit_within(Duration::from_secs(30)).await;
    let took = started.elapsed();
    assert!(status.success(), "{status}");
    let bound = drain + RELEASE_WAIT;
    assert!(took < bound, "shutdown took {took:?}, more than {bound:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_during_a_long_drain_exits_at_once() {
    let (mut server, ready) = serve(&["--drain-timeout", "60s", "--request-timeout", "60s"]).await;
    let admin = ready.admin_url();
    handoff(&["deploy", "hostile", guests::HOSTILE, "--admin", &admin])
        .await
        .ok();
    // A request that holds its version for a minute.
    let mut held = TcpStream::connect(ready.data).await.unwrap();
    held.write_all(b"GET /hostile/sleep HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    handoff_tests::eventually(
        "the request to be in flight",
        Duration::from_secs(30),
        || {
            let admin = admin.clone();
            async move {
                let status = handoff(&["status", "hostile", "--json", "--admin", &admin]).await;
                let status: serde_json::Value = serde_json::from_str(status.ok()).unwrap();
                (status["in_flight"] == 1).then_some(())
            }
        },
    )
    .await;
    server.signal("TERM");
    server
        .stderr
        .wait_for("the drain", Duration::from_secs(30), |text| {
            text.contains("shutting down")
        })
        .await;
    assert!(!server.exited(), "the first signal waits for the request");
    let started = Instant::now();
    server.signal("INT");
    let status = server.exit_within(Duration::from_secs(20)).await;
    let took = started.elapsed();
    assert_eq!(status.code(), Some(1), "{status}");
    assert!(took < Duration::from_secs(3), "exit took {took:?}");
    // The pipe's last bytes may reach the collector a moment after the exit.
    server
        .stderr
        .wait_for("the second-signal line", Duration::from_secs(10), |text| {
            text.contains("stopped by a second signal")
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_are_capped_and_idle_ones_closed() {
    let idle = Duration::from_secs(1);
    let (_server, ready) = serve(&["--idle-timeout", "1s"]).await;
    // Fill every admin connection slot with a client that never sends a byte.
    let opened = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..ADMIN_MAX_CONNECTIONS {
        silent.push(TcpStream::connect(ready.admin).await.unwrap());
    }
    // A real client waits in the backlog until an idle one is closed, then gets its answer.
    let mut client = TcpStream::connect(ready.admin).await.unwrap();
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", ready.admin);
    client.write_all(request.as_bytes()).await.unwrap();
    let answer = read_until(&mut client, "\"ok\"}").await;
    let answered = opened.elapsed();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answered >= idle,
        "answered after {answered:?}: no connection limit held it back"
    );
    // Every silent connection was closed by the server.
    for mut stream in silent {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut byte))
            .await
            .expect("the server closes an idle admin connection");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}
