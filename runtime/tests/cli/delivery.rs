//! `handoff rollout | weight | pause | resume | promote | abort | shadow` against a real
//! `handoff serve`: a file or a version prefix as the candidate, the split moved by hand, the
//! shadow started, shown and stopped, and one line with an exit code on every refusal.

use handoff::exit;
use handoff_tests::guests;

use crate::support::{get, handoff, json, serve};

const FAILED: i32 = exit::FAILED as i32;
const USAGE: i32 = exit::USAGE as i32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_is_started_moved_and_promoted_from_the_command_line() {
    let (_server, ready) = serve(&[]).await;
    let admin = ready.admin_url();
    let admin = admin.as_str();
    handoff(&["deploy", "app", guests::TAGGED_V1, "--admin", admin])
        .await
        .ok();

    // No rollout yet: promote is refused with the server's sentence.
    handoff(&["promote", "app", "--admin", admin])
        .await
        .fails(FAILED, "promote refused (409 Conflict): ");

    // The candidate as a file, uploaded first.
    let started = handoff(&[
        "rollout",
        "app",
        guests::TAGGED_V2,
        "--steps",
        "10,50,100",
        "--sticky",
        "header:x-user",
        "--manual",
        "--admin",
        admin,
    ])
    .await;
    let text = started.ok();
    for part in [
        "started a rollout on route app\n",
        "rollout    running, step 1 of 3 at 10 % (manual)\n",
        "steps      10 % → 50 % → 100 %\n",
        "sticky     header:x-user\n",
    ] {
        assert!(text.contains(part), "{part:?} missing from:\n{text}");
    }

    // A second one: refused, naming the running one.
    handoff(&["rollout", "app", guests::TAGGED_V2, "--admin", admin])
        .await
        .fails(FAILED, "rollout refused (409 Conflict)");

    // By hand: weight 100, every request on the candidate; paused until resumed.
    let moved = handoff(&["weight", "app", "100", "--admin", admin, "--json"]).await;
    let body = json(moved.ok());
    assert_eq!(
        (&body["weight"], &body["state"]),
        (&100.0.into(), &"paused".into())
    );
    assert_eq!(get(&ready, "/app").await, (200, "v2".into()));
    let resumed = handoff(&["resume", "app", "--admin", admin]).await;
    assert!(
        resumed.ok().starts_with("rollout    running, step"),
        "{resumed:#?}"
    );
    let paused = handoff(&["pause", "app", "--admin", admin]).await;
    assert!(paused.ok().starts_with("rollout    paused"), "{paused:#?}");

    // The status shows the split and the rollout.
    let status = handoff(&["status", "app", "--admin", admin]).await;
    let text = status.ok();
    assert!(text.contains("split "), "{text}");
    assert!(text.contains("rollout    paused"), "{text}");

    let promoted = handoff(&["promote", "app", "--admin", admin]).await;
    assert!(
        promoted.ok().starts_with("rollout    promoted\n"),
        "{promoted:#?}"
    );
    assert_eq!(get(&ready, "/app").await, (200, "v2".into()));

    // The candidate by version prefix: v1 again, from the module store; then aborted.
    let v1 = json(
        handoff(&["upload", guests::TAGGED_V1, "--admin", admin, "--json"])
            .await
            .ok(),
    )["version"]
        .as_str()
        .unwrap()
        .to_owned();
    let prefix = &v1["sha256:".len().."sha256:".len() + 10];
    let again = handoff(&[
        "rollout", "app", prefix, "--steps", "50", "--manual", "--admin", admin,
    ])
    .await;
    assert!(
        again.ok().contains(&format!("candidate  {v1}\n")),
        "{again:#?}"
    );
    let aborted = handoff(&["abort", "app", "--admin", admin]).await;
    assert!(
        aborted.ok().starts_with("rollout    aborted\n"),
        "{aborted:#?}"
    );
    assert_eq!(get(&ready, "/app").await, (200, "v2".into()));

    // Neither a file nor enough hex digits; a prefix no module has.
    handoff(&["rollout", "app", "abc", "--admin", admin])
        .await
        .fails(USAGE, "at least 8 hex digits");
    handoff(&["rollout", "app", "0123456789", "--admin", admin])
        .await
        .fails(
            FAILED,
            "no stored module's version starts with `0123456789`",
        );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_is_started_shown_and_stopped_from_the_command_line() {
    let (_server, ready) = serve(&[]).await;
    let admin = ready.admin_url();
    let admin = admin.as_str();
    handoff(&["deploy", "app", guests::TAGGED_V1, "--admin", admin])
        .await
        .ok();
    handoff(&["shadow", "app", "--admin", admin])
        .await
        .fails(FAILED, "shadow refused (404 Not Found)");

    let started = handoff(&[
        "shadow",
        "app",
        guests::TAGGED_V1B,
        "--percent",
        "100",
        "--compare-header",
        "content-type",
        "--admin",
        admin,
    ])
    .await;
    assert!(
        started.ok().starts_with("started a shadow on route app\n"),
        "{started:#?}"
    );
    for _ in 0..5 {
        assert_eq!(get(&ready, "/app/changed").await, (200, "v1".into()));
    }
    // The copies are compared after the client's response: wait for all five.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let shown = loop {
        let shown = handoff(&["shadow", "app", "--admin", admin]).await;
        if shown.ok().contains("5 compared") || std::time::Instant::now() > deadline {
            break shown;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let text = shown.ok();
    assert!(
        text.contains("5 compared: 0 match, 5 mismatch, 0 noise, 0 errors; 0 skipped"),
        "{text}"
    );
    // Five mismatches of one kind: counted once, with three examples.
    assert!(text.contains("mismatches by kind"), "{text}");
    assert!(text.contains("  5  body (status 200)\n"), "{text}");
    assert_eq!(text.matches("GET /app/changed").count(), 3, "{text}");
    assert!(
        text.contains("stable 200 2 bytes \"v1\", shadow 200 10 bytes \"v1 changed\""),
        "{text}"
    );

    let stopped = handoff(&["shadow", "app", "--off", "--admin", admin]).await;
    assert!(
        stopped
            .ok()
            .starts_with("stopped the shadow of route app\n"),
        "{stopped:#?}"
    );
    handoff(&["shadow", "app", "--off", "--admin", admin])
        .await
        .fails(FAILED, "shadow --off refused (404 Not Found)");
}
