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
            let (revision, owner) = Self::entry(&self.routes, &key).await?;
            if owner.is_none() {
                let name = Bytes::from(stored.name.as_str().to_owned());
                // Lost to another node claiming it at the same moment: that one stands.
                let _ = self
                    .write(ROUTES_BUCKET, &key, Some(name), revision)
                    .await?;
            }
        }
        Ok(())
    }

    /// Publishes `value` (or a delete marker when `None`) to `key` of `bucket` if the key is
    /// at revision `expected` (0: absent). Returns the new revision, or `Ok(Err(()))` when the
    /// key was elsewhere.
    ///
    /// A failure that is not the compare-and-swap's (no stream leader for a moment while
    /// JetStream elects one after a server left, an ack lost) is retried for up to
    /// [`RETRY_FOR`]; every attempt carries the same `Nats-Msg-Id`, so JetStream keeps one
    /// copy of a write whose ack was lost; a repeat whose swap fails because the first landed
    /// finds the key holding exactly this write, and answers with its revision.
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
        let mut unanswered = false;
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
                    // An unanswered attempt that landed fails its repeat's swap: the key then
                    // holds exactly this write.
                    if unanswered {
                        let store = match bucket {
                            MODULES_BUCKET => &self.modules,
                            _ => &self.routes,
                        };
                        let (revision, now) = Self::entry(store, key).await?;
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
        let (revision, stored, _) = self.read_route_parts(name).await?;
        Ok((revision, stored))
    }

    /// [`Self::read_route`], and how many parts the record is kept in (0: in its key).
    async fn read_route_parts(
        &self,
        name: &RouteName,
    ) -> anyhow::Result<(u64, Option<Stored>, usize)> {
        for _ in 0..PART_READS {
            let (revision, value) = Self::entry(&self.routes, name.as_str()).await?;
            let Some(value) = value else {
                return Ok((revision, None, 0));
            };
            let Ok(head) = serde_json::from_slice::<PartsHead>(&value) else {
                return Ok((revision, Some(route_of(name, revision, &value)?), 0));
            };
            let mut whole = Vec::with_capacity(head.size);
            for i in 0..head.parts {
                if let (_, Some(part)) = Self::entry(&self.routes, &part_key(name, i)).await? {
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
                self.write(ROUTES_BUCKET, key, head, revision).await?
            } else {
                writes.push((key.to_owned(), head, revision));
                self.write_batch(&writes).await?
            };
            match landed {
                Ok(revision) => return Ok(revision),
                Err(()) if writes.is_empty() => {
                    return Err(AppendError::Conflict {
                        route: key.to_owned(),
                        now: Self::entry(&self.routes, key).await?.0,
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
            let (revision, owner) = Self::entry(&self.routes, &key).await?;
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
            let (revision, owner) = Self::entry(&self.routes, &key).await?;
            if owner.as_deref() == Some(name.as_bytes()) {
                writes.push((key, None, revision));
            }
        }
        Ok(writes)
    }

    /// Publishes `writes` to the routes bucket as one atomic batch, each a compare-and-swap
    /// like [`Self::write`]'s (but those expecting [`ANY`]): all land or none. Returns the last one's revision, or
    /// `Ok(Err(()))` when a swap failed.
    ///
    /// An atomic batch carries no `Nats-Msg-Id`; a batch whose commit was not acknowledged is
    /// sent again (for up to [`RETRY_FOR`]), and if that one's swaps fail, the last key is read
    /// back: holding exactly what the batch wrote, the first one landed.
    async fn write_batch(
        &self,
        writes: &[(String, Option<Bytes>, u64)],
    ) -> anyhow::Result<Result<u64, ()>> {
        use async_nats::header;
        use async_nats::jetstream::context::PublishErrorKind;
        let client = self.js.client();
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
                            self.js
                                .publish_with_headers(subject, headers, payload)
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
                        let (revision, now) = Self::entry(&self.routes, key).await?;
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

/// In a batch, a write that expects nothing of its key.
const ANY: u64 = u64::MAX;

/// The most messages in one atomic batch (the server's limit).
const MAX_BATCH: usize = 1000;

/// Room left in a message for its subject and headers.
const HEADERS_ROOM: usize = 4 << 10;

/// The smallest part a record is cut into, whatever the server says.
const MIN_PART: usize = 1 << 10;

/// How many times a record kept in parts is read before giving up (each time a change
/// replaced the parts while they were read).
const PART_READS: usize = 5;

/// The head of a route record kept in parts.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PartsHead {
    /// How many parts.
    parts: usize,
    /// The record's size.
    size: usize,
    /// The sha256 of the record, in hex.
    sha256: String,
}

/// The key of part `i` of route `name`'s record.
fn part_key(name: &RouteName, i: usize) -> String {
    format!("C={}.{i}", name.as_str())
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where a prefix's claim is kept in the routes bucket (see the module header).
const CLAIM: &str = "P=";

/// How many times a change whose claim lost a compare-and-swap is planned again.
const CLAIM_ATTEMPTS: usize = 10;

/// The key of `prefix`'s claim.
fn claim_key(prefix: &str) -> String {
    let hex: String = prefix.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{CLAIM}{hex}")
}

/// Lets `stream` take atomic batches (NATS 2.12+), which claims are written with.
async fn allow_atomic_batches(js: &jetstream::Context, stream: &str) -> anyhow::Result<()> {
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

    fn prefix_owner<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Option<RouteName>>> {
        Box::pin(async move {
            let (_, owner) = Self::entry(&self.routes, &claim_key(prefix)).await?;
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
        Box::pin(async move {
            if let Ok(info) = self.bytes.info(digest.hex()).await
                && !info.deleted
                && info.size == bytes.len()
            {
                return Ok(());
            }
            let meta = object_store::ObjectMetadata {
                name: digest.hex().to_owned(),
                // Chunks fit the server's messages (a `max_payload` below 128 KiB too).
                chunk_size: Some(CHUNK_BYTES.min(self.payload_budget())),
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
