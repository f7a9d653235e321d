//! What the console shows of what happened, and the actions beside promote and abort, in a
//! real browser (headless Chromium): the events the server held before the page opened; a
//! version's failed requests as a count that stays once traffic stops; only the current
//! activation marked serving; a candidate that was rolled back findable in the history (and
//! rolled out again from there); a rollout that ended before the page opened not shown as if
//! current, one that ends while it watches shown, then gone; a rollout of a stored version
//! started from the page; a live tail of a route's guest log lines; a route deleted after a
//! confirmation. And: the key list shows each key once however often it is asked for, the
//! shadow's row has figures while copies run, and its mismatches come grouped by kind, with a
//! button that stops it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use handoff_tests::webdriver::Browser;
use handoff_tests::{Connection, TestServer, eventually, guests};
use http::{Method, StatusCode};
use serde_json::json;

use super::console::{shown, until};

const GENEROUS: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_failures_events_and_route_actions_in_a_browser() {
    let server = TestServer::start().await;
    let v1 = server.deployed("app", guests::TAGGED_V1).await.version;
    let v2 = server.deployed("app", guests::TAGGED_V2).await.version;
    // Back to v1: v1 is in the history twice, only the latest activation serves.
    let (status, body) = server
        .post_json("/v1/routes/app/rollback", json!({"version": v1}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A candidate that fails: rolled back before the page opens.
    let failing = server.upload(guests::FAILING).await;
    let (status, body) = server
        .post_json(
            "/v1/routes/app/rollout",
            json!({"version": failing, "steps": [50, 100], "step_time": "30m", "min_requests": 5}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut conn = Connection::open(server.data).await;
    let deadline = Instant::now() + GENEROUS;
    while server
        .route("app")
        .await
        .rollout
        .is_none_or(|r| r.state != "rolled_back")
    {
        assert!(
            Instant::now() < deadline,
            "the candidate was never rolled back"
        );
        for _ in 0..5 {
            conn.get("/app/error").await.unwrap();
        }
    }
    // A route whose guest answered three 500s, then no more traffic.
    server.deploy("bad", guests::FAILING).await;
    for _ in 0..3 {
        let (status, _) = conn.get("/bad/error").await.unwrap();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    eventually("the failures counted", GENEROUS, || async {
        (server.route("bad").await.active.failures == 3).then_some(())
    })
    .await;

    let browser = Browser::start(1280, 1800).await;
    browser.goto(&format!("http://{}/", server.admin)).await;
    assert_eq!(
        until(&browser, "the route on the page", &shown("app", "stable")).await,
        v1.as_str()
    );
    // The events from before the page opened, without a new one.
    let events = until(
        &browser,
        "the server's recent events",
        "const kinds = [...document.querySelectorAll('#events li')].map(li => li.dataset.kind); \
         return kinds.includes('rollout_rolled_back') && kinds.includes('activated') && kinds;",
    )
    .await;
    assert!(events.as_array().unwrap().len() >= 6, "{events}");
    // The failed requests, counted since the version started: not a rate that fell to 0.
    let failed = until(
        &browser,
        "the failed count",
        "const cell = document.querySelector('#route-bad tr.version[data-role=\"stable\"] td.failed'); \
         return cell && cell.textContent;",
    )
    .await;
    assert!(failed.as_str().unwrap().starts_with("3 "), "{failed}");
    // One serving row; the older activation of v1 offers nothing; v2 can be rolled back to.
    let history = until(
        &browser,
        "the history with the rolled-back candidate",
        &format!(
            "const row = document.querySelector('#route-app tr.ended-rollout[data-version=\"{failing}\"]'); \
             return row && [...document.querySelectorAll('#route-app [data-panel=\"history\"] tr.activation')] \
               .map(r => [r.dataset.version, r.cells[6].textContent.trim()]);"
        ),
    )
    .await;
    assert_eq!(
        history,
        json!([
            // The rollout's end restored v1: that activation serves.
            [v1, "serving"],
            [v1, ""],
            [v2, "roll back to this"],
            [v1, ""],
        ]),
        "newest first"
    );
    let reason = browser
        .eval(
            &format!(
                "return document.querySelector('#route-app tr.ended-rollout[data-version=\"{failing}\"]').textContent;"
            ),
            json!([]),
        )
        .await;
    let reason = reason.as_str().unwrap();
    assert!(
        reason.contains("rollout rolled back") && reason.contains("max_error_rate"),
        "{reason}"
    );
    // That rollout ended before the page opened: its outcome is in the history, not shown as
    // the route's rollout.
    let panel = browser
        .eval(
            "return document.querySelector('#route-app [data-panel=\"rollout\"]').textContent;",
            json!([]),
        )
        .await;
    assert_eq!(panel, "", "a finished rollout is not current");

    // A rollout of a stored version, started from the page.
    until(
        &browser,
        "the stored versions to roll out",
        &format!(
            "const s = document.querySelector('select[data-candidate-for=\"app\"]'); \
             return s && [...s.options].some(o => o.value === '{v2}');"
        ),
    )
    .await;
    browser
        .eval(
            &format!(
                "document.querySelector('select[data-candidate-for=\"app\"]').value = '{v2}'; \
                 document.querySelector('input[data-steps-for=\"app\"]').value = '20, 60';"
            ),
            json!([]),
        )
        .await;
    browser
        .click("button[data-action=\"rollout\"][data-route=\"app\"]", true)
        .await;
    until(
        &browser,
        "the rollout on the page",
        "const s = document.querySelector('#route-app .rollout-step'); return s && s.textContent === 'step 1 of 2';",
    )
    .await;
    let rollout = server.status("app").await["rollout"].clone();
    assert_eq!(
        (&rollout["candidate"], &rollout["steps"], &rollout["state"]),
        (&json!(v2), &json!([20.0, 60.0]), &json!("running"))
    );
    // It ends while the page watches: shown, then gone.
    browser
        .click("button[data-action=\"abort\"][data-route=\"app\"]", true)
        .await;
    until(
        &browser,
        "the abort on the page",
        "return document.querySelector('#route-app [data-rollout-state=\"aborted\"]');",
    )
    .await;
    until(
        &browser,
        "the ended rollout to leave its panel",
        "return document.querySelector('#route-app [data-panel=\"rollout\"]').textContent === '';",
    )
    .await;
    // The failing candidate, rolled out again from its history row.
    browser
        .click(
            &format!(
                "#route-app button[data-action=\"rollout-again\"][data-version=\"{failing}\"]"
            ),
            true,
        )
        .await;
    eventually("the second rollout", GENEROUS, || async {
        let rollout = server.status("app").await["rollout"].clone();
        (rollout["candidate"] == failing.as_str() && rollout["state"] == "running").then_some(())
    })
    .await;
    let (status, _) = server
        .admin(Method::POST, "/v1/routes/app/rollout/abort")
        .await;
    assert_eq!(status, StatusCode::OK);

    // A live tail of the route's guest log lines.
    browser
        .click("button[data-action=\"tail\"][data-route=\"bad\"]", false)
        .await;
    until(
        &browser,
        "the tail",
        "return document.querySelector('#route-bad ol.tail');",
    )
    .await;
    let deadline = Instant::now() + GENEROUS;
    let line = loop {
        let (status, _) = server.get("/bad/error").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        let text = browser
            .eval(
                "const li = [...document.querySelectorAll('#route-bad ol.tail li')] \
                   .find(li => li.textContent.includes('the database is unreachable')); \
                 return li ? li.textContent : '';",
                json!([]),
            )
            .await;
        let text = text.as_str().unwrap().to_owned();
        if !text.is_empty() {
            break text;
        }
        assert!(Instant::now() < deadline, "no guest line in the tail");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(line.contains("ERROR"), "{line}");

    // Delete the route, confirmed: it goes from the server and the page.
    browser
        .click("button[data-action=\"delete\"][data-route=\"bad\"]", true)
        .await;
    until(
        &browser,
        "the deleted route to leave the page",
        "return !document.getElementById('route-bad');",
    )
    .await;
    let (status, _) = server.admin(Method::GET, "/v1/routes/bad").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let errors = browser
        .eval("return window.__consoleErrors;", json!([]))
        .await;
    assert_eq!(errors, json!([]), "the page logged errors");
    browser.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_once_and_a_shadow_grouped_and_stopped_in_a_browser() {
    let server = TestServer::start().await;
    server.deploy("app", guests::TAGGED_V1).await;
    server.deploy("other", guests::TAGGED_V2).await;
    for key in ["a", "b", "c"] {
        let (status, body) = server
            .admin_json(
                Method::PUT,
                &format!("/v1/routes/app/kv/keys/{key}"),
                json!({"value": key}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let browser = Browser::start(1280, 1600).await;
    browser.goto(&format!("http://{}/", server.admin)).await;
    until(&browser, "the route on the page", &shown("app", "stable")).await;
    until(
        &browser,
        "the key-value browser",
        "return !document.getElementById('kv').hidden;",
    )
    .await;
    // Asked for twice at once, and after a bucket change and back: each key once. The page's
    // key listings are counted until their answers are read (and drawn), so the checks wait
    // for all of them.
    browser
        .eval(
            "window.__listings = 0; const fetch = window.fetch; \
             window.fetch = (...args) => { \
               if (!String(args[0]).includes('/kv/keys')) return fetch(...args); \
               window.__listings++; \
               const done = () => setTimeout(() => window.__listings--, 0); \
               return fetch(...args).then((res) => { \
                 const text = res.text.bind(res); \
                 res.text = () => text().finally(done); \
                 return res; \
               }, (e) => { done(); throw e; }); };",
            json!([]),
        )
        .await;
    let keys =
        "return [...document.querySelectorAll('#kv-keys [data-key]')].map(b => b.dataset.key);";
    let settled = "return window.__listings === 0 && document.querySelectorAll('#kv-keys [data-key]').length > 0;";
    browser
        .eval(
            "const s = document.getElementById('kv-bucket'); s.value = 'route:app'; \
             document.getElementById('kv-refresh').click(); document.getElementById('kv-refresh').click();",
            json!([]),
        )
        .await;
    until(&browser, "the keys", settled).await;
    assert_eq!(browser.eval(keys, json!([])).await, json!(["a", "b", "c"]));
    browser
        .eval(
            "const s = document.getElementById('kv-bucket'); \
             s.value = 'route:other'; s.dispatchEvent(new Event('change')); \
             s.value = 'route:app'; s.dispatchEvent(new Event('change'));",
            json!([]),
        )
        .await;
    until(&browser, "the keys again", settled).await;
    assert_eq!(browser.eval(keys, json!([])).await, json!(["a", "b", "c"]));

    // A shadow of a version that answers differently: its row has a rate and a p99 while
    // copies run, and its mismatches come as one kind with its count.
    let shadow = server.upload(guests::TAGGED_V1B).await;
    let (status, body) = server
        .admin_json(
            Method::PUT,
            "/v1/routes/app/shadow",
            json!({"version": shadow, "percent": 100}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Traffic runs until the page has shown the figures (the page reads them once a second,
    // and a loaded machine can be slow to): at least 20 requests, at most 1,200.
    let data = server.data;
    let seen = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn({
        let seen = seen.clone();
        async move {
            let mut conn = Connection::open(data).await;
            let mut sent = 0u64;
            while sent < 1_200 && (sent < 20 || !seen.load(Ordering::SeqCst)) {
                let (status, _) = conn.get("/app/changed").await.unwrap();
                assert_eq!(status, StatusCode::OK);
                sent += 1;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            sent
        }
    });
    let figures = until(
        &browser,
        "the shadow's figures in its row",
        "const row = document.querySelector('#route-app tr.version[data-role=\"shadow\"]'); \
         const rps = row && row.querySelector('.spark.rps span'); \
         const p99 = row && row.querySelector('.spark.p99 span'); \
         return rps && parseFloat(rps.textContent) > 0 && p99.textContent !== '–' && [rps.textContent, p99.textContent];",
    )
    .await;
    assert!(figures.is_array(), "{figures}");
    seen.store(true, Ordering::SeqCst);
    let sent = traffic.await.unwrap();
    eventually("the copies compared", GENEROUS, || async {
        (server.status("app").await["shadow"]["mismatches"] == sent).then_some(())
    })
    .await;
    let group = until(
        &browser,
        "the mismatches grouped",
        &format!(
            "const groups = document.querySelectorAll('#route-app [data-panel=\"shadow\"] .kind-group'); \
             return groups.length === 1 && groups[0].querySelector('.count').textContent === '{sent}' && \
               [groups[0].dataset.kind, groups[0].querySelectorAll('.sample').length];"
        ),
    )
    .await;
    assert_eq!(group, json!(["body (status 200)", 2]));
    browser
        .click(
            "button[data-action=\"shadow-off\"][data-route=\"app\"]",
            true,
        )
        .await;
    until(
        &browser,
        "the shadow to stop",
        "return document.querySelector('#route-app [data-panel=\"shadow\"]').textContent === '';",
    )
    .await;
    assert!(server.status("app").await["shadow"].is_null());

    let errors = browser
        .eval("return window.__consoleErrors;", json!([]))
        .await;
    assert_eq!(errors, json!([]), "the page logged errors");
    browser.close().await;
    server.shutdown().await;
}
