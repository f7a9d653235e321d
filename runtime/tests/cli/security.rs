//! The admin API against web pages, with `curl` against a real `handoff serve`: foreign and
//! rebound `Host`s, cross-site `Origin` and `Sec-Fetch-Site`, and mutations in types a page can
//! send; while same-origin requests, `--admin-host` names and the CLI keep working. And a data
//! directory other users could write stops the server (exit 64).

use std::time::Duration;

use handoff::exit;
use handoff_tests::guests;
use serde_json::Value;

use crate::support::{get, handoff, run_within, serve, serve_in_command};

/// `curl -sS ARGS`: the status and the body as JSON (or a string).
async fn curl(args: &[&str]) -> (u16, Value) {
    let run = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "60", "-w", "\n%{http_code}"])
        .args(args)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .unwrap_or_else(|_| panic!("curl {args:?} did not finish"))
        .expect("curl runs (it is installed at /usr/bin/curl)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').expect("curl printed the status");
    let status = status.trim().parse().unwrap_or_else(|_| {
        panic!(
            "curl {args:?}: no status in {text:?}; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let body = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()));
    (status, body)
}

/// Asserts a problem document with `status` whose detail mentions each of `words`.
fn refused(answer: &(u16, Value), status: u16, words: &[&str]) {
    assert_eq!(answer.0, status, "{answer:?}");
    let detail = answer.1["detail"].as_str().unwrap_or_default();
    for word in words {
        assert!(detail.contains(word), "{word:?} not in {answer:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_pages_cannot_use_the_admin_api_but_tools_and_its_own_origin_can() {
    let (_server, ready) = serve(&["--admin-host", "handoff.internal"]).await;
    let port = ready.admin.port();
    let url = |path: &str| format!("http://{}{path}", ready.admin);
    let wasm = format!("@{}", guests::TAGGED_V1);
    let v2 = format!("@{}", guests::TAGGED_V2);
    let wasm_type = "content-type: application/wasm";

    // A foreign Host: refused, reads included, and the detail says how to allow a real name.
    let foreign = curl(&["-H", "Host: evil.example", &url("/v1/routes")]).await;
    refused(
        &foreign,
        403,
        &["`Host: evil.example`", "--admin-host evil.example"],
    );

    // DNS rebinding: a page's own name resolving to 127.0.0.1 (what --resolve does) is a
    // foreign Host. Nothing is deployed.
    let rebound = format!("evil.example:{port}:127.0.0.1");
    let via_rebinding = curl(&[
        "--resolve",
        &rebound,
        "-X",
        "PUT",
        "-H",
        wasm_type,
        "--data-binary",
        &wasm,
        &format!("http://evil.example:{port}/v1/routes/app"),
    ])
    .await;
    refused(&via_rebinding, 403, &[&format!("evil.example:{port}")]);

    // A page of another origin (another site, or a guest on this host's data plane), with
    // the content type it would need: refused before anything is read.
    for origin in [
        "http://evil.example",
        &format!("http://{}", ready.data),
        "null",
    ] {
        let cross = curl(&[
            "-H",
            &format!("Origin: {origin}"),
            "-H",
            wasm_type,
            "--data-binary",
            &wasm,
            &url("/v1/modules"),
        ])
        .await;
        refused(&cross, 403, &["Origin", origin]);
    }
    // A browser that says the request is cross-site, without an Origin.
    let cross_site = curl(&[
        "-H",
        "Sec-Fetch-Site: cross-site",
        "-X",
        "PUT",
        "-H",
        wasm_type,
        "--data-binary",
        &wasm,
        &url("/v1/routes/app"),
    ])
    .await;
    refused(&cross_site, 403, &["Sec-Fetch-Site: cross-site"]);

    // Types a page can send without a preflight: an upload as text/plain, or with no type at
    // all (curl -T), is refused; so is an activation whose JSON comes as text/plain.
    let plain_upload = curl(&[
        "-H",
        "content-type: text/plain",
        "--data-binary",
        &wasm,
        &url("/v1/modules"),
    ])
    .await;
    refused(&plain_upload, 415, &["application/wasm", "`text/plain`"]);
    let untyped_upload = curl(&["-T", guests::TAGGED_V1, &url("/v1/routes/app")]).await;
    refused(&untyped_upload, 415, &["application/wasm", "has none"]);
    assert_eq!(
        curl(&[&url("/v1/routes/app")]).await.0,
        404,
        "nothing deployed"
    );

    // An upload from the admin listener's own origin (a page it served) works...
    let uploaded = curl(&[
        "-H",
        &format!("Origin: http://{}", ready.admin),
        "-H",
        "Sec-Fetch-Site: same-origin",
        "-H",
        wasm_type,
        "--data-binary",
        &wasm,
        &url("/v1/modules"),
    ])
    .await;
    assert_eq!(uploaded.0, 201, "{uploaded:?}");
    let version = uploaded.1["version"].as_str().unwrap().to_owned();
    let activation = format!("{{\"version\": \"{version}\"}}");
    // ...an activation in text/plain does not...
    let plain_activate = curl(&[
        "-H",
        "content-type: text/plain",
        "--data-binary",
        &activation,
        &url("/v1/routes/app/activate"),
    ])
    .await;
    refused(&plain_activate, 415, &["application/json", "`text/plain`"]);
    assert_eq!(
        curl(&[&url("/v1/routes/app")]).await.0,
        404,
        "not activated"
    );
    // ...and one in JSON does.
    let activated = curl(&[
        "-H",
        "content-type: application/json",
        "--data-binary",
        &activation,
        &url("/v1/routes/app/activate"),
    ])
    .await;
    assert_eq!(activated.0, 201, "{activated:?}");
    assert_eq!(get(&ready, "/app").await, (200, "v1".into()));

    // A name given with --admin-host, from its own origin: a deploy works.
    let named = format!("handoff.internal:{port}:127.0.0.1");
    let deployed = curl(&[
        "--resolve",
        &named,
        "-H",
        &format!("Origin: http://handoff.internal:{port}"),
        "-X",
        "PUT",
        "-H",
        wasm_type,
        "--data-binary",
        &v2,
        &format!("http://handoff.internal:{port}/v1/routes/app"),
    ])
    .await;
    assert_eq!(deployed.0, 200, "{deployed:?}");
    assert_eq!(get(&ready, "/app").await, (200, "v2".into()));
    // A body-less POST needs no content type: a rollback to the previous version.
    let rolled_back = curl(&["-X", "POST", &url("/v1/routes/app/rollback")]).await;
    assert_eq!(rolled_back.0, 200, "{rolled_back:?}");
    assert_eq!(get(&ready, "/app").await, (200, "v1".into()));

    // Loopback names, with or without a port.
    for host in [
        format!("localhost:{port}"),
        "localhost".into(),
        format!("[::1]:{port}"),
        format!("127.0.0.1:{port}"),
    ] {
        let answer = curl(&["-H", &format!("Host: {host}"), &url("/v1/routes/app")]).await;
        assert_eq!(answer.0, 200, "{host}: {answer:?}");
    }
    // Health stays open to any Host (load balancers).
    let health = curl(&["-H", "Host: lb.example", &url("/healthz")]).await;
    assert_eq!(health, (200, serde_json::json!({"status": "ok"})));

    // The CLI keeps working: deploy, status, upload, activate, rollback, delete.
    let admin = ready.admin_url();
    let admin = admin.as_str();
    handoff(&["deploy", "cli", guests::TAGGED_V2, "--admin", admin])
        .await
        .ok();
    handoff(&["status", "cli", "--admin", admin]).await.ok();
    let upload = handoff(&["upload", guests::TAGGED_V1, "--admin", admin, "--json"]).await;
    let version = serde_json::from_str::<Value>(upload.ok()).unwrap()["version"]
        .as_str()
        .unwrap()
        .to_owned();
    handoff(&["activate", "cli", &version, "--admin", admin])
        .await
        .ok();
    assert_eq!(get(&ready, "/cli").await, (200, "v1".into()));
    handoff(&["rollback", "cli", "--admin", admin]).await.ok();
    assert_eq!(get(&ready, "/cli").await, (200, "v2".into()));
    handoff(&["delete", "cli", "--admin", admin]).await.ok();
    assert_eq!(get(&ready, "/cli").await.0, 404);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_other_users_can_write_stops_the_server() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let refused = run_within(Duration::from_secs(60), serve_in_command(&dir)).await;
    assert_eq!(refused.code, exit::CONFIG as i32, "{refused:#?}");
    let last = refused.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("handoff: refusing the data directory"),
        "{refused:#?}"
    );
    let path = dir.display().to_string();
    for expected in [
        format!("{path} is writable by every user (mode 777)"),
        "loaded as native code".into(),
        format!("`chmod go-w {path}`"),
    ] {
        assert!(last.contains(&expected), "{expected:?} not in {last}");
    }
    assert!(
        !dir.join("modules").exists(),
        "nothing is created in a refused directory"
    );

    // Fixed as told, it serves; a group-writable subdirectory is refused the same way.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let modules = dir.join("modules");
    std::fs::create_dir(&modules).unwrap();
    std::fs::set_permissions(&modules, std::fs::Permissions::from_mode(0o775)).unwrap();
    let refused = run_within(Duration::from_secs(60), serve_in_command(&dir)).await;
    assert_eq!(refused.code, exit::CONFIG as i32, "{refused:#?}");
    assert!(
        refused
            .stderr
            .contains(&format!("`chmod go-w {}`", modules.display())),
        "{refused:#?}"
    );
    assert!(
        refused.stderr.contains("writable by its group"),
        "{refused:#?}"
    );
    std::fs::set_permissions(&modules, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut server = crate::support::Running::spawn(serve_in_command(&dir));
    server.ready(Duration::from_secs(30)).await;
    assert!(server.terminate(Duration::from_secs(30)).await.success());
}
