//! Module bytes in the Object Store `handoff_bytes`, by digest, in chunks of at most
//! [`CHUNK_BYTES`] (and of the server's message budget).

use anyhow::Context as _;
use async_nats::jetstream::object_store::{self, ObjectStore};
use bytes::Bytes;

use super::layout::CHUNK_BYTES;
use super::publish::{RETRY_FOR, RETRY_STEP};
use crate::digest::Digest;

/// Stores `bytes`, the module `digest`, unless they are there already; `budget` is the most a
/// message may carry.
pub(super) async fn store(
    objects: &ObjectStore,
    digest: &Digest,
    bytes: Bytes,
    budget: usize,
) -> anyhow::Result<()> {
    if let Ok(info) = objects.info(digest.hex()).await
        && !info.deleted
        && info.size == bytes.len()
    {
        return Ok(());
    }
    let meta = object_store::ObjectMetadata {
        name: digest.hex().to_owned(),
        // Chunks fit the server's messages (a `max_payload` below 128 KiB too).
        chunk_size: Some(CHUNK_BYTES.min(budget)),
        ..Default::default()
    };
    // Retried as `write` is (a re-put of the same name replaces a partial object).
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    loop {
        match objects.put(meta.clone(), &mut &bytes[..]).await {
            Ok(_) => return Ok(()),
            Err(error) if tokio::time::Instant::now() >= deadline => {
                return Err(anyhow::Error::new(error)
                    .context(format!("storing the bytes of {digest} in the cluster")));
            }
            Err(error) => {
                tracing::debug!(%error, %digest, "retrying storing bytes in the cluster");
                tokio::time::sleep(RETRY_STEP).await;
            }
        }
    }
}

/// The bytes of module `digest`, checked against it; `None` if the store has none.
pub(super) async fn fetch(objects: &ObjectStore, digest: &Digest) -> anyhow::Result<Option<Bytes>> {
    use tokio::io::AsyncReadExt as _;
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    let mut object = loop {
        match objects.get(digest.hex()).await {
            Ok(object) => break object,
            Err(error) if error.kind() == object_store::GetErrorKind::NotFound => {
                return Ok(None);
            }
            Err(error) if tokio::time::Instant::now() >= deadline => {
                return Err(
                    anyhow::Error::new(error).context(format!("fetching the bytes of {digest}"))
                );
            }
            Err(error) => {
                tracing::debug!(%error, %digest, "retrying fetching bytes");
                tokio::time::sleep(RETRY_STEP).await;
            }
        }
    };
    let mut bytes = Vec::with_capacity(object.info().size);
    object
        .read_to_end(&mut bytes)
        .await
        .with_context(|| format!("fetching the bytes of {digest}"))?;
    anyhow::ensure!(
        Digest::of(&bytes) == *digest,
        "the cluster's copy of {digest} is corrupt (its digest does not match)"
    );
    Ok(Some(Bytes::from(bytes)))
}
