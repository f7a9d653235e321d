//! Validated server configuration and its named defaults.
//!
//! Everything here is checked before a socket is bound or a guest compiled. It never touches the
//! network or the engine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where guest traffic is served unless `--listen` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Where the admin API is served unless `--admin-listen` says otherwise (loopback only).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8081";
/// How long one request may run, guest CPU and wall clock, before it gets a 504.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a retired version may keep serving its in-flight requests before they are cut off.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest linear memory one guest instance may grow to.
pub const DEFAULT_MAX_MEMORY_BYTES: u64 = 128 << 20;
/// The largest `.wasm` upload the admin API accepts.
pub const DEFAULT_MAX_UPLOAD_BYTES: usize = 50 << 20;
/// How many guest instances may exist at once across all routes (the pooling allocator's size).
pub const DEFAULT_MAX_INSTANCES: u32 = 1000;
/// How many activations each route's history keeps (older versions can no longer be rolled
/// back to, and their files are garbage-collected).
pub const DEFAULT_HISTORY_LIMIT: usize = 20;
/// How often the engine's epoch advances: the granularity of CPU deadlines and guest yields.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

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
    /// Deadline for one request, from routing to the response body's last byte.
    pub request_timeout: Duration,
    /// Grace period for a retired version's in-flight requests.
    pub drain_timeout: Duration,
    /// Linear-memory cap per guest instance.
    pub max_memory_bytes: u64,
    /// Upload size limit for `PUT /v1/routes/{name}`.
    pub max_upload_bytes: usize,
    /// Instance slots in the pooling allocator; 0 allocates on demand instead.
    pub max_instances: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            admin_listen: DEFAULT_ADMIN_LISTEN.parse().expect("valid default address"),
            data_dir: None,
            history_limit: DEFAULT_HISTORY_LIMIT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            max_memory_bytes: DEFAULT_MAX_MEMORY_BYTES,
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            max_instances: DEFAULT_MAX_INSTANCES,
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

    /// Checks the values that have no valid range in their types.
    pub fn validate(&self) -> Result<(), String> {
        if self.request_timeout < EPOCH_TICK {
            return Err(format!(
                "the request timeout must be at least {} ms",
                EPOCH_TICK.as_millis()
            ));
        }
        if self.max_memory_bytes < 64 << 10 {
            return Err("the memory limit must be at least 64 KiB (one wasm page)".into());
        }
        if self.history_limit == 0 {
            return Err("the history limit must be at least 1".into());
        }
        if self.max_upload_bytes == 0 {
            return Err("the upload limit must be more than 0 bytes".into());
        }
        Ok(())
    }
}

/// Parses a duration written as `250ms`, `30s`, `2m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; write it like 500ms, 30s or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!(
            "`{text}` has an unknown unit; write it like 500ms, 30s or 2m"
        )),
    }
}

/// Parses a byte size written as `128MiB`, `64KiB`, `1GiB` or a bare number of bytes.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a size; write it like 128MiB or 65536"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" | "k" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        _ => return Err(format!("`{text}` has an unknown unit; use KiB, MiB or GiB")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5h").is_err());
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("128MiB"), Ok(128 << 20));
        assert_eq!(parse_bytes("64KiB"), Ok(64 << 10));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn defaults_are_valid() {
        assert!(Config::default().validate().is_ok());
        let bad = Config {
            max_memory_bytes: 10,
            ..Config::default()
        };
        assert!(bad.validate().is_err());
    }
}
