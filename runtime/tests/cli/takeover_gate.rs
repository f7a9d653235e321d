//! What a process handing over (`serve --takeover`) still does on its own once the handover has
//! begun: nothing that writes the route table or the data directory, which are the new
//! process's from then on (issue 21: rollout steps and garbage collection take the handover
//! gate, as admin changes do).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use handoff_tests::guests;

use crate::support::{Running, handoff};
use crate::takeover::{node_command, streaming};

const READY: Duration = Duration::from_secs(60);

/// The artifact files in `dir`, by name (`<digest hex>.<engine key>.cwasm`).
fn artifacts(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir.join("artifacts"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(".cwasm"))
                .collect()
        })
        .unwrap_or_default()
}

/// The engine key an artifact's file name carries.
fn key(artifact: &str) -> &str {
    artifact.split('.').nth(1).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_handing_over_leaves_the_new_processes_artifacts_alone() {
    let nats = handoff_tests::nats::NatsServer::start();
    let url = nats.url();
    let dir = tempfile::tempdir().unwrap();
    let mut first = node_command(dir.path(), &url, "a", false);
    first.args(["--drain-timeout", "60s"]);
    let mut old = Running::spawn(first);
    let a = old.ready(READY).await;
    let admin = a.admin_url();
    handoff(&["deploy", "stream", guests::STREAMING, "--admin", &admin])
        .await
        .ok();
    // A response streaming from the first version keeps it draining after the next deploy,
    // through the takeover: its drain ends (and collects garbage) only when the client goes.
    let body = streaming(a.data, "/stream?chunks=200&delay_ms=100").await;
    handoff(&["deploy", "stream", guests::TAGGED_V1, "--admin", &admin])
        .await
        .ok();
    let old_keys: BTreeSet<String> = artifacts(dir.path())
        .iter()
        .map(|a| key(a).to_owned())
        .collect();
    assert_eq!(old_keys.len(), 1, "one engine so far: {old_keys:?}");

    // The new process runs another engine (another opt level): it compiles the route again,
    // into artifacts of its own key, before it is ready.
    let mut next = node_command(dir.path(), &url, "a", true);
    next.args(["--opt-level", "none"]);
    let mut new = Running::spawn(next);
    new.ready(READY).await;
    let theirs: BTreeSet<String> = artifacts(dir.path())
        .into_iter()
        .filter(|a| !old_keys.contains(key(a)))
        .collect();
    assert!(
        !theirs.is_empty(),
        "the new process compiled for its engine: {:?}",
        artifacts(dir.path())
    );
    // The stream's client goes: the old process's last draining version is freed there. What
    // the old process collects then must not include what the new one compiled.
    drop(body);
    let status = old.exit_within(Duration::from_secs(90)).await;
    assert!(status.success(), "{}", old.stderr.text());
    let left = artifacts(dir.path());
    let gone: Vec<&String> = theirs.iter().filter(|a| !left.contains(*a)).collect();
    assert!(
        gone.is_empty(),
        "the old process removed the new process's artifacts {gone:?}\nold:\n{}",
        old.stderr.text()
    );

    // So a restart of the new release loads them and recompiles nothing.
    assert!(new.terminate(Duration::from_secs(60)).await.success());
    let mut again = node_command(dir.path(), &url, "a", false);
    again.args(["--opt-level", "none"]);
    let mut again = Running::spawn(again);
    again.ready(READY).await;
    again
        .stderr
        .wait_for("the restore's summary", READY, |log| {
            log.contains("routes restored from the data directory")
        })
        .await;
    let log = again.stderr.text();
    assert!(
        log.contains("routes restored from the data directory routes=1 recompiled=0 failed=0"),
        "{log}"
    );
    assert!(again.terminate(Duration::from_secs(60)).await.success());
}
