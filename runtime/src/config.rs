//! Validated server configuration and its named defaults. (The `serve` flags and the
//! `--config` file that mirrors them are in `crate::cli`; an embedder builds a [`Config`]
//! directly.)
//!
//! Everything here is checked before a socket is bound or a guest compiled. It never touches the
//! network or the engine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::settings::{
    DEFAULT_COMPILE_MEMORY, DEFAULT_COMPILE_TIMEOUT, DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_MEMORY_BYTES, DEFAULT_MAX_REQUEST_BODY, DEFAULT_MAX_RESPONSE_BODY,
    DEFAULT_REQUEST_TIMEOUT, Limits, MAX_TIMEOUT, MIN_COMPILE_MEMORY, MIN_COMPILE_TIMEOUT,
    MIN_TIMEOUT,
};
pub use crate::units::{format_bytes, format_duration, parse_bytes, parse_duration};

/// Where guest traffic is served unless `--listen` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Where the admin API is served unless `--admin-listen` says otherwise (loopback only).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8081";
/// How long a retired version may keep serving its in-flight requests before they are cut off.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest `.wasm` upload the admin API accepts.
pub const DEFAULT_MAX_UPLOAD_BYTES: usize = 50 << 20;
/// How many guest instances may exist at once across all routes (the pooling allocator's size).
pub const DEFAULT_MAX_INSTANCES: u32 = 1000;
/// How long a component upload may take to arrive whole.
pub const DEFAULT_UPLOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// Data-plane connections served at once; more wait in the listen backlog.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// How long a data-plane connection may go without a request in progress before it is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many activations each route's history keeps (older versions can no longer be rolled
/// back to, and their files are garbage-collected).
pub const DEFAULT_HISTORY_LIMIT: usize = 20;
/// The data directory used when neither `--data-dir` nor `--ephemeral` is given:
/// `$XDG_DATA_HOME/handoff`, else `$HOME/.local/share/handoff`.
pub fn default_data_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|home| PathBuf::from(home).join(".local/share"))
        })?;
    Some(base.join("handoff"))
}

/// The complete, validated configuration of a server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data-plane address (guest routes). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Admin API address. Port 0 picks a free port.
    pub admin_listen: SocketAddr,
    /// Where modules, artifacts, routes and history are kept across restarts; `None` keeps
    /// them in a temporary directory deleted at exit (nothing survives a restart).
    pub data_dir: Option<PathBuf>,
    /// Activations kept per route for rollback.
    pub history_limit: usize,
    /// The limits every route starts from (a deploy may set its own), and the most a route may
    /// set for memory and compiles.
    pub limits: Limits,
    /// Grace period for a retired version's in-flight requests.
    pub drain_timeout: Duration,
    /// Upload size limit for `PUT /v1/routes/{name}`.
    pub max_upload_bytes: usize,
    /// Instance slots in the pooling allocator; 0 allocates on demand instead.
    pub max_instances: u32,
    /// How hard guest code is optimised; part of the engine key.
    pub opt_level: crate::engine::OptLevel,
    /// Admin API tokens; empty leaves the admin API open (loopback only).
    pub admin_tokens: Vec<crate::auth::Token>,
    /// Let guests' outbound requests reach loopback, private and other non-public addresses
    /// through names in their allow-lists (cloud metadata addresses excepted). Without it only
    /// a rule naming the IP address itself reaches such an address.
    pub outbound_private: bool,
    /// The request header that pins a request to a version serving its route (its digest or a
    /// unique prefix of at least 8 hex digits); `None`: requests cannot pin.
    pub pin_header: Option<http::header::HeaderName>,
    /// Host names the admin API answers to besides its address and the loopback names
    /// (`--admin-host`): requests with any other `Host` are refused (DNS rebinding).
    pub admin_hosts: Vec<String>,
    /// How long a data-plane connection may go without a request in progress before it is
    /// closed: silence after connecting, a request head sent slowly (slowloris), or an idle
    /// keep-alive or HTTP/2 connection. Bytes that do not complete a request head do not count.
    pub idle_timeout: Duration,
    /// Data-plane connections served at once; further ones wait in the listen backlog until
    /// one closes (slow and idle clients are closed after `idle_timeout`).
    pub max_connections: usize,
    /// What to do with upload signatures.
    pub signature_mode: crate::signing::Mode,
    /// Public keys whose signatures uploads may carry.
    pub signing_keys: Vec<crate::signing::TrustedKey>,
    /// The directory whose subdirectories routes may mount read-only at `/data`.
    pub guest_dirs: Option<PathBuf>,
    /// TLS for the data plane (`None`: plain HTTP).
    pub tls: Option<crate::tls::TlsFiles>,
    /// TLS for the admin listener (`None`: plain HTTP).
    pub admin_tls: Option<crate::tls::TlsFiles>,
    /// How long an upload may take to arrive whole (slow-upload defence).
    pub upload_timeout: Duration,
    /// Where uploads are compiled. The binary uses a compile worker process; the compile
    /// limits are enforced only there.
    pub compiler: crate::compile::Compiler,
    /// Join a cluster through NATS JetStream (`--cluster`); `None`: one node on its own, its
    /// state in the data directory.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Where OpenTelemetry traces go (`OTEL_EXPORTER_OTLP_*`); `None`: no tracing, at no cost.
    pub tracing: Option<crate::trace::Settings>,
    /// Take over from the server running on the same data directory (`serve --takeover`):
    /// receive its listeners and state, load everything, then serve while it drains and exits.
    pub takeover: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            admin_listen: DEFAULT_ADMIN_LISTEN.parse().expect("valid default address"),
            data_dir: None,
            history_limit: DEFAULT_HISTORY_LIMIT,
            limits: Limits::default(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            max_instances: DEFAULT_MAX_INSTANCES,
            opt_level: crate::engine::OptLevel::default(),
            admin_tokens: Vec::new(),
            admin_hosts: Vec::new(),
            pin_header: None,
            outbound_private: false,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            signature_mode: crate::signing::Mode::Off,
            signing_keys: Vec::new(),
            guest_dirs: None,
            tls: None,
            admin_tls: None,
            upload_timeout: DEFAULT_UPLOAD_TIMEOUT,
            compiler: crate::compile::Compiler::InProcess,
            cluster: None,
            tracing: None,
            takeover: false,
        }
    }
}

impl Config {
    /// A configuration for tests and embedders: both listeners on `127.0.0.1:0`.
    pub fn ephemeral() -> Self {
        Self {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            admin_listen: "127.0.0.1:0".parse().expect("valid address"),
            ..Self::default()
        }
    }

    /// Resolves the directory a deploy names (`dir=NAME`) under `--guest-dirs`, in a sentence
    /// when it cannot be used. An empty name means no directory.
    pub fn guest_dir(&self, name: &str) -> Result<Option<crate::settings::GuestDir>, String> {
        if name.is_empty() {
            return Ok(None);
        }
        let Some(root) = &self.guest_dirs else {
            return Err(
                "this server mounts no directories into guests; start it with --guest-dirs ROOT"
                    .into(),
            );
        };
        let valid = name.len() <= 128
            && name != "."
            && name != ".."
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !valid {
            return Err(format!(
                "dir `{}` must be the name of a directory directly under --guest-dirs (letters, digits, `.`, `-`, `_`)",
                name.escape_debug()
            ));
        }
        let root = root
            .canonicalize()
            .map_err(|e| format!("--guest-dirs {} is unusable: {e}", root.display()))?;
        let path = root
            .join(name)
            .canonicalize()
            .map_err(|_| format!("there is no directory `{name}` under --guest-dirs"))?;
        if !path.starts_with(&root) || !path.is_dir() {
            return Err(format!("`{name}` is not a directory under --guest-dirs"));
        }
        Ok(Some(crate::settings::GuestDir {
            name: name.into(),
            path: path.into(),
        }))
    }

    /// Checks the values that have no valid range in their types.
    pub fn validate(&self) -> Result<(), String> {
        self.limits.check_server()?;
        if self.signature_mode != crate::signing::Mode::Off && self.signing_keys.is_empty() {
            return Err(
                "--signatures warn/require needs trusted public keys (--signing-keys FILE)".into(),
            );
        }
        if self.drain_timeout > MAX_TIMEOUT {
            return Err("the drain timeout may be at most 24h".into());
        }
        if self.admin_tokens.is_empty() && !self.admin_listen.ip().is_loopback() {
            return Err(format!(
                "the admin API would listen on {} without any token: anyone who reaches it could \
                 deploy code. Configure a token ($HANDOFF_ADMIN_TOKEN or --tokens-file) or keep \
                 --admin-listen on loopback",
                self.admin_listen
            ));
        }
        for name in &self.admin_hosts {
            check_admin_host(name)?;
        }
        if self.history_limit == 0 {
            return Err("the history limit must be at least 1".into());
        }
        if self.max_connections == 0 {
            return Err("the connection limit must be at least 1".into());
        }
        if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&self.idle_timeout) {
            return Err("the idle timeout must be between 10ms and 24h".into());
        }
        if self.max_upload_bytes == 0 {
            return Err("the upload limit must be more than 0 bytes".into());
        }
        if let Some(cluster) = &self.cluster {
            crate::cluster::check_node_name(&cluster.node_name)?;
            if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&cluster.timeout) {
                return Err("the cluster timeout must be between 10ms and 24h".into());
            }
        }
        Ok(())
    }
}

/// The data directory a server uses: none when `ephemeral` (a temporary one), else `dir`, else
/// [`default_data_dir`].
pub fn data_dir(ephemeral: bool, dir: Option<PathBuf>) -> Result<Option<PathBuf>, String> {
    match (ephemeral, dir) {
        (true, Some(dir)) => Err(format!(
            "--ephemeral and a data directory ({}) exclude each other; choose one",
            dir.display()
        )),
        (true, None) => Ok(None),
        (false, Some(dir)) => Ok(Some(dir)),
        (false, None) => Ok(Some(default_data_dir().ok_or_else(|| {
            "no data directory: set --data-dir (or $HOME), or run with --ephemeral".to_owned()
        })?)),
    }
}

/// Checks an `--admin-host` name: a DNS name or an IP address, without a port.
fn check_admin_host(name: &str) -> Result<(), String> {
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    let is_name = !name.is_empty()
        && name.len() <= 253
        && name.split('.').enumerate().all(|(i, label)| {
            (1..=63).contains(&label.len()) || (label.is_empty() && i > 0 && name.ends_with('.'))
        })
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if is_name || bare.parse::<std::net::IpAddr>().is_ok() {
        Ok(())
    } else {
        Err(format!(
            "--admin-host `{}` must be a host name like `handoff.internal` (or an IP address), without a port",
            name.escape_debug()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(Config::default().validate().is_ok());
        let mut bad = Config::default();
        bad.limits.max_memory_bytes = 10;
        assert!(bad.validate().is_err());
    }

    #[test]
    fn admin_host_names_are_names_without_ports() {
        for ok in [
            "handoff.internal",
            "admin",
            "fqdn.example.",
            "10.0.0.5",
            "[::1]",
            "a_b",
        ] {
            assert_eq!(check_admin_host(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "admin:8081",
            "http://admin",
            "a..b",
            ".a",
            "a b",
            "*.example",
        ] {
            assert!(check_admin_host(bad).is_err(), "{bad:?}");
        }
        let config = Config {
            admin_hosts: vec!["admin:8081".into()],
            ..Config::default()
        };
        assert!(config.validate().unwrap_err().contains("without a port"));
    }
}
