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
//! from nothing. This module is the index in memory; the requests that bring it up to date
//! are `JetStreamKv::indexed` and its pass, beside the listings (`super::listing`).
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

use dashmap::DashMap;

use super::layout::EXPIRES;

/// Keys all of a node's indexes hold together, at most.
pub(super) const INDEX_KEYS: usize = 1_000_000;
/// How long an index nobody lists is kept.
pub(super) const INDEX_IDLE: Duration = Duration::from_secs(60);

/// What a key's last message says of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Last {
    /// Deleted.
    Deleted,
    /// Stored, expiring at this time (milliseconds since the Unix epoch; `0`: never).
    Expires(u64),
    /// Stored before [`EXPIRES`] existed: only its value says whether it has expired.
    Unknown,
}

impl Last {
    /// What the headers of `message` (a key's last message) say.
    pub(super) fn of(message: &async_nats::Message) -> Self {
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|headers| headers.get(name))
                .map(|value| value.as_str().to_owned())
        };
        if header("KV-Operation").is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE")) {
            return Self::Deleted;
        }
        match header(EXPIRES).map(|at| at.parse::<u64>()) {
            Some(Ok(at)) => Self::Expires(at),
            None | Some(Err(_)) => Self::Unknown,
        }
    }

    /// Whether the key is live at `now`; `None`: its entry must be read to know.
    pub(super) fn live(self, now: u64) -> Option<bool> {
        match self {
            Self::Deleted => Some(false),
            Self::Expires(at) => Some(at == 0 || at > now),
            Self::Unknown => None,
        }
    }
}

/// The keys of one page, in order, each with whether its entry must be read to know it is
/// live; and the key from which on keys were left out, if any were.
pub(super) type Candidates = (Vec<(String, bool)>, Option<String>);

/// The indexes of one node's buckets.
pub(super) struct Indexes {
    pub(super) by_bucket: DashMap<String, Arc<tokio::sync::Mutex<Index>>>,
    /// Keys held by all of them (each index takes its own out when it is dropped).
    pub(super) held: Arc<AtomicUsize>,
    /// Keys they may hold: [`INDEX_KEYS`] (a test lowers it: `JetStreamKv::limit_indexes`).
    pub(super) max: AtomicUsize,
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
pub(super) struct Index {
    /// The stream's creation time: a stream made again is another stream.
    pub(super) created: Option<async_nats::datetime::DateTime>,
    /// The last stream sequence applied.
    pub(super) sequence: u64,
    /// Each live or unknown key and what its last message says.
    keys: BTreeMap<String, Last>,
    /// When a listing last used it.
    pub(super) used: Instant,
    /// When it was found larger than the indexes may hold: its bucket is then listed by passes,
    /// and indexed again after [`INDEX_IDLE`].
    pub(super) too_large: Option<Instant>,
    /// Keys held by all of a node's indexes, its own counted in.
    held: Arc<AtomicUsize>,
}

impl Drop for Index {
    fn drop(&mut self) {
        self.clear();
    }
}

impl Index {
    pub(super) fn new(held: Arc<AtomicUsize>) -> Self {
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
    pub(super) fn clear(&mut self) {
        self.held.fetch_sub(self.keys.len(), Ordering::Relaxed);
        self.keys.clear();
        self.sequence = 0;
    }

    /// Applies one message (`key` `None`: not a guest key's). False once the index would hold
    /// more than `max` keys with all the others.
    pub(super) fn apply(
        &mut self,
        sequence: u64,
        key: Option<String>,
        last: Last,
        max: usize,
    ) -> bool {
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
    pub(super) fn window(&self, lower: &Bound<String>, cap: usize, now: u64) -> Candidates {
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
