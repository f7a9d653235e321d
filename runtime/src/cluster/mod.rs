//! Cluster mode (`handoff serve --cluster nats://HOST:PORT`): many nodes, one route table,
//! kept in NATS JetStream. This module owns the connection and what a node says about itself;
//! the state log lives behind the usual seam ([`crate::state::jetstream`]), and a change another
//! node recorded is applied through the same path as a local one (`crate::deploy::remote`).
//!
//! * [`Cluster::connect`] connects (with `--cluster-creds`), opens the buckets and tracks
//!   whether the connection is up: while it is down, this node keeps serving what it has,
//!   says so in `/healthz` and status, and the admin API refuses changes with 503 (no split
//!   brain: only JetStream decides what is recorded).
//! * [`nodes`]: each node's record in the KV bucket `handoff_nodes`, republished every
//!   [`nodes::HEARTBEAT`] with a per-message TTL (NATS 2.11+), so a node that dies disappears;
//!   the record says which revision of each route the node serves, and what failed. A deploy
//!   waits on these records for every live node to report the new revision (`wait=all`).
//!
//! Nothing here is on the request path, and nothing here touches the route table: callers
//! hand in what the node serves.

pub mod nodes;
mod record;
pub mod tallies;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;

pub use record::{Figures, NodeError, NodeRecord, NodeRoute, Outcome, OutcomeState};

/// How long a deploy waits for every live node by default (`--cluster-timeout`).
pub const DEFAULT_CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);

/// How to join a cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://host:port`, several separated by commas).
    pub url: String,
    /// A NATS credentials file (`--cluster-creds`).
    pub creds: Option<PathBuf>,
    /// This node's name, unique in the cluster (`--node-name`, default the host name).
    pub node_name: String,
    /// How long a change waits for every live node to activate it before it is reported as
    /// partial, naming the nodes that did not answer.
    pub timeout: Duration,
    /// Copies JetStream keeps of each bucket (0: 3 when the NATS server is in a cluster of 3
    /// or more, else 1).
    pub replicas: usize,
}

/// The machine's host name (the default node name).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|name| name.trim().to_owned())
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "handoff".to_owned())
}

/// Checks a node name: 1-64 of `A-Z a-z 0-9 - _ .`, not starting or ending with `.`.
pub fn check_node_name(name: &str) -> Result<(), String> {
    let valid = (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && !name.ends_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "--node-name `{}` must be 1-64 letters, digits, `-`, `_` or `.`",
            name.escape_debug()
        ))
    }
}

/// This node's membership of a cluster.
pub struct Cluster {
    config: ClusterConfig,
    client: async_nats::Client,
    connected: Arc<AtomicBool>,
    /// Tells watchers the connection came back (its value counts reconnections).
    reconnects: tokio::sync::watch::Receiver<u64>,
    /// Node records: ours and everyone else's.
    pub nodes: Arc<nodes::Nodes>,
    /// Copies JetStream keeps of each bucket.
    replicas: usize,
    /// What this node, driving a rollout, has counted of other nodes' figures.
    pub tallies: tallies::Book,
}

impl Cluster {
    /// Connects to NATS, opens (creating when needed) the buckets, and returns this node's
    /// membership and the state log. `engine_key` names the artifacts this node's engine loads.
    /// `succeeding`: this process takes over from the one that holds the node's name now
    /// (`serve --takeover`), so the live record of that name is its own. The node's heartbeat
    /// and its watch of every node's record run under `background`.
    pub(crate) async fn connect(
        config: ClusterConfig,
        engine_key: &str,
        succeeding: bool,
        background: &crate::background::Background,
    ) -> anyhow::Result<(Arc<Self>, crate::state::jetstream::JetStreamLog)> {
        let connected = Arc::new(AtomicBool::new(false));
        let (reconnected, reconnects) = tokio::sync::watch::channel(0u64);
        let flag = connected.clone();
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("handoff {}", config.node_name))
            .connection_timeout(Duration::from_secs(5))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(100 * (attempts as u64).min(10))
            })
            .event_callback(move |event| {
                let flag = flag.clone();
                let reconnected = reconnected.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            flag.store(true, Ordering::SeqCst);
                            reconnected.send_modify(|n| *n += 1);
                            tracing::info!("connected to the cluster (NATS)");
                        }
                        async_nats::Event::Disconnected => {
                            flag.store(false, Ordering::SeqCst);
                            tracing::warn!(
                                "lost the cluster (NATS): serving the last state, refusing changes until it is back"
                            );
                        }
                        other => tracing::debug!(event = %other, "cluster connection event"),
                    }
                }
            });
        if let Some(creds) = &config.creds {
            options = options
                .credentials_file(creds)
                .await
                .with_context(|| format!("reading --cluster-creds {}", creds.display()))?;
        }
        let client = options
            .connect(config.url.as_str())
            .await
            .with_context(|| format!("cannot reach the cluster at {}", config.url))?;
        connected.store(true, Ordering::SeqCst);
        let info = client.server_info();
        let replicas = match config.replicas {
            0 if info.connect_urls.len() >= 3 => 3,
            0 => 1,
            n => n,
        };
        let js = jetstream::new(client.clone());
        let log = crate::state::jetstream::JetStreamLog::open(js.clone(), replicas)
            .await
            .context("JetStream (NATS 2.12 or newer, with JetStream enabled) is needed")?;
        let nodes = Arc::new(
            nodes::Nodes::open(
                js,
                &config.node_name,
                engine_key,
                replicas,
                succeeding,
                background.scope(),
            )
            .await?,
        );
        tracing::info!(
            url = %config.url,
            node = %config.node_name,
            server = %info.server_name,
            replicas,
            "joined the cluster"
        );
        let cluster = Arc::new(Self {
            config,
            client,
            connected,
            reconnects,
            nodes,
            replicas,
            tallies: tallies::Book::default(),
        });
        let (flag, client) = (cluster.connected.clone(), cluster.client.clone());
        nodes::Nodes::start(&cluster.nodes, background, move || {
            flag.load(Ordering::SeqCst)
                && client.connection_state() == async_nats::connection::State::Connected
        });
        Ok((cluster, log))
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.config.node_name
    }

    /// JetStream on this node's connection, and how many copies its buckets keep (for the
    /// guests' key-value buckets, `crate::kv::jetstream`).
    pub fn jetstream(&self) -> (jetstream::Context, usize) {
        (jetstream::new(self.client.clone()), self.replicas)
    }

    /// How long a change waits for every live node.
    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }

    /// Whether the connection to NATS is up now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
            && self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// A receiver that changes each time the connection comes back.
    pub fn reconnects(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reconnects.clone()
    }
}
