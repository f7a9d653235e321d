//! The bodies of the data plane: a request body capped at the route's limit ([`CappedBody`]),
//! and the response bodies ([`DataBody`]): a guest's streaming body that carries the request's
//! in-flight token to its end ([`GuestBody`]), or a small body the host wrote itself.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::overdue::Registration;
use crate::route::InFlight;
use crate::service::Taken;
use crate::shadow::copy::{Summary, Tap};

/// What the parts of one request share: its in-flight token, held until the response body has
/// ended (or the client has gone away) and the guest's task has ended; and whether the request
/// body went over the route's limit.
pub(crate) struct Shared {
    /// The request's hold on its version and its route's concurrency slot.
    pub in_flight: InFlight,
    /// Whether the request body went over the route's limit.
    pub body_over_limit: AtomicBool,
    /// Whether the request body is unfinished and the host is waiting for the client's next
    /// bytes: a deadline that passes then is the client's doing, not the version's.
    pub body_waiting: AtomicBool,
    /// Whether the request ran out of time waiting on the client (its request body): its
    /// outcome does not count against its version.
    pub client_stalled: AtomicBool,
}

impl Shared {
    /// The state of a request holding `in_flight`.
    pub(crate) fn new(in_flight: InFlight) -> Self {
        Self {
            in_flight,
            body_over_limit: AtomicBool::new(false),
            body_waiting: AtomicBool::new(false),
            client_stalled: AtomicBool::new(false),
        }
    }
}

/// A request body that fails (as the guest sees it) once it exceeds the route's limit, and
/// says so to the request, which answers 413 if that happens before the response head. The
/// declared-length check before instantiation catches most oversize bodies earlier.
pub struct CappedBody<B> {
    inner: B,
    left: u64,
    shared: Weak<Shared>,
    /// Whether the last poll found no frame ready (mirrored in `shared.body_waiting`).
    waiting: bool,
}

impl<B> CappedBody<B> {
    /// `inner`, capped at `limit` bytes (0: no limit), telling `shared` when it goes over.
    pub(crate) fn new(inner: B, limit: u64, shared: &Arc<Shared>) -> Self {
        Self {
            inner,
            left: if limit > 0 { limit } else { u64::MAX },
            shared: Arc::downgrade(shared),
            waiting: false,
        }
    }
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
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if polled.is_pending() != this.waiting {
            this.waiting = polled.is_pending();
            if let Some(shared) = this.shared.upgrade() {
                shared.body_waiting.store(this.waiting, Ordering::Relaxed);
            }
        }
        match ready!(polled) {
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
    /// A guest's streaming body whose request is traced: its span ends with it.
    Traced(Box<(GuestBody, crate::trace::Server)>),
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
            DataBody::Traced(traced) => {
                let (body, span) = &mut **traced;
                let polled = Pin::new(body).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => span.end(),
                    Poll::Ready(Some(Err(error))) => {
                        span.fail(&error.to_string());
                        span.end();
                    }
                    _ => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            DataBody::Guest(body) => body.shared.is_none(),
            DataBody::Fixed(bytes) => bytes.is_none(),
            DataBody::Traced(traced) => traced.0.shared.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            DataBody::Guest(body) => body.inner.size_hint(),
            DataBody::Traced(traced) => traced.0.inner.size_hint(),
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
    /// Who still works on the body.
    guest: Guest,
    /// Bytes the guest may still send before the route's response limit cuts it off.
    left: u64,
    /// Body bytes after which the response is complete on the wire without an end from the
    /// body (a declared Content-Length; 0 for HEAD, 204 and 304): hyper may drop the body
    /// there without polling its end.
    complete_at: Option<u64>,
    trace: Trace,
    /// For a request copied to the route's shadow: what the client's response was, sent when
    /// it is complete. Boxed: only shadowed requests carry one.
    tap: Option<Box<(Tap, oneshot::Sender<Summary>)>>,
    /// The body's deadline, watched by the task that sends it (see [`super::overdue`]).
    overdue: Option<Registration>,
    /// The request's deadline.
    deadline: Instant,
}

/// Who works on a guest's response body once its head is out.
pub(super) enum Guest {
    /// A WASI 0.2 guest's task, if it was still running when the head went out: stopped when
    /// the client leaves mid-body.
    P2(Option<AbortHandle>),
    /// The WASI 0.3 instance that took the request: a body it ends after it was dropped was
    /// cut, not finished.
    P3(Arc<OnceLock<Taken>>),
}

impl Guest {
    /// Stops the guest's work on the body (a 0.3 instance's ends with the instance).
    fn abort(&self) {
        if let Guest::P2(Some(task)) = self {
            task.abort();
        }
    }

    /// Whether a body that ends now was cut rather than finished by the guest.
    fn cut(&self) -> bool {
        match self {
            Guest::P2(_) => false,
            Guest::P3(taken) => taken.get().is_some_and(Taken::cut),
        }
    }
}

/// The request's span and start, for the `request finished` event when its body ends.
pub(super) struct Trace {
    /// The request's span.
    pub(super) span: tracing::Span,
    /// When the request started.
    pub(super) started: Instant,
    /// Body bytes handed to the connection.
    pub(super) sent: u64,
    /// The response's status.
    pub(super) status: u16,
}

impl GuestBody {
    pub(super) fn new(
        inner: HyperOutgoingBody,
        shared: Arc<Shared>,
        guest: Guest,
        complete_at: Option<u64>,
        trace: Trace,
        tap: Option<Box<(Tap, oneshot::Sender<Summary>)>>,
        deadline: Instant,
    ) -> Self {
        let version = shared.in_flight.version();
        let limit = version.limits.max_response_body;
        let overdue = super::overdue::register(deadline, version);
        Self {
            inner,
            shared: Some(shared),
            guest,
            left: if limit > 0 { limit } else { u64::MAX },
            complete_at,
            trace,
            tap,
            overdue,
            deadline,
        }
    }
}

impl GuestBody {
    /// Ends the body's hold on the request, counting the request in its version's statistics
    /// (`failed`: the body ended with an error; `unfinished`: it was let go of before its end).
    /// Returns the shared state it held, if any.
    fn finish(&mut self, failed: bool, unfinished: bool) -> Option<Arc<Shared>> {
        let shared = self.shared.take()?;
        let overdue = self.overdue.take().is_some_and(|r| r.expired());
        let complete =
            !failed && !overdue && self.complete_at.is_none_or(|at| at == self.trace.sent);
        if let Some(tap) = self.tap.take()
            && complete
        {
            let (tap, summary) = *tap;
            let _ = summary.send(tap.finish());
        }
        let version = shared.in_flight.version();
        if overdue {
            // The client did not take its response by the deadline: not the version's doing,
            // and its time says nothing about the version's latency.
            tracing::info!(
                parent: &self.trace.span,
                route = %version.route, version = %version.short,
                body_bytes = self.trace.sent,
                "the client did not read its response body by the request's deadline; reset"
            );
            version.stats.record_excused(self.trace.status);
        } else if (failed || unfinished)
            && (shared.client_stalled.load(Ordering::Relaxed)
                || (shared.body_waiting.load(Ordering::Relaxed) && Instant::now() >= self.deadline))
        {
            // The guest ran out of time waiting for the client's request body (a 0.3 guest's
            // body, sent after its head, ends at the deadline: its instance expired it, or the
            // task sending it was dropped).
            version.stats.record_excused(self.trace.status);
        } else {
            let elapsed = self.trace.started.elapsed();
            version.stats.record(self.trace.status, elapsed, failed);
        }
        Some(shared)
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
                    if let Some(shared) = this.finish(true, false) {
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
                if let (Some(tap), Some(data)) = (&mut this.tap, frame.data_ref()) {
                    tap.0.chunk(data);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            // The guest did not finish the body (see `abort_unfinished_bodies`); the guest's
            // task has logged why.
            Some(Err(_)) => {
                this.finish(true, false);
                Poll::Ready(Some(Err(BodyError::GuestFailed)))
            }
            // A 0.3 body whose instance was dropped (a trap, a timeout, a cut-off) ends as if
            // finished: it was cut, and the client must not take it for whole.
            None if this.guest.cut() => {
                this.finish(true, false);
                Poll::Ready(Some(Err(BodyError::GuestFailed)))
            }
            // The guest finished the body: it stands, whatever the guest does afterwards.
            None => {
                this.finish(false, false);
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
        let unfinished = self.shared.is_some() && self.complete_at != Some(self.trace.sent);
        if unfinished {
            // The connection let go of the body before its end: the client went away mid-body.
            // Stop the guest rather than let it run on unseen. (A body dropped once its declared
            // length is out is complete: its guest may finish its work, under its deadline.)
            self.guest.abort();
        }
        self.finish(false, unfinished);
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
