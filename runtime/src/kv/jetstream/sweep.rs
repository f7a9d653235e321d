//! Expired entries: one node (the cluster's leader) deletes them ([`sweep_while`]). Every
//! [`SWEEP_EVERY`] it reads the next `SWEEP_BUCKETS` buckets in turn, deletes each expired
//! entry with a compare-and-swap on the sequence it read (a key written again meanwhile is left
//! alone), and gives their usage back.

use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::StreamExt as _;

use super::layout::{STREAM_PREFIX, key_from};
use super::store::{JetStreamKv, Landed, failed};
use crate::kv::backend::{KvError, now_ms};
use crate::kv::format::{decode, live};

/// How often the leader deletes expired entries.
pub const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// Expired entries deleted per sweep, over all buckets.
const SWEEP: usize = 1000;
/// Buckets one sweep reads: the cost of a round stays bounded with many routes.
const SWEEP_BUCKETS: usize = 16;
/// How long a sweep waits for a bucket's next entry before it moves on.
const SWEEP_READ: Duration = Duration::from_secs(5);
impl JetStreamKv {
    /// Deletes up to `limit` expired entries in the next [`SWEEP_BUCKETS`] buckets of the
    /// cluster (in turn: every bucket is swept once every `buckets / SWEEP_BUCKETS` rounds);
    /// returns how many it deleted.
    pub async fn sweep(&self, limit: usize) -> Result<usize, KvError> {
        let mut names = self.js.stream_names();
        let mut buckets = Vec::new();
        while let Some(name) = names.next().await {
            let name = name.map_err(|e| failed("listing buckets", e))?;
            if let Some(hex) = name.strip_prefix(STREAM_PREFIX) {
                buckets.push(format!("handoff_kv_{hex}"));
            }
        }
        if buckets.is_empty() {
            return Ok(0);
        }
        buckets.sort();
        let first = self
            .sweep_cursor
            .fetch_add(SWEEP_BUCKETS, std::sync::atomic::Ordering::Relaxed)
            % buckets.len();
        let turn = buckets
            .iter()
            .cycle()
            .skip(first)
            .take(SWEEP_BUCKETS.min(buckets.len()));
        let mut swept = 0;
        for bucket in turn {
            if swept >= limit {
                break;
            }
            let store = self
                .js
                .get_key_value(bucket)
                .await
                .map_err(|e| failed("opening a bucket", e))?;
            swept += self.sweep_bucket(&store, limit - swept).await?;
        }
        Ok(swept)
    }

    /// Deletes up to `limit` expired entries of `store`.
    async fn sweep_bucket(&self, store: &kv::Store, limit: usize) -> Result<usize, KvError> {
        let status = store
            .status()
            .await
            .map_err(|e| failed("reading a bucket's status", e))?;
        if status.values() == 0 {
            return Ok(0);
        }
        // Each key's last message, in one pass.
        let mut watch = store
            .watch_with_history(">")
            .await
            .map_err(|e| failed("reading a bucket", e))?;
        let now = now_ms();
        let mut expired = Vec::new();
        while let Ok(Some(entry)) = tokio::time::timeout(SWEEP_READ, watch.next()).await {
            let entry = entry.map_err(|e| failed("reading a bucket", e))?;
            if entry.operation == kv::Operation::Put
                && let Some(key) = key_from(&entry.key)
                && let Some(stored) = decode(&entry.value)
                && !live(&stored, now)
            {
                let size = (key.len() + stored.value.len()) as i64;
                expired.push((entry.key, entry.revision, size));
            }
            if entry.delta == 0 || expired.len() >= limit {
                break;
            }
        }
        drop(watch);
        let mut swept = 0;
        for (key, revision, size) in expired {
            match self.publish(store, &key, None, revision).await {
                Landed::Yes(_) => {
                    self.account(store, -1, -size, None).await?;
                    swept += 1;
                }
                Landed::Conflict => {}
                Landed::No(error) | Landed::Unknown(error) => return Err(error),
            }
        }
        Ok(swept)
    }
}

/// Every [`SWEEP_EVERY`] while `leads` says this node leads, deletes expired entries of every
/// bucket ([`JetStreamKv::sweep`]); ends once the backend is gone. The caller runs it as a
/// background task (`crate::background`), which ends it when the node leaves.
pub fn sweep_while(
    kv: &std::sync::Arc<JetStreamKv>,
    leads: impl Fn() -> bool + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    let kv = std::sync::Arc::downgrade(kv);
    async move {
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            let Some(kv) = kv.upgrade() else { return };
            if !leads() {
                continue;
            }
            match kv.sweep(SWEEP).await {
                Ok(0) => {}
                Ok(swept) => tracing::debug!(swept, "expired key-value entries deleted"),
                // `failed` logged it; the next round tries again.
                Err(_) => {}
            }
        }
    }
}
