//! handoff: serve HTTP handlers as sandboxed WebAssembly components (`wasi:http/proxy`) and
//! replace them while serving, without failing a request.
//!
//! # Architecture
//!
//! Four lifetimes, four homes (`docs/architecture.md` has the whole map):
//!
//! * **Process** — [`Runtime`] ([`runtime`]): engine and linker ([`engine`]), compiler
//!   ([`compile`]), route table ([`route`]), state log and data directory ([`state`]), the
//!   key-value store ([`kv`]).
//! * **Route** — [`route::RouteState`]: what every version of a route shares; its key-value
//!   bucket ([`kv::Kv`], by route name).
//! * **Version** — [`version::Version`], shared as `Arc`: a compiled, linked and
//!   pre-instantiated guest with its settings, in-flight count and counters. Built at deploy
//!   time ([`deploy`]), off the async threads, and never changed afterwards.
//! * **Request** — [`host::Host`], the data of one wasmtime `Store`, built per request in
//!   `dispatch`, the hot path.
//!
//! A change to what serves is proposed ([`deploy`]), recorded in the state log ([`state`]),
//! then applied to the route table through one path ([`deploy::apply`]); requests that hold a
//! version that left finish on it, response bodies included, and it is drained and freed
//! ([`route`]). The admin API ([`admin`]) and the data plane run on separate listeners
//! ([`server`]).
//!
//! The `handoff` binary is thin: [`cli`] parses, and besides `serve` it runs the admin-API
//! clients ([`client`]), the guest scaffold ([`scaffold`]: `new`) and the local loop ([`dev`]).

pub mod admin;
pub mod api;
pub mod auth;
pub(crate) mod background;
mod cancelled;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod compile;
pub mod config;
pub mod deploy;
pub mod dev;
pub mod digest;
pub(crate) mod dispatch;
pub mod engine;
pub mod events;
pub mod exit;
mod fuzz;
pub(crate) mod guest_log;
pub mod host;
pub mod http_client;
pub mod kv;
#[cfg(test)]
mod layering;
pub(crate) mod limiter;
pub mod names;
pub(crate) mod outbound;
pub(crate) mod problem;
pub mod reuse;
pub(crate) mod rollout;
pub mod route;
pub mod runtime;
pub mod scaffold;
pub mod server;
pub mod service;
pub mod settings;
pub(crate) mod shadow;
pub mod signing;
pub(crate) mod stalled;
pub mod state;
pub mod stats;
#[cfg(unix)]
pub mod takeover;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub(crate) mod units;
pub mod version;

pub use runtime::Runtime;
