//! The key-value store through the binary: `kill -9` in the middle of many writes keeps every
//! acknowledged one, and `handoff kv` reads, writes, exports and imports buckets.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use handoff::exit;
use handoff_tests::guests;
use serde_json::Value;

use crate::support::{Ready, get, handoff, serve_in};

const READY: Duration = Duration::from_secs(30);
const WRITERS: usize = 8;

/// Every entry of route `route`'s own bucket, through `handoff kv export`.
async fn export(ready: &Ready, route: &str) -> BTreeMap<String, String> {
    let admin = ready.admin_url();
    let out = handoff(&["kv", "export", "--route", route, "--admin", &admin]).await;
    out.ok()
        .lines()
        .map(|line| {
            let entry: Value = serde_json::from_str(line).unwrap();
            (
                entry["key"].as_str().unwrap().to_owned(),
                entry["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_writes_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ready) = serve_in(dir.path()).await;
    let admin = ready.admin_url();
    handoff(&["deploy", "kv", guests::KV_PLAIN, "--admin", &admin])
        .await
        .ok();
    let mut server = Some(server);
    let mut ready = ready;
    let mut acked_total = 0;
    let mut increments = 0u64;
    for round in 0..3u64 {
        let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut writers = Vec::new();
        for writer in 0..WRITERS {
            let acked = acked.clone();
            let counted = counted.clone();
            let data = ready.data;
            writers.push(tokio::spawn(async move {
                let mut conn = handoff_tests::Connection::open(data).await;
                for j in 0u64.. {
                    let key = format!("r{round}-w{writer}-{j}");
                    let value = format!("{round}.{writer}.{j}");
                    let path = format!("/kv/set?key={key}&value={value}");
                    match conn.get(&path).await {
                        Ok((status, _)) if status == 200 => {
                            acked.lock().unwrap().push((key, value));
                        }
                        Ok((status, body)) => panic!("a write was refused: {status} {body:?}"),
                        Err(_) => return, // the server died mid-write
                    }
                    match conn.get("/kv/incr?key=count").await {
                        Ok((status, _)) if status == 200 => {
                            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Ok((status, body)) => panic!("an increment was refused: {status} {body:?}"),
                        Err(_) => return,
                    }
                }
            }));
        }
        // Let writes through, then kill at a different moment each round.
        tokio::time::sleep(Duration::from_millis(400 + 300 * round)).await;
        server.take().unwrap().kill9().await;
        for writer in writers {
            let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
        }
        let (restarted, again) = serve_in(dir.path()).await;
        server = Some(restarted);
        ready = again;
        let stored = export(&ready, "kv").await;
        let acked = acked.lock().unwrap().clone();
        assert!(!acked.is_empty(), "round {round}: no write got through");
        for (key, value) in &acked {
            assert_eq!(
                stored.get(key),
                Some(value),
                "round {round}: acknowledged write {key}={value} is missing after kill -9"
            );
        }
        acked_total += acked.len();
        // Every acknowledged increment is there; one in flight at the kill may be too.
        increments += counted.load(std::sync::atomic::Ordering::Relaxed);
        let (_, count) = get(&ready, "/kv/get?key=count").await;
        let count: u64 = count.parse().unwrap();
        assert!(
            (increments..=increments + WRITERS as u64).contains(&count),
            "round {round}: {count} increments stored, {increments} acknowledged"
        );
        increments = count;
    }
    eprintln!("kv kill -9 test: 3 kills, {acked_total} acknowledged writes, all kept");
    assert!(server.take().unwrap().terminate(READY).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_commands_read_write_export_and_import_buckets() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ready) = serve_in(dir.path()).await;
    let admin = ready.admin_url();
    let a = ["--admin", admin.as_str()];
    let kv = |args: &[&str]| {
        let mut all: Vec<String> = vec!["kv".into()];
        all.extend(args.iter().map(|s| (*s).to_owned()));
        all.extend(a.iter().map(|s| (*s).to_owned()));
        async move {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            handoff(&refs).await
        }
    };
    handoff(&[
        "deploy",
        "app",
        guests::KV_PLAIN,
        "--kv",
        "orders",
        "--admin",
        &admin,
    ])
    .await
    .ok();
    get(&ready, "/app/set?key=greeting&value=hello").await;
    get(&ready, "/app/set?bucket=orders&key=o/1&value=shared").await;
    assert_eq!(
        kv(&["get", "--route", "app", "greeting"]).await.ok(),
        "hello"
    );
    assert_eq!(kv(&["keys", "--bucket", "orders"]).await.ok(), "o/1\n");
    assert_eq!(kv(&["get", "-b", "orders", "o/1"]).await.ok(), "shared");
    // What an operator puts, the guest reads; expired keys are gone.
    kv(&["put", "--route", "app", "seeded", "by the operator"])
        .await
        .ok();
    assert_eq!(
        get(&ready, "/app/get?key=seeded").await.1,
        "by the operator"
    );
    kv(&["put", "--route", "app", "brief", "x", "--ttl", "10ms"])
        .await
        .ok();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(get(&ready, "/app/get?key=brief").await.0, 404);
    // Export, delete, import: back as it was.
    let exported = kv(&["export", "--route", "app"]).await.ok().to_owned();
    assert_eq!(exported.lines().count(), 2, "{exported}");
    assert!(
        kv(&["delete", "--route", "app", "greeting"])
            .await
            .ok()
            .contains("deleted")
    );
    kv(&["get", "--route", "app", "greeting"])
        .await
        .fails(exit::FAILED as i32, "has no key `greeting`");
    let file = dir.path().join("backup.jsonl");
    std::fs::write(&file, &exported).unwrap();
    let imported = kv(&["import", "--route", "other", file.to_str().unwrap()]).await;
    assert!(imported.ok().contains("imported 2 keys into route/other"));
    kv(&["import", "--route", "app", file.to_str().unwrap()])
        .await
        .ok();
    assert_eq!(get(&ready, "/app/get?key=greeting").await.1, "hello");
    // Mistakes are refused with a sentence.
    std::fs::write(&file, "{\"key\": \"k\"}\n").unwrap();
    kv(&["import", "--route", "app", file.to_str().unwrap()])
        .await
        .fails(exit::FAILED as i32, "line 1 of the import");
    kv(&["keys", "--bucket", "default"])
        .await
        .fails(exit::FAILED as i32, "every route's own bucket");
    let usage = handoff(&["kv", "keys", "--admin", &admin]).await;
    assert_eq!(usage.code, exit::USAGE as i32, "{usage:?}");
    assert!(server.terminate(READY).await.success());
}
