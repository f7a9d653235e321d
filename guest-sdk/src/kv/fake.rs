//! The in-memory stand-in for the host's key-value store, for unit tests on the host: same
//! semantics (versions that only grow, compare-and-swap, TTL, key-ordered paging), kept per
//! thread so parallel tests do not see each other's data. Any bucket name opens.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::RawEntry;

/// Keys per page, as the host.
const PAGE: usize = 1000;

struct Stored {
    value: Vec<u8>,
    version: u64,
    expires: Option<Instant>,
}

#[derive(Default)]
struct Fake {
    entries: BTreeMap<(String, String), Stored>,
    version: u64,
}

thread_local! {
    static FAKE: RefCell<Fake> = RefCell::default();
}

/// An open bucket.
pub(crate) struct Handle(String);

fn with<T>(f: impl FnOnce(&mut Fake) -> T) -> T {
    FAKE.with(|fake| {
        let mut fake = fake.borrow_mut();
        let now = Instant::now();
        fake.entries
            .retain(|_, stored| stored.expires.is_none_or(|at| at > now));
        f(&mut fake)
    })
}

/// Forgets everything this thread's fake store holds.
pub(crate) fn reset() {
    with(|fake| *fake = Fake::default());
}

pub(crate) fn open(name: &str) -> Result<Handle, String> {
    Ok(Handle(name.to_owned()))
}

fn id(handle: &Handle, key: &str) -> (String, String) {
    (handle.0.clone(), key.to_owned())
}

pub(crate) fn get(handle: &Handle, key: &str) -> Result<Option<RawEntry>, String> {
    Ok(with(|fake| {
        fake.entries.get(&id(handle, key)).map(|stored| RawEntry {
            value: stored.value.clone(),
            version: stored.version,
            expires_in_ms: stored
                .expires
                .map(|at| at.saturating_duration_since(Instant::now()).as_millis() as u64),
        })
    }))
}

pub(crate) fn exists(handle: &Handle, key: &str) -> Result<bool, String> {
    Ok(get(handle, key)?.is_some())
}

pub(crate) fn set(
    handle: &Handle,
    key: &str,
    value: &[u8],
    ttl_ms: Option<u64>,
) -> Result<u64, String> {
    Ok(with(|fake| {
        fake.version += 1;
        let stored = Stored {
            value: value.to_vec(),
            version: fake.version,
            expires: ttl_ms.map(|ms| Instant::now() + Duration::from_millis(ms)),
        };
        fake.entries.insert(id(handle, key), stored);
        fake.version
    }))
}

pub(crate) fn set_if(
    handle: &Handle,
    key: &str,
    value: &[u8],
    expected: u64,
    ttl_ms: Option<u64>,
) -> Result<Option<u64>, String> {
    let current = get(handle, key)?.map_or(0, |e| e.version);
    if current != expected {
        return Ok(None);
    }
    set(handle, key, value, ttl_ms).map(Some)
}

pub(crate) fn delete(handle: &Handle, key: &str) -> Result<(), String> {
    with(|fake| {
        fake.version += 1;
        fake.entries.remove(&id(handle, key));
    });
    Ok(())
}

pub(crate) fn delete_if(handle: &Handle, key: &str, expected: u64) -> Result<bool, String> {
    let current = get(handle, key)?.map_or(0, |e| e.version);
    if expected == 0 || current != expected {
        return Ok(false);
    }
    delete(handle, key).map(|()| true)
}

pub(crate) fn list(
    handle: &Handle,
    cursor: Option<&str>,
) -> Result<(Vec<String>, Option<String>), String> {
    Ok(with(|fake| {
        let keys: Vec<String> = fake
            .entries
            .keys()
            .filter(|(bucket, key)| *bucket == handle.0 && cursor.is_none_or(|c| key.as_str() > c))
            .map(|(_, key)| key.clone())
            .take(PAGE + 1)
            .collect();
        if keys.len() > PAGE {
            let page = keys[..PAGE].to_vec();
            let next = page.last().cloned();
            (page, next)
        } else {
            (keys, None)
        }
    }))
}

pub(crate) fn increment(handle: &Handle, key: &str, delta: i64) -> Result<i64, String> {
    let current = match get(handle, key)? {
        Some(entry) => std::str::from_utf8(&entry.value)
            .ok()
            .and_then(|text| text.trim().parse::<i64>().ok())
            .ok_or_else(|| format!("the value of key `{key}` is not a whole number"))?,
        None => 0,
    };
    let sum = current
        .checked_add(delta)
        .ok_or_else(|| format!("incrementing key `{key}` overflows"))?;
    set(handle, key, sum.to_string().as_bytes(), None)?;
    Ok(sum)
}
