//! The table of per-route limits ([`route_settings!`]): each limit's field, type, default
//! constant, name, help text and check, declared once, and everything generated from it
//! ([`Limits`], [`LimitOverrides`], [`LimitsStatus`], [`SETTINGS`], [`markdown_table`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::Value;
use crate::units::{format_bytes, format_duration};

/// The longest request deadline, drain grace or idle timeout a server accepts.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// The shortest request deadline (and idle timeout) a server or route accepts.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(10);
/// The shortest compile deadline.
pub const MIN_COMPILE_TIMEOUT: Duration = Duration::from_millis(100);
/// The smallest compile memory limit: the compiler itself needs this much for any component.
pub const MIN_COMPILE_MEMORY: u64 = 32 << 20;
/// The smallest memory limit: one wasm page.
pub const MIN_MEMORY: usize = 64 << 10;

/// How long one request may run, guest CPU and wall clock, before it gets a 504.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest linear memory one guest instance may use, all its memories together.
pub const DEFAULT_MAX_MEMORY_BYTES: usize = 128 << 20;
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
/// The largest value a route's guests may write to the key-value store.
pub const DEFAULT_KV_MAX_VALUE: u64 = 1 << 20;
/// The most keys a route may keep in one bucket.
pub const DEFAULT_KV_MAX_KEYS: u32 = 100_000;
/// The most bytes (keys and values) a route may keep in one bucket.
pub const DEFAULT_KV_MAX_BYTES: u64 = 256 << 20;
/// Requests one instance serves before it is dropped: 1 is a fresh instance per request.
pub const DEFAULT_REUSE: u32 = 1;
/// The most requests one instance may serve (`reuse`).
pub const MAX_REUSE: u32 = 1_000_000;
/// Requests one instance of a WASI 0.3 version serves at the same time: 1, one at a time.
pub const DEFAULT_INSTANCE_CONCURRENCY: u32 = 1;
/// The most requests one instance may serve at the same time (`instance-concurrency`).
pub const MAX_INSTANCE_CONCURRENCY: u32 = 1_000;
/// The largest `kv-max-value` a route may set.
pub const MAX_KV_VALUE: u64 = 64 << 20;

/// How long, and with how much memory, one compile may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileLimits {
    /// Wall-clock time for the whole compile.
    pub timeout: Duration,
    /// Writable memory of the worker process, compiler included.
    pub memory_bytes: u64,
}

/// One per-route setting, as the table below declares it.
#[derive(Clone, Copy)]
pub struct Setting {
    /// Its name: the deploy query key (`max-memory=`), the deploy flag and the server flag
    /// (`--max-memory`), and the `--config` file key.
    pub name: &'static str,
    /// Its key in the status JSON's `limits` object.
    pub status_key: &'static str,
    /// What it means, as written in the table (see [`Setting::help`]).
    pub doc: &'static str,
    /// The placeholder in help texts.
    pub metavar: &'static str,
    /// The built-in default, written as the flag takes it.
    pub default: fn() -> String,
    /// Checks the text form of a value.
    pub parse: fn(&str) -> Result<(), String>,
    /// Sets this setting in `limits` from its text form.
    pub set: fn(&mut Limits, &str) -> Result<(), String>,
    /// This setting's value in `limits`, written as the flag takes it.
    pub get: fn(&Limits) -> String,
}

impl Setting {
    /// What it means, as one paragraph.
    pub fn help(&self) -> String {
        self.doc.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

impl std::fmt::Debug for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// The setting named `name`.
pub fn setting(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

macro_rules! route_settings {
    ($(
        $(#[doc = $doc:literal])+
        $field:ident: $ty:ty = $default:expr;
            name $name:literal, status $status:ident, check $check:expr;
    )+) => {
        /// The limits a route's requests (and its compiles) run under. The server's flags give
        /// the defaults; a deploy may set each one for its route. Fixed per version.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(default)]
        pub struct Limits {
            $( $(#[doc = $doc])+ pub $field: $ty, )+
        }

        impl Default for Limits {
            /// The built-in defaults: the `DEFAULT_*` constants.
            fn default() -> Self {
                Self { $( $field: $default, )+ }
            }
        }

        /// Limits a deploy sets for its route; `None` keeps the route's current value (the
        /// server's default for a new route).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct LimitOverrides {
            $( $(#[doc = $doc])+ pub $field: Option<$ty>, )+
        }

        impl LimitOverrides {
            /// `base` with these overrides applied.
            pub fn apply(&self, base: Limits) -> Limits {
                Limits { $( $field: self.$field.unwrap_or(base.$field), )+ }
            }

            /// Sets the setting `name` from its text form. `Ok(false)`: there is no such
            /// setting.
            pub fn set(&mut self, name: &str, text: &str) -> Result<bool, String> {
                match name {
                    $( $name => {
                        let value = <$ty as Value>::parse(text)
                            .map_err(|e| format!("{}: {e}", $name))?;
                        self.$field = Some(value);
                        Ok(true)
                    } )+
                    _ => Ok(false),
                }
            }

            /// The overrides as `(name, text)` pairs, in table order (for a deploy query).
            pub fn pairs(&self) -> Vec<(&'static str, String)> {
                let mut pairs = Vec::new();
                $( if let Some(value) = &self.$field {
                    pairs.push(($name, <$ty as Value>::text(value)));
                } )+
                pairs
            }
        }

        /// A route's limits as the admin API shows them (0: no limit).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub struct LimitsStatus {
            $( $(#[doc = $doc])+ pub $status: <$ty as Value>::Status, )+
        }

        impl From<&Limits> for LimitsStatus {
            fn from(limits: &Limits) -> Self {
                Self { $( $status: Value::status(&limits.$field), )+ }
            }
        }

        impl From<&LimitsStatus> for Limits {
            fn from(status: &LimitsStatus) -> Self {
                Self { $( $field: <$ty as Value>::from_status(status.$status), )+ }
            }
        }

        impl Limits {
            /// Checks these (a route's) limits against `server`'s, in a sentence naming the
            /// setting.
            pub fn check(&self, server: &Limits) -> Result<(), String> {
                $( ($check)(self.$field, server.$field)?; )+
                Ok(())
            }
        }

        /// Every per-route setting, in table order.
        pub const SETTINGS: &[Setting] = &[
            $( Setting {
                name: $name,
                status_key: stringify!($status),
                doc: concat!($( $doc, "\n" ),+),
                metavar: <$ty as Value>::METAVAR,
                default: || <$ty as Value>::text(&$default),
                parse: |text| <$ty as Value>::parse(text).map(drop),
                set: |limits, text| {
                    limits.$field = <$ty as Value>::parse(text)?;
                    Ok(())
                },
                get: |limits| <$ty as Value>::text(&limits.$field),
            }, )+
        ];
    };
}

route_settings! {
    /// Linear memory one instance may use, all of its memories together (e.g. 64MiB); a growth
    /// past it traps. The server's value is also the most a route may set (it sizes the
    /// instance pool).
    max_memory_bytes: usize = DEFAULT_MAX_MEMORY_BYTES;
        name "max-memory", status max_memory_bytes, check |value: usize, server: usize| {
            if value > server {
                return Err(format!(
                    "max-memory may be at most the server's --max-memory ({} bytes); got {value}",
                    server
                ));
            }
            if value < MIN_MEMORY {
                return Err("max-memory must be at least 64KiB (one wasm page)".into());
            }
            Ok(())
        };
    /// Deadline per request, guest CPU and wall clock, response body and work after the
    /// response included (e.g. 500ms, 30s, 2m); past it: 504 (408 while the guest waits for a
    /// request body the client has not sent), and a response its client has not read is reset.
    request_timeout: Duration = DEFAULT_REQUEST_TIMEOUT;
        name "request-timeout", status request_timeout_ms, check |value: Duration, _| {
            if value > MAX_TIMEOUT {
                return Err("request-timeout may be at most 24h".into());
            }
            if value < MIN_TIMEOUT {
                return Err(format!(
                    "request-timeout must be at least {} ms",
                    MIN_TIMEOUT.as_millis()
                ));
            }
            Ok(())
        };
    /// Requests a route may run at once; more get 503 with Retry-After (0: only the instance
    /// pool bounds them). A request holds its slot until its response body has ended and its
    /// guest has returned.
    max_concurrency: u32 = DEFAULT_MAX_CONCURRENCY;
        name "max-concurrency", status max_concurrency, check |_: u32, _| Ok::<(), String>(());
    /// Largest request body a route accepts (e.g. 1MiB; 0: no limit); larger gets 413, a
    /// chunked one too if it goes over before the response head.
    max_request_body: u64 = DEFAULT_MAX_REQUEST_BODY;
        name "max-request-body", status max_request_body, check |_: u64, _| Ok::<(), String>(());
    /// Largest response body a route may send (0: no limit); longer bodies are cut off with an
    /// error.
    max_response_body: u64 = DEFAULT_MAX_RESPONSE_BODY;
        name "max-response-body", status max_response_body, check |_: u64, _| Ok::<(), String>(());
    /// How long compiling a route's component may take (e.g. 30s); a slower compile is stopped
    /// and the deploy refused with 422. The server's value is also the most a route may set.
    compile_timeout: Duration = DEFAULT_COMPILE_TIMEOUT;
        name "compile-timeout", status compile_timeout_ms, check |value: Duration, server: Duration| {
            if value > server {
                return Err(format!(
                    "compile-timeout may be at most the server's --compile-timeout ({}); got {}",
                    format_duration(server),
                    format_duration(value)
                ));
            }
            if value < MIN_COMPILE_TIMEOUT {
                return Err(format!(
                    "compile-timeout must be at least {}",
                    format_duration(MIN_COMPILE_TIMEOUT)
                ));
            }
            Ok(())
        };
    /// How much memory compiling a route's component may use (e.g. 512MiB); a compile that
    /// needs more is stopped and the deploy refused with 422. The server's value is also the
    /// most a route may set.
    compile_memory: u64 = DEFAULT_COMPILE_MEMORY;
        name "compile-memory", status compile_memory_bytes, check |value: u64, server: u64| {
            if value > server {
                return Err(format!(
                    "compile-memory may be at most the server's --compile-memory ({}); got {}",
                    format_bytes(server),
                    format_bytes(value)
                ));
            }
            if value < MIN_COMPILE_MEMORY {
                return Err(format!(
                    "compile-memory must be at least {}",
                    format_bytes(MIN_COMPILE_MEMORY)
                ));
            }
            Ok(())
        };
    /// Largest value a route's guests may write to the key-value store (e.g. 64KiB, at most
    /// 64MiB); a larger write fails in the guest with the interface's error.
    kv_max_value: u64 = DEFAULT_KV_MAX_VALUE;
        name "kv-max-value", status kv_max_value_bytes, check |value: u64, _| {
            if value == 0 || value > MAX_KV_VALUE {
                return Err(format!(
                    "kv-max-value must be between 1 byte and {}",
                    format_bytes(MAX_KV_VALUE)
                ));
            }
            Ok(())
        };
    /// Keys a route may keep in each key-value bucket it writes (0: no limit); a write that
    /// would add one more fails in the guest with the interface's error.
    kv_max_keys: u32 = DEFAULT_KV_MAX_KEYS;
        name "kv-max-keys", status kv_max_keys, check |_: u32, _| Ok::<(), String>(());
    /// Bytes of keys and values a route may keep in each key-value bucket it writes (e.g.
    /// 1GiB; 0: no limit); a write that would grow the bucket past it fails in the guest.
    kv_max_bytes: u64 = DEFAULT_KV_MAX_BYTES;
        name "kv-max-bytes", status kv_max_bytes, check |_: u64, _| Ok::<(), String>(());
    /// Requests one instance may serve, one after another (1: a fresh instance per request,
    /// the default). Above 1, guest memory persists between the requests an instance serves
    /// (see "Instance reuse" in docs/data-plane.md); a trap, a deadline, a cut-off or an
    /// unfinished response drops the instance, and so does a second idle.
    reuse: u32 = DEFAULT_REUSE;
        name "reuse", status reuse, check |value: u32, _| {
            if !(1..=MAX_REUSE).contains(&value) {
                return Err(format!("reuse must be between 1 and {MAX_REUSE}; got {value}"));
            }
            Ok(())
        };
    /// Requests one instance of a WASI 0.3 version may serve at the same time (1: one at a
    /// time, the default); with `reuse` it bounds how many an instance serves in its lifetime.
    /// A trap drops the instance and fails every request it was serving then. WASI 0.2
    /// versions serve one at a time: a deploy that sets it above 1 with a 0.2 component is
    /// refused; a value the route carries over is kept for its 0.3 versions.
    instance_concurrency: u32 = DEFAULT_INSTANCE_CONCURRENCY;
        name "instance-concurrency", status instance_concurrency, check |value: u32, _| {
            if !(1..=MAX_INSTANCE_CONCURRENCY).contains(&value) {
                return Err(format!(
                    "instance-concurrency must be between 1 and {MAX_INSTANCE_CONCURRENCY}; got {value}"
                ));
            }
            Ok(())
        };
}

/// The per-route settings as a Markdown table (a test keeps the copy in `docs/settings.md`
/// equal to this).
pub fn markdown_table() -> String {
    let mut table = String::from(
        "| setting (`serve` and `deploy` flag, deploy query key) | server default | meaning |\n|---|---|---|\n",
    );
    for setting in SETTINGS {
        table.push_str(&format!(
            "| `{}` | `{}` | {} |\n",
            setting.name,
            (setting.default)(),
            setting.help()
        ));
    }
    table
}

impl Limits {
    /// The compile limits among these.
    pub fn compile(&self) -> CompileLimits {
        CompileLimits {
            timeout: self.compile_timeout,
            memory_bytes: self.compile_memory,
        }
    }

    /// Checks the server's own limits (the defaults every route starts from), in a sentence.
    pub fn check_server(&self) -> Result<(), String> {
        if self.max_memory_bytes < MIN_MEMORY {
            return Err("the memory limit must be at least 64 KiB (one wasm page)".into());
        }
        if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&self.request_timeout) {
            return Err(format!(
                "the request timeout must be between {} ms and 24h",
                MIN_TIMEOUT.as_millis()
            ));
        }
        if !(MIN_COMPILE_TIMEOUT..=MAX_TIMEOUT).contains(&self.compile_timeout) {
            return Err(format!(
                "the compile timeout must be between {} and 24h",
                format_duration(MIN_COMPILE_TIMEOUT)
            ));
        }
        if !(1..=MAX_REUSE).contains(&self.reuse) {
            return Err(format!("reuse must be between 1 and {MAX_REUSE}"));
        }
        if !(1..=MAX_INSTANCE_CONCURRENCY).contains(&self.instance_concurrency) {
            return Err(format!(
                "instance-concurrency must be between 1 and {MAX_INSTANCE_CONCURRENCY}"
            ));
        }
        if self.compile_memory < MIN_COMPILE_MEMORY {
            return Err(format!(
                "the compile memory limit must be at least {}",
                format_bytes(MIN_COMPILE_MEMORY)
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_reads_back_what_it_writes() {
        let mut limits = Limits::default();
        for setting in SETTINGS {
            let default = (setting.default)();
            (setting.parse)(&default).unwrap_or_else(|e| panic!("{}: {e}", setting.name));
            (setting.set)(&mut limits, &default).unwrap();
            assert_eq!((setting.get)(&limits), default, "{}", setting.name);
        }
        assert_eq!(limits, Limits::default());
        assert!(Limits::default().check(&Limits::default()).is_ok());
        assert!(Limits::default().check_server().is_ok());
    }

    #[test]
    fn overrides_apply_by_name_and_round_trip() {
        let mut overrides = LimitOverrides::default();
        assert_eq!(overrides.set("max-memory", "64MiB"), Ok(true));
        assert_eq!(overrides.set("request-timeout", "2s"), Ok(true));
        assert_eq!(overrides.set("colour", "blue"), Ok(false));
        assert!(
            overrides
                .set("max-concurrency", "-1")
                .unwrap_err()
                .contains("whole number")
        );
        let limits = overrides.apply(Limits::default());
        assert_eq!(limits.max_memory_bytes, 64 << 20);
        assert_eq!(limits.request_timeout, Duration::from_secs(2));
        assert_eq!(
            limits.max_request_body,
            Limits::default().max_request_body,
            "what a deploy leaves out keeps its value"
        );
        assert_eq!(
            overrides.pairs(),
            [
                ("max-memory", "64MiB".to_owned()),
                ("request-timeout", "2s".to_owned())
            ]
        );
        let status = LimitsStatus::from(&limits);
        assert_eq!(status.request_timeout_ms, 2000);
        assert_eq!(Limits::from(&status), limits);
    }

    #[test]
    fn a_route_may_not_exceed_the_server() {
        let server = Limits::default();
        let mut route = server;
        route.max_memory_bytes = server.max_memory_bytes + 1;
        assert!(
            route
                .check(&server)
                .unwrap_err()
                .contains("at most the server's")
        );
        let mut route = server;
        route.compile_timeout = Duration::from_millis(1);
        assert!(route.check(&server).unwrap_err().contains("at least 100ms"));
    }

    #[test]
    fn the_settings_page_lists_every_setting_as_the_table_says() {
        let page = include_str!("../../../docs/settings.md");
        let table = markdown_table();
        assert!(
            page.contains(&table),
            "docs/settings.md's per-route settings table is out of date; replace it with:\n{table}"
        );
    }

    #[test]
    fn records_without_newer_limits_get_the_defaults() {
        let old: Limits = serde_json::from_str(
            r#"{"max_memory_bytes":1048576,"request_timeout":{"secs":5,"nanos":0},
                "max_concurrency":2,"max_request_body":10,"max_response_body":0}"#,
        )
        .unwrap();
        assert_eq!(old.max_memory_bytes, 1 << 20);
        assert_eq!(old.compile_timeout, DEFAULT_COMPILE_TIMEOUT);
        assert_eq!(old.compile_memory, DEFAULT_COMPILE_MEMORY);
    }
}
