//! The instances of a WASI 0.3 version (a `wasi:http/service` component), and how its requests
//! reach them.
//!
//! A 0.3 handler is lifted `async`: one instance may serve several requests at once, each a
//! task of the component model inside the instance's store, driven by `Store::run_concurrent`.
//! Each version has one [`Service`]: wasmtime-wasi-http's `ProxyHandler` (what `wasmtime serve`
//! runs 0.3 components on), which keeps workers (a tokio task each, owning one store and its
//! instance), queues requests, and starts a worker when none can take another. What handoff
//! decides, per version, is in [`State`]:
//!
//! * **how many requests an instance takes**: at most `instance-concurrency` at once and
//!   `reuse` in its lifetime (1 and 1 by default: a fresh instance per request, as for 0.2);
//! * **deadlines**: each request gets its route's `request-timeout`, and a request past it is
//!   answered 504. A request cannot be cut out of an instance it shares with others: the
//!   instance then takes no new requests and is dropped once its others have ended or timed
//!   out ([`Expiry`] is the backstop that drops it, its work with it, a request timeout after
//!   its most recent request started);
//! * **traps**: a trap in one request ends the instance's `run_concurrent`, so the instance is
//!   dropped and every request it was serving at that moment fails (each counts against the
//!   version);
//! * **retirement**: once the version leaves its route, idle instances are dropped at once
//!   ([`Service::close`]), and at its drain deadline every instance is ([`Version::cut_off`]);
//! * **a client that leaves** before its response head: its request expires as at its
//!   deadline ([`Call::left`]); an instance that served only that request is dropped at once,
//!   its work with it, and a shared one takes no new requests and ends as after a timeout;
//! * **the route's prefix**: a guest reads its environment (`HANDOFF_ROUTE_PREFIX`) once per
//!   instance, so instances serve one prefix: a request routed by another prefix (a redeploy
//!   that only moved the route) gets instances of its own, and the old prefix's idle ones end.
//!
//! [`Version::cut_off`]: crate::version::Version::cut_off

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use tokio_util::sync::CancellationToken;
use wasmtime::component::GuestTaskId;
use wasmtime::{Store, StoreContextMut};
use wasmtime_wasi_http::handler::{
    HandlerState, Instance, Proxy, ProxyHandler, ShouldAccept, WorkerExpiration, WorkerState,
    WorkerStatus,
};
use wasmtime_wasi_http::p3::bindings::ServicePre;

use crate::cancelled::Cancelled;
use crate::guest_log::StoreLog;
use crate::host::{Guest, Host};

pub use wasmtime_wasi_http::handler::{ExpirationError, InstantiationError, TrapOrPanicError};

/// How long an idle 0.3 instance is kept for its version's next request.
pub const IDLE_TIMEOUT: Duration = crate::reuse::IDLE_TIMEOUT;

/// One request handed to a [`Service`]: the prefix it was routed by and its deadline.
pub struct Call {
    /// The prefix the request was routed by (the guest's `HANDOFF_ROUTE_PREFIX`).
    pub prefix: Arc<str>,
    /// When its response head must have come.
    pub deadline: Instant,
    /// Its request id: the guest's log lines for it carry it.
    pub id: u64,
    /// With tracing on: the request's span (its guest's log lines become its events, its
    /// outbound calls its children).
    pub trace: Option<crate::trace::Scope>,
    /// Set when the request's client leaves before the response head: the request then
    /// expires as at its deadline (the guest's work for it is dropped with its instance when
    /// the instance served no other request).
    pub left: Option<Arc<Left>>,
    /// The instance that took the request, once one did.
    pub taken: Arc<OnceLock<Taken>>,
}

/// Whether a request's client left before its response head ([`Call::left`]): a flag and the
/// waker of the request's expiry, one allocation per request (a `CancellationToken` took two,
/// and the locks of its tree).
#[derive(Default)]
pub struct Left {
    gone: AtomicBool,
    waker: AtomicWaker,
}

impl Left {
    /// The client left: the request expires.
    pub fn leave(&self) {
        self.gone.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.gone.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.gone.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Says the client left ([`Left::leave`]) when dropped (the request's future was: its client
/// went away), unless disarmed first.
pub struct LeaveOnDrop(Option<Arc<Left>>);

impl LeaveOnDrop {
    /// Arms it for `left`.
    pub fn new(left: Arc<Left>) -> Self {
        Self(Some(left))
    }

    /// The response head came: dropping it says nothing.
    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for LeaveOnDrop {
    fn drop(&mut self) {
        if let Some(left) = self.0.take() {
            left.leave();
        }
    }
}

/// What the instance that took a request shares with it.
pub struct Taken {
    log: Arc<StoreLog>,
    life: Arc<Life>,
}

impl Taken {
    /// The instance's log: what the guest printed when it panicked, for the request's failure
    /// report.
    pub fn log(&self) -> &StoreLog {
        &self.log
    }

    /// Whether the instance was dropped while it served (a trap, a timeout, its version's
    /// cut-off): a response body of it still streaming then was cut, though wasmtime ends it
    /// as if the guest had finished it.
    pub fn cut(&self) -> bool {
        self.life.cut.load(Ordering::Acquire)
    }
}

impl Call {
    /// A request routed by `prefix`, due by `deadline`, with id `id`.
    pub fn new(prefix: Arc<str>, deadline: Instant, id: u64) -> Self {
        Self {
            prefix,
            deadline,
            id,
            trace: None,
            left: None,
            taken: Arc::default(),
        }
    }
}

/// A WASI 0.3 version's instances: those of the prefix its route has now (the requests of
/// another prefix get instances of their own, [`Service::handle`]).
pub struct Service {
    current: arc_swap::ArcSwap<Handler>,
    /// Taken to start the instances of a new prefix.
    moving: Mutex<()>,
    /// What each prefix's instances are made from.
    base: State,
}

/// The instances of one prefix.
struct Handler {
    prefix: Arc<str>,
    handler: ProxyHandler<State>,
}

/// What one 0.3 version's instances are made from, and its rules for them.
#[derive(Clone)]
pub struct State {
    engine: wasmtime::Engine,
    pre: Arc<ServicePre<Host>>,
    guest: Arc<Guest>,
    /// Requests one instance may serve in its lifetime (`reuse`).
    reuse: usize,
    /// Requests one instance may serve at once (`instance-concurrency`).
    concurrency: usize,
    request_timeout: Duration,
    /// The version retired: idle instances end. Each prefix's instances have a child token,
    /// cancelled when the route moves to another prefix.
    closed: CancellationToken,
    /// The version's drain deadline passed: every instance ends.
    cut_off: CancellationToken,
    /// Instances alive now.
    live: Arc<AtomicUsize>,
    /// Instances for copies of requests (shadow runs): key-value writes are kept apart.
    copy: bool,
    /// For copies: outbound HTTP denied, and this set once the guest tried a call.
    deny: Option<Arc<AtomicBool>>,
}

impl Service {
    /// The instances of a version of `pre` (on `engine`) that runs in `guest`'s sandbox, each
    /// serving up to `reuse` requests, `concurrency` at once, within `request_timeout` each,
    /// and all ending when `cut_off` is cancelled.
    pub fn new(
        engine: &wasmtime::Engine,
        pre: Arc<ServicePre<Host>>,
        guest: Arc<Guest>,
        reuse: u32,
        concurrency: u32,
        request_timeout: Duration,
        cut_off: CancellationToken,
    ) -> Self {
        Self::of(State {
            engine: engine.clone(),
            pre,
            guest,
            reuse: reuse.max(1) as usize,
            concurrency: concurrency.max(1) as usize,
            request_timeout,
            closed: CancellationToken::new(),
            cut_off,
            live: Arc::default(),
            copy: false,
            deny: None,
        })
    }

    /// Fresh instances for copies of requests (shadow runs): their key-value writes go to a
    /// scratch overlay, and with `deny` their outbound calls are denied (`deny` is set when the
    /// guest makes one).
    pub fn for_copies(
        engine: &wasmtime::Engine,
        pre: Arc<ServicePre<Host>>,
        guest: Arc<Guest>,
        request_timeout: Duration,
        deny: Option<Arc<AtomicBool>>,
    ) -> Self {
        Self::of(State {
            engine: engine.clone(),
            pre,
            guest,
            reuse: 1,
            concurrency: 1,
            request_timeout,
            closed: CancellationToken::new(),
            cut_off: CancellationToken::new(),
            live: Arc::default(),
            copy: true,
            deny,
        })
    }

    fn of(base: State) -> Self {
        Self {
            current: arc_swap::ArcSwap::from_pointee(Handler::new(&base, "".into())),
            moving: Mutex::new(()),
            base,
        }
    }

    /// Serves `request`: by an instance that can take it, else a new one. The error is an
    /// [`ExpirationError`] past the call's deadline (or once its client left), a
    /// [`TrapOrPanicError`] when the instance was dropped (a trap in this request or another
    /// it served), an [`InstantiationError`] when no instance could be made, or the guest's
    /// own.
    pub async fn handle(
        &self,
        call: Call,
        request: wasmtime_wasi_http::handler::Request,
    ) -> wasmtime::Result<wasmtime_wasi_http::handler::Response> {
        let current = self.current.load();
        if Arc::ptr_eq(&current.prefix, &call.prefix) || *current.prefix == *call.prefix {
            return current.handler.handle(call, request).await;
        }
        drop(current);
        let handler = self.for_prefix(&call.prefix);
        handler.handler.handle(call, request).await
    }

    /// The instances of `prefix`, started (and the previous prefix's idle ones ended) if the
    /// version served another prefix until now.
    #[cold]
    fn for_prefix(&self, prefix: &Arc<str>) -> Arc<Handler> {
        let _moving = self.moving.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.current.load_full();
        if *current.prefix == **prefix {
            return current;
        }
        // The first request of a version names its prefix; later ones only when it moved.
        if !current.prefix.is_empty() {
            current.handler.state().closed.cancel();
        }
        let next = Arc::new(Handler::new(&self.base, prefix.clone()));
        self.current.store(next.clone());
        next
    }

    /// The version retired: its idle instances end now, the busy ones once idle.
    pub fn close(&self) {
        self.base.closed.cancel();
    }

    /// Instances alive now (busy or idle).
    pub fn instances(&self) -> usize {
        self.base.live.load(Ordering::Relaxed)
    }

    /// Requests one instance may serve at once.
    pub fn concurrency(&self) -> usize {
        self.base.concurrency
    }
}

impl Handler {
    fn new(base: &State, prefix: Arc<str>) -> Self {
        Self {
            prefix,
            handler: ProxyHandler::new(State {
                closed: base.closed.child_token(),
                ..base.clone()
            }),
        }
    }
}

impl HandlerState for State {
    type StoreData = Host;
    type WorkerExpiration = Expiry;
    type WorkerState = Worker;

    async fn instantiate(&self) -> wasmtime::Result<Instance<Host, Expiry, Worker>> {
        // The deadline of 0.3 calls is kept per request (`Worker::on_request_start`) and by
        // `Expiry`; the store's epoch callback only makes a long-running guest yield.
        let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let mut store = Host::store(&self.engine, &self.guest, &"/".into(), far);
        if self.copy {
            store.data_mut().kv_scratch();
        }
        if let Some(tried) = &self.deny {
            store.data_mut().deny_outbound_with(tried.clone());
        }
        // An instance that may serve more than one request (at once, or the next while the
        // last one's body still streams) tells its requests' calls apart by task.
        if self.reuse > 1 {
            Host::attribute_calls(&mut store);
        }
        let service = self.pre.instantiate_async(&mut store).await?;
        self.live.fetch_add(1, Ordering::Relaxed);
        let life = Arc::new(Life::default());
        Ok(Instance {
            store,
            proxy: Proxy::P3(service),
            view: wasmtime_wasi_http::WasiHttpView::http,
            expiration: Expiry {
                request_timeout: self.request_timeout,
                sleep: Box::pin(tokio::time::sleep(IDLE_TIMEOUT)),
                closed: Mutex::new(Cancelled::new(self.closed.clone())),
                cut_off: Mutex::new(Cancelled::new(self.cut_off.clone())),
                life: life.clone(),
            },
            state: Worker {
                reuse: self.reuse,
                concurrency: self.concurrency,
                live: self.live.clone(),
                guest: self.guest.clone(),
                life,
            },
        })
    }
}

/// What an instance's worker and its expiry share.
#[derive(Default)]
struct Life {
    /// Requests the instance has taken.
    started: AtomicUsize,
    /// A client of one of them left before its response head.
    abandoned: AtomicBool,
    /// The instance was dropped while it served (its `run_concurrent` ended in an error).
    cut: AtomicBool,
}

/// One instance's rules.
pub struct Worker {
    reuse: usize,
    concurrency: usize,
    live: Arc<AtomicUsize>,
    guest: Arc<Guest>,
    life: Arc<Life>,
}

impl WorkerState for Worker {
    type StoreData = Host;
    type RequestData = Call;

    fn should_accept_request(&self, concurrent: usize, total: usize) -> ShouldAccept {
        if total >= self.reuse {
            ShouldAccept::Never
        } else if concurrent >= self.concurrency {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    fn on_request_start(
        &self,
        mut store: StoreContextMut<'_, Host>,
        call: Call,
        task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
        store.data_mut().set_prefix(&call.prefix);
        store.data_mut().start_task(task, call.id, call.trace);
        let _ = call.taken.set(Taken {
            log: store.data().log().clone(),
            life: self.life.clone(),
        });
        self.life.started.fetch_add(1, Ordering::Relaxed);
        let deadline = Box::pin(tokio::time::sleep_until(call.deadline.into()));
        match call.left {
            None => deadline,
            Some(left) => Box::pin(Expires {
                deadline,
                left,
                life: self.life.clone(),
            }),
        }
    }

    fn drop(&self, store: Store<Host>, result: wasmtime::Result<()>) {
        if let Err(error) = result {
            // Before the store goes: the response bodies still streaming from it end when it
            // does, and must read as cut.
            self.life.cut.store(true, Ordering::Release);
            let logs = self.guest.logs();
            tracing::debug!(
                route = %logs.route(), version = %logs.version(), error = %format!("{error:#}"),
                "a WASI 0.3 instance ended with an error; dropped"
            );
        }
        drop(store);
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// When an instance ends: idle for [`IDLE_TIMEOUT`] (at once when its version retired), busy
/// for a request timeout since its most recent request started (the backstop of a request
/// that cannot be cut out), or at its version's cut-off.
pub struct Expiry {
    request_timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    // Polled on every turn of the instance's event loop: `Cancelled` takes none of the
    // version's tokens' locks for that. Behind a lock only to be `Sync`; polled through
    // `get_mut`, never locked.
    closed: Mutex<Cancelled>,
    cut_off: Mutex<Cancelled>,
    life: Arc<Life>,
}

/// When a request expires: at its deadline, or once its client left (which marks its
/// instance abandoned).
struct Expires {
    deadline: Pin<Box<tokio::time::Sleep>>,
    left: Arc<Left>,
    life: Arc<Life>,
}

impl Future for Expires {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if this.left.poll(cx).is_ready() {
            this.life.abandoned.store(true, Ordering::Relaxed);
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl WorkerExpiration for Expiry {
    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        status: WorkerStatus,
        start: Instant,
    ) -> Poll<()> {
        let this = self.get_mut();
        let cut_off = this
            .cut_off
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if Pin::new(cut_off).poll(cx).is_ready() {
            return Poll::Ready(());
        }
        // A client left, and its request was all this instance ever served: nothing else can
        // need the instance (no other request's body streams from it), so its work ends now.
        if status != WorkerStatus::Requests
            && this.life.abandoned.load(Ordering::Relaxed)
            && this.life.started.load(Ordering::Relaxed) <= 1
        {
            return Poll::Ready(());
        }
        let timeout = match status {
            WorkerStatus::Idle => {
                let closed = this
                    .closed
                    .get_mut()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if Pin::new(closed).poll(cx).is_ready() {
                    return Poll::Ready(());
                }
                IDLE_TIMEOUT
            }
            WorkerStatus::Requests | WorkerStatus::PostReturn => this.request_timeout,
        };
        let deadline = tokio::time::Instant::from_std(start + timeout);
        // A later deadline (the next request started) leaves the timer armed for the earlier
        // one, and moves it there when it fires: moving a timer takes a lock of the timer
        // wheel, and the deadline moves with every request.
        if deadline < this.sleep.deadline() {
            this.sleep.as_mut().reset(deadline);
        }
        while this.sleep.as_mut().poll(cx).is_ready() {
            if this.sleep.deadline() >= deadline {
                return Poll::Ready(());
            }
            this.sleep.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}
