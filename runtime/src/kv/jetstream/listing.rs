//! Listings of a bucket ([`JetStreamKv::range`]) at a cost in NATS requests that does not grow
//! with the bucket: a page of keys is one request when nothing was written since the last
//! listing, a page of entries (an export's scan) one more per entry it returns.
//!
//! * **Candidates** come from this node's index of the bucket's keys (`super::index`), brought
//!   up to date first; for a bucket too large to index, from **one pass** over the last message
//!   of every key, headers only (an ordered push consumer, `DeliverPolicy::LastPerSubject`,
//!   `headers_only`), created with one request, through which the server streams each key's
//!   subject and headers, never a value. The [`EXPIRES`] header tells an expired entry from a
//!   live one, `KV-Operation` a deleted one. A pass's consumer is deleted once the pass is over,
//!   so listings in a loop leave nothing behind on the server.
//! * A pass's [`Window`] keeps the smallest live keys after the cursor, as many as the page can
//!   still take plus one (to know whether more follow), in a sorted map: the memory and the
//!   work per key are bounded by the page, not by the bucket. The per-key work is a comparison
//!   and at most a map insert, and the task yields to the runtime between messages (tokio's
//!   cooperative budget on the subscription's channel), so a pass over a large bucket does not
//!   hold an async worker.
//! * **Values are read** (one request each, at most [`READS_AT_ONCE`] at a time, from the
//!   stream's leader as every read is) only for the entries a scan returns, and for a key whose
//!   message predates the header (its expiry is only in its value).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy, push};
use async_nats::jetstream::kv;
use futures_util::StreamExt as _;

use super::index::{Candidates, INDEX_IDLE, Index, Last};
use super::layout::{key_from, key_of};
use super::store::{JetStreamKv, failed};
use crate::kv::backend::{Entry, KvError, Page, PageFiller, Start, now_ms};
use crate::kv::format::live;

/// How long a pass waits for the server's next message before it fails.
const PASS_IDLE: Duration = Duration::from_secs(5);
/// How long one pass may take in all (writes that never stop could keep it going).
const PASS_FOR: Duration = Duration::from_secs(30);
/// Passes one page may take. A pass after the first happens only when keys of the window were
/// gone after all (a message without [`EXPIRES`] whose entry had expired, or a key deleted
/// between the pass and its read); each pass doubles the window.
const PASSES: u32 = 8;
/// Values read at once for one page.
const READS_AT_ONCE: usize = 16;

/// Whether `key` is at or above `lower`.
fn above(lower: &Bound<String>, key: &str) -> bool {
    match lower {
        Bound::Included(lower) => key >= lower.as_str(),
        Bound::Excluded(lower) => key > lower.as_str(),
        Bound::Unbounded => true,
    }
}

/// The smallest live keys from a lower bound that a pass has seen, at most `cap` of them.
#[derive(Debug)]
pub(super) struct Window {
    lower: Bound<String>,
    cap: usize,
    now: u64,
    /// Each key, and whether its entry must be read to know it is live.
    keys: BTreeMap<String, bool>,
    /// The smallest key pushed out of the window: this pass leaves out every key from it on.
    ceiling: Option<String>,
}

impl Window {
    /// An empty window of at most `cap` keys (at least one) from `lower`, live at `now`.
    pub(super) fn new(lower: Bound<String>, cap: usize, now: u64) -> Self {
        Self {
            lower,
            cap: cap.max(1),
            now,
            keys: BTreeMap::new(),
            ceiling: None,
        }
    }

    /// Takes in what a key's last message says. Messages of one key come in the order they
    /// were written (a pass also sees writes made while it runs): a later one replaces an
    /// earlier one.
    pub(super) fn see(&mut self, key: String, last: Last) {
        if !above(&self.lower, &key) || self.ceiling.as_ref().is_some_and(|c| key >= *c) {
            return;
        }
        let unknown = match last.live(self.now) {
            Some(false) => {
                self.keys.remove(&key);
                return;
            }
            Some(true) => false,
            None => true,
        };
        self.keys.insert(key, unknown);
        if self.keys.len() > self.cap
            && let Some((largest, _)) = self.keys.pop_last()
        {
            // Every key kept is smaller: from here on, only smaller keys can get in.
            self.ceiling = Some(largest);
        }
    }

    /// The keys in order, and the key from which on keys were left out (the next pass starts
    /// there).
    pub(super) fn finish(self) -> Candidates {
        (self.keys.into_iter().collect(), self.ceiling)
    }
}

impl JetStreamKv {
    /// At most `limit` live keys of `bucket` from `start`, in order, each with its entry when
    /// `values` (a scan) or when it had to be read anyway; expired and deleted keys left out.
    pub(super) async fn range(
        &self,
        bucket: &str,
        start: Start<'_>,
        limit: usize,
        values: bool,
    ) -> Result<Page<(String, Option<Entry>)>, KvError> {
        let mut page = PageFiller::new(&start, limit);
        let Some(store) = self.existing(bucket).await? else {
            return Ok(page.page());
        };
        let mut lower = match start {
            Start::After(key) => Bound::Excluded(key.to_owned()),
            Start::First | Start::Offset(_) => Bound::Unbounded,
        };
        for pass in 0..PASSES {
            let room = usize::try_from(page.room()).unwrap_or(usize::MAX);
            let cap = room.saturating_add(1).saturating_mul(1usize << pass);
            let (keys, ceiling) = self.candidates(&store, bucket, lower, cap).await?;
            let store = &store;
            let mut entries = futures_util::stream::iter(keys)
                .map(move |(key, unknown)| async move {
                    if !values && !unknown {
                        return Ok(Some((key, None)));
                    }
                    let (_, entry) = Self::read(store, &key_of(&key)).await?;
                    let entry = entry.filter(|e| live(e, now_ms()));
                    Ok::<_, KvError>(entry.map(|entry| (key, Some(entry))))
                })
                .buffered(READS_AT_ONCE);
            while let Some(entry) = entries.next().await {
                let Some((key, entry)) = entry? else { continue };
                if !page.offer(|| (key, entry)) {
                    return Ok(page.page());
                }
            }
            let Some(ceiling) = ceiling else {
                return Ok(page.page());
            };
            // Keys follow, but some of the window's were gone: a page that holds something
            // ends here (the next one goes on after its last key); an empty one goes on from
            // the first key left out.
            if page.end_early() {
                return Ok(page.page());
            }
            lower = Bound::Included(ceiling);
        }
        Err(KvError::Failed(format!(
            "listing keys: {PASSES} passes found only keys that were gone by the time they were read"
        )))
    }

    /// Up to `cap` live keys of `bucket` from `lower`: from this node's index of the bucket's
    /// keys, or, when the index is too large to keep, from a headers-only pass over every key's
    /// last message.
    async fn candidates(
        &self,
        store: &kv::Store,
        bucket: &str,
        lower: Bound<String>,
        cap: usize,
    ) -> Result<Candidates, KvError> {
        if let Some(found) = self.indexed(store, bucket, &lower, cap).await? {
            return Ok(found);
        }
        let mut window = Window::new(lower, cap, now_ms());
        let policy = DeliverPolicy::LastPerSubject;
        let each = |_, key: Option<String>, last| {
            if let Some(key) = key {
                window.see(key, last);
            }
        };
        self.pass(store, policy, each).await?;
        Ok(window.finish())
    }

    /// One headers-only pass over the messages of `store` that `policy` picks (from a stream
    /// sequence, or every key's last one), in the order they were written: `each` gets each
    /// message's sequence, guest key and what it says. Messages of other keys (`meta`) count
    /// for their sequence only.
    pub(super) async fn pass(
        &self,
        store: &kv::Store,
        policy: DeliverPolicy,
        mut each: impl FnMut(u64, Option<String>, Last),
    ) -> Result<(), KvError> {
        let consumer = store
            .stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.js.client().new_inbox(),
                description: Some("handoff key listing".into()),
                filter_subject: format!("{}>", store.prefix),
                headers_only: true,
                replay_policy: ReplayPolicy::Instant,
                deliver_policy: policy,
                ..Default::default()
            })
            .await
            .map_err(|e| failed("listing keys", e))?;
        let name = consumer.cached_info().name.clone();
        let result = match consumer.cached_info().num_pending {
            0 => Ok(()),
            _ => Self::receive(store, consumer, &mut each).await,
        };
        // Once nobody listens, an ephemeral consumer stays on the server for 30 s: deleted now,
        // without waiting for the answer.
        let stream = store.stream.clone();
        tokio::spawn(async move {
            let _ = stream.delete_consumer(&name).await;
        });
        result
    }

    /// The pass's messages, until the server says none are pending.
    async fn receive(
        store: &kv::Store,
        consumer: async_nats::jetstream::consumer::Consumer<push::OrderedConfig>,
        each: &mut impl FnMut(u64, Option<String>, Last),
    ) -> Result<(), KvError> {
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| failed("listing keys", e))?;
        let deadline = tokio::time::Instant::now() + PASS_FOR;
        loop {
            let wait = deadline.min(tokio::time::Instant::now() + PASS_IDLE);
            let message = match tokio::time::timeout_at(wait, messages.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(error))) => return Err(failed("listing keys", error)),
                Ok(None) => return Err(failed("listing keys", "the server ended the listing")),
                Err(_) => {
                    return Err(failed(
                        "listing keys",
                        format!("no answer within {PASS_IDLE:?}, or the pass took {PASS_FOR:?}"),
                    ));
                }
            };
            let info = message.info().map_err(|e| failed("listing keys", e))?;
            let (sequence, pending) = (info.stream_sequence, info.pending);
            let key = message.subject.as_str().strip_prefix(store.prefix.as_str());
            each(sequence, key.and_then(key_from), Last::of(&message));
            if pending == 0 {
                return Ok(());
            }
        }
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

    const LIVE: Last = Last::Expires(0);
    const EXPIRED: Last = Last::Expires(1);

    fn keys(window: Window) -> (Vec<String>, Option<String>) {
        let (keys, ceiling) = window.finish();
        (keys.into_iter().map(|(key, _)| key).collect(), ceiling)
    }

    #[test]
    fn a_window_keeps_the_smallest_live_keys_after_its_bound() {
        let mut window = Window::new(Bound::Excluded("b".into()), 3, 10);
        for key in ["e", "a", "b", "d", "z", "c", "f"] {
            window.see(key.into(), LIVE);
        }
        window.see("d".into(), Last::Deleted);
        window.see("x".into(), Last::Deleted);
        window.see("c0".into(), EXPIRED);
        window.see("c1".into(), Last::Expires(11));
        assert_eq!(
            keys(window),
            (vec!["c".into(), "c1".into(), "e".into()], Some("f".into()))
        );
    }

    #[test]
    fn a_key_pushed_out_keeps_larger_keys_out_after_a_delete() {
        // c is pushed out; once b is deleted there is room, but d (after c) must not get in:
        // the page would skip c.
        let mut window = Window::new(Bound::Unbounded, 2, 10);
        for key in ["a", "b", "c"] {
            window.see(key.into(), LIVE);
        }
        window.see("b".into(), Last::Deleted);
        window.see("d".into(), LIVE);
        assert_eq!(keys(window), (vec!["a".into()], Some("c".into())));
    }

    #[test]
    fn a_later_message_replaces_an_earlier_one() {
        let mut window = Window::new(Bound::Included("b".into()), 10, 10);
        window.see("b".into(), LIVE);
        window.see("c".into(), Last::Unknown);
        window.see("b".into(), Last::Deleted);
        window.see("c".into(), LIVE);
        window.see("d".into(), Last::Unknown);
        let (found, ceiling) = window.finish();
        assert_eq!(found, vec![("c".into(), false), ("d".into(), true)]);
        assert_eq!(ceiling, None);
    }
}
