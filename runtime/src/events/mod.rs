//! The event stream: what happened to routes, versions, rollouts and shadows, as a sequence of
//! [`Event`]s with increasing ids that the admin API serves as Server-Sent Events
//! (`GET /v1/events`), the CLI follows (`handoff events`, `handoff status ROUTE --watch`) and
//! the console redraws from.
//!
//! The [`Bus`] ([`bus`]) keeps the latest [`BUFFER`] events, so a client that reconnects with
//! the last id it saw misses nothing still in the buffer, and hands each event to every
//! subscriber's bounded queue. Publishing never waits: a subscriber whose queue is full is
//! dropped (it receives what was queued, then a [`Kind::Dropped`] notice, and its stream ends).
//!
//! Events are published on the control plane only, never per request: a change applied to a
//! route (`crate::deploy::apply`), a version retired, drained or cut off (`crate::route`), the
//! shadow's figures once a second when they changed. This module is a leaf: it imports nothing
//! from the rest of the crate, so every other module may publish.

pub mod bus;
pub mod event;

pub use bus::{BUFFER, Bus, MAX_SUBSCRIBERS, QUEUE, Replay, Subscription};
pub use event::{Event, Kind, ShadowCounts, unix_ms};

/// Who the rollout controller's changes are recorded as.
pub const CONTROLLER: &str = "rollout";

tokio::task_local! {
    /// Who the changes made on this task are made by (the admin token's name): set around each
    /// admin request by `crate::auth`, around the rollout controller's steps, and read when a
    /// change's events are published.
    pub static ACTOR: String;
}

/// The actor of the current task, if one is set ([`ACTOR`]).
pub fn actor() -> Option<String> {
    ACTOR.try_with(Clone::clone).ok()
}
