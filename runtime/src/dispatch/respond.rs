//! A guest's response on its way out, for both WASIs: its body wrapped in a [`GuestBody`] that
//! carries the request's in-flight token to its end, with the trace of its request and the tap
//! of the route's shadow copy.

use std::sync::Arc;
use std::time::Instant;

use http::{Response, StatusCode, header};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

pub(super) use super::body::Guest;
use super::body::{DataBody, GuestBody, Shared, Trace};
use super::copies;
use crate::problem::RequestId;
use crate::runtime::Runtime;
use crate::version::Version;

/// The response to a request whose guest answered with `response`: its body streams through a
/// [`GuestBody`] that carries the request's hold on its version (in `shared`) to its end, stops
/// the guest's work (`guest`) if the client leaves or has not read it by the request's
/// `deadline`, and feeds the copy for the route's shadow. A 5xx the guest answered itself gets
/// the request's id (`id`), as in the log line it is reported with.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(super) fn respond(
    rt: &Runtime,
    version: &Arc<Version>,
    prefix: &Arc<str>,
    response: Response<HyperOutgoingBody>,
    shared: Arc<Shared>,
    guest: Guest,
    span: tracing::Span,
    started: Instant,
    head: bool,
    copy: Option<copies::Pending>,
    deadline: Instant,
    id: u64,
) -> Response<DataBody> {
    let mut response = response;
    if response.status().is_server_error() {
        // A failure the guest answered itself: the client and the log get the same id.
        response
            .headers_mut()
            .insert("x-request-id", RequestId(id).header());
        tracing::warn!(
            request_id = %RequestId(id), route = %version.route, version = %version.short,
            status = response.status().as_u16(), "the guest answered with a server error"
        );
    }
    span.record("status", response.status().as_u16());
    let trace = Trace {
        span,
        started,
        sent: 0,
        status: response.status().as_u16(),
    };
    // Where hyper may stop without polling the body's end: after a declared length, and at
    // once for a response that has no body on the wire.
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
    let tap = copy
        .map(|copy| Box::new(copy.start(&rt.engine, version, prefix, status, response.headers())));
    response.map(|body| {
        DataBody::Guest(GuestBody::new(
            body,
            shared,
            guest,
            complete_at,
            trace,
            tap,
            deadline,
        ))
    })
}
