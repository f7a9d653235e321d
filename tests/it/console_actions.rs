//! The console's other panels and actions in a real browser (headless Chromium): a shadow's
//! figures and a mismatch sample side by side, a roll back from the history (confirmed) with
//! the old version shown draining, its in-flight request and time left, a weight set on a
//! manual rollout and an abort. The page logs no JavaScript error; a screenshot is saved as
//! `target/console-actions.png`.

use std::time::Duration;

use bytes::BytesMut;
use handoff_tests::webdriver::Browser;
use handoff_tests::{Connection, TestServer, eventually, get_request, guests};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;

use super::console::{shown, target_dir, until, until_stable};

const GENEROUS: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_rollback_draining_weight_and_abort_in_a_browser() {
    let server = TestServer::start().await;
    let v1 = server.deployed("app", guests::TAGGED_V1).await.version;
    let v2 = server.deployed("app", guests::TAGGED_V2).await.version;
    let browser = Browser::start(1280, 1600).await;
    browser.goto(&format!("http://{}/", server.admin)).await;
    assert_eq!(
        until(&browser, "the route on the page", &shown("app", "stable")).await,
        v2.as_str()
    );

    // A shadow of v1 behind v2: every copy differs; the page shows the figures and a sample
    // with both bodies' first bytes.
    let (status, body) = server
        .admin_json(
            Method::PUT,
            "/v1/routes/app/shadow",
            json!({"version": v1, "percent": 100}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut conn = Connection::open(server.data).await;
    for _ in 0..20 {
        assert_eq!(
            conn.get("/app").await.unwrap(),
            (StatusCode::OK, bytes::Bytes::from_static(b"v2"))
        );
    }
    eventually("the copies to be compared", GENEROUS, || async {
        (server.status("app").await["shadow"]["mismatches"] == 20).then_some(())
    })
    .await;
    let sample = until(
        &browser,
        "a mismatch sample on the page",
        "const panel = document.querySelector('#route-app [data-panel=\"shadow\"]'); \
         const pre = panel && panel.querySelectorAll('.sample pre'); \
         return panel && panel.textContent.includes('20 mismatches') && pre.length >= 2 \
           && [pre[0].textContent, pre[1].textContent];",
    )
    .await;
    assert_eq!(sample, json!(["v2", "v1"]), "stable, then shadow");
    let (status, _) = server.admin(Method::DELETE, "/v1/routes/app/shadow").await;
    assert_eq!(status, StatusCode::OK);
    until(
        &browser,
        "the shadow panel to go",
        "return !document.querySelector('#route-app [data-panel=\"shadow\"] .sample');",
    )
    .await;

    // A slow stream on v2, then a roll back to v1 from the history: v2 drains on the page with
    // its request in flight and the time left.
    let response = conn
        .send(get_request("/app?chunks=20&delay_ms=200"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.into_body();
    let mut received = BytesMut::new();
    while !received.ends_with(b"\n") {
        let frame = stream.frame().await.expect("a frame").expect("no error");
        received.extend_from_slice(&frame.into_data().unwrap_or_default());
    }
    browser
        .click(
            &format!("#route-app button[data-action=\"rollback\"][data-version=\"{v1}\"]"),
            true,
        )
        .await;
    let draining = until(
        &browser,
        "v2 draining on the page",
        &format!(
            "const row = document.querySelector('#route-app tr.draining[data-version=\"{v2}\"]'); \
             return row && [...row.cells].map(c => c.textContent);"
        ),
    )
    .await;
    assert_eq!(draining[1], "1", "one request in flight: {draining}");
    assert!(
        !draining[3].as_str().unwrap().is_empty(),
        "time left: {draining}"
    );
    assert_eq!(server.route("app").await.active.version, v1.as_str());
    until_stable(&browser, "v1 serving", "app", &v1).await;
    let rest = stream.collect().await.expect("the stream ends").to_bytes();
    received.extend_from_slice(&rest);
    let expected: String = (0..20).map(|i| format!("v2 {i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&received), expected);
    until(
        &browser,
        "the drained version to leave the page",
        "return !document.querySelector('#route-app tr.draining');",
    )
    .await;

    // A manual rollout of v2: set its weight on the page, then abort it.
    let (status, body) = server
        .post_json(
            "/v1/routes/app/rollout",
            json!({"version": v2, "steps": [10, 50], "manual": true}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    until(
        &browser,
        "the weight input",
        "return document.querySelector('[data-weight-for=\"app\"]');",
    )
    .await;
    browser
        .eval(
            "document.querySelector('[data-weight-for=\"app\"]').value = '30';",
            json!([]),
        )
        .await;
    browser
        .click("button[data-action=\"weight\"][data-route=\"app\"]", true)
        .await;
    until(
        &browser,
        "the new weight on the page",
        "const w = document.querySelector('#route-app .rollout-weight'); \
         return w && w.textContent === '30 %';",
    )
    .await;
    assert_eq!(server.status("app").await["rollout"]["weight"], 30.0);
    browser.eval("window.scrollTo(0, 0);", json!([])).await;
    let png = browser.screenshot().await;
    std::fs::write(target_dir().join("console-actions.png"), &png).unwrap();
    browser
        .click("button[data-action=\"abort\"][data-route=\"app\"]", true)
        .await;
    until(
        &browser,
        "the abort on the page",
        "return document.querySelector('#route-app [data-rollout-state=\"aborted\"]');",
    )
    .await;
    assert_eq!(server.route("app").await.rollout.unwrap().state, "aborted");
    assert_eq!(server.route("app").await.active.version, v1.as_str());

    let errors = browser
        .eval("return window.__consoleErrors;", json!([]))
        .await;
    assert_eq!(errors, json!([]), "the page logged errors");
    browser.close().await;
    server.shutdown().await;
}
