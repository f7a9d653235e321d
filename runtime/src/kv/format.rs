//! How `kv.redb` lays out its data: the tables, the key of an entry (bucket id, NUL, key), an
//! entry's bytes (revision, expiry, value) and a bucket's totals. Shared by the reads
//! (`super::redb`) and the writer thread (`super::writer`).

use redb::TableDefinition;

use super::backend::Entry;

pub(crate) const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
pub(crate) const BUCKETS: TableDefinition<&str, &[u8]> = TableDefinition::new("buckets");
pub(crate) const EXPIRY: TableDefinition<&[u8], ()> = TableDefinition::new("expiry");

/// A bucket's totals and last revision.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Meta {
    pub keys: u64,
    pub bytes: u64,
    pub revision: u64,
}

impl Meta {
    pub fn decode(bytes: &[u8]) -> Self {
        let word = |i: usize| {
            bytes
                .get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes)
        };
        Self {
            keys: word(0),
            bytes: word(1),
            revision: word(2),
        }
    }

    pub fn encode(&self) -> [u8; 24] {
        let mut out = [0; 24];
        out[..8].copy_from_slice(&self.keys.to_le_bytes());
        out[8..16].copy_from_slice(&self.bytes.to_le_bytes());
        out[16..].copy_from_slice(&self.revision.to_le_bytes());
        out
    }
}

/// Whether `entry` has not expired at `now`.
pub(crate) fn live(entry: &Entry, now: u64) -> bool {
    entry.expires_at_ms.is_none_or(|at| at > now)
}

/// The table key of `key` in `bucket`: the bucket id (which never holds a NUL), NUL, the key.
pub(crate) fn composite(bucket: &str, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(bucket.len() + 1 + key.len());
    out.extend_from_slice(bucket.as_bytes());
    out.push(0);
    out.extend_from_slice(key.as_bytes());
    out
}

pub(crate) fn bucket_start(bucket: &str) -> Vec<u8> {
    composite(bucket, "")
}

pub(crate) fn bucket_end(bucket: &str) -> Vec<u8> {
    let mut out = bucket.as_bytes().to_vec();
    out.push(1);
    out
}

pub(crate) fn expiry_key(at: u64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&at.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// An entry as stored: revision and expiry (0: none), little-endian, then the value.
pub(crate) fn encode(entry: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + entry.value.len());
    out.extend_from_slice(&entry.revision.to_le_bytes());
    out.extend_from_slice(&entry.expires_at_ms.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&entry.value);
    out
}

/// The expiry field of the stored entry `bytes` (milliseconds since the Unix epoch; 0: none),
/// read from its header alone; `None` if `bytes` is too short to be an entry.
pub(crate) fn stored_expiry(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?))
}

/// Whether the stored entry `bytes` has not expired at `now`, read from its header alone (a
/// listing of keys never copies a value).
pub(crate) fn live_stored(bytes: &[u8], now: u64) -> bool {
    stored_expiry(bytes).is_some_and(|at| at == 0 || at > now)
}

pub(crate) fn decode(bytes: &[u8]) -> Option<Entry> {
    let revision = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let expires = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some(Entry {
        value: bytes[16..].to_vec(),
        revision,
        expires_at_ms: (expires != 0).then_some(expires),
    })
}
