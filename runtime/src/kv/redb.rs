//! The embedded backend: every bucket in one redb file of its own (`kv.redb` in the data
//! directory), apart from the route table, so a large bucket never slows a deploy.
//!
//! Tables: `entries` (bucket id, NUL, key → revision, expiry, value), `buckets` (bucket id →
//! keys, bytes, last revision) and `expiry` (expiry time, bucket id, NUL, key → nothing), the
//! index the sweeper walks to delete what expired.
//!
//! **Writes** go to one writer thread, which commits every write waiting for it in one
//! transaction (group commit: one fsync for many writers) and answers each one only after the
//! commit, so an acknowledged write survives `kill -9`. The thread applies writes one after the
//! other, so conditions, increments and quota checks see every earlier write: each key's
//! operations are linearizable. Once a second, and before each batch, it deletes up to
//! [`SWEEP`] expired entries.
//!
//! **Reads** run in the caller, on a read transaction of the last commit: microseconds for a
//! small value, without a hop to another thread.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition};
use tokio::sync::oneshot;

use super::backend::{
    Backend, BoxFuture, Change, Condition, Entry, KvError, Outcome, Page, Start, Usage, Write, add,
    now_ms, number_of,
};

const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
const BUCKETS: TableDefinition<&str, &[u8]> = TableDefinition::new("buckets");
const EXPIRY: TableDefinition<&[u8], ()> = TableDefinition::new("expiry");

/// Expired entries deleted per sweep.
pub const SWEEP: usize = 1000;
/// Writes committed together at most.
const BATCH: usize = 256;
/// How often the writer sweeps when idle.
const IDLE_SWEEP: Duration = Duration::from_secs(1);

type Answers = Result<Vec<Result<Outcome, KvError>>, KvError>;

/// Writes for one bucket, waiting for the writer thread.
struct Job {
    bucket: String,
    writes: Vec<Write>,
    reply: oneshot::Sender<Answers>,
}

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
        let mut skip = match start {
            Start::Offset(n) => n,
            _ => 0,
        };
        let now = now_ms();
        let mut page = Page {
            items: Vec::new(),
            more: false,
        };
        for row in table.range::<&[u8]>((lower, Bound::Excluded(end.as_slice())))? {
            let (key, value) = row?;
            let Some(entry) = decode(value.value()).filter(|e| live(e, now)) else {
                continue;
            };
            if skip > 0 {
                skip -= 1;
                continue;
            }
            if page.items.len() == limit {
                page.more = true;
                break;
            }
            page.items
                .push(item(&key.value()[bucket.len() + 1..], entry));
        }
        Ok(page)
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

fn failed(error: impl std::fmt::Display) -> KvError {
    tracing::error!(error = %error, "the key-value database failed");
    KvError::Failed(error.to_string())
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

/// The writer thread: waits for jobs, commits each batch, answers, sweeps when idle.
fn write_loop(db: &Database, queue: &mpsc::Receiver<Job>) {
    loop {
        let first = match queue.recv_timeout(IDLE_SWEEP) {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Err(error) = commit(db, &mut []) {
                    tracing::warn!(error = %error, "sweeping expired key-value entries failed");
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = vec![first];
        let mut writes = batch[0].writes.len();
        while writes < BATCH {
            match queue.try_recv() {
                Ok(job) => {
                    writes += job.writes.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        let mut answers: Vec<Vec<Result<Outcome, KvError>>> = batch
            .iter()
            .map(|job| Vec::with_capacity(job.writes.len()))
            .collect();
        let mut work: Vec<(&Job, &mut Vec<Result<Outcome, KvError>>)> =
            batch.iter().zip(answers.iter_mut()).collect();
        let result = commit(db, &mut work);
        drop(work);
        for (job, answer) in batch.into_iter().zip(answers) {
            let _ = job.reply.send(match &result {
                Ok(()) => Ok(answer),
                Err(error) => Err(failed(error)),
            });
        }
    }
}

/// One transaction: sweep, apply every job's writes, commit.
fn commit(
    db: &Database,
    work: &mut [(&Job, &mut Vec<Result<Outcome, KvError>>)],
) -> Result<(), redb::Error> {
    let now = now_ms();
    let txn = db.begin_write()?;
    let mut changed = false;
    {
        let mut tables = Tables {
            entries: txn.open_table(ENTRIES)?,
            buckets: txn.open_table(BUCKETS)?,
            expiry: txn.open_table(EXPIRY)?,
        };
        changed |= tables.sweep(now)?;
        for (job, answers) in work.iter_mut() {
            for write in &job.writes {
                let outcome = tables.apply(&job.bucket, write, now)?;
                changed |= matches!(outcome, Ok(Outcome::Done { .. }));
                answers.push(outcome);
            }
        }
    }
    if changed {
        txn.commit()?;
    } else {
        txn.abort()?;
    }
    Ok(())
}

/// A bucket's totals and last revision.
#[derive(Debug, Clone, Copy, Default)]
struct Meta {
    keys: u64,
    bytes: u64,
    revision: u64,
}

impl Meta {
    fn decode(bytes: &[u8]) -> Self {
        let word = |i: usize| {
            bytes
                .get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes)
        };
        Self {
            keys: word(0),
            bytes: word(1),
            revision: word(2),
        }
    }

    fn encode(&self) -> [u8; 24] {
        let mut out = [0; 24];
        out[..8].copy_from_slice(&self.keys.to_le_bytes());
        out[8..16].copy_from_slice(&self.bytes.to_le_bytes());
        out[16..].copy_from_slice(&self.revision.to_le_bytes());
        out
    }
}

struct Tables<'t> {
    entries: Table<'t, &'static [u8], &'static [u8]>,
    buckets: Table<'t, &'static str, &'static [u8]>,
    expiry: Table<'t, &'static [u8], ()>,
}

impl Tables<'_> {
    fn meta(&self, bucket: &str) -> Result<Meta, redb::Error> {
        Ok(self
            .buckets
            .get(bucket)?
            .map(|v| Meta::decode(v.value()))
            .unwrap_or_default())
    }

    /// Applies one write; `Err` only for a database failure (which fails the batch).
    fn apply(
        &mut self,
        bucket: &str,
        write: &Write,
        now: u64,
    ) -> Result<Result<Outcome, KvError>, redb::Error> {
        let key = composite(bucket, &write.key);
        let stored = self
            .entries
            .get(key.as_slice())?
            .and_then(|v| decode(v.value()));
        let live_entry = stored.as_ref().filter(|e| live(e, now));
        let holds = match write.condition {
            Condition::Always => true,
            Condition::Revision(0) => live_entry.is_none(),
            Condition::Revision(revision) => live_entry.is_some_and(|e| e.revision == revision),
        };
        if !holds {
            return Ok(Ok(Outcome::Conflict));
        }
        let mut meta = self.meta(bucket)?;
        let old_size = stored
            .as_ref()
            .map_or(0, |e| (write.key.len() + e.value.len()) as u64);
        let (value, expires_at_ms, number) = match &write.change {
            Change::Delete => {
                if let Some(old) = &stored {
                    self.entries.remove(key.as_slice())?;
                    self.unindex(old, &key)?;
                    meta.keys = meta.keys.saturating_sub(1);
                    meta.bytes = meta.bytes.saturating_sub(old_size);
                }
                meta.revision += 1;
                let revision = meta.revision;
                self.buckets.insert(bucket, meta.encode().as_slice())?;
                return Ok(Ok(Outcome::Done {
                    revision,
                    number: None,
                }));
            }
            Change::Set { value, ttl_ms } => (
                value.clone(),
                ttl_ms.map(|ttl| now.saturating_add(ttl)),
                None,
            ),
            Change::Increment { delta } => {
                let current = match number_of(&write.key, live_entry.map(|e| e.value.as_slice())) {
                    Ok(current) => current,
                    Err(error) => return Ok(Err(error)),
                };
                let sum = match add(&write.key, current, *delta) {
                    Ok(sum) => sum,
                    Err(error) => return Ok(Err(error)),
                };
                let expires = live_entry.and_then(|e| e.expires_at_ms);
                (sum.to_string().into_bytes(), expires, Some(sum))
            }
        };
        let new_size = (write.key.len() + value.len()) as u64;
        let keys = meta.keys + u64::from(stored.is_none());
        let bytes = meta.bytes.saturating_sub(old_size) + new_size;
        let quota = write.quota;
        if quota.max_keys > 0 && stored.is_none() && keys > quota.max_keys {
            return Ok(Err(KvError::TooManyKeys {
                limit: quota.max_keys,
            }));
        }
        if quota.max_bytes > 0 && new_size > old_size && bytes > quota.max_bytes {
            return Ok(Err(KvError::TooManyBytes {
                limit: quota.max_bytes,
            }));
        }
        if let Some(old) = &stored {
            self.unindex(old, &key)?;
        }
        meta.keys = keys;
        meta.bytes = bytes;
        meta.revision += 1;
        let entry = Entry {
            value,
            revision: meta.revision,
            expires_at_ms,
        };
        self.entries
            .insert(key.as_slice(), encode(&entry).as_slice())?;
        if let Some(at) = expires_at_ms {
            self.expiry.insert(expiry_key(at, &key).as_slice(), ())?;
        }
        self.buckets.insert(bucket, meta.encode().as_slice())?;
        Ok(Ok(Outcome::Done {
            revision: entry.revision,
            number,
        }))
    }

    fn unindex(&mut self, old: &Entry, key: &[u8]) -> Result<(), redb::Error> {
        if let Some(at) = old.expires_at_ms {
            self.expiry.remove(expiry_key(at, key).as_slice())?;
        }
        Ok(())
    }

    /// Deletes up to [`SWEEP`] entries that expired before `now`; whether it deleted any.
    fn sweep(&mut self, now: u64) -> Result<bool, redb::Error> {
        let end = now.to_be_bytes();
        let mut due = Vec::new();
        for row in self.expiry.range::<&[u8]>(..end.as_slice())? {
            let (key, _) = row?;
            due.push(key.value().to_vec());
            if due.len() == SWEEP {
                break;
            }
        }
        for index in &due {
            self.expiry.remove(index.as_slice())?;
            let key = &index[8..];
            let Some(stored) = self.entries.get(key)?.and_then(|v| decode(v.value())) else {
                continue;
            };
            if stored.expires_at_ms.is_none_or(|at| at > now) {
                continue;
            }
            self.entries.remove(key)?;
            let Some(split) = key.iter().position(|b| *b == 0) else {
                continue;
            };
            let bucket = String::from_utf8_lossy(&key[..split]).into_owned();
            let mut meta = self.meta(&bucket)?;
            meta.keys = meta.keys.saturating_sub(1);
            meta.bytes = meta
                .bytes
                .saturating_sub((key.len() - split - 1 + stored.value.len()) as u64);
            self.buckets
                .insert(bucket.as_str(), meta.encode().as_slice())?;
        }
        Ok(!due.is_empty())
    }
}

/// Whether `entry` has not expired at `now`.
fn live(entry: &Entry, now: u64) -> bool {
    entry.expires_at_ms.is_none_or(|at| at > now)
}

/// The table key of `key` in `bucket`: the bucket id (which never holds a NUL), NUL, the key.
fn composite(bucket: &str, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(bucket.len() + 1 + key.len());
    out.extend_from_slice(bucket.as_bytes());
    out.push(0);
    out.extend_from_slice(key.as_bytes());
    out
}

fn bucket_start(bucket: &str) -> Vec<u8> {
    composite(bucket, "")
}

fn bucket_end(bucket: &str) -> Vec<u8> {
    let mut out = bucket.as_bytes().to_vec();
    out.push(1);
    out
}

fn expiry_key(at: u64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&at.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// An entry as stored: revision and expiry (0: none), little-endian, then the value.
fn encode(entry: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + entry.value.len());
    out.extend_from_slice(&entry.revision.to_le_bytes());
    out.extend_from_slice(&entry.expires_at_ms.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&entry.value);
    out
}

fn decode(bytes: &[u8]) -> Option<Entry> {
    let revision = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let expires = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some(Entry {
        value: bytes[16..].to_vec(),
        revision,
        expires_at_ms: (expires != 0).then_some(expires),
    })
}
