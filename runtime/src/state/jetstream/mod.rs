//! The state log of a cluster, in NATS JetStream (`--cluster`):
//!
//! * KV bucket `handoff_routes`: one key per route, its [`RouteRecord`] as JSON. Every write is
//!   a compare-and-swap on the key's revision (`Nats-Expected-Last-Subject-Sequence`), never a
//!   lock: a change planned against revision R lands only if the route is still at R. A
//!   route's revision is the position of its last write in the bucket, so revisions grow
//!   across a delete and a re-creation too, and a watch resumes after any of them.
//! * In the same bucket, one key per prefix a route holds (`P=` and the prefix's hex; no route
//!   name has `=` or capitals): the name of the route that holds it. A change that takes a
//!   prefix, moves a route or deletes one writes the claims and the route record in one atomic
//!   batch (JetStream's atomic batch publish, NATS 2.12+), each message a compare-and-swap, so
//!   two routes never hold one prefix whichever nodes record them, and a crash never leaves a
//!   claim without its route.
//! * A route record larger than one message may be (the server's `max_payload`, less room
//!   for headers: a route with much config and a long history) is kept in parts: its key holds
//!   a small head naming how many parts and their sha256, and the parts are keys of their own
//!   (`C=`, the route's name, `.` and the part's number), written with the head in one atomic
//!   batch; a read checks the parts against the head's digest and reads again if a change
//!   replaced them meanwhile.
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

mod layout;
mod objects;
mod publish;

use super::log::{AppendError, BoxFuture, Change, StateLog, Stored, Watched};
use super::records::ModuleRecord;
use crate::digest::Digest;
use crate::names::RouteName;
pub use layout::{BYTES_BUCKET, CHUNK_BYTES, MODULES_BUCKET, ROUTES_BUCKET};
use layout::{
    CLAIM, CLAIM_ATTEMPTS, HEADERS_ROOM, MAX_BATCH, MIN_PART, PART_READS, PartsHead, claim_key,
    hex_sha256, part_key, route_of,
};
pub use publish::RETRY_FOR;
use publish::{ANY, allow_atomic_batches, entry, retrying, write, write_batch};

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
        // Opened as it is when it exists: updating it with a KV config would clear the atomic
        // batches the claims are written with, under the feet of other nodes.
        let routes = match js.get_key_value(ROUTES_BUCKET).await {
            Ok(routes) => routes,
            Err(_) => js
                .create_key_value(kv_bucket(ROUTES_BUCKET, "handoff route records"))
                .await
                .context("creating the routes bucket")?,
        };
        allow_atomic_batches(&js, &format!("KV_{ROUTES_BUCKET}")).await?;
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
        let log = Self {
            js,
            routes,
            modules,
            bytes,
        };
        log.claim_unclaimed().await?;
        Ok(log)
    }

    /// Claims the prefix of every route recorded before prefixes were claims, in name order
    /// (a prefix two routes were recorded at goes to the first; the other is not restored).
    async fn claim_unclaimed(&self) -> anyhow::Result<()> {
        let mut keys = retrying("listing routes", || self.routes.keys()).await?;
        let (mut routes, mut claims) = (0usize, 0usize);
        while let Some(key) = keys.next().await {
            let key = key.context("listing routes")?;
            if key.starts_with(CLAIM) {
                claims += 1;
            } else if RouteName::parse(&key).is_ok() {
                routes += 1;
            }
        }
        if claims >= routes {
            return Ok(());
        }
        for stored in self.all_routes().await? {
            let prefix = stored.record.claimed_prefix(&stored.name);
            let key = claim_key(prefix.as_str());
            let (revision, owner) = entry(&self.routes, &key).await?;
            if owner.is_none() {
                let name = Bytes::from(stored.name.as_str().to_owned());
                // Lost to another node claiming it at the same moment: that one stands.
                let _ = write(
                    &self.js,
                    &self.routes,
                    ROUTES_BUCKET,
                    &key,
                    Some(name),
                    revision,
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn read_route(&self, name: &RouteName) -> anyhow::Result<(u64, Option<Stored>)> {
        let (revision, stored, _) = self.read_route_parts(name).await?;
        Ok((revision, stored))
    }

    /// [`Self::read_route`], and how many parts the record is kept in (0: in its key).
    async fn read_route_parts(
        &self,
        name: &RouteName,
    ) -> anyhow::Result<(u64, Option<Stored>, usize)> {
        for _ in 0..PART_READS {
            let (revision, value) = entry(&self.routes, name.as_str()).await?;
            let Some(value) = value else {
                return Ok((revision, None, 0));
            };
            let Ok(head) = serde_json::from_slice::<PartsHead>(&value) else {
                return Ok((revision, Some(route_of(name, revision, &value)?), 0));
            };
            let mut whole = Vec::with_capacity(head.size);
            for i in 0..head.parts {
                if let (_, Some(part)) = entry(&self.routes, &part_key(name, i)).await? {
                    whole.extend_from_slice(&part);
                }
            }
            if hex_sha256(&whole) == head.sha256 {
                return Ok((
                    revision,
                    Some(route_of(name, revision, &whole)?),
                    head.parts,
                ));
            }
            // A change replaced the parts while they were read: read again.
        }
        anyhow::bail!("route `{}` keeps changing while it is read", name.as_str())
    }

    /// The most bytes one message's payload may hold here: the server's `max_payload`, less
    /// room for the subject and headers.
    fn payload_budget(&self) -> usize {
        let max = self.js.client().server_info().max_payload;
        max.saturating_sub(HEADERS_ROOM).max(MIN_PART)
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
                let (revision, _) = entry(&self.modules, digest.hex()).await?;
                match write(
                    &self.js,
                    &self.modules,
                    MODULES_BUCKET,
                    digest.hex(),
                    Some(value.clone()),
                    revision,
                )
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
        if write(
            &self.js,
            &self.modules,
            MODULES_BUCKET,
            digest.hex(),
            None,
            revision,
        )
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
        // A batch that lost a compare-and-swap on a claim only (another route let go of the
        // prefix, or took and released it, meanwhile) is planned again.
        for _ in 0..CLAIM_ATTEMPTS {
            let (revision, stored, old_parts) = self.read_route_parts(&change.route).await?;
            let now = stored.as_ref().map_or(0, |s| s.record.revision);
            if now != change.base {
                return Err(AppendError::Conflict {
                    route: key.to_owned(),
                    now,
                });
            }
            if value.is_none() && stored.is_none() {
                // Deleting a route this log does not have: nothing to record.
                return Ok(0);
            }
            let mut writes = self.claim_writes(&change, stored.as_ref()).await?;
            // A record too large for one message goes in parts; parts a smaller record no
            // longer needs are deleted with it.
            let budget = self.payload_budget();
            let (head, parts) = match &value {
                Some(value) if value.len() > budget => {
                    let parts: Vec<Bytes> =
                        value.chunks(budget).map(Bytes::copy_from_slice).collect();
                    if parts.len() + writes.len() + old_parts + 1 > MAX_BATCH {
                        return Err(AppendError::Failed(anyhow::anyhow!(
                            "route `{key}`'s record is {} bytes: more than the cluster can keep in one change",
                            value.len()
                        )));
                    }
                    let head = PartsHead {
                        parts: parts.len(),
                        size: value.len(),
                        sha256: hex_sha256(value),
                    };
                    (
                        Some(Bytes::from(
                            serde_json::to_vec(&head).map_err(anyhow::Error::from)?,
                        )),
                        parts,
                    )
                }
                other => (other.clone(), Vec::new()),
            };
            for (i, part) in parts.iter().enumerate() {
                writes.push((part_key(&change.route, i), Some(part.clone()), ANY));
            }
            for i in parts.len()..old_parts {
                writes.push((part_key(&change.route, i), None, ANY));
            }
            // A new route (base 0) may follow a delete marker: expect the marker's revision.
            let landed = if writes.is_empty() {
                write(&self.js, &self.routes, ROUTES_BUCKET, key, head, revision).await?
            } else {
                writes.push((key.to_owned(), head, revision));
                write_batch(&self.js, &self.routes, &writes).await?
            };
            match landed {
                Ok(revision) => return Ok(revision),
                Err(()) if writes.is_empty() => {
                    return Err(AppendError::Conflict {
                        route: key.to_owned(),
                        now: entry(&self.routes, key).await?.0,
                    });
                }
                // Read again: a conflict on the route or a taken prefix is found above.
                Err(()) => continue,
            }
        }
        Err(AppendError::Failed(anyhow::anyhow!(
            "the prefix of route `{key}` keeps changing hands"
        )))
    }

    /// The claim writes `change` needs besides its route record: taking the prefix its next
    /// record names, unless the route holds it already, and letting go of the one its stored
    /// record names, if that one moves or the route goes. Refuses a prefix another route holds.
    async fn claim_writes(
        &self,
        change: &Change,
        stored: Option<&Stored>,
    ) -> Result<Vec<(String, Option<Bytes>, u64)>, AppendError> {
        let name = change.route.as_str();
        let old = stored.map(|s| s.record.claimed_prefix(&change.route));
        let new = change
            .next
            .as_ref()
            .map(|r| r.claimed_prefix(&change.route));
        let mut writes = Vec::new();
        if let Some(prefix) = &new {
            let key = claim_key(prefix.as_str());
            let (revision, owner) = entry(&self.routes, &key).await?;
            match owner.as_deref().map(String::from_utf8_lossy) {
                Some(owner) if owner != name => {
                    return Err(AppendError::PrefixTaken {
                        prefix: prefix.as_str().to_owned(),
                        owner: owner.into_owned(),
                    });
                }
                Some(_) => {}
                None => writes.push((key, Some(Bytes::from(name.to_owned())), revision)),
            }
        }
        if let Some(old) = old.filter(|old| new.as_ref() != Some(old)) {
            let key = claim_key(old.as_str());
            let (revision, owner) = entry(&self.routes, &key).await?;
            if owner.as_deref() == Some(name.as_bytes()) {
                writes.push((key, None, revision));
            }
        }
        Ok(writes)
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

    fn prefix_owner<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Option<RouteName>>> {
        Box::pin(async move {
            let (_, owner) = entry(&self.routes, &claim_key(prefix)).await?;
            owner
                .map(|o| RouteName::parse(&String::from_utf8_lossy(&o)).map_err(anyhow::Error::msg))
                .transpose()
        })
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
        Box::pin(objects::store(
            &self.bytes,
            digest,
            bytes,
            self.payload_budget(),
        ))
    }

    fn fetch_bytes<'a>(
        &'a self,
        digest: &'a Digest,
    ) -> BoxFuture<'a, anyhow::Result<Option<Bytes>>> {
        Box::pin(objects::fetch(&self.bytes, digest))
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
