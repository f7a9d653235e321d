//! The per-request host state kept in each wasmtime `Store`, and the sandbox it enforces: no
//! preopened directories, no environment but the route's deploy-time config (and
//! `HANDOFF_ROUTE_PREFIX`), no arguments, no sockets, outbound HTTP only to the route's
//! allow-list,
//! memory capped, CPU time bounded. Guest stdout and stderr become `tracing` events with target
//! `guest`.
//!
//! This module never compiles or links anything; it only builds request state.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime::{StoreContextMut, UpdateDeadline};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::limiter::TotalMemory;
use crate::outbound::Outbound;
use crate::settings::{GuestDir, RouteConfig, Settings};

/// The environment variable that tells a guest the path prefix it was routed by, so routers
/// inside guests can match paths relative to it.
pub const ROUTE_PREFIX_ENV: &str = "HANDOFF_ROUTE_PREFIX";

/// The data of one request's `Store`.
pub struct Host {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    limits: TotalMemory,
    hooks: SandboxHooks,
    /// When the guest's CPU budget for this request runs out.
    deadline: Instant,
    /// Epoch ticks this request's guest has run into so far.
    ticks: u32,
}

/// Ticks a request runs before its guest starts yielding: short requests are never put back
/// in the run queue, long ones yield every tick after this.
const TICKS_BEFORE_YIELDING: u32 = 10;

/// What every request of one version runs with: its sandbox, set up once when the version is
/// built.
pub struct Guest {
    label: GuestLabel,
    config: RouteConfig,
    dir: Option<GuestDir>,
    outbound: Outbound,
    max_memory: usize,
}

impl Guest {
    /// The sandbox of version `version` (its short digest) of route `route`, with `settings`.
    pub fn new(route: Arc<str>, version: Arc<str>, settings: &Settings) -> Self {
        Self {
            label: GuestLabel { route, version },
            config: settings.config.clone(),
            dir: settings.dir.clone(),
            outbound: settings.outbound.clone(),
            max_memory: settings.limits.max_memory_bytes,
        }
    }
}

impl Host {
    /// A store for one call into `guest` through a route at `prefix`, with `deadline` as its
    /// CPU deadline and its limits installed: the one place a `Store` is made.
    pub fn store(
        engine: &wasmtime::Engine,
        guest: &Guest,
        prefix: &str,
        deadline: Instant,
    ) -> wasmtime::Store<Host> {
        let mut store = wasmtime::Store::new(engine, Host::new(guest, prefix, deadline));
        Host::install(&mut store);
        store
    }

    /// Denies this request every outbound HTTP call, whatever the route allows: a copy of a
    /// request (a shadow run) must have no side effects.
    pub fn deny_outbound(&mut self) {
        self.hooks.outbound = Vec::new().into();
    }

    /// Request state for one call into `guest` through a route at `prefix`, with `deadline`
    /// as its CPU deadline.
    pub fn new(guest: &Guest, prefix: &str, deadline: Instant) -> Self {
        let version = guest;
        let label = guest.label.clone();
        let mut wasi = WasiCtx::builder();
        if let Some(dir) = &version.dir
            && let Err(error) =
                wasi.preopened_dir(&*dir.path, "/data", wasmtime_wasi::FsPerms::ReadOnly)
        {
            tracing::warn!(route = %version.label.route, dir = %dir.name, error = %error, "cannot mount the route's directory");
        }
        let wasi = wasi
            .envs(&version.config)
            .env(ROUTE_PREFIX_ENV, prefix)
            .stdout(GuestLog {
                label: label.clone(),
                stream: "stdout",
            })
            .stderr(GuestLog {
                label: label.clone(),
                stream: "stderr",
            })
            .build();
        Self {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            limits: TotalMemory::new(version.max_memory),
            hooks: SandboxHooks {
                label,
                outbound: version.outbound.clone(),
            },
            deadline,
            ticks: 0,
        }
    }

    /// Installs the limits of this host on its store: the memory limiter and the epoch
    /// callback that interrupts the guest once its deadline has passed and, after its first
    /// [`TICKS_BEFORE_YIELDING`] ticks, yields to the scheduler every tick (1 ms) so a guest
    /// that runs long cannot make its neighbours wait.
    pub fn install(store: &mut wasmtime::Store<Host>) {
        store.limiter(|host| &mut host.limits);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut cx: StoreContextMut<'_, Host>| {
            let host = cx.data_mut();
            if Instant::now() >= host.deadline {
                return Ok(UpdateDeadline::Interrupt);
            }
            host.ticks = host.ticks.saturating_add(1);
            if host.ticks < TICKS_BEFORE_YIELDING {
                return Ok(UpdateDeadline::Continue(1));
            }
            // tokio's own yield: the task goes to the back of the run queue. wasmtime's
            // plain `Yield` wakes the task from inside its poll, which tokio polls again at
            // once (the LIFO slot), so a spinning guest starved its neighbours (measured:
            // a neighbour's p50 went from 1 ms to 160 ms under two spinning guests).
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ))
        });
    }
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Which route and version a guest event belongs to.
#[derive(Clone)]
struct GuestLabel {
    route: Arc<str>,
    version: Arc<str>,
}

/// wasi:http hooks: outbound requests go out only to destinations the route's allow-list
/// names; everything else fails in the guest with `HTTP-request-denied` and a log line.
struct SandboxHooks {
    label: GuestLabel,
    outbound: crate::outbound::Outbound,
}

impl WasiHttpHooks for SandboxHooks {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                )>,
            > + Send,
    > {
        if crate::outbound::allows(&self.outbound, request.uri()) {
            tracing::debug!(route = %self.label.route, uri = %request.uri(), "outbound request");
            return Box::new(async move {
                use http_body_util::BodyExt;
                let (response, io) =
                    wasmtime_wasi_http::default_send_request(request, options).await?;
                Ok((
                    response.map(BodyExt::boxed_unsync),
                    Box::new(io) as Box<dyn Future<Output = _> + Send>,
                ))
            });
        }
        tracing::warn!(
            route = %self.label.route,
            version = %self.label.version,
            uri = %request.uri(),
            "outbound HTTP denied: the route's allow-list does not name this destination"
        );
        Box::new(async { Err(ErrorCode::HttpRequestDenied.into()) })
    }
}

/// Guest stdout/stderr: each line becomes an event with target `guest`.
struct GuestLog {
    label: GuestLabel,
    stream: &'static str,
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(GuestLogWriter {
            label: self.label.clone(),
            stream: self.stream,
            line: Vec::new(),
        })
    }
}

/// The longest line a guest can buffer before it is emitted anyway.
const MAX_GUEST_LINE: usize = 16 << 10;

struct GuestLogWriter {
    label: GuestLabel,
    stream: &'static str,
    line: Vec<u8>,
}

impl GuestLogWriter {
    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        if text.trim().is_empty() {
            self.line.clear();
            return;
        }
        let text = text.trim_end();
        // Lines that start with a level word (as the SDK's log macros write them) keep it.
        let (level, message) = match text.split_once(' ') {
            Some(("ERROR", rest)) => (tracing::Level::ERROR, rest),
            Some(("WARN", rest)) => (tracing::Level::WARN, rest),
            Some(("DEBUG", rest)) => (tracing::Level::DEBUG, rest),
            Some(("TRACE", rest)) => (tracing::Level::TRACE, rest),
            Some(("INFO", rest)) => (tracing::Level::INFO, rest),
            _ => (tracing::Level::INFO, text),
        };
        let (route, version, stream) = (&self.label.route, &self.label.version, self.stream);
        macro_rules! emit {
            ($level:ident) => {
                tracing::$level!(target: "guest", %route, %version, stream, "{message}")
            };
        }
        match level {
            tracing::Level::ERROR => emit!(error),
            tracing::Level::WARN => emit!(warn),
            tracing::Level::DEBUG => emit!(debug),
            tracing::Level::TRACE => emit!(trace),
            _ => emit!(info),
        }
        self.line.clear();
    }
}

impl tokio::io::AsyncWrite for GuestLogWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        for chunk in buf.split_inclusive(|b| *b == b'\n') {
            this.line.extend_from_slice(chunk);
            if chunk.ends_with(b"\n") || this.line.len() >= MAX_GUEST_LINE {
                this.emit();
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().emit();
        Poll::Ready(Ok(()))
    }
}

impl Drop for GuestLogWriter {
    fn drop(&mut self) {
        self.emit();
    }
}
