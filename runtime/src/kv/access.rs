//! One request's key-value access: the buckets its route may open, its limits, and its mode.
//!
//! * [`KvAccess::new`]: reads and writes go to the backend.
//! * [`KvAccess::overlay`]: for a shadow run. Reads see the real data, but writes go to a
//!   scratch overlay that belongs to this request and is dropped with it, so a copy of a request
//!   never changes what serves. Reads see the overlay's writes first (a guest reads its own
//!   writes); conditions, increments and listings see real data and overlay together. The
//!   overlay holds at most [`MAX_OVERLAY_BYTES`]; past that, writes fail.
//!
//! Every operation is counted in its bucket's counters. Errors are sentences for the guest
//! (the interface's `other` error); a backend failure says nothing internal.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::backend::{
    Change, Condition, Entry, KvError, Outcome, Page, Start, Write, add, now_ms, number_of,
};
use super::buckets::{Bucket, Grants};
use super::limits::{KvLimits, MAX_OVERLAY_BYTES, PAGE_KEYS, explain};

/// How often [`KvAccess::increment_from`] reads and tries again when another write to its key
/// comes between its read and its increment.
const INCREMENT_ATTEMPTS: usize = 64;

/// The revisions an overlay hands out start here, above any real revision.
const OVERLAY_REVISIONS: u64 = 1 << 62;

/// A request's access to the key-value store.
pub struct KvAccess {
    grants: Grants,
    limits: KvLimits,
    overlay: Option<Box<Overlay>>,
}

/// A shadow run's writes: `None` is a deletion.
#[derive(Default)]
struct Overlay {
    writes: BTreeMap<(Arc<str>, String), Option<Entry>>,
    revision: u64,
    bytes: usize,
}

/// Why `open` failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// The route was not granted a bucket of that name.
    NoSuchStore,
}

impl KvAccess {
    /// Access that reads and writes the backend.
    pub fn new(grants: Grants, limits: KvLimits) -> Self {
        Self {
            grants,
            limits,
            overlay: None,
        }
    }

    /// Access for a shadow run: real reads, writes kept in a scratch overlay that is discarded
    /// with the request.
    pub fn overlay(grants: Grants, limits: KvLimits) -> Self {
        Self {
            grants,
            limits,
            overlay: Some(Box::default()),
        }
    }

    /// Turns this access into a shadow run's ([`KvAccess::overlay`]).
    pub fn use_overlay(&mut self) {
        self.overlay.get_or_insert_with(Box::default);
    }

    /// Whether writes go to a scratch overlay.
    pub fn is_overlay(&self) -> bool {
        self.overlay.is_some()
    }

    /// The bucket `identifier` names, if the route may open it.
    pub fn open(&self, identifier: &str) -> Result<Arc<Bucket>, OpenError> {
        self.grants
            .open(identifier)
            .cloned()
            .ok_or(OpenError::NoSuchStore)
    }

    /// The entry of `key`, unless absent or expired.
    pub async fn get(&mut self, bucket: &Bucket, key: &str) -> Result<Option<Entry>, String> {
        let result = self.read(bucket, key).await;
        let read = result
            .as_ref()
            .map_or(0, |e| e.as_ref().map_or(0, |e| e.value.len()));
        finish(bucket, result, read, 0)
    }

    /// Applies `change` to `key` under `condition`.
    pub async fn write(
        &mut self,
        bucket: &Bucket,
        key: String,
        change: Change,
        condition: Condition,
    ) -> Result<Outcome, String> {
        let written = match &change {
            Change::Set { value, .. } => value.len(),
            _ => 0,
        };
        let result = self.apply(bucket, key, change, condition).await;
        finish(bucket, result, 0, written)
    }

    /// Adds `delta` to the number at `key`; the new value.
    pub async fn increment(
        &mut self,
        bucket: &Bucket,
        key: String,
        delta: i64,
    ) -> Result<i64, String> {
        let outcome = self
            .write(bucket, key, Change::Increment { delta }, Condition::Always)
            .await?;
        match outcome {
            Outcome::Done {
                number: Some(number),
                ..
            } => Ok(number),
            _ => Err("the increment was not applied".into()),
        }
    }

    /// Adds `delta` to the number at `key` unless the sum would be below `floor`; the new
    /// value. A refused increment changes nothing: the value is read, checked, then
    /// incremented only if it is still the one read (retried when another write came first).
    pub async fn increment_from(
        &mut self,
        bucket: &Bucket,
        key: String,
        delta: i64,
        floor: i64,
    ) -> Result<i64, String> {
        for _ in 0..INCREMENT_ATTEMPTS {
            let current = self.get(bucket, &key).await?;
            let old = number_of(&key, current.as_ref().map(|e| e.value.as_slice()))
                .map_err(|e| e.to_string())?;
            let sum = add(&key, old, delta).map_err(|e| e.to_string())?;
            if sum < floor {
                return Err(format!(
                    "the counter `{key}` would be {sum}, below {floor}; it is unchanged"
                ));
            }
            let condition = Condition::Revision(current.map_or(0, |e| e.revision));
            let change = Change::Increment { delta };
            match self.write(bucket, key.clone(), change, condition).await? {
                Outcome::Done {
                    number: Some(number),
                    ..
                } => return Ok(number),
                Outcome::Conflict => continue,
                Outcome::Done { .. } => return Err("the increment was not applied".into()),
            }
        }
        Err(format!(
            "the counter `{key}` changed under {INCREMENT_ATTEMPTS} attempts to increment it; retry"
        ))
    }

    /// Applies several unconditional changes, in order.
    pub async fn write_many(
        &mut self,
        bucket: &Bucket,
        changes: Vec<(String, Change)>,
    ) -> Result<(), String> {
        let written: usize = changes
            .iter()
            .map(|(_, c)| match c {
                Change::Set { value, .. } => value.len(),
                _ => 0,
            })
            .sum();
        let result = self.apply_many(bucket, changes).await;
        finish(bucket, result, 0, written)
    }

    /// At most [`PAGE_KEYS`] keys from `start`.
    pub async fn list(
        &mut self,
        bucket: &Bucket,
        start: Start<'_>,
    ) -> Result<Page<String>, String> {
        let result = self.page(bucket, start).await;
        finish(bucket, result, 0, 0)
    }

    async fn read(&self, bucket: &Bucket, key: &str) -> Result<Option<Entry>, KvError> {
        self.limits.check_key(key)?;
        if let Some(overlay) = &self.overlay
            && let Some(entry) = overlay.writes.get(&(bucket.id.clone(), key.to_owned()))
        {
            let now = now_ms();
            return Ok(entry
                .clone()
                .filter(|e| e.expires_at_ms.is_none_or(|at| at > now)));
        }
        self.grants.backend().get(&bucket.id, key).await
    }

    async fn apply(
        &mut self,
        bucket: &Bucket,
        key: String,
        change: Change,
        condition: Condition,
    ) -> Result<Outcome, KvError> {
        self.limits.check_key(&key)?;
        if let Change::Set { value, .. } = &change {
            self.limits.check_value(value)?;
        }
        if self.overlay.is_some() {
            return self.apply_overlay(bucket, key, change, condition).await;
        }
        let write = Write {
            key,
            change,
            condition,
            quota: self.limits.quota(),
        };
        self.grants.backend().write(&bucket.id, write).await
    }

    async fn apply_many(
        &mut self,
        bucket: &Bucket,
        changes: Vec<(String, Change)>,
    ) -> Result<(), KvError> {
        for (key, change) in &changes {
            self.limits.check_key(key)?;
            if let Change::Set { value, .. } = change {
                self.limits.check_value(value)?;
            }
        }
        if self.overlay.is_some() {
            for (key, change) in changes {
                self.apply_overlay(bucket, key, change, Condition::Always)
                    .await?;
            }
            return Ok(());
        }
        let quota = self.limits.quota();
        let writes = changes
            .into_iter()
            .map(|(key, change)| Write::new(key, change, quota))
            .collect();
        for outcome in self.grants.backend().write_all(&bucket.id, writes).await? {
            outcome?;
        }
        Ok(())
    }

    async fn apply_overlay(
        &mut self,
        bucket: &Bucket,
        key: String,
        change: Change,
        condition: Condition,
    ) -> Result<Outcome, KvError> {
        let current = self.read(bucket, &key).await?;
        let holds = match condition {
            Condition::Always => true,
            Condition::Revision(0) => current.is_none(),
            Condition::Revision(r) => current.as_ref().is_some_and(|e| e.revision == r),
        };
        if !holds {
            return Ok(Outcome::Conflict);
        }
        let overlay = self.overlay.as_mut().expect("an overlay access");
        overlay.revision += 1;
        let revision = OVERLAY_REVISIONS + overlay.revision;
        let (next, number) = match change {
            Change::Delete => (None, None),
            Change::Set { value, ttl_ms } => (
                Some(Entry {
                    value,
                    revision,
                    expires_at_ms: ttl_ms.map(|ttl| now_ms().saturating_add(ttl)),
                }),
                None,
            ),
            Change::Increment { delta } => {
                let old = number_of(&key, current.as_ref().map(|e| e.value.as_slice()))?;
                let sum = add(&key, old, delta)?;
                (
                    Some(Entry {
                        value: sum.to_string().into_bytes(),
                        revision,
                        expires_at_ms: current.and_then(|e| e.expires_at_ms),
                    }),
                    Some(sum),
                )
            }
        };
        let size = key.len() + next.as_ref().map_or(0, |e| e.value.len());
        if overlay.bytes + size > MAX_OVERLAY_BYTES {
            return Err(KvError::Invalid(format!(
                "a shadow run may write at most {MAX_OVERLAY_BYTES} bytes to its scratch copy"
            )));
        }
        overlay.bytes += size;
        overlay.writes.insert((bucket.id.clone(), key), next);
        Ok(Outcome::Done { revision, number })
    }

    async fn page(&self, bucket: &Bucket, start: Start<'_>) -> Result<Page<String>, KvError> {
        let mut page = self
            .grants
            .backend()
            .list(&bucket.id, start, PAGE_KEYS)
            .await?;
        let Some(overlay) = &self.overlay else {
            return Ok(page);
        };
        // Merge the overlay's keys in the page's range: after the start, up to the page's last
        // key (or to the end, on the last page).
        let now = now_ms();
        let after = match start {
            Start::After(key) => Some(key),
            _ => None,
        };
        let upto = page.more.then(|| page.items.last().cloned()).flatten();
        page.items.retain(|key| {
            !matches!(
                overlay.writes.get(&(bucket.id.clone(), key.clone())),
                Some(None)
            )
        });
        for ((id, key), entry) in &overlay.writes {
            let visible = entry
                .as_ref()
                .is_some_and(|e| e.expires_at_ms.is_none_or(|at| at > now));
            let in_range = after.is_none_or(|a| key.as_str() > a)
                && upto.as_ref().is_none_or(|u| key <= u)
                && !matches!(start, Start::Offset(n) if n > 0);
            if **id == *bucket.id && visible && in_range && !page.items.contains(key) {
                page.items.push(key.clone());
            }
        }
        page.items.sort();
        if page.items.len() > PAGE_KEYS {
            page.items.truncate(PAGE_KEYS);
            page.more = true;
        }
        Ok(page)
    }
}

/// Counts an operation in its bucket and turns a refusal into the guest's sentence.
fn finish<T>(
    bucket: &Bucket,
    result: Result<T, KvError>,
    read: usize,
    written: usize,
) -> Result<T, String> {
    let ok = result.is_ok();
    bucket.stats.count(ok, read, if ok { written } else { 0 });
    result.map_err(|error| {
        if let KvError::Failed(detail) = &error {
            tracing::warn!(bucket = %bucket.name, error = %detail, "a key-value operation failed");
        }
        explain(error, bucket.name.opened_as())
    })
}
