//! Key-value storage that belongs to the route, not to the version: every version of a route
//! (the stable one, a candidate beside it, a shadow, one still draining) opens the same
//! buckets, so during a swap or a rollout the old and the new code work on the same data.
//!
//! ```
//! use handoff_sdk::kv;
//!
//! let bucket = kv::Bucket::route()?;          // the route's own bucket ("default")
//! bucket.set("greeting", "hello")?;
//! assert_eq!(bucket.get_text("greeting")?.as_deref(), Some("hello"));
//! assert_eq!(bucket.increment("visits", 1)?, 1);
//! # Ok::<(), handoff_sdk::Error>(())
//! ```
//!
//! * **Buckets**: [`Bucket::route`] is the route's own; [`Bucket::open`] opens a shared bucket
//!   the route was granted at deploy time (`handoff deploy --kv orders`). Any other name fails.
//! * **Values** are bytes ([`Bucket::get`], [`Bucket::set`], [`Bucket::delete`],
//!   [`Bucket::exists`]), with a time to live if you like ([`Bucket::set_with_ttl`]); keys are
//!   listed in order, a page at a time underneath ([`Bucket::keys`], [`Bucket::list`]).
//! * **Atomic updates**: [`Bucket::increment`]; every value has a version that grows with each
//!   write (never reused, so no ABA), [`Bucket::set_if`] writes only over the version you read,
//!   and [`Bucket::update`] retries a read-modify-write until it wins.
//! * **Documents** (feature `json`): typed JSON values that carry their schema version, with
//!   the helpers for two live versions of the code on one set of data ([`Document`]).
//!
//! Errors (a value larger than the route's `kv-max-value`, a full bucket, a bucket not
//! granted) are [`Error`]s: with `?`, a 500 whose log line says which limit.
//!
//! # Testing on the host
//!
//! Off wasm, the same API runs on an in-memory store kept per thread (each `#[test]` has its
//! own; [`testing::reset`] empties it), so handlers that use buckets are unit-testable with
//! plain `cargo test`.

use std::time::Duration;

use crate::{Error, Result};

#[cfg(feature = "json")]
mod doc;
#[cfg(not(target_arch = "wasm32"))]
mod fake;
#[cfg(target_arch = "wasm32")]
mod wasi;

#[cfg(feature = "json")]
pub use doc::{Doc, Document, SCHEMA_FIELD};
#[cfg(not(target_arch = "wasm32"))]
use fake as imp;
#[cfg(target_arch = "wasm32")]
use wasi as imp;

/// How many times [`Bucket::update`] (and the document helpers) retry a lost race.
pub const MAX_ATTEMPTS: u32 = 100;

/// A value's version: larger after every write to its bucket.
pub type Version = u64;

/// A value as stored.
pub(crate) struct RawEntry {
    pub value: Vec<u8>,
    pub version: u64,
    pub expires_in_ms: Option<u64>,
}

/// A value with its version and its time left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The bytes.
    pub value: Vec<u8>,
    /// Its version: pass it to [`Bucket::set_if`] to write only over what you read.
    pub version: Version,
    /// How long until it expires, if it was written with a time to live.
    pub expires_in: Option<Duration>,
}

/// An open bucket.
pub struct Bucket {
    handle: imp::Handle,
    name: String,
}

fn failed(name: &str, what: &str, sentence: String) -> Error {
    Error::msg(format!("kv: {what} in bucket `{name}` failed: {sentence}"))
}

impl Bucket {
    /// The route's own bucket (`default`), shared by every version of the route.
    pub fn route() -> Result<Self> {
        Self::open("default")
    }

    /// Bucket `name`: `default` (the route's own), or a shared bucket the route was granted
    /// (`handoff deploy --kv NAME`).
    pub fn open(name: &str) -> Result<Self> {
        match imp::open(name) {
            Ok(handle) => Ok(Self {
                handle,
                name: name.to_owned(),
            }),
            Err(sentence) if sentence == "no-such-store" => Err(Error::msg(format!(
                "kv: bucket `{name}` is not granted to this route; deploy it with `--kv {name}` (or `kv={name}`)"
            ))),
            Err(sentence) => Err(failed(name, "opening", sentence)),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value of `key`, if it exists (and has not expired).
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.entry(key)?.map(|e| e.value))
    }

    /// The value of `key` as text (a value that is not UTF-8 is an error).
    pub fn get_text(&self, key: &str) -> Result<Option<String>> {
        self.get(key)?
            .map(|bytes| {
                String::from_utf8(bytes)
                    .map_err(|_| Error::msg(format!("kv: the value of `{key}` is not text")))
            })
            .transpose()
    }

    /// The value of `key` with its version and time left.
    pub fn entry(&self, key: &str) -> Result<Option<Entry>> {
        let found = imp::get(&self.handle, key).map_err(|s| failed(&self.name, "get", s))?;
        Ok(found.map(|e| Entry {
            value: e.value,
            version: e.version,
            expires_in: e.expires_in_ms.map(Duration::from_millis),
        }))
    }

    /// Whether `key` exists.
    pub fn exists(&self, key: &str) -> Result<bool> {
        imp::exists(&self.handle, key).map_err(|s| failed(&self.name, "exists", s))
    }

    /// Sets `key` to `value`; returns its new version.
    pub fn set(&self, key: &str, value: impl AsRef<[u8]>) -> Result<Version> {
        imp::set(&self.handle, key, value.as_ref(), None).map_err(|s| failed(&self.name, "set", s))
    }

    /// Sets `key` to `value` for `ttl`; after that it reads as absent.
    pub fn set_with_ttl(
        &self,
        key: &str,
        value: impl AsRef<[u8]>,
        ttl: Duration,
    ) -> Result<Version> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        imp::set(&self.handle, key, value.as_ref(), Some(ttl_ms))
            .map_err(|s| failed(&self.name, "set", s))
    }

    /// Sets `key` to `value` only if its version is still `expected` (`None`: only if the key
    /// does not exist). `Ok(None)`: someone wrote it meanwhile; read again and retry (or use
    /// [`Bucket::update`]).
    pub fn set_if(
        &self,
        key: &str,
        value: impl AsRef<[u8]>,
        expected: Option<Version>,
    ) -> Result<Option<Version>> {
        imp::set_if(
            &self.handle,
            key,
            value.as_ref(),
            expected.unwrap_or(0),
            None,
        )
        .map_err(|s| failed(&self.name, "set", s))
    }

    /// Deletes `key` (nothing happens if it does not exist).
    pub fn delete(&self, key: &str) -> Result<()> {
        imp::delete(&self.handle, key).map_err(|s| failed(&self.name, "delete", s))
    }

    /// Deletes `key` only if its version is still `expected`; `false` if it is not.
    pub fn delete_if(&self, key: &str, expected: Version) -> Result<bool> {
        imp::delete_if(&self.handle, key, expected).map_err(|s| failed(&self.name, "delete", s))
    }

    /// Adds `delta` to the number stored at `key` (an absent key counts as 0), atomically
    /// however many requests do it at once; returns the new value. The value is decimal text.
    pub fn increment(&self, key: &str, delta: i64) -> Result<i64> {
        imp::increment(&self.handle, key, delta).map_err(|s| failed(&self.name, "increment", s))
    }

    /// Every key, in order, fetched a page at a time as the iterator advances.
    pub fn keys(&self) -> Keys<'_> {
        Keys {
            bucket: self,
            page: Vec::new().into_iter(),
            cursor: None,
            done: false,
        }
    }

    /// Every key that starts with `prefix`, in order.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut found = Vec::new();
        for key in self.keys() {
            let key = key?;
            if key.starts_with(prefix) {
                found.push(key);
            } else if key.as_str() > prefix && !found.is_empty() {
                break;
            }
        }
        Ok(found)
    }

    /// Read-modify-write of `key` that never loses a concurrent update: `change` gets the
    /// current value (`None`: absent) and returns the new one (`None`: delete it); if another
    /// request wrote the key meanwhile, it runs again on the newer value, up to
    /// [`MAX_ATTEMPTS`] times. Returns what was written.
    pub fn update<F>(&self, key: &str, mut change: F) -> Result<Option<Vec<u8>>>
    where
        F: FnMut(Option<&[u8]>) -> Result<Option<Vec<u8>>>,
    {
        for _ in 0..MAX_ATTEMPTS {
            let current = self.entry(key)?;
            let next = change(current.as_ref().map(|e| e.value.as_slice()))?;
            let version = current.as_ref().map(|e| e.version);
            let won = match (&next, version) {
                (Some(value), _) => self.set_if(key, value, version)?.is_some(),
                (None, Some(version)) => self.delete_if(key, version)?,
                (None, None) => true,
            };
            if won {
                return Ok(next);
            }
        }
        Err(Error::msg(format!(
            "kv: `{key}` in bucket `{}` kept changing; gave up after {MAX_ATTEMPTS} attempts",
            self.name
        )))
    }
}

/// The keys of a bucket, in order ([`Bucket::keys`]).
pub struct Keys<'a> {
    bucket: &'a Bucket,
    page: std::vec::IntoIter<String>,
    cursor: Option<String>,
    done: bool,
}

impl Iterator for Keys<'_> {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(key) = self.page.next() {
                return Some(Ok(key));
            }
            if self.done {
                return None;
            }
            match imp::list(&self.bucket.handle, self.cursor.as_deref()) {
                Ok((keys, cursor)) => {
                    self.done = cursor.is_none();
                    self.cursor = cursor;
                    self.page = keys.into_iter();
                }
                Err(sentence) => {
                    self.done = true;
                    return Some(Err(failed(&self.bucket.name, "listing", sentence)));
                }
            }
        }
    }
}

/// Helpers for unit tests on the host.
#[cfg(not(target_arch = "wasm32"))]
pub mod testing {
    /// Empties this thread's in-memory store.
    pub fn reset() {
        super::fake::reset();
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn values_versions_and_ttl() {
        testing::reset();
        let bucket = Bucket::route().unwrap();
        assert_eq!(bucket.get("k").unwrap(), None);
        let first = bucket.set("k", "one").unwrap();
        let second = bucket.set("k", b"two").unwrap();
        assert!(second > first);
        assert_eq!(bucket.get_text("k").unwrap().as_deref(), Some("two"));
        assert_eq!(bucket.set_if("k", "x", Some(first)).unwrap(), None);
        assert!(bucket.set_if("k", "three", Some(second)).unwrap().is_some());
        assert!(bucket.set_if("new", "x", None).unwrap().is_some());
        assert_eq!(bucket.set_if("new", "y", None).unwrap(), None);
        bucket
            .set_with_ttl("brief", "x", Duration::from_millis(1))
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(!bucket.exists("brief").unwrap());
        bucket.delete("k").unwrap();
        assert!(!bucket.exists("k").unwrap());
        assert_eq!(bucket.increment("n", 2).unwrap(), 2);
        assert_eq!(bucket.increment("n", -3).unwrap(), -1);
    }

    #[test]
    fn keys_page_through_in_order() {
        testing::reset();
        let bucket = Bucket::open("orders").unwrap();
        for i in 0..2500 {
            bucket.set(&format!("k{i:04}"), "v").unwrap();
        }
        Bucket::route().unwrap().set("elsewhere", "v").unwrap();
        let keys: Vec<String> = bucket.keys().map(Result::unwrap).collect();
        assert_eq!(keys.len(), 2500);
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(bucket.list("k000").unwrap().len(), 10);
    }

    #[test]
    fn update_retries_until_it_wins() {
        testing::reset();
        let bucket = Bucket::route().unwrap();
        bucket.set("n", "1").unwrap();
        let mut runs = 0;
        let written = bucket
            .update("n", |current| {
                runs += 1;
                if runs == 1 {
                    // Another request writes in between: this attempt must lose.
                    Bucket::route().unwrap().set("n", "10").unwrap();
                }
                let n: i64 = std::str::from_utf8(current.unwrap()).unwrap().parse()?;
                Ok(Some((n + 1).to_string().into_bytes()))
            })
            .unwrap();
        assert_eq!(runs, 2);
        assert_eq!(written.as_deref(), Some(&b"11"[..]));
        assert_eq!(bucket.update("n", |_| Ok(None)).unwrap(), None);
        assert!(!bucket.exists("n").unwrap());
    }
}
