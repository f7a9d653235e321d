//! The writer thread of `kv.redb`: it commits every write waiting for it in one transaction
//! (group commit: one fsync for many writers) and answers each only after the commit, so an
//! acknowledged write survives `kill -9`. It applies writes one after the other, so
//! conditions, increments and quota checks see every earlier write. Once a second when idle,
//! and before each batch, it deletes up to [`SWEEP`] expired entries.

use std::sync::mpsc;
use std::time::Duration;

use redb::{Database, ReadableTable, Table};
use tokio::sync::oneshot;

use super::backend::{Change, Condition, Entry, KvError, Outcome, Write, add, now_ms, number_of};
use super::format::{BUCKETS, ENTRIES, EXPIRY, Meta, composite, decode, encode, expiry_key, live};

/// Expired entries deleted per sweep.
pub const SWEEP: usize = 1000;
/// Writes committed together at most.
const BATCH: usize = 256;
/// How often the writer sweeps when idle.
const IDLE_SWEEP: Duration = Duration::from_secs(1);

pub(crate) type Answers = Result<Vec<Result<Outcome, KvError>>, KvError>;

/// Writes for one bucket, waiting for the writer thread.
pub(crate) struct Job {
    pub bucket: String,
    pub writes: Vec<Write>,
    pub reply: oneshot::Sender<Answers>,
}

/// A database failure as the backend reports it (and logs it).
pub(crate) fn failed(error: impl std::fmt::Display) -> KvError {
    tracing::error!(error = %error, "the key-value database failed");
    KvError::Failed(error.to_string())
}

/// The writer thread: waits for jobs, commits each batch, answers, sweeps when idle.
pub(crate) fn write_loop(db: &Database, queue: &mpsc::Receiver<Job>) {
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
