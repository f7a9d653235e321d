//! Typed JSON documents that carry their schema version, for two live versions of the code on
//! one set of data.
//!
//! During a swap or a rollout, version 1 and version 2 of a route serve side by side on the same
//! bucket. With documents, neither needs a migration job:
//!
//! * **Read either shape.** A stored document says which schema wrote it ([`SCHEMA_FIELD`]).
//!   One older than the reader's is brought up to date in memory by [`Document::upgrade`]; one
//!   newer is read as it is (serde ignores the fields it does not know).
//! * **Upgrade lazily, on write.** A document is written in the writer's schema when the code
//!   next saves it; documents nobody touches stay as they are, and both versions read them.
//! * **Never write a shape the other live version cannot read.** A write keeps every field the
//!   writer does not know (so version 1 does not erase what version 2 added), and
//!   [`Document::expand`] adds what readers of the older schema still need (version 2 also
//!   writes the field version 1 reads). Once version 1 no longer serves anywhere, a later
//!   version drops the expansion (the contract step).
//!
//! Serialize optional fields as `null` rather than skipping them: a field the writer knows is
//! overwritten with what it serializes, and a skipped one would keep its old value.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::{Bucket, MAX_ATTEMPTS, Version};
use crate::{Error, Result};

/// The field that holds a document's schema version. A document without it is schema 0.
pub const SCHEMA_FIELD: &str = "_schema";

/// A typed document kept as a JSON object in a bucket.
///
/// ```
/// use handoff_sdk::kv::{Bucket, Document};
/// use serde::{Deserialize, Serialize};
/// use serde_json::{Map, Value};
///
/// /// Version 2 of a to-do item: `done: bool` became `status`.
/// #[derive(Serialize, Deserialize)]
/// struct Todo {
///     title: String,
///     status: String,
/// }
///
/// impl Document for Todo {
///     const SCHEMA: u32 = 2;
///
///     // Written by version 1: derive `status` from its `done`.
///     fn upgrade(from: u32, doc: &mut Map<String, Value>) -> handoff_sdk::Result<()> {
///         if from < 2 {
///             let done = doc.get("done").and_then(Value::as_bool).unwrap_or(false);
///             doc.insert("status".into(), (if done { "done" } else { "open" }).into());
///         }
///         Ok(())
///     }
///
///     // Version 1 still serves: keep writing the `done` it reads.
///     fn expand(&self, doc: &mut Map<String, Value>) {
///         doc.insert("done".into(), (self.status == "done").into());
///     }
/// }
///
/// let bucket = Bucket::route()?;
/// bucket.set("todo:1", r#"{"_schema": 1, "title": "milk", "done": true}"#)?;
/// let todo = bucket.get_doc::<Todo>("todo:1")?.unwrap();
/// assert_eq!(todo.value.status, "done");
/// bucket.put_doc("todo:1", &todo.value)?;
/// let stored: Value = serde_json::from_slice(&bucket.get("todo:1")?.unwrap())?;
/// assert_eq!((stored["_schema"].as_u64(), stored["done"].as_bool()), (Some(2), Some(true)));
/// # Ok::<(), handoff_sdk::Error>(())
/// ```
pub trait Document: Serialize + DeserializeOwned {
    /// The schema version this code writes.
    const SCHEMA: u32;

    /// Brings a document stored by schema `from` (older than [`Document::SCHEMA`]) to this
    /// schema's shape, in place. Fields written by newer code are still there. Default:
    /// nothing (new fields then need serde defaults).
    fn upgrade(from: u32, doc: &mut Map<String, Value>) -> Result<()> {
        let _ = (from, doc);
        Ok(())
    }

    /// Adds to a document about to be written what readers of older schemas still need (the
    /// expand step). Default: nothing.
    fn expand(&self, doc: &mut Map<String, Value>) {
        let _ = doc;
    }
}

/// A document read from a bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc<T> {
    /// The document, in this code's schema.
    pub value: T,
    /// The schema that wrote it.
    pub schema: u32,
    /// Its version in the bucket.
    pub version: Version,
}

/// The JSON object stored at a key, and its schema.
fn object(key: &str, bytes: &[u8]) -> Result<(Map<String, Value>, u32)> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::msg(format!("kv: `{key}` does not hold a JSON document: {e}")))?;
    let Value::Object(mut map) = value else {
        return Err(Error::msg(format!(
            "kv: `{key}` holds JSON that is not an object"
        )));
    };
    let schema = map
        .remove(SCHEMA_FIELD)
        .and_then(|v| v.as_u64())
        .map_or(0, |v| u32::try_from(v).unwrap_or(u32::MAX));
    Ok((map, schema))
}

/// `map` (stored with `schema`) as a `T`.
fn typed<T: Document>(key: &str, mut map: Map<String, Value>, schema: u32) -> Result<T> {
    if schema < T::SCHEMA {
        T::upgrade(schema, &mut map)?;
    }
    serde_json::from_value(Value::Object(map)).map_err(|e| {
        Error::msg(format!(
            "kv: `{key}` (schema {schema}) does not read as schema {}: {e}",
            T::SCHEMA
        ))
    })
}

/// `value` written over `stored`: the fields the writer knows replaced, the rest kept.
fn merged<T: Document>(value: &T, stored: Option<Map<String, Value>>) -> Result<Vec<u8>> {
    let Value::Object(mut fields) = serde_json::to_value(value)? else {
        return Err(Error::msg("kv: a document must serialize as a JSON object"));
    };
    value.expand(&mut fields);
    let mut doc = stored.unwrap_or_default();
    doc.extend(fields);
    doc.insert(SCHEMA_FIELD.into(), T::SCHEMA.into());
    Ok(serde_json::to_vec(&doc)?)
}

impl Bucket {
    /// The document at `key`, in `T`'s schema whichever schema wrote it.
    pub fn get_doc<T: Document>(&self, key: &str) -> Result<Option<Doc<T>>> {
        let Some(entry) = self.entry(key)? else {
            return Ok(None);
        };
        let (map, schema) = object(key, &entry.value)?;
        Ok(Some(Doc {
            value: typed(key, map, schema)?,
            schema,
            version: entry.version,
        }))
    }

    /// Writes `value` at `key` in `T`'s schema, keeping the stored fields `T` does not know;
    /// returns the new version.
    pub fn put_doc<T: Document>(&self, key: &str, value: &T) -> Result<Version> {
        for _ in 0..MAX_ATTEMPTS {
            let current = self.entry(key)?;
            let stored = current
                .as_ref()
                .map(|e| object(key, &e.value).map(|(map, _)| map))
                .transpose()?;
            let bytes = merged(value, stored)?;
            if let Some(version) = self.set_if(key, bytes, current.map(|e| e.version))? {
                return Ok(version);
            }
        }
        Err(Error::msg(format!(
            "kv: `{key}` kept changing; gave up after {MAX_ATTEMPTS} attempts"
        )))
    }

    /// Read-modify-write of the document at `key` that never loses a concurrent update:
    /// `change` gets the current document (`None`: absent) and returns the new one (`None`:
    /// delete it); it runs again if another request wrote the key meanwhile. Returns what was
    /// written.
    pub fn update_doc<T, F>(&self, key: &str, mut change: F) -> Result<Option<T>>
    where
        T: Document,
        F: FnMut(Option<T>) -> Result<Option<T>>,
    {
        for _ in 0..MAX_ATTEMPTS {
            let current = self.entry(key)?;
            let (stored, doc) = match &current {
                Some(entry) => {
                    let (map, schema) = object(key, &entry.value)?;
                    let doc = typed::<T>(key, map.clone(), schema)?;
                    (Some(map), Some(doc))
                }
                None => (None, None),
            };
            let version = current.as_ref().map(|e| e.version);
            let next = change(doc)?;
            let won = match (&next, version) {
                (Some(value), _) => self.set_if(key, merged(value, stored)?, version)?.is_some(),
                (None, Some(version)) => self.delete_if(key, version)?,
                (None, None) => true,
            };
            if won {
                return Ok(next);
            }
        }
        Err(Error::msg(format!(
            "kv: `{key}` kept changing; gave up after {MAX_ATTEMPTS} attempts"
        )))
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::kv::testing;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct V1 {
        title: String,
        done: bool,
    }

    impl Document for V1 {
        const SCHEMA: u32 = 1;
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct V2 {
        title: String,
        status: String,
        tags: Vec<String>,
    }

    impl Document for V2 {
        const SCHEMA: u32 = 2;
        fn upgrade(from: u32, doc: &mut Map<String, Value>) -> Result<()> {
            if from < 2 {
                let done = doc.get("done").and_then(Value::as_bool).unwrap_or(false);
                let kept = doc
                    .get("status")
                    .and_then(Value::as_str)
                    .filter(|s| (*s == "done") == done)
                    .map(str::to_owned);
                let status = kept.unwrap_or_else(|| if done { "done" } else { "open" }.into());
                doc.insert("status".into(), status.into());
                doc.entry("tags").or_insert_with(|| Value::Array(vec![]));
            }
            Ok(())
        }
        fn expand(&self, doc: &mut Map<String, Value>) {
            doc.insert("done".into(), (self.status == "done").into());
        }
    }

    #[test]
    fn two_versions_read_and_write_each_others_documents() {
        testing::reset();
        let bucket = Bucket::route().unwrap();
        // Version 1 writes; version 2 reads it upgraded.
        let v1 = V1 {
            title: "milk".into(),
            done: false,
        };
        bucket.put_doc("t", &v1).unwrap();
        let read = bucket.get_doc::<V2>("t").unwrap().unwrap();
        assert_eq!((read.schema, read.value.status.as_str()), (1, "open"));
        // Version 2 writes (lazily upgraded, expanded); version 1 still reads it.
        let v2 = V2 {
            title: "milk".into(),
            status: "archived".into(),
            tags: vec!["home".into()],
        };
        bucket.put_doc("t", &v2).unwrap();
        let old = bucket.get_doc::<V1>("t").unwrap().unwrap();
        assert_eq!(old.schema, 2);
        assert_eq!(old.value, v1);
        // Version 1 edits the title: version 2's fields survive, and `archived` still agrees
        // with `done`, so it stays.
        bucket
            .update_doc::<V1, _>("t", |doc| {
                let mut doc = doc.unwrap();
                doc.title = "oat milk".into();
                Ok(Some(doc))
            })
            .unwrap();
        let now = bucket.get_doc::<V2>("t").unwrap().unwrap().value;
        assert_eq!(now.title, "oat milk");
        assert_eq!(now.status, "archived");
        assert_eq!(now.tags, ["home"]);
        // Version 1 ticks it off: version 2 sees it done.
        bucket
            .update_doc::<V1, _>("t", |doc| {
                Ok(doc.map(|mut d| {
                    d.done = true;
                    d
                }))
            })
            .unwrap();
        assert_eq!(
            bucket.get_doc::<V2>("t").unwrap().unwrap().value.status,
            "done"
        );
        // Deleting through update_doc.
        assert_eq!(bucket.update_doc::<V1, _>("t", |_| Ok(None)).unwrap(), None);
        assert!(bucket.get_doc::<V1>("t").unwrap().is_none());
        bucket.set("bad", "[1]").unwrap();
        assert!(
            bucket
                .get_doc::<V1>("bad")
                .unwrap_err()
                .to_string()
                .contains("not an object")
        );
    }
}
