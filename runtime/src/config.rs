//! Validated server configuration, its named defaults, and the optional TOML file that mirrors
//! the `serve` flags ([`ConfigFile`]).
//!
//! Everything here is checked before a socket is bound or a guest compiled. It never touches the
//! network or the engine.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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
/// How long a component upload may take to arrive whole.
pub const DEFAULT_UPLOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest request deadline or drain grace a server accepts.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Requests one route may run at once; 0 leaves only the instance pool as the bound.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 0;
/// The largest request body a route accepts.
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 64 << 20;
/// The largest response body a route may send; 0 is no limit (the deadline still applies).
pub const DEFAULT_MAX_RESPONSE_BODY: u64 = 0;
/// How long compiling one upload may take before it is stopped and the deploy refused.
pub const DEFAULT_COMPILE_TIMEOUT: Duration = Duration::from_secs(60);
/// How much writable memory compiling one upload may use (the compile worker's `RLIMIT_DATA`).
pub const DEFAULT_COMPILE_MEMORY: u64 = 2 << 30;
/// The shortest compile deadline.
pub const MIN_COMPILE_TIMEOUT: Duration = Duration::from_millis(100);
/// The smallest compile memory limit: the compiler itself needs this much for any component.
pub const MIN_COMPILE_MEMORY: u64 = 32 << 20;
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

/// How often the engine's epoch advances: the granularity of CPU deadlines and guest yields.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);
/// The shortest request deadline (and idle timeout) a server or route accepts.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(10);

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
    /// Admin API tokens; empty leaves the admin API open (loopback only).
    pub admin_tokens: Vec<crate::auth::Token>,
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
    /// Default per-route concurrency limit (0: none but the instance pool).
    pub max_concurrency: u32,
    /// Default per-route request body limit (0: none).
    pub max_request_body: u64,
    /// Default per-route response body limit (0: none).
    pub max_response_body: u64,
    /// Where uploads are compiled. The binary uses a compile worker process; the compile
    /// limits are enforced only there.
    pub compiler: crate::compile::Compiler,
    /// Default (and largest) time one compile may take.
    pub compile_timeout: Duration,
    /// Default (and largest) memory one compile may use.
    pub compile_memory: u64,
    /// Let guests' outbound requests reach loopback, private and other non-public addresses
    /// through names in their allow-lists (cloud metadata addresses excepted). Without it only
    /// a rule naming the IP address itself reaches such an address.
    pub outbound_private: bool,
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
            admin_tokens: Vec::new(),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            signature_mode: crate::signing::Mode::Off,
            signing_keys: Vec::new(),
            guest_dirs: None,
            tls: None,
            admin_tls: None,
            upload_timeout: DEFAULT_UPLOAD_TIMEOUT,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            max_request_body: DEFAULT_MAX_REQUEST_BODY,
            max_response_body: DEFAULT_MAX_RESPONSE_BODY,
            compiler: crate::compile::Compiler::InProcess,
            compile_timeout: DEFAULT_COMPILE_TIMEOUT,
            compile_memory: DEFAULT_COMPILE_MEMORY,
            outbound_private: false,
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
    pub fn guest_dir(&self, name: &str) -> Result<Option<crate::version::GuestDir>, String> {
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
        Ok(Some(crate::version::GuestDir {
            name: name.into(),
            path: path.into(),
        }))
    }

    /// The limits a route gets unless its deploy overrides them.
    pub fn default_limits(&self) -> crate::version::Limits {
        crate::version::Limits {
            max_memory_bytes: usize::try_from(self.max_memory_bytes).unwrap_or(usize::MAX),
            request_timeout: self.request_timeout,
            max_concurrency: self.max_concurrency,
            max_request_body: self.max_request_body,
            max_response_body: self.max_response_body,
            compile_timeout: self.compile_timeout,
            compile_memory: self.compile_memory,
        }
    }

    /// Checks per-route `limits` against what this server allows, in a sentence.
    pub fn check_limits(&self, limits: &crate::version::Limits) -> Result<(), String> {
        if limits.max_memory_bytes as u64 > self.max_memory_bytes {
            return Err(format!(
                "max-memory may be at most the server's --max-memory ({} bytes); got {}",
                self.max_memory_bytes, limits.max_memory_bytes
            ));
        }
        if limits.max_memory_bytes < 64 << 10 {
            return Err("max-memory must be at least 64KiB (one wasm page)".into());
        }
        if limits.request_timeout > MAX_TIMEOUT {
            return Err("request-timeout may be at most 24h".into());
        }
        if limits.compile_timeout > self.compile_timeout {
            return Err(format!(
                "compile-timeout may be at most the server's --compile-timeout ({}); got {}",
                format_duration(self.compile_timeout),
                format_duration(limits.compile_timeout)
            ));
        }
        if limits.compile_timeout < MIN_COMPILE_TIMEOUT {
            return Err(format!(
                "compile-timeout must be at least {}",
                format_duration(MIN_COMPILE_TIMEOUT)
            ));
        }
        if limits.compile_memory > self.compile_memory {
            return Err(format!(
                "compile-memory may be at most the server's --compile-memory ({}); got {}",
                format_bytes(self.compile_memory),
                format_bytes(limits.compile_memory)
            ));
        }
        if limits.compile_memory < MIN_COMPILE_MEMORY {
            return Err(format!(
                "compile-memory must be at least {}",
                format_bytes(MIN_COMPILE_MEMORY)
            ));
        }
        if limits.request_timeout < MIN_TIMEOUT {
            return Err(format!(
                "request-timeout must be at least {} ms",
                MIN_TIMEOUT.as_millis()
            ));
        }
        Ok(())
    }

    /// Checks the values that have no valid range in their types.
    pub fn validate(&self) -> Result<(), String> {
        if self.request_timeout < MIN_TIMEOUT {
            return Err(format!(
                "the request timeout must be at least {} ms",
                MIN_TIMEOUT.as_millis()
            ));
        }
        if self.max_memory_bytes < 64 << 10 {
            return Err("the memory limit must be at least 64 KiB (one wasm page)".into());
        }
        if self.signature_mode != crate::signing::Mode::Off && self.signing_keys.is_empty() {
            return Err(
                "--signatures warn/require needs trusted public keys (--signing-keys FILE)".into(),
            );
        }
        if self.request_timeout > MAX_TIMEOUT || self.drain_timeout > MAX_TIMEOUT {
            return Err("the request timeout and the drain timeout may be at most 24h".into());
        }
        if self.admin_tokens.is_empty() && !self.admin_listen.ip().is_loopback() {
            return Err(format!(
                "the admin API would listen on {} without any token: anyone who reaches it could \
                 deploy code. Configure a token ($HANDOFF_ADMIN_TOKEN or --tokens-file) or keep \
                 --admin-listen on loopback",
                self.admin_listen
            ));
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
        if !(MIN_COMPILE_TIMEOUT..=MAX_TIMEOUT).contains(&self.compile_timeout) {
            return Err(format!(
                "the compile timeout must be between {} and 24h",
                format_duration(MIN_COMPILE_TIMEOUT)
            ));
        }
        if self.compile_memory < MIN_COMPILE_MEMORY {
            return Err(format!(
                "the compile memory limit must be at least {}",
                format_bytes(MIN_COMPILE_MEMORY)
            ));
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
        "m" => n
            .checked_mul(60)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("`{text}` is too long a duration")),
        _ => Err(format!(
            "`{text}` has an unknown unit; write it like 500ms, 30s or 2m"
        )),
    }
}

/// Writes a duration the way [`parse_duration`] reads it (`250ms`, `30s`, `2m`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) && ms > 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Writes a byte size the way [`parse_bytes`] reads it (`64KiB`, `128MiB`, `2GiB`, `1000`).
pub fn format_bytes(n: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n > 0 && n.is_multiple_of(1 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
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

/// The `serve --config FILE` file: the serve flags as TOML keys, spelled exactly like the flags
/// (`admin-listen`, `request-timeout`, ...). Every key is optional; unknown keys are refused.
/// Durations and sizes take the flags' text (`"500ms"`, `"128MiB"`) or a bare number (seconds,
/// bytes). Relative paths (`data-dir`, `tokens-file`, ...) are taken relative to the file's
/// directory. Admin tokens and trusted signing keys may also live in the file itself, as
/// `[[token]]` and `[[key]]` tables like those of `--tokens-file` and `--signing-keys`.
///
/// ```toml
/// listen = "0.0.0.0:8080"
/// admin-listen = "127.0.0.1:8081"
/// request-timeout = "10s"
/// max-memory = "64MiB"
/// signatures = "require"
///
/// [[token]]
/// name = "ci"
/// token = "a-long-random-secret"
/// scope = "deploy"
///
/// [[key]]
/// name = "release"
/// public = "base64 Ed25519 public key"
/// ```
#[derive(Debug, Default)]
pub struct ConfigFile {
    /// `--listen`
    pub listen: Option<SocketAddr>,
    /// `--admin-listen`
    pub admin_listen: Option<SocketAddr>,
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--request-timeout`
    pub request_timeout: Option<Duration>,
    /// `--drain-timeout`
    pub drain_timeout: Option<Duration>,
    /// `--max-memory`
    pub max_memory: Option<u64>,
    /// `--max-upload`
    pub max_upload: Option<u64>,
    /// `--max-instances`
    pub max_instances: Option<u32>,
    /// `--history`
    pub history: Option<usize>,
    /// `--tokens-file`
    pub tokens_file: Option<PathBuf>,
    /// `--max-concurrency`
    pub max_concurrency: Option<u32>,
    /// `--guest-dirs`
    pub guest_dirs: Option<PathBuf>,
    /// `--tls-cert`
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`
    pub tls_key: Option<PathBuf>,
    /// `--admin-tls-cert`
    pub admin_tls_cert: Option<PathBuf>,
    /// `--admin-tls-key`
    pub admin_tls_key: Option<PathBuf>,
    /// `--max-request-body`
    pub max_request_body: Option<u64>,
    /// `--max-response-body`
    pub max_response_body: Option<u64>,
    /// `--signatures`
    pub signatures: Option<crate::signing::Mode>,
    /// `--signing-keys`
    pub signing_keys: Option<PathBuf>,
    /// `[[token]]` tables: admin tokens kept in this file (added to `--tokens-file`'s).
    pub tokens: Vec<crate::auth::Token>,
    /// `[[key]]` tables: trusted signing keys kept in this file (added to `--signing-keys`').
    pub keys: Vec<crate::signing::TrustedKey>,
    /// `--max-connections`
    pub max_connections: Option<usize>,
    /// `--idle-timeout`
    pub idle_timeout: Option<Duration>,
    /// `--compile-timeout`
    pub compile_timeout: Option<Duration>,
    /// `--compile-memory`
    pub compile_memory: Option<u64>,
    /// `--ephemeral`
    pub ephemeral: Option<bool>,
    /// `--outbound-private`
    pub outbound_private: Option<bool>,
}

/// The raw file, before durations and sizes are parsed; kept apart so a bad value is reported
/// with its key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfigFile {
    listen: Option<String>,
    admin_listen: Option<String>,
    data_dir: Option<PathBuf>,
    request_timeout: Option<TextOrNumber>,
    drain_timeout: Option<TextOrNumber>,
    max_memory: Option<TextOrNumber>,
    max_upload: Option<TextOrNumber>,
    max_instances: Option<u32>,
    history: Option<usize>,
    ephemeral: Option<bool>,
    tokens_file: Option<PathBuf>,
    max_concurrency: Option<u32>,
    guest_dirs: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    admin_tls_cert: Option<PathBuf>,
    admin_tls_key: Option<PathBuf>,
    max_request_body: Option<TextOrNumber>,
    max_response_body: Option<TextOrNumber>,
    compile_timeout: Option<TextOrNumber>,
    compile_memory: Option<TextOrNumber>,
    max_connections: Option<usize>,
    idle_timeout: Option<TextOrNumber>,
    signatures: Option<crate::signing::Mode>,
    signing_keys: Option<PathBuf>,
    outbound_private: Option<bool>,
    #[serde(default)]
    token: Vec<crate::auth::TokenEntry>,
    #[serde(default)]
    key: Vec<crate::signing::KeyEntry>,
}

/// A duration or size: the flag's text, or a bare non-negative number.
enum TextOrNumber {
    Number(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for TextOrNumber {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = TextOrNumber;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("text like \"30s\" or \"128MiB\", or a whole number")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(TextOrNumber::Text(v.to_owned()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(TextOrNumber::Number(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(TextOrNumber::Number)
                    .map_err(|_| E::custom("a negative number is not a duration or a size"))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl TextOrNumber {
    fn text(&self) -> String {
        match self {
            Self::Number(n) => n.to_string(),
            Self::Text(text) => text.clone(),
        }
    }
}

/// Why a config file was refused. The message names the file and says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read the config file {path}: {error}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the wrong type or form.
    #[error("the config file {path} is invalid: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the key or the line and column.
        problem: String,
    },
}

impl ConfigFile {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigFileError::Unreadable {
            path: path.to_owned(),
            error,
        })?;
        let file =
            Self::parse(&text, path.parent().unwrap_or(Path::new(""))).map_err(|problem| {
                ConfigFileError::Invalid {
                    path: path.to_owned(),
                    problem,
                }
            })?;
        #[cfg(unix)]
        if !file.tokens.is_empty() {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o077 != 0
            {
                tracing::warn!(
                    file = %path.display(),
                    "the config file holds admin tokens and other users may read it; chmod 600 it"
                );
            }
        }
        Ok(file)
    }

    /// Parses `text`; a relative `data-dir` is joined to `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, String> {
        let raw: RawConfigFile = toml::from_str(text).map_err(|error| {
            let message = error.message().trim_end();
            match error.span() {
                Some(span) => {
                    let (line, column) = line_and_column(text, span.start);
                    format!("{message} (line {line}, column {column})")
                }
                None => message.to_owned(),
            }
        })?;
        let keyed = |key: &str, problem: String| format!("`{key}`: {problem}");
        let address = |key: &str, text: Option<String>| {
            text.map(|t| {
                t.parse::<SocketAddr>().map_err(|_| {
                    keyed(
                        key,
                        format!("`{t}` is not an address; write it like \"127.0.0.1:8080\""),
                    )
                })
            })
            .transpose()
        };
        let duration = |key: &str, value: Option<TextOrNumber>| {
            value
                .map(|v| parse_duration(&v.text()).map_err(|e| keyed(key, e)))
                .transpose()
        };
        let size = |key: &str, value: Option<TextOrNumber>| {
            value
                .map(|v| parse_bytes(&v.text()).map_err(|e| keyed(key, e)))
                .transpose()
        };
        Ok(Self {
            listen: address("listen", raw.listen)?,
            admin_listen: address("admin-listen", raw.admin_listen)?,
            data_dir: raw.data_dir.map(|dir| base.join(dir)),
            request_timeout: duration("request-timeout", raw.request_timeout)?,
            drain_timeout: duration("drain-timeout", raw.drain_timeout)?,
            max_memory: size("max-memory", raw.max_memory)?,
            max_upload: size("max-upload", raw.max_upload)?,
            max_instances: raw.max_instances,
            history: raw.history,
            ephemeral: raw.ephemeral,
            tokens_file: raw.tokens_file.map(|file| base.join(file)),
            max_concurrency: raw.max_concurrency,
            guest_dirs: raw.guest_dirs.map(|dir| base.join(dir)),
            tls_cert: raw.tls_cert.map(|file| base.join(file)),
            tls_key: raw.tls_key.map(|file| base.join(file)),
            admin_tls_cert: raw.admin_tls_cert.map(|file| base.join(file)),
            admin_tls_key: raw.admin_tls_key.map(|file| base.join(file)),
            max_request_body: size("max-request-body", raw.max_request_body)?,
            max_response_body: size("max-response-body", raw.max_response_body)?,
            compile_timeout: duration("compile-timeout", raw.compile_timeout)?,
            compile_memory: size("compile-memory", raw.compile_memory)?,
            signatures: raw.signatures,
            signing_keys: raw.signing_keys.map(|file| base.join(file)),
            tokens: crate::auth::tokens_from(raw.token, "the config file")?,
            keys: crate::signing::keys_from(raw.key, "the config file")?,
            max_connections: raw.max_connections,
            idle_timeout: duration("idle-timeout", raw.idle_timeout)?,
            outbound_private: raw.outbound_private,
        })
    }
}

/// The 1-based line and column of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_mirrors_the_flags() {
        let file = ConfigFile::parse(
            "listen = \"127.0.0.1:0\"\nadmin-listen = \"127.0.0.1:9\"\nrequest-timeout = \"250ms\"\n\
             drain-timeout = 5\nmax-memory = \"64MiB\"\nmax-upload = 1024\nmax-instances = 0\n\
             data-dir = \"state\"\n",
            Path::new("/etc/handoff"),
        )
        .unwrap();
        assert_eq!(file.listen, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(file.admin_listen, Some("127.0.0.1:9".parse().unwrap()));
        assert_eq!(file.request_timeout, Some(Duration::from_millis(250)));
        assert_eq!(file.drain_timeout, Some(Duration::from_secs(5)));
        assert_eq!(file.max_memory, Some(64 << 20));
        assert_eq!(file.max_upload, Some(1024));
        assert_eq!(file.max_instances, Some(0));
        assert_eq!(file.data_dir, Some(PathBuf::from("/etc/handoff/state")));
    }

    #[test]
    fn a_config_file_may_hold_tokens_keys_and_the_new_limits() {
        let file = ConfigFile::parse(
            "signatures = \"warn\"\ncompile-timeout = \"90s\"\ncompile-memory = \"1GiB\"\n\
             max-connections = 64\nidle-timeout = \"3s\"\n\
             [[token]]\nname = \"ci\"\ntoken = \"0123456789abcdef0123\"\nscope = \"deploy\"\n\
             [[key]]\nname = \"release\"\npublic = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n",
            Path::new(""),
        )
        .unwrap();
        assert_eq!(file.signatures, Some(crate::signing::Mode::Warn));
        assert_eq!(file.compile_timeout, Some(Duration::from_secs(90)));
        assert_eq!(file.compile_memory, Some(1 << 30));
        assert_eq!(file.max_connections, Some(64));
        assert_eq!(file.idle_timeout, Some(Duration::from_secs(3)));
        assert_eq!(file.tokens.len(), 1);
        assert_eq!(file.tokens[0].name, "ci");
        assert_eq!(file.keys.len(), 1);
        let twice = ConfigFile::parse(
            "[[token]]\nname = \"ci\"\ntoken = \"0123456789abcdef0123\"\nscope = \"deploy\"\n\
             [[token]]\nname = \"ci\"\ntoken = \"fedcba9876543210fedc\"\nscope = \"read\"\n",
            Path::new(""),
        )
        .unwrap_err();
        assert!(twice.contains("names token `ci` twice"), "{twice}");
        let short = ConfigFile::parse(
            "[[token]]\nname = \"ci\"\ntoken = \"short\"\nscope = \"deploy\"\n",
            Path::new(""),
        )
        .unwrap_err();
        assert!(short.starts_with("in the config file"), "{short}");
    }

    #[test]
    fn a_config_file_names_what_is_wrong() {
        let unknown = ConfigFile::parse(
            "listen = \"127.0.0.1:0\"\ncolour = \"blue\"\n",
            Path::new(""),
        )
        .unwrap_err();
        assert!(unknown.contains("unknown field `colour`"), "{unknown}");
        assert!(unknown.contains("line 2, column 1"), "{unknown}");
        let bad_value = ConfigFile::parse("request-timeout = \"soon\"", Path::new("")).unwrap_err();
        assert!(bad_value.starts_with("`request-timeout`:"), "{bad_value}");
        let bad_address = ConfigFile::parse("listen = \"here\"", Path::new("")).unwrap_err();
        assert!(bad_address.starts_with("`listen`:"), "{bad_address}");
        let bad_type = ConfigFile::parse("max-instances = \"many\"", Path::new("")).unwrap_err();
        assert!(bad_type.contains("line 1"), "{bad_type}");
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(
            parse_duration("999999999999999999m").is_err(),
            "overflow is an error, not a panic"
        );
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
