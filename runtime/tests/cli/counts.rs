//! What an operator reads about failed requests, against the real binary: the request id a
//! response carries is the one its log lines carry, also on a 500 the guest answered itself; a
//! guest's panic is one `WARN` line with that id; and `handoff status`, `/metrics` and the
//! rollout gates count failed requests alike (5xx answers as well as traps).

use std::time::{Duration, Instant};

use handoff::exit;
use handoff_tests::guests;

use crate::support::{Ready, get_trap, get_with_id, handoff, serve};

/// The `/metrics` sample of `family` for route `route`.
async fn metric(ready: &Ready, family: &str, route: &str) -> Option<u64> {
    let request = http::Request::builder()
        .uri("/metrics")
        .header("host", ready.admin.to_string())
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let (status, body) = handoff_tests::send(ready.admin, request).await;
    assert_eq!(status, 200);
    let prefix = format!("{family}{{route=\"{route}\"");
    String::from_utf8_lossy(&body)
        .lines()
        .find(|line| line.starts_with(&prefix))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_requests_id_is_the_same_in_its_response_and_its_log_lines() {
    let (server, ready) = serve(&[]).await;
    let admin = ready.admin_url();
    handoff(&["deploy", "failing", guests::FAILING, "--admin", &admin])
        .await
        .ok();
    let log = || server.stderr.text();

    // A 500 the guest answered itself (its handler returned `Err`): the header, and the same id
    // on the guest's own error line and on the host's line.
    let (status, id, _) = get_with_id(&ready, "/failing/error").await;
    assert_eq!(status, 500);
    let id = id.expect("x-request-id on the guest's own 500");
    assert!(
        id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    let field = format!("request_id={id}");
    server
        .stderr
        .wait_for(
            "the guest's 500 in the log",
            Duration::from_secs(30),
            |text| {
                text.lines()
                    .filter(|l| l.contains(&field))
                    .any(|l| l.contains("WARN") && l.contains("status=500"))
                    && text
                        .lines()
                        .any(|l| l.contains(&field) && l.contains("the database is unreachable"))
            },
        )
        .await;

    // A panic: one WARN line with the id and the panic's message; no line of its own.
    get_trap(
        &server,
        &ready,
        "/failing/trap",
        "failing guest: trapping on purpose",
    )
    .await;
    let text = log();
    let mentions: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("trapping on purpose") || l.contains("panicked at"))
        .collect();
    assert_eq!(mentions.len(), 1, "one line says it: {mentions:#?}");
    assert!(!text.contains("RUST_BACKTRACE"), "{text}");
    // The host's own answers carry the id in the same format too.
    let (status, id, body) = get_with_id(&ready, "/nowhere").await;
    assert_eq!(status, 404);
    let id = id.expect("x-request-id on the 404");
    assert!(
        id.len() == 16 && body.contains(&format!("\"request_id\":\"{id}\"")),
        "{id} {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_metrics_and_gates_count_5xx_answers_and_traps_alike() {
    let (_server, ready) = serve(&[]).await;
    let admin = ready.admin_url();
    let admin = admin.as_str();
    handoff(&["deploy", "failing", guests::FAILING, "--admin", admin])
        .await
        .ok();
    assert_eq!(get_with_id(&ready, "/failing/trap").await.0, 500);
    for _ in 0..6 {
        assert_eq!(get_with_id(&ready, "/failing/error").await.0, 500);
    }
    assert_eq!(get_with_id(&ready, "/failing").await.0, 200);
    // A request is counted once its response has ended: wait for the last one.
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = handoff(&["status", "failing", "--admin", admin])
            .await
            .ok()
            .to_owned();
        if text.contains("8 on this version, 7 failed") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        text.contains("8 on the route; 8 on this version, 7 failed, 0 in flight"),
        "{text}"
    );
    for family in [
        "handoff_version_failures_total",
        "handoff_version_errors_total",
    ] {
        assert_eq!(metric(&ready, family, "failing").await, Some(7), "{family}");
    }
    assert_eq!(
        metric(&ready, "handoff_version_guest_failures_total", "failing").await,
        Some(1),
        "the trap is the one guest failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_logs_follows_a_routes_guest_lines_with_their_request_ids() {
    let (_server, ready) = serve(&[]).await;
    let admin = ready.admin_url();
    handoff(&["deploy", "failing", guests::FAILING, "--admin", &admin])
        .await
        .ok();
    handoff(&["logs", "nosuch", "--admin", &admin])
        .await
        .fails(exit::FAILED as i32, "there is no route named `nosuch`");
    let tail = crate::support::Running::spawn(crate::support::command(&[
        "logs", "failing", "--admin", &admin,
    ]));
    // The tail starts with the request after it connects: ask until its line shows.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (id, line) = loop {
        let (status, id, _) = get_with_id(&ready, "/failing/error").await;
        assert_eq!(status, 500);
        let id = id.expect("x-request-id");
        if let Some(line) = tail.stdout.text().lines().find(|l| l.contains(&id)) {
            break (id, line.to_owned());
        }
        assert!(
            Instant::now() < deadline,
            "no line in:\n{}\n{}",
            tail.stdout.text(),
            tail.stderr.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        line.contains("  ERROR  ")
            && line.contains(&format!(
                "  {id}  stderr  GET /failing/error: the database is unreachable"
            )),
        "{line}"
    );
}
