//! `wasi:keyvalue@0.2.0-draft`, what wasmCloud and `wasmtime-wasi-keyvalue` implement: the
//! same buckets as draft2 (`super::host`), with `u64` list cursors (how many keys came before
//! the page; the bucket handle remembers the key its last page ended at, so listing page after
//! page seeks by key) and unsigned increments (a refused one changes nothing).

use wasmtime::component::{HasData, Linker, Resource};

use super::backend::{Condition, Start};
use super::host::{BucketHandle, KvView, Refusal};

mod generated {
    wasmtime::component::bindgen!({
        path: "../wit/keyvalue-0.2.0-draft",
        world: "wasi:keyvalue/imports@0.2.0-draft",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": crate::kv::host::BucketHandle,
        },
        trappable_error_type: {
            "wasi:keyvalue/store.error" => crate::kv::host::Refusal,
        },
    });
}

use generated::wasi::keyvalue::{atomics, batch, store};

struct HasKv;

impl HasData for HasKv {
    type Data<'a> = KvView<'a>;
}

/// Links the draft's interfaces.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> KvView<'_>,
) -> anyhow::Result<()> {
    store::add_to_linker::<T, HasKv>(linker, get)?;
    atomics::add_to_linker::<T, HasKv>(linker, get)?;
    batch::add_to_linker::<T, HasKv>(linker, get)?;
    Ok(())
}

impl store::Host for KvView<'_> {
    async fn open(&mut self, identifier: String) -> Result<Resource<BucketHandle>, Refusal> {
        KvView::open(self, &identifier)
    }

    fn convert_error(&mut self, refusal: Refusal) -> wasmtime::Result<store::Error> {
        match refusal {
            Refusal::NoSuchStore => Ok(store::Error::NoSuchStore),
            Refusal::Other(sentence) => Ok(store::Error::Other(sentence)),
            Refusal::Trap(trap) => Err(trap),
        }
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
        cursor: Option<u64>,
    ) -> Result<store::KeyResponse, Refusal> {
        let bucket = self.bucket(&handle)?;
        let offset = cursor.unwrap_or(0);
        // A cursor this handle handed out continues after the key its page ended at; any other
        // (a guest's own number) walks the keys before it.
        let after = match (&self.table.get(&handle)?.draft_cursor, cursor) {
            (Some((next, key)), Some(n)) if *next == n => Some(key.clone()),
            _ => None,
        };
        let start = match (&after, offset) {
            (Some(key), _) => Start::After(key),
            (None, 0) => Start::First,
            (None, n) => Start::Offset(n),
        };
        let page = self.access.list(&bucket, start).await?;
        let cursor = page
            .more
            .then(|| offset.saturating_add(page.items.len() as u64));
        self.table.get_mut(&handle)?.draft_cursor = cursor.zip(page.items.last().cloned());
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
        delta: u64,
    ) -> Result<u64, Refusal> {
        let delta = i64::try_from(delta).map_err(|_| {
            Refusal::Other(format!(
                "an increment of {delta} overflows a 64-bit integer"
            ))
        })?;
        let bucket = self.bucket(&handle)?;
        // The draft's counters are unsigned: one that would stay negative is refused, and the
        // refusal changes nothing.
        let sum = self.access.increment_from(&bucket, key, delta, 0).await?;
        u64::try_from(sum).map_err(|_| Refusal::Other(format!("the counter is negative ({sum})")))
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
                let change = super::backend::Change::Set {
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
        let changes = keys
            .into_iter()
            .map(|key| (key, super::backend::Change::Delete))
            .collect();
        self.write_many(&handle, changes).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use wasmtime::component::{Resource, ResourceTable};

    use super::store::HostBucket as _;
    use crate::kv::access::KvAccess;
    use crate::kv::backend::Change;
    use crate::kv::buckets::Kv;
    use crate::kv::host::KvView;
    use crate::kv::limits::KvLimits;
    use crate::kv::redb::RedbBackend;
    use crate::names::RouteName;

    #[tokio::test]
    async fn a_listing_cursor_continues_after_its_page_even_when_keys_arrive_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Arc::new(RedbBackend::open(&dir.path().join("kv.redb")).unwrap());
        let kv = Kv::new(backend);
        let limits = KvLimits {
            max_value: 1 << 20,
            max_keys: 0,
            max_bytes: 0,
        };
        let mut access = KvAccess::new(kv.grants(&RouteName::parse("api").unwrap(), &[]), limits);
        let mut table = ResourceTable::new();
        let mut view = KvView {
            access: &mut access,
            table: &mut table,
        };
        let Ok(handle) = KvView::open(&mut view, "default") else {
            panic!("the route's own bucket opens");
        };
        let Ok(bucket) = view.bucket(&handle) else {
            panic!("the handle names a bucket");
        };
        let set = |key: String| {
            let change = Change::Set {
                value: b"v".to_vec(),
                ttl_ms: None,
            };
            (key, change)
        };
        view.access
            .write_many(
                &bucket,
                (0..1500).map(|i| set(format!("k{i:04}"))).collect(),
            )
            .await
            .unwrap();
        let borrow = || Resource::<crate::kv::host::BucketHandle>::new_borrow(handle.rep());
        let Ok(first) = view.list_keys(borrow(), None).await else {
            panic!("the first page");
        };
        assert_eq!(first.keys.len(), 1000);
        assert_eq!(first.cursor, Some(1000));
        // Between the calls, a key that sorts before the cursor arrives: the next page still
        // starts after the first page's last key (counting from the first key again would
        // repeat it).
        view.access
            .write_many(&bucket, vec![set("a-first".into())])
            .await
            .unwrap();
        let Ok(second) = view.list_keys(borrow(), first.cursor).await else {
            panic!("the second page");
        };
        assert_eq!(second.keys.first().map(String::as_str), Some("k1000"));
        assert_eq!(second.keys.len(), 500);
        assert_eq!(second.cursor, None);
    }
}
