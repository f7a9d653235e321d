//! What an operator reads about a WASI 0.3 guest (`p3-hello`), against the real binary, on
//! fresh and on shared instances: its log lines carry its route, version and request id; a
//! panic is one `WARN` line with the failed request's id, as for 0.2; its lines have the
//! version's budget.

use std::time::Duration;

use handoff_tests::guests;

use crate::support::{get_trap, get_with_id, handoff, serve};

/// Deploys `p3-hello` as `route` on shared instances (64 requests each, 8 at once).
async fn deploy_shared(admin: &str, route: &str) {
    handoff(&[
        "deploy",
        route,
        guests::P3_HELLO,
        "--reuse",
        "64",
        "--instance-concurrency",
        "8",
        "--admin",
        admin,
    ])
    .await
    .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_03_guests_lines_and_panics_carry_route_version_and_request_id() {
    let (server, ready) = serve(&[]).await;
    let admin = ready.admin_url();
    handoff(&["deploy", "fresh", guests::P3_HELLO, "--admin", &admin])
        .await
        .ok();
    deploy_shared(&admin, "shared").await;
    for route in ["fresh", "shared"] {
        // A line the guest wrote for a request that failed: the same id as the response's.
        let marker = format!("line-of-{route}");
        let (status, id, _) = get_with_id(&ready, &format!("/{route}/fail?line={marker}")).await;
        assert_eq!(status, 500);
        let id = id.expect("x-request-id on the guest's 500");
        let field = format!("request_id={id}");
        server
            .stderr
            .wait_for("the guest's line", Duration::from_secs(30), |text| {
                text.lines().any(|l| {
                    l.contains(&marker)
                        && l.contains(&field)
                        && l.contains(&format!("route={route}"))
                        && l.contains("version=")
                })
            })
            .await;

        // A panic: one WARN line with the id and the panic's message; no line of its own.
        let trap = format!("/{route}/trap");
        get_trap(&server, &ready, &trap, "asked to trap on call").await;
        // The instance's end is logged after the answer: give it a moment to show.
        assert_eq!(get_with_id(&ready, &format!("/{route}")).await.0, 200);
        let text = server.stderr.text();
        let mentions: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("asked to trap on call") || l.contains("panicked at"))
            .filter(|l| l.contains(&format!("route={route}")))
            .collect();
        assert_eq!(mentions.len(), 1, "one line says it: {mentions:#?}");
    }
    assert!(!server.stderr.text().contains("RUST_BACKTRACE"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_03_guest_flooding_its_log_is_held_to_its_budget_and_reported() {
    let (server, ready) = serve(&[]).await;
    let admin = ready.admin_url();
    deploy_shared(&admin, "flood").await;
    // 2 × 600 lines at once, over the burst of 500.
    let (status, _, body) = get_with_id(&ready, "/flood/log?line=flooding&n=600").await;
    assert_eq!((status, body.as_str()), (200, "logged"));
    server
        .stderr
        .wait_for(
            "the report of suppressed lines",
            Duration::from_secs(30),
            |text| {
                text.lines().any(|l| {
                    l.contains("guest log lines suppressed")
                        && l.contains("route=flood")
                        && l.contains("version=")
                })
            },
        )
        .await;
    let logged = server
        .stderr
        .text()
        .lines()
        .filter(|l| l.contains("flooding"))
        .count();
    assert!(
        (400..=600).contains(&logged),
        "about the burst was logged: {logged}"
    );
    assert_eq!(get_with_id(&ready, "/flood").await.0, 200);
}
