//! Who may change what, through the binary: `HANDOFF_ADMIN_TOKEN` and the name the server
//! records, a tokens file's scopes (and an open public admin API refused), a TLS admin API
//! trusted through `HANDOFF_ADMIN_CA`, signed uploads (`keygen`, `--signatures require`),
//! tokens, keys and the signature mode in the config file, and the audit line of every
//! mutation.

use std::path::Path;
use std::time::Duration;

use handoff::exit;
use handoff_tests::guests;

use crate::support::{Running, get, handoff, handoff_with, json, serve, serve_command};

const FAILED: i32 = exit::FAILED as i32;
const READY: Duration = Duration::from_secs(30);

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
