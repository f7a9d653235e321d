//! What both sides of a takeover find in the data directory: the socket, and the stores the
//! other process may still hold locked for a moment.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The socket's name in the data directory.
pub const SOCKET: &str = "takeover.sock";

/// How long the old process tries to reopen its state after a failed takeover (the new
/// process's file locks go when it exits, which may be just after its connection closed).
const REOPEN_WAIT: Duration = Duration::from_secs(10);

/// The takeover socket of the server whose data directory is `dir`.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET)
}

/// Opens what the new process may still hold locked for a moment after its connection closed.
pub(super) async fn reopen<T: Send + 'static>(
    open: impl Fn() -> anyhow::Result<T> + Send + Sync + 'static,
) -> anyhow::Result<T> {
    let open = Arc::new(open);
    let started = std::time::Instant::now();
    loop {
        let attempt = open.clone();
        match tokio::task::spawn_blocking(move || attempt()).await? {
            Ok(opened) => return Ok(opened),
            Err(error) if started.elapsed() > REOPEN_WAIT => return Err(error),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
