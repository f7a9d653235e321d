//! The seam between the key-value host and where buckets are kept: the [`Backend`] trait and
//! the values that cross it.
//!
//! A backend keeps buckets of entries (key → bytes, a revision, an optional expiry) and must
//! give, per key, linearizable operations: a write is visible to every read that starts after
//! it was acknowledged, and acknowledged only once it is durable. Every write carries a
//! [`Condition`] on the key's revision and the [`Quota`] of the route that writes, and is
//! applied atomically with its check: that is all a compare-and-swap, an increment or a quota
//! needs, so a backend built on revision compare-and-swap (NATS JetStream key-value: `create`,
//! `update(key, value, revision)`, `delete_expect_revision`) implements the same trait by
//! retrying its own CAS. Revisions grow with every write to a bucket, so a key written, deleted
//! and written again never shows an earlier revision (ABA-safe).
//!
//! Listing is bounded: a page holds at most the `limit` keys asked for, in key order.

use std::future::Future;
use std::pin::Pin;

/// A boxed future, for the object-safe [`Backend`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One stored value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// The bytes.
    pub value: Vec<u8>,
    /// Its revision: larger than every revision the bucket handed out before it.
    pub revision: u64,
    /// When it expires, milliseconds since the Unix epoch (it then reads as absent).
    pub expires_at_ms: Option<u64>,
}

/// What a write does to its key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Change {
    /// Sets the value; with `ttl_ms` it expires that long after the write.
    Set {
        /// The new value.
        value: Vec<u8>,
        /// Time to live, milliseconds.
        ttl_ms: Option<u64>,
    },
    /// Removes the key (nothing happens if it does not exist).
    Delete,
    /// Adds `delta` to the key's value read as a decimal integer (an absent key counts as 0),
    /// and writes the sum back as decimal text. A live expiry is kept.
    Increment {
        /// What to add (negative subtracts).
        delta: i64,
    },
}

/// When a write may happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Condition {
    /// Always.
    Always,
    /// Only if the key's revision is this one; `0`: only if the key does not exist.
    Revision(u64),
}

/// How much a route may keep in a bucket it writes: a write that would take the bucket past
/// either bound is refused (one that shrinks it never is). `0`: no bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Quota {
    /// Keys in the bucket.
    pub max_keys: u64,
    /// Bytes of keys and values in the bucket.
    pub max_bytes: u64,
}

/// One write to one key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Write {
    /// The key.
    pub key: String,
    /// What to do.
    pub change: Change,
    /// When to do it.
    pub condition: Condition,
    /// The writer's quota.
    pub quota: Quota,
}

impl Write {
    /// An unconditional write of `change` to `key` under `quota`.
    pub fn new(key: String, change: Change, quota: Quota) -> Self {
        Self {
            key,
            change,
            condition: Condition::Always,
            quota,
        }
    }
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    /// It was applied (and is durable).
    Done {
        /// The key's new revision.
        revision: u64,
        /// For an increment, the new value.
        number: Option<i64>,
    },
    /// Its condition did not hold; nothing changed.
    Conflict,
}

/// Where a listing starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start<'a> {
    /// At the first key.
    First,
    /// After this key.
    After(&'a str),
    /// After this many keys (the `u64` cursors of `wasi:keyvalue@0.2.0-draft`).
    Offset(u64),
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Page<T> {
    /// The items, in key order.
    pub items: Vec<T>,
    /// Whether keys follow the last one.
    pub more: bool,
}

/// Fills a [`Page`] from the live entries of a listing, in key order: skips what an
/// [`Start::Offset`] skips, then takes up to `limit` (what every backend's `range` does).
pub struct PageFiller<T> {
    page: Page<T>,
    skip: u64,
    limit: usize,
}

impl<T> PageFiller<T> {
    /// An empty page for a listing from `start`, at most `limit` items.
    pub fn new(start: &Start<'_>, limit: usize) -> Self {
        Self {
            page: Page {
                items: Vec::new(),
                more: false,
            },
            skip: match start {
                Start::Offset(n) => *n,
                _ => 0,
            },
            limit,
        }
    }

    /// Offers the next live entry (`item` makes it); false once the page is full, with `more`
    /// set: the listing can stop there.
    pub fn offer(&mut self, item: impl FnOnce() -> T) -> bool {
        if self.skip > 0 {
            self.skip -= 1;
        } else if self.page.items.len() == self.limit {
            self.page.more = true;
            return false;
        } else {
            self.page.items.push(item());
        }
        true
    }

    /// How many more live entries it takes before it is full: those an offset still skips and
    /// the items the page still has room for.
    pub fn room(&self) -> u64 {
        let items = self.limit.saturating_sub(self.page.items.len()) as u64;
        self.skip.saturating_add(items)
    }

    /// Ends the page early (a listing that has done its share of work for one call), if it
    /// holds an item to continue after: then `more` is set and true is returned.
    pub fn end_early(&mut self) -> bool {
        if self.page.items.is_empty() {
            return false;
        }
        self.page.more = true;
        true
    }

    /// The page.
    pub fn page(self) -> Page<T> {
        self.page
    }
}

/// What a bucket holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// Keys (expired ones until they are swept, within a second or so).
    pub keys: u64,
    /// Bytes of keys and values.
    pub bytes: u64,
}

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum KvError {
    /// The write would take the bucket past the writer's key quota.
    #[error("the bucket would hold more than {limit} keys")]
    TooManyKeys {
        /// The quota.
        limit: u64,
    },
    /// The write would take the bucket past the writer's byte quota.
    #[error("the bucket would hold more than {limit} bytes")]
    TooManyBytes {
        /// The quota.
        limit: u64,
    },
    /// A key or value is too large, or a key unusable; the sentence says which.
    #[error("{0}")]
    Invalid(String),
    /// An increment met a value that is not a decimal integer, or overflowed.
    #[error("{0}")]
    NotANumber(String),
    /// The backend failed (I/O, corruption); the log has the details.
    #[error("the key-value store failed: {0}")]
    Failed(String),
}

/// Where buckets are kept. Buckets are named by their id (see `super::buckets`); a bucket
/// exists as soon as something is written to it.
pub trait Backend: Send + Sync + 'static {
    /// The entry of `key` in `bucket`, unless absent or expired.
    fn get<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Entry>, KvError>>;

    /// Applies `writes` to `bucket` in order, each atomically with its condition and quota
    /// check; answers once all are durable. A write whose condition or quota fails changes
    /// nothing and does not stop the others.
    fn write_all<'a>(
        &'a self,
        bucket: &'a str,
        writes: Vec<Write>,
    ) -> BoxFuture<'a, Result<Vec<Result<Outcome, KvError>>, KvError>>;

    /// At most `limit` keys of `bucket` from `start`, in order, expired keys left out.
    fn list<'a>(
        &'a self,
        bucket: &'a str,
        start: Start<'a>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page<String>, KvError>>;

    /// At most `limit` entries of `bucket` from `start`, in key order (for exports).
    fn scan<'a>(
        &'a self,
        bucket: &'a str,
        start: Start<'a>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page<(String, Entry)>, KvError>>;

    /// How much `bucket` holds.
    fn usage<'a>(&'a self, bucket: &'a str) -> BoxFuture<'a, Result<Usage, KvError>>;

    /// The largest value this backend can keep, when it has a bound of its own besides the
    /// routes' `kv-max-value` (a cluster's: one NATS message). `None`: no bound.
    fn max_value(&self) -> Option<usize> {
        None
    }

    /// Applies one write (see [`Backend::write_all`]).
    fn write<'a>(
        &'a self,
        bucket: &'a str,
        write: Write,
    ) -> BoxFuture<'a, Result<Outcome, KvError>> {
        Box::pin(async move {
            self.write_all(bucket, vec![write])
                .await?
                .pop()
                .unwrap_or_else(|| Err(KvError::Failed("a write went unanswered".into())))
        })
    }
}

/// The current time, milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The decimal integer `value` holds (an increment's operand), in a sentence if it holds none.
pub fn number_of(key: &str, value: Option<&[u8]>) -> Result<i64, KvError> {
    let Some(value) = value else { return Ok(0) };
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.trim().parse::<i64>().ok())
        .ok_or_else(|| {
            KvError::NotANumber(format!(
                "the value of key `{}` is not a whole number written as decimal text; increment needs one",
                key.escape_debug()
            ))
        })
}

/// `current + delta`, or a sentence saying it overflowed.
pub fn add(key: &str, current: i64, delta: i64) -> Result<i64, KvError> {
    current.checked_add(delta).ok_or_else(|| {
        KvError::NotANumber(format!(
            "incrementing key `{}` by {delta} overflows a 64-bit integer",
            key.escape_debug()
        ))
    })
}
