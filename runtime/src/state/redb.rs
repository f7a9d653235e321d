//! The state log of a single node: `handoff.redb` in the data directory (redb: copy-on-write
//! B-trees with checksummed commits, so a crash at any moment leaves the last committed
//! transaction intact). Tables: `routes` (name → [`RouteRecord`] as JSON, history included)
//! and `modules` (digest → [`ModuleRecord`] as JSON).
//!
//! Every write is one transaction; redb serializes them, which is what makes a route's
//! revision check and [`StateLog::collect`] atomic with respect to appends. Each call runs on
//! the blocking pool.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::log::{AppendError, BoxFuture, Change, StateLog, Stored};
use super::records::{ModuleRecord, RouteRecord};
use crate::names::RouteName;
use crate::version::Digest;

const ROUTES: TableDefinition<&str, &[u8]> = TableDefinition::new("routes");
const MODULES: TableDefinition<&str, &[u8]> = TableDefinition::new("modules");

/// The redb-backed state log.
#[derive(Clone)]
pub struct RedbLog {
    db: Arc<Database>,
}

impl RedbLog {
    /// Opens (creating if needed) `handoff.redb` in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("handoff.redb");
        super::private::prepare_private_file(&path)?;
        let db = Database::create(&path)
            .with_context(|| format!("opening the database `{}`", path.display()))?;
        let txn = db.begin_write()?;
        txn.open_table(ROUTES)?;
        txn.open_table(MODULES)?;
        txn.commit()?;
        Ok(Self { db: Arc::new(db) })
    }

    /// Runs `work` with the database on the blocking pool.
    fn blocking<T, F>(&self, work: F) -> BoxFuture<'static, anyhow::Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> anyhow::Result<T> + Send + 'static,
    {
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || work(&db))
                .await
                .context("the state log's worker failed")?
        })
    }
}

fn route_of(name: &str, value: &[u8]) -> anyhow::Result<Stored> {
    let record: RouteRecord =
        serde_json::from_slice(value).with_context(|| format!("route `{name}` is unreadable"))?;
    let name = RouteName::parse(name).map_err(anyhow::Error::msg)?;
    Ok(Stored { name, record })
}

fn module_of(digest: &str, value: &[u8]) -> anyhow::Result<(Digest, ModuleRecord)> {
    let digest = Digest::parse(digest)
        .with_context(|| format!("`{digest}` in the modules table is not a digest"))?;
    Ok((digest, serde_json::from_slice(value)?))
}

impl StateLog for RedbLog {
    fn routes(&self) -> BoxFuture<'_, anyhow::Result<Vec<Stored>>> {
        self.blocking(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(ROUTES)?;
            let mut routes = Vec::new();
            for entry in table.iter()? {
                let (name, value) = entry?;
                routes.push(route_of(name.value(), value.value())?);
            }
            Ok(routes)
        })
    }

    fn route<'a>(&'a self, name: &'a RouteName) -> BoxFuture<'a, anyhow::Result<Option<Stored>>> {
        let name = name.clone();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(ROUTES)?;
            table
                .get(name.as_str())?
                .map(|value| route_of(name.as_str(), value.value()))
                .transpose()
        })
    }

    fn module<'a>(
        &'a self,
        digest: &'a Digest,
    ) -> BoxFuture<'a, anyhow::Result<Option<ModuleRecord>>> {
        let digest = digest.clone();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(MODULES)?;
            let Some(value) = table.get(digest.as_str())? else {
                return Ok(None);
            };
            Ok(Some(serde_json::from_slice(value.value())?))
        })
    }

    fn modules(&self) -> BoxFuture<'_, anyhow::Result<Vec<(Digest, ModuleRecord)>>> {
        self.blocking(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(MODULES)?;
            let mut modules = Vec::new();
            for entry in table.iter()? {
                let (digest, value) = entry?;
                modules.push(module_of(digest.value(), value.value())?);
            }
            Ok(modules)
        })
    }

    fn append(&self, change: Change) -> BoxFuture<'_, Result<u64, AppendError>> {
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || append(&db, change))
                .await
                .map_err(|e| AppendError::Failed(anyhow::anyhow!("the state log's worker: {e}")))?
        })
    }

    fn put_modules(
        &self,
        modules: Vec<(Digest, ModuleRecord)>,
    ) -> BoxFuture<'_, anyhow::Result<()>> {
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(MODULES)?;
                for (digest, record) in &modules {
                    table.insert(digest.as_str(), serde_json::to_vec(record)?.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
    }

    fn collect(
        &self,
        protect: Box<dyn Fn(&Digest) -> bool + Send>,
    ) -> BoxFuture<'_, anyhow::Result<Vec<Digest>>> {
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            let mut removed = Vec::new();
            {
                let referenced = referenced(&txn.open_table(ROUTES)?)?;
                let mut table = txn.open_table(MODULES)?;
                let mut doomed = Vec::new();
                for entry in table.iter()? {
                    let (digest, value) = entry?;
                    let (digest, record) = module_of(digest.value(), value.value())?;
                    if !record.pinned && !referenced.contains(digest.as_str()) && !protect(&digest)
                    {
                        doomed.push(digest);
                    }
                }
                for digest in doomed {
                    table.remove(digest.as_str())?;
                    removed.push(digest);
                }
            }
            txn.commit()?;
            Ok(removed)
        })
    }

    fn remove_module<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, anyhow::Result<bool>> {
        let digest = digest.clone();
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            {
                if referenced(&txn.open_table(ROUTES)?)?.contains(digest.as_str()) {
                    return Ok(false);
                }
                txn.open_table(MODULES)?.remove(digest.as_str())?;
            }
            txn.commit()?;
            Ok(true)
        })
    }
}

/// Every digest some route references.
fn referenced(
    routes: &impl ReadableTable<&'static str, &'static [u8]>,
) -> anyhow::Result<HashSet<String>> {
    let mut referenced = HashSet::new();
    for entry in routes.iter()? {
        let (name, value) = entry?;
        let stored = route_of(name.value(), value.value())?;
        referenced.extend(stored.record.references().map(str::to_owned));
    }
    Ok(referenced)
}

fn append(db: &Database, change: Change) -> Result<u64, AppendError> {
    let write = || -> anyhow::Result<Result<u64, AppendError>> {
        let txn = db.begin_write()?;
        let revision;
        {
            let mut routes = txn.open_table(ROUTES)?;
            let key = change.route.as_str();
            let now = match routes.get(key)? {
                Some(value) => route_of(key, value.value())?.record.revision,
                None => 0,
            };
            if now != change.base {
                return Ok(Err(AppendError::Conflict {
                    route: key.to_owned(),
                    now,
                }));
            }
            revision = now + 1;
            match change.next {
                Some(mut record) => {
                    record.revision = revision;
                    routes.insert(key, serde_json::to_vec(&record)?.as_slice())?;
                }
                None => {
                    routes.remove(key)?;
                }
            }
            let mut modules = txn.open_table(MODULES)?;
            for (digest, record) in &change.modules {
                modules.insert(digest.as_str(), serde_json::to_vec(record)?.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(Ok(revision))
    };
    write().map_err(AppendError::Failed)?
}
