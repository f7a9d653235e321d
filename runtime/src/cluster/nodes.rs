//! Node records: each node's own key in the KV bucket `handoff_nodes`, republished every
//! [`HEARTBEAT`] with a per-message TTL of [`NODE_TTL`] (NATS 2.11+), and at once whenever the
//! node applies a change. A record says what the node serves (per route: the revision it
//! applied, its stable version, and the last failure), how far it has read the routes bucket
//! (`position`), and whether it is ready or leaving.
//!
//! Every node watches every record. A node counts as live while its record keeps arriving
//! (within [`NODE_TTL`] of local time, so clocks need not agree), is ready, and is not
//! leaving. [`Nodes::wait`] is the promise across nodes: it returns once every live node
//! reports a change's revision (or a failure of it), or names those that did not answer in
//! time.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::record::{MESSAGE_ROOM, NodeRecord, Outcome, OutcomeState, RoutesPart, split_routes};

/// The KV bucket of node records.
pub const NODES_BUCKET: &str = "handoff_nodes";
/// How often a node republishes its record.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a node record lives without a heartbeat.
pub const NODE_TTL: Duration = Duration::from_secs(5);

/// A node record as this node last received it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The record.
    pub record: NodeRecord,
    /// When it arrived.
    pub at: Instant,
}

impl Seen {
    /// Whether its heartbeat is recent.
    pub fn alive(&self) -> bool {
        self.at.elapsed() < NODE_TTL
    }

    /// Whether a change waits for it.
    pub fn live(&self) -> bool {
        self.alive() && self.record.ready && !self.record.leaving
    }
}

/// Every node's record, and publishing this node's.
pub struct Nodes {
    js: jetstream::Context,
    bucket: kv::Store,
    me: Mutex<NodeRecord>,
    seen: Mutex<HashMap<String, Seen>>,
    /// Parts of other nodes' records (see [`NodeRecord::parts`]), by node, then by index.
    parts: Mutex<HashMap<String, BTreeMap<u32, RoutesPart>>>,
    /// The generation of this node's last record published in parts.
    generation: std::sync::atomic::AtomicU64,
    changed: tokio::sync::watch::Sender<u64>,
    stop: CancellationToken,
    /// Set once a new process has taken this node over (`serve --takeover`): this process no
    /// longer publishes the node's record, which is the new process's now.
    handed_over: std::sync::atomic::AtomicBool,
}

impl Nodes {
    /// Opens the bucket and claims `name`: a record of that name from another process that
    /// still heartbeats refuses the claim; one that stopped (a node killed and restarted)
    /// is taken over once it has missed its heartbeats, or at once by a process that
    /// `succeeding` it (`serve --takeover` on its data directory).
    pub(super) async fn open(
        js: jetstream::Context,
        name: &str,
        engine_key: &str,
        replicas: usize,
        succeeding: bool,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let bucket = js
            .create_or_update_key_value(kv::Config {
                bucket: NODES_BUCKET.into(),
                description: "handoff node records (heartbeats with a TTL)".into(),
                history: 1,
                num_replicas: replicas,
                limit_markers: Some(Duration::from_secs(1)),
                ..Default::default()
            })
            .await
            .context("creating the nodes bucket (per-key TTL needs NATS 2.11 or newer)")?;
        if !succeeding
            && let Some(entry) = bucket.entry(name).await.context("reading node records")?
            && entry.operation == kv::Operation::Put
        {
            let first = entry.revision;
            let deadline = Instant::now() + NODE_TTL + HEARTBEAT;
            loop {
                tokio::time::sleep(HEARTBEAT / 4).await;
                let now = bucket.entry(name).await.context("reading node records")?;
                match now {
                    Some(e) if e.operation == kv::Operation::Put && e.revision != first => {
                        anyhow::bail!(
                            "node name `{name}` is in use by a live node; give this one another --node-name"
                        );
                    }
                    Some(e) if e.operation == kv::Operation::Put && Instant::now() < deadline => {}
                    _ => break,
                }
            }
        }
        let me = NodeRecord {
            name: name.to_owned(),
            id: process_id(),
            started_ms: crate::units::unix_ms(),
            engine_key: engine_key.to_owned(),
            handoff_version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        };
        Ok(Self {
            js,
            bucket,
            me: Mutex::new(me),
            seen: Mutex::default(),
            parts: Mutex::default(),
            generation: std::sync::atomic::AtomicU64::new(0),
            changed: tokio::sync::watch::channel(0).0,
            stop,
            handed_over: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Starts the heartbeat (while `connected` says the connection is up) and the watch of
    /// every node's record under `background`; both end when this node leaves (or the server
    /// stops) or `nodes` is dropped.
    pub(super) fn start(
        nodes: &Arc<Self>,
        background: &crate::background::Background,
        connected: impl Fn() -> bool + Send + 'static,
    ) {
        let heartbeat: Weak<Self> = Arc::downgrade(nodes);
        background.spawn_until(nodes.stop.clone(), async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                let Some(nodes) = heartbeat.upgrade() else {
                    return;
                };
                if connected() {
                    nodes.publish().await;
                }
            }
        });
        let watcher: Weak<Self> = Arc::downgrade(nodes);
        background.spawn_until(nodes.stop.clone(), async move {
            loop {
                let Some(watch) = ({
                    let Some(nodes) = watcher.upgrade() else {
                        return;
                    };
                    nodes.bucket.watch_all().await.ok()
                }) else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let mut watch = watch;
                loop {
                    let Some(Ok(entry)) = watch.next().await else {
                        break;
                    };
                    let Some(nodes) = watcher.upgrade() else {
                        return;
                    };
                    nodes.received(entry);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }

    fn received(&self, entry: kv::Entry) {
        if let Some((node, index)) = entry.key.split_once('/') {
            // A part of a record too large for one message: kept until its record arrives.
            let Ok(index) = index.parse::<u32>() else {
                return;
            };
            let mut parts = self.parts.lock().expect("poisoned");
            match entry.operation {
                kv::Operation::Put => match serde_json::from_slice::<RoutesPart>(&entry.value) {
                    Ok(part) => {
                        parts
                            .entry(node.to_owned())
                            .or_default()
                            .insert(index, part);
                    }
                    Err(error) => {
                        tracing::warn!(node = %node, error = %error, "unreadable node record part")
                    }
                },
                kv::Operation::Delete | kv::Operation::Purge => {
                    if let Some(held) = parts.get_mut(node) {
                        held.remove(&index);
                    }
                }
            }
            return;
        }
        let mut seen = self.seen.lock().expect("poisoned");
        match entry.operation {
            kv::Operation::Put => match serde_json::from_slice::<NodeRecord>(&entry.value) {
                Ok(mut record) => {
                    if record.parts > 0 {
                        // Its parts were published just before it, so they arrived first. If
                        // one is missing (it expired), the routes last read stand.
                        let parts = self.parts.lock().expect("poisoned");
                        let held = parts.get(&entry.key);
                        let whole = (0..record.parts).all(|i| {
                            held.and_then(|h| h.get(&i))
                                .is_some_and(|p| p.generation == record.generation)
                        });
                        if let Some(held) = held.filter(|_| whole) {
                            for i in 0..record.parts {
                                record.routes.extend(held[&i].routes.clone());
                            }
                        } else if let Some(last) = seen.get(&entry.key) {
                            tracing::debug!(node = %entry.key, "a node record's parts are missing; keeping its routes as last read");
                            record.routes = last.record.routes.clone();
                        }
                        record.parts = 0;
                        record.generation = 0;
                    }
                    seen.insert(
                        entry.key,
                        Seen {
                            record,
                            at: Instant::now(),
                        },
                    );
                }
                Err(error) => {
                    tracing::warn!(node = %entry.key, error = %error, "unreadable node record")
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => {
                seen.remove(&entry.key);
                self.parts.lock().expect("poisoned").remove(&entry.key);
            }
        }
        drop(seen);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Publishes this node's record now (with its TTL). Failures are logged: the next
    /// heartbeat tries again. A record whose routes do not fit one message (the server's
    /// `max_payload`: thousands of routes) is published in parts: the routes in slices at keys
    /// `NAME/0`, `NAME/1`…, then the record naming how many, each with the same TTL.
    pub async fn publish(&self) {
        if self.handed_over.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let mut record = {
            let mut me = self.me.lock().expect("poisoned");
            me.heartbeat_ms = crate::units::unix_ms();
            me.clone()
        };
        let Ok(mut value) = serde_json::to_vec(&record) else {
            return;
        };
        // A record too large for one message (thousands of routes) goes in parts.
        let budget = (self.js.client().server_info().max_payload).saturating_sub(MESSAGE_ROOM);
        let mut parts = Vec::new();
        if value.len() > budget {
            let generation = self
                .generation
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            // Half the budget per part leaves the record itself room (its figures).
            parts = split_routes(std::mem::take(&mut record.routes), budget / 2);
            for part in &mut parts {
                part.generation = generation;
            }
            record.parts = parts.len() as u32;
            record.generation = generation;
            let Ok(head) = serde_json::to_vec(&record) else {
                return;
            };
            value = head;
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_TTL,
            NODE_TTL.as_secs().to_string().as_str(),
        );
        let subject = format!("$KV.{NODES_BUCKET}.{}", record.name);
        let sent = async {
            for (i, part) in parts.iter().enumerate() {
                let Ok(bytes) = serde_json::to_vec(part) else {
                    continue;
                };
                self.js
                    .publish_with_headers(
                        format!("{subject}/{i}"),
                        headers.clone(),
                        Bytes::from(bytes),
                    )
                    .await?
                    .await?;
            }
            self.js
                .publish_with_headers(subject, headers, Bytes::from(value))
                .await?
                .await
                .map(drop)
        };
        if let Err(error) = tokio::time::timeout(Duration::from_secs(5), sent)
            .await
            .unwrap_or_else(|_| {
                Err(async_nats::jetstream::context::PublishError::new(
                    async_nats::jetstream::context::PublishErrorKind::TimedOut,
                ))
            })
        {
            tracing::debug!(error = %error, "node record not published");
        }
    }

    /// A receiver that changes each time another node's record arrives (or goes).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Changes this node's record (publish it afterwards).
    pub fn update(&self, change: impl FnOnce(&mut NodeRecord)) {
        change(&mut self.me.lock().expect("poisoned"));
    }

    /// This node's record.
    pub fn me(&self) -> NodeRecord {
        self.me.lock().expect("poisoned").clone()
    }

    /// Every node this node knows of (itself included, as it stands here), by name.
    pub fn all(&self) -> Vec<Seen> {
        let me = self.me();
        let mut all: Vec<Seen> = self
            .seen
            .lock()
            .expect("poisoned")
            .values()
            .filter(|s| s.record.name != me.name)
            .cloned()
            .collect();
        all.push(Seen {
            record: me,
            at: Instant::now(),
        });
        all.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        all
    }

    /// The live node with the smallest name: the one that drives rollouts.
    pub fn leader(&self) -> Option<String> {
        self.all()
            .into_iter()
            .filter(Seen::live)
            .map(|s| s.record.name)
            .next()
    }

    /// Waits until every other live node reports `route` at `revision` or later (or a
    /// failure of it), or `timeout` passes; `deleted`: the change deleted the route. This
    /// node comes first, as activated.
    pub async fn wait(
        &self,
        route: &str,
        revision: u64,
        deleted: bool,
        timeout: Duration,
    ) -> Vec<Outcome> {
        let me = self.me().name;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changed = self.changed.subscribe();
        let mut waited_on: BTreeMap<String, Option<Outcome>> = BTreeMap::new();
        loop {
            for seen in self.all() {
                if seen.record.name == me || !seen.live() {
                    continue;
                }
                let outcome = seen.record.answer(route, revision, deleted);
                waited_on.insert(seen.record.name.clone(), outcome);
            }
            let alive: Vec<String> = self
                .all()
                .into_iter()
                .filter(Seen::alive)
                .map(|s| s.record.name)
                .collect();
            let pending = waited_on
                .iter()
                .any(|(name, outcome)| outcome.is_none() && alive.contains(name));
            let expired = tokio::time::Instant::now() >= deadline;
            if !pending || expired {
                let mut outcomes = vec![Outcome {
                    node: me,
                    state: OutcomeState::Activated,
                    revision: Some(revision),
                    error: None,
                }];
                for (name, outcome) in waited_on {
                    outcomes.push(outcome.unwrap_or_else(|| Outcome {
                        state: if alive.contains(&name) {
                            OutcomeState::Timeout
                        } else {
                            OutcomeState::Gone
                        },
                        node: name,
                        revision: None,
                        error: None,
                    }));
                }
                return outcomes;
            }
            tokio::select! {
                _ = changed.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    /// Cancelled when this node leaves: its background tasks stop.
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// A new process has taken this node over (`serve --takeover`): this one stops publishing
    /// the node's record and its heartbeat, and leaves the record to the new process.
    pub fn hand_over(&self) {
        self.handed_over
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.stop.cancel();
    }

    /// Says this node is leaving, then removes its record (SIGTERM).
    pub async fn leave(&self) {
        self.update(|me| me.leaving = true);
        self.publish().await;
        self.stop.cancel();
        let name = self.me().name;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.bucket.purge(name)).await;
    }
}

/// A random id for this process.
fn process_id() -> String {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
