//! `serve --takeover`: real processes on one data directory hand over listeners, state and the
//! key-value store to each other under load, over HTTP/1.1 keep-alive and h2c, without a
//! refused connection or a failed request; a new process that fails before it is ready leaves
//! the old one serving.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use handoff_tests::guests;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::load::{Answer, Clients, Dial, LOAD_LIMIT, Tally, request};
use crate::support::{Ready, Running, command, get, handoff, run_within, serve_in};

const READY: Duration = Duration::from_secs(60);
/// How many h2c clients a [`Load`] runs.
const H2_CLIENTS: u64 = 2;

/// Load on `ready`'s data plane: keep-alive and h2c clients on `/tagged`, increments of one
/// counter on `/kv`.
struct Load {
    clients: Clients,
    plain: Arc<Tally>,
    counts: Arc<Tally>,
}

impl Load {
    fn start(ready: &Ready) -> Self {
        let mut clients = Clients::new(Duration::from_secs(60));
        let plain = clients.tally("plain");
        let counts = clients.tally("increments");
        for _ in 0..H2_CLIENTS {
            clients.h1(ready.data, Dial::Plain, "/tagged/x", Answer::Any, &plain);
            clients.h2(ready.data, Dial::Plain, "/tagged/y", Answer::Any, &plain);
            let increment = "/kv/incr?key=count";
            clients.h1(ready.data, Dial::Plain, increment, Answer::Counter, &counts);
        }
        Self {
            clients,
            plain,
            counts,
        }
    }

    /// Waits until `n` more requests of each kind have succeeded.
    async fn goes_on(&self, n: u64) {
        self.clients.goes_on(n).await;
    }

    /// Stops the clients; what they saw: the plain requests, the increments.
    async fn stop(self) -> (Arc<Tally>, Arc<Tally>) {
        self.clients.stop().await;
        (self.plain, self.counts)
    }
}

/// `handoff serve --takeover` on `dir`, with `extra` flags.
fn takeover_command(dir: &Path, extra: &[&str]) -> tokio::process::Command {
    let mut args = vec!["serve", "--data-dir", dir.to_str().unwrap(), "--takeover"];
    args.extend_from_slice(extra);
    command(&args)
}

/// Deploys the plain route and the counter's route.
async fn deploy_both(ready: &Ready) {
    let admin = ready.admin_url();
    handoff(&["deploy", "tagged", guests::TAGGED_V1, "--admin", &admin])
        .await
        .ok();
    handoff(&["deploy", "kv", guests::KV_PLAIN, "--admin", &admin])
        .await
        .ok();
}

/// The routes the admin API of `ready` lists, by name.
async fn route_names(ready: &Ready) -> Vec<String> {
    let request = handoff_tests::send(ready.admin, request(Dial::Plain, "/v1/routes"));
    let (status, body) = tokio::time::timeout(Duration::from_secs(60), request)
        .await
        .expect("the admin API answers");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let listed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let mut names: Vec<String> = listed["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["route"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_takeovers_under_load_fail_no_request_and_count_every_increment() {
    let dir = tempfile::tempdir().unwrap();
    let (mut old, ready) = serve_in(dir.path()).await;
    deploy_both(&ready).await;
    let load = Load::start(&ready);
    load.goes_on(20).await;
    for round in 0..3 {
        let mut new = Running::spawn(takeover_command(dir.path(), &[]));
        let took = new.ready(READY).await;
        assert_eq!(
            (took.data, took.admin),
            (ready.data, ready.admin),
            "round {round}: the new process serves the same addresses"
        );
        let status = old.exit_within(Duration::from_secs(60)).await;
        let log = old.stderr.text();
        assert!(
            status.success(),
            "round {round}: the old process exits 0: {status}\n{log}"
        );
        // Its last lines may still be on their way through the pipe.
        old.stderr
            .wait_for("the old process's last log line", READY, |log| {
                log.contains("handed over and drained")
            })
            .await;
        // Requests go on, on the new process alone.
        load.goes_on(20).await;
        assert_eq!(route_names(&ready).await, ["kv", "tagged"], "round {round}");
        old = new;
    }
    let (plain, counts) = load.stop().await;
    eprintln!(
        "takeover load: {} plain requests, {} increments, {} reconnects",
        plain.ok(),
        counts.ok(),
        plain.reconnects() + counts.reconnects()
    );
    plain.assert_no_failures();
    plain.assert_goaway_refusals_at_most(3, H2_CLIENTS);
    counts.assert_no_failures();
    let values = counts.values();
    let total = values.len() as u64;
    handoff_tests::assert_each_value_once(values, total);
    // The bucket holds the count: every acknowledged increment once, none lost.
    let (_, body) = get(&ready, "/kv/get?key=count").await;
    assert_eq!(body.trim(), total.to_string());
    assert!(
        plain.reconnects() > 0,
        "the clients were moved to new connections"
    );
    let status = old.terminate(Duration::from_secs(60)).await;
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_that_fails_before_it_is_ready_leaves_the_old_one_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (mut old, ready) = serve_in(dir.path()).await;
    let admin = ready.admin_url();
    deploy_both(&ready).await;
    let load = Load::start(&ready);
    load.goes_on(20).await;
    // A flag naming another address: refused before anything is handed over.
    let out = run_within(
        READY,
        takeover_command(dir.path(), &["--listen", "127.0.0.1:1"]),
    )
    .await;
    assert_ne!(out.code, 0, "{out:#?}");
    assert!(
        out.stderr
            .contains("is not the address the running server listens on"),
        "{out:#?}"
    );
    // TLS files that cannot be read: refused before anything is handed over.
    let out = run_within(
        READY,
        takeover_command(
            dir.path(),
            &[
                "--tls-cert",
                "/nonexistent/c.pem",
                "--tls-key",
                "/nonexistent/k.pem",
            ],
        ),
    )
    .await;
    assert_ne!(out.code, 0, "{out:#?}");
    assert!(out.stderr.contains("TLS"), "{out:#?}");
    load.goes_on(20).await;
    // Once the state is with the new process (it recompiles every route at another opt level,
    // so it is still loading): a signal calls the takeover off, and so does a crash.
    for (round, signal) in ["TERM", "KILL"].into_iter().enumerate() {
        let mut new = Running::spawn(takeover_command(dir.path(), &["--opt-level", "none"]));
        new.stderr
            .wait_for("the new process to hold the state", READY, |log| {
                log.contains("loading every route before serving")
            })
            .await;
        new.signal(signal);
        let status = new.exit_within(READY).await;
        assert!(!status.success(), "{signal}: {status}");
        if signal == "TERM" {
            assert!(
                new.stderr
                    .text()
                    .contains("the takeover was called off by a signal"),
                "{}",
                new.stderr.text()
            );
        }
        old.stderr
            .wait_for("the old process to switch back", READY, |log| {
                log.matches("switched back").count() == round + 1
            })
            .await;
        load.goes_on(20).await;
    }
    load.goes_on(20).await;
    // The old process takes changes again, and keeps them.
    handoff(&["deploy", "tagged", guests::TAGGED_V2, "--admin", &admin])
        .await
        .ok();
    let (status, body) = get(&ready, "/tagged/z").await;
    assert_eq!((status, body.as_str()), (200, "v2"));
    // A takeover after all that finds everything.
    let mut new = Running::spawn(takeover_command(dir.path(), &[]));
    new.ready(READY).await;
    let status = old.exit_within(Duration::from_secs(60)).await;
    assert!(status.success(), "{}", old.stderr.text());
    load.goes_on(20).await;
    let (plain, counts) = load.stop().await;
    plain.assert_no_failures();
    plain.assert_goaway_refusals_at_most(1, H2_CLIENTS);
    counts.assert_no_failures();
    let values = counts.values();
    let total = values.len() as u64;
    handoff_tests::assert_each_value_once(values, total);
    let (_, body) = get(&ready, "/kv/get?key=count").await;
    assert_eq!(body.trim(), total.to_string());
    let (status, body) = get(&ready, "/tagged/z").await;
    assert_eq!((status, body.as_str()), (200, "v2"));
    assert!(new.terminate(Duration::from_secs(60)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_at_another_opt_level_recompiles_before_it_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let (mut old, ready) = serve_in(dir.path()).await;
    deploy_both(&ready).await;
    let load = Load::start(&ready);
    load.goes_on(20).await;
    let mut new = Running::spawn(takeover_command(dir.path(), &["--opt-level", "none"]));
    new.ready(READY).await;
    // The log is written by a thread of its own: its lines may trail the ready line.
    new.stderr
        .wait_for("the takeover's log", READY, |log| {
            log.contains("took over: serving")
        })
        .await;
    let log = new.stderr.text();
    let restored = log
        .find("routes restored from the data directory routes=2 recompiled=2 failed=0")
        .unwrap_or_else(|| panic!("both routes recompiled:\n{log}"));
    let serving = log
        .find("took over: serving")
        .unwrap_or_else(|| panic!("{log}"));
    assert!(restored < serving, "recompiled before serving:\n{log}");
    assert!(old.exit_within(Duration::from_secs(60)).await.success());
    load.goes_on(20).await;
    let (plain, counts) = load.stop().await;
    plain.assert_no_failures();
    plain.assert_goaway_refusals_at_most(1, H2_CLIENTS);
    counts.assert_no_failures();
    assert!(new.terminate(Duration::from_secs(60)).await.success());
}

/// `PUT /v1/routes/{route}` of `bytes` on a new connection: the status and `Retry-After`.
async fn put_route(admin: SocketAddr, route: &str, bytes: Bytes) -> (u16, Option<String>) {
    let stream = tokio::net::TcpStream::connect(admin)
        .await
        .expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let request = http::Request::put(format!("/v1/routes/{route}"))
        .header(http::header::HOST, "localhost")
        .header(http::header::CONTENT_TYPE, "application/wasm")
        .body(Full::new(bytes))
        .unwrap();
    let response = sender.send_request(request).await.expect("an answer");
    let retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned());
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    (status, retry_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_during_a_takeover_are_applied_once_or_refused_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let (mut old, ready) = serve_in(dir.path()).await;
    deploy_both(&ready).await;
    let bytes = Bytes::from(guests::bytes(guests::TAGGED_V1));
    // Recompiling at another opt level keeps the handover open long enough to meet changes.
    let mut new = Running::spawn(takeover_command(dir.path(), &["--opt-level", "none"]));
    let (mut applied, mut refused) = (vec![], 0);
    let started = Instant::now();
    for i in 0..400 {
        assert!(started.elapsed() < LOAD_LIMIT, "the changes ran too long");
        let route = format!("r{i}");
        match put_route(ready.admin, &route, bytes.clone()).await {
            (200 | 201, _) => applied.push(route),
            (503, Some(retry_after)) => {
                assert_eq!(retry_after, "1");
                refused += 1;
            }
            other => panic!("{route}: {other:?}"),
        }
        if new.exited() || (old.exited() && refused > 0 && applied.len() > 3) {
            break;
        }
    }
    new.ready(READY).await;
    assert!(old.exit_within(Duration::from_secs(60)).await.success());
    assert!(refused > 0, "some changes met the handover");
    let mut expected = applied.clone();
    expected.extend(["kv".to_string(), "tagged".to_string()]);
    expected.sort();
    assert_eq!(
        route_names(&ready).await,
        expected,
        "every change answered as applied is there, and no refused one"
    );
    assert!(new.terminate(Duration::from_secs(60)).await.success());
}

/// `handoff serve` as cluster node `name` keeping its files in `dir`.
pub(crate) fn node_command(
    dir: &Path,
    url: &str,
    name: &str,
    takeover: bool,
) -> tokio::process::Command {
    let dir = dir.to_str().unwrap();
    let mut args = vec![
        "serve",
        "--data-dir",
        dir,
        "--cluster",
        url,
        "--node-name",
        name,
    ];
    args.extend(["--cluster-timeout", "5s"]);
    match takeover {
        true => args.push("--takeover"),
        false => args.extend(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]),
    }
    command(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_takes_over_from_itself_under_load() {
    let nats = handoff_tests::nats::NatsServer::start();
    let url = nats.url();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut old = Running::spawn(node_command(dir_a.path(), &url, "a", false));
    let a = old.ready(READY).await;
    let mut b_process = Running::spawn(node_command(dir_b.path(), &url, "b", false));
    let b = b_process.ready(READY).await;
    deploy_both(&a).await;
    let load = Load::start(&a);
    load.goes_on(20).await;
    for round in 0..2 {
        let mut new = Running::spawn(node_command(dir_a.path(), &url, "a", true));
        let took = new.ready(READY).await;
        assert_eq!((took.data, took.admin), (a.data, a.admin), "round {round}");
        let status = old.exit_within(Duration::from_secs(60)).await;
        assert!(status.success(), "round {round}: {}", old.stderr.text());
        load.goes_on(20).await;
        old = new;
    }
    // The node is still one of the cluster's: a change through b waits for it and reaches it.
    let deployed = handoff(&[
        "deploy",
        "tagged",
        guests::TAGGED_V2,
        "--admin",
        &b.admin_url(),
    ])
    .await;
    assert!(
        deployed.ok().contains("activated on b, a\n"),
        "{deployed:#?}"
    );
    assert_eq!(get(&a, "/tagged/z").await, (200, "v2".to_owned()));
    let (plain, counts) = load.stop().await;
    plain.assert_no_failures();
    plain.assert_goaway_refusals_at_most(2, H2_CLIENTS);
    counts.assert_no_failures();
    let values = counts.values();
    let total = values.len() as u64;
    handoff_tests::assert_each_value_once(values, total);
    assert!(old.terminate(Duration::from_secs(60)).await.success());
    assert!(b_process.terminate(Duration::from_secs(60)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_each_ready_process_names_itself_the_main_one() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let notify = tokio::net::UnixDatagram::bind(&notify_path).unwrap();
    let data = dir.path().join("data");
    let mut first = crate::support::serve_in_command(&data);
    first.env("NOTIFY_SOCKET", &notify_path);
    let mut old = Running::spawn(first);
    old.ready(READY).await;
    let mut buffer = [0u8; 256];
    let received = |n: usize, buffer: &[u8]| String::from_utf8_lossy(&buffer[..n]).into_owned();
    let n = tokio::time::timeout(READY, notify.recv(&mut buffer))
        .await
        .expect("a notification")
        .unwrap();
    assert_eq!(
        received(n, &buffer),
        format!("READY=1\nMAINPID={}\n", old.pid())
    );
    // systemd must hear of the new main process before the old one exits (else it takes that
    // exit for the service's end). Fill the notification queue: the new process's message then
    // waits until this test reads, and the old process must not be told to exit meanwhile.
    let filler = std::os::unix::net::UnixDatagram::unbound().unwrap();
    filler.set_nonblocking(true).unwrap();
    let mut queued = 0;
    while filler.send_to(b"X=1", &notify_path).is_ok() {
        queued += 1;
        assert!(queued < 10_000, "the notification queue never fills");
    }
    let mut second = takeover_command(&data, &[]);
    second.env("NOTIFY_SOCKET", &notify_path);
    let mut new = Running::spawn(second);
    new.stderr
        .wait_for("the new process to accept", READY, |log| {
            log.contains("listening")
        })
        .await;
    // A bounded look for what must not happen: the old process hearing it may exit while the
    // new one's notification is still unsent.
    let looked = Instant::now();
    while looked.elapsed() < Duration::from_secs(2) {
        assert!(
            !old.stderr.text().contains("the new process is ready"),
            "the old process was told to exit before systemd heard of the new one:\n{}\n{}",
            old.stderr.text(),
            new.stderr.text()
        );
        assert!(!old.exited(), "{}", old.stderr.text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(queued > 0, "the notification queue filled");
    for _ in 0..queued {
        let n = notify.recv(&mut buffer).await.unwrap();
        assert_eq!(received(n, &buffer), "X=1");
    }
    let n = tokio::time::timeout(READY, notify.recv(&mut buffer))
        .await
        .expect("a notification")
        .unwrap();
    assert_eq!(
        received(n, &buffer),
        format!("READY=1\nMAINPID={}\n", new.pid())
    );
    new.ready(READY).await;
    assert!(old.exit_within(Duration::from_secs(60)).await.success());
    assert!(new.terminate(Duration::from_secs(60)).await.success());
}

/// Starts a streaming GET of `path` on a connection of its own; returns once the head is in,
/// with the body still coming.
pub(crate) async fn streaming(addr: SocketAddr, path: &str) -> hyper::body::Incoming {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let response = sender
        .send_request(request(Dial::Plain, path))
        .await
        .expect("a head");
    assert_eq!(response.status(), 200);
    response.into_body()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_streaming_at_the_takeover_finishes_on_the_old_process_unless_it_outlasts_the_drain_timeout()
 {
    let dir = tempfile::tempdir().unwrap();
    let mut first = crate::support::serve_in_command(dir.path());
    first.args(["--drain-timeout", "20s"]);
    let mut old = Running::spawn(first);
    let ready = old.ready(READY).await;
    handoff(&[
        "deploy",
        "stream",
        guests::STREAMING,
        "--admin",
        &ready.admin_url(),
    ])
    .await
    .ok();
    // 20 lines, 100 ms apart: under way when the new process is ready.
    let body = streaming(ready.data, "/stream?chunks=20&delay_ms=100").await;
    let mut new = Running::spawn(takeover_command(dir.path(), &["--drain-timeout", "1s"]));
    new.ready(READY).await;
    assert!(!old.exited(), "the old process waits for its stream");
    let text = body.collect().await.expect("the whole body").to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&text).lines().count(),
        20,
        "finished on the old process"
    );
    assert!(old.exit_within(Duration::from_secs(60)).await.success());
    // The new process drains for at most its --drain-timeout (1 s): a longer stream is cut off
    // there, and it exits 0 all the same.
    let body = streaming(ready.data, "/stream?chunks=100&delay_ms=100").await;
    let started = Instant::now();
    let mut newer = Running::spawn(takeover_command(dir.path(), &[]));
    newer.ready(READY).await;
    assert!(
        body.collect().await.is_err(),
        "a stream past the drain timeout ends with an error, never as if complete"
    );
    assert!(new.exit_within(Duration::from_secs(60)).await.success());
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "cut off at the drain timeout, not after the stream's 10 s"
    );
    assert!(newer.terminate(Duration::from_secs(60)).await.success());
}
