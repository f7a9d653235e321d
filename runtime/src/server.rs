//! Listeners and lifecycle: bind the data and admin listeners, serve until told to stop, then
//! shut down gracefully (stop accepting, let in-flight requests finish up to the drain
//! deadline, cut off the rest).
//!
//! The data plane uses hyper directly (HTTP/1.1 with keep-alive, and HTTP/2) so the hot path
//! has no router layers; the admin API is an axum router.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dispatch::{DataBody, dispatch};
use crate::runtime::Runtime;

/// The largest request head (request line and headers) the data plane buffers.
const MAX_HEAD_BYTES: usize = 64 << 10;

/// Longest `shutdown` waits for the last tasks to release the runtime.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A running server.
pub struct Server {
    runtime: Arc<Runtime>,
    data_addr: SocketAddr,
    admin_addr: SocketAddr,
    stop: CancellationToken,
    data_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
}

impl Server {
    /// Validates `config`, builds the runtime, binds both listeners and starts serving.
    /// Returns once both listeners are bound.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let runtime = Arc::new(Runtime::new(config)?);
        let started = std::time::Instant::now();
        let restored = crate::deploy::restore(&runtime).await;
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
        // TLS files are read and checked before anything binds.
        let data_tls = runtime
            .config
            .tls
            .as_ref()
            .map(crate::tls::acceptor)
            .transpose()
            .map_err(|e| anyhow::anyhow!("data-plane TLS: {e}"))?;
        let admin_tls = runtime
            .config
            .admin_tls
            .as_ref()
            .map(crate::tls::acceptor)
            .transpose()
            .map_err(|e| anyhow::anyhow!("admin TLS: {e}"))?;
        let data = TcpListener::bind(runtime.config.listen)
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot listen on {} (data): {e}", runtime.config.listen)
            })?;
        let admin = TcpListener::bind(runtime.config.admin_listen)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot listen on {} (admin): {e}",
                    runtime.config.admin_listen
                )
            })?;
        let data_addr = data.local_addr()?;
        let admin_addr = admin.local_addr()?;
        let stop = CancellationToken::new();
        let data_task = tokio::spawn(serve_data(runtime.clone(), data, stop.clone(), data_tls));
        let admin_router = crate::admin::router(runtime.clone());
        let admin_stop = stop.clone();
        let admin_task = match admin_tls {
            None => tokio::spawn(async move {
                let served = axum::serve(admin, admin_router)
                    .with_graceful_shutdown(async move { admin_stop.cancelled().await })
                    .await;
                if let Err(error) = served {
                    tracing::error!(error = %error, "admin listener failed");
                }
            }),
            Some(acceptor) => {
                tokio::spawn(serve_admin_tls(admin, admin_router, acceptor, admin_stop))
            }
        };
        tracing::info!(
            data = %data_addr, admin = %admin_addr, pooling = runtime.engine.pooling(),
            "listening"
        );
        Ok(Self {
            runtime,
            data_addr,
            admin_addr,
            stop,
            data_task,
            admin_task,
        })
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

    /// Stops accepting connections, lets in-flight requests finish for up to the drain
    /// deadline, then cuts off whatever is left.
    pub async fn shutdown(self) {
        tracing::info!("shutting down: no new connections; draining in-flight requests");
        self.stop.cancel();
        let _ = self.admin_task.await;
        let _ = self.data_task.await;
        // Connection tasks end just after their connections; wait (bounded) for them to let go
        // of the runtime, so its data directory is closed when this returns.
        let started = std::time::Instant::now();
        while Arc::strong_count(&self.runtime) > 1 && started.elapsed() < RELEASE_WAIT {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        tracing::info!("shut down");
    }
}

/// Serves the admin router over TLS until `stop`.
async fn serve_admin_tls(
    listener: TcpListener,
    router: axum::Router,
    acceptor: TlsAcceptor,
    stop: CancellationToken,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let service = hyper_util::service::TowerToHyperService::new(router);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(error = %error, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let (acceptor, builder, watcher, service) = (
            acceptor.clone(),
            builder.clone(),
            graceful.watcher(),
            service.clone(),
        );
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(ADMIN_HANDSHAKE, acceptor.accept(stream));
            let Ok(Ok(stream)) = handshake.await else {
                tracing::debug!("admin TLS handshake failed or timed out");
                return;
            };
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(error = %error, "admin connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(ADMIN_HANDSHAKE, graceful.shutdown()).await;
}

/// How often, at most, a full connection limit is logged.
const FULL_WARNING_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// How long an admin client may take for its TLS handshake (and to finish at shutdown).
const ADMIN_HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepts data-plane connections until `stop`, then drains them.
async fn serve_data(
    rt: Arc<Runtime>,
    listener: TcpListener,
    stop: CancellationToken,
    tls: Option<TlsAcceptor>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Slowloris and header floods: a head larger than MAX_HEAD_BYTES is refused (431) instead of
    // buffered, and a connection without a request in progress is closed after `idle_timeout`
    // (hyper's header timer for HTTP/1 heads, and `Idle` for everything else: silence before
    // the first byte, a trickled HTTP/2 preface, idle HTTP/2 connections).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(rt.config.idle_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD_BYTES as u32);
    let graceful = GracefulShutdown::new();
    let https = tls.is_some();
    let slots = Arc::new(Semaphore::new(rt.config.max_connections));
    let mut warned: Option<std::time::Instant> = None;
    loop {
        // One slot per connection: at the limit, new connections wait in the listen backlog.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if warned.is_none_or(|at| at.elapsed() > FULL_WARNING_EVERY) {
                    tracing::warn!(
                        max_connections = rt.config.max_connections,
                        "the connection limit is reached; new connections wait until one closes"
                    );
                    warned = Some(std::time::Instant::now());
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                    _ = stop.cancelled() => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Usually EMFILE: back off briefly instead of spinning.
                    tracing::warn!(error = %error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let service_rt = rt.clone();
        let idle = Arc::new(Idle::new());
        let watched = idle.clone();
        let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let rt = service_rt.clone();
            let busy = watched.busy();
            async move {
                let response = dispatch(&rt, req, https, Some(peer.ip())).await;
                Ok::<_, Infallible>(response.map(|body| Tracked { body, _busy: busy }))
            }
        });
        let idle_limit = rt.config.idle_timeout;
        match &tls {
            None => {
                let connection = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    let _slot = slot;
                    tokio::select! {
                        result = connection => if let Err(error) = result {
                            tracing::debug!(error = %error, "connection ended with an error");
                        },
                        () = idle.expired(idle_limit) => tracing::debug!("idle connection closed"),
                    }
                });
            }
            Some(acceptor) => {
                let (acceptor, builder, watcher) =
                    (acceptor.clone(), builder.clone(), graceful.watcher());
                let limit = rt.config.idle_timeout;
                tokio::spawn(async move {
                    let _slot = slot;
                    let Ok(Ok(stream)) = tokio::time::timeout(limit, acceptor.accept(stream)).await
                    else {
                        tracing::debug!("TLS handshake failed or timed out");
                        return;
                    };
                    let connection = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned();
                    tokio::select! {
                        result = watcher.watch(connection) => if let Err(error) = result {
                            tracing::debug!(error = %error, "connection ended with an error");
                        },
                        () = idle.expired(idle_limit) => tracing::debug!("idle connection closed"),
                    }
                });
            }
        }
    }
    drop(listener);
    let grace = rt.config.drain_timeout;
    // Connections end with their responses; guests still working after theirs count too.
    let ended = async {
        graceful.shutdown().await;
        rt.requests_ended().await;
    };
    if tokio::time::timeout(grace, ended).await.is_err() {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "shutdown grace period passed; cutting off the remaining requests"
        );
        rt.cut_off_all();
        // Cut-off guests stop at their next yield; give them a moment to let go.
        let cut_off = rt.requests_ended();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), cut_off).await;
    }
}

/// When a data-plane connection last started or finished a request, and how many it has in
/// progress: what decides that it is idle. Bytes that do not complete a request head do not
/// count, so trickling bytes cannot keep a connection open.
struct Idle {
    opened: std::time::Instant,
    /// Milliseconds after `opened` of the last request start or end.
    last_change_ms: AtomicU64,
    in_progress: AtomicUsize,
}

impl Idle {
    fn new() -> Self {
        Self {
            opened: std::time::Instant::now(),
            last_change_ms: AtomicU64::new(0),
            in_progress: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_change_ms.store(ms, Ordering::Relaxed);
    }

    /// Marks a request in progress until the returned guard (kept in its response body) drops.
    fn busy(self: &Arc<Self>) -> Busy {
        self.in_progress.fetch_add(1, Ordering::Relaxed);
        self.touch();
        Busy(self.clone())
    }

    /// Resolves once the connection has had no request in progress for `limit`.
    async fn expired(&self, limit: std::time::Duration) {
        loop {
            let now = self.opened.elapsed();
            let since = now.saturating_sub(std::time::Duration::from_millis(
                self.last_change_ms.load(Ordering::Relaxed),
            ));
            let wait = if self.in_progress.load(Ordering::Relaxed) > 0 {
                limit
            } else if since >= limit {
                return;
            } else {
                limit - since
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// A request in progress on a connection (see [`Idle`]).
struct Busy(Arc<Idle>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_progress.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted as in progress until it is done or dropped.
struct Tracked {
    body: DataBody,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = <DataBody as http_body::Body>::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
