//! A state log that can be let go of and taken back: what a server hands to the process that
//! takes over from it (`crate::takeover`). redb takes an exclusive lock on its file, so the old
//! process must close `handoff.redb` before the new one can open it, and reopen it if the new
//! one fails before it is ready.
//!
//! Every call holds a read guard for as long as it runs; [`Switchable::release`] takes the
//! write guard, so it waits for the calls in progress and no call is half done when the log is
//! closed. While released, every call fails with a sentence saying where the state went.

use std::sync::Arc;

use tokio::sync::RwLock;

use super::log::{AppendError, BoxFuture, Change, StateLog, Stored};
use super::records::ModuleRecord;
use crate::digest::Digest;
use crate::names::RouteName;

/// A [`StateLog`] whose backing log can be closed and reopened.
pub struct Switchable {
    inner: RwLock<Option<Arc<dyn StateLog>>>,
}

/// What a call on a released log answers.
fn released() -> anyhow::Error {
    anyhow::anyhow!(
        "this server has handed its state to a new process (`serve --takeover`); ask the new process"
    )
}

impl Switchable {
    /// Wraps `log`.
    pub fn new(log: Arc<dyn StateLog>) -> Self {
        Self {
            inner: RwLock::new(Some(log)),
        }
    }

    /// Waits for the calls in progress, then drops the log (closing its file if this held the
    /// last reference). Later calls fail until [`Switchable::restore`].
    pub async fn release(&self) {
        self.inner.write().await.take();
    }

    /// Puts a (reopened) log back.
    pub async fn restore(&self, log: Arc<dyn StateLog>) {
        *self.inner.write().await = Some(log);
    }
}

impl StateLog for Switchable {
    fn routes(&self) -> BoxFuture<'_, anyhow::Result<Vec<Stored>>> {
        Box::pin(async move {
            let guard = self.inner.read().await;
            let log = guard.as_ref().ok_or_else(released)?;
            log.routes().await
        })
    }

    fn route<'a>(&'a self, name: &'a RouteName) -> BoxFuture<'a, anyhow::Result<Option<Stored>>> {
        Box::pin(async move {
            let guard = self.inner.read().await;
            let log = guard.as_ref().ok_or_else(released)?;
            log.route(name).await
        })
    }

    fn module<'a>(
        &'a self,
        digest: &'a Digest,
    ) -> BoxFuture<'a, anyhow::Result<Option<ModuleRecord>>> {
        Box::pin(async move {
            let guard = self.inner.read().await;
            let log = guard.as_ref().ok_or_else(released)?;
            log.module(digest).await
        })
    }

    fn modules(&self) -> BoxFuture<'_, anyhow::Result<Vec<(Digest, ModuleRecord)>>> {
        Box::pin(async move {
            let guard = self.inner.read().await;
            let log = guard.as_ref().ok_or_else(released)?;
            log.modules().await
        })
    }

    fn append(&self, change: Change) -> BoxFuture<'_, Result<u64, AppendError>> {
        Box::pin(async move {
            let guard = self.inner.read().await;
            let log = guard.as_ref().ok_or_else(released)?;
            log.append(change).await
        })
    }

    fn prefix_owner<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Option<RouteName>>> {
        Box::pin(async move {
            let guard = self.inner.read().await;
            let log = guard.as_ref().ok_or_else(released)?;
            log.prefix_owner(prefix).await
        })
    }

    fn put_modules(
        &self,
        modules: Vec<(Digest, ModuleRecord)>,
    ) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            let guard = self.inner.read().await;
            let log = guard.as_ref().ok_or_else(released)?;
            log.put_modules(modules).await
        })
    }

    fn collect(
        &self,
        protect: Box<dyn Fn(&Digest) -> bool + Send>,
    ) -> BoxFuture<'_, anyhow::Result<Vec<Digest>>> {
        Box::pin(async move {
            let guard = self.inner.read().await;
            let log = guard.as_ref().ok_or_else(released)?;
            log.collect(protect).await
        })
    }

    fn remove_module<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move {
            let guard = self.inner.read().await;
            let log = guard.as_ref().ok_or_else(released)?;
            log.remove_module(digest).await
        })
    }
}
