//! The data plane's hot path: route → (version, in-flight token) → store → instantiate → call →
//! response. Per-version work (compiling, linking, pre-instantiating) never happens here.
//!
//! The in-flight token is shared by the response body and the guest's task, so a version counts
//! as busy (and its route's concurrency slot stays taken) until both the body's last byte has
//! been handed to the connection (or the client has gone away) and the guest has returned. A
//! guest may work on after its response is complete (post-response work, like `waitUntil`
//! elsewhere); it runs in its own task, bounded by its CPU deadline (epoch interruption), a
//! wall-clock backstop and its version's cut-off (drain deadline) all the same. A guest failure
//! is data: it becomes a 500 or 504 and a log line, never a host failure.
//!
//! A response body ends cleanly only when the guest finished it (`outgoing-body.finish`): a
//! body the guest left unfinished (it trapped, ran out of time, was cut off, or returned
//! without finishing) ends with an error, and a finished one stands even if the guest fails
//! afterwards.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tracing::Instrument;
use wasmtime::Store;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::{HostOutgoingBody, HyperOutgoingBody, StreamContext};

mod body;
mod copies;
mod failure;
mod overdue;
mod p3;
mod respond;

use body::Shared;
pub use body::{CappedBody, DataBody};
use failure::{GuestError, body_too_large, failure, failure_response, report};
pub use overdue::StreamExecutor;
pub(crate) use overdue::{Stall, stall, watched};

use crate::engine::Pre;
use crate::host::Host;
use crate::problem::RequestId;
use crate::reuse::Instance;
use crate::route::Refused;
use crate::runtime::Runtime;
use crate::version::Version;

/// Who a connection's requests come from: the client's address and, with tracing on, its text
/// for their spans' `client.address`, written once per connection rather than per request.
#[derive(Debug, Clone)]
pub struct Peer {
    ip: std::net::IpAddr,
    text: Option<Arc<str>>,
}

impl Peer {
    /// The client at `ip` of a connection to `rt`'s data plane.
    pub fn new(rt: &Runtime, ip: std::net::IpAddr) -> Self {
        let text = rt.trace.is_some().then(|| ip.to_string().into());
        Self { ip, text }
    }
}

/// Serves one data-plane request from `peer` (`https` when it arrived over TLS). Never fails:
/// every outcome is a response. With tracing on, the request has a server span, ended when its
/// response body ends (`crate::trace`); off, this checks one `Option`.
pub async fn dispatch<B>(
    rt: &Runtime,
    req: Request<B>,
    https: bool,
    peer: Option<&Peer>,
) -> Response<DataBody>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<wasmtime_wasi_http::Error> + Send + Unpin,
{
    // Boxed: off, the request's future carries one pointer for it (it is moved a few times
    // on its way to the connection), not the span.
    let mut span = rt.trace.as_deref().map(|tracing| {
        Box::new(crate::trace::Server::start(
            tracing.tracer(),
            req.method(),
            req.uri(),
            req.version(),
            req.headers(),
            https,
            peer.and_then(|peer| peer.text.as_ref()),
        ))
    });
    let ip = peer.map(|peer| peer.ip);
    let response = serve(rt, req, https, ip, span.as_deref_mut()).await;
    match span {
        None => response,
        Some(span) => traced(response, *span),
    }
}

/// `response` with its request's `span` given its status, and ended with its body: at once
/// for a body the host wrote, at a guest's body's end (an error if it ends in one) otherwise.
fn traced(mut response: Response<DataBody>, mut span: crate::trace::Server) -> Response<DataBody> {
    let reason = response.extensions_mut().remove::<failure::Reason>();
    span.status(
        response.status().as_u16(),
        reason.as_ref().map(|r| r.0.as_str()),
    );
    response.map(|body| match body {
        DataBody::Guest(body) => DataBody::Traced(Box::new((body, span))),
        // The span ends as it drops, here.
        fixed => fixed,
    })
}

/// [`dispatch`], given the request's span if it is traced.
async fn serve<B>(
    rt: &Runtime,
    req: Request<B>,
    https: bool,
    peer: Option<std::net::IpAddr>,
    mut otel: Option<&mut crate::trace::Server>,
) -> Response<DataBody>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<wasmtime_wasi_http::Error> + Send + Unpin,
{
    let id = rt.next_request_id();
    let pin = rt.config.pin_header.as_ref();
    let mut routed = match rt
        .routes
        .resolve(req.uri().path(), req.headers(), peer, pin)
    {
        Ok(routed) => routed,
        Err(Refused::NoRoute) => {
            tracing::debug!(request_id = %RequestId(id), path = req.uri().path(), "no route");
            return failure(
                StatusCode::NOT_FOUND,
                &format!("no route serves the path `{}`", req.uri().path()),
                id,
            );
        }
        Err(Refused::Unavailable { route }) => {
            tracing::warn!(request_id = %RequestId(id), route = %route, "route unavailable");
            return failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "the route's version could not be loaded; its operator must deploy it again",
                id,
            );
        }
        Err(Refused::Full { route, limit }) => {
            tracing::warn!(request_id = %RequestId(id), route = %route, limit, "route at its concurrency limit; shedding");
            let mut response = failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "the route is at its concurrency limit; retry shortly",
                id,
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
    };
    let started = Instant::now();
    let version = routed.in_flight.version().clone();
    if let Some(otel) = otel.as_deref_mut() {
        otel.routed(
            &routed.route,
            &routed.prefix,
            version.digest.shared(),
            routed.arm.as_str(),
        );
    }
    let max_body = version.limits.max_request_body;
    if max_body > 0 {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_body) {
            return body_too_large(&version, id, started);
        }
    }
    let deadline = started + version.limits.request_timeout;
    // A copy for the route's shadow reads the request body ahead first (never the client's
    // response: the copy runs once the stable version's head is out).
    let (req, copy) = match routed.shadow.take() {
        // Boxed: its state would otherwise make every request's future larger (it is moved
        // a few times on its way to the connection).
        Some(shadow) => {
            Box::pin(copies::prepare(
                req,
                shadow,
                &rt.copy_slots,
                https,
                deadline,
            ))
            .await
        }
        None => (req.map(copies::Replay::new), None),
    };
    let mut copy = copy;
    if let (Some(otel), Some(copy)) = (otel.as_deref_mut(), copy.as_mut()) {
        copy.trace(otel);
    }
    let head = req.method() == Method::HEAD;
    let shared = Arc::new(Shared::new(routed.in_flight));
    let req = req.map(|body| CappedBody::new(body, max_body, &shared));
    // One span per routed request (convention 12): free unless `debug` is enabled for it.
    let span = tracing::debug_span!(
        "request",
        request_id = %RequestId(id),
        route = %routed.route,
        version = %version.short,
        method = %req.method(),
        status = tracing::field::Empty,
    );
    // A WASI 0.3 version: its own path (boxed, so the 0.2 path's future stays as small).
    if version.service.is_some() {
        return Box::pin(p3::serve(
            rt,
            version,
            routed.prefix,
            req,
            https,
            shared,
            copy,
            span,
            otel.map(crate::trace::Server::scope),
            id,
            started,
            deadline,
        ))
        .await;
    }
    // An idle instance of this version if the route reuses them, else a fresh store.
    // (One parked from before the route's prefix moved is dropped: see `Host::serves`.)
    let (mut instance, reused) = match version.instances.take() {
        Some(mut instance) if Host::serves(&instance.store, &routed.prefix) => {
            Host::reset(&mut instance.store, &routed.prefix, deadline);
            (instance, true)
        }
        _ => (
            Instance::fresh(Host::store(
                rt.engine.wasmtime(),
                &version.guest,
                &routed.prefix,
                deadline,
            )),
            false,
        ),
    };
    instance.store.data().serve(id);
    if let Some(otel) = otel {
        otel.reused(reused);
        instance.store.data_mut().trace(Some(otel.scope()));
    }
    let (tx, mut rx) = oneshot::channel();
    let req = match instance
        .store
        .data_mut()
        .http()
        .new_incoming_request(if https { Scheme::Https } else { Scheme::Http }, req)
    {
        Ok(req) => req,
        Err(error) => {
            tracing::debug!(request_id = %RequestId(id), route = %routed.route, error = %error, "bad request");
            version.stats.record(400, started.elapsed(), false);
            return failure(
                StatusCode::BAD_REQUEST,
                "the request is malformed (a Host header is required)",
                id,
            );
        }
    };
    let out = match instance.store.data_mut().http().new_response_outparam(tx) {
        Ok(out) => out,
        Err(error) => {
            let error = GuestError::Host(error.to_string());
            report(&version, &error, id, None);
            return failure_response(&version, &error, id, started);
        }
    };
    // The guest runs in this request's task until its response head is out: most guests have
    // returned by then (a request that needs no task of its own costs no spawn). One that is
    // still working (streaming its body, or working after its response) moves to a task of its
    // own, which the response body can stop.
    let run = run_guest(
        version.clone(),
        instance,
        req,
        out,
        shared.clone(),
        deadline,
        id,
    );
    let mut guest: GuestRun = if span.is_disabled() {
        Box::pin(run)
    } else {
        Box::pin(run.instrument(span.clone()))
    };
    // An instance that served cleanly goes back to its version (instance reuse) only if the
    // guest's response head went out: not after an error code, nor after a request body over
    // the route's limit (answered 413 below).
    let (outcome, task) = tokio::select! {
        biased;
        ran = &mut guest => (Outcome::Returned(ran), None),
        sent = &mut rx => match sent {
            Ok(sent) => {
                let responded = responded(&sent, &shared);
                let instances = version.instances.clone();
                let task = tokio::spawn(async move {
                    let (result, instance) = guest.await;
                    if let Some(instance) = instance
                        && responded
                    {
                        instances.give_back(instance);
                    }
                    result
                });
                (Outcome::Head(sent), Some(task))
            }
            // The guest dropped its response outparam without setting it: its result says why.
            Err(_) => (Outcome::Returned(guest.await), None),
        },
    };
    let (outcome, guest) = match outcome {
        Outcome::Head(head) => (Ok(head), Err(())),
        Outcome::Returned((result, instance)) => {
            let sent = rx.try_recv().map_err(|_| ());
            if let Some(instance) = instance
                && sent.as_ref().is_ok_and(|sent| responded(sent, &shared))
            {
                version.instances.give_back(instance);
            }
            (sent, Ok(result))
        }
    };
    // If the client goes away before the response head, this future is dropped: stop the guest.
    let mut guard = AbortOnDrop(task.as_ref().map(|task| task.abort_handle()));
    // The request body went over the route's limit before the response head: whatever the
    // guest made of that (an error, a 500, a trap), the answer is 413. The guard stops the guest.
    if shared.body_over_limit.load(Ordering::Acquire) {
        return body_too_large(&version, id, started);
    }
    match outcome {
        Ok(Ok(response)) => respond::respond(
            rt,
            &version,
            &routed.prefix,
            response,
            shared,
            respond::Guest::P2(guard.0.take()),
            span,
            started,
            head,
            copy,
            deadline,
            id,
        ),
        Ok(Err(code)) => {
            let error = GuestError::ErrorCode(code);
            report(&version, &error, id, None);
            failure_response(&version, &error, id, started)
        }
        // No response head: the guest's result says why (and it has logged it).
        Err(()) => match guest {
            Ok(Ok(())) => {
                let error = GuestError::NoResponse;
                report(&version, &error, id, None);
                failure_response(&version, &error, id, started)
            }
            Ok(Err(error)) => failure_response(&version, &error, id, started),
            // A head came: the other arm.
            Err(()) => unreachable!("a response head was received"),
        },
    }
}

/// A request's run of its guest ([`run_guest`]), boxed so that it can move to a task of its own
/// halfway.
type GuestRun = std::pin::Pin<Box<dyn Future<Output = Ran> + Send>>;

/// How the guest's run ended, and its instance if it may serve again (instance reuse).
type Ran = (Result<(), GuestError>, Option<Instance>);

/// What the guest had done when the request stopped waiting for it.
enum Outcome {
    /// The guest returned (its response head, if it set one, is in the channel).
    Returned(Ran),
    /// The guest set its response head (or an error code) and is still running.
    Head(Result<Response<HyperOutgoingBody>, ErrorCode>),
}

/// Whether the guest's response head went out to the client: it set a response (not an error
/// code) and the request body stayed within the route's limit (else the answer is a 413).
fn responded(sent: &Result<Response<HyperOutgoingBody>, ErrorCode>, shared: &Shared) -> bool {
    sent.is_ok() && !shared.body_over_limit.load(Ordering::Acquire)
}

/// Aborts the guest task when dropped while still armed.
struct AbortOnDrop(Option<AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}

/// Runs the guest's handler to completion, or until its deadline or its version's cut-off,
/// holding the request's in-flight token (in `shared`) all along: work after the response
/// counts too. When the route reuses instances, an instance whose guest returned cleanly and
/// finished every body is returned, for its version's next request if the response went out.
async fn run_guest(
    version: Arc<Version>,
    mut instance: Instance,
    req: wasmtime::component::Resource<wasmtime_wasi_http::p2::types::HostIncomingRequest>,
    out: wasmtime::component::Resource<wasmtime_wasi_http::p2::types::HostResponseOutparam>,
    shared: Arc<Shared>,
    deadline: Instant,
    id: u64,
) -> Ran {
    let result = {
        let Instance { store, proxy, .. } = &mut instance;
        let call = async {
            let proxy = match proxy {
                Some(proxy) => proxy,
                None => {
                    let Pre::P2(pre) = &version.pre else {
                        unreachable!("only WASI 0.2 versions run here")
                    };
                    proxy.insert(pre.instantiate_async(&mut *store).await?)
                }
            };
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut *store, req, out)
                .await
        };
        // Most calls finish in their first poll (the guest never waits): only a call that waits
        // arms a timer for its deadline and watches its version's cut-off. A guest that runs
        // without waiting is bounded by its deadline all the same, through epoch interruption.
        let mut call = std::pin::pin!(call);
        match std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await {
            Poll::Ready(result) => result.map_err(GuestError::classify),
            Poll::Pending => tokio::select! {
                result = call => result.map_err(GuestError::classify),
                // Waiting on the client's request body at the deadline: the client's doing.
                _ = tokio::time::sleep_until(deadline.into()) => Err(
                    if shared.body_waiting.load(Ordering::Relaxed) {
                        shared.client_stalled.store(true, Ordering::Relaxed);
                        GuestError::BodyStalled
                    } else {
                        GuestError::Timeout
                    }
                ),
                _ = version.cut_off() => Err(GuestError::CutOff),
            },
        }
    };
    // A request body over the route's limit is the client's doing: what the guest makes of
    // the failed read (a trap, a write to the response the host has already replaced with its
    // 413) is not the guest's failure.
    let client_at_fault = shared.body_over_limit.load(Ordering::Acquire);
    if let Err(error) = &result {
        if client_at_fault {
            tracing::debug!(request_id = %RequestId(id), error = %error, "guest failed after an oversize request body");
        } else {
            // A panic message the guest printed goes into the report's one line.
            let panic = instance.store.data().take_panic();
            report(&version, error, id, panic.as_deref());
        }
    }
    // Dropping the store ends every body the guest was still writing. wasmtime-wasi-http ends a
    // body cleanly when its handle is dropped with the store, so abort the unfinished ones first:
    // their ends become errors, and a response the guest never finished never looks complete.
    let unfinished = abort_unfinished_bodies(&mut instance.store);
    if unfinished > 0 && result.is_ok() && !client_at_fault {
        version.record_failure();
        tracing::warn!(
            request_id = %RequestId(id), route = %version.route, version = %version.short,
            "the guest returned without finishing an outgoing body (its response's or a request's); it ends with an error"
        );
    }
    let reusable =
        version.instances.enabled() && result.is_ok() && unfinished == 0 && !client_at_fault;
    // Dropped here unless reusable: before the in-flight token (in `shared`) goes.
    let instance = reusable.then_some(instance);
    drop(shared);
    (result, instance)
}

/// Aborts every outgoing body still in the guest's resource table (those it has not finished);
/// returns how many there were.
fn abort_unfinished_bodies(store: &mut Store<Host>) -> usize {
    let mut unfinished = 0;
    for entry in store.data_mut().http().table.iter_mut() {
        if let Some(body) = entry.downcast_mut::<HostOutgoingBody>() {
            // `abort` takes the body by value; leave an unused one in its place, dropped with
            // the store.
            let (placeholder, _) = HostOutgoingBody::new(StreamContext::Response, None, 1, 1);
            std::mem::replace(body, placeholder).abort();
            unfinished += 1;
        }
    }
    unfinished
}
