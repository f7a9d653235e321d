//! Per-route settings, defined once.
//!
//! Each limit a route runs under is declared exactly once, in the `route_settings!` table of
//! `settings/table.rs`: its field, type, default constant, name, help text and
//! check. Everything else is generated from that table:
//!
//! * [`Limits`] (what a version runs under, kept in the state log) and [`LimitOverrides`] (what
//!   a deploy sets; the rest keep the route's current values);
//! * [`SETTINGS`]: one [`Setting`] per limit, which the CLI turns into the server's default
//!   flags (`serve --max-memory`, and so the `--config` file's keys) and the deploy flags
//!   (`deploy --max-memory`), the admin API into deploy query keys (`max-memory=`), and a test
//!   into the per-route settings table of `docs/settings.md`;
//! * [`LimitsStatus`]: the limits as `GET /v1/routes/{name}` shows them;
//! * [`Limits::check`]: a route's limits against the server's;
//! * [`SettingsPatch`] ([`patch`]): what a deploy changes, limits and the four settings that
//!   are not limits (`config`, `allow-outbound`, `dir`, `kv`), read from `name=value` pairs in
//!   one place, and the sentence that lists what a deploy takes.
//!
//! A route's configuration pairs are parsed in `settings/config.rs`. Adding a limit means adding one
//! entry to the table; nothing else spells it out.

use std::sync::Arc;

mod config;
pub mod patch;
mod table;
mod values;

pub use config::{MAX_CONFIG_PAIRS, MAX_CONFIG_VALUE, RouteConfig, parse_config};
pub use patch::SettingsPatch;
pub use table::*;
pub use values::Value;

/// How a route runs its versions, set at deploy time: the guest's config, its limits, its
/// outbound allow-list, its directory and the key-value buckets it may open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The guest's environment.
    pub config: RouteConfig,
    /// Its limits.
    pub limits: Limits,
    /// Where it may send outbound HTTP requests.
    pub outbound: crate::outbound::Outbound,
    /// A directory mounted read-only at `/data`.
    pub dir: Option<GuestDir>,
    /// The key-value buckets it may open: its own and those granted (`kv=NAME`).
    pub kv: crate::kv::Grants,
}

/// A subdirectory of the server's `--guest-dirs` that a route's guests see, read-only, at
/// `/data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestDir {
    /// Its name under `--guest-dirs` (what the deploy gave).
    pub name: Arc<str>,
    /// Its resolved path on the host.
    pub path: Arc<std::path::Path>,
}
