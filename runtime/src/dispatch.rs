//! The data plane's hot path: route → (version, in-flight token) → store → instantiate → call →
//! response. Per-version work (compiling, linking, pre-instantiating) never happens here.
//!
//! The in-flight token travels inside the response body, so a version counts as busy until the
//! body's last byte has been handed to the connection, or the client has gone away. The guest
//! runs in its own task, bounded by its CPU deadline (epoch interruption), a wall-clock backstop
//! and its version's cut-off (drain deadline). A guest failure is data: it becomes a 500 or 504
//! and a log line, never a host failure.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tracing::Instrument;
use wasmtime::Store;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::Runtime;
use crate::host::Host;
use crate::routes::Refused;
use crate::version::{InFlight, Version};

/// Serves one data-plane request (`https` when it arrived over TLS). Never fails: every
/// outcome is a response.
pub async fn dispatch<B>(rt: &Runtime, req: Request<B>, https: bool) -> Response<DataBody>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let id = rt.next_request_id();
    let routed = match rt.routes.resolve(req.uri().path()) {
        Ok(routed) => routed,
        Err(Refused::NoRoute) => {
            tracing::debug!(request_id = id, path = req.uri().path(), "no route");
            return failure(
                StatusCode::NOT_FOUND,
                &format!("no route serves the path `{}`", req.uri().path()),
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
            tracing::warn!(request_id = id, route = %routed.route, limit = max_body, "request body over the route's limit");
            return failure(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the request body is larger than this route's limit of {max_body} bytes"),
                id,
            );
        }
    }
    let req = req.map(|body| CappedBody {
        inner: body,
        left: if max_body > 0 { max_body } else { u64::MAX },
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
    let mut store = Store::new(
        rt.engine.wasmtime(),
        Host::new(
            &version,
            &routed.prefix,
            deadline,
            rt.config.outbound_private,
        ),
    );
    Host::install(&mut store);
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
    let failed = Arc::new(AtomicBool::new(false));
    let guest = tokio::spawn(
        run_guest(
            version.clone(),
            store,
            req,
            out,
            failed.clone(),
            deadline,
            id,
        )
        .instrument(span.clone()),
    );
    // If the client goes away before the response head, this future is dropped: stop the guest.
    let mut guard = AbortOnDrop(Some(guest.abort_handle()));
    match rx.await {
        Ok(Ok(response)) => {
            let abort = guard.0.take().expect("guard armed");
            span.record("status", response.status().as_u16());
            let trace = Trace {
                span,
                started,
                sent: 0,
            };
            response.map(|body| {
                DataBody::Guest(GuestBody::new(body, failed, routed.in_flight, abort, trace))
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

/// Aborts the guest task when dropped while still armed.
struct AbortOnDrop(Option<AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}

/// Runs the guest's handler to completion, or until its deadline or its version's cut-off.
async fn run_guest(
    version: Arc<Version>,
    mut store: Store<Host>,
    req: wasmtime::component::Resource<wasmtime_wasi_http::p2::types::HostIncomingRequest>,
    out: wasmtime::component::Resource<wasmtime_wasi_http::p2::types::HostResponseOutparam>,
    failed: Arc<AtomicBool>,
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
        // Dropping the store below ends the response body; the flag tells the body that the end
        // is a failure, not a finish. Set it first.
        failed.store(true, Ordering::Release);
    }
    drop(store);
    result
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
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
        "request_id": format!("{id:016x}"),
    });
    let mut response = Response::new(DataBody::Fixed(Some(Bytes::from(body.to_string()))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("{id:016x}")) {
        headers.insert("x-request-id", value);
    }
    response
}

/// A request body that fails (as the guest sees it) once it exceeds the route's limit; the
/// declared-length check before instantiation catches most oversize bodies with a 413.
pub struct CappedBody<B> {
    inner: B,
    left: u64,
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

/// An error that ends a response body early; the connection is closed so the client can tell.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The guest failed after sending the response head.
    #[error("the handler failed while writing the response body")]
    GuestFailed,
    /// The guest sent more than the route's response body limit.
    #[error("the response body is larger than the route's limit")]
    TooLarge,
    /// The body stream itself failed.
    #[error("response body: {0}")]
    Stream(#[from] wasmtime_wasi_http::Error),
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
            DataBody::Guest(body) => body.in_flight.is_none(),
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
    failed: Arc<AtomicBool>,
    in_flight: Option<InFlight>,
    guest: AbortHandle,
    /// Bytes the guest may still send before the route's response limit cuts it off.
    left: u64,
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
        failed: Arc<AtomicBool>,
        in_flight: InFlight,
        guest: AbortHandle,
        trace: Trace,
    ) -> Self {
        let limit = in_flight.version().limits.max_response_body;
        Self {
            inner,
            failed,
            in_flight: Some(in_flight),
            guest,
            left: if limit > 0 { limit } else { u64::MAX },
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
        if this.in_flight.is_none() {
            return Poll::Ready(None);
        }
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match frame {
            Some(Ok(frame)) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if len > this.left {
                    if let Some(token) = this.in_flight.take() {
                        let version = token.version();
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
            Some(Err(error)) => {
                this.in_flight = None;
                Poll::Ready(Some(Err(BodyError::Stream(error))))
            }
            None => {
                let in_flight = this.in_flight.take();
                if this.failed.load(Ordering::Acquire) {
                    if let Some(token) = in_flight {
                        let version = token.version();
                        tracing::debug!(
                            route = %version.route, version = %version.short,
                            "the guest failed after the response head; ending the body with an error"
                        );
                    }
                    Poll::Ready(Some(Err(BodyError::GuestFailed)))
                } else {
                    Poll::Ready(None)
                }
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for GuestBody {
    fn drop(&mut self) {
        if self.in_flight.is_some() {
            // The connection let go of the body before its end: the client went away mid-body,
            // or hyper wrote all of a declared Content-Length and never asked for the end. Stop
            // the guest rather than let it run on unseen.
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
