//! The state log of a single node: `handoff.redb` in the data directory (redb: copy-on-write
//! B-trees with checksummed commits, so a crash at any moment leaves the last committed
//! transaction intact). Tables: `routes` (name → [`RouteRecord`] as JSON, history included),
//! `prefixes` (prefix → the name of the route that holds it, written in the same transaction
//! as the route) and `modules` (digest → [`ModuleRecord`] as JSON).
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
use crate::digest::Digest;
use crate::names::RouteName;

const ROUTES: TableDefinition<&str, &[u8]> = TableDefinition::new("routes");
const MODULES: TableDefinition<&str, &[u8]> = TableDefinition::new("modules");
const PREFIXES: TableDefinition<&str, &str> = TableDefinition::new("prefixes");

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
        let claimed = {
            let txn = db.begin_read()?;
            match txn.open_table(PREFIXES) {
                Ok(_) => true,
                Err(redb::TableError::TableDoesNotExist(_)) => false,
                Err(error) => return Err(error.into()),
            }
        };
        let txn = db.begin_write()?;
        txn.open_table(ROUTES)?;
        txn.open_table(MODULES)?;
        txn.open_table(PREFIXES)?;
        if !claimed {
            claim_stored_prefixes(&txn)?;
        }
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

/// Records the prefix of every stored route, in name order, in a data directory written before
/// prefixes were claims. Two routes recorded at one prefix then (a cluster could record them)
/// leave it to the first; the other is not restored (see `deploy::restore`).
fn claim_stored_prefixes(txn: &redb::WriteTransaction) -> anyhow::Result<()> {
    let routes = txn.open_table(ROUTES)?;
    let mut prefixes = txn.open_table(PREFIXES)?;
    for entry in routes.iter()? {
        let (name, value) = entry?;
        let stored = route_of(name.value(), value.value())?;
        let prefix = stored.record.claimed_prefix(&stored.name);
        let owner = prefixes.get(prefix.as_str())?.map(|o| o.value().to_owned());
        match owner {
            Some(owner) => tracing::error!(
                route = stored.name.as_str(),
                prefix = prefix.as_str(),
                owner = %owner,
                "two routes are recorded at one prefix; the first keeps it"
            ),
            None => {
                prefixes.insert(prefix.as_str(), stored.name.as_str())?;
            }
        }
    }
    Ok(())
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

    fn prefix_owner<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Option<RouteName>>> {
        let prefix = prefix.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(PREFIXES)?;
            let owner = table.get(prefix.as_str())?;
            owner
                .map(|o| RouteName::parse(o.value()).map_err(anyhow::Error::msg))
                .transpose()
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
            let mut prefixes = txn.open_table(PREFIXES)?;
            let key = change.route.as_str();
            let stored = routes
                .get(key)?
                .map(|value| route_of(key, value.value()))
                .transpose()?;
            let now = stored.as_ref().map_or(0, |s| s.record.revision);
            if now != change.base {
                return Ok(Err(AppendError::Conflict {
                    route: key.to_owned(),
                    now,
                }));
            }
            // The prefix claims: the route takes its new prefix and lets go of its old one in
            // this transaction.
            let next_prefix = change
                .next
                .as_ref()
                .map(|r| r.claimed_prefix(&change.route));
            if let Some(prefix) = &next_prefix {
                let owner = prefixes.get(prefix.as_str())?.map(|o| o.value().to_owned());
                if let Some(owner) = owner.filter(|o| o != key) {
                    return Ok(Err(AppendError::PrefixTaken {
                        prefix: prefix.as_str().to_owned(),
                        owner,
                    }));
                }
            }
            if let Some(old) = stored.map(|s| s.record.claimed_prefix(&change.route))
                && next_prefix.as_ref() != Some(&old)
                && prefixes
                    .get(old.as_str())?
                    .is_some_and(|o| o.value() == key)
            {
                prefixes.remove(old.as_str())?;
            }
            if let Some(prefix) = &next_prefix {
                prefixes.insert(prefix.as_str(), key)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(prefix: &str) -> RouteRecord {
        RouteRecord {
            prefix: prefix.into(),
            active: "sha256:00".into(),
            settings: Default::default(),
            candidate: None,
            shadow: None,
            rollout: None,
            history: Vec::new(),
            revision: 0,
            trace: None,
        }
    }

    fn change(route: &str, base: u64, next: Option<RouteRecord>) -> Change {
        Change {
            route: RouteName::parse(route).unwrap(),
            base,
            next,
            modules: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_prefix_is_held_by_one_route_from_its_record_to_its_delete() {
        let dir = tempfile::tempdir().unwrap();
        let log = RedbLog::open(dir.path()).unwrap();
        assert_eq!(log.append(change("x", 0, Some(at("/p")))).await.unwrap(), 1);
        let taken = log.append(change("y", 0, Some(at("/p/")))).await;
        assert!(
            matches!(&taken, Err(AppendError::PrefixTaken { prefix, owner }) if prefix == "/p" && owner == "x"),
            "{taken:?}"
        );
        assert!(
            log.route(&RouteName::parse("y").unwrap())
                .await
                .unwrap()
                .is_none()
        );
        // x moves to /q: /p is free, /q is x's.
        assert_eq!(log.append(change("x", 1, Some(at("/q")))).await.unwrap(), 2);
        assert_eq!(log.append(change("y", 0, Some(at("/p")))).await.unwrap(), 1);
        assert!(matches!(
            log.append(change("z", 0, Some(at("/q")))).await,
            Err(AppendError::PrefixTaken { .. })
        ));
        assert_eq!(log.prefix_owner("/q").await.unwrap().unwrap().as_str(), "x");
        // A delete lets go of it, and the claims survive a reopen.
        log.append(change("x", 2, None)).await.unwrap();
        drop(log);
        let log = RedbLog::open(dir.path()).unwrap();
        assert!(log.prefix_owner("/q").await.unwrap().is_none());
        assert_eq!(log.prefix_owner("/p").await.unwrap().unwrap().as_str(), "y");
        assert_eq!(log.append(change("z", 0, Some(at("/q")))).await.unwrap(), 1);
    }
}
