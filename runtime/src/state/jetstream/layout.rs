//! Where things are kept in JetStream: the buckets, the key of a prefix's claim, and a route
//! record kept in parts (its head, and the key of each part).

use anyhow::Context as _;

use crate::names::RouteName;
use crate::state::log::Stored;
use crate::state::records::RouteRecord;

/// The KV bucket of route records.
pub const ROUTES_BUCKET: &str = "handoff_routes";
/// The KV bucket of module records.
pub const MODULES_BUCKET: &str = "handoff_modules";
/// The Object Store of module bytes.
pub const BYTES_BUCKET: &str = "handoff_bytes";
/// Object Store chunk size.
pub const CHUNK_BYTES: usize = 128 << 10;
/// The most messages in one atomic batch (the server's limit).
pub(super) const MAX_BATCH: usize = 1000;

/// Room left in a message for its subject and headers.
pub(super) const HEADERS_ROOM: usize = 4 << 10;

/// The smallest part a record is cut into, whatever the server says.
pub(super) const MIN_PART: usize = 1 << 10;

/// How many times a record kept in parts is read before giving up (each time a change
/// replaced the parts while they were read).
pub(super) const PART_READS: usize = 5;

/// The head of a route record kept in parts.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PartsHead {
    /// How many parts.
    pub(super) parts: usize,
    /// The record's size.
    pub(super) size: usize,
    /// The sha256 of the record, in hex.
    pub(super) sha256: String,
}

/// The key of part `i` of route `name`'s record.
pub(super) fn part_key(name: &RouteName, i: usize) -> String {
    format!("C={}.{i}", name.as_str())
}

pub(super) fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where a prefix's claim is kept in the routes bucket (see the module header).
pub(super) const CLAIM: &str = "P=";

/// How many times a change whose claim lost a compare-and-swap is planned again.
pub(super) const CLAIM_ATTEMPTS: usize = 10;

/// The key of `prefix`'s claim.
pub(super) fn claim_key(prefix: &str) -> String {
    let hex: String = prefix.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{CLAIM}{hex}")
}

/// The route record `value` of route `name`, at `revision`.
pub(super) fn route_of(name: &RouteName, revision: u64, value: &[u8]) -> anyhow::Result<Stored> {
    let mut record: RouteRecord = serde_json::from_slice(value)
        .with_context(|| format!("route `{}` is unreadable", name.as_str()))?;
    record.revision = revision;
    Ok(Stored {
        name: name.clone(),
        record,
    })
}
