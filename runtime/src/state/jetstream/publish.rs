//! Writing to JetStream: every write a compare-and-swap on its key's revision ([`write`]), or
//! an atomic batch of them ([`write_batch`]); what JetStream did not acknowledge is sent again
//! for up to [`RETRY_FOR`], and a read is retried while a stream elects its leader
//! ([`retrying`]).

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;

use super::layout::ROUTES_BUCKET;

/// How long a write that JetStream did not acknowledge is retried (a stream's leader is
/// re-elected within seconds when a server of a NATS cluster goes).
pub const RETRY_FOR: Duration = Duration::from_secs(15);
pub(super) const RETRY_STEP: Duration = Duration::from_millis(250);
/// In a batch, a write that expects nothing of its key.
pub(super) const ANY: u64 = u64::MAX;

/// Publishes `value` (or a delete marker when `None`) to `key` of `bucket` (whose store is
/// `store`) if the key is at revision `expected` (0: absent). Returns the new revision, or `Ok(Err(()))` when the
/// key was elsewhere.
///
/// A failure that is not the compare-and-swap's (no stream leader for a moment while
/// JetStream elects one after a server left, an ack lost) is retried for up to
/// [`RETRY_FOR`]; every attempt carries the same `Nats-Msg-Id`, so JetStream keeps one
/// copy of a write whose ack was lost; a repeat whose swap fails because the first landed
/// finds the key holding exactly this write, and answers with its revision.
pub(super) async fn write(
    js: &jetstream::Context,
    store: &kv::Store,
    bucket: &str,
    key: &str,
    value: Option<Bytes>,
    expected: u64,
) -> anyhow::Result<Result<u64, ()>> {
    use async_nats::jetstream::context::PublishErrorKind;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        expected.to_string().as_str(),
    );
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("{bucket}.{key}.{expected}.{}", write_id()).as_str(),
    );
    if value.is_none() {
        headers.insert("KV-Operation", "DEL");
    }
    let subject = format!("$KV.{bucket}.{key}");
    let value = value.unwrap_or_default();
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    let mut unanswered = false;
    loop {
        let attempt = async {
            js.publish_with_headers(subject.clone(), headers.clone(), value.clone())
                .await?
                .await
        };
        let error = match attempt.await {
            Ok(ack) => return Ok(Ok(ack.sequence)),
            Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => {
                // An unanswered attempt that landed fails its repeat's swap: the key then
                // holds exactly this write.
                if unanswered {
                    let (revision, now) = entry(store, key).await?;
                    if now.unwrap_or_default() == value && revision > expected {
                        return Ok(Ok(revision));
                    }
                }
                return Ok(Err(()));
            }
            // Refused for good (too large, no such stream...): retrying would not help.
            Err(error) if !unsure(error.kind()) => {
                return Err(anyhow::Error::new(error).context("the cluster refused a write"));
            }
            Err(error) => error,
        };
        unanswered = true;
        if tokio::time::Instant::now() >= deadline {
            return Err(anyhow::Error::new(error).context("the cluster did not acknowledge"));
        }
        tracing::debug!(%error, bucket, key, "retrying a write to the cluster");
        tokio::time::sleep(RETRY_STEP).await;
    }
}

/// The current entry of `key`: its revision (the delete marker's, when deleted; 0 when it
/// never existed) and its value when it exists.
pub(super) async fn entry(store: &kv::Store, key: &str) -> anyhow::Result<(u64, Option<Bytes>)> {
    let entry = retrying("reading the cluster", || store.entry(key)).await?;
    Ok(match entry {
        Some(entry) if entry.operation == kv::Operation::Put => (entry.revision, Some(entry.value)),
        Some(entry) => (entry.revision, None),
        None => (0, None),
    })
}

/// Publishes `writes` to the routes bucket as one atomic batch, each a compare-and-swap
/// like [`write`]'s (but those expecting [`ANY`]): all land or none. Returns the last one's revision, or
/// `Ok(Err(()))` when a swap failed.
///
/// An atomic batch carries no `Nats-Msg-Id`; a batch whose commit was not acknowledged is
/// sent again (for up to [`RETRY_FOR`]), and if that one's swaps fail, the last key is read
/// back: holding exactly what the batch wrote, the first one landed.
pub(super) async fn write_batch(
    js: &jetstream::Context,
    routes: &kv::Store,
    writes: &[(String, Option<Bytes>, u64)],
) -> anyhow::Result<Result<u64, ()>> {
    use async_nats::header;
    use async_nats::jetstream::context::PublishErrorKind;
    let client = js.client();
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    let mut unacknowledged = false;
    loop {
        let batch = write_id();
        let attempt = async {
            let mut ack = None;
            for (i, (key, value, expected)) in writes.iter().enumerate() {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(header::NATS_BATCH_ID, batch.as_str());
                headers.insert(header::NATS_BATCH_SEQUENCE, (i + 1).to_string().as_str());
                if *expected != ANY {
                    headers.insert(
                        header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                        expected.to_string().as_str(),
                    );
                }
                if value.is_none() {
                    headers.insert("KV-Operation", "DEL");
                }
                let subject = format!("$KV.{ROUTES_BUCKET}.{key}");
                let payload = value.clone().unwrap_or_default();
                if i + 1 < writes.len() {
                    client
                        .publish_with_headers(subject, headers, payload)
                        .await
                        .map_err(|e| anyhow::Error::new(e).context("sending a batch"))?;
                } else {
                    headers.insert(header::NATS_BATCH_COMMIT, "1");
                    ack = Some(
                        js.publish_with_headers(subject, headers, payload)
                            .await?
                            .await,
                    );
                }
            }
            anyhow::Ok(ack.expect("a batch has a last write"))
        };
        let error = match attempt.await {
            Ok(Ok(ack)) => return Ok(Ok(ack.sequence)),
            Ok(Err(error)) if error.kind() == PublishErrorKind::WrongLastSequence => {
                let (key, value, _) = writes.last().expect("a batch has a last write");
                if unacknowledged {
                    let (revision, now) = entry(routes, key).await?;
                    if now == *value {
                        return Ok(Ok(revision));
                    }
                }
                return Ok(Err(()));
            }
            Ok(Err(error)) if !unsure(error.kind()) => {
                return Err(anyhow::Error::new(error).context("the cluster refused a change"));
            }
            Ok(Err(error)) => anyhow::Error::new(error),
            Err(error) => error,
        };
        unacknowledged = true;
        if tokio::time::Instant::now() >= deadline {
            return Err(error.context("the cluster did not acknowledge"));
        }
        tracing::debug!(error = %format!("{error:#}"), "retrying a batch to the cluster");
        tokio::time::sleep(RETRY_STEP).await;
    }
}

/// Runs `op` until it succeeds or [`RETRY_FOR`] has passed: reads fail for a moment while
/// JetStream elects a stream's leader after a server of a NATS cluster left.
pub(super) async fn retrying<T, E, F, Fut>(what: &str, mut op: F) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(error) if tokio::time::Instant::now() >= deadline => {
                return Err(anyhow::Error::new(error).context(what.to_owned()));
            }
            Err(error) => {
                tracing::debug!(%error, what, "retrying");
                tokio::time::sleep(RETRY_STEP).await;
            }
        }
    }
}

/// Whether a publish that failed so may have landed, or may land if sent again (a lost ack, a
/// stream leader being elected): such writes are retried.
fn unsure(kind: async_nats::jetstream::context::PublishErrorKind) -> bool {
    use async_nats::jetstream::context::PublishErrorKind;
    matches!(
        kind,
        PublishErrorKind::TimedOut
            | PublishErrorKind::BrokenPipe
            | PublishErrorKind::StreamNotFound
            | PublishErrorKind::Other
    )
}

/// Lets `stream` take atomic batches (NATS 2.12+), which claims are written with.
pub(super) async fn allow_atomic_batches(
    js: &jetstream::Context,
    stream: &str,
) -> anyhow::Result<()> {
    let mut handle = retrying("reading the routes bucket", || js.get_stream(stream)).await?;
    let config = handle.info().await?.config.clone();
    if config.allow_atomic_publish {
        return Ok(());
    }
    js.update_stream(jetstream::stream::Config {
        allow_atomic_publish: true,
        ..config
    })
    .await
    .context("allowing atomic batches on the routes bucket (NATS 2.12 or newer is needed)")?;
    Ok(())
}

/// 128 random bits in hex: a write's `Nats-Msg-Id`, unique across nodes and attempts.
fn write_id() -> String {
    use ring::rand::SecureRandom as _;
    let mut id = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut id)
        .expect("the system's random source");
    id.iter().map(|b| format!("{b:02x}")).collect()
}
