//! The bounds on what a guest may keep: key size, value size, keys and bytes per bucket (a
//! route's quota, from its settings), and the page size of a listing. A guest that goes past
//! one gets the interface's error with a sentence naming the limit, never a trap.

use super::backend::{KvError, Quota};

/// The longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// The most keys one page of a listing holds (a guest's `list-keys`, the admin API's).
pub const PAGE_KEYS: usize = 1000;
/// The most bytes a shadow run's scratch overlay holds, values and keys together.
pub const MAX_OVERLAY_BYTES: usize = 64 << 20;

/// The key-value limits of one route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLimits {
    /// The largest value, in bytes.
    pub max_value: u64,
    /// The most keys the route may keep in a bucket (0: no limit).
    pub max_keys: u32,
    /// The most bytes (keys and values) the route may keep in a bucket (0: no limit).
    pub max_bytes: u64,
}

impl KvLimits {
    /// The quota a write carries.
    pub fn quota(&self) -> Quota {
        Quota {
            max_keys: u64::from(self.max_keys),
            max_bytes: self.max_bytes,
        }
    }

    /// Checks a key, in a sentence if it is unusable.
    pub fn check_key(&self, key: &str) -> Result<(), KvError> {
        if key.is_empty() {
            return Err(KvError::Invalid("a key must not be empty".into()));
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(KvError::Invalid(format!(
                "a key may be at most {MAX_KEY_BYTES} bytes long; this one has {}",
                key.len()
            )));
        }
        Ok(())
    }

    /// Checks a value's size, in a sentence if it is too large.
    pub fn check_value(&self, value: &[u8]) -> Result<(), KvError> {
        if value.len() as u64 > self.max_value {
            return Err(KvError::Invalid(format!(
                "a value may be at most {} bytes (the route's kv-max-value); this one has {}",
                self.max_value,
                value.len()
            )));
        }
        Ok(())
    }
}

/// A backend's refusal as the guest reads it: quota errors name the limit and the setting.
pub fn explain(error: KvError, bucket: &str) -> String {
    match error {
        KvError::TooManyKeys { limit } => format!(
            "bucket `{bucket}` is full: it may hold at most {limit} keys (the route's kv-max-keys); delete keys or deploy with a larger kv-max-keys"
        ),
        KvError::TooManyBytes { limit } => format!(
            "bucket `{bucket}` is full: it may hold at most {limit} bytes of keys and values (the route's kv-max-bytes); delete keys or deploy with a larger kv-max-bytes"
        ),
        KvError::Failed(_) => {
            "the key-value store failed; the server's log has the details".to_owned()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_are_bounded_with_a_sentence() {
        let limits = KvLimits {
            max_value: 4,
            max_keys: 0,
            max_bytes: 0,
        };
        assert!(limits.check_key("k").is_ok());
        assert!(
            limits
                .check_key("")
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert!(
            limits
                .check_key(&long)
                .unwrap_err()
                .to_string()
                .contains("1024")
        );
        assert!(limits.check_value(b"1234").is_ok());
        assert!(
            limits
                .check_value(b"12345")
                .unwrap_err()
                .to_string()
                .contains("kv-max-value")
        );
        assert_eq!(limits.quota(), Quota::default());
        assert!(explain(KvError::TooManyKeys { limit: 3 }, "default").contains("kv-max-keys"));
        assert!(!explain(KvError::Failed("disk on fire".into()), "x").contains("disk"));
    }
}
