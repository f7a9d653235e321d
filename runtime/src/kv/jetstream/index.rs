//! Each node's sorted copy of the keys of the buckets it lists ([`Indexes`]), with what each
//! key's last message says (its expiry), so a listing page costs one request and its own keys
//! however large the bucket.
//!
//! An index remembers the last stream sequence it has applied. Before each page it asks the
//! stream's leader for the stream's last sequence (one request): if nothing was written since,
//! the index is current; otherwise a headers-only pass from the next sequence applies what was
//! written since (messages of one key in the order they were written, a delete marker removing
//! it). So a listing sees every write acknowledged before it started, as a read does, and pays
//! for the writes since the last listing, never for the keys that did not change. A stream
//! made again (another creation time, or a last sequence below the index's) starts the index
//! from nothing.
//!
//! Memory is bounded: all indexes together hold at most [`INDEX_KEYS`] keys (a bucket whose
//! index would pass that is listed by a headers-only pass per page instead, `super::listing`,
//! and indexed again after [`INDEX_IDLE`]), and an index nobody listed for [`INDEX_IDLE`] is
//! dropped.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::kv;
use dashmap::DashMap;

use super::listing::{Candidates, Last};
use super::store::{JetStreamKv, failed};
use crate::kv::backend::{KvError, now_ms};

/// Keys all of a node's indexes hold together, at most.
pub(super) const INDEX_KEYS: usize = 1_000_000;
/// How long an index nobody lists is kept.
pub(super) const INDEX_IDLE: Duration = Duration::from_secs(60);

/// The indexes of one node's buckets.
pub(super) struct Indexes {
    by_bucket: DashMap<String, Arc<tokio::sync::Mutex<Index>>>,
    /// Keys held by all of them (each index takes its own out when it is dropped).
    held: Arc<AtomicUsize>,
    /// Keys they may hold: [`INDEX_KEYS`] (a test lowers it: [`JetStreamKv::limit_indexes`]).
    max: AtomicUsize,
}

impl Default for Indexes {
    fn default() -> Self {
        Self {
            by_bucket: DashMap::new(),
            held: Arc::new(AtomicUsize::new(0)),
            max: AtomicUsize::new(INDEX_KEYS),
        }
    }
}

/// One bucket's keys as this node last read them.
struct Index {
    /// The stream's creation time: a stream made again is another stream.
    created: Option<async_nats::datetime::DateTime>,
    /// The last stream sequence applied.
    sequence: u64,
    /// Each live or unknown key and what its last message says.
    keys: BTreeMap<String, Last>,
    /// When a listing last used it.
    used: Instant,
    /// When it was found larger than the indexes may hold: its bucket is then listed by passes,
    /// and indexed again after [`INDEX_IDLE`].
    too_large: Option<Instant>,
    /// Keys held by all of a node's indexes, its own counted in.
    held: Arc<AtomicUsize>,
}

impl Drop for Index {
    fn drop(&mut self) {
        self.clear();
    }
}

impl Index {
    fn new(held: Arc<AtomicUsize>) -> Self {
        Self {
            created: None,
            sequence: 0,
            keys: BTreeMap::new(),
            used: Instant::now(),
            too_large: None,
            held,
        }
    }

    /// Forgets every key.
    fn clear(&mut self) {
        self.held.fetch_sub(self.keys.len(), Ordering::Relaxed);
        self.keys.clear();
        self.sequence = 0;
    }

    /// Applies one message (`key` `None`: not a guest key's). False once the index would hold
    /// more than `max` keys with all the others.
    fn apply(&mut self, sequence: u64, key: Option<String>, last: Last, max: usize) -> bool {
        self.sequence = self.sequence.max(sequence);
        let Some(key) = key else { return true };
        if last == Last::Deleted {
            if self.keys.remove(&key).is_some() {
                self.held.fetch_sub(1, Ordering::Relaxed);
            }
            return true;
        }
        if self.keys.insert(key, last).is_none() {
            return self.held.fetch_add(1, Ordering::Relaxed) < max;
        }
        true
    }

    /// Up to `cap` keys live at `now` from `lower`, in order (an in-memory walk: expired keys
    /// the leader has not deleted yet are stepped over).
    fn window(&self, lower: &Bound<String>, cap: usize, now: u64) -> Candidates {
        let from = match lower {
            Bound::Included(key) => Bound::Included(key.as_str()),
            Bound::Excluded(key) => Bound::Excluded(key.as_str()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut keys = Vec::new();
        for (key, last) in self.keys.range::<str, _>((from, Bound::Unbounded)) {
            if keys.len() == cap {
                return (keys, Some(key.clone()));
            }
            match last.live(now) {
                Some(false) => {}
                Some(true) => keys.push((key.clone(), false)),
                None => keys.push((key.clone(), true)),
            }
        }
        (keys, None)
    }
}

impl JetStreamKv {
    /// Lets this node's indexes hold at most `keys` keys (0: none, every listing takes a pass):
    /// for tests of the listings of buckets too large to index.
    #[doc(hidden)]
    pub fn limit_indexes(&self, keys: usize) {
        self.indexes.max.store(keys, Ordering::Relaxed);
    }

    /// Up to `cap` live keys of `bucket` from `lower`, from this node's index of it, brought up
    /// to date first; `None` when the bucket is too large to index (list it by a pass).
    pub(super) async fn indexed(
        &self,
        store: &kv::Store,
        bucket: &str,
        lower: &Bound<String>,
        cap: usize,
    ) -> Result<Option<Candidates>, KvError> {
        let indexes = &self.indexes;
        // (An index dropped here gives its keys back as it goes, whenever its last user is done.)
        indexes.by_bucket.retain(|_, index| {
            index
                .try_lock()
                .map_or(true, |index| index.used.elapsed() <= INDEX_IDLE)
        });
        let index = (indexes.by_bucket.entry(bucket.to_owned()))
            .or_insert_with(|| {
                let index = Index::new(indexes.held.clone());
                Arc::new(tokio::sync::Mutex::new(index))
            })
            .clone();
        let mut index = index.lock().await;
        index.used = Instant::now();
        match index.too_large {
            Some(since) if since.elapsed() < INDEX_IDLE => return Ok(None),
            Some(_) => index.too_large = None,
            None => {}
        }
        self.refresh(store, &mut index).await?;
        if index.too_large.is_some() {
            return Ok(None);
        }
        Ok(Some(index.window(lower, cap, now_ms())))
    }

    /// Applies to `index` what was written to `store` since its last sequence.
    async fn refresh(&self, store: &kv::Store, index: &mut Index) -> Result<(), KvError> {
        let info = store
            .stream
            .get_info()
            .await
            .map_err(|e| failed("listing keys", e))?;
        if index.created != Some(info.created) || info.state.last_sequence < index.sequence {
            index.clear();
            index.created = Some(info.created);
        }
        if info.state.last_sequence == index.sequence {
            return Ok(());
        }
        let from = DeliverPolicy::ByStartSequence {
            start_sequence: index.sequence + 1,
        };
        let max = self.indexes.max.load(Ordering::Relaxed);
        let mut fits = true;
        let result = self
            .pass(store, from, |sequence, key, last| {
                fits = fits && index.apply(sequence, key, last, max);
            })
            .await;
        if !fits {
            index.clear();
            index.too_large = Some(Instant::now());
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_applies_writes_in_order_and_lists_live_keys_from_a_bound() {
        let held = Arc::new(AtomicUsize::new(0));
        let mut index = Index::new(held.clone());
        let writes = [
            (1, Some("a"), Last::Expires(0)),
            (2, None, Last::Expires(0)),
            (3, Some("b"), Last::Expires(5)),
            (4, Some("c"), Last::Unknown),
            (5, Some("d"), Last::Expires(0)),
            (6, Some("a"), Last::Deleted),
            (7, Some("e"), Last::Expires(20)),
        ];
        for (sequence, key, last) in writes {
            let key = key.map(str::to_owned);
            assert!(index.apply(sequence, key, last, INDEX_KEYS));
        }
        assert_eq!((index.sequence, held.load(Ordering::Relaxed)), (7, 4));
        // At 10, b has expired; c must be read to know.
        let first = (
            vec![("c".into(), true), ("d".into(), false)],
            Some("e".into()),
        );
        assert_eq!(index.window(&Bound::Unbounded, 2, 10), first);
        let after_d = (vec![("e".into(), false)], None);
        assert_eq!(index.window(&Bound::Excluded("d".into()), 2, 10), after_d);
        index.clear();
        assert_eq!((index.sequence, held.load(Ordering::Relaxed)), (0, 0));
    }

    #[test]
    fn the_indexes_of_a_node_hold_a_bounded_number_of_keys() {
        let held = Arc::new(AtomicUsize::new(9));
        let mut index = Index::new(held.clone());
        let mut apply =
            |sequence, key: &str| index.apply(sequence, Some(key.into()), Last::Expires(0), 10);
        assert!(apply(1, "a"));
        assert!(apply(2, "a"), "no new key");
        assert!(!apply(3, "b"));
        drop(index);
        assert_eq!(
            held.load(Ordering::Relaxed),
            9,
            "a dropped index gives its keys back"
        );
    }
}
