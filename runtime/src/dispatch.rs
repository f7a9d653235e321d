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

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tracing::Instrument;
use wasmtime::Store;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::{HostOutgoingBody, HyperOutgoingBody, StreamContext};

use crate::host::Host;
use crate::route::{InFlight, Refused};
use crate::runtime::Runtime;
use crate::version::Version;

/// Serves one data-plane request from `peer` (`https` when it arrived over TLS). Never fails:
/// every outcome is a response.
pub async fn dispatch<B>(
    rt: &Runtime,
    req: Request<B>,
    https: bool,
    peer: Option<std::net::IpAddr>,
) -> Response<DataBody>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let id = rt.next_request_id();
    let routed = match rt.routes.resolve(req.uri().path(), req.headers(), peer) {
        Ok(routed) => routed,
        Err(Refused::NoRoute) => {
            tracing::debug!(request_id = id, path = req.uri().path(), "no route");
            return failure(
                StatusCode::NOT_FOUND,
                &format!("no route serves the path `{}`", req.uri().path()),
                id,
            );
        }
        Err(Refused::Unavailable { route }) => {
            tracing::warn!(request_id = id, route = %route, "route unavailable");
            return failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "the route's version could not be loaded; its operator must deploy it again",
                id,
            );
        }
        Err(Refused::Full { route, limit }) => {
            tracing::warn!(request_id = id, route = %route, limit, "route at its concurrency limit; shedding");
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
    let version = routed.in_flight.version().clone();
    let max_body = version.limits.max_request_body;
    if max_body > 0 {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_body) {
            return body_too_large(&version, id);
        }
    }
    let head = req.method() == Method::HEAD;
    let shared = Arc::new(Shared {
        in_flight: routed.in_flight,
        body_over_limit: AtomicBool::new(false),
    });
    let req = req.map(|body| CappedBody {
        inner: body,
        left: if max_body > 0 { max_body } else { u64::MAX },
        shared: Arc::downgrade(&shared),
    });
    // One span per routed request (convention 12): free unless `debug` is enabled for it.
    let span = tracing::debug_span!(
        "request",
        request_id = id,
        route = %routed.route,
        version = %version.short,
        method = %req.method(),
        status = tracing::field::Empty,
    );
    let started = Instant::now();
    let deadline = started + version.limits.request_timeout;
    let mut store = Host::store(
        rt.engine.wasmtime(),
        &version.guest,
        &routed.prefix,
        deadline,
    );
    let (tx, rx) = oneshot::channel();
    let req = match store
        .data_mut()
        .http()
        .new_incoming_request(if https { Scheme::Https } else { Scheme::Http }, req)
    {
        Ok(req) => req,
        Err(error) => {
            tracing::debug!(request_id = id, route = %routed.route, error = %error, "bad request");
            return failure(
                StatusCode::BAD_REQUEST,
                "the request is malformed (a Host header is required)",
                id,
            );
        }
    };
    let out = match store.data_mut().http().new_response_outparam(tx) {
        Ok(out) => out,
        Err(error) => {
            let error = GuestError::Host(error.to_string());
            report(&version, &error, id);
            return failure_response(&error, id);
        }
    };
    let guest = tokio::spawn(
        run_guest(
            version.clone(),
            store,
            req,
            out,
            shared.clone(),
            deadline,
            id,
        )
        .instrument(span.clone()),
    );
    // If the client goes away before the response head, this future is dropped: stop the guest.
    let mut guard = AbortOnDrop(Some(guest.abort_handle()));
    let outcome = rx.await;
    // The request body went over the route's limit before the response head: whatever the
    // guest made of that (an error, a 500, a trap), the answer is 413. The guard stops the guest.
    if shared.body_over_limit.load(Ordering::Acquire) {
        return body_too_large(&version, id);
    }
    match outcome {
        Ok(Ok(response)) => {
            let abort = guard.0.take().expect("guard armed");
            span.record("status", response.status().as_u16());
            let trace = Trace {
                span,
                started,
                sent: 0,
            };
            // Where hyper may stop without polling the body's end: after a declared length,
            // and at once for a response that has no body on the wire.
            let status = response.status();
            let complete_at =
                if head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
                    Some(0)
                } else {
                    response
                        .headers()
                        .get(header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                };
            response.map(|body| {
                DataBody::Guest(GuestBody::new(body, shared, abort, complete_at, trace))
            })
        }
        Ok(Err(code)) => {
            let error = GuestError::ErrorCode(code);
            report(&version, &error, id);
            failure_response(&error, id)
        }
        // No response head: the task's result says why (and the task has logged it).
        Err(_) => match guest.await {
            Ok(Ok(())) => {
                let error = GuestError::NoResponse;
                report(&version, &error, id);
                failure_response(&error, id)
            }
            Ok(Err(error)) => failure_response(&error, id),
            Err(join) => {
                let error = GuestError::Host(join.to_string());
                report(&version, &error, id);
                failure_response(&error, id)
            }
        },
    }
}

/// What the parts of one request share: its in-flight token, held until the response body has
/// ended (or the client has gone away) and the guest's task has ended; and whether the request
/// body went over the route's limit.
struct Shared {
    in_flight: InFlight,
    body_over_limit: AtomicBool,
}

/// The 413 for a request body over the route's limit.
fn body_too_large(version: &Version, id: u64) -> Response<DataBody> {
    let limit = version.limits.max_request_body;
    tracing::warn!(request_id = id, route = %version.route, limit, "request body over the route's limit");
    failure(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the request body is larger than this route's limit of {limit} bytes"),
        id,
    )
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
/// counts too.
async fn run_guest(
    version: Arc<Version>,
    mut store: Store<Host>,
    req: wasmtime::component::Resource<wasmtime_wasi_http::p2::types::HostIncomingRequest>,
    out: wasmtime::component::Resource<wasmtime_wasi_http::p2::types::HostResponseOutparam>,
    shared: Arc<Shared>,
    deadline: Instant,
    id: u64,
) -> Result<(), GuestError> {
    let result = {
        let call = async {
            let proxy = version.pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out)
                .await
        };
        tokio::select! {
            result = call => result.map_err(GuestError::classify),
            _ = tokio::time::sleep_until(deadline.into()) => Err(GuestError::Timeout),
            _ = version.cut_off() => Err(GuestError::CutOff),
        }
    };
    if let Err(error) = &result {
        report(&version, error, id);
    }
    // Dropping the store ends every body the guest was still writing. wasmtime-wasi-http ends a
    // body cleanly when its handle is dropped with the store, so abort the unfinished ones first:
    // their ends become errors, and a response the guest never finished never looks complete.
    let unfinished = abort_unfinished_bodies(&mut store);
    if unfinished > 0 && result.is_ok() {
        version.record_failure();
        tracing::warn!(
            request_id = id, route = %version.route, version = %version.short,
            "the guest returned without finishing an outgoing body (its response's or a request's); it ends with an error"
        );
    }
    drop(store);
    drop(shared);
    result
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

/// Why a guest produced no (complete) response.
#[derive(Debug, thiserror::Error)]
enum GuestError {
    /// It ran past its deadline.
    #[error("the guest ran past its deadline")]
    Timeout,
    /// It trapped (including running out of memory).
    #[error("the guest trapped: {0}")]
    Trap(String),
    /// Its version's drain deadline passed.
    #[error("the guest's version was cut off at its drain deadline")]
    CutOff,
    /// No instance slot was free.
    #[error("no instance slot was free")]
    Overloaded,
    /// It returned without setting a response.
    #[error("the guest returned without calling `response-outparam::set`")]
    NoResponse,
    /// It set an error code instead of a response.
    #[error("the guest answered with error code {0:?}")]
    ErrorCode(ErrorCode),
    /// Something failed in the host.
    #[error("host failure: {0}")]
    Host(String),
}

impl GuestError {
    fn classify(error: wasmtime::Error) -> Self {
        if let Some(trap) = error.downcast_ref::<wasmtime::Trap>()
            && *trap == wasmtime::Trap::Interrupt
        {
            return Self::Timeout;
        }
        if error.is::<wasmtime::PoolConcurrencyLimitError>() {
            return Self::Overloaded;
        }
        Self::Trap(format!("{error:#}"))
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Overloaded | Self::CutOff => StatusCode::SERVICE_UNAVAILABLE,
            Self::Trap(_) | Self::NoResponse | Self::ErrorCode(_) | Self::Host(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn public_detail(&self) -> &'static str {
        match self {
            Self::Timeout => "the handler did not finish within its deadline",
            Self::Overloaded => "the server is at its instance limit; retry shortly",
            Self::CutOff => "the handler's version was retired and its drain deadline passed",
            Self::Trap(_) | Self::NoResponse | Self::ErrorCode(_) | Self::Host(_) => {
                "the handler failed; the server log has the details"
            }
        }
    }
}

/// Counts and logs a failed request, with its route, version and request id.
fn report(version: &Version, error: &GuestError, id: u64) {
    version.record_failure();
    if let GuestError::Host(_) = error {
        tracing::error!(
            request_id = id, route = %version.route, version = %version.short,
            error = %error, "request failed in the host"
        );
    } else {
        tracing::warn!(
            request_id = id, route = %version.route, version = %version.short,
            error = %error, "guest failed"
        );
    }
}

fn failure_response(error: &GuestError, id: u64) -> Response<DataBody> {
    let mut response = failure(error.status(), error.public_detail(), id);
    if matches!(error, GuestError::Overloaded) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// A problem document from the data plane. Only used off the success path.
fn failure(status: StatusCode, detail: &str, id: u64) -> Response<DataBody> {
    crate::problem::Problem::new(status, detail)
        .for_request(id)
        .response()
}

/// A request body that fails (as the guest sees it) once it exceeds the route's limit, and
/// says so to the request, which answers 413 if that happens before the response head. The
/// declared-length check before instantiation catches most oversize bodies earlier.
pub struct CappedBody<B> {
    inner: B,
    left: u64,
    shared: Weak<Shared>,
}

impl<B> Body for CappedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if len > this.left {
                    this.left = 0;
                    if let Some(shared) = this.shared.upgrade() {
                        shared.body_over_limit.store(true, Ordering::Release);
                    }
                    return Poll::Ready(Some(Err(wasmtime_wasi_http::Error::HttpRequestBodySize(
                        None,
                    ))));
                }
                this.left -= len;
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => Poll::Ready(Some(Err(error.into()))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The body of every data-plane response.
pub enum DataBody {
    /// A guest's streaming body.
    Guest(GuestBody),
    /// A small body the host wrote itself.
    Fixed(Option<Bytes>),
}

/// An error that ends a response body early: the connection is closed (HTTP/1.1, without the
/// terminating chunk) or the stream reset (HTTP/2), so the client can tell.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The guest did not finish the body: it failed after sending the response head, was
    /// stopped, or returned without finishing it.
    #[error("the handler did not finish the response body")]
    GuestFailed,
    /// The guest sent more than the route's response body limit.
    #[error("the response body is larger than the route's limit")]
    TooLarge,
}

impl From<Bytes> for DataBody {
    fn from(bytes: Bytes) -> Self {
        Self::Fixed(Some(bytes))
    }
}

impl Body for DataBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            DataBody::Guest(body) => Pin::new(body).poll_frame(cx),
            DataBody::Fixed(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            DataBody::Guest(body) => body.shared.is_none(),
            DataBody::Fixed(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            DataBody::Guest(body) => body.inner.size_hint(),
            DataBody::Fixed(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            DataBody::Fixed(None) => SizeHint::with_exact(0),
        }
    }
}

/// A guest's response body carrying the request's in-flight token until its last frame.
pub struct GuestBody {
    inner: HyperOutgoingBody,
    /// The request's shared state; `None` once the body has ended.
    shared: Option<Arc<Shared>>,
    guest: AbortHandle,
    /// Bytes the guest may still send before the route's response limit cuts it off.
    left: u64,
    /// Body bytes after which the response is complete on the wire without an end from the
    /// body (a declared Content-Length; 0 for HEAD, 204 and 304): hyper may drop the body
    /// there without polling its end.
    complete_at: Option<u64>,
    trace: Trace,
}

/// The request's span and start, for the `request finished` event when its body ends.
struct Trace {
    span: tracing::Span,
    started: Instant,
    /// Body bytes handed to the connection.
    sent: u64,
}

impl GuestBody {
    fn new(
        inner: HyperOutgoingBody,
        shared: Arc<Shared>,
        guest: AbortHandle,
        complete_at: Option<u64>,
        trace: Trace,
    ) -> Self {
        let limit = shared.in_flight.version().limits.max_response_body;
        Self {
            inner,
            shared: Some(shared),
            guest,
            left: if limit > 0 { limit } else { u64::MAX },
            complete_at,
            trace,
        }
    }
}

impl Body for GuestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.shared.is_none() {
            return Poll::Ready(None);
        }
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match frame {
            Some(Ok(frame)) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if len > this.left {
                    if let Some(shared) = this.shared.take() {
                        let version = shared.in_flight.version();
                        tracing::warn!(
                            route = %version.route, version = %version.short,
                            limit = version.limits.max_response_body,
                            "response body over the route's limit; cut off"
                        );
                        version.record_failure();
                    }
                    this.guest.abort();
                    return Poll::Ready(Some(Err(BodyError::TooLarge)));
                }
                this.left -= len;
                this.trace.sent += len;
                Poll::Ready(Some(Ok(frame)))
            }
            // The guest did not finish the body (see `abort_unfinished_bodies`); the guest's
            // task has logged why.
            Some(Err(_)) => {
                this.shared = None;
                Poll::Ready(Some(Err(BodyError::GuestFailed)))
            }
            // The guest finished the body: it stands, whatever the guest does afterwards.
            None => {
                this.shared = None;
                Poll::Ready(None)
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for GuestBody {
    fn drop(&mut self) {
        if self.shared.is_some() && self.complete_at != Some(self.trace.sent) {
            // The connection let go of the body before its end: the client went away mid-body.
            // Stop the guest rather than let it run on unseen. (A body dropped once its declared
            // length is out is complete: its guest may finish its work, under its deadline.)
            self.guest.abort();
        }
        if !self.trace.span.is_disabled() {
            tracing::debug!(
                parent: &self.trace.span,
                duration_ms = self.trace.started.elapsed().as_secs_f64() * 1e3,
                body_bytes = self.trace.sent,
                "request finished"
            );
        }
    }
}
