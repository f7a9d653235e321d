//! `serve --takeover` of a server whose data listener speaks TLS: under load over HTTP/1.1 and
//! HTTP/2 (both chosen by ALPN), no request fails, and every connection, to the old process
//! or the new one, is served the same certificate. A takeover that would add or drop TLS under
//! the clients is refused, and the old process serves on.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use handoff_tests::guests;

use crate::load::{Answer, Clients, Dial, Tally, h1_connect, request, tls_fixture};
use crate::support::{Ready, Running, command, handoff, run_within};

const READY: Duration = Duration::from_secs(60);
/// How many clients of each protocol a [`Load`] runs.
const CLIENTS: u64 = 2;
/// What every request of the load gets.
const ANSWER: Answer = Answer::Body("v1");

/// The TLS flags every process of these tests serves its data listener with.
fn tls_flags() -> [String; 4] {
    [
        "--tls-cert".into(),
        tls_fixture("cert.pem").display().to_string(),
        "--tls-key".into(),
        tls_fixture("key.pem").display().to_string(),
    ]
}

/// `handoff serve` on `dir` with `extra` flags; ephemeral ports unless taking over.
fn serve_command(dir: &Path, extra: &[String]) -> tokio::process::Command {
    let mut args = vec!["serve".to_owned(), "--data-dir".to_owned()];
    args.push(dir.display().to_string());
    if !extra.iter().any(|a| a == "--takeover") {
        args.extend(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"].map(String::from));
    }
    args.extend_from_slice(extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    command(&args)
}

/// Load over TLS on `ready`'s data plane: HTTP/1.1 and HTTP/2 clients.
struct Load {
    clients: Clients,
    h1: Arc<Tally>,
    h2: Arc<Tally>,
}

impl Load {
    fn start(ready: &Ready) -> Self {
        let mut clients = Clients::new(Duration::from_secs(60));
        let h1 = clients.tally("HTTP/1.1");
        let h2 = clients.tally("h2");
        for _ in 0..CLIENTS {
            clients.h1(ready.data, Dial::Tls, "/tagged/x", ANSWER, &h1);
            clients.h2(ready.data, Dial::Tls, "/tagged/x", ANSWER, &h2);
        }
        Self { clients, h1, h2 }
    }

    /// Waits until `n` more requests of each protocol have succeeded.
    async fn goes_on(&self, n: u64) {
        self.clients.goes_on(n).await;
    }

    /// Stops the clients; what they saw over HTTP/1.1, over HTTP/2.
    async fn stop(self) -> (Arc<Tally>, Arc<Tally>) {
        self.clients.stop().await;
        (self.h1, self.h2)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_takeovers_of_a_tls_listener_under_load_fail_no_request_and_keep_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let mut old = Running::spawn(serve_command(dir.path(), &tls_flags()));
    let ready = old.ready(READY).await;
    assert!(
        old.stdout.text().contains("data=https://"),
        "{}",
        old.stdout.text()
    );
    handoff(&[
        "deploy",
        "tagged",
        guests::TAGGED_V1,
        "--admin",
        &ready.admin_url(),
    ])
    .await
    .ok();
    let load = Load::start(&ready);
    load.goes_on(20).await;
    let mut takeover = tls_flags().to_vec();
    takeover.push("--takeover".into());
    for round in 0..2 {
        let handshakes = load.h1.handshakes() + load.h2.handshakes();
        let mut new = Running::spawn(serve_command(dir.path(), &takeover));
        let took = new.ready(READY).await;
        assert_eq!(
            (took.data, took.admin),
            (ready.data, ready.admin),
            "round {round}: the same addresses"
        );
        assert!(new.stdout.text().contains("data=https://"), "round {round}");
        let status = old.exit_within(Duration::from_secs(60)).await;
        assert!(
            status.success(),
            "round {round}: {status}\n{}",
            old.stderr.text()
        );
        // Only the new process accepts now: the connections made from here are its own, and
        // each was shown the fixture certificate.
        load.goes_on(20).await;
        let after = load.h1.handshakes() + load.h2.handshakes();
        assert!(
            after > handshakes,
            "round {round}: the clients moved to new connections (to the new process)"
        );
        old = new;
    }
    let (h1, h2) = load.stop().await;
    eprintln!(
        "TLS takeover load: {} HTTP/1.1 and {} h2 requests, {} and {} reconnects, {} handshakes",
        h1.ok(),
        h2.ok(),
        h1.reconnects(),
        h2.reconnects(),
        h1.handshakes() + h2.handshakes(),
    );
    h1.assert_no_failures();
    h2.assert_no_failures();
    h2.assert_goaway_refusals_at_most(2, CLIENTS);
    assert!(h1.reconnects() > 0, "told to close");
    assert!(h2.reconnects() > 0, "sent GOAWAY");
    assert!(old.terminate(Duration::from_secs(60)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_that_would_add_or_drop_tls_under_the_clients_is_refused() {
    // A TLS server, and a takeover without the TLS flags.
    let dir = tempfile::tempdir().unwrap();
    let mut old = Running::spawn(serve_command(dir.path(), &tls_flags()));
    let ready = old.ready(READY).await;
    handoff(&[
        "deploy",
        "tagged",
        guests::TAGGED_V1,
        "--admin",
        &ready.admin_url(),
    ])
    .await
    .ok();
    let out = run_within(READY, serve_command(dir.path(), &["--takeover".to_owned()])).await;
    assert_ne!(out.code, 0, "{out:#?}");
    assert!(
        out.stderr.contains(
            "the running server serves its data listener over TLS; give --tls-cert and --tls-key"
        ),
        "{out:#?}"
    );
    // The old process serves on, over TLS, and takes changes.
    let tally = Tally::default();
    h1_once(ready.data, &tally).await;
    tally.assert_no_failures();
    assert_eq!(tally.ok(), 1);
    handoff(&[
        "deploy",
        "other",
        guests::TAGGED_V1,
        "--admin",
        &ready.admin_url(),
    ])
    .await
    .ok();
    assert!(!old.exited());
    // A plain server, and a takeover that adds TLS.
    let plain_dir = tempfile::tempdir().unwrap();
    let mut plain = Running::spawn(serve_command(plain_dir.path(), &[]));
    let plain_ready = plain.ready(READY).await;
    let mut adding = tls_flags().to_vec();
    adding.push("--takeover".into());
    let out = run_within(READY, serve_command(plain_dir.path(), &adding)).await;
    assert_ne!(out.code, 0, "{out:#?}");
    assert!(
        out.stderr
            .contains("the running server serves its data listener without TLS"),
        "{out:#?}"
    );
    assert_eq!(
        crate::support::get(&plain_ready, "/nowhere").await.0,
        404,
        "the plain server serves on"
    );
    assert!(plain.terminate(Duration::from_secs(60)).await.success());
    assert!(old.terminate(Duration::from_secs(60)).await.success());
}

/// One GET over TLS (HTTP/1.1), tallied.
async fn h1_once(addr: SocketAddr, tally: &Tally) {
    let Some(mut sender) = h1_connect(addr, Dial::Tls, tally).await else {
        return;
    };
    match sender.send_request(request(Dial::Tls, "/tagged/x")).await {
        Ok(response) => tally.response(response, ANSWER).await,
        Err(error) => tally.fail(format!("HTTP/1.1: {error:?}")),
    }
}
