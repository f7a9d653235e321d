//! Versions that last, through the binary: `versions`, `rollback`, `upload` and `activate`;
//! a restart that serves what was deployed; and `kill -9` in the middle of many deploys.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use handoff::cli::exit;
use handoff_tests::guests;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::Value;

use crate::support::{Running, get, handoff, handoff_with, serve, serve_command, serve_in};

const FAILED: i32 = exit::FAILED as i32;
const READY: Duration = Duration::from_secs(30);

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_rollback_upload_and_activate_from_the_cli() {
    let (_server, ready) = serve(&[]).await;
    let admin = ready.admin_url();
    let admin = admin.as_str();

    let v1 = json(
        handoff(&[
            "deploy",
            "app",
            guests::TAGGED_V1,
            "--label",
            "stable",
            "--message",
            "first cut",
            "--json",
            "--admin",
            admin,
        ])
        .await
        .ok(),
    );
    handoff(&["deploy", "app", guests::TAGGED_V2, "--admin", admin])
        .await
        .ok();
    assert_eq!(get(&ready, "/app").await, (200, "v2".into()));

    let table = handoff(&["versions", "app", "--admin", admin]).await;
    let table = table.ok();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].contains("VERSION") && lines[0].contains("LABEL"),
        "{table}"
    );
    assert!(
        lines[1].contains("stable") && lines[1].contains("first cut"),
        "{table}"
    );
    assert!(
        lines[2].starts_with('*'),
        "the active version is marked: {table}"
    );

    // Back to the previous version; then forward by a short digest; then by label.
    handoff(&["rollback", "app", "--admin", admin]).await.ok();
    assert_eq!(get(&ready, "/app").await.1, "v1");
    let history = json(
        handoff(&["versions", "app", "--json", "--admin", admin])
            .await
            .ok(),
    );
    let v2_digest = history["versions"][1]["version"]
        .as_str()
        .unwrap()
        .to_owned();
    let v2_short = &v2_digest["sha256:".len().."sha256:".len() + 8];
    handoff(&["rollback", "app", v2_short, "--admin", admin])
        .await
        .ok();
    assert_eq!(get(&ready, "/app").await.1, "v2");
    handoff(&["rollback", "app", "--label", "stable", "--admin", admin])
        .await
        .ok();
    assert_eq!(get(&ready, "/app").await.1, "v1");
    assert_eq!(
        json(
            handoff(&["status", "app", "--json", "--admin", admin])
                .await
                .ok()
        )["active"]["version"],
        v1["version"]
    );

    // Failures: one line each, the server's reason, exit 1.
    handoff(&["rollback", "app", "--label", "nope", "--admin", admin])
        .await
        .fails(FAILED, "no version labelled `nope`");
    handoff(&["rollback", "app", "ffffffff", "--admin", admin])
        .await
        .fails(FAILED, "no version starting with `ffffffff`");
    handoff(&["rollback", "missing", "--admin", admin])
        .await
        .fails(FAILED, "no route named `missing`");
    assert_eq!(get(&ready, "/app").await.1, "v1");

    // Upload first, switch later.
    let uploaded = handoff(&["upload", guests::HOSTILE, "--json", "--admin", admin]).await;
    let uploaded = json(uploaded.ok());
    assert_eq!(
        get(&ready, "/app").await.1,
        "v1",
        "an upload activates nothing"
    );
    let version = uploaded["version"].as_str().unwrap();
    let text = handoff(&[
        "activate", "fresh", version, "--prefix", "/new", "--admin", admin,
    ])
    .await;
    assert!(text.ok().starts_with("created route fresh"), "{text:#?}");
    assert_eq!(get(&ready, "/new/x").await, (200, "ok".into()));
    handoff(&["activate", "app", version, "--admin", admin])
        .await
        .ok();
    assert_eq!(get(&ready, "/app").await.1, "ok");

    // The command `handoff upload` prints works as printed: its short version is found among
    // the stored modules, for a new route and for one whose history does not hold it.
    let uploaded = handoff(&["upload", guests::TAGGED_V2, "--admin", admin]).await;
    let text = uploaded.ok();
    let short = text
        .split("handoff activate ROUTE ")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or_else(|| panic!("no activate command in {text:?}"))
        .to_owned();
    assert_eq!(short.len(), 12, "{text:?}");
    handoff(&[
        "activate", "short", &short, "--prefix", "/short", "--admin", admin,
    ])
    .await
    .ok();
    assert_eq!(get(&ready, "/short").await.1, "v2");
    handoff(&["activate", "app", &short, "--admin", admin])
        .await
        .ok();
    assert_eq!(get(&ready, "/app").await.1, "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_serves_what_was_deployed() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ready) = serve_in(dir.path()).await;
    let admin = ready.admin_url();
    handoff(&["deploy", "one", guests::TAGGED_V1, "--admin", &admin])
        .await
        .ok();
    handoff(&[
        "deploy",
        "two",
        guests::TAGGED_V2,
        "--prefix",
        "/",
        "--admin",
        &admin,
    ])
    .await
    .ok();
    assert!(server.terminate(READY).await.success());

    let (_server, ready) = serve_in(dir.path()).await;
    assert_eq!(get(&ready, "/one").await, (200, "v1".into()));
    assert_eq!(get(&ready, "/anything").await, (200, "v2".into()));
    let admin = ready.admin_url();
    let routes = json(handoff(&["routes", "--json", "--admin", &admin]).await.ok());
    assert_eq!(routes["routes"].as_array().unwrap().len(), 2, "{routes}");
}

/// Deploys attempted on one route, in order: (tag, acknowledged).
type Attempts = Arc<Mutex<Vec<Vec<(&'static str, bool)>>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_deploys_leaves_each_route_on_its_old_or_new_version() {
    const ROUTES: [&str; 3] = ["a", "b", "c"];
    let dir = tempfile::tempdir().unwrap();
    let v1 = Bytes::from(std::fs::read(guests::TAGGED_V1).unwrap());
    let v2 = Bytes::from(std::fs::read(guests::TAGGED_V2).unwrap());
    let mut total_acked = 0;
    // Whether each route is known to exist (a deploy was acknowledged, or it served).
    let mut exists = [false; ROUTES.len()];
    for round in 0..5u64 {
        let (server, ready) = serve_in(dir.path()).await;
        let attempts: Attempts = Arc::new(Mutex::new(vec![Vec::new(); ROUTES.len()]));
        // How many deploys this round the server acknowledged.
        let (acked_tx, mut acked_rx) = tokio::sync::watch::channel(0usize);
        // Deploy as fast as the server takes them, round-robin over the routes, alternating
        // versions, until the server dies.
        let deployer = {
            let attempts = attempts.clone();
            let (v1, v2) = (v1.clone(), v2.clone());
            tokio::spawn(async move {
                for i in 0usize.. {
                    let route = i % ROUTES.len();
                    let (tag, bytes) = if (i / ROUTES.len()).is_multiple_of(2) {
                        ("v2", v2.clone())
                    } else {
                        ("v1", v1.clone())
                    };
                    let at = {
                        let mut attempts = attempts.lock().unwrap();
                        attempts[route].push((tag, false));
                        attempts[route].len() - 1
                    };
                    let request = Request::builder()
                        .method(Method::PUT)
                        .uri(format!("/v1/routes/{}", ROUTES[route]))
                        .header("host", ready.admin.to_string())
                        .header("content-type", "application/wasm")
                        .body(Full::new(bytes))
                        .unwrap();
                    let endpoint = handoff::http_client::Endpoint::of(ready.admin, false);
                    let Ok(mut connection) = handoff::http_client::Connection::open(
                        &endpoint,
                        None,
                        Duration::from_secs(5),
                    )
                    .await
                    else {
                        return;
                    };
                    match connection.send(request).await {
                        Ok(response) if response.status().is_success() => {
                            attempts.lock().unwrap()[route][at].1 = true;
                            acked_tx.send_modify(|acked| *acked += 1);
                        }
                        Ok(response) => panic!("a deploy was refused: {}", response.status()),
                        Err(_) => return, // the server died mid-deploy
                    }
                }
            })
        };
        // Let a few deploys through (more each round), then kill a moment later: the next
        // deploy is on its way by then, at a different stage each round.
        let enough = round as usize + 2;
        tokio::time::timeout(READY, acked_rx.wait_for(|acked| *acked >= enough))
            .await
            .unwrap_or_else(|_| panic!("round {round}: {enough} deploys acknowledged in time"))
            .expect("the deployer runs until the server dies");
        tokio::time::sleep(Duration::from_millis(4 * round)).await;
        server.kill9().await;
        let _ = tokio::time::timeout(Duration::from_secs(10), deployer).await;

        let (server, ready) = serve_in(dir.path()).await;
        let attempts = attempts.lock().unwrap().clone();
        for (index, (route, tried)) in ROUTES.iter().zip(&attempts).enumerate() {
            let (status, body) = get(&ready, &format!("/{route}")).await;
            let acked = tried.iter().rposition(|(_, ok)| *ok);
            total_acked += tried.iter().filter(|(_, ok)| *ok).count();
            // The last acknowledged deploy, or one attempted after it (it may have committed
            // before the kill), or — with nothing acknowledged this round — what an earlier
            // round left.
            let mut allowed: Vec<&str> = match acked {
                Some(i) => tried[i..].iter().map(|(tag, _)| *tag).collect(),
                None => tried.iter().map(|(tag, _)| *tag).collect(),
            };
            if acked.is_none() && round > 0 {
                allowed.extend(["v1", "v2"]);
            }
            if acked.is_some() {
                exists[index] = true;
            }
            if !exists[index] {
                // No deploy to it was ever acknowledged: the route may not exist yet.
                assert!(
                    status == 404 || allowed.contains(&body.as_str()),
                    "round {round}, route {route}: {status} {body:?}, tried {tried:?}"
                );
                exists[index] = status == 200;
                continue;
            }
            assert_eq!(
                status, 200,
                "round {round}, route {route}: {body:?}, tried {tried:?}"
            );
            assert!(
                allowed.contains(&body.as_str()),
                "round {round}, route {route} serves {body:?}; allowed {allowed:?} (tried {tried:?})"
            );
        }
        let admin = ready.admin_url();
        let routes = json(handoff(&["routes", "--json", "--admin", &admin]).await.ok());
        assert_eq!(routes["unavailable"], serde_json::json!([]), "{routes}");
        assert!(server.terminate(READY).await.success());
    }
    assert!(
        total_acked >= 10,
        "too few deploys got through to mean anything: {total_acked}"
    );
    eprintln!("kill -9 test: 5 kills, {total_acked} acknowledged deploys, every route consistent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_handoff_admin_token_and_the_server_records_its_name() {
    const SECRET: &str = "cli-test-secret-0123456789";
    let mut serve_command = serve_command(&[]);
    serve_command.env("HANDOFF_ADMIN_TOKEN", SECRET);
    let mut server = Running::spawn(serve_command);
    let ready = server.ready(READY).await;
    let admin = ready.admin_url();

    // Without the token: refused, one line, exit 1, and the secret is nowhere.
    let refused = handoff(&["routes", "--admin", &admin]).await;
    refused.fails(FAILED, "401 Unauthorized");
    assert!(!refused.stderr.contains(SECRET));

    handoff_with(
        &["deploy", "app", guests::TAGGED_V1, "--admin", &admin],
        "HANDOFF_ADMIN_TOKEN",
        SECRET,
    )
    .await
    .ok();
    assert_eq!(get(&ready, "/app").await.1, "v1");
    let history = json(
        handoff_with(
            &["versions", "app", "--json", "--admin", &admin],
            "HANDOFF_ADMIN_TOKEN",
            SECRET,
        )
        .await
        .ok(),
    );
    assert_eq!(history["versions"][0]["by"], "env", "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokens_file_sets_scopes_and_an_open_public_admin_api_is_refused() {
    const READ_SECRET: &str = "read-only-secret-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    std::fs::write(
        &file,
        format!("[[token]]\nname = \"dashboard\"\ntoken = \"{READ_SECRET}\"\nscope = \"read\"\n"),
    )
    .unwrap();
    let (_server, ready) = serve(&["--tokens-file", file.to_str().unwrap()]).await;
    let admin = ready.admin_url();
    handoff_with(
        &["routes", "--admin", &admin],
        "HANDOFF_ADMIN_TOKEN",
        READ_SECRET,
    )
    .await
    .ok();
    handoff_with(
        &["deploy", "app", guests::TAGGED_V1, "--admin", &admin],
        "HANDOFF_ADMIN_TOKEN",
        READ_SECRET,
    )
    .await
    .fails(FAILED, "403 Forbidden");
    assert_eq!(get(&ready, "/app").await.0, 404);

    // No token at all, and the admin API on every interface: refused before binding.
    let refused = handoff(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "0.0.0.0:0",
        "--ephemeral",
    ])
    .await;
    refused.fails(exit::CONFIG as i32, "without any token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_talks_to_a_tls_admin_api_trusting_handoff_admin_ca() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tls");
    let (cert, key) = (fixtures.join("cert.pem"), fixtures.join("key.pem"));
    let (_server, ready) = serve(&[
        "--admin-tls-cert",
        cert.to_str().unwrap(),
        "--admin-tls-key",
        key.to_str().unwrap(),
    ])
    .await;
    let admin = format!("https://localhost:{}", ready.admin.port());
    // Without trusting the test CA: the handshake fails, exit 3, and it says what to set.
    handoff(&["routes", "--admin", &admin])
        .await
        .fails(exit::UNREACHABLE as i32, "HANDOFF_ADMIN_CA");
    handoff_with(
        &["deploy", "app", guests::TAGGED_V1, "--admin", &admin],
        "HANDOFF_ADMIN_CA",
        &cert,
    )
    .await
    .ok();
    assert_eq!(get(&ready, "/app").await.1, "v1");
    handoff_with(&["routes", "--admin", &admin], "HANDOFF_ADMIN_CA", &cert)
        .await
        .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_uploads_with_keygen_and_require_mode() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("deployer.key");
    let made = handoff(&["keygen", key.to_str().unwrap(), "--name", "ci"]).await;
    let printed = made.ok();
    let entry = &printed[printed.find("[[key]]").expect("a key entry")..];
    let keys = dir.path().join("keys.toml");
    std::fs::write(&keys, entry).unwrap();
    let other = dir.path().join("other.key");
    handoff(&["keygen", other.to_str().unwrap()]).await.ok();
    assert!(
        handoff(&["keygen", key.to_str().unwrap()]).await.code != 0,
        "keygen never overwrites a key"
    );

    let (_server, ready) = serve(&[
        "--signatures",
        "require",
        "--signing-keys",
        keys.to_str().unwrap(),
    ])
    .await;
    let admin = ready.admin_url();
    handoff(&["deploy", "app", guests::TAGGED_V1, "--admin", &admin])
        .await
        .fails(
            FAILED,
            "403 Forbidden): this server requires signed uploads",
        );
    handoff(&[
        "deploy",
        "app",
        guests::TAGGED_V1,
        "--sign",
        other.to_str().unwrap(),
        "--admin",
        &admin,
    ])
    .await
    .fails(FAILED, "does not verify against any trusted key");
    assert_eq!(get(&ready, "/app").await.0, 404, "nothing deployed");
    handoff(&[
        "deploy",
        "app",
        guests::TAGGED_V1,
        "--sign",
        key.to_str().unwrap(),
        "--admin",
        &admin,
    ])
    .await
    .ok();
    assert_eq!(get(&ready, "/app").await.1, "v1");
    handoff(&[
        "upload",
        guests::TAGGED_V2,
        "--sign",
        key.to_str().unwrap(),
        "--admin",
        &admin,
    ])
    .await
    .ok();

    // Require mode without keys is a configuration error.
    handoff(&["serve", "--ephemeral", "--signatures", "require"])
        .await
        .fails(exit::CONFIG as i32, "--signing-keys");

    // Warn mode: unsigned and foreign-signed uploads deploy, and each leaves a warning.
    let (warned, ready) = serve(&[
        "--signatures",
        "warn",
        "--signing-keys",
        keys.to_str().unwrap(),
    ])
    .await;
    let admin = ready.admin_url();
    handoff(&["deploy", "app", guests::TAGGED_V1, "--admin", &admin])
        .await
        .ok();
    let foreign = [
        "deploy",
        "app",
        guests::TAGGED_V2,
        "--sign",
        other.to_str().unwrap(),
        "--admin",
        &admin,
    ];
    handoff(&foreign).await.ok();
    assert_eq!(get(&ready, "/app").await.1, "v2");
    warned
        .stderr
        .wait_for("two signature warnings", Duration::from_secs(10), |text| {
            text.matches("not signed by a trusted key; accepted (--signatures warn)")
                .count()
                == 2
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_keys_and_signature_mode_can_live_in_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("deployer.key");
    let printed = handoff(&["keygen", key.to_str().unwrap(), "--name", "ci"]).await;
    let entry = &printed.ok()[printed.stdout.find("[[key]]").expect("a key entry")..];
    let file = dir.path().join("handoff.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin-listen = \"127.0.0.1:0\"\nephemeral = true\n\
             signatures = \"require\"\n\n[[token]]\nname = \"ci\"\n\
             token = \"config-file-secret-0123456789\"\nscope = \"deploy\"\n\n{entry}"
        ),
    )
    .unwrap();
    let mut server = crate::support::Running::spawn(crate::support::command(&[
        "serve",
        "--config",
        file.to_str().unwrap(),
    ]));
    let ready = server.ready(Duration::from_secs(30)).await;
    let admin = ready.admin_url();
    let signed = [
        "deploy",
        "app",
        guests::TAGGED_V1,
        "--sign",
        key.to_str().unwrap(),
        "--admin",
        &admin,
    ];
    // The file's token is required...
    handoff(&signed).await.fails(FAILED, "401");
    // ...and with it, the file's signature mode and key.
    let token = ("HANDOFF_ADMIN_TOKEN", "config-file-secret-0123456789");
    handoff_with(
        &["deploy", "app", guests::TAGGED_V1, "--admin", &admin],
        token.0,
        token.1,
    )
    .await
    .fails(FAILED, "this server requires signed uploads");
    handoff_with(&signed, token.0, token.1).await.ok();
    assert_eq!(get(&ready, "/app").await.1, "v1");
    // The file holds a token and others may read it (written with the default umask): the
    // server says so in its log.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_ne!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o077,
            0
        );
        server
            .stderr
            .wait_for(
                "the warning about the file's mode",
                Duration::from_secs(10),
                |text| {
                    text.contains("holds admin tokens and other users may read it; chmod 600 it")
                },
            )
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_mutation_writes_an_audit_line() {
    const DEPLOY: &str = "deploy-secret-0123456789";
    const READ: &str = "read-secret-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    std::fs::write(
        &file,
        format!(
            "[[token]]\nname = \"ci\"\ntoken = \"{DEPLOY}\"\nscope = \"deploy\"\n\
             [[token]]\nname = \"dashboard\"\ntoken = \"{READ}\"\nscope = \"read\"\n"
        ),
    )
    .unwrap();
    let (server, ready) = serve(&["--tokens-file", file.to_str().unwrap()]).await;
    let admin = ready.admin_url();
    let as_token = |args: Vec<String>, token: &'static str| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        handoff_with(&args, "HANDOFF_ADMIN_TOKEN", token).await
    };
    let cmd = |args: &[&str]| -> Vec<String> {
        args.iter()
            .map(|a| a.to_string())
            .chain(["--admin".to_owned(), admin.clone()])
            .collect()
    };
    as_token(cmd(&["deploy", "app", guests::TAGGED_V1]), DEPLOY)
        .await
        .ok();
    as_token(cmd(&["deploy", "app", guests::TAGGED_V2]), DEPLOY)
        .await
        .ok();
    as_token(cmd(&["deploy", "app", guests::TAGGED_V1]), READ)
        .await
        .fails(FAILED, "403");
    as_token(cmd(&["delete", "app"]), "not-a-valid-token-0123")
        .await
        .fails(FAILED, "401");
    as_token(cmd(&["rollback", "app"]), DEPLOY).await.ok();
    as_token(cmd(&["routes"]), READ).await.ok();
    as_token(cmd(&["delete", "app"]), DEPLOY).await.ok();

    let expected = [
        ("who=ci", "method=PUT", "result=201"),
        ("who=ci", "method=PUT", "result=200"),
        ("who=dashboard", "method=PUT", "result=403"),
        ("who=unauthenticated", "method=DELETE", "result=401"),
        ("who=ci", "method=POST", "result=200"),
        ("who=ci", "method=DELETE", "result=200"),
    ];
    server
        .stderr
        .wait_for("six audit lines", Duration::from_secs(10), |text| {
            text.lines().filter(|l| l.contains(" audit:")).count() >= expected.len()
        })
        .await;
    let text = server.stderr.text();
    let audit: Vec<&str> = text.lines().filter(|l| l.contains(" audit:")).collect();
    assert_eq!(
        audit.len(),
        expected.len(),
        "reads are not audited:\n{text}"
    );
    for (line, (who, method, result)) in audit.iter().zip(expected) {
        assert!(
            line.contains(who) && line.contains(method) && line.contains(result),
            "expected {who} {method} {result} in: {line}"
        );
        assert!(line.contains("path=/v1/routes/app"), "{line}");
        assert!(!line.contains("secret"), "no secret in the log: {line}");
    }
    // Accepted mutations name the route and the version they left active.
    assert!(
        audit[0].contains("route=app") && audit[0].contains("version=sha256:"),
        "{}",
        audit[0]
    );
    assert!(
        audit[4].contains("path=/v1/routes/app/rollback") && audit[4].contains("version=sha256:")
    );
}
