//! Listeners and lifecycle: bind the data and admin listeners, serve until told to stop, then
//! shut down gracefully (stop accepting, let in-flight requests finish up to the drain
//! deadline, cut off the rest).
//!
//! The data plane uses hyper directly (HTTP/1.1 with keep-alive, and HTTP/2) so the hot path
//! has no router layers; the admin API is an axum router. Both listeners accept and serve
//! connections the same way (`listener::serve_listener`): a connection cap, a header timeout and an
//! idle timeout, a 64 KiB head limit, optional TLS, and a graceful shutdown bounded by the
//! drain timeout, after which the connections left are closed.

mod connection;
mod listener;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::runtime::Runtime;
pub use listener::{ADMIN_MAX_CONNECTIONS, HANDOVER_LINGER};
use listener::{serve_admin, serve_data};

/// Longest `shutdown` waits, after the drain timeout, for the server's background tasks
/// (`crate::background`) to end and release the runtime: shutdown takes at most
/// `--drain-timeout` plus this.
pub const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The least time a shutdown gives the spans still queued to reach the collector, even when
/// the drain used its whole bound.
pub const TRACE_FLUSH_FLOOR: std::time::Duration = std::time::Duration::from_secs(1);

/// A running server.
pub struct Server {
    runtime: Arc<Runtime>,
    data_addr: SocketAddr,
    admin_addr: SocketAddr,
    stop: CancellationToken,
    /// Set when a new process took over: responses say `Connection: close`.
    closing: CancellationToken,
    data_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
    /// The takeover socket in the data directory (none for an ephemeral server).
    #[cfg(unix)]
    takeover: Option<crate::takeover::Listening>,
    /// The process this one took over from, while it drains.
    #[cfg(unix)]
    _predecessor: Option<crate::takeover::Predecessor>,
}

impl Server {
    /// Validates `config`, builds the runtime, binds both listeners and starts serving.
    /// Returns once both listeners are bound.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        // `serve` refuses the flag already (`cli::serve`); this is for a `Config` built in code.
        #[cfg(not(unix))]
        anyhow::ensure!(!config.takeover, crate::cli::serve::NO_TAKEOVER_HERE);
        // TLS files are read and checked before anything binds (or is taken over).
        let data_tls = config
            .tls
            .as_ref()
            .map(crate::tls::acceptor)
            .transpose()
            .map_err(|e| anyhow::anyhow!("data-plane TLS: {e}"))?;
        let admin_tls = config
            .admin_tls
            .as_ref()
            .map(crate::tls::acceptor)
            .transpose()
            .map_err(|e| anyhow::anyhow!("admin TLS: {e}"))?;
        #[cfg(unix)]
        let taken = match config.takeover {
            true => Some(crate::takeover::take_over(&config).await?),
            false => None,
        };
        let runtime = Arc::new(Runtime::open(config).await?);
        #[cfg(unix)]
        if let Some(taken) = &taken {
            tracing::info!(
                old_pid = taken.predecessor.pid,
                "takeover: the state log is open here; loading every route before serving"
            );
        }
        let started = std::time::Instant::now();
        // In a cluster: what the restore below reads includes every change up to here; the
        // changes after it are followed once serving.
        let position = runtime.state.position().await?;
        let restored = crate::deploy::restore(&runtime).await;
        // Rollouts continue where they were: the supervisor starts a controller for each live
        // rollout the restore committed, and follows every change from here on.
        crate::rollout::supervise(&runtime);
        crate::rollout::cluster::share_figures(&runtime);
        crate::deploy::notify::spawn_shadow_figures(&runtime);
        crate::deploy::converged::spawn(&runtime);
        if restored.routes > 0 || !restored.failed.is_empty() {
            tracing::info!(
                routes = restored.routes,
                recompiled = restored.recompiled,
                failed = restored.failed.len(),
                took_ms = started.elapsed().as_secs_f64() * 1e3,
                "routes restored from the data directory"
            );
        }
        if runtime.files.is_ephemeral() {
            tracing::info!(
                dir = %runtime.files.dir().display(),
                "ephemeral: deployments live in a temporary directory and are lost at exit"
            );
        } else {
            tracing::info!(
                dir = %runtime.files.dir().display(),
                "data directory: deployments, artifacts and history are kept here across restarts"
            );
        }
        #[cfg(unix)]
        let (inherited, mut predecessor) = match taken {
            Some(taken) => (Some((taken.data, taken.admin)), Some(taken.predecessor)),
            None => (None, None),
        };
        #[cfg(not(unix))]
        let inherited: Option<(std::net::TcpListener, std::net::TcpListener)> = None;
        let (data, admin) = match inherited {
            Some((data, admin)) => (TcpListener::from_std(data)?, TcpListener::from_std(admin)?),
            None => bind(&runtime.config).await?,
        };
        let data_addr = data.local_addr()?;
        let admin_addr = admin.local_addr()?;
        // Everything is loaded: the key-value store comes over last, just before serving.
        #[cfg(unix)]
        if let Some(predecessor) = &mut predecessor {
            predecessor.take_kv(&runtime).await?;
        }
        #[cfg(unix)]
        let takeover = match runtime.files.is_ephemeral() {
            true => None,
            false => match crate::takeover::Listening::start(
                runtime.clone(),
                runtime.files.dir(),
                &data,
                &admin,
            ) {
                Ok(listening) => Some(listening),
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "no takeover socket: `serve --takeover` cannot take over from this server");
                    None
                }
            },
        };
        let stop = CancellationToken::new();
        let closing = CancellationToken::new();
        let data_task = runtime.background.spawn_job(serve_data(
            runtime.clone(),
            data,
            stop.clone(),
            closing.clone(),
            data_tls,
        ));
        let admin_task = runtime.background.spawn_job(serve_admin(
            runtime.clone(),
            admin,
            admin_addr,
            stop.clone(),
            closing.clone(),
            admin_tls,
        ));
        tracing::info!(
            data = %data_addr, admin = %admin_addr, pooling = runtime.engine.pooling(),
            "listening"
        );
        // Under systemd: this process is ready and the service's main one. Said before the old
        // process hears it may exit (`ready` below): systemd must follow this process before
        // the one it knew as main exits, or it takes that exit for the service's end and stops
        // this one too.
        #[cfg(unix)]
        crate::takeover::notify_systemd_ready();
        #[cfg(unix)]
        if let Some(predecessor) = &predecessor {
            predecessor.ready()?;
            tracing::info!(
                old_pid = predecessor.pid,
                "took over: serving; the old process finishes its requests and exits"
            );
        }
        if let Some(cluster) = &runtime.cluster {
            cluster.nodes.update(|me| {
                me.admin = Some(admin_addr.to_string());
                me.data = Some(data_addr.to_string());
            });
            crate::deploy::remote::report_all(&runtime, position).await;
            crate::deploy::remote::follow(&runtime, position);
        }
        Ok(Self {
            runtime,
            data_addr,
            admin_addr,
            stop,
            closing,
            data_task,
            admin_task,
            #[cfg(unix)]
            takeover,
            #[cfg(unix)]
            _predecessor: predecessor,
        })
    }

    /// Resolves once a process started with `serve --takeover` has taken over from this one
    /// and serves: then [`Server::shutdown`] lets this one drain and end. Never resolves for a
    /// server without a takeover socket.
    pub async fn handed_over(&self) {
        #[cfg(unix)]
        if let Some(takeover) = &self.takeover {
            return takeover.handed_over().await;
        }
        std::future::pending().await
    }

    /// The data-plane address actually bound.
    pub fn data_addr(&self) -> SocketAddr {
        self.data_addr
    }

    /// The admin address actually bound.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The runtime behind the server.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The line `serve` prints once both listeners are bound; scripts and tests parse it.
    pub fn ready_line(&self) -> String {
        let scheme = |tls: bool| if tls { "https" } else { "http" };
        format!(
            "handoff ready data={}://{} admin={}://{}",
            scheme(self.runtime.config.tls.is_some()),
            self.data_addr,
            scheme(self.runtime.config.admin_tls.is_some()),
            self.admin_addr
        )
    }

    /// Stops accepting connections, lets in-flight requests (guest traffic and admin calls)
    /// finish for up to the drain timeout, then cuts off and closes whatever is left, and sends
    /// the spans still queued (tracing on); then ends the server's background tasks and waits
    /// for them, so the data directory is closed when it returns. Takes at most the drain timeout plus
    /// [`RELEASE_WAIT`] (with tracing, plus [`TRACE_FLUSH_FLOOR`] when the drain used it all).
    pub async fn shutdown(self) {
        #[cfg(unix)]
        let successor = self.takeover.as_ref().and_then(|takeover| {
            takeover.close();
            takeover.successor()
        });
        #[cfg(not(unix))]
        let successor: Option<u32> = None;
        if let Some(new_pid) = successor {
            tracing::info!(
                new_pid,
                "handed over: no new connections here; open connections are told to close after their current response; draining in-flight requests"
            );
            // The node goes on in the new process: it does not leave the cluster, and its record
            // is the new process's.
            if let Some(cluster) = &self.runtime.cluster {
                cluster.nodes.hand_over();
            }
            self.closing.cancel();
        } else {
            tracing::info!("shutting down: no new connections; draining in-flight requests");
            if let Some(cluster) = &self.runtime.cluster {
                // Deploys elsewhere stop waiting for this node before it stops serving.
                cluster.nodes.leave().await;
                tracing::info!("left the cluster");
            }
        }
        self.stop.cancel();
        // Event streams never end by themselves: end them, so they do not hold the drain.
        self.runtime.events.close();
        self.runtime.guest_logs.close();
        let started = std::time::Instant::now();
        let limit = self.runtime.config.drain_timeout + RELEASE_WAIT;
        // Both listeners drain at once; each closes its connections when the grace passes.
        let listeners = async {
            let _ = tokio::join!(self.admin_task, self.data_task);
        };
        if tokio::time::timeout(limit, listeners).await.is_err() {
            tracing::warn!("the listeners did not stop in time; exiting anyway");
        }
        // The spans of the requests that just ended go out within what is left of the bound
        // (at least `TRACE_FLUSH_FLOOR`, so a collector that answers gets them).
        if let Some(trace) = &self.runtime.trace {
            let left = limit
                .saturating_sub(started.elapsed())
                .max(TRACE_FLUSH_FLOOR);
            trace.shutdown(left).await;
        }
        // Every task the server started ends, within what is left of the bound: the loops at
        // the stop signal; connections, HTTP/2 streams, admin calls, drains and collections
        // once done. They were what held the runtime: when this returns only this server does,
        // and the data directory closes as it drops.
        let background = &self.runtime.background;
        if !background
            .stop(limit.saturating_sub(started.elapsed()))
            .await
        {
            tracing::warn!(
                tasks = background.running(),
                "background tasks did not end in time; exiting anyway"
            );
        }
        match successor {
            Some(new_pid) => tracing::info!(
                new_pid,
                took_ms = started.elapsed().as_millis() as u64,
                "handed over and drained: the last request here has ended; exiting"
            ),
            None => tracing::info!("shut down"),
        }
    }
}

/// Binds both listeners of `config`.
async fn bind(config: &Config) -> anyhow::Result<(TcpListener, TcpListener)> {
    let data = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (data): {e}", config.listen))?;
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (admin): {e}", config.admin_listen))?;
    Ok((data, admin))
}
