//! The key-value store's admin documents: keys, entries, writes, imports.

use serde::{Deserialize, Serialize};

/// `GET /v1/routes/{name}/kv/keys` and `GET /v1/kv/{bucket}/keys`: one page of a bucket's keys,
/// in order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KvKeys {
    /// The bucket: `route/NAME` (a route's own) or `shared/NAME`.
    pub bucket: String,
    /// The keys.
    pub keys: Vec<String>,
    /// Where the next page starts (`?cursor=`); `null` on the last page.
    pub cursor: Option<String>,
}

/// A key and its value: what `GET .../kv/keys/{key}` answers, and each line of an export or an
/// import. A value that is UTF-8 text is `value`; any other is `base64`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct KvEntry {
    /// The key.
    pub key: String,
    /// The value, when it is UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value, base64, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
    /// Its version (larger after every write to the bucket); ignored by an import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// When it expires, milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

/// `PUT .../kv/keys/{key}`: the value (`value` as text, or `base64`) and an optional time to
/// live.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KvPut {
    /// The value as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
    /// Milliseconds until it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// What `PUT .../kv/keys/{key}` answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KvWritten {
    /// The key.
    pub key: String,
    /// Its new version.
    pub revision: u64,
}

/// What `DELETE .../kv/keys/{key}` answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KvDeleted {
    /// The key.
    pub key: String,
    /// Whether it existed.
    pub deleted: bool,
}

/// What `POST .../kv/import` answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KvImported {
    /// The bucket.
    pub bucket: String,
    /// Keys written.
    pub imported: u64,
    /// Lines skipped: entries that had already expired.
    pub expired: u64,
}
