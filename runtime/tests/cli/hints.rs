//! What the CLI says when there is nothing to act on, against the real binary: an unknown
//! route or bucket is an error and an empty bucket says so (`kv keys`); a refusal for a
//! missing rollout or shadow names the CLI command that starts one, not an API call; a
//! rollback's reason counts steps as the status does; deploy messages print escaped.

use std::time::{Duration, Instant};

use handoff::exit;
use handoff_tests::guests;

use crate::support::{get, handoff, serve};

const FAILED: i32 = exit::FAILED as i32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_keys_of_an_unknown_route_or_bucket_fails_and_an_empty_bucket_says_so() {
    let (_server, ready) = serve(&[]).await;
    let admin = ready.admin_url();
    let admin = admin.as_str();
    handoff(&["deploy", "app", guests::TAGGED_V1, "--admin", admin])
        .await
        .ok();
    handoff(&["kv", "keys", "--route", "nosuch", "--admin", admin])
        .await
        .fails(FAILED, "no route named `nosuch`");
    handoff(&["kv", "keys", "--bucket", "nosuch", "--admin", admin])
        .await
        .fails(FAILED, "no shared bucket named `nosuch`");
    let empty = handoff(&["kv", "keys", "--route", "app", "--admin", admin]).await;
    assert_eq!(empty.ok(), "", "stdout holds keys only: {empty:#?}");
    assert_eq!(
        empty.stderr, "the bucket of route app holds no keys\n",
        "{empty:#?}"
    );
    handoff(&["kv", "put", "--route", "app", "k", "v", "--admin", admin])
        .await
        .ok();
    let listed = handoff(&["kv", "keys", "--route", "app", "--admin", admin]).await;
    assert_eq!((listed.ok(), listed.stderr.as_str()), ("k\n", ""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_the_cli_command_that_helps() {
    let (_server, ready) = serve(&[]).await;
    let admin = ready.admin_url();
    let admin = admin.as_str();
    handoff(&["deploy", "acc", guests::TAGGED_V1, "--admin", admin])
        .await
        .ok();
    for command in [
        &["promote", "acc"][..],
        &["abort", "acc"],
        &["pause", "acc"],
        &["resume", "acc"],
        &["weight", "acc", "50"],
    ] {
        let mut args = command.to_vec();
        args.extend(["--admin", admin]);
        let out = handoff(&args).await;
        out.fails(
            FAILED,
            "route `acc` has no rollout running; start one with `handoff rollout acc FILE.wasm|VERSION`",
        );
        assert!(!out.stderr.contains("/v1/"), "{out:#?}");
    }
    for command in [&["shadow", "acc"][..], &["shadow", "acc", "--off"]] {
        let mut args = command.to_vec();
        args.extend(["--admin", admin]);
        let out = handoff(&args).await;
        out.fails(
            FAILED,
            "route `acc` has no shadow; start one with `handoff shadow acc FILE.wasm|VERSION`",
        );
        assert!(!out.stderr.contains("/v1/"), "{out:#?}");
    }
    handoff(&["promote", "nosuch", "--admin", admin])
        .await
        .fails(FAILED, "there is no route named `nosuch`; `handoff routes`");
    handoff(&["shadow", "nosuch", "--admin", admin])
        .await
        .fails(FAILED, "there is no route named `nosuch`; `handoff routes`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollbacks_reason_counts_steps_as_the_status_does() {
    let (_server, ready) = serve(&[]).await;
    let admin = ready.admin_url();
    let admin = admin.as_str();
    handoff(&["deploy", "fl", guests::TAGGED_V1, "--admin", admin])
        .await
        .ok();
    let started = handoff(&[
        "rollout",
        "fl",
        guests::FAILING,
        "--steps",
        "50,100",
        "--step-time",
        "30m",
        "--min-requests",
        "5",
        "--admin",
        admin,
    ])
    .await;
    assert!(
        started.ok().contains("running, step 1 of 2 at 50 %"),
        "{started:#?}"
    );
    // Half the requests reach the candidate, which fails every one of them.
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        for _ in 0..5 {
            let (status, _) = get(&ready, "/fl/error").await;
            assert!(status == 200 || status == 500, "{status}");
        }
        let text = handoff(&["status", "fl", "--admin", admin])
            .await
            .ok()
            .to_owned();
        if text.contains("rolled back") {
            break text;
        }
        assert!(Instant::now() < deadline, "never rolled back:\n{text}");
    };
    assert!(
        text.contains("in step 1 of 2 is above max_error_rate"),
        "{text}"
    );
    assert!(!text.contains("step 0"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_prints_deploy_messages_escaped() {
    let (_server, ready) = serve(&[]).await;
    let admin = ready.admin_url();
    let admin = admin.as_str();
    let message = "fix \u{1b}[2J\u{1b}[31mred\u{7} done";
    handoff(&[
        "deploy",
        "app",
        guests::TAGGED_V1,
        "--message",
        message,
        "--admin",
        admin,
    ])
    .await
    .ok();
    let listed = handoff(&["versions", "app", "--admin", admin]).await;
    let text = listed.ok();
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "{text:?}"
    );
    assert!(
        text.contains(r#""fix \u{1b}[2J\u{1b}[31mred\u{7} done""#),
        "{text}"
    );
    // `--json` is the data as stored.
    let json = handoff(&["versions", "app", "--admin", admin, "--json"]).await;
    let body: serde_json::Value = serde_json::from_str(json.ok()).unwrap();
    assert_eq!(body["versions"][0]["message"], message);
}
