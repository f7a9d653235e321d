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
//! **Reads** of one key run in the caller, on a read transaction of the last commit:
//! microseconds for a small value, without a hop to another thread. **Listings** run on the
//! blocking pool, read keys and entry headers only (values only for an export's scan), and do a
//! bounded share of work per call, so a guest listing a full bucket in a loop does not stall
//! the async workers that serve other routes.

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
    BUCKETS, ENTRIES, EXPIRY, Meta, bucket_end, bucket_start, composite, decode, live, live_stored,
};
use super::writer::{Answers, Job, failed, write_loop};

/// Rows a listing visits per item its page may hold, at most (entries expired but not swept
/// yet count too), before it ends the page early with what it has.
const VISITS_PER_ITEM: usize = 4;

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

    /// One page of `bucket`'s live entries from `start`, each made by `item` from its key and
    /// its stored bytes. Only the entries' headers are read to skip expired ones; the rows
    /// visited after an offset's skip are capped at [`VISITS_PER_ITEM`] per item the page may
    /// hold, so a bucket full of expired entries costs a bounded amount per call.
    fn range<T>(
        db: &Database,
        bucket: &str,
        start: Start<'_>,
        limit: usize,
        mut item: impl FnMut(&[u8], &[u8]) -> T,
    ) -> Result<Page<T>, redb::Error> {
        let txn = db.begin_read()?;
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
        let mut skip = match start {
            Start::Offset(n) => n,
            _ => 0,
        };
        let budget = limit.saturating_mul(VISITS_PER_ITEM).max(VISITS_PER_ITEM);
        let mut visited = 0usize;
        let mut page = PageFiller::new(&Start::First, limit);
        for row in table.range::<&[u8]>((lower, Bound::Excluded(end.as_slice())))? {
            let (key, value) = row?;
            let stored = value.value();
            if skip == 0 {
                visited += 1;
                if visited > budget && page.end_early() {
                    break;
                }
            }
            if !live_stored(stored, now) {
                continue;
            }
            // Seeking by offset (the older draft's cursors) walks the live keys before it.
            if skip > 0 {
                skip -= 1;
                continue;
            }
            if !page.offer(|| item(&key.value()[bucket.len() + 1..], stored)) {
                break;
            }
        }
        Ok(page.page())
    }

    /// Runs [`Self::range`] on the blocking pool (a listing must not stall the async worker
    /// that serves the request, and other requests with it), or in the caller outside a
    /// runtime.
    fn off_the_async_threads<T: Send + 'static>(
        &self,
        bucket: &str,
        start: Start<'_>,
        limit: usize,
        item: fn(&[u8], &[u8]) -> T,
    ) -> BoxFuture<'static, Result<Page<T>, KvError>> {
        let db = self.db.clone();
        let bucket = bucket.to_owned();
        let (after, offset) = match start {
            Start::After(key) => (Some(key.to_owned()), None),
            Start::Offset(n) => (None, Some(n)),
            Start::First => (None, None),
        };
        let run = move || {
            let start = match (&after, offset) {
                (Some(key), _) => Start::After(key),
                (None, Some(n)) => Start::Offset(n),
                (None, None) => Start::First,
            };
            Self::range(&db, &bucket, start, limit, item).map_err(failed)
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let task = runtime.spawn_blocking(run);
                Box::pin(async move {
                    task.await.map_err(|e| {
                        KvError::Failed(format!("a key-value listing did not finish: {e}"))
                    })?
                })
            }
            Err(_) => Box::pin(std::future::ready(run())),
        }
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
        self.off_the_async_threads(bucket, start, limit, |key, _| {
            String::from_utf8_lossy(key).into_owned()
        })
    }

    fn scan<'a>(
        &'a self,
        bucket: &'a str,
        start: Start<'a>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page<(String, Entry)>, KvError>> {
        self.off_the_async_threads(bucket, start, limit, |key, stored| {
            let entry = decode(stored).unwrap_or_else(|| Entry {
                value: Vec::new(),
                revision: 0,
                expires_at_ms: None,
            });
            (String::from_utf8_lossy(key).into_owned(), entry)
        })
    }

    fn usage<'a>(&'a self, bucket: &'a str) -> BoxFuture<'a, Result<Usage, KvError>> {
        Box::pin(std::future::ready(self.read_usage(bucket).map_err(failed)))
    }
}
