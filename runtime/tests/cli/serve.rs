//! `handoff serve --config FILE`: the file mirrors the flags, flags win over it, and a file that
//! cannot be used stops the server before it binds anything, with exit 64 and a sentence naming
//! the file and the problem; a server with the default pool keeps far from Linux's limit on
//! memory mappings.

use std::time::{Duration, Instant};

use handoff::exit;
use handoff_tests::guests;

use crate::support::{get, handoff, serve};

const CONFIG: i32 = exit::CONFIG as i32;

/// `/hostile/sleep` blocks for an hour: it answers 504 exactly when the request timeout passes,
/// which shows the timeout in force.
async fn sleep_takes(ready: &crate::support::Ready) -> Duration {
    let admin = ready.admin_url();
    handoff(&["deploy", "hostile", guests::HOSTILE, "--admin", &admin])
        .await
        .ok();
    let started = Instant::now();
    let (status, _) = get(ready, "/hostile/sleep").await;
    assert_eq!(status, 504);
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_its_settings_from_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("handoff.toml");
    std::fs::write(
        &file,
        "# ports from the OS\nlisten = \"127.0.0.1:0\"\nadmin-listen = \"127.0.0.1:0\"\n\
         request-timeout = \"300ms\"\nephemeral = true\n",
    )
    .unwrap();
    let mut server = crate::support::Running::spawn(crate::support::command(&[
        "serve",
        "--config",
        file.to_str().unwrap(),
    ]));
    let ready = server.ready(Duration::from_secs(30)).await;
    // Port 0 from the file, not the default 8080/8081.
    assert_ne!(ready.data.port(), 8080);
    assert_ne!(ready.admin.port(), 8081);
    let took = sleep_takes(&ready).await;
    assert!(
        took < Duration::from_secs(10),
        "the file's 300ms timeout, not the default 30s: took {took:?}"
    );
    assert!(took >= Duration::from_millis(300), "took {took:?}");
    // And it shuts down gracefully on SIGTERM.
    let status = server.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_wins_over_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("handoff.toml");
    std::fs::write(&file, "request-timeout = \"5m\"\n").unwrap();
    let (_server, ready) = serve(&[
        "--config",
        file.to_str().unwrap(),
        "--request-timeout",
        "300ms",
    ])
    .await;
    let took = sleep_takes(&ready).await;
    assert!(
        took < Duration::from_secs(10),
        "the flag's 300ms, not the file's 5m: took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_key_exits_64_naming_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("handoff.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:0\"\nrequest_timeout = \"1s\"\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    // The listen addresses are free ports from the file; refusing it must happen before binding.
    let output = handoff(&["serve", "--config", path]).await;
    output.fails(CONFIG, &format!("the config file {path} is invalid: "));
    assert!(
        output.stderr.contains("unknown field `request_timeout`"),
        "{output:#?}"
    );
    assert!(output.stderr.contains("line 2"), "{output:#?}");
    assert!(output.stdout.is_empty(), "nothing was served: {output:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_config_file_exits_64_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let missing = missing.to_str().unwrap();
    let output = handoff(&["serve", "--config", missing]).await;
    output.fails(CONFIG, &format!("cannot read the config file {missing}: "));

    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "max-memory = \"lots\"\n").unwrap();
    let path = file.to_str().unwrap();
    let output = handoff(&["serve", "--config", path]).await;
    output.fails(
        CONFIG,
        &format!("the config file {path} is invalid: `max-memory`: "),
    );

    // A valid file whose values fail validation: the same exit code.
    std::fs::write(&file, "max-memory = 1024\n").unwrap();
    let output = handoff(&["serve", "--config", path]).await;
    output.fails(CONFIG, "the memory limit must be at least 64 KiB");
    assert!(
        output.stderr.contains(&format!("the config file {path}")),
        "{output:#?}"
    );
}

/// A server with the default pool (1,000 slots for each engine, with a 0.3 guest deployed so
/// both engines are in use) keeps well under Linux's default limit of 65,530 memory mappings per
/// process (`vm.max_map_count`): every pooled stack maps twice, and a process at the limit
/// aborts when a new thread cannot map its signal stack. At 17 stacks per 0.3 slot a bare
/// server mapped 36,076.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_the_default_pool_keeps_far_from_the_limit_on_memory_mappings() {
    let (server, ready) = serve(&[]).await;
    let admin = ready.admin_url();
    handoff(&["deploy", "p3", guests::P3_HELLO, "--admin", &admin])
        .await
        .ok();
    let (status, _) = get(&ready, "/p3").await;
    assert_eq!(status, 200);
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", server.pid()))
        .expect("reading the server's memory map");
    let count = maps.lines().count();
    assert!(
        count < 20_000,
        "the server maps {count} regions; Linux allows 65,530 per process by default"
    );
}
