//! Background work under one owner. Every task the server starts besides a request's own work
//! goes through one [`Background`]: the long-lived loops (cluster heartbeats and watches, the
//! rollout supervisor and controllers, the figures and convergence publishers, the expired-key
//! sweep, the takeover socket) with [`Background::spawn`], ended by its one stop signal; the
//! work that must finish, not be cut (connections, admin requests, drains, garbage collection),
//! with [`Background::spawn_job`]. `Server::shutdown` stops it once the listeners have drained
//! and awaits every task it tracks within the drain bound ([`Background::stop`]), so the
//! runtime, and the data directory it holds open, is released when it returns.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The owner of the server's background tasks (cheap to clone: every clone is the same owner).
#[derive(Debug, Clone, Default)]
pub struct Background {
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Background {
    /// An owner with no tasks yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `work` until it ends or the background stops (it is then dropped at its next
    /// `.await`).
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) -> JoinHandle<()> {
        self.spawn_until(self.stop.clone(), work)
    }

    /// Runs `work` until it ends or `until` is cancelled (a [`Background::scope`]: it is
    /// cancelled when the background stops too).
    pub fn spawn_until(
        &self,
        until: CancellationToken,
        work: impl Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<()> {
        self.tasks.spawn(async move {
            tokio::select! {
                biased;
                () = until.cancelled() => {}
                () = work => {}
            }
        })
    }

    /// Runs `work` to its end: the stop signal does not cut it, and a shutdown waits for it
    /// (within its bound). A loop that must not be cut mid-step (it applies changes) watches a
    /// [`Background::scope`] at its waits instead.
    pub fn spawn_job<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> JoinHandle<T> {
        self.tasks.spawn(work)
    }

    /// A stop signal of a part of the server (a cluster membership, a rollout's controller):
    /// cancelled when the background stops, or earlier by whoever holds it.
    pub fn scope(&self) -> CancellationToken {
        self.stop.child_token()
    }

    /// Tasks running now.
    pub fn running(&self) -> usize {
        self.tasks.len()
    }

    /// Ends every loop, takes no new task (one spawned later still runs, and is waited for),
    /// and waits up to `within` for every task to end. Returns whether they all did.
    pub async fn stop(&self, within: Duration) -> bool {
        self.stop.cancel();
        self.tasks.close();
        tokio::time::timeout(within, self.tasks.wait())
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_ends_loops_and_waits_for_jobs() {
        let background = Background::new();
        let scope = background.scope();
        background.spawn(std::future::pending());
        background.spawn_until(scope.clone(), std::future::pending());
        let (done, finished) = tokio::sync::oneshot::channel();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        background.spawn_job(async move {
            let _ = released.await;
            let _ = done.send(());
        });
        assert_eq!(background.running(), 3);
        // A job is not cut: the stop waits for it.
        let stopping = tokio::spawn({
            let background = background.clone();
            async move { background.stop(Duration::from_secs(20)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!stopping.is_finished());
        assert!(scope.is_cancelled(), "a scope ends with the background");
        release.send(()).unwrap();
        assert!(stopping.await.unwrap());
        finished.await.unwrap();
        assert_eq!(background.running(), 0);
    }

    #[tokio::test]
    async fn stop_gives_up_after_its_bound() {
        let background = Background::new();
        background.spawn_job(std::future::pending::<()>());
        assert!(!background.stop(Duration::from_millis(10)).await);
    }

    #[tokio::test]
    async fn a_scope_ends_its_loops_early() {
        let background = Background::new();
        let scope = background.scope();
        let task = background.spawn_until(scope.clone(), std::future::pending());
        scope.cancel();
        task.await.unwrap();
        assert!(!background.stop.is_cancelled(), "the background goes on");
    }
}
