//! The state log: the durable record of what every route serves, its history, and the modules
//! (component bytes) it may serve. This is the seam between "what should serve" and "what
//! serves": a change to a route is recorded here once, as a typed [`Change`], and only then
//! applied to the live route table (`crate::deploy::apply`). The same records are read back at
//! restart and applied through the same code.
//!
//! [`StateLog`] is the interface; [`redb::RedbLog`] keeps it in the data directory (one node).
//! [`jetstream::JetStreamLog`] keeps it in NATS JetStream for a cluster (one KV key per route,
//! every write a compare-and-swap on the route's revision, module bytes in an Object Store,
//! watches that resume from a revision) behind the same trait; nothing above this module knows
//! which one runs.
//!
//! Module *bytes* and compiled artifacts are files, not log entries: [`files::Files`].
//!
//! This module never touches the route table or the engine.

pub mod files;
pub mod jetstream;
pub mod log;
pub mod pending;
pub mod private;
pub mod records;
pub mod redb;
pub mod switch;

pub use log::{AppendError, BoxFuture, Change, StateLog, Stored, Watched};
pub use records::{
    CandidateRecord, HistoryEntry, ModuleRecord, RolloutRecord, RolloutState, RouteRecord,
    SettingsRecord, ShadowRecord,
};
