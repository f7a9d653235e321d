//! Where the cluster's key-value data is kept: a JetStream bucket per handoff bucket, guest
//! keys in a stored form, and each bucket's usage in its `meta` key.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as KEY64;
use serde::{Deserialize, Serialize};

/// The JetStream streams of handoff's buckets: `KV_` and the bucket's name.
pub(super) const STREAM_PREFIX: &str = "KV_handoff_kv_";
/// The key holding a bucket's usage.
pub(super) const META: &str = "meta";
/// The header on every message that stores an entry: its expiry, milliseconds since the Unix
/// epoch (`0`: none), so a headers-only listing tells live keys from expired ones without
/// reading a value. Messages written before it existed lack it: their entry is read instead.
pub(super) const EXPIRES: &str = "Handoff-Expires-At";

/// The JetStream bucket of handoff bucket `bucket`: `handoff_kv_` and the hex of its id.
pub(super) fn stream_bucket(bucket: &str) -> String {
    let hex: String = bucket.bytes().map(|b| format!("{b:02x}")).collect();
    format!("handoff_kv_{hex}")
}

/// 128 random bits in hex: a write's `Nats-Msg-Id`, the same on every attempt of one write.
pub(super) fn write_id() -> String {
    use ring::rand::SecureRandom as _;
    let mut id = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut id)
        .expect("the system's random source");
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// A bucket's usage, as its `meta` key holds it.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub(super) struct Meta {
    pub(super) keys: u64,
    pub(super) bytes: u64,
}

/// The stored form of guest key `key`: `k` and its base64url.
pub(super) fn key_of(key: &str) -> String {
    format!("k{}", KEY64.encode(key))
}

/// The guest key of stored key `stored`; `None` for keys that are not guests' (`meta`).
pub(super) fn key_from(stored: &str) -> Option<String> {
    let encoded = stored.strip_prefix('k')?;
    String::from_utf8(KEY64.decode(encoded).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_their_stored_form() {
        for key in [
            "",
            "a",
            "user:42/cart",
            "ünï cödé",
            "with.dots and spaces",
            "meta",
        ] {
            let stored = key_of(key);
            assert!(
                stored
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{stored}"
            );
            assert_ne!(stored, META);
            assert_eq!(key_from(&stored).as_deref(), Some(key));
        }
        assert_eq!(key_from(META), None, "the usage key is no guest key");
    }
}
