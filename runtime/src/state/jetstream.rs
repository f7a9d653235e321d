//! The state log of a cluster, in NATS JetStream (`--cluster`):
//!
//! * KV bucket `handoff_routes`: one key per route, its [`RouteRecord`] as JSON. Every write is
//!   a compare-and-swap on the key's revision (`Nats-Expected-Last-Subject-Sequence`), never a
//!   lock: a change planned against revision R lands only if the route is still at R. A
//!   route's revision is the position of its last write in the bucket, so revisions grow
//!   across a delete and a re-creation too, and a watch resumes after any of them.
//! * KV bucket `handoff_modules`: one key per module (its digest's hex), its [`ModuleRecord`],
//!   written with the same compare-and-swap.
//! * Object Store `handoff_bytes`: module bytes by digest, in 128 KiB chunks, so a 50 MB module
//!   never meets the server's message size limit. Compiled artifacts are never shared (they
//!   depend on the engine and the CPU): each node compiles or loads its own.
//!
//! Collection cannot be atomic with appends across keys, so a module record and its bytes are
//! removed only when nothing references them *and* they are older than [`COLLECT_GRACE`]: a
//! change stores bytes and records moments before its route record references them.
//!
//! Nothing here runs on the request path.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, kv, object_store};
use bytes::Bytes;
use futures_util::StreamExt as _;

use super::log::{AppendError, BoxFuture, Change, StateLog, Stored, Watched};
use super::records::{ModuleRecord, RouteRecord};
use crate::digest::Digest;
use crate::names::RouteName;

/// The KV bucket of route records.
pub const ROUTES_BUCKET: &str = "handoff_routes";
/// The KV bucket of module records.
pub const MODULES_BUCKET: &str = "handoff_modules";
/// The Object Store of module bytes.
pub const BYTES_BUCKET: &str = "handoff_bytes";
/// Object Store chunk size.
pub const CHUNK_BYTES: usize = 128 << 10;
/// How long a write that JetStream did not acknowledge is retried (a stream's leader is
/// re-elected within seconds when a server of a NATS cluster goes).
pub const RETRY_FOR: Duration = Duration::from_secs(15);
const RETRY_STEP: Duration = Duration::from_millis(250);
/// How old an unreferenced module must be before it is collected (see the module header).
pub const COLLECT_GRACE: Duration = Duration::from_secs(600);

/// The JetStream-backed state log.
#[derive(Clone)]
pub struct JetStreamLog {
    js: jetstream::Context,
    routes: kv::Store,
    modules: kv::Store,
    bytes: object_store::ObjectStore,
}

impl JetStreamLog {
    /// Opens the buckets, creating them with `replicas` copies each when they do not exist.
    pub async fn open(js: jetstream::Context, replicas: usize) -> anyhow::Result<Self> {
        let kv_bucket = |bucket: &str, description: &str| kv::Config {
            bucket: bucket.into(),
            description: description.into(),
            history: 1,
            num_replicas: replicas,
            ..Default::default()
        };
        let routes = js
            .create_or_update_key_value(kv_bucket(ROUTES_BUCKET, "handoff route records"))
            .await
            .context("creating the routes bucket")?;
        let modules = js
            .create_or_update_key_value(kv_bucket(MODULES_BUCKET, "handoff module records"))
            .await
            .context("creating the modules bucket")?;
        let bytes = match js.get_object_store(BYTES_BUCKET).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: BYTES_BUCKET.into(),
                    description: Some("handoff module bytes".into()),
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .context("creating the module bytes store")?,
        };
        Ok(Self {
            js,
            routes,
            modules,
            bytes,
        })
    }

    /// Publishes `value` (or a delete marker when `None`) to `key` of `bucket` if the key is
    /// at revision `expected` (0: absent). Returns the new revision, or `Ok(Err(()))` when the
    /// key was elsewhere.
    ///
    /// A failure that is not the compare-and-swap's (no stream leader for a moment while
    /// JetStream elects one after a server left, an ack lost) is retried for up to
    /// [`RETRY_FOR`]; every attempt carries the same `Nats-Msg-Id`, so JetStream keeps one
    /// copy of a write whose ack was lost and answers its retry with the first sequence.
    async fn write(
        &self,
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
        loop {
            let attempt = async {
                self.js
                    .publish_with_headers(subject.clone(), headers.clone(), value.clone())
                    .await?
                    .await
            };
            let error = match attempt.await {
                Ok(ack) => return Ok(Ok(ack.sequence)),
                Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => {
                    return Ok(Err(()));
                }
                Err(error) => error,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(anyhow::Error::new(error).context("the cluster did not acknowledge"));
            }
            tracing::debug!(%error, bucket, key, "retrying a write to the cluster");
            tokio::time::sleep(RETRY_STEP).await;
        }
    }

    /// The current entry of `key`: its revision (the delete marker's, when deleted; 0 when it
    /// never existed) and its value when it exists.
    async fn entry(store: &kv::Store, key: &str) -> anyhow::Result<(u64, Option<Bytes>)> {
        let entry = retrying("reading the cluster", || store.entry(key)).await?;
        Ok(match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                (entry.revision, Some(entry.value))
            }
            Some(entry) => (entry.revision, None),
            None => (0, None),
        })
    }

    async fn read_route(&self, name: &RouteName) -> anyhow::Result<(u64, Option<Stored>)> {
        let (revision, value) = Self::entry(&self.routes, name.as_str()).await?;
        let stored = value
            .map(|value| route_of(name, revision, &value))
            .transpose()?;
        Ok((revision, stored))
    }

    async fn all_routes(&self) -> anyhow::Result<Vec<Stored>> {
        let mut names: Vec<String> = Vec::new();
        let mut keys = retrying("listing routes", || self.routes.keys()).await?;
        while let Some(key) = keys.next().await {
            names.push(key.context("listing routes")?);
        }
        let mut routes = Vec::with_capacity(names.len());
        for name in names {
            let Ok(name) = RouteName::parse(&name) else {
                continue;
            };
            if let (_, Some(stored)) = self.read_route(&name).await? {
                routes.push(stored);
            }
        }
        routes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(routes)
    }

    async fn module_entry(&self, digest: &Digest) -> anyhow::Result<Option<kv::Entry>> {
        Ok(retrying("reading a module record", || {
            self.modules.entry(digest.hex())
        })
        .await?
        .filter(|e| e.operation == kv::Operation::Put))
    }

    async fn all_modules(&self) -> anyhow::Result<Vec<(Digest, ModuleRecord, u64, i64)>> {
        let mut hexes: Vec<String> = Vec::new();
        let mut keys = retrying("listing modules", || self.modules.keys()).await?;
        while let Some(key) = keys.next().await {
            hexes.push(key.context("listing modules")?);
        }
        let mut modules = Vec::with_capacity(hexes.len());
        for hex in hexes {
            let Some(digest) = Digest::parse(&format!("sha256:{hex}")) else {
                continue;
            };
            if let Some(entry) = self.module_entry(&digest).await? {
                let record: ModuleRecord = serde_json::from_slice(&entry.value)
                    .with_context(|| format!("module record {digest} is unreadable"))?;
                modules.push((
                    digest,
                    record,
                    entry.revision,
                    entry.created.unix_timestamp(),
                ));
            }
        }
        Ok(modules)
    }

    /// Writes module records, each a compare-and-swap on its revision (retried when another
    /// node wrote the same record meanwhile: the last writer's record stands).
    async fn put_module_records(&self, modules: &[(Digest, ModuleRecord)]) -> anyhow::Result<()> {
        for (digest, record) in modules {
            let value = Bytes::from(serde_json::to_vec(record)?);
            let mut attempts = 0;
            loop {
                let (revision, _) = Self::entry(&self.modules, digest.hex()).await?;
                match self
                    .write(MODULES_BUCKET, digest.hex(), Some(value.clone()), revision)
                    .await?
                {
                    Ok(_) => break,
                    Err(()) if attempts < 10 => attempts += 1,
                    Err(()) => anyhow::bail!("module record {digest} keeps changing"),
                }
            }
        }
        Ok(())
    }

    /// Deletes a module's record (if still at `revision`) and its bytes.
    async fn delete_module(&self, digest: &Digest, revision: u64) -> anyhow::Result<bool> {
        if self
            .write(MODULES_BUCKET, digest.hex(), None, revision)
            .await?
            .is_err()
        {
            return Ok(false);
        }
        let _ = self.bytes.delete(digest.hex()).await;
        Ok(true)
    }

    async fn referenced(&self) -> anyhow::Result<HashSet<String>> {
        Ok(self
            .all_routes()
            .await?
            .iter()
            .flat_map(|s| s.record.references().map(str::to_owned).collect::<Vec<_>>())
            .collect())
    }

    async fn do_append(&self, change: Change) -> Result<u64, AppendError> {
        self.put_module_records(&change.modules).await?;
        let key = change.route.as_str();
        let value = change
            .next
            .as_ref()
            .map(|record| serde_json::to_vec(record).map(Bytes::from))
            .transpose()
            .map_err(anyhow::Error::from)?;
        if value.is_none() && change.base == 0 {
            // Deleting a route this log never had: nothing to record.
            return Ok(0);
        }
        // A new route (base 0) may follow a delete marker: expect the marker's revision.
        let expected = match change.base {
            0 => match Self::entry(&self.routes, key).await? {
                (revision, None) => revision,
                (now, Some(_)) => {
                    return Err(AppendError::Conflict {
                        route: key.to_owned(),
                        now,
                    });
                }
            },
            base => base,
        };
        match self.write(ROUTES_BUCKET, key, value, expected).await? {
            Ok(revision) => Ok(revision),
            Err(()) => Err(AppendError::Conflict {
                route: key.to_owned(),
                now: Self::entry(&self.routes, key).await?.0,
            }),
        }
    }

    async fn do_collect(
        &self,
        protect: Box<dyn Fn(&Digest) -> bool + Send>,
    ) -> anyhow::Result<Vec<Digest>> {
        let referenced = self.referenced().await?;
        let now = crate::units::unix_ms() as i64 / 1000;
        let grace = COLLECT_GRACE.as_secs() as i64;
        let mut removed = Vec::new();
        for (digest, record, revision, created) in self.all_modules().await? {
            let doomed = !record.pinned
                && !referenced.contains(digest.as_str())
                && now - created > grace
                && !protect(&digest);
            if doomed && self.delete_module(&digest, revision).await? {
                removed.push(digest);
            }
        }
        Ok(removed)
    }
}

/// Runs `op` until it succeeds or [`RETRY_FOR`] has passed: reads fail for a moment while
/// JetStream elects a stream's leader after a server of a NATS cluster left.
async fn retrying<T, E, F, Fut>(what: &str, mut op: F) -> anyhow::Result<T>
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

/// 128 random bits in hex: a write's `Nats-Msg-Id`, unique across nodes and attempts.
fn write_id() -> String {
    use ring::rand::SecureRandom as _;
    let mut id = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut id)
        .expect("the system's random source");
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn route_of(name: &RouteName, revision: u64, value: &[u8]) -> anyhow::Result<Stored> {
    let mut record: RouteRecord = serde_json::from_slice(value)
        .with_context(|| format!("route `{}` is unreadable", name.as_str()))?;
    record.revision = revision;
    Ok(Stored {
        name: name.clone(),
        record,
    })
}

impl StateLog for JetStreamLog {
    fn routes(&self) -> BoxFuture<'_, anyhow::Result<Vec<Stored>>> {
        Box::pin(self.all_routes())
    }

    fn route<'a>(&'a self, name: &'a RouteName) -> BoxFuture<'a, anyhow::Result<Option<Stored>>> {
        Box::pin(async move { Ok(self.read_route(name).await?.1) })
    }

    fn module<'a>(
        &'a self,
        digest: &'a Digest,
    ) -> BoxFuture<'a, anyhow::Result<Option<ModuleRecord>>> {
        Box::pin(async move {
            self.module_entry(digest)
                .await?
                .map(|entry| serde_json::from_slice(&entry.value).map_err(Into::into))
                .transpose()
        })
    }

    fn modules(&self) -> BoxFuture<'_, anyhow::Result<Vec<(Digest, ModuleRecord)>>> {
        Box::pin(async move {
            Ok(self
                .all_modules()
                .await?
                .into_iter()
                .map(|(digest, record, _, _)| (digest, record))
                .collect())
        })
    }

    fn append(&self, change: Change) -> BoxFuture<'_, Result<u64, AppendError>> {
        Box::pin(self.do_append(change))
    }

    fn put_modules(
        &self,
        modules: Vec<(Digest, ModuleRecord)>,
    ) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move { self.put_module_records(&modules).await })
    }

    fn collect(
        &self,
        protect: Box<dyn Fn(&Digest) -> bool + Send>,
    ) -> BoxFuture<'_, anyhow::Result<Vec<Digest>>> {
        Box::pin(self.do_collect(protect))
    }

    fn remove_module<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move {
            if self.referenced().await?.contains(digest.as_str()) {
                return Ok(false);
            }
            match self.module_entry(digest).await? {
                Some(entry) => self.delete_module(digest, entry.revision).await,
                None => Ok(true),
            }
        })
    }

    fn store_bytes<'a>(
        &'a self,
        digest: &'a Digest,
        bytes: Bytes,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            if let Ok(info) = self.bytes.info(digest.hex()).await
                && !info.deleted
                && info.size == bytes.len()
            {
                return Ok(());
            }
            let meta = object_store::ObjectMetadata {
                name: digest.hex().to_owned(),
                chunk_size: Some(CHUNK_BYTES),
                ..Default::default()
            };
            // Retried as `write` is (a re-put of the same name replaces a partial object).
            let deadline = tokio::time::Instant::now() + RETRY_FOR;
            loop {
                match self.bytes.put(meta.clone(), &mut &bytes[..]).await {
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
        })
    }

    fn fetch_bytes<'a>(
        &'a self,
        digest: &'a Digest,
    ) -> BoxFuture<'a, anyhow::Result<Option<Bytes>>> {
        Box::pin(async move {
            use tokio::io::AsyncReadExt as _;
            let deadline = tokio::time::Instant::now() + RETRY_FOR;
            let mut object = loop {
                match self.bytes.get(digest.hex()).await {
                    Ok(object) => break object,
                    Err(error) if error.kind() == object_store::GetErrorKind::NotFound => {
                        return Ok(None);
                    }
                    Err(error) if tokio::time::Instant::now() >= deadline => {
                        return Err(anyhow::Error::new(error)
                            .context(format!("fetching the bytes of {digest}")));
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
        })
    }

    fn position(&self) -> BoxFuture<'_, anyhow::Result<u64>> {
        Box::pin(async move {
            let name = format!("KV_{ROUTES_BUCKET}");
            // Getting the stream reads its info afresh.
            let stream =
                retrying("reading the routes bucket", || self.js.get_stream(&name)).await?;
            Ok(stream.cached_info().state.last_sequence)
        })
    }

    fn watch(
        &self,
        after: u64,
    ) -> BoxFuture<'_, anyhow::Result<Option<tokio::sync::mpsc::Receiver<Watched>>>> {
        Box::pin(async move {
            let mut entries = retrying("watching the routes bucket", || {
                self.routes.watch_all_from_revision(after + 1)
            })
            .await?;
            let (sender, receiver) = tokio::sync::mpsc::channel(256);
            tokio::spawn(async move {
                while let Some(Ok(entry)) = entries.next().await {
                    let Ok(route) = RouteName::parse(&entry.key) else {
                        continue;
                    };
                    let watched = Watched {
                        route,
                        position: entry.revision,
                    };
                    if sender.send(watched).await.is_err() {
                        return;
                    }
                }
            });
            Ok(Some(receiver))
        })
    }
}
