//! The events themselves: what happened ([`Kind`]) and its details ([`Event`]), as the admin
//! API sends them (`crate::api::Event`).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// What happened. The kinds are part of the API: extend, never rename.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A route's stable version changed, or the route was created: a deploy, rollback,
    /// activation or promotion (`action` says which, with `by`, `label`, `message`).
    Activated,
    /// A route was deleted (`version`: what it served).
    Deleted,
    /// A version left a route's split and drains (`in_flight`: its requests then).
    Retired,
    /// A retired version's last request ended (`waited_ms`).
    Drained,
    /// A retired version's drain deadline passed; its remaining requests were cut off
    /// (`in_flight`: how many).
    CutOff,
    /// A rollout started: `version` the candidate at `weight`, `previous` the stable version.
    RolloutStarted,
    /// A rollout advanced to `step` at `weight`.
    RolloutStep,
    /// A rollout's weight was set by hand (it is paused).
    RolloutWeight,
    /// A rollout was paused.
    RolloutPaused,
    /// A paused rollout was resumed.
    RolloutResumed,
    /// A rollout's candidate became the stable version.
    RolloutPromoted,
    /// A gate took the candidate out of the split (`reason`, with the numbers that breached).
    RolloutRolledBack,
    /// An operator took the candidate out of the split.
    RolloutAborted,
    /// A shadow started (or changed): `version` sees `weight` percent of the requests.
    ShadowStarted,
    /// A route's shadow stopped.
    ShadowStopped,
    /// A shadow's figures changed (`shadow`); at most once a second per route.
    ShadowFigures,
    /// Cluster mode: this node applied the cluster's state up to `revision` (`node`). Reserved:
    /// published once the cluster lands.
    NodeConverged,
    /// Sent first on a resumed stream whose `Last-Event-ID` is older than the buffer holds (or
    /// from before a restart): events in between are lost; re-read the state (`first_id`: the
    /// oldest event the stream replays).
    Missed,
    /// Sent last to a subscriber that fell `QUEUE` events behind: its stream ends here;
    /// reconnect with the last id to resume from the buffer.
    Dropped,
    /// A kind this client does not know (a newer server).
    #[default]
    #[serde(other)]
    Unknown,
}

impl Kind {
    /// The kind's name, as in the JSON and the SSE `event:` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Activated => "activated",
            Self::Deleted => "deleted",
            Self::Retired => "retired",
            Self::Drained => "drained",
            Self::CutOff => "cut_off",
            Self::RolloutStarted => "rollout_started",
            Self::RolloutStep => "rollout_step",
            Self::RolloutWeight => "rollout_weight",
            Self::RolloutPaused => "rollout_paused",
            Self::RolloutResumed => "rollout_resumed",
            Self::RolloutPromoted => "rollout_promoted",
            Self::RolloutRolledBack => "rollout_rolled_back",
            Self::RolloutAborted => "rollout_aborted",
            Self::ShadowStarted => "shadow_started",
            Self::ShadowStopped => "shadow_stopped",
            Self::ShadowFigures => "shadow_figures",
            Self::NodeConverged => "node_converged",
            Self::Missed => "missed",
            Self::Dropped => "dropped",
            Self::Unknown => "unknown",
        }
    }

    /// Every kind the server publishes, for documentation and tests.
    pub const ALL: [Kind; 19] = [
        Self::Activated,
        Self::Deleted,
        Self::Retired,
        Self::Drained,
        Self::CutOff,
        Self::RolloutStarted,
        Self::RolloutStep,
        Self::RolloutWeight,
        Self::RolloutPaused,
        Self::RolloutResumed,
        Self::RolloutPromoted,
        Self::RolloutRolledBack,
        Self::RolloutAborted,
        Self::ShadowStarted,
        Self::ShadowStopped,
        Self::ShadowFigures,
        Self::NodeConverged,
        Self::Missed,
        Self::Dropped,
    ];
}

/// A shadow's counters, as a [`Kind::ShadowFigures`] event carries them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowCounts {
    /// Requests copied and compared (or skipped).
    pub requests: u64,
    /// Copies that matched.
    pub matches: u64,
    /// Copies that differed beyond the stable version's own noise.
    pub mismatches: u64,
    /// Copies that differed only where the stable version differs from itself.
    pub noise: u64,
    /// Copies the shadow failed to answer.
    pub errors: u64,
    /// Requests not copied.
    pub skipped: u64,
}

/// One event. `id` and `at_ms` are set by the bus; the other fields are those its kind uses
/// (see [`Kind`]), absent otherwise.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Increases by one per event; also the SSE `id:`. Ids keep increasing across restarts of
    /// a server (they start from its start time), so a stale id is recognised.
    pub id: u64,
    /// When, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What happened.
    pub kind: Kind,
    /// The route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The version it is about (`sha256:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The version it replaced (activations), or the stable version (rollouts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// Who did it (an admin token's name, `anonymous`, or `rollout` for the controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The history's action: `deploy`, `rollback`, `activate`, `promote`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The label given with the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The message given with the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Why (automatic rollbacks: the numbers that breached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A rollout's candidate weight, or a shadow's share, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// A rollout's step (an index into its steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    /// Requests in flight on the version (retired, cut off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<u64>,
    /// How long a drain took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waited_ms: Option<u64>,
    /// A shadow's counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowCounts>,
    /// Cluster mode: the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Cluster mode: the revision applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// [`Kind::Missed`]: the oldest id the stream replays (the next id, if none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_id: Option<u64>,
}

impl Event {
    /// An event of `kind` about `route`.
    pub fn new(kind: Kind, route: &str) -> Self {
        Self {
            kind,
            route: Some(route.to_owned()),
            ..Self::default()
        }
    }

    /// This event with `version` set.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_events_page_documents_every_kind() {
        let page = include_str!("../../../docs/events.md");
        let table = page
            .split("| kind | when |")
            .nth(1)
            .expect("docs/events.md has the table of event kinds");
        for kind in Kind::ALL {
            assert!(
                table.contains(&format!("`{}`", kind.as_str())),
                "docs/events.md's table of event kinds lacks `{}`",
                kind.as_str()
            );
        }
    }

    #[test]
    fn kinds_serialize_as_their_names_and_unknown_ones_still_read() {
        for kind in Kind::ALL {
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, kind.as_str());
            assert_eq!(serde_json::from_value::<Kind>(json).unwrap(), kind);
        }
        let later: Event =
            serde_json::from_str(r#"{"id":3,"at_ms":4,"kind":"from_the_future","extra":1}"#)
                .unwrap();
        assert_eq!(later.kind, Kind::Unknown);
        let json = serde_json::to_string(&Event::new(Kind::Drained, "api")).unwrap();
        assert_eq!(json, r#"{"id":0,"at_ms":0,"kind":"drained","route":"api"}"#);
    }
}
