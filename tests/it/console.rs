//! The web console in a real browser (headless Chromium through chromedriver): a deploy shows
//! up without a reload, a rollout's step advances on the page, promote (confirmed) makes the
//! candidate stable, a `read` token sees no actions, and the page logs no JavaScript error. A
//! screenshot is saved as `target/console.png`. Also: the console's files carry a strict
//! Content-Security-Policy and need no token.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use handoff::config::Config;
use handoff_tests::webdriver::Browser;
use handoff_tests::{Connection, TestServer, guests};
use http::{Method, StatusCode};
use serde_json::{Value, json};

const GENEROUS: Duration = Duration::from_secs(30);

/// Polls `script` in the page until it returns something truthy; returns it.
pub(crate) async fn until(browser: &Browser, what: &str, script: &str) -> Value {
    let started = Instant::now();
    loop {
        let value = browser.eval(script, json!([])).await;
        if !(value.is_null() || value == false || value == "") {
            return value;
        }
        let errors = browser
            .eval("return window.__consoleErrors;", json!([]))
            .await;
        assert!(
            started.elapsed() < GENEROUS,
            "timed out waiting for {what}; page errors: {errors}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The version the page shows in `role` for route `route`.
pub(crate) fn shown(route: &str, role: &str) -> String {
    format!(
        "const row = document.querySelector('#route-{route} tr.version[data-role=\"{role}\"]'); \
         return row && row.dataset.version;"
    )
}

/// Waits until the page shows `version` as route `route`'s stable version.
pub(crate) async fn until_stable(browser: &Browser, what: &str, route: &str, version: &str) {
    let shown = until(
        browser,
        what,
        &format!(
            "const row = document.querySelector('#route-{route} tr.version[data-role=\"stable\"]'); \
             return row && row.dataset.version === '{version}' && row.dataset.version;"
        ),
    )
    .await;
    assert_eq!(shown, version);
}

pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

async fn version_of(body: Value) -> String {
    body["version"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_follows_a_deploy_and_a_rollout_and_promotes_in_a_browser() {
    let server = TestServer::start().await;
    let v1 = version_of(server.deploy("app", guests::TAGGED_V1).await).await;
    let browser = Browser::start(1280, 1500).await;
    let started = Instant::now();
    browser.goto(&format!("http://{}/", server.admin)).await;
    let stable = until(&browser, "the route on the page", &shown("app", "stable")).await;
    assert_eq!(stable, v1.as_str());
    // Marks this page load: a reload would forget it.
    browser.eval("window.__sameLoad = true;", json!([])).await;
    until(
        &browser,
        "the event stream to be live",
        "return document.getElementById('live').textContent === 'live';",
    )
    .await;

    // A deploy appears without a reload.
    let v2 = version_of(server.deploy("app", guests::TAGGED_V2).await).await;
    until_stable(&browser, "the new version on the page", "app", &v2).await;
    assert_eq!(
        browser
            .eval("return window.__sameLoad === true;", json!([]))
            .await,
        true,
        "the page was reloaded"
    );
    until(
        &browser,
        "the activation in the event list",
        "return document.querySelector('#events li[data-kind=\"activated\"]');",
    )
    .await;

    // A rollout: its step advances on the page as traffic comes in.
    let candidate = server.upload(guests::TAGGED_V1B).await;
    let (status, body) = server
        .post_json(
            "/v1/routes/app/rollout",
            json!({"version": candidate, "steps": [20, 50, 100], "step_time": "200ms",
                   "step_requests": 10, "min_requests": 1000}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    until(
        &browser,
        "the rollout on the page",
        "const s = document.querySelector('#route-app .rollout-step'); return s && s.textContent === 'step 1 of 3';",
    )
    .await;
    let mut conn = Connection::open(server.data).await;
    let deadline = Instant::now() + GENEROUS;
    loop {
        for _ in 0..5 {
            let (status, _) = conn.get("/app").await.unwrap();
            assert_eq!(status, StatusCode::OK);
        }
        if server.status("app").await["rollout"]["step"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the rollout never stepped");
    }
    until(
        &browser,
        "the next step on the page",
        "const s = document.querySelector('#route-app .rollout-step'); return s && s.textContent === 'step 2 of 3';",
    )
    .await;
    until(
        &browser,
        "the step's figures",
        "return document.querySelector('#route-app [data-panel=\"rollout\"] table');",
    )
    .await;

    // Promote, confirmed: the candidate becomes stable and the page says so.
    browser
        .click("button[data-action=\"promote\"][data-route=\"app\"]", true)
        .await;
    until(
        &browser,
        "the promotion on the page",
        "return document.querySelector('#route-app [data-rollout-state=\"promoted\"]');",
    )
    .await;
    until_stable(
        &browser,
        "the promoted version as stable",
        "app",
        &candidate,
    )
    .await;
    let status = server.status("app").await;
    assert_eq!(status["active"]["version"], candidate.as_str());
    assert_eq!(status["rollout"]["state"], "promoted");
    let notice = browser
        .eval(
            "return document.getElementById('notice').textContent;",
            json!([]),
        )
        .await;
    assert_eq!(notice, "promote: done");
    // A refused action shows the API's error text: promote again, after it ended.
    browser
        .eval(
            "const b = document.createElement('button'); b.dataset.action = 'promote'; \
             b.dataset.route = 'app'; b.id = 'again'; document.body.appendChild(b);",
            json!([]),
        )
        .await;
    browser.click("#again", true).await;
    let error = until(
        &browser,
        "the API's error on the page",
        "return document.getElementById('error').textContent;",
    )
    .await;
    assert!(
        error.as_str().unwrap().starts_with("promote failed: ")
            && error.as_str().unwrap().contains("rollout"),
        "{error}"
    );
    browser
        .eval("document.getElementById('again').remove();", json!([]))
        .await;
    until(
        &browser,
        "the drained versions",
        "return !document.querySelector('#route-app tr.draining');",
    )
    .await;
    // Some traffic for the charts in the screenshot: 150 requests over about 3 s.
    let data = server.data;
    let traffic = tokio::spawn(async move {
        let mut conn = Connection::open(data).await;
        for _ in 0..150 {
            let (status, _) = conn.get("/app").await.unwrap();
            assert_eq!(status, StatusCode::OK);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    until(
        &browser,
        "requests per second on the chart",
        "const s = document.querySelector('#route-app tr.version[data-role=\"stable\"] .spark.rps span'); \
         return s && parseFloat(s.textContent) > 0;",
    )
    .await;
    traffic.await.unwrap();

    // The key-value browser lists the route's own bucket and shows a value.
    let (status, body) = server
        .admin_json(
            Method::PUT,
            "/v1/routes/app/kv/keys/greeting",
            json!({"value": "hello from the bucket"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    until(
        &browser,
        "the key-value browser",
        "return !document.getElementById('kv').hidden;",
    )
    .await;
    browser.click("#kv-refresh", false).await;
    until(
        &browser,
        "the bucket's key",
        "const li = document.querySelector('#kv-keys [data-key=\"greeting\"]'); \
         if (li) li.click(); return !!li;",
    )
    .await;
    until(
        &browser,
        "the key's value",
        "return document.getElementById('kv-value').textContent.includes('hello from the bucket');",
    )
    .await;

    let png = browser.screenshot().await;
    let path = target_dir().join("console.png");
    std::fs::write(&path, &png).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG at {}", path.display());
    let errors = browser
        .eval("return window.__consoleErrors;", json!([]))
        .await;
    assert_eq!(errors, json!([]), "the page logged errors");
    let took = started.elapsed();
    browser.close().await;
    server.shutdown().await;
    assert!(
        took < Duration::from_secs(60),
        "the browser part took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_token_sees_the_console_without_its_actions() {
    let config = Config {
        admin_tokens: vec![
            handoff::auth::Token::new("ci", handoff::auth::Scope::Deploy, "0123456789abcdef-ci")
                .unwrap(),
            handoff::auth::Token::new("dash", handoff::auth::Scope::Read, "0123456789abcdef-dash")
                .unwrap(),
        ],
        ..Config::ephemeral()
    };
    let server = TestServer::start_with(config).await;
    // The page and its files need no token, and carry the policy; the API does.
    for path in ["/", "/console/app.js", "/console/app.css"] {
        let request = http::Request::builder()
            .uri(path)
            .header("host", "admin")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let mut conn = Connection::open(server.admin).await;
        let response = conn.send(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let csp = response.headers()["content-security-policy"]
            .to_str()
            .unwrap();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{csp}"
        );
    }
    let (status, _) = server.admin(Method::GET, "/v1/routes").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server.admin(Method::GET, "/console/secrets").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let deploy = |bytes| {
        let request = http::Request::builder()
            .method(Method::PUT)
            .uri("/v1/routes/app")
            .header("host", "admin")
            .header("authorization", "Bearer 0123456789abcdef-ci")
            .header("content-type", "application/wasm")
            .body(http_body_util::Full::new(bytes::Bytes::from(bytes)))
            .unwrap();
        handoff_tests::send(server.admin, request)
    };
    assert!(
        deploy(guests::bytes(guests::TAGGED_V1))
            .await
            .0
            .is_success()
    );
    assert!(
        deploy(guests::bytes(guests::TAGGED_V2))
            .await
            .0
            .is_success()
    );

    let browser = Browser::start(420, 900).await;
    browser.goto(&format!("http://{}/", server.admin)).await;
    until(
        &browser,
        "the token form",
        "return !document.getElementById('token-form').hidden;",
    )
    .await;
    browser.type_into("#token", "0123456789abcdef-dash").await;
    browser
        .click("#token-form button[type=submit]", false)
        .await;
    until(&browser, "the route on the page", &shown("app", "stable")).await;
    until(
        &browser,
        "the history",
        "return document.querySelector('#route-app button[data-action=\"rollback\"]');",
    )
    .await;
    let who = browser
        .eval(
            "return document.getElementById('who').textContent;",
            json!([]),
        )
        .await;
    assert_eq!(who, "dash (read)");
    let hidden = browser
        .eval(
            "return [...document.querySelectorAll('button[data-action]')] \
             .every(b => getComputedStyle(b).display === 'none');",
            json!([]),
        )
        .await;
    assert_eq!(hidden, true, "a read token sees no actions");
    let stored = browser
        .eval(
            "return [sessionStorage.getItem('handoff.token'), document.cookie];",
            json!([]),
        )
        .await;
    assert_eq!(stored, json!(["0123456789abcdef-dash", ""]));
    let png = browser.screenshot().await;
    std::fs::write(target_dir().join("console-narrow.png"), png).unwrap();
    let errors = browser
        .eval("return window.__consoleErrors;", json!([]))
        .await;
    assert_eq!(errors, json!([]), "the page logged errors");
    browser.close().await;
    server.shutdown().await;
}
