//! The backend itself ([`JetStreamKv`]): opening buckets, reads from the stream's leader,
//! compare-and-swap writes retried until they land or their condition fails, and the usage
//! each write reserves or gives back.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use dashmap::DashMap;

use super::layout::{EXPIRES, META, Meta, key_of, stream_bucket, write_id};
use crate::kv::backend::{
    Backend, BoxFuture, Change, Condition, Entry, KvError, Outcome, Page, Quota, Start, Usage,
    Write, add, now_ms, number_of,
};
use crate::kv::format::{decode, encode, live, stored_expiry};

/// Compare-and-swap attempts per write before it fails (each lost to another writer).
const ATTEMPTS: usize = 1000;
/// The JetStream backend.
pub struct JetStreamKv {
    pub(super) js: jetstream::Context,
    replicas: usize,
    stores: DashMap<String, kv::Store>,
    /// Where the next sweep starts among the buckets (sorted by name).
    pub(super) sweep_cursor: std::sync::atomic::AtomicUsize,
    /// Acknowledgements still to drop ([`JetStreamKv::lose_acks`]).
    lost_acks: std::sync::atomic::AtomicUsize,
    /// This node's copies of the keys of the buckets it lists.
    pub(super) indexes: super::index::Indexes,
}

/// How a publish ended.
pub(super) enum Landed {
    /// It landed at this sequence.
    Yes(u64),
    /// Another writer got there first: nothing landed.
    Conflict,
    /// It failed: nothing landed.
    No(KvError),
    /// No answer came: it may have landed.
    Unknown(KvError),
}

/// Room in a message for its subject, headers and the stored entry's 16 bytes (keys are at
/// most 1 KiB: `kv::limits`).
const MESSAGE_ROOM: usize = 4 << 10;

/// A value larger than the cluster can keep, in a sentence.
pub fn too_large(size: usize, budget: usize) -> KvError {
    KvError::Invalid(format!(
        "a value of {size} bytes is larger than this cluster can keep ({budget} bytes: the NATS server's max_payload, less room for headers); raise max_payload in the NATS server's configuration, or store smaller values"
    ))
}

/// How long a write whose acknowledgement was lost is sent again.
const ACK_RETRY_FOR: Duration = Duration::from_secs(10);
const ACK_RETRY_STEP: Duration = Duration::from_millis(100);

/// A store failure, logged, as the error a caller gets.
pub(super) fn failed(what: &str, error: impl std::fmt::Display) -> KvError {
    tracing::error!(error = %error, "the cluster's key-value store failed: {what}");
    KvError::Failed(format!("{what}: {error}"))
}

impl JetStreamKv {
    /// A backend on `js`, creating buckets with `replicas` copies.
    pub fn new(js: jetstream::Context, replicas: usize) -> Self {
        Self {
            js,
            replicas,
            stores: DashMap::new(),
            sweep_cursor: std::sync::atomic::AtomicUsize::new(0),
            lost_acks: std::sync::atomic::AtomicUsize::new(0),
            indexes: super::index::Indexes::default(),
        }
    }

    /// The bucket's store, created when it does not exist (for writes).
    async fn store(&self, bucket: &str) -> Result<kv::Store, KvError> {
        if let Some(store) = self.stores.get(bucket) {
            return Ok(store.clone());
        }
        let store = self
            .js
            .create_or_update_key_value(kv::Config {
                bucket: stream_bucket(bucket),
                description: format!("handoff key-value bucket {bucket}"),
                history: 1,
                num_replicas: self.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| failed("opening a bucket", e))?;
        self.stores.insert(bucket.to_owned(), store.clone());
        Ok(store)
    }

    /// The bucket's store if it exists: reads never create one (a bucket nobody wrote to reads
    /// as empty).
    pub(super) async fn existing(&self, bucket: &str) -> Result<Option<kv::Store>, KvError> {
        use async_nats::jetstream::ErrorCode;
        use async_nats::jetstream::context::GetStreamErrorKind;
        if let Some(store) = self.stores.get(bucket) {
            return Ok(Some(store.clone()));
        }
        let name = stream_bucket(bucket);
        match self.js.get_stream(format!("KV_{name}")).await {
            Ok(_) => {}
            Err(error)
                if matches!(error.kind(), GetStreamErrorKind::JetStream(e)
                    if e.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
            {
                return Ok(None);
            }
            Err(error) => return Err(failed("opening a bucket", error)),
        }
        let store = self
            .js
            .get_key_value(name)
            .await
            .map_err(|e| failed("opening a bucket", e))?;
        self.stores.insert(bucket.to_owned(), store.clone());
        Ok(Some(store))
    }

    /// The last message of `key` (stored form): its sequence (0: never written) and its entry,
    /// unless deleted.
    pub(super) async fn read(
        store: &kv::Store,
        key: &str,
    ) -> Result<(u64, Option<Entry>), KvError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        let subject = format!("{}{key}", store.prefix);
        let message = match store.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => message,
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => {
                return Ok((0, None));
            }
            Err(error) => return Err(failed("reading a key", error)),
        };
        let deleted = message
            .headers
            .get("KV-Operation")
            .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
        let entry = (!deleted)
            .then(|| decode(&message.payload))
            .flatten()
            .map(|mut entry| {
                entry.revision = message.sequence;
                entry
            });
        Ok((message.sequence, entry))
    }

    /// Publishes `value` (a delete marker when `None`) to `key` if its last sequence is still
    /// `expected`.
    ///
    /// A publish whose acknowledgement is lost (timed out, the connection dropped) may have
    /// landed: it is sent again, with the same `Nats-Msg-Id`, for up to [`ACK_RETRY_FOR`];
    /// JetStream keeps one copy and answers the repeat with the first one's sequence. Only if no
    /// answer comes by then is the outcome [`Landed::Unknown`].
    pub(super) async fn publish(
        &self,
        store: &kv::Store,
        key: &str,
        value: Option<Bytes>,
        expected: u64,
    ) -> Landed {
        use async_nats::jetstream::context::PublishErrorKind;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            expected.to_string().as_str(),
        );
        let id = write_id();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        match value.as_deref().map(stored_expiry) {
            None => headers.insert("KV-Operation", "DEL"),
            Some(expires) => headers.insert(EXPIRES, expires.unwrap_or(0).to_string().as_str()),
        }
        let subject = format!(
            "{}{key}",
            store.put_prefix.as_ref().unwrap_or(&store.prefix)
        );
        let payload = value.unwrap_or_default();
        let deadline = tokio::time::Instant::now() + ACK_RETRY_FOR;
        let mut sent = false;
        // Whether an earlier attempt went unanswered (it may have landed).
        let mut unanswered = false;
        loop {
            let ack = match self
                .js
                .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                .await
            {
                Ok(ack) => ack,
                // Not sent: nothing landed (unless an earlier attempt did).
                Err(error) if !sent => return Landed::No(failed("writing a key", error)),
                Err(error) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Landed::Unknown(failed("writing a key", error));
                    }
                    tokio::time::sleep(ACK_RETRY_STEP).await;
                    continue;
                }
            };
            sent = true;
            let answer = match self.lose_ack() {
                true => {
                    // (A test's lost acknowledgement: the message is out, its answer dropped.)
                    drop(ack);
                    Err(async_nats::jetstream::context::PublishError::new(
                        PublishErrorKind::TimedOut,
                    ))
                }
                false => ack.await,
            };
            match answer {
                Ok(ack) => return Landed::Yes(ack.sequence),
                Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => {
                    // An unanswered attempt that landed makes its repeat fail the swap (the
                    // key moved on: to this write). Its id on the key's last message says so.
                    if unanswered && let Some(sequence) = Self::landed(store, key, &id).await {
                        return Landed::Yes(sequence);
                    }
                    return Landed::Conflict;
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe
                    ) =>
                {
                    unanswered = true;
                    if tokio::time::Instant::now() >= deadline {
                        return Landed::Unknown(failed("writing a key", error));
                    }
                    tracing::debug!(%error, key, "a write was not acknowledged; sending it again");
                    tokio::time::sleep(ACK_RETRY_STEP).await;
                }
                // JetStream answered with an error: nothing landed.
                Err(error) => return Landed::No(failed("writing a key", error)),
            }
        }
    }

    /// The sequence of `key`'s last message if that message is the write `id`.
    async fn landed(store: &kv::Store, key: &str, id: &str) -> Option<u64> {
        let subject = format!("{}{key}", store.prefix);
        let message = store
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .ok()?;
        let ours = message
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .is_some_and(|v| v.as_str() == id);
        ours.then_some(message.sequence)
    }

    /// Whether to drop the next acknowledgement (a test's lost ack: [`Self::lose_acks`]).
    fn lose_ack(&self) -> bool {
        self.lost_acks
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok()
    }

    /// Drops the acknowledgements of the next `count` writes after they were sent, as a lost
    /// connection would: for tests of what a write whose answer never came does.
    #[doc(hidden)]
    pub fn lose_acks(&self, count: usize) {
        self.lost_acks
            .store(count, std::sync::atomic::Ordering::SeqCst);
    }

    async fn meta(store: &kv::Store) -> Result<(u64, Meta), KvError> {
        let (sequence, entry) = Self::read(store, META).await?;
        let meta = entry
            .and_then(|e| serde_json::from_slice(&e.value).ok())
            .unwrap_or_default();
        Ok((sequence, meta))
    }

    /// Adds `keys` and `bytes` to the bucket's usage; with `quota`, only if the usage then stays
    /// within it (what it would pass is refused, and nothing is added).
    pub(super) async fn account(
        &self,
        store: &kv::Store,
        keys: i64,
        bytes: i64,
        quota: Option<Quota>,
    ) -> Result<(), KvError> {
        if keys == 0 && bytes == 0 {
            return Ok(());
        }
        for _ in 0..ATTEMPTS {
            let (sequence, mut meta) = Self::meta(store).await?;
            meta.keys = meta.keys.saturating_add_signed(keys);
            meta.bytes = meta.bytes.saturating_add_signed(bytes);
            if let Some(quota) = quota {
                if quota.max_keys > 0 && keys > 0 && meta.keys > quota.max_keys {
                    return Err(KvError::TooManyKeys {
                        limit: quota.max_keys,
                    });
                }
                if quota.max_bytes > 0 && bytes > 0 && meta.bytes > quota.max_bytes {
                    return Err(KvError::TooManyBytes {
                        limit: quota.max_bytes,
                    });
                }
            }
            let value = encode(&Entry {
                value: serde_json::to_vec(&meta).unwrap_or_default(),
                revision: 0,
                expires_at_ms: None,
            });
            match self
                .publish(store, META, Some(Bytes::from(value)), sequence)
                .await
            {
                Landed::Yes(_) => return Ok(()),
                Landed::Conflict => {}
                Landed::No(error) | Landed::Unknown(error) => return Err(error),
            }
        }
        Err(KvError::Failed("the bucket's usage keeps changing".into()))
    }

    /// The largest value one message holds: the server's `max_payload`, less room for the
    /// subject, the headers and the stored entry's own 16 bytes.
    fn value_budget(&self) -> usize {
        let max = self.js.client().server_info().max_payload;
        max.saturating_sub(MESSAGE_ROOM)
    }

    /// One write, retried until its compare-and-swap lands or its condition fails.
    async fn apply(&self, store: &kv::Store, write: &Write) -> Result<Outcome, KvError> {
        let key = key_of(&write.key);
        if let Change::Set { value, .. } = &write.change
            && value.len() > self.value_budget()
        {
            return Err(too_large(value.len(), self.value_budget()));
        }
        for attempt in 0..ATTEMPTS {
            if attempt > 0 && attempt % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let now = now_ms();
            let (sequence, stored) = Self::read(store, &key).await?;
            let live_entry = stored.as_ref().filter(|e| live(e, now));
            let holds = match write.condition {
                Condition::Always => true,
                Condition::Revision(0) => live_entry.is_none(),
                Condition::Revision(revision) => live_entry.is_some_and(|e| e.revision == revision),
            };
            if !holds {
                return Ok(Outcome::Conflict);
            }
            let old_size = stored
                .as_ref()
                .map_or(0, |e| (write.key.len() + e.value.len()) as u64);
            let (next, number) = match &write.change {
                Change::Delete => {
                    if stored.is_none() {
                        return Ok(Outcome::Done {
                            revision: sequence,
                            number: None,
                        });
                    }
                    (None, None)
                }
                Change::Set { value, ttl_ms } => (
                    Some(Entry {
                        value: value.clone(),
                        revision: 0,
                        expires_at_ms: ttl_ms.map(|ttl| now.saturating_add(ttl)),
                    }),
                    None,
                ),
                Change::Increment { delta } => {
                    let current = number_of(&write.key, live_entry.map(|e| e.value.as_slice()))?;
                    let sum = add(&write.key, current, *delta)?;
                    (
                        Some(Entry {
                            value: sum.to_string().into_bytes(),
                            revision: 0,
                            expires_at_ms: live_entry.and_then(|e| e.expires_at_ms),
                        }),
                        Some(sum),
                    )
                }
            };
            let new_size = next
                .as_ref()
                .map_or(0, |e| (write.key.len() + e.value.len()) as u64);
            let keys = i64::from(stored.is_none() && next.is_some())
                - i64::from(stored.is_some() && next.is_none());
            let bytes = new_size as i64 - old_size as i64;
            // What grows usage is reserved before it is written, within the quota.
            let grows = keys > 0 || bytes > 0;
            if grows {
                self.account(store, keys.max(0), bytes.max(0), Some(write.quota))
                    .await?;
            }
            let value = next.as_ref().map(|e| Bytes::from(encode(e)));
            let landed = self.publish(store, &key, value, sequence).await;
            let (give_back_keys, give_back_bytes) = match &landed {
                // Another writer got there first, or the write failed: give the reservation
                // back.
                Landed::Conflict | Landed::No(_) if grows => (-keys.max(0), -bytes.max(0)),
                Landed::Conflict | Landed::No(_) => (0, 0),
                // It may have landed: the reservation stays (usage may count one write too
                // many, never too few).
                Landed::Unknown(_) => (0, 0),
                // Landed: what it freed, and what the reservation did not cover.
                Landed::Yes(_) => (keys.min(0), bytes.min(0)),
            };
            self.account(store, give_back_keys, give_back_bytes, None)
                .await?;
            let revision = match landed {
                Landed::Yes(revision) => revision,
                Landed::Conflict => continue,
                Landed::No(error) | Landed::Unknown(error) => return Err(error),
            };
            return Ok(Outcome::Done { revision, number });
        }
        Err(KvError::Failed(format!(
            "key `{}` keeps changing under this write",
            write.key.escape_debug()
        )))
    }
}

impl Backend for JetStreamKv {
    fn get<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Entry>, KvError>> {
        Box::pin(async move {
            let Some(store) = self.existing(bucket).await? else {
                return Ok(None);
            };
            let (_, entry) = Self::read(&store, &key_of(key)).await?;
            Ok(entry.filter(|e| live(e, now_ms())))
        })
    }

    fn write_all<'a>(
        &'a self,
        bucket: &'a str,
        writes: Vec<Write>,
    ) -> BoxFuture<'a, Result<Vec<Result<Outcome, KvError>>, KvError>> {
        Box::pin(async move {
            let store = self.store(bucket).await?;
            let mut answers = Vec::with_capacity(writes.len());
            for write in &writes {
                let answer = self.apply(&store, write).await;
                if let Err(KvError::Failed(_)) = &answer {
                    return Err(answer.unwrap_err());
                }
                answers.push(answer);
            }
            Ok(answers)
        })
    }

    fn list<'a>(
        &'a self,
        bucket: &'a str,
        start: Start<'a>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page<String>, KvError>> {
        Box::pin(async move {
            let page = self.range(bucket, start, limit, false).await?;
            Ok(Page {
                items: page.items.into_iter().map(|(key, _)| key).collect(),
                more: page.more,
            })
        })
    }

    fn scan<'a>(
        &'a self,
        bucket: &'a str,
        start: Start<'a>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page<(String, Entry)>, KvError>> {
        Box::pin(async move {
            let page = self.range(bucket, start, limit, true).await?;
            Ok(Page {
                items: (page.items.into_iter())
                    .filter_map(|(key, entry)| Some((key, entry?)))
                    .collect(),
                more: page.more,
            })
        })
    }

    fn max_value(&self) -> Option<usize> {
        Some(self.value_budget())
    }

    fn usage<'a>(&'a self, bucket: &'a str) -> BoxFuture<'a, Result<Usage, KvError>> {
        Box::pin(async move {
            let Some(store) = self.existing(bucket).await? else {
                return Ok(Usage::default());
            };
            let (_, meta) = Self::meta(&store).await?;
            Ok(Usage {
                keys: meta.keys,
                bytes: meta.bytes,
            })
        })
    }
}
