//! `handoff dev`: build, serve, watch, rebuild, hot-swap. A guest crate whose source this test
//! writes (the raw `wasip2` API, as `tests/guests/tagged.rs`, so it does not depend on the SDK)
//! is edited while a streaming response from it is open: new requests move to the new version,
//! the open one finishes on the old; a broken edit keeps the last good version serving and
//! shows the compiler's error.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use handoff_tests::{Connection, get_request};
use http_body_util::BodyExt;

use crate::support::{Running, command, get, shared_target_dir};

/// The tagged guest's handler; it expects its constants (`TAG`, `SLEEP_MS`, `NOISY`,
/// `CHANGED_ON`) before it.
const HANDLER: &str = include_str!("../../../tests/guests/tagged.rs");
/// The test guests' lockfile, so the crate resolves the same `wasip2` without asking the index.
const LOCKFILE: &str = include_str!("../../../tests/guests/Cargo.lock");
const MANIFEST: &str = r#"[package]
name = "streamer"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
wasip2 = "2.0.1"

[profile.release]
opt-level = "s"
debug = false
strip = "debuginfo"

[workspace]
"#;

/// The first build may compile `wasip2` and `wit-bindgen` from scratch.
const FIRST_BUILD: Duration = Duration::from_secs(600);
/// A rebuild compiles one small crate.
const REBUILD: Duration = Duration::from_secs(120);
/// The held stream: long enough to outlast a rebuild and a deploy on a busy machine.
const CHUNKS: u64 = 120;
const DELAY_MS: u64 = 250;

fn write_source(dir: &Path, tag: &str, trailer: &str) {
    let source = format!(
        "const TAG: &str = {tag:?};\nconst SLEEP_MS: u64 = 0;\nconst NOISY: bool = false;\nconst CHANGED_ON: &str = \"\";\n{HANDLER}{trailer}"
    );
    std::fs::write(dir.join("src/lib.rs"), source).unwrap();
}

/// The short version of the last `deployed streamer VERSION in N ms` line.
fn last_deployed(stdout: &str) -> Option<String> {
    stdout
        .lines()
        .rev()
        .filter_map(|l| l.strip_prefix("deployed streamer "))
        .find_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_swaps_in_each_save_and_keeps_serving_through_a_broken_build() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("Cargo.toml"), MANIFEST).unwrap();
    std::fs::write(dir.path().join("Cargo.lock"), LOCKFILE).unwrap();
    write_source(dir.path(), "alpha", "");

    let mut dev = command(&[
        "dev",
        dir.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        // The held stream runs for CHUNKS * DELAY_MS; neither limit may cut it.
        "--request-timeout",
        "5m",
        "--drain-timeout",
        "5m",
    ]);
    dev.env("CARGO_TARGET_DIR", shared_target_dir("dev-guests"));
    let mut dev = Running::spawn(dev);
    let ready = dev.ready(FIRST_BUILD).await;
    let route_line = format!("route streamer -> http://{}/streamer", ready.data);
    dev.wait_for_line("the route line", Duration::from_secs(5), |l| {
        (l == route_line).then_some(())
    })
    .await;
    let alpha = last_deployed(&dev.stdout.text()).unwrap_or_else(|| {
        panic!(
            "no deployed line in:\n{}\n{}",
            dev.stdout.text(),
            dev.stderr.text()
        )
    });
    assert_eq!(get(&ready, "/streamer").await, (200, "alpha".into()));

    // Hold a stream open on alpha: its first line proves it is in flight.
    let first_line = async {
        let mut conn = Connection::open(ready.data).await;
        let response = conn
            .send(get_request(&format!(
                "/streamer?chunks={CHUNKS}&delay_ms={DELAY_MS}"
            )))
            .await
            .expect("stream request sent");
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let mut held = BytesMut::new();
        while !held.ends_with(b"\n") {
            let frame = body.frame().await.expect("a frame").expect("no error");
            held.extend_from_slice(&frame.into_data().unwrap_or_default());
        }
        (conn, body, held)
    };
    let (_conn, mut body, mut held) = tokio::time::timeout(Duration::from_secs(30), first_line)
        .await
        .expect("the stream's first line within 30 s");
    assert_eq!(&held[..], b"alpha 0\n");
    let rest = tokio::spawn(async move {
        let mut last_byte_at = Instant::now();
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("the held stream is not cut");
            held.extend_from_slice(&frame.into_data().unwrap_or_default());
            last_byte_at = Instant::now();
        }
        (held, last_byte_at)
    });

    // Save a new version; wait until new requests see it.
    let saved = Instant::now();
    write_source(dir.path(), "bravo", "");
    let swapped_at = loop {
        if get(&ready, "/streamer").await == (200, "bravo".into()) {
            break Instant::now();
        }
        assert!(
            saved.elapsed() < REBUILD,
            "bravo not served within {REBUILD:?}\nstdout:\n{}\nstderr:\n{}",
            dev.stdout.text(),
            dev.stderr.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("save to live: {:?}", swapped_at - saved);
    // The line may trail the swap by a moment: the deploy activates, then dev prints.
    let bravo = dev
        .wait_for_line("bravo's deployed line", Duration::from_secs(10), |l| {
            let version = l
                .strip_prefix("deployed streamer ")?
                .split_whitespace()
                .next()?;
            (version != alpha).then(|| version.to_owned())
        })
        .await;

    // The held stream finishes, every line from alpha, and it was still running after the swap.
    let stream_limit = Duration::from_millis(CHUNKS * DELAY_MS) + Duration::from_secs(60);
    let (held, last_byte_at) = tokio::time::timeout(stream_limit, rest)
        .await
        .expect("the held stream ends")
        .unwrap();
    let expected: String = (0..CHUNKS).map(|i| format!("alpha {i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&held), expected);
    assert!(
        last_byte_at > swapped_at,
        "the stream ended before bravo went live, so it proves nothing; raise CHUNKS"
    );

    // A broken save: the compiler's error is shown, bravo keeps serving.
    write_source(dir.path(), "charlie", "\nfn broken( {\n");
    let failed_line = format!("build failed; still serving streamer {bravo}");
    dev.wait_for_line("the build failure", REBUILD, |l| {
        (l == failed_line).then_some(())
    })
    .await;
    // cargo wrote it before dev printed the line above; the reader may be a moment behind.
    dev.stderr
        .wait_for("the compiler's error", Duration::from_secs(10), |text| {
            text.contains("error") && text.contains("src/lib.rs")
        })
        .await;
    assert_eq!(get(&ready, "/streamer").await, (200, "bravo".into()));
    let stdout = dev.stdout.text();
    for progress in [
        "building...",
        "src/lib.rs changed",
        &format!("deployed streamer {alpha} in "),
    ] {
        assert!(stdout.contains(progress), "{progress:?} missing:\n{stdout}");
    }

    // Fixing it goes live again.
    write_source(dir.path(), "delta", "");
    let fixed = Instant::now();
    while get(&ready, "/streamer").await != (200, "delta".into()) {
        assert!(
            fixed.elapsed() < REBUILD,
            "delta not served:\n{}",
            dev.stdout.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let status = dev.terminate(Duration::from_secs(60)).await;
    assert!(status.success(), "dev exits cleanly on SIGTERM: {status}");
}

/// `handoff dev` of the repository's examples, its state in `data`; on ephemeral ports unless
/// it takes over.
fn dev_examples(data: &Path, takeover: bool) -> tokio::process::Command {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let (examples, data) = (examples.to_str().unwrap(), data.to_str().unwrap());
    let mut args = vec!["dev", examples, "--data-dir", data];
    match takeover {
        true => args.push("--takeover"),
        false => args.extend(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]),
    }
    let mut dev = command(&args);
    dev.env("CARGO_TARGET_DIR", shared_target_dir("dev-examples"));
    dev
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_server_taken_over_by_a_new_dev_keeps_serving_the_examples_without_a_failed_request()
{
    use crate::load::{Answer, Clients, Dial};

    let data = tempfile::tempdir().unwrap();
    let mut old = Running::spawn(dev_examples(data.path(), false));
    let ready = old.ready(FIRST_BUILD).await;
    let hello_line = format!("route hello -> http://{}/hello", ready.data);
    old.wait_for_line("hello's route line", Duration::from_secs(30), |l| {
        (l == hello_line).then_some(())
    })
    .await;
    let (status, body) = get(&ready, "/json-api/items/1").await;
    assert_eq!(status, 200, "{body}");
    // Keep-alive HTTP/1.1 and h2c clients on two of the examples.
    let mut clients = Clients::new(REBUILD);
    let tally = clients.tally("requests");
    for path in ["/hello/x", "/json-api/items"] {
        clients.h1(ready.data, Dial::Plain, path, Answer::Any, &tally);
    }
    for path in ["/hello/y", "/json-api/items/2"] {
        clients.h2(ready.data, Dial::Plain, path, Answer::Any, &tally);
    }
    clients.goes_on(50).await;
    let mut new = Running::spawn(dev_examples(data.path(), true));
    let took = new.ready(REBUILD).await;
    assert_eq!((took.data, took.admin), (ready.data, ready.admin));
    let status = old.exit_within(Duration::from_secs(60)).await;
    assert!(
        status.success(),
        "{status}\n{}\n{}",
        old.stdout.text(),
        old.stderr.text()
    );
    assert!(
        old.stdout.text().contains("a new process took over"),
        "{}",
        old.stdout.text()
    );
    // The routes came across with the state: the new dev built the same sources and deployed
    // nothing.
    new.wait_for_line("the new dev's first build", REBUILD, |l| {
        (l == "no component changed").then_some(())
    })
    .await;
    clients.goes_on(50).await;
    clients.stop().await;
    tally.assert_no_failures();
    tally.assert_goaway_refusals_at_most(1, 2);
    assert!(
        tally.reconnects() > 0,
        "the clients moved to the new process"
    );
    let status = new.terminate(Duration::from_secs(60)).await;
    assert!(status.success(), "{status}");
}
