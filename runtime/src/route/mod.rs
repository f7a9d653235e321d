//! The route lifecycle: which versions serve which path prefix, how a request picks one, and
//! how a version that stops serving is drained and freed.
//!
//! # The invariant
//!
//! **A request takes its version's in-flight token in the same step that picks the version,
//! while it still holds the route table snapshot that named it; a change swaps in a new
//! snapshot and then waits until no reader holds the old one.** From that moment the in-flight
//! counts of the versions that left the table are exact and only ever fall, so once a change
//! returns, no new request can reach a version it removed, and draining that version means
//! waiting for its count to reach zero. The token travels with the response body and the guest's
//! task, and is let go when both have ended (the body's last byte written or the client gone,
//! and the guest returned, timed out or cut off), so a version is never freed while it is still
//! writing or working.
//!
//! # Parts
//!
//! * [`serving`]: what a route serves ([`Serving`]): a stable version, optionally a candidate
//!   at a weight and a shadow, or nothing (unavailable, its prefix still reserved), and how a
//!   request picks among them.
//! * [`table`]: the table of routes, read lock-free as a read-copy-update snapshot
//!   (`ArcSwap`), written by one [`table::Writer`] at a time; [`table::RouteTable::resolve`] is
//!   the one place a request is routed.
//! * [`inflight`]: the token ([`InFlight`]).
//! * [`state`]: route-lifetime state ([`RouteState`]): what every version of a route shares
//!   (its counters, its change lock, rollout and shadow statistics; its key-value bucket lives
//!   in `crate::kv`, keyed by the route's name), kept in a concurrent map by name so it
//!   outlives table snapshots.
//! * [`drain`]: versions that left the table and are finishing their requests.
//!
//! Nothing here compiles, persists or talks HTTP; `crate::deploy` decides what serves and
//! applies it through [`table::Writer`].

pub mod drain;
pub mod inflight;
pub mod serving;
pub mod state;
pub mod table;

pub use drain::{Draining, Drains};
pub use inflight::InFlight;
pub use serving::{Candidate, Role, Serving, Shadow, Split, Sticky, Weight};
pub use state::{Registry, RouteState};
pub use table::{Arm, Refused, Route, RouteTable, Routed, Table};
