//! How a request that produced no (complete) response is answered and logged: a guest failure
//! is data, a 500, 503 or 504 whose body says nothing internal, with the route, version and
//! request id in the log. What the client or the server's load caused (a request body that
//! never arrived: 408; a full instance pool: 503) is answered the same way but not counted
//! against the version: a client must not be able to fail a rollout's candidate.

use std::time::Instant;

use http::{HeaderValue, Response, StatusCode, header};
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;

use super::body::DataBody;
use crate::problem::RequestId;
use crate::version::Version;

/// Why a guest produced no (complete) response.
#[derive(Debug, thiserror::Error)]
pub(super) enum GuestError {
    /// It ran past its deadline.
    #[error("the guest ran past its deadline")]
    Timeout,
    /// Its deadline passed while it waited for the rest of the request body, which the client
    /// had not sent.
    #[error("the client did not send the request body within the deadline")]
    BodyStalled,
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
    /// A WASI 0.3 guest returned an error code instead of a response.
    #[error("the guest answered with error code {0}")]
    Answered(String),
    /// Something failed in the host.
    #[error("host failure: {0}")]
    Host(String),
}

impl GuestError {
    pub(super) fn classify(error: wasmtime::Error) -> Self {
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

    /// Whether the client or the server's load caused it, rather than the version: such a
    /// request does not count against the version (its failures, its rollout gates).
    pub(super) fn excused(&self) -> bool {
        matches!(self, Self::BodyStalled | Self::Overloaded)
    }

    pub(super) fn status(&self) -> StatusCode {
        match self {
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::BodyStalled => StatusCode::REQUEST_TIMEOUT,
            Self::Overloaded | Self::CutOff => StatusCode::SERVICE_UNAVAILABLE,
            Self::Trap(_)
            | Self::NoResponse
            | Self::ErrorCode(_)
            | Self::Answered(_)
            | Self::Host(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub(super) fn public_detail(&self) -> &'static str {
        match self {
            Self::Timeout => "the handler did not finish within its deadline",
            Self::BodyStalled => "the request body did not arrive within the route's deadline",
            Self::Overloaded => "the server is at its instance limit; retry shortly",
            Self::CutOff => "the handler's version was retired and its drain deadline passed",
            Self::Trap(_)
            | Self::NoResponse
            | Self::ErrorCode(_)
            | Self::Answered(_)
            | Self::Host(_) => "the handler failed; the server log has the details",
        }
    }
}

/// Counts and logs a failed request, with its route, version and request id, and the panic
/// message the guest printed before it trapped, if it did (one line). (A request the client or
/// the server's load failed is logged, not counted.)
pub(super) fn report(version: &Version, error: &GuestError, id: u64, panic: Option<&str>) {
    if error.excused() {
        tracing::info!(
            request_id = %RequestId(id), route = %version.route, version = %version.short,
            error = %error, "request not served"
        );
        return;
    }
    version.record_failure();
    if let GuestError::Host(_) = error {
        tracing::error!(
            request_id = %RequestId(id), route = %version.route, version = %version.short,
            error = %error, "request failed in the host"
        );
    } else {
        tracing::warn!(
            request_id = %RequestId(id), route = %version.route, version = %version.short,
            panic, error = %error, "guest failed"
        );
    }
}

/// The answer to a request on `version` that failed with `error`, counted in its statistics.
pub(super) fn failure_response(
    version: &Version,
    error: &GuestError,
    id: u64,
    started: Instant,
) -> Response<DataBody> {
    let status = error.status();
    if error.excused() {
        version.stats.record_excused(status.as_u16());
    } else {
        version
            .stats
            .record(status.as_u16(), started.elapsed(), true);
    }
    let mut response = failure(status, error.public_detail(), id);
    // What the span of a traced request says (never the client: it may be internal).
    response.extensions_mut().insert(Reason(error.to_string()));
    if matches!(error, GuestError::Overloaded) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// A problem document from the data plane. Only used off the success path.
pub(super) fn failure(status: StatusCode, detail: &str, id: u64) -> Response<DataBody> {
    let mut response = crate::problem::Problem::new(status, detail)
        .for_request(id)
        .response();
    if status.is_server_error() {
        response.extensions_mut().insert(Reason(detail.to_owned()));
    }
    response
}

/// Why the host answered a request with a 5xx, for the request's span (a response extension,
/// taken off before the response goes out).
#[derive(Debug, Clone)]
pub(super) struct Reason(pub(super) String);

/// The 413 for a request body over the route's limit.
pub(super) fn body_too_large(version: &Version, id: u64, started: Instant) -> Response<DataBody> {
    let limit = version.limits.max_request_body;
    version.stats.record(
        StatusCode::PAYLOAD_TOO_LARGE.as_u16(),
        started.elapsed(),
        false,
    );
    tracing::warn!(request_id = %RequestId(id), route = %version.route, limit, "request body over the route's limit");
    failure(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the request body is larger than this route's limit of {limit} bytes"),
        id,
    )
}
