//! The records of the state log, as they are kept (JSON). Fields added after the first release
//! carry `#[serde(default)]`, so a data directory written by an earlier handoff still reads.

use serde::{Deserialize, Serialize};

use crate::settings::Limits;

/// What a version runs with besides its bytes: the guest's environment, its limits, its
/// outbound allow-list and its mounted directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct SettingsRecord {
    /// The guest's environment (`config=KEY=VALUE`).
    pub config: Vec<(String, String)>,
    /// Its limits (absent in records written before limits existed: the server's defaults).
    #[serde(default)]
    pub limits: Option<Limits>,
    /// Its outbound allow-list, as rule texts.
    #[serde(default)]
    pub outbound: Vec<String>,
    /// The directory (under `--guest-dirs`) mounted at `/data`.
    #[serde(default)]
    pub dir: Option<String>,
    /// The shared key-value buckets it may open besides its own (`kv=NAME`), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kv: Vec<String>,
}

/// A route as the state log keeps it: its prefix, the versions serving it, and its history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RouteRecord {
    /// Its path prefix.
    pub prefix: String,
    /// The stable version's digest (the version that serves everything the candidate does
    /// not).
    pub active: String,
    /// The stable version's settings.
    #[serde(flatten)]
    pub settings: SettingsRecord,
    /// A candidate serving a share of the traffic beside the stable version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<CandidateRecord>,
    /// A version that sees a copy of some requests; its responses are compared, never sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowRecord>,
    /// The route's rollout: running or paused, or how the last one ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutRecord>,
    /// Every activation, oldest first, at most the retention limit.
    pub history: Vec<HistoryEntry>,
    /// Changes recorded for this route so far (set by the state log).
    #[serde(default)]
    pub revision: u64,
    /// The span of the traced change that wrote this record, as a W3C `traceparent`: the other
    /// nodes of a cluster apply the record within that trace. `None` when the change was not
    /// traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

impl RouteRecord {
    /// The prefix route `name` claims with this record: its stored prefix, or `/{name}` when
    /// the stored one does not parse (what a restart serves it at).
    pub fn claimed_prefix(&self, name: &crate::names::RouteName) -> crate::names::Prefix {
        crate::names::Prefix::parse(&self.prefix)
            .unwrap_or_else(|_| crate::names::Prefix::for_route(name))
    }

    /// Every digest this record references: its serving versions, its history and its last
    /// rollout's candidate.
    pub fn references(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.active.as_str())
            .chain(self.candidate.iter().map(|c| c.version.as_str()))
            .chain(self.shadow.iter().map(|s| s.version.as_str()))
            .chain(self.history.iter().map(|e| e.version.as_str()))
            // The last rollout's candidate, also once it ended: it can be tried again.
            .chain(self.rollout.iter().map(|r| r.candidate.as_str()))
    }
}

/// A candidate version and its share of a route's traffic.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CandidateRecord {
    /// Its digest.
    pub version: String,
    /// Its settings.
    #[serde(flatten)]
    pub settings: SettingsRecord,
    /// Its share of the route's requests, in percent (0-100, fractions allowed).
    pub weight: f64,
    /// What keeps a client on one side of the split (`header:NAME`, `cookie:NAME`, `ip`);
    /// `None`: each request is split at random.
    #[serde(default)]
    pub sticky: Option<String>,
}

/// A shadow version: it sees a copy of a share of the route's requests.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShadowRecord {
    /// Its digest.
    pub version: String,
    /// Its settings.
    #[serde(flatten)]
    pub settings: SettingsRecord,
    /// The share of requests copied to it, in percent.
    pub percent: f64,
    /// The response headers compared besides the status and the body.
    #[serde(default)]
    pub compare_headers: Vec<String>,
    /// Whether the shadow (and the stable version's second runs) may make outbound HTTP calls
    /// to the route's allow-list; by default they are denied.
    #[serde(default)]
    pub allow_outbound: bool,
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Stepping through its weights as its gates allow.
    Running,
    /// Holding its weight (gates still watch the candidate).
    Paused,
    /// The candidate became the stable version.
    Promoted,
    /// A gate found the candidate worse; it was taken out of the split.
    RolledBack,
    /// An operator took the candidate out of the split.
    Aborted,
}

impl RolloutState {
    /// Whether the rollout still has a candidate in the split.
    pub fn is_live(self) -> bool {
        matches!(self, Self::Running | Self::Paused)
    }
}

/// A rollout: its plan, where it stands, and (once it ends) how.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RolloutRecord {
    /// Where it stands.
    pub state: RolloutState,
    /// The version that was stable when it started.
    pub stable: String,
    /// The candidate.
    pub candidate: String,
    /// The candidate's weight at each step, in percent.
    pub steps: Vec<f64>,
    /// The current step (an index into `steps`).
    pub step: usize,
    /// The candidate's weight now, in percent (a step's, or one set by hand).
    pub weight: f64,
    /// Minimum time per step, milliseconds.
    pub step_time_ms: u64,
    /// Minimum candidate requests per step.
    pub step_requests: u64,
    /// What keeps a client on one side of the split (`header:NAME`, `cookie:NAME`, `ip`).
    pub sticky: Option<String>,
    /// The candidate's error rate over a step above which it is rolled back.
    pub max_error_rate: f64,
    /// Candidate p99 over stable p99 (over a step) above which it is rolled back.
    pub max_p99_ratio: f64,
    /// Candidate requests in a step before a gate may fire.
    pub min_requests: u64,
    /// Never advance by itself (an operator sets weights and promotes).
    pub manual: bool,
    /// When the current step started, milliseconds since the Unix epoch.
    pub step_started_ms: u64,
    /// Who started it.
    pub by: String,
    /// Why it was rolled back, with the numbers that breached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// In a cluster, a rollout in waves: the node names of each wave, in order. Wave `i` is
    /// step `i`; only the nodes of the waves up to the current step serve the candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waves: Option<Vec<Vec<String>>>,
    /// In a cluster, the node whose controller made this rollout's last change (a step, the
    /// promotion or a rollback); `None` after a change an operator made, and on one server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
}

impl RolloutRecord {
    /// The candidate's weight on node `node` (`None`: a server on its own): `weight`, unless
    /// the rollout goes in waves and `node` is in none of the waves reached yet (then 0).
    pub fn weight_on(&self, node: Option<&str>, weight: f64) -> f64 {
        match (&self.waves, node) {
            (Some(waves), Some(node)) => {
                let reached = waves
                    .iter()
                    .take(self.step + 1)
                    .any(|wave| wave.iter().any(|n| n == node));
                if reached { weight } else { 0.0 }
            }
            _ => weight,
        }
    }
}

/// One activation of a version on a route.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HistoryEntry {
    /// The version's digest.
    pub version: String,
    /// Component size.
    pub size_bytes: u64,
    /// When it was activated, milliseconds since the Unix epoch.
    pub activated_at_ms: u64,
    /// Who activated it (the admin token's name; `anonymous` on an open admin API).
    pub by: String,
    /// `deploy`, `rollback` or `activate`.
    pub action: String,
    /// An optional label given at deploy (`stable`, `v1.2.0`...).
    pub label: Option<String>,
    /// An optional message given at deploy.
    pub message: Option<String>,
    /// The config it ran with.
    pub config: Vec<(String, String)>,
    /// The limits it ran with (`None` in entries written before they were recorded; a
    /// rollback to such an entry keeps the route's current limits, allow-list and directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// The outbound allow-list it ran with (recorded together with `limits`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<Vec<String>>,
    /// The directory it had mounted (recorded together with `limits`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// The shared key-value buckets it was granted (recorded together with `limits`; absent in
    /// entries written before grants existed: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv: Option<Vec<String>>,
}

impl HistoryEntry {
    /// The settings this entry ran with; what it did not record comes from `current`.
    pub fn settings(&self, current: &SettingsRecord) -> SettingsRecord {
        match self.limits {
            Some(limits) => SettingsRecord {
                config: self.config.clone(),
                limits: Some(limits),
                outbound: self.outbound.clone().unwrap_or_default(),
                dir: self.dir.clone(),
                kv: self.kv.clone().unwrap_or_default(),
            },
            None => SettingsRecord {
                config: self.config.clone(),
                ..current.clone()
            },
        }
    }
}

/// A stored module (component bytes, kept by digest).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModuleRecord {
    /// Size of the component bytes.
    pub size_bytes: u64,
    /// Uploaded with `POST /v1/modules` and kept until a route activates it or it is deleted.
    pub pinned: bool,
    /// The upload's `Handoff-Signature` (base64 Ed25519 over the bytes), when it had one, so a
    /// server that requires signatures can check it again at every activation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_an_earlier_release_still_read() {
        let old = r#"{"prefix":"/a","active":"sha256:00","config":[["K","v"]],
            "history":[{"version":"sha256:00","size_bytes":1,"activated_at_ms":2,"by":"x",
            "action":"deploy","label":null,"message":null,"config":[]}],
            "limits":null,"outbound":["http://a"],"dir":null}"#;
        let record: RouteRecord = serde_json::from_str(old).unwrap();
        assert_eq!(record.settings.config, [("K".to_owned(), "v".to_owned())]);
        assert_eq!(record.settings.outbound, ["http://a"]);
        assert_eq!(record.revision, 0);
        assert!(record.candidate.is_none());
        let module: ModuleRecord = serde_json::from_str(
            r#"{"size_bytes":3,"artifact_sha256":"ab","artifact_key":"cd","pinned":true}"#,
        )
        .unwrap();
        assert!(module.pinned);
        assert!(module.signature.is_none());
    }

    #[test]
    fn history_without_recorded_settings_keeps_the_current_ones() {
        let current = SettingsRecord {
            config: vec![],
            limits: Some(Limits::default()),
            outbound: vec!["https://api".into()],
            dir: Some("d".into()),
            kv: vec!["orders".into()],
        };
        let entry = HistoryEntry {
            version: "sha256:00".into(),
            size_bytes: 1,
            activated_at_ms: 0,
            by: "x".into(),
            action: "deploy".into(),
            label: None,
            message: None,
            config: vec![("A".into(), "1".into())],
            limits: None,
            outbound: None,
            dir: None,
            kv: None,
        };
        let settings = entry.settings(&current);
        assert_eq!(settings.outbound, current.outbound);
        assert_eq!(settings.kv, current.kv);
        assert_eq!(settings.config, entry.config);
    }
}
