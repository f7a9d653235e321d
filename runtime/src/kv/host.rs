//! The guest-facing side: bindings generated from the WIT vendored in the repository (`wit/`)
//! and their host implementations, over a request's [`KvAccess`].
//!
//! * `wasi:keyvalue@0.2.0-draft2` (`store`, `atomics` with `cas` and `swap`, `batch`) and
//!   `handoff:kv/versioned@0.1.0` (TTL and compare-and-swap on a version number): here.
//! * `wasi:keyvalue@0.2.0-draft` (`u64` cursors and increments): `super::draft`.
//!
//! Both drafts are linked side by side ([`add_to_linker`]), so guests built for either run
//! unmodified. A refusal (quota, size, an unusable key, a backend failure) reaches the guest as
//! the interface's `error::other` with a sentence; a bucket the route was not granted is
//! `no-such-store`. Only a bad resource handle traps.

use std::sync::Arc;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable, ResourceTableError};

use super::access::{KvAccess, OpenError};
use super::backend::{Change, Condition, Entry, Outcome, Start, now_ms};
use super::buckets::Bucket;

pub(crate) mod generated {
    wasmtime::component::bindgen!({
        path: ["../wit/keyvalue-0.2.0-draft2", "../wit/handoff-kv"],
        world: "handoff:kv/imports",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": crate::kv::host::BucketHandle,
            "wasi:keyvalue/atomics.cas": crate::kv::host::CasHandle,
        },
        trappable_error_type: {
            "wasi:keyvalue/store.error" => crate::kv::host::Refusal,
        },
    });
}

use generated::handoff::kv::versioned;
use generated::wasi::keyvalue::{atomics, batch, store};

/// An open bucket in a guest's resource table.
pub struct BucketHandle {
    pub(crate) bucket: Arc<Bucket>,
    /// The older draft's last listing cursor (how many keys came before its next page) and
    /// the key that page follows: the next call seeks to that key instead of walking the keys
    /// before it again.
    pub(crate) draft_cursor: Option<(u64, String)>,
}

/// A `cas` handle: the key and the entry it read.
pub struct CasHandle {
    bucket: Arc<Bucket>,
    key: String,
    current: Option<Entry>,
}

/// Why a key-value call failed, before it becomes the interface's error (or a trap).
pub enum Refusal {
    /// The route was not granted the bucket.
    NoSuchStore,
    /// A sentence for the guest.
    Other(String),
    /// The guest passed a handle that is not in its table: a trap.
    Trap(wasmtime::Error),
}

impl From<ResourceTableError> for Refusal {
    fn from(error: ResourceTableError) -> Self {
        Self::Trap(error.into())
    }
}

impl From<String> for Refusal {
    fn from(sentence: String) -> Self {
        Self::Other(sentence)
    }
}

impl From<OpenError> for Refusal {
    fn from(error: OpenError) -> Self {
        match error {
            OpenError::NoSuchStore => Self::NoSuchStore,
        }
    }
}

/// What the bindings see of a request: its key-value access and its resource table.
pub struct KvView<'a> {
    /// The request's access.
    pub access: &'a mut KvAccess,
    /// The request's resource table.
    pub table: &'a mut ResourceTable,
}

impl KvView<'_> {
    /// The bucket behind `handle`.
    pub(crate) fn bucket(&self, handle: &Resource<BucketHandle>) -> Result<Arc<Bucket>, Refusal> {
        Ok(self.table.get(handle)?.bucket.clone())
    }

    /// Opens bucket `identifier` into the table.
    pub(crate) fn open(&mut self, identifier: &str) -> Result<Resource<BucketHandle>, Refusal> {
        let bucket = self.access.open(identifier)?;
        Ok(self.table.push(BucketHandle {
            bucket,
            draft_cursor: None,
        })?)
    }

    /// Sets `key` unconditionally.
    pub(crate) async fn set(
        &mut self,
        handle: &Resource<BucketHandle>,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<Outcome, Refusal> {
        let bucket = self.bucket(handle)?;
        let change = Change::Set { value, ttl_ms };
        Ok(self
            .access
            .write(&bucket, key, change, Condition::Always)
            .await?)
    }

    /// Deletes `key` (under `condition`).
    pub(crate) async fn delete(
        &mut self,
        handle: &Resource<BucketHandle>,
        key: String,
        condition: Condition,
    ) -> Result<Outcome, Refusal> {
        let bucket = self.bucket(handle)?;
        Ok(self
            .access
            .write(&bucket, key, Change::Delete, condition)
            .await?)
    }

    /// The values of `keys`, in order (`None` where absent).
    pub(crate) async fn get_many(
        &mut self,
        handle: &Resource<BucketHandle>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, Refusal> {
        let bucket = self.bucket(handle)?;
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            let entry = self.access.get(&bucket, &key).await?;
            found.push(entry.map(|e| (key, e.value)));
        }
        Ok(found)
    }

    /// Applies unconditional changes in order.
    pub(crate) async fn write_many(
        &mut self,
        handle: &Resource<BucketHandle>,
        changes: Vec<(String, Change)>,
    ) -> Result<(), Refusal> {
        let bucket = self.bucket(handle)?;
        Ok(self.access.write_many(&bucket, changes).await?)
    }
}

/// Marks [`KvView`] as the data the generated `add_to_linker` functions hand out.
pub struct HasKv;

impl HasData for HasKv {
    type Data<'a> = KvView<'a>;
}

/// Links `wasi:keyvalue` at both drafts and `handoff:kv`, reaching each request's access
/// through `get`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> KvView<'_>,
) -> anyhow::Result<()> {
    store::add_to_linker::<T, HasKv>(linker, get)?;
    atomics::add_to_linker::<T, HasKv>(linker, get)?;
    batch::add_to_linker::<T, HasKv>(linker, get)?;
    versioned::add_to_linker::<T, HasKv>(linker, get)?;
    super::draft::add_to_linker(linker, get)?;
    Ok(())
}

fn wit_error(refusal: Refusal) -> wasmtime::Result<store::Error> {
    match refusal {
        Refusal::NoSuchStore => Ok(store::Error::NoSuchStore),
        Refusal::Other(sentence) => Ok(store::Error::Other(sentence)),
        Refusal::Trap(trap) => Err(trap),
    }
}

impl store::Host for KvView<'_> {
    async fn open(&mut self, identifier: String) -> Result<Resource<BucketHandle>, Refusal> {
        self.open(&identifier)
    }

    fn convert_error(&mut self, refusal: Refusal) -> wasmtime::Result<store::Error> {
        wit_error(refusal)
    }
}

impl store::HostBucket for KvView<'_> {
    async fn get(
        &mut self,
        handle: Resource<BucketHandle>,
        key: String,
    ) -> Result<Option<Vec<u8>>, Refusal> {
        let bucket = self.bucket(&handle)?;
        Ok(self.access.get(&bucket, &key).await?.map(|e| e.value))
    }

    async fn set(
        &mut self,
        handle: Resource<BucketHandle>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), Refusal> {
        KvView::set(self, &handle, key, value, None).await.map(drop)
    }

    async fn delete(&mut self, handle: Resource<BucketHandle>, key: String) -> Result<(), Refusal> {
        KvView::delete(self, &handle, key, Condition::Always)
            .await
            .map(drop)
    }

    async fn exists(
        &mut self,
        handle: Resource<BucketHandle>,
        key: String,
    ) -> Result<bool, Refusal> {
        let bucket = self.bucket(&handle)?;
        Ok(self.access.get(&bucket, &key).await?.is_some())
    }

    async fn list_keys(
        &mut self,
        handle: Resource<BucketHandle>,
        cursor: Option<String>,
    ) -> Result<store::KeyResponse, Refusal> {
        let bucket = self.bucket(&handle)?;
        let start = cursor.as_deref().map_or(Start::First, Start::After);
        let page = self.access.list(&bucket, start).await?;
        let cursor = if page.more {
            page.items.last().cloned()
        } else {
            None
        };
        Ok(store::KeyResponse {
            keys: page.items,
            cursor,
        })
    }

    async fn drop(&mut self, handle: Resource<BucketHandle>) -> wasmtime::Result<()> {
        self.table.delete(handle)?;
        Ok(())
    }
}

impl atomics::Host for KvView<'_> {
    async fn increment(
        &mut self,
        handle: Resource<BucketHandle>,
        key: String,
        delta: i64,
    ) -> Result<i64, Refusal> {
        let bucket = self.bucket(&handle)?;
        Ok(self.access.increment(&bucket, key, delta).await?)
    }

    async fn swap(
        &mut self,
        cas: Resource<CasHandle>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let handle = self.table.delete(cas)?;
        let expected = handle.current.as_ref().map_or(0, |e| e.revision);
        let change = Change::Set {
            value,
            ttl_ms: None,
        };
        let written = self
            .access
            .write(
                &handle.bucket,
                handle.key.clone(),
                change,
                Condition::Revision(expected),
            )
            .await;
        match written {
            Ok(Outcome::Done { .. }) => Ok(Ok(())),
            Ok(Outcome::Conflict) => {
                let current = match self.access.get(&handle.bucket, &handle.key).await {
                    Ok(current) => current,
                    Err(sentence) => {
                        return Ok(Err(atomics::CasError::StoreError(store::Error::Other(
                            sentence,
                        ))));
                    }
                };
                let fresh = self.table.push(CasHandle { current, ..handle })?;
                Ok(Err(atomics::CasError::CasFailed(fresh)))
            }
            Err(sentence) => Ok(Err(atomics::CasError::StoreError(store::Error::Other(
                sentence,
            )))),
        }
    }
}

impl atomics::HostCas for KvView<'_> {
    async fn new(
        &mut self,
        handle: Resource<BucketHandle>,
        key: String,
    ) -> Result<Resource<CasHandle>, Refusal> {
        let bucket = self.bucket(&handle)?;
        let current = self.access.get(&bucket, &key).await?;
        Ok(self.table.push(CasHandle {
            bucket,
            key,
            current,
        })?)
    }

    async fn current(&mut self, cas: Resource<CasHandle>) -> Result<Option<Vec<u8>>, Refusal> {
        let handle = self.table.get(&cas)?;
        Ok(handle.current.as_ref().map(|e| e.value.clone()))
    }

    async fn drop(&mut self, cas: Resource<CasHandle>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl batch::Host for KvView<'_> {
    async fn get_many(
        &mut self,
        handle: Resource<BucketHandle>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, Refusal> {
        KvView::get_many(self, &handle, keys).await
    }

    async fn set_many(
        &mut self,
        handle: Resource<BucketHandle>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), Refusal> {
        let changes = key_values
            .into_iter()
            .map(|(key, value)| {
                let change = Change::Set {
                    value,
                    ttl_ms: None,
                };
                (key, change)
            })
            .collect();
        self.write_many(&handle, changes).await
    }

    async fn delete_many(
        &mut self,
        handle: Resource<BucketHandle>,
        keys: Vec<String>,
    ) -> Result<(), Refusal> {
        let changes = keys.into_iter().map(|key| (key, Change::Delete)).collect();
        self.write_many(&handle, changes).await
    }
}

impl versioned::Host for KvView<'_> {
    async fn get(
        &mut self,
        handle: Resource<BucketHandle>,
        key: String,
    ) -> Result<Option<versioned::Entry>, Refusal> {
        let bucket = self.bucket(&handle)?;
        let now = now_ms();
        Ok(self
            .access
            .get(&bucket, &key)
            .await?
            .map(|e| versioned::Entry {
                version: e.revision,
                expires_in_ms: e.expires_at_ms.map(|at| at.saturating_sub(now)),
                value: e.value,
            }))
    }

    async fn set(
        &mut self,
        handle: Resource<BucketHandle>,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<u64, Refusal> {
        match KvView::set(self, &handle, key, value, ttl_ms).await? {
            Outcome::Done { revision, .. } => Ok(revision),
            Outcome::Conflict => Err(Refusal::Other("the write was not applied".into())),
        }
    }

    async fn set_if(
        &mut self,
        handle: Resource<BucketHandle>,
        key: String,
        value: Vec<u8>,
        expected: u64,
        ttl_ms: Option<u64>,
    ) -> Result<Option<u64>, Refusal> {
        let bucket = self.bucket(&handle)?;
        let change = Change::Set { value, ttl_ms };
        let outcome = self
            .access
            .write(&bucket, key, change, Condition::Revision(expected))
            .await?;
        Ok(match outcome {
            Outcome::Done { revision, .. } => Some(revision),
            Outcome::Conflict => None,
        })
    }

    async fn delete_if(
        &mut self,
        handle: Resource<BucketHandle>,
        key: String,
        expected: u64,
    ) -> Result<bool, Refusal> {
        if expected == 0 {
            return Ok(false);
        }
        let outcome = KvView::delete(self, &handle, key, Condition::Revision(expected)).await?;
        Ok(matches!(outcome, Outcome::Done { .. }))
    }
}
