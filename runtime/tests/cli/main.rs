//! Black-box tests of the `handoff` binary: real processes, real sockets, real guests. One
//! binary, one module per command family; `support` runs the binary.

mod access;
mod admin_listener;
mod client;
mod cluster;
mod counts;
mod crowd;
mod delivery;
mod dev;
mod docs;
mod hints;
mod kv;
mod load;
mod logs;
mod new;
mod persist;
mod security;
mod serve;
mod support;
mod takeover;
mod takeover_gate;
mod takeover_tls;
mod tracing;
mod wasi3;
mod watch;
