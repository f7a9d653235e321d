//! Listeners and lifecycle: bind the data and admin listeners, serve until told to stop, then
//! shut down gracefully (stop accepting, let in-flight requests finish up to the drain
//! deadline, cut off the rest).
//!
//! The data plane uses hyper directly (HTTP/1.1 with keep-alive, and HTTP/2) so the hot path
//! has no router layers; the admin API is an axum router. Both listeners accept and serve
//! connections the same way ([`serve_listener`]): a connection cap, a header timeout and an
//! idle timeout, a 64 KiB head limit, optional TLS, and a graceful shutdown bounded by the
//! drain timeout, after which the connections left are closed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dispatch::{StreamExecutor, dispatch};
use crate::runtime::Runtime;

/// The largest request head (request line and headers) the data plane buffers.
const MAX_HEAD_BYTES: usize = 64 << 10;

/// Longest `shutdown` waits, after the drain timeout, for the last tasks to release the
/// runtime: shutdown takes at most `--drain-timeout` plus this.
pub const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The least time a shutdown gives the spans still queued to reach the collector, even when
/// the drain used its whole bound.
pub const TRACE_FLUSH_FLOOR: std::time::Duration = std::time::Duration::from_secs(1);

/// Admin connections served at once; more wait in the listen backlog until one closes (an
/// admin connection without a request in progress is closed after `--idle-timeout`).
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// After a takeover, how long the old process keeps answering requests on its open
/// connections with `Connection: close` before it closes the idle ones and sends HTTP/2
/// `GOAWAY`: a client that sends its next request within it gets its answer, then reconnects
/// (to the new process), instead of racing a close.
pub const HANDOVER_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

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

/// `--listen`/`--admin-listen` against the running server's address: the same, left at the
/// default (not given), or port 0 on the same IP.
#[cfg(unix)]
fn same_address(
    flag: &str,
    given: SocketAddr,
    default: &str,
    theirs: SocketAddr,
) -> anyhow::Result<()> {
    let left_out = default.parse::<SocketAddr>().ok() == Some(given);
    let any_port = given.port() == 0 && given.ip() == theirs.ip();
    anyhow::ensure!(
        given == theirs || left_out || any_port,
        "{flag} {given} is not the address the running server listens on ({theirs}); a takeover keeps the addresses: leave {flag} out or give {theirs}"
    );
    Ok(())
}

/// Whether this process's TLS flags for one listener keep what its clients speak: a takeover
/// cannot add or remove TLS under connections the clients already make (every one would
/// fail). `theirs` is `None` from a release that did not say.
#[cfg(unix)]
fn same_tls(listener: &str, flags: &str, ours: bool, theirs: Option<bool>) -> anyhow::Result<()> {
    match (theirs, ours) {
        (Some(true), false) => anyhow::bail!(
            "the running server serves its {listener} listener over TLS; give {flags} (the same files, or renewed ones): without them every client of that listener would fail"
        ),
        (Some(false), true) => anyhow::bail!(
            "the running server serves its {listener} listener without TLS, and a takeover keeps what its clients speak: leave out {flags} (to add TLS, stop the running server and start this one)"
        ),
        _ => Ok(()),
    }
}

/// Finds the server running on the data directory and takes its listeners (its state follows
/// when this process opens it).
#[cfg(unix)]
async fn take_over(config: &Config) -> anyhow::Result<crate::takeover::Taken> {
    let dir = config
        .data_dir
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("--takeover needs the --data-dir of the running server"))?;
    let offered = crate::takeover::connect(dir).await?;
    same_address(
        "--listen",
        config.listen,
        crate::config::DEFAULT_LISTEN,
        offered.data,
    )?;
    same_address(
        "--admin-listen",
        config.admin_listen,
        crate::config::DEFAULT_ADMIN_LISTEN,
        offered.admin,
    )?;
    same_tls(
        "data",
        "--tls-cert and --tls-key",
        config.tls.is_some(),
        offered.data_tls,
    )?;
    same_tls(
        "admin",
        "--admin-tls-cert and --admin-tls-key",
        config.admin_tls.is_some(),
        offered.admin_tls,
    )?;
    tracing::info!(old_pid = offered.pid, data = %offered.data, admin = %offered.admin, "taking over from the running server");
    offered.begin().await
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
            true => Some(take_over(&config).await?),
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
        let data_task = tokio::spawn(serve_data(
            runtime.clone(),
            data,
            stop.clone(),
            closing.clone(),
            data_tls,
        ));
        let admin_task = tokio::spawn(serve_admin(
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
    /// the spans still queued (tracing on). Takes at most the drain timeout plus
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
        // Connection tasks end just after their connections; wait (bounded) for them to let go
        // of the runtime, so its data directory is closed when this returns.
        while Arc::strong_count(&self.runtime) > 1 && started.elapsed() < limit {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
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

/// How often, at most, a full connection limit is logged.
const FULL_WARNING_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// How a listener bounds its connections.
#[derive(Debug, Clone, Copy)]
struct ConnectionLimits {
    /// Which listener, for the log.
    listener: &'static str,
    /// Connections served at once; more wait in the listen backlog.
    max_connections: usize,
    /// A connection without a request in progress for this long is closed, and a request head
    /// (or TLS handshake) must arrive within it.
    idle_timeout: std::time::Duration,
    /// How long a graceful shutdown lets requests in progress finish.
    grace: std::time::Duration,
    /// How long a write may wait for a peer that reads nothing before the connection is
    /// closed (`None`: as long as it takes).
    write_stall: Option<std::time::Duration>,
}

/// Accepts data-plane connections until `stop`, then drains them; cuts off the guests still
/// running when the grace passes.
async fn serve_data(
    rt: Arc<Runtime>,
    listener: TcpListener,
    stop: CancellationToken,
    closing: CancellationToken,
    tls: Option<TlsAcceptor>,
) {
    let https = tls.is_some();
    let limits = ConnectionLimits {
        listener: "data",
        max_connections: rt.config.max_connections,
        idle_timeout: rt.config.idle_timeout,
        grace: rt.config.drain_timeout,
        write_stall: None,
    };
    let service_rt = rt.clone();
    let service = move |peer: SocketAddr| {
        let rt = service_rt.clone();
        hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let rt = rt.clone();
            async move { Ok::<_, Infallible>(dispatch(&rt, req, https, Some(peer.ip())).await) }
        })
    };
    // Connections end with their responses; guests still working after theirs count too.
    let ended = rt.requests_ended();
    let cut_off = async {
        rt.cut_off_all();
        // Cut-off guests stop at their next yield; give them a moment to let go.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), rt.requests_ended()).await;
    };
    serve_listener(
        listener,
        tls,
        limits,
        (stop, closing),
        service,
        ended,
        cut_off,
    )
    .await;
}

/// Accepts admin connections until `stop`, then drains them.
async fn serve_admin(
    rt: Arc<Runtime>,
    listener: TcpListener,
    addr: SocketAddr,
    stop: CancellationToken,
    closing: CancellationToken,
    tls: Option<TlsAcceptor>,
) {
    let limits = ConnectionLimits {
        listener: "admin",
        max_connections: ADMIN_MAX_CONNECTIONS,
        idle_timeout: rt.config.idle_timeout,
        grace: rt.config.drain_timeout,
        // An event stream or an answer nobody reads holds an admin slot no longer than an
        // idle connection may.
        write_stall: Some(rt.config.idle_timeout),
    };
    let router = crate::admin::router(rt, addr);
    let service =
        move |_peer: SocketAddr| hyper_util::service::TowerToHyperService::new(router.clone());
    serve_listener(
        listener,
        tls,
        limits,
        (stop, closing),
        service,
        async {},
        async {},
    )
    .await;
}

/// Accepts connections on `listener` until `stop` and serves each with the service
/// `service(peer)` makes within `limits`. Then shuts down gracefully: stops accepting, lets
/// requests in progress finish (and `ended` resolve) for up to `limits.grace`, and when that
/// passes runs `cut_off` and closes the connections left. When `closing` is set too (another
/// process took over), HTTP/1 responses say `Connection: close` and open connections get
/// [`HANDOVER_LINGER`] to send their next request before idle ones are closed.
async fn serve_listener<S, B>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    (stop, closing): (CancellationToken, CancellationToken),
    service: impl Fn(SocketAddr) -> S,
    ended: impl Future<Output = ()>,
    cut_off: impl Future<Output = ()>,
) where
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Each HTTP/2 stream runs in a task of its own, watched for response bodies whose client
    // does not read them by their deadline (as each connection is, below).
    let mut builder = auto::Builder::new(StreamExecutor);
    // Slowloris and header floods: a head larger than MAX_HEAD_BYTES is refused (431) instead of
    // buffered, and a connection without a request in progress is closed after `idle_timeout`
    // by `Idle`, which counts only whole request heads: silence before the first byte, a
    // trickled HTTP/1 head or HTTP/2 preface, idle keep-alive and HTTP/2 connections. hyper's own
    // HTTP/1 header timer is off: it would arm and drop a timer for every request (2-5 % of a
    // reused instance's requests per second) to do what `Idle` does already.
    builder
        .http1()
        .header_read_timeout(None)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD_BYTES as u32);
    let graceful = GracefulShutdown::new();
    // Cancelled when the grace passes: the connections still open are closed.
    let closed = CancellationToken::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut warned: Option<std::time::Instant> = None;
    loop {
        // One slot per connection: at the limit, new connections wait in the listen backlog.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if warned.is_none_or(|at| at.elapsed() > FULL_WARNING_EVERY) {
                    tracing::warn!(
                        listener = limits.listener,
                        max_connections = limits.max_connections,
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
                    tracing::warn!(listener = limits.listener, error = %error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let stream = crate::stalled::WriteDeadline::new(stream, limits.write_stall);
        let idle = Arc::new(Idle::new());
        let watched = idle.clone();
        let inner = service(peer);
        let stall_limit = limits.idle_timeout;
        let closing = closing.clone();
        let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let busy = watched.busy();
            let http1 = req.version() < http::Version::HTTP_2;
            let response = inner.call(req);
            let closing = closing.clone();
            async move {
                let mut response = response.await?;
                if http1 && closing.is_cancelled() {
                    response.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                // In the stream's (HTTP/2) or connection's (HTTP/1.1) watched task.
                let stall = crate::dispatch::stall(stall_limit);
                Ok::<_, S::Error>(response.map(|body| Tracked {
                    body,
                    stall,
                    _busy: busy,
                }))
            }
        });
        let (tls, builder, watcher, closed) = (
            tls.clone(),
            builder.clone(),
            graceful.watcher(),
            closed.clone(),
        );
        let idle_limit = limits.idle_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            let serve = async {
                match tls {
                    None => {
                        let connection = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .into_owned();
                        watcher.watch(connection).await
                    }
                    Some(acceptor) => {
                        let handshake = tokio::time::timeout(idle_limit, acceptor.accept(stream));
                        let Ok(Ok(stream)) = handshake.await else {
                            tracing::debug!("TLS handshake failed or timed out");
                            return Ok(());
                        };
                        let connection = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .into_owned();
                        watcher.watch(connection).await
                    }
                }
            };
            tokio::select! {
                result = crate::dispatch::watched(serve) => match result {
                    Some(Ok(())) => {}
                    Some(Err(error)) => tracing::debug!(error = %error, "connection ended with an error"),
                    None => tracing::debug!("connection closed: its client did not read a response by its deadline"),
                },
                () = idle.expired(idle_limit) => tracing::debug!("idle connection closed"),
                () = closed.cancelled() => tracing::debug!("connection closed at shutdown"),
            }
        });
    }
    drop(listener);
    if closing.is_cancelled() {
        // Open connections answer their next request with `Connection: close` for a moment,
        // so clients that keep sending move to the new process without racing a close.
        let linger = async {
            while slots.available_permits() < limits.max_connections {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        };
        let _ = tokio::time::timeout(HANDOVER_LINGER.min(limits.grace), linger).await;
    }
    let finished = async {
        graceful.shutdown().await;
        ended.await;
    };
    if tokio::time::timeout(limits.grace, finished).await.is_err() {
        tracing::warn!(
            listener = limits.listener,
            grace_ms = limits.grace.as_millis() as u64,
            "shutdown grace period passed; cutting off the remaining requests"
        );
        closed.cancel();
        cut_off.await;
    }
}

/// When a data-plane connection last started or finished a request, and how many it has in
/// progress: what decides that it is idle. Bytes that do not complete a request head do not
/// count, so trickling bytes cannot keep a connection open. (A request in progress keeps it
/// open only until its deadline: a guest response its client does not read is then reset, see
/// `dispatch::overdue`.)
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

/// A response body that keeps its request counted as in progress until it is done or dropped,
/// and is ended if its client lets nothing through for the idle timeout while it has bytes to
/// send (`dispatch::overdue`: the task sending it is dropped).
struct Tracked<B> {
    body: B,
    stall: Option<crate::dispatch::Stall>,
    _busy: Busy,
}

impl<B: http_body::Body + Unpin> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        if let Some(stall) = &this.stall {
            match &polled {
                // The frame given is owed to the client until hyper asks for the next one, or
                // (the last) until hyper is done with the body: hyper may hold a frame until
                // the client's flow-control window lets it go.
                std::task::Poll::Ready(Some(Ok(_))) => stall.owed(),
                _ => stall.settled(),
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::same_tls;

    #[test]
    fn a_takeover_keeps_what_each_listeners_clients_speak() {
        let flags = "--tls-cert and --tls-key";
        assert!(same_tls("data", flags, true, Some(true)).is_ok());
        assert!(same_tls("data", flags, false, Some(false)).is_ok());
        // An older release that did not say: nothing to check against.
        assert!(same_tls("data", flags, true, None).is_ok());
        assert!(same_tls("data", flags, false, None).is_ok());
        let dropped = same_tls("data", flags, false, Some(true)).unwrap_err();
        assert!(
            dropped
                .to_string()
                .starts_with("the running server serves its data listener over TLS; give --tls-cert and --tls-key"),
            "{dropped}"
        );
        let added = same_tls(
            "admin",
            "--admin-tls-cert and --admin-tls-key",
            true,
            Some(false),
        )
        .unwrap_err();
        assert!(
            added.to_string().contains(
                "serves its admin listener without TLS, and a takeover keeps what its clients speak: leave out --admin-tls-cert and --admin-tls-key"
            ),
            "{added}"
        );
    }
}
