//! A version: one immutable, compiled and pre-instantiated guest, named by the sha256 digest of
//! its bytes, with its in-flight tracker and counters.
//!
//! A version is shared as `Arc<Version>`. The route table holds one reference while it is
//! active; every in-flight request holds an [`InFlight`] token. A version must never be mutated
//! after it is built, except through its atomics.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest as _, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::host::Host;

/// The sha256 digest of a guest's bytes, written `sha256:<64 hex digits>`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Digest(Arc<str>);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        let hash = Sha256::digest(bytes);
        let mut text = String::with_capacity(7 + 64);
        text.push_str("sha256:");
        for byte in hash {
            text.push_str(&format!("{byte:02x}"));
        }
        Self(text.into())
    }

    /// Parses `sha256:<64 lowercase hex digits>`.
    pub fn parse(text: &str) -> Option<Self> {
        let hex = text.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Self(text.into()))
    }

    /// The full `sha256:...` text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, for logs.
    pub fn short(&self) -> &str {
        &self.0[7..19]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Deploy-time key/value configuration, handed to the guest as its environment variables.
/// Sorted by key; keys are unique.
pub type RouteConfig = Arc<[(String, String)]>;

/// The most configuration pairs one route may have.
pub const MAX_CONFIG_PAIRS: usize = 64;
/// The longest configuration value, in bytes.
pub const MAX_CONFIG_VALUE: usize = 4096;

/// Parses `KEY=VALUE` pairs into a route configuration, saying what is wrong in a sentence.
/// Keys are environment-variable names: a letter or `_`, then letters, digits or `_`.
pub fn parse_config<'a>(pairs: impl IntoIterator<Item = &'a str>) -> Result<RouteConfig, String> {
    let mut config: Vec<(String, String)> = Vec::new();
    for pair in pairs {
        if pair.is_empty() {
            continue;
        }
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!(
                "config `{}` needs the form KEY=VALUE",
                pair.escape_debug()
            ));
        };
        let valid_key = key.len() <= 128
            && key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_key {
            return Err(format!(
                "config key `{}` is not usable: start with a letter or `_`, then letters, digits or `_` (at most 128)",
                key.escape_debug()
            ));
        }
        if value.len() > MAX_CONFIG_VALUE {
            return Err(format!(
                "config value of `{key}` is longer than {MAX_CONFIG_VALUE} bytes"
            ));
        }
        if value.contains('\0') {
            return Err(format!("config value of `{key}` contains a NUL byte"));
        }
        match config.iter_mut().find(|(k, _)| k == key) {
            Some(existing) => existing.1 = value.to_owned(),
            None => config.push((key.to_owned(), value.to_owned())),
        }
    }
    if config.len() > MAX_CONFIG_PAIRS {
        return Err(format!(
            "a route may have at most {MAX_CONFIG_PAIRS} config values; got {}",
            config.len()
        ));
    }
    config.sort();
    Ok(config.into())
}

/// How a route runs its versions, set at deploy time: the guest's config, its limits and its
/// outbound allow-list.
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

/// Limits a route's requests run under: the server's flags give the defaults, a deploy may
/// override each one for its route. Fixed per version at deploy time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Linear-memory cap per instance.
    pub max_memory_bytes: usize,
    /// CPU and wall-clock deadline per request.
    pub request_timeout: Duration,
    /// Requests the route may run at once (0: only the instance pool bounds it); more get 503.
    pub max_concurrency: u32,
    /// Largest request body (0: no limit); larger gets 413.
    pub max_request_body: u64,
    /// Largest response body (0: no limit); a longer one is cut off with an error.
    pub max_response_body: u64,
    /// How long compiling the route's component may take (a recompile after a restart too).
    #[serde(default = "default_compile_timeout")]
    pub compile_timeout: Duration,
    /// How much memory compiling the route's component may use.
    #[serde(default = "default_compile_memory")]
    pub compile_memory: u64,
}

fn default_compile_timeout() -> Duration {
    crate::config::DEFAULT_COMPILE_TIMEOUT
}

fn default_compile_memory() -> u64 {
    crate::config::DEFAULT_COMPILE_MEMORY
}

impl Limits {
    /// The compile limits among these.
    pub fn compile(&self) -> crate::compile::CompileLimits {
        crate::compile::CompileLimits {
            timeout: self.compile_timeout,
            memory_bytes: self.compile_memory,
        }
    }
}

/// One compiled, pre-instantiated guest serving (or having served) a route.
pub struct Version {
    /// The digest of the component's bytes: the version's name.
    pub digest: Digest,
    /// The digest's first 12 hex digits, shared into every request's logs without allocating.
    pub short: Arc<str>,
    /// The route this version was deployed to.
    pub route: Arc<str>,
    /// The pre-instantiated component; cloning it is cheap.
    pub pre: ProxyPre<Host>,
    /// Limits for its requests.
    pub limits: Limits,
    /// Its deploy-time configuration (the guest's environment).
    pub config: RouteConfig,
    /// Where its guests may send outbound HTTP requests.
    pub outbound: crate::outbound::Outbound,
    /// The directory mounted read-only at `/data`, if any.
    pub dir: Option<GuestDir>,
    /// What every request of this version shares: the opened directory, the log budget.
    pub host: crate::host::HostTemplate,
    /// Size of the uploaded component.
    pub size_bytes: usize,
    /// How long compiling and linking took.
    pub compile_time: Duration,
    /// When it was deployed.
    pub deployed_at: SystemTime,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    failures: AtomicU64,
    retired: AtomicBool,
    drained: Notify,
    cut_off: CancellationToken,
}

impl Version {
    /// Wraps a freshly compiled guest.
    pub fn new(
        digest: Digest,
        route: Arc<str>,
        pre: ProxyPre<Host>,
        settings: Settings,
        size_bytes: usize,
        compile_time: Duration,
    ) -> Self {
        let Settings {
            config,
            limits,
            outbound,
            dir,
        } = settings;
        let short: Arc<str> = digest.short().into();
        let host = crate::host::HostTemplate::new(&route, &short, dir.as_ref());
        Self {
            short,
            digest,
            route,
            pre,
            limits,
            config,
            outbound,
            dir,
            host,
            size_bytes,
            compile_time,
            deployed_at: SystemTime::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            retired: AtomicBool::new(false),
            drained: Notify::new(),
            cut_off: CancellationToken::new(),
        }
    }

    /// Takes an in-flight token for a request on this version through a route whose
    /// `route_in_flight` count the caller has already raised. Call it while the route table
    /// snapshot that yielded this version is still held, so a retirement can never miss it.
    pub fn enter(self: &Arc<Self>, route_in_flight: Arc<AtomicUsize>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone(), route_in_flight)
    }

    /// This version's settings.
    pub fn settings(&self) -> Settings {
        Settings {
            config: self.config.clone(),
            limits: self.limits,
            outbound: self.outbound.clone(),
            dir: self.dir.clone(),
        }
    }

    /// Requests currently holding this version.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Requests routed to this version so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests on this version that ended in a guest failure (trap, timeout, no response).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Counts a guest failure.
    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Resolves when the version's requests must stop at once (its drain deadline passed, or
    /// the server is shutting down hard).
    pub fn cut_off(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cut_off.cancelled()
    }

    /// Ends this version's in-flight requests now.
    pub fn cut_off_now(&self) {
        self.cut_off.cancel();
    }

    /// Stops new requests from counting as on time, then waits up to `grace` for the in-flight
    /// ones. Returns what happened. Must be called only after the version has left the route
    /// table and every reader of the old table is gone.
    pub async fn drain(&self, grace: Duration) -> DrainOutcome {
        let started = Instant::now();
        self.retired.store(true, Ordering::SeqCst);
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let remaining = self.in_flight();
            if remaining == 0 {
                return DrainOutcome::Drained {
                    waited: started.elapsed(),
                };
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = &mut deadline => {
                    self.cut_off.cancel();
                    return DrainOutcome::CutOff { remaining };
                }
            }
        }
    }
}

impl Drop for Version {
    fn drop(&mut self) {
        tracing::debug!(route = %self.route, version = %self.digest, "version freed");
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every in-flight request finished.
    Drained {
        /// How long that took.
        waited: Duration,
    },
    /// The grace period ran out; these requests were cut off.
    CutOff {
        /// In-flight requests at the deadline.
        remaining: usize,
    },
}

/// Proof that a request holds a version: from routing until its response body's last byte is
/// written or the client goes away. Dropping it is what lets a retired version drain.
pub struct InFlight(Arc<Version>, Arc<AtomicUsize>);

impl InFlight {
    /// The version this request runs on.
    pub fn version(&self) -> &Arc<Version> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.1.fetch_sub(1, Ordering::SeqCst);
        let version = &self.0;
        if version.in_flight.fetch_sub(1, Ordering::SeqCst) == 1
            && version.retired.load(Ordering::SeqCst)
        {
            version.drained.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_pairs_are_validated_and_sorted() {
        let config = parse_config(["B=2", "A=1=one", "B=3", ""]).unwrap();
        assert_eq!(
            &config[..],
            [("A".into(), "1=one".into()), ("B".into(), "3".into())]
        );
        assert!(parse_config(["novalue"]).unwrap_err().contains("KEY=VALUE"));
        assert!(parse_config(["1X=a"]).unwrap_err().contains("not usable"));
        assert!(parse_config(["A-B=a"]).unwrap_err().contains("not usable"));
        let long = format!("K={}", "x".repeat(MAX_CONFIG_VALUE + 1));
        assert!(parse_config([long.as_str()]).is_err());
    }

    #[test]
    fn digest_is_sha256_hex() {
        let d = Digest::of(b"abc");
        assert_eq!(
            d.as_str(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.short(), "ba7816bf8f01");
    }
}
