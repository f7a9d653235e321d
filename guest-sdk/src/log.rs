//! Guest logging: level-tagged lines on stderr, which the host turns into log events tagged
//! with the route and version. Nothing here buffers or retries; a line is written whole or not
//! at all.
//!
//! ```
//! use handoff_sdk::log;
//!
//! log::info!("listing {} items", 3);
//! log::warn!("slow upstream: {} ms", 1200);
//! ```
//!
//! Each line starts with its level (`ERROR`, `WARN`, `INFO`, `DEBUG`) and a space; every line
//! of a multi-line message carries it. Lines below the route's level are not written: the
//! level is the deploy-time config `HANDOFF_LOG` (`error`, `warn`, `info`, `debug` or `off`),
//! `info` by default, so `debug!` lines appear only on routes deployed with
//! `config=HANDOFF_LOG=debug`.

use std::fmt;
use std::sync::OnceLock;

/// The config key that sets the lowest level written.
pub const LEVEL_KEY: &str = "HANDOFF_LOG";

/// How important a log line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Something failed.
    Error,
    /// Something is wrong but was handled.
    Warn,
    /// What happened.
    Info,
    /// Details for finding a bug.
    Debug,
}

impl Level {
    /// The tag that starts each line: `ERROR`, `WARN`, `INFO`, `DEBUG`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }
}

/// Whether lines at `level` are written on this route (see the module documentation).
pub fn enabled(level: Level) -> bool {
    static MAX: OnceLock<Option<Level>> = OnceLock::new();
    let max = *MAX.get_or_init(|| parse_level(crate::config::get(LEVEL_KEY).as_deref()));
    max.is_some_and(|max| level <= max)
}

/// The most verbose level a `HANDOFF_LOG` value allows; `None` is `off`. Unknown values
/// (and no value) mean `info`.
fn parse_level(value: Option<&str>) -> Option<Level> {
    match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        Some("off") => None,
        Some("error") => Some(Level::Error),
        Some("warn") => Some(Level::Warn),
        Some("debug") => Some(Level::Debug),
        _ => Some(Level::Info),
    }
}

/// Writes `message` at `level` to stderr, if the level is enabled. The macros call this.
pub fn write(level: Level, message: fmt::Arguments<'_>) {
    if enabled(level) {
        eprint!("{}", format_lines(level, &message.to_string()));
    }
}

/// `text` with every line tagged with `level` and ended by a newline.
fn format_lines(level: Level, text: &str) -> String {
    let tag = level.as_str();
    let mut out = String::with_capacity(text.len() + tag.len() + 2);
    let mut lines = text.lines().peekable();
    if lines.peek().is_none() {
        out.push_str(tag);
        out.push('\n');
    }
    for line in lines {
        out.push_str(tag);
        out.push(' ');
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Logs an `ERROR` line to stderr, with `format!` arguments.
#[doc(inline)]
pub use crate::__log_error as error;

/// Logs a `WARN` line to stderr, with `format!` arguments.
#[doc(inline)]
pub use crate::__log_warn as warn;

/// Logs an `INFO` line to stderr, with `format!` arguments.
#[doc(inline)]
pub use crate::__log_info as info;

/// Logs a `DEBUG` line to stderr (only on routes deployed with `HANDOFF_LOG=debug`), with
/// `format!` arguments.
#[doc(inline)]
pub use crate::__log_debug as debug;

/// Use [`log::error!`](crate::log::error).
#[doc(hidden)]
#[macro_export]
macro_rules! __log_error {
    ($($arg:tt)+) => {
        $crate::log::write($crate::log::Level::Error, ::std::format_args!($($arg)+))
    };
}

/// Use [`log::warn!`](crate::log::warn).
#[doc(hidden)]
#[macro_export]
macro_rules! __log_warn {
    ($($arg:tt)+) => {
        $crate::log::write($crate::log::Level::Warn, ::std::format_args!($($arg)+))
    };
}

/// Use [`log::info!`](crate::log::info).
#[doc(hidden)]
#[macro_export]
macro_rules! __log_info {
    ($($arg:tt)+) => {
        $crate::log::write($crate::log::Level::Info, ::std::format_args!($($arg)+))
    };
}

/// Use [`log::debug!`](crate::log::debug).
#[doc(hidden)]
#[macro_export]
macro_rules! __log_debug {
    ($($arg:tt)+) => {
        $crate::log::write($crate::log::Level::Debug, ::std::format_args!($($arg)+))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_is_tagged() {
        assert_eq!(format_lines(Level::Info, "one"), "INFO one\n");
        assert_eq!(format_lines(Level::Error, "a\nb\n"), "ERROR a\nERROR b\n");
        assert_eq!(format_lines(Level::Warn, ""), "WARN\n");
    }

    #[test]
    fn the_level_defaults_to_info() {
        assert_eq!(parse_level(None), Some(Level::Info));
        assert_eq!(parse_level(Some("nonsense")), Some(Level::Info));
        assert_eq!(parse_level(Some(" DEBUG ")), Some(Level::Debug));
        assert_eq!(parse_level(Some("off")), None);
        assert!(Level::Error < Level::Debug);
    }

    #[test]
    fn macros_expand() {
        crate::log::info!("info {}", 1);
        crate::log::debug!("not shown by default");
        assert!(enabled(Level::Warn));
        assert!(!enabled(Level::Debug));
    }
}
