//! The embedded backend: every bucket in one redb file of its own (`kv.redb` in the data
//! directory), apart from the route table, so a large bucket never slows a deploy.
//!
//! Tables: `entries` (bucket id, NUL, key → revision, expiry, value), `buckets` (bucket id →
//! keys, bytes, last revision) and `expiry` (expiry time, bucket id, NUL, key → nothing), the
//! index the sweeper walks to delete what expired.
//!
//! **Writes** go to one writer thread (`super::writer`), which commits every write waiting for
//! it in one transaction (group commit: one fsync for many writers) and answers each one only
//! after the commit, so an acknowledged write survives `kill -9`. The thread applies writes one
//! after the other, so conditions, increments and quota checks see every earlier write: each
//! key's operations are linearizable. It also deletes expired entries.
//!
//! **Reads** run in the caller, on a read transaction of the last commit: microseconds for a
//! small value, without a hop to another thread.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use redb::{Database, ReadableDatabase};
use tokio::sync::oneshot;

use super::backend::{
    Backend, BoxFuture, Entry, KvError, Page, PageFiller, Start, Usage, Write, now_ms,
};
use super::format::{
    BUCKETS, ENTRIES, EXPIRY, Meta, bucket_end, bucket_start, composite, decode, live,
};
use super::writer::{Answers, Job, failed, write_loop};

/// The redb backend.
pub struct RedbBackend {
    db: Arc<Database>,
    writer: Writer,
}

/// The writer thread and the way to it. Dropping it stops the thread and waits for it, so the
/// file is closed when the backend is gone.
struct Writer {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl RedbBackend {
    /// Opens (creating if needed) the database at `path`; the caller has made the file private.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let db = Database::create(path).map_err(|e| {
            anyhow::anyhow!("opening the key-value database `{}`: {e}", path.display())
        })?;
        let txn = db.begin_write()?;
        txn.open_table(ENTRIES)?;
        txn.open_table(BUCKETS)?;
        txn.open_table(EXPIRY)?;
        txn.commit()?;
        let db = Arc::new(db);
        let (jobs, queue) = mpsc::channel();
        let worker = db.clone();
        let thread = std::thread::Builder::new()
            .name("handoff-kv-writer".into())
            .spawn(move || write_loop(&worker, &queue))?;
        Ok(Self {
            db,
            writer: Writer {
                jobs: Some(jobs),
                thread: Some(thread),
            },
        })
    }

    fn read_entry(&self, bucket: &str, key: &str) -> Result<Option<Entry>, redb::Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ENTRIES)?;
        let found = table.get(composite(bucket, key).as_slice())?;
        Ok(found.and_then(|value| decode(value.value()).filter(|e| live(e, now_ms()))))
    }

    fn range<T>(
        &self,
        bucket: &str,
        start: Start<'_>,
        limit: usize,
        mut item: impl FnMut(&[u8], Entry) -> T,
    ) -> Result<Page<T>, redb::Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ENTRIES)?;
        let end = bucket_end(bucket);
        let from = match start {
            Start::After(key) => composite(bucket, key),
            Start::First | Start::Offset(_) => bucket_start(bucket),
        };
        let lower = match start {
            Start::After(_) => Bound::Excluded(from.as_slice()),
            _ => Bound::Included(from.as_slice()),
        };
        let now = now_ms();
        let mut page = PageFiller::new(&start, limit);
        for row in table.range::<&[u8]>((lower, Bound::Excluded(end.as_slice())))? {
            let (key, value) = row?;
            let Some(entry) = decode(value.value()).filter(|e| live(e, now)) else {
                continue;
            };
            if !page.offer(|| item(&key.value()[bucket.len() + 1..], entry)) {
                break;
            }
        }
        Ok(page.page())
    }

    fn read_usage(&self, bucket: &str) -> Result<Usage, redb::Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BUCKETS)?;
        let meta = table
            .get(bucket)?
            .map(|v| Meta::decode(v.value()))
            .unwrap_or_default();
        Ok(Usage {
            keys: meta.keys,
            bytes: meta.bytes,
        })
    }
}

impl Backend for RedbBackend {
    fn get<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Entry>, KvError>> {
        Box::pin(std::future::ready(
            self.read_entry(bucket, key).map_err(failed),
        ))
    }

    fn write_all<'a>(&'a self, bucket: &'a str, writes: Vec<Write>) -> BoxFuture<'a, Answers> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            bucket: bucket.to_owned(),
            writes,
            reply,
        };
        let sent = self
            .writer
            .jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send(job).is_ok());
        Box::pin(async move {
            if !sent {
                return Err(KvError::Failed("the key-value writer has stopped".into()));
            }
            answer
                .await
                .map_err(|_| KvError::Failed("the key-value writer has stopped".into()))?
        })
    }

    fn list<'a>(
        &'a self,
        bucket: &'a str,
        start: Start<'a>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page<String>, KvError>> {
        let page = self.range(bucket, start, limit, |key, _| {
            String::from_utf8_lossy(key).into_owned()
        });
        Box::pin(std::future::ready(page.map_err(failed)))
    }

    fn scan<'a>(
        &'a self,
        bucket: &'a str,
        start: Start<'a>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page<(String, Entry)>, KvError>> {
        let page = self.range(bucket, start, limit, |key, entry| {
            (String::from_utf8_lossy(key).into_owned(), entry)
        });
        Box::pin(std::future::ready(page.map_err(failed)))
    }

    fn usage<'a>(&'a self, bucket: &'a str) -> BoxFuture<'a, Result<Usage, KvError>> {
        Box::pin(std::future::ready(self.read_usage(bucket).map_err(failed)))
    }
}
