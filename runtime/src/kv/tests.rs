//! Unit tests of the backend, the access modes and the limits, on a real `kv.redb` in a
//! temporary directory.

use std::sync::Arc;

use super::access::{KvAccess, OpenError};
use super::backend::{Backend, Change, Condition, KvError, Outcome, Quota, Start, Write};
use super::buckets::Kv;
use super::limits::{KvLimits, PAGE_KEYS};
use super::redb::RedbBackend;
use crate::names::RouteName;

const LIMITS: KvLimits = KvLimits {
    max_value: 1 << 20,
    max_keys: 0,
    max_bytes: 0,
};

fn open(dir: &tempfile::TempDir) -> Arc<RedbBackend> {
    Arc::new(RedbBackend::open(&dir.path().join("kv.redb")).unwrap())
}

fn set(key: &str, value: &str) -> Write {
    Write::new(
        key.into(),
        Change::Set {
            value: value.into(),
            ttl_ms: None,
        },
        Quota::default(),
    )
}

fn revision(outcome: Result<Outcome, KvError>) -> u64 {
    match outcome.unwrap() {
        Outcome::Done { revision, .. } => revision,
        Outcome::Conflict => panic!("conflict"),
    }
}

#[tokio::test]
async fn writes_read_back_with_growing_revisions_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open(&dir);
    let first = revision(kv.write("b", set("k", "one")).await);
    let second = revision(kv.write("b", set("k", "two")).await);
    assert!(second > first);
    let entry = kv.get("b", "k").await.unwrap().unwrap();
    assert_eq!(
        (entry.value.as_slice(), entry.revision),
        (&b"two"[..], second)
    );
    assert_eq!(
        kv.get("other", "k").await.unwrap(),
        None,
        "buckets are apart"
    );
    // Deleted and written again: a larger revision than before, never an old one (ABA).
    revision(
        kv.write(
            "b",
            Write::new("k".into(), Change::Delete, Quota::default()),
        )
        .await,
    );
    assert_eq!(kv.get("b", "k").await.unwrap(), None);
    let third = revision(kv.write("b", set("k", "one")).await);
    assert!(third > second + 1);
    drop(kv);
    let kv = open(&dir);
    assert_eq!(kv.get("b", "k").await.unwrap().unwrap().revision, third);
    let usage = kv.usage("b").await.unwrap();
    assert_eq!((usage.keys, usage.bytes), (1, 4));
}

#[tokio::test]
async fn conditions_hold_or_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open(&dir);
    let mut create = set("k", "a");
    create.condition = Condition::Revision(0);
    let rev = revision(kv.write("b", create.clone()).await);
    assert_eq!(kv.write("b", create).await.unwrap(), Outcome::Conflict);
    let mut stale = set("k", "b");
    stale.condition = Condition::Revision(rev + 100);
    assert_eq!(kv.write("b", stale).await.unwrap(), Outcome::Conflict);
    let mut fresh = set("k", "c");
    fresh.condition = Condition::Revision(rev);
    revision(kv.write("b", fresh).await);
    assert_eq!(kv.get("b", "k").await.unwrap().unwrap().value, b"c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open(&dir);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let kv = kv.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..250 {
                let write =
                    Write::new("n".into(), Change::Increment { delta: 1 }, Quota::default());
                kv.write("b", write).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(kv.get("b", "n").await.unwrap().unwrap().value, b"2000");
    let write = Write::new(
        "n".into(),
        Change::Increment { delta: -2001 },
        Quota::default(),
    );
    assert_eq!(
        kv.write("b", write).await.unwrap(),
        Outcome::Done {
            revision: 2001,
            number: Some(-1)
        }
    );
    revision(kv.write("b", set("text", "abc")).await);
    let write = Write::new(
        "text".into(),
        Change::Increment { delta: 1 },
        Quota::default(),
    );
    assert!(matches!(
        kv.write("b", write).await,
        Err(KvError::NotANumber(_))
    ));
}

#[tokio::test]
async fn quotas_refuse_growth_but_never_shrinking() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open(&dir);
    let quota = Quota {
        max_keys: 2,
        max_bytes: 10,
    };
    let with = |key: &str, value: &str| Write {
        quota,
        ..set(key, value)
    };
    revision(kv.write("b", with("a", "1234")).await);
    revision(kv.write("b", with("b", "12")).await);
    assert_eq!(
        kv.write("b", with("c", "1")).await,
        Err(KvError::TooManyKeys { limit: 2 })
    );
    assert_eq!(
        kv.write("b", with("a", "12345678")).await,
        Err(KvError::TooManyBytes { limit: 10 })
    );
    revision(kv.write("b", with("a", "1")).await);
    let usage = kv.usage("b").await.unwrap();
    assert_eq!((usage.keys, usage.bytes), (2, 5));
}

#[tokio::test]
async fn expired_keys_read_as_absent_and_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open(&dir);
    let short = Write::new(
        "gone".into(),
        Change::Set {
            value: b"x".to_vec(),
            ttl_ms: Some(1),
        },
        Quota::default(),
    );
    revision(kv.write("b", short).await);
    revision(kv.write("b", set("kept", "y")).await);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert_eq!(kv.get("b", "gone").await.unwrap(), None);
    let page = kv.list("b", Start::First, 10).await.unwrap();
    assert_eq!(page.items, ["kept"]);
    // The next batch sweeps it: the bucket's totals no longer count it.
    revision(kv.write("b", set("other", "z")).await);
    assert_eq!(kv.usage("b").await.unwrap().keys, 2);
}

#[tokio::test]
async fn listings_page_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open(&dir);
    let writes = (0..25).map(|i| set(&format!("k{i:02}"), "v")).collect();
    for outcome in kv.write_all("b", writes).await.unwrap() {
        revision(outcome);
    }
    revision(kv.write("c", set("k00", "elsewhere")).await);
    let first = kv.list("b", Start::First, 10).await.unwrap();
    assert_eq!(first.items.len(), 10);
    assert!(first.more);
    let next = kv
        .list("b", Start::After(first.items.last().unwrap()), 10)
        .await
        .unwrap();
    assert_eq!(next.items[0], "k10");
    let last = kv.list("b", Start::Offset(20), 10).await.unwrap();
    assert_eq!(last.items, ["k20", "k21", "k22", "k23", "k24"]);
    assert!(!last.more);
    let scan = kv.scan("b", Start::After("k23"), 10).await.unwrap();
    assert_eq!(scan.items.len(), 1);
    assert_eq!(scan.items[0].1.value, b"v");
}

fn access(kv: &Kv, overlay: bool, limits: KvLimits) -> KvAccess {
    let grants = kv.grants(&RouteName::parse("api").unwrap(), &["orders".into()]);
    if overlay {
        KvAccess::overlay(grants, limits)
    } else {
        KvAccess::new(grants, limits)
    }
}

#[tokio::test]
async fn a_route_opens_its_own_bucket_and_what_it_was_granted() {
    let dir = tempfile::tempdir().unwrap();
    let kv = Kv::new(open(&dir));
    let access = access(&kv, false, LIMITS);
    assert_eq!(&*access.open("default").unwrap().id, "route/api");
    assert_eq!(&*access.open("orders").unwrap().id, "shared/orders");
    assert_eq!(access.open("secrets").unwrap_err(), OpenError::NoSuchStore);
    // Another route's own bucket is another bucket; the shared one is the same handle.
    let other = kv.grants(&RouteName::parse("web").unwrap(), &["orders".into()]);
    assert_eq!(&*other.own().id, "route/web");
    assert!(Arc::ptr_eq(
        other.open("orders").unwrap(),
        &access.open("orders").unwrap()
    ));
}

#[tokio::test]
async fn limits_reach_the_guest_as_sentences_and_count_as_errors() {
    let dir = tempfile::tempdir().unwrap();
    let kv = Kv::new(open(&dir));
    let limits = KvLimits {
        max_value: 4,
        max_keys: 1,
        max_bytes: 0,
    };
    let mut access = access(&kv, false, limits);
    let bucket = access.open("default").unwrap();
    let set = |v: &str| Change::Set {
        value: v.into(),
        ttl_ms: None,
    };
    let error = access
        .write(&bucket, "k".into(), set("12345"), Condition::Always)
        .await
        .unwrap_err();
    assert!(error.contains("kv-max-value"), "{error}");
    access
        .write(&bucket, "k".into(), set("1"), Condition::Always)
        .await
        .unwrap();
    let error = access
        .write(&bucket, "j".into(), set("1"), Condition::Always)
        .await
        .unwrap_err();
    assert!(error.contains("bucket `default` is full"), "{error}");
    assert!(error.contains("kv-max-keys"), "{error}");
    assert_eq!((bucket.stats.operations(), bucket.stats.errors()), (3, 2));
    assert_eq!(bucket.stats.written_bytes(), 1);
}

#[tokio::test]
async fn an_overlay_reads_real_data_and_keeps_its_writes_to_itself() {
    let dir = tempfile::tempdir().unwrap();
    let kv = Kv::new(open(&dir));
    let mut real = access(&kv, false, LIMITS);
    let bucket = real.open("default").unwrap();
    let set = |v: &str| Change::Set {
        value: v.into(),
        ttl_ms: None,
    };
    for key in ["a", "c", "n"] {
        let value = if key == "n" { "41" } else { "real" };
        real.write(&bucket, key.into(), set(value), Condition::Always)
            .await
            .unwrap();
    }
    let before = real.get(&bucket, "a").await.unwrap().unwrap();

    let mut shadow = access(&kv, true, LIMITS);
    assert!(shadow.is_overlay());
    assert_eq!(
        shadow.get(&bucket, "a").await.unwrap().unwrap().value,
        b"real"
    );
    shadow
        .write(&bucket, "a".into(), set("scratch"), Condition::Always)
        .await
        .unwrap();
    shadow
        .write(&bucket, "b".into(), set("new"), Condition::Always)
        .await
        .unwrap();
    shadow
        .write(&bucket, "c".into(), Change::Delete, Condition::Always)
        .await
        .unwrap();
    assert_eq!(shadow.increment(&bucket, "n".into(), 1).await.unwrap(), 42);
    // It reads its own writes; a compare-and-swap sees them too.
    assert_eq!(
        shadow.get(&bucket, "a").await.unwrap().unwrap().value,
        b"scratch"
    );
    assert_eq!(shadow.get(&bucket, "c").await.unwrap(), None);
    let stale = shadow
        .write(
            &bucket,
            "a".into(),
            set("x"),
            Condition::Revision(before.revision),
        )
        .await
        .unwrap();
    assert_eq!(stale, Outcome::Conflict);
    let page = shadow.list(&bucket, Start::First).await.unwrap();
    assert_eq!(page.items, ["a", "b", "n"]);

    // The real data never changed.
    drop(shadow);
    assert_eq!(real.get(&bucket, "a").await.unwrap(), Some(before));
    assert_eq!(real.get(&bucket, "b").await.unwrap(), None);
    assert_eq!(
        real.get(&bucket, "c").await.unwrap().unwrap().value,
        b"real"
    );
    assert_eq!(real.get(&bucket, "n").await.unwrap().unwrap().value, b"41");
    let page = real.list(&bucket, Start::First).await.unwrap();
    assert_eq!(page.items, ["a", "c", "n"]);
    assert!(page.items.len() <= PAGE_KEYS);
}

#[tokio::test]
async fn an_idle_writer_sweeps_expired_keys_within_about_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open(&dir);
    let brief = Write::new(
        "brief".into(),
        Change::Set {
            value: b"x".to_vec(),
            ttl_ms: Some(1),
        },
        Quota::default(),
    );
    revision(kv.write("b", brief).await);
    let started = std::time::Instant::now();
    while kv.usage("b").await.unwrap().keys > 0 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "the expired key was not swept"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_guest_listing_pages_hold_at_most_a_thousand_keys() {
    let dir = tempfile::tempdir().unwrap();
    let kv = Kv::new(open(&dir));
    let mut access = access(&kv, false, LIMITS);
    let bucket = access.open("default").unwrap();
    let changes = (0..1500)
        .map(|i| {
            let change = Change::Set {
                value: b"v".to_vec(),
                ttl_ms: None,
            };
            (format!("k{i:04}"), change)
        })
        .collect();
    access.write_many(&bucket, changes).await.unwrap();
    let first = access.list(&bucket, Start::First).await.unwrap();
    assert_eq!((first.items.len(), first.more), (PAGE_KEYS, true));
    let last = first.items.last().unwrap().clone();
    let rest = access.list(&bucket, Start::After(&last)).await.unwrap();
    assert_eq!((rest.items.len(), rest.more), (500, false));
}
