//! The kinds of value a per-route setting takes (sizes, counts, durations): how each is parsed
//! from text, written back, and shown in the status JSON.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::{format_bytes, format_duration, parse_bytes, parse_duration};

/// How a kind of setting value is read, written and shown.
pub trait Value: Copy + PartialEq + Send + Sync + 'static {
    /// The placeholder in help texts (`SIZE`, `DURATION`, `N`).
    const METAVAR: &'static str;
    /// How the value appears in the status JSON.
    type Status: Serialize + for<'de> Deserialize<'de> + Copy + PartialEq + std::fmt::Debug;
    /// Parses the text form, saying what is wrong in a sentence.
    fn parse(text: &str) -> Result<Self, String>;
    /// The text form, which [`Value::parse`] reads back.
    fn text(&self) -> String;
    /// The status form.
    fn status(&self) -> Self::Status;
    /// Back from the status form.
    fn from_status(status: Self::Status) -> Self;
}

impl Value for usize {
    const METAVAR: &'static str = "SIZE";
    type Status = usize;
    fn parse(text: &str) -> Result<Self, String> {
        parse_bytes(text).map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }
    fn text(&self) -> String {
        format_bytes(*self as u64)
    }
    fn status(&self) -> usize {
        *self
    }
    fn from_status(status: usize) -> Self {
        status
    }
}

impl Value for u64 {
    const METAVAR: &'static str = "SIZE";
    type Status = u64;
    fn parse(text: &str) -> Result<Self, String> {
        parse_bytes(text)
    }
    fn text(&self) -> String {
        format_bytes(*self)
    }
    fn status(&self) -> u64 {
        *self
    }
    fn from_status(status: u64) -> Self {
        status
    }
}

impl Value for u32 {
    const METAVAR: &'static str = "N";
    type Status = u32;
    fn parse(text: &str) -> Result<Self, String> {
        text.trim().parse().map_err(|_| {
            format!(
                "`{}` is not a whole number (0: no limit)",
                text.escape_debug()
            )
        })
    }
    fn text(&self) -> String {
        self.to_string()
    }
    fn status(&self) -> u32 {
        *self
    }
    fn from_status(status: u32) -> Self {
        status
    }
}

impl Value for Duration {
    const METAVAR: &'static str = "DURATION";
    /// Milliseconds.
    type Status = u64;
    fn parse(text: &str) -> Result<Self, String> {
        parse_duration(text)
    }
    fn text(&self) -> String {
        format_duration(*self)
    }
    fn status(&self) -> u64 {
        self.as_millis() as u64
    }
    fn from_status(status: u64) -> Self {
        Duration::from_millis(status)
    }
}
