//! The key-value host, through bindings of `wasi:keyvalue@0.2.0-draft2` and `handoff:kv`
//! generated from the WIT in the repository (`wit/`). Compiled for wasm32 only.

mod bindings {
    wit_bindgen::generate!({
        path: ["../wit/keyvalue-0.2.0-draft2", "../wit/handoff-kv"],
        world: "handoff:kv/imports",
        generate_all,
    });
}

use bindings::handoff::kv::versioned;
use bindings::wasi::keyvalue::{atomics, store};

use super::RawEntry;

/// An open bucket.
pub(crate) struct Handle(store::Bucket);

fn sentence(error: store::Error) -> String {
    match error {
        store::Error::NoSuchStore => "no-such-store".to_owned(),
        store::Error::AccessDenied => "access-denied".to_owned(),
        store::Error::Other(sentence) => sentence,
    }
}

pub(crate) fn open(name: &str) -> Result<Handle, String> {
    store::open(name).map(Handle).map_err(sentence)
}

pub(crate) fn get(handle: &Handle, key: &str) -> Result<Option<RawEntry>, String> {
    versioned::get(&handle.0, key)
        .map(|found| {
            found.map(|e| RawEntry {
                value: e.value,
                version: e.version,
                expires_in_ms: e.expires_in_ms,
            })
        })
        .map_err(sentence)
}

pub(crate) fn exists(handle: &Handle, key: &str) -> Result<bool, String> {
    handle.0.exists(key).map_err(sentence)
}

pub(crate) fn set(
    handle: &Handle,
    key: &str,
    value: &[u8],
    ttl_ms: Option<u64>,
) -> Result<u64, String> {
    versioned::set(&handle.0, key, value, ttl_ms).map_err(sentence)
}

pub(crate) fn set_if(
    handle: &Handle,
    key: &str,
    value: &[u8],
    expected: u64,
    ttl_ms: Option<u64>,
) -> Result<Option<u64>, String> {
    versioned::set_if(&handle.0, key, value, expected, ttl_ms).map_err(sentence)
}

pub(crate) fn delete(handle: &Handle, key: &str) -> Result<(), String> {
    handle.0.delete(key).map_err(sentence)
}

pub(crate) fn delete_if(handle: &Handle, key: &str, expected: u64) -> Result<bool, String> {
    versioned::delete_if(&handle.0, key, expected).map_err(sentence)
}

pub(crate) fn list(
    handle: &Handle,
    cursor: Option<&str>,
) -> Result<(Vec<String>, Option<String>), String> {
    handle
        .0
        .list_keys(cursor)
        .map(|page| (page.keys, page.cursor))
        .map_err(sentence)
}

pub(crate) fn increment(handle: &Handle, key: &str, delta: i64) -> Result<i64, String> {
    atomics::increment(&handle.0, key, delta).map_err(sentence)
}
