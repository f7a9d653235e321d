//! The request path of a WASI 0.3 version, beside the 0.2 one (`super::dispatch`): the request
//! goes to the version's [`Service`] (an instance that can take it, else a new one), and its
//! response body streams through the same [`GuestBody`] as a 0.2 guest's, carrying the
//! request's in-flight token to its end.
//!
//! What differs from 0.2: the guest's work runs in its instance's worker task, not the
//! request's. A client that leaves before the response head expires its request as a deadline
//! does (`Call::left`): an instance that served only that request is dropped at once, its work
//! with it; a shared one takes no new requests and is dropped once its other requests have
//! ended, or a request timeout after the latest started (`crate::service`). A deadline that
//! passes answers 504 at once (408 while the guest waits on the client's unfinished request
//! body, which does not count against the version), with the same consequences for the
//! instance.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use http::{Request, Response, StatusCode, Uri, header};
use http_body::Body;
use http_body_util::BodyExt;

use super::body::{DataBody, Shared};
use super::copies::Pending;
use super::failure::{GuestError, body_too_large, failure, failure_response, report};
use crate::problem::RequestId;
use crate::runtime::Runtime;
use crate::service::{
    Call, ExpirationError, InstantiationError, LeaveOnDrop, Left, Service, TrapOrPanicError,
};
use crate::version::Version;

/// Serves one request on the 0.3 `version` (whose [`Service`] is `service`), routed by
/// `prefix`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn serve<B>(
    rt: &Runtime,
    version: Arc<Version>,
    prefix: Arc<str>,
    req: Request<B>,
    https: bool,
    shared: Arc<Shared>,
    copy: Option<Pending>,
    span: tracing::Span,
    trace: Option<crate::trace::Scope>,
    id: u64,
    started: Instant,
    deadline: Instant,
) -> Response<DataBody>
where
    B: Body<Data = bytes::Bytes, Error = wasmtime_wasi_http::Error> + Send + 'static,
{
    let service: &Service = version
        .service
        .as_ref()
        .expect("a WASI 0.3 version has a service");
    let head = req.method() == http::Method::HEAD;
    let Some(req) = absolute(req, https) else {
        tracing::debug!(request_id = %RequestId(id), route = %version.route, "bad request: no Host header");
        version.stats.record(400, started.elapsed(), false);
        return failure(
            StatusCode::BAD_REQUEST,
            "the request is malformed (a Host header is required)",
            id,
        );
    };
    let req = req.map(|body| body.boxed_unsync());
    // Dropped with this future when the client leaves before the head: the request expires.
    let left = Arc::new(Left::default());
    let leaving = LeaveOnDrop::new(left.clone());
    let mut call = Call::new(prefix.clone(), deadline, id);
    call.left = Some(left);
    call.trace = trace;
    let taken = call.taken.clone();
    let answered = tokio::select! {
        biased;
        answered = service.handle(call, req) => answered.map_err(|error| classify(error, deadline)),
        _ = version.cut_off() => Err(GuestError::CutOff),
    };
    leaving.disarm();
    // A deadline that passed while the guest waited on the client's unfinished request body
    // is the client's doing (408), not the version's, as on the 0.2 path.
    let answered = answered.map_err(|error| match error {
        GuestError::Timeout if shared.body_waiting.load(Ordering::Relaxed) => {
            shared.client_stalled.store(true, Ordering::Relaxed);
            GuestError::BodyStalled
        }
        error => error,
    });
    // The request body went over the route's limit before the response head: whatever the
    // guest made of that, the answer is 413.
    if shared.body_over_limit.load(Ordering::Acquire) {
        return body_too_large(&version, id, started);
    }
    match answered {
        Ok(response) => super::respond::respond(
            rt,
            &version,
            &prefix,
            response,
            shared,
            super::respond::Guest::P3(taken),
            span,
            started,
            head,
            copy,
            deadline,
            id,
        ),
        Err(error) => {
            // A panic the guest printed for this request goes into its failure's one line.
            let panic = taken.get().and_then(|taken| taken.log().take_panic_of(id));
            report(&version, &error, id, panic.as_deref());
            failure_response(&version, &error, id, started)
        }
    }
}

/// `req` with an absolute URI, as a 0.3 guest sees its request: the scheme it arrived by and
/// the authority of its `Host` header (HTTP/1) or its URI (HTTP/2). `None` without either.
fn absolute<B>(req: Request<B>, https: bool) -> Option<Request<B>> {
    let (mut parts, body) = req.into_parts();
    let authority = match parts.uri.authority() {
        Some(authority) => authority.clone(),
        None => parts
            .headers
            .get(header::HOST)?
            .to_str()
            .ok()?
            .parse()
            .ok()?,
    };
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.scheme = Some(if https {
        http::uri::Scheme::HTTPS
    } else {
        http::uri::Scheme::HTTP
    });
    uri.authority = Some(authority);
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    parts.uri = Uri::from_parts(uri).ok()?;
    Some(Request::from_parts(parts, body))
}

/// What a 0.3 call's error means for its request, whose deadline is `deadline`.
fn classify(error: wasmtime::Error, deadline: Instant) -> GuestError {
    if error.is::<ExpirationError>() {
        return GuestError::Timeout;
    }
    // An instance dropped by its backstop (`service::Expiry`) when this request had run out
    // of time: a guest that never yielded cannot see its own deadline pass.
    if Instant::now() >= deadline {
        return GuestError::Timeout;
    }
    if error.is::<TrapOrPanicError>() {
        return GuestError::Trap(
            "its instance was dropped: a request it served at the same time trapped, or it ran out of time".into(),
        );
    }
    if let Some(failed) = error.downcast_ref::<InstantiationError<Call>>() {
        if failed.error.is::<wasmtime::PoolConcurrencyLimitError>() {
            return GuestError::Overloaded;
        }
        return GuestError::Trap(format!("instantiating it failed: {:#}", failed.error));
    }
    if let Some(code) =
        error.downcast_ref::<wasmtime_wasi_http::p3::bindings::http::types::ErrorCode>()
    {
        return GuestError::Answered(format!("{code:?}"));
    }
    GuestError::classify(error)
}
