//! Serving one listener ([`serve_listener`]): a connection cap, a header and idle timeout, a
//! 64 KiB head limit, optional TLS, and a graceful shutdown bounded by the drain timeout, after
//! which the connections left are closed; the data plane ([`serve_data`]) and the admin API
//! ([`serve_admin`]) are its two services.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::connection::{Idle, Tracked};
use crate::background::Background;
use crate::dispatch::{Peer, StreamExecutor, dispatch};
use crate::runtime::Runtime;

/// The largest request head (request line and headers) the data plane buffers.
const MAX_HEAD_BYTES: usize = 64 << 10;

/// Admin connections served at once; more wait in the listen backlog until one closes (an
/// admin connection without a request in progress is closed after `--idle-timeout`).
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// After a takeover, how long the old process keeps answering requests on its open
/// connections with `Connection: close` before it closes the idle ones and sends HTTP/2
/// `GOAWAY`: a client that sends its next request within it gets its answer, then reconnects
/// (to the new process), instead of racing a close.
pub const HANDOVER_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

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
pub(super) async fn serve_data(
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
        let peer = Peer::new(&rt, peer.ip());
        hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let rt = rt.clone();
            let peer = peer.clone();
            async move { Ok::<_, Infallible>(dispatch(&rt, req, https, Some(&peer)).await) }
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
        (service, rt.background.clone()),
        ended,
        cut_off,
    )
    .await;
}

/// Accepts admin connections until `stop`, then drains them.
pub(super) async fn serve_admin(
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
    let background = rt.background.clone();
    let router = crate::admin::router(rt, addr);
    let service =
        move |_peer: SocketAddr| hyper_util::service::TowerToHyperService::new(router.clone());
    serve_listener(
        listener,
        tls,
        limits,
        (stop, closing),
        (service, background),
        async {},
        async {},
    )
    .await;
}

/// Accepts connections on `listener` until `stop` and serves each, as a task of `background`,
/// with the service `service(peer)` makes within `limits`. Then shuts down gracefully: stops accepting, lets
/// requests in progress finish (and `ended` resolve) for up to `limits.grace`, and when that
/// passes runs `cut_off` and closes the connections left. When `closing` is set too (another
/// process took over), HTTP/1 responses say `Connection: close` and open connections get
/// [`HANDOVER_LINGER`] to send their next request before idle ones are closed.
async fn serve_listener<S, B>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    (stop, closing): (CancellationToken, CancellationToken),
    (service, background): (impl Fn(SocketAddr) -> S, Background),
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
    let mut builder = auto::Builder::new(StreamExecutor(background.clone()));
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
        background.spawn_job(async move {
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
