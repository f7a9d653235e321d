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
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// The KV bucket of node records.
pub const NODES_BUCKET: &str = "handoff_nodes";
/// How often a node republishes its record.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a node record lives without a heartbeat.
pub const NODE_TTL: Duration = Duration::from_secs(5);

/// What a node says about itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct NodeRecord {
    /// Its name (unique in the cluster).
    pub name: String,
    /// Which process: a restarted node has a new one.
    pub id: String,
    /// When it started, milliseconds since the Unix epoch (its clock).
    pub started_ms: u64,
    /// When it last published this record (its clock).
    pub heartbeat_ms: u64,
    /// Its admin API.
    pub admin: Option<String>,
    /// Its data plane.
    pub data: Option<String>,
    /// The key of the engine its artifacts are compiled for.
    pub engine_key: String,
    /// The handoff release it runs.
    pub handoff_version: String,
    /// Whether it has caught up and serves.
    pub ready: bool,
    /// Whether it is shutting down.
    pub leaving: bool,
    /// How far it has applied the routes bucket.
    pub position: u64,
    /// What it serves, by route.
    pub routes: BTreeMap<String, NodeRoute>,
    /// During a rollout: the request figures of the route's versions here, by route, then by
    /// version (what the node that drives the rollout sums for its gates).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub figures: BTreeMap<String, BTreeMap<String, Figures>>,
    /// When its routes do not fit one message: the number of parts (keys `NAME/0`, `NAME/1`…,
    /// published just before this record) that hold them. 0 in a record as read (its routes
    /// put back together).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub parts: u32,
    /// The generation of this record's parts (see `parts`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u64,
}

fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

/// A slice of the routes of a node record too large for one message (see
/// [`Nodes::publish`]).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct RoutesPart {
    /// The generation of the record it belongs to.
    generation: u64,
    /// Its routes.
    routes: BTreeMap<String, NodeRoute>,
}

/// Room in a message for its subject and headers.
const MESSAGE_ROOM: usize = 1 << 10;

/// `routes` in slices of at most about `budget` bytes of JSON each.
fn split_routes(routes: BTreeMap<String, NodeRoute>, budget: usize) -> Vec<RoutesPart> {
    let mut parts = vec![RoutesPart::default()];
    let mut size = 0;
    for (name, route) in routes {
        // The entry's JSON, its quotes, colon and comma.
        let entry = name.len() + serde_json::to_vec(&route).map_or(0, |v| v.len()) + 8;
        if size + entry > budget && !parts.last().is_some_and(|p| p.routes.is_empty()) {
            parts.push(RoutesPart::default());
            size = 0;
        }
        size += entry;
        parts
            .last_mut()
            .expect("one part at least")
            .routes
            .insert(name, route);
    }
    parts
}

/// A version's request figures on one node, counted since the node built it (the fields of
/// `crate::stats::Snapshot`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Figures {
    /// Requests that ended.
    pub completed: u64,
    /// Of those, the ones that failed.
    pub errors: u64,
    /// Responses by status class.
    pub classes: [u64; 5],
    /// Requests per latency bucket.
    pub latency: Vec<u64>,
    /// Total latency, microseconds.
    pub latency_us: u64,
}

/// What a node serves on one route.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct NodeRoute {
    /// The revision of the route it serves.
    pub revision: u64,
    /// Its stable version (`None`: the route is unavailable here).
    pub version: Option<String>,
    /// The last change of this route it could not apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<NodeError>,
}

/// A change a node could not apply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeError {
    /// The revision it failed to apply.
    pub revision: u64,
    /// Why, in a sentence.
    pub reason: String,
}

/// How a node answered a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeState {
    /// It serves the change (or a later one).
    Activated,
    /// It could not apply it (and keeps serving what it had).
    Failed,
    /// It did not report it in time.
    Timeout,
    /// It left the cluster (or died) before it reported it.
    Gone,
}

impl OutcomeState {
    /// As the admin API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Activated => "activated",
            Self::Failed => "failed",
            Self::Timeout => "timeout",
            Self::Gone => "gone",
        }
    }
}

/// One node's answer to a change.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The node.
    pub node: String,
    /// Its answer.
    pub state: OutcomeState,
    /// The revision of the route it reported.
    pub revision: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
}

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
            stop: CancellationToken::new(),
            handed_over: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Starts the heartbeat (while `connected` says the connection is up) and the watch of
    /// every node's record; both end when this node leaves or `nodes` is dropped.
    pub(super) fn start(nodes: &Arc<Self>, connected: impl Fn() -> bool + Send + 'static) {
        let heartbeat: Weak<Self> = Arc::downgrade(nodes);
        let stop = nodes.stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(HEARTBEAT) => {}
                }
                let Some(nodes) = heartbeat.upgrade() else {
                    return;
                };
                if connected() {
                    nodes.publish().await;
                }
            }
        });
        let watcher: Weak<Self> = Arc::downgrade(nodes);
        let stop = nodes.stop.clone();
        tokio::spawn(async move {
            loop {
                let Some(watch) = ({
                    let Some(nodes) = watcher.upgrade() else {
                        return;
                    };
                    nodes.bucket.watch_all().await.ok()
                }) else {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                    }
                };
                let mut watch = watch;
                loop {
                    let entry = tokio::select! {
                        _ = stop.cancelled() => return,
                        entry = watch.next() => entry,
                    };
                    let Some(Ok(entry)) = entry else {
                        break;
                    };
                    let Some(nodes) = watcher.upgrade() else {
                        return;
                    };
                    nodes.received(entry);
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
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
                let outcome = answer(&seen.record, route, revision, deleted);
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

/// How `record` answers a change of `route` to `revision`, if it has.
fn answer(record: &NodeRecord, route: &str, revision: u64, deleted: bool) -> Option<Outcome> {
    let served = record.routes.get(route);
    let outcome = |state, error| {
        Some(Outcome {
            node: record.name.clone(),
            state,
            revision: served.map(|r| r.revision),
            error,
        })
    };
    if let Some(error) = served
        .and_then(|r| r.error.as_ref())
        .filter(|e| e.revision >= revision)
    {
        return outcome(OutcomeState::Failed, Some(error.reason.clone()));
    }
    match served {
        Some(r) if r.revision >= revision => outcome(OutcomeState::Activated, None),
        None if deleted && record.position >= revision => outcome(OutcomeState::Activated, None),
        _ => None,
    }
}

/// A random id for this process.
fn process_id() -> String {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_split_into_parts_within_the_budget_and_back_whole() {
        let routes: BTreeMap<String, NodeRoute> = (0..1000)
            .map(|i| {
                let route = NodeRoute {
                    revision: i,
                    version: Some(format!("sha256:{:064x}", i)),
                    error: None,
                };
                (format!("route-{i:04}"), route)
            })
            .collect();
        let parts = split_routes(routes.clone(), 8 << 10);
        assert!(parts.len() > 10, "{} parts", parts.len());
        let mut whole = BTreeMap::new();
        for part in &parts {
            let size = serde_json::to_vec(part).unwrap().len();
            assert!(size <= (8 << 10) + 64, "a part of {size} bytes");
            whole.extend(part.routes.clone());
        }
        assert_eq!(whole, routes);
        // One route larger than the budget still goes, alone in its part.
        let parts = split_routes(routes, 10);
        assert_eq!(parts.len(), 1000);
    }

    fn record(routes: &[(&str, u64, Option<u64>)], position: u64) -> NodeRecord {
        NodeRecord {
            name: "b".into(),
            position,
            routes: routes
                .iter()
                .map(|(name, revision, failed)| {
                    (
                        (*name).to_owned(),
                        NodeRoute {
                            revision: *revision,
                            version: Some("sha256:00".into()),
                            error: failed.map(|revision| NodeError {
                                revision,
                                reason: "no".into(),
                            }),
                        },
                    )
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_node_answers_a_change_once_it_reports_that_revision_or_a_failure_of_it() {
        let state = |r: &NodeRecord, rev, deleted| answer(r, "api", rev, deleted).map(|o| o.state);
        assert_eq!(state(&record(&[("api", 4, None)], 4), 5, false), None);
        assert_eq!(
            state(&record(&[("api", 5, None)], 5), 5, false),
            Some(OutcomeState::Activated)
        );
        assert_eq!(
            state(&record(&[("api", 7, None)], 7), 5, false),
            Some(OutcomeState::Activated),
            "a later revision includes this one"
        );
        assert_eq!(
            state(&record(&[("api", 4, Some(5))], 5), 5, false),
            Some(OutcomeState::Failed)
        );
        assert_eq!(
            state(&record(&[("api", 4, Some(3))], 5), 5, false),
            None,
            "an older failure says nothing about this change"
        );
        assert_eq!(
            state(&record(&[], 9), 9, true),
            Some(OutcomeState::Activated)
        );
        assert_eq!(state(&record(&[], 8), 9, true), None);
    }
}
