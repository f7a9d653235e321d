//! The handoff guest SDK. It is filled in by the SDK issue; guests today use `wasip2` directly.
#![deny(missing_docs)]
