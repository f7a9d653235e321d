//! Integration tests: one binary, one module per area. Each test runs a real server on
//! loopback with real compiled guests.

mod admin_bounds;
mod auth;
mod bad_uploads;
mod changes;
mod claims;
mod cluster;
mod cluster_kv;
mod cluster_limits;
mod cluster_rollout;
mod compat;
mod console;
mod console_actions;
mod console_views;
mod data_dir;
mod delivery;
mod deploy;
mod drain;
mod events;
mod guests;
mod host;
mod hostile;
mod kv;
mod kv_python;
mod kv_versions;
mod limits;
mod outbound;
mod persist;
mod reuse;
mod sdk_async;
mod shadow;
mod swap;
mod tls;
mod toolchains;
mod unread;
mod wasi3;
