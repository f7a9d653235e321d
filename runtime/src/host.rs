//! The per-request host state kept in each wasmtime `Store`, and the sandbox it enforces: no
//! preopened directories but the route's read-only `/data`, no environment but the route's
//! deploy-time config (and `HANDOFF_ROUTE_PREFIX`), no arguments, no sockets, outbound HTTP only
//! to the route's allow-list and to addresses the server lets guests reach ([`crate::outbound`]),
//! memory capped, CPU time bounded. Guest stdout and stderr become `tracing` events with target
//! `guest`, within the version's log budget ([`crate::guest_log`]).
//!
//! What every request of a version shares is built once, with the version ([`Guest`]): its
//! config, allow-list and memory cap, the opened `/data` directory and the log budget. A
//! request clones one `Arc`; the guest's environment and directories are handed out only when
//! it asks for them ([`add_to_linker`]).
//!
//! This module never compiles anything; it only builds request state.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use wasmtime::component::{GuestTaskId, Linker, Resource, ResourceTable};
use wasmtime::{CallHook, StoreContextMut, UpdateDeadline};
use wasmtime_wasi::filesystem::{Descriptor, Dir};
use wasmtime_wasi::{FsPerms, OpenMode, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::guest_log::{GuestLogs, StoreLog};
use crate::kv::{Grants, KvAccess, KvLimits, KvView};
use crate::limiter::TotalMemory;
use crate::outbound::{Outbound, SendError};
use crate::settings::{GuestDir, RouteConfig, Settings};

/// The environment variable that tells a guest the path prefix it was routed by, so routers
/// inside guests can match paths relative to it.
pub const ROUTE_PREFIX_ENV: &str = "HANDOFF_ROUTE_PREFIX";

/// Where the route's directory appears in the guest.
const DATA_DIR: &str = "/data";

/// What every request of one version runs with: its sandbox, built once when the version is
/// built: the route's config, allow-list and memory cap, its directory opened read-only, and the
/// version's guest log budget.
pub struct Guest {
    config: RouteConfig,
    outbound: Outbound,
    outbound_private: bool,
    max_memory: usize,
    dir: Option<Dir>,
    logs: Arc<GuestLogs>,
    kv: Grants,
    kv_limits: KvLimits,
}

impl Guest {
    /// The sandbox of version `short` (its short digest) of `route`, with `settings`;
    /// `outbound_private` is the server's `--outbound-private`. A directory that cannot be
    /// opened is logged and left out.
    pub fn new(
        route: Arc<str>,
        short: Arc<str>,
        settings: &Settings,
        outbound_private: bool,
    ) -> Self {
        let dir = settings
            .dir
            .as_ref()
            .and_then(|dir: &GuestDir| match open_dir(&dir.path) {
                Ok(opened) => Some(opened),
                Err(error) => {
                    tracing::warn!(route = %route, dir = %dir.name, error = %error, "cannot mount the route's directory");
                    None
                }
            });
        Self {
            config: settings.config.clone(),
            outbound: settings.outbound.clone(),
            outbound_private,
            max_memory: settings.limits.max_memory_bytes,
            dir,
            logs: GuestLogs::new(route, short),
            kv: settings.kv.clone(),
            kv_limits: KvLimits {
                max_value: settings.limits.kv_max_value,
                max_keys: settings.limits.kv_max_keys,
                max_bytes: settings.limits.kv_max_bytes,
            },
        }
    }

    /// The version's guest log state.
    pub fn logs(&self) -> &Arc<GuestLogs> {
        &self.logs
    }
}

impl fmt::Debug for Guest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guest")
            .field("dir", &self.dir.is_some())
            .finish_non_exhaustive()
    }
}

/// Opens `path` as a read-only directory handle for guests.
fn open_dir(path: &std::path::Path) -> std::io::Result<Dir> {
    let file = std::fs::File::open(path)?;
    if !file.metadata()?.is_dir() {
        return Err(std::io::Error::other("not a directory"));
    }
    Ok(Dir::new(file, FsPerms::ReadOnly, OpenMode::READ, false))
}

/// Installs the request-lifetime answers to `wasi:cli/environment.get-environment` and
/// `wasi:filesystem/preopens.get-directories`, over the ones WASI's own linking installed: the
/// route's config and prefix, and its `/data` directory, from the version's [`Guest`]
/// instead of copies made for every request. Call it after linking WASI.
///
/// `p3`: the linker is for WASI 0.3 components, which may also import the 0.3 environment.
/// The interface names are those of wasmtime-wasi 48's WIT (`wasi:cli@0.2.12`,
/// `wasi:filesystem@0.2.12`, and for WASI 0.3 linkers `wasi:cli@0.3.0`); guests importing any
/// 0.2.x (0.3.x) reach them by semver. Were a name to drift, the instance would be created anew
/// instead of reopened, and every std-built guest would fail to link (the env and `/data`
/// tests catch either).
pub fn add_to_linker(linker: &mut Linker<Host>, p3: bool) -> anyhow::Result<()> {
    linker.allow_shadowing(true);
    linker.instance("wasi:cli/environment@0.2.12")?.func_wrap(
        "get-environment",
        |cx: StoreContextMut<'_, Host>, (): ()| Ok((cx.data().environment(),)),
    )?;
    if p3 {
        linker.instance("wasi:cli/environment@0.3.0")?.func_wrap(
            "get-environment",
            |cx: StoreContextMut<'_, Host>, (): ()| Ok((cx.data().environment(),)),
        )?;
    }
    linker
        .instance("wasi:filesystem/preopens@0.2.12")?
        .func_wrap(
            "get-directories",
            |mut cx: StoreContextMut<'_, Host>, (): ()| {
                let host = cx.data_mut();
                let mut dirs: Vec<(Resource<Descriptor>, String)> = Vec::new();
                if let Some(dir) = &host.hooks.guest.dir {
                    let descriptor = host.table.push(Descriptor::Dir(dir.clone()))?;
                    dirs.push((descriptor, DATA_DIR.to_owned()));
                }
                Ok((dirs,))
            },
        )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The data of one request's `Store`.
pub struct Host {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    limits: TotalMemory,
    hooks: SandboxHooks,
    kv: KvAccess,
    /// The prefix the request was routed by.
    prefix: Arc<str>,
    /// When the guest's CPU budget for this request runs out.
    deadline: Instant,
    /// Epoch ticks this request's guest has run into so far (on a WASI 0.3 instance: since its
    /// most recent request started, [`Host::start_task`]). A store's epoch deadline stays where
    /// the last tick left it while the guest waits, so a store that takes requests all the time
    /// runs into about one tick per millisecond: counted over the instance's life, every
    /// instance serving a steady load would yield after 10 ms, once per tick.
    ticks: u32,
    /// What the guest's output streams share: the request they log for, a panic message.
    log: Arc<StoreLog>,
    /// On a WASI 0.3 instance that serves more than one request: the requests by their task,
    /// so each call into the host is its own request's ([`Host::attribute_calls`]).
    tasks: Option<Box<Tasks>>,
}

/// The requests a WASI 0.3 instance has taken, by the component-model task that serves each.
#[derive(Default)]
struct Tasks {
    /// Each request's root task, with its id and (tracing on) its span. One entry per task:
    /// a task id the store reuses replaces the entry of the request that had it, so this holds
    /// at most as many entries as the instance ever had tasks alive at once.
    requests: Vec<(GuestTaskId, u64, Option<crate::trace::Scope>)>,
    /// The task whose request the store's log, outbound calls and key-value calls are
    /// attributed to now.
    current: Option<GuestTaskId>,
    /// The guest code running now is the task whose call into the host was attributed last,
    /// so the next call into the host needs no walk of the call stack. Which task runs can
    /// change only where the call hook sees it: wasmtime enters wasm (`CallingWasm`: a task
    /// starts, a callback runs), or a guest thread that was suspended resumes, always inside
    /// a call into the host (an import, a built-in, or the epoch libcall where a guest
    /// yields), which then returns (`ReturningFromHost`). So this is set by each call into
    /// the host and kept by its return only when that return is the very next hook event and
    /// on the same stack frame (the same guest thread: a suspended thread's frames stay where
    /// they are, so another thread's cannot be at the same address); any other event clears
    /// it, as does [`Host::start_task`] (the attribution moves to a new request).
    settled: bool,
    /// Where on the stack the call hook ran for the last call into the host, while that was
    /// the last hook event (0 otherwise).
    calling: usize,
}

/// An address in the caller's stack frame: the call hook's frames for a call into the host and
/// for its return are the same frame of the same guest thread's stack.
#[inline(always)]
fn stack_address() -> usize {
    let marker = 0u8;
    std::hint::black_box(&marker) as *const u8 as usize
}

/// Ticks a request runs before its guest starts yielding: short requests are never put back
/// in the run queue, long ones yield every tick after this.
const TICKS_BEFORE_YIELDING: u32 = 10;

impl Host {
    /// A store for one call into `guest` through a route at `prefix`, with `deadline` as its
    /// CPU deadline and its limits installed: the one place a `Store` is made.
    pub fn store(
        engine: &wasmtime::Engine,
        guest: &Arc<Guest>,
        prefix: &Arc<str>,
        deadline: Instant,
    ) -> wasmtime::Store<Host> {
        let mut store = wasmtime::Store::new(engine, Host::new(guest, prefix, deadline));
        Host::install(&mut store);
        store
    }

    /// Request state for one call into `guest` through a route at `prefix`, with `deadline`
    /// as its CPU deadline.
    pub fn new(guest: &Arc<Guest>, prefix: &Arc<str>, deadline: Instant) -> Self {
        let log = StoreLog::new(guest.logs());
        let wasi = WasiCtx::builder()
            .stdout(log.stream("stdout"))
            .stderr(log.stream("stderr"))
            .build();
        Self {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            limits: TotalMemory::new(guest.max_memory),
            kv: KvAccess::new(guest.kv.clone(), guest.kv_limits),
            hooks: SandboxHooks {
                guest: guest.clone(),
                copy_tried_outbound: None,
                trace: None,
            },
            prefix: prefix.clone(),
            deadline,
            ticks: 0,
            log,
            tasks: None,
        }
    }

    /// Makes every call `store`'s guest makes into the host count for the request whose task
    /// made it (a WASI 0.3 instance that may serve more than one request, at once or while an
    /// earlier one's body still streams): its log lines carry that request's id and are events
    /// of its span, its outbound calls are children of that span.
    ///
    /// wasmtime 48 tells which task calls: `StoreContextMut::async_call_stack` from the store's
    /// call hook names the calling thread's tasks, the last being the export call
    /// `ProxyHandler` started for the request (the task `WorkerState::on_request_start` is
    /// given, [`Host::start_task`]). A task the store does not know (instantiation) leaves
    /// the attribution as it was.
    ///
    /// Walking the call stack on every call into the host (imports, the component model's
    /// built-ins and libcalls alike: about 40 per request of a `spin-sdk` hello) cost about
    /// 7,700 instructions per request; the walk is skipped where the calling task cannot have
    /// changed since the last call into the host was attributed ([`Tasks::settled`]).
    pub fn attribute_calls(store: &mut wasmtime::Store<Host>) {
        store.data_mut().tasks = Some(Box::default());
        store.call_hook(|mut cx, hook| {
            let here = stack_address();
            let Some(tasks) = cx.data_mut().tasks.as_deref_mut() else {
                return Ok(());
            };
            match hook {
                CallHook::CallingHost => {
                    let settled = std::mem::replace(&mut tasks.settled, true);
                    tasks.calling = here;
                    if !settled {
                        Host::attribute(cx);
                    }
                }
                // Still settled only when this returns from the call into the host just
                // attributed, with nothing in between.
                CallHook::ReturningFromHost => {
                    tasks.settled &= tasks.calling == here;
                    tasks.calling = 0;
                }
                CallHook::CallingWasm | CallHook::ReturningFromWasm => {
                    tasks.settled = false;
                    tasks.calling = 0;
                }
            }
            Ok(())
        });
    }

    /// Attributes what the guest now asks of the host to the request whose task calls.
    fn attribute(mut cx: StoreContextMut<'_, Host>) {
        let root = match cx.async_call_stack() {
            Ok(stack) => stack.last(),
            Err(_) => None,
        };
        let Some(root) = root else { return };
        let host = cx.data_mut();
        let Some(tasks) = host.tasks.as_deref_mut() else {
            return;
        };
        if tasks.current == Some(root) {
            return;
        }
        let Some((_, id, scope)) = tasks.requests.iter().find(|(task, ..)| *task == root) else {
            return;
        };
        let (id, scope) = (*id, scope.clone());
        tasks.current = Some(root);
        host.log.attribute(id);
        host.trace(scope);
    }

    /// This store starts serving request `id` (traced in `scope`, if tracing is on) in task
    /// `task`: the guest's calls are that request's until another request's task calls (with
    /// [`Host::attribute_calls`]) or the store serves its next request.
    pub fn start_task(&mut self, task: GuestTaskId, id: u64, scope: Option<crate::trace::Scope>) {
        // The guest of a shared instance runs on across its requests: its ticks count from its
        // most recent request's start (see [`Host::install`]), unless it has already run into
        // yielding, where it stays: a guest that never gives the thread back yields every tick
        // whatever requests it takes meanwhile.
        if self.ticks < TICKS_BEFORE_YIELDING {
            self.ticks = 0;
        }
        if let Some(tasks) = self.tasks.as_deref_mut() {
            match tasks.requests.iter_mut().find(|(known, ..)| *known == task) {
                Some(entry) => *entry = (task, id, scope.clone()),
                None => tasks.requests.push((task, id, scope.clone())),
            }
            tasks.current = Some(task);
            tasks.settled = false;
            tasks.calling = 0;
        }
        self.serve(id);
        self.trace(scope);
    }

    /// This store now serves request `id` (its guest's log lines carry it).
    pub fn serve(&self, id: u64) {
        self.log.serve(id);
    }

    /// What this store's output streams share (the request they log for, a held panic).
    pub fn log(&self) -> &Arc<StoreLog> {
        &self.log
    }

    /// The span of the request this store now serves (tracing on): its log lines become the
    /// span's events, its outbound calls the span's children. Called for every request of a
    /// traced server, so a reused instance never keeps its last request's span.
    pub fn trace(&mut self, scope: Option<crate::trace::Scope>) {
        self.log.trace(scope.clone());
        self.hooks.trace = scope;
    }

    /// The panic message the guest printed on stderr, if it did, for the report of its
    /// failure ([`crate::guest_log::StoreLog`]).
    pub fn take_panic(&self) -> Option<String> {
        self.log.take_panic()
    }

    /// Whether an idle instance in `store` may serve a request routed by `prefix`: what its
    /// guest may have read once per instance (its environment: the route's prefix) is still
    /// true. A redeploy of the same bytes that only moves the route's prefix keeps the version
    /// and its idle instances; those must not serve the new prefix.
    pub fn serves(store: &wasmtime::Store<Host>, prefix: &Arc<str>) -> bool {
        let host = store.data();
        Arc::ptr_eq(&host.prefix, prefix) || *host.prefix == **prefix
    }

    /// Readies a store that served a request cleanly for its next one, through a route at
    /// `prefix`, with `deadline` as its CPU deadline (instance reuse, [`crate::reuse`]): the
    /// deadline, the tick count and the prefix are the request's own; the guest's memory and
    /// what its resource table still holds are the instance's.
    pub fn reset(store: &mut wasmtime::Store<Host>, prefix: &Arc<str>, deadline: Instant) {
        let host = store.data_mut();
        host.deadline = deadline;
        host.ticks = 0;
        if !Arc::ptr_eq(&host.prefix, prefix) {
            host.prefix = prefix.clone();
        }
        store.set_epoch_deadline(1);
    }

    /// Sets the prefix a WASI 0.3 instance's requests were routed by (its requests share its
    /// environment).
    pub fn set_prefix(&mut self, prefix: &Arc<str>) {
        if !Arc::ptr_eq(&self.prefix, prefix) {
            self.prefix = prefix.clone();
        }
    }

    /// Denies this request every outbound HTTP call, whatever the route allows: a copy of a
    /// request (a shadow run) must have no side effects. The flag returned is set once the
    /// guest tries one.
    pub fn deny_outbound(&mut self) -> Arc<AtomicBool> {
        let tried = Arc::new(AtomicBool::new(false));
        self.deny_outbound_with(tried.clone());
        tried
    }

    /// As [`Host::deny_outbound`], setting `tried` once the guest tries a call.
    pub fn deny_outbound_with(&mut self, tried: Arc<AtomicBool>) {
        self.hooks.copy_tried_outbound = Some(tried);
    }

    /// Sends this request's key-value writes to a scratch overlay that is discarded with it,
    /// while reads still see the real data: a copy of a request (a shadow run) must not change
    /// what serves.
    pub fn kv_scratch(&mut self) {
        self.kv.use_overlay();
    }

    /// The key-value bindings' view of this request.
    pub fn kv_view(&mut self) -> KvView<'_> {
        KvView {
            access: &mut self.kv,
            table: &mut self.table,
        }
    }

    /// The guest's environment: the route's config, then [`ROUTE_PREFIX_ENV`].
    fn environment(&self) -> Vec<(String, String)> {
        let config: &RouteConfig = &self.hooks.guest.config;
        let mut env = Vec::with_capacity(config.len() + 1);
        env.extend(config.iter().cloned());
        env.push((ROUTE_PREFIX_ENV.to_owned(), self.prefix.to_string()));
        env
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

/// wasi:http hooks: outbound requests go out only to destinations the route's allow-list
/// names, and connect only to addresses the server lets guests reach; everything else fails in
/// the guest (`HTTP-request-denied`, `destination-IP-prohibited`) with a log line within the
/// version's budget of outbound warnings.
struct SandboxHooks {
    guest: Arc<Guest>,
    /// For a copy of a request: every outbound request is denied, and this flag set when the
    /// guest tries one.
    copy_tried_outbound: Option<Arc<AtomicBool>>,
    /// With tracing on: the span of the request served; each outbound call is a client span
    /// under it, and carries its `traceparent`.
    trace: Option<crate::trace::Scope>,
}

impl SandboxHooks {
    /// Logs a warning the guest caused on the outbound path, if its budget allows.
    fn warn(&self, what: &str, detail: &dyn fmt::Display) {
        let logs = self.guest.logs();
        if logs.admit_outbound_warning() {
            tracing::warn!(route = %logs.route(), version = %logs.version(), detail = %detail, "{what}");
        }
    }
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
        if let Some(tried) = &self.copy_tried_outbound {
            tried.store(true, Ordering::Relaxed);
            tracing::debug!(route = %self.guest.logs().route(), uri = %request.uri(), "outbound HTTP denied in a shadow copy");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        if !crate::outbound::allows(&self.guest.outbound, request.uri()) {
            self.warn(
                "outbound HTTP denied: the route's allow-list does not name this destination",
                request.uri(),
            );
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        tracing::debug!(route = %self.guest.logs().route(), uri = %request.uri(), "outbound request");
        let guest = self.guest.clone();
        let mut request = request;
        let span = self
            .trace
            .as_ref()
            .map(|scope| crate::trace::Client::start(scope, &mut request));
        Box::new(async move {
            let sent =
                crate::outbound::send(request, options, &guest.outbound, guest.outbound_private)
                    .await;
            if let Some(span) = span {
                match &sent {
                    Ok((response, _)) => span.answered(response.status().as_u16()),
                    Err(SendError::Refused { .. }) => {
                        span.failed("refused: the destination is not a public address")
                    }
                    Err(SendError::Failed(error)) => span.failed(&error.to_string()),
                }
            }
            match sent {
                Ok(sent) => Ok(sent),
                Err(SendError::Refused { host, addresses }) => {
                    let logs = guest.logs();
                    if logs.admit_outbound_warning() {
                        tracing::warn!(
                            route = %logs.route(), version = %logs.version(), host = %host,
                            addresses = ?addresses,
                            "outbound HTTP refused: the destination resolves only to loopback, \
                             private, link-local or other non-public addresses; name the IP \
                             address in the rule, or start the server with --outbound-private"
                        );
                    }
                    Err(wasmtime_wasi_http::Error::DestinationIpProhibited)
                }
                Err(SendError::Failed(error)) => Err(error),
            }
        })
    }

    fn p2_error_from_hyper(&mut self, err: &hyper::Error) -> ErrorCode {
        self.warn("outbound HTTP failed", err);
        ErrorCode::HttpProtocolError
    }

    fn p2_error_from_connect(&mut self, err: &std::io::Error) -> ErrorCode {
        self.warn("outbound connection failed", err);
        ErrorCode::ConnectionRefused
    }

    fn p2_error_from_tls(&mut self, err: &std::io::Error) -> ErrorCode {
        self.warn("outbound TLS failed", err);
        ErrorCode::TlsProtocolError
    }

    fn p3_error_from_hyper(
        &mut self,
        err: &hyper::Error,
    ) -> wasmtime_wasi_http::p3::bindings::http::types::ErrorCode {
        self.warn("outbound HTTP failed", err);
        wasmtime_wasi_http::p3::bindings::http::types::ErrorCode::HttpProtocolError
    }

    fn p3_error_from_connect(
        &mut self,
        err: &std::io::Error,
    ) -> wasmtime_wasi_http::p3::bindings::http::types::ErrorCode {
        self.warn("outbound connection failed", err);
        wasmtime_wasi_http::p3::bindings::http::types::ErrorCode::ConnectionRefused
    }

    fn p3_error_from_tls(
        &mut self,
        err: &std::io::Error,
    ) -> wasmtime_wasi_http::p3::bindings::http::types::ErrorCode {
        self.warn("outbound TLS failed", err);
        wasmtime_wasi_http::p3::bindings::http::types::ErrorCode::TlsProtocolError
    }

    fn p2_error_from_dns(&mut self, err: &rustls::pki_types::InvalidDnsNameError) -> ErrorCode {
        self.warn("outbound request to an invalid DNS name", err);
        ErrorCode::DnsError(
            wasmtime_wasi_http::p2::bindings::http::types::DnsErrorPayload {
                rcode: Some("invalid dns name".to_string()),
                info_code: None,
            },
        )
    }
}
