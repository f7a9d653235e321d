//! A small W3C WebDriver client for the browser tests: starts Debian's `chromedriver` (path from
//! `$CHROMEDRIVER`, else `chromedriver` on the PATH) on a free port, opens a headless Chromium
//! session (binary from `$CHROMIUM`, else `/usr/bin/chromium`) and speaks the WebDriver HTTP
//! API over the same HTTP client as the other tests. Missing programs fail the test: `.ci/run`
//! installs them.

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::Connection;

/// The key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one browser session on it. Ends both when dropped, the browser
/// too (a test that panics never gets to [`Browser::close`], and Chromium outlives a killed
/// chromedriver): its processes are found by their profile directory, which is this session's
/// own.
pub struct Browser {
    driver: Child,
    addr: std::net::SocketAddr,
    session: String,
    profile: std::path::PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.start_kill();
        let _ = std::process::Command::new("pkill")
            .arg("-KILL")
            .arg("-f")
            .arg(format!("--user-data-dir={}", self.profile.display()))
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn program(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a `width`×`height` window.
    pub async fn start(width: u32, height: u32) -> Self {
        let chromedriver = program("CHROMEDRIVER", "chromedriver");
        let chromium = program("CHROMIUM", "/usr/bin/chromium");
        let mut driver = Command::new(&chromedriver)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {chromedriver} ({e}): the browser test needs Debian's chromium \
                     and chromium-driver (`apt-get install chromium chromium-driver`; .ci/run \
                     installs them), or $CHROMEDRIVER and $CHROMIUM"
                )
            });
        let mut lines = BufReader::new(driver.stdout.take().unwrap()).lines();
        let port = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    return rest.trim_end_matches('.').parse::<u16>().unwrap();
                }
            }
            panic!("chromedriver exited without saying its port")
        })
        .await
        .expect("chromedriver starts within 30 s");
        // Keep reading its output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        static SESSIONS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let profile = std::env::temp_dir().join(format!(
            "handoff-browser-{}-{}",
            std::process::id(),
            SESSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let mut browser = Self {
            driver,
            addr,
            session: String::new(),
            profile,
        };
        let session = browser
            .call(
                Method::POST,
                "/session",
                json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium,
                        "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                 "--disable-dev-shm-usage", "--no-first-run",
                                 format!("--window-size={width},{height}"),
                                 format!("--user-data-dir={}", browser.profile.display())],
                    },
                }}}),
            )
            .await;
        browser.session = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {session}"))
            .to_owned();
        browser
    }

    /// One WebDriver command; its `value`. Panics on a WebDriver error.
    pub async fn call(&self, method: Method, path: &str, body: Value) -> Value {
        let (ok, value) = self.try_call(method, path, body).await;
        assert!(ok, "WebDriver {path}: {value}");
        value
    }

    /// One WebDriver command: whether it succeeded, and its `value` (the error if not).
    pub async fn try_call(&self, method: Method, path: &str, body: Value) -> (bool, Value) {
        let path = path.replace("{session}", &self.session);
        let body = if method == Method::GET || method == Method::DELETE {
            Bytes::new()
        } else {
            Bytes::from(body.to_string())
        };
        let request = Request::builder()
            .method(method)
            .uri(&path)
            .header("host", self.addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(body))
            .unwrap();
        let mut connection = Connection::open(self.addr).await;
        let response = connection
            .send(request)
            .await
            .expect("chromedriver answers");
        let ok = response.status().is_success();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (ok, value["value"].clone())
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.call(
            Method::POST,
            "/session/{session}/url",
            json!({ "url": url }),
        )
        .await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page; what it returns.
    pub async fn eval(&self, script: &str, args: Value) -> Value {
        self.call(
            Method::POST,
            "/session/{session}/execute/sync",
            json!({ "script": script, "args": args }),
        )
        .await
    }

    /// Clicks the element `selector` names (retrying while the page replaces it), and accepts
    /// the confirmation it opens when `confirm`.
    pub async fn click(&self, selector: &str, confirm: bool) {
        for _ in 0..50 {
            let (found, element) = self
                .try_call(
                    Method::POST,
                    "/session/{session}/element",
                    json!({"using": "css selector", "value": selector}),
                )
                .await;
            if found {
                let id = element[ELEMENT].as_str().unwrap().to_owned();
                let path = format!("/session/{{session}}/element/{id}/click");
                let (clicked, _) = self.try_call(Method::POST, &path, json!({})).await;
                if clicked {
                    if confirm {
                        self.call(Method::POST, "/session/{session}/alert/accept", json!({}))
                            .await;
                    }
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("could not click {selector}");
    }

    /// Types `text` into the element `selector` names.
    pub async fn type_into(&self, selector: &str, text: &str) {
        let element = self
            .call(
                Method::POST,
                "/session/{session}/element",
                json!({"using": "css selector", "value": selector}),
            )
            .await;
        let id = element[ELEMENT].as_str().unwrap().to_owned();
        let path = format!("/session/{{session}}/element/{id}/value");
        self.call(Method::POST, &path, json!({ "text": text }))
            .await;
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let data = self
            .call(Method::GET, "/session/{session}/screenshot", Value::Null)
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(data.as_str().expect("base64"))
            .expect("a PNG")
    }

    /// Ends the session and chromedriver (and, on drop, whatever of the browser is left).
    pub async fn close(mut self) {
        let _ = self
            .try_call(Method::DELETE, "/session/{session}", Value::Null)
            .await;
        let _ = self.driver.kill().await;
    }
}
