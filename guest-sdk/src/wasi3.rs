//! The WASI 0.3 glue (compiled for wasm32 only): what [`export!`](crate::export)`(async ..)`
//! exports as `wasi:http/handler@0.3`. It converts the request into a [`Request`] whose body
//! streams in as the handler awaits it, awaits the handler, and returns the [`Response`]; its
//! body is sent by a task of its own, chunk by chunk, after the status and headers are out.

use std::future::Future;
use std::time::Duration;

use http::HeaderValue;
use http::header;
use wasip3::http::types::{self, ErrorCode};
use wasip3::http_compat::{http_from_wasi_request, http_into_wasi_response};

use crate::log::{self, Level};
use crate::{Body, Request, Response, Result};

/// Waits on the monotonic clock without blocking the instance.
pub(crate) async fn sleep(duration: Duration) {
    let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    wasip3::clocks::monotonic_clock::wait_for(nanos).await;
}

/// Serves one request with `handler`; what [`export!`](crate::export)`(async ..)` calls.
pub async fn serve<F, Fut>(
    request: types::Request,
    handler: F,
) -> Result<types::Response, ErrorCode>
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Result<Response>>,
{
    let request = http_from_wasi_request(request)?;
    let (parts, body) = request.into_parts();
    let request = Request::from_parts(parts, Body::from_http_body(body));
    let label = format!("{} {}", request.method(), request.uri().path());
    let mut response = handler(request).await.unwrap_or_else(|error| {
        if error.status().is_server_error() {
            log::write(Level::Error, format_args!("{label}: {error:#}"));
        } else {
            log::write(
                Level::Debug,
                format_args!("{label}: {}: {error:#}", error.status()),
            );
        }
        error.into_response()
    });
    if let Some(len) = response.body().exact_len()
        && crate::wasi::allows_body(response.status())
        && !response.headers().contains_key(header::CONTENT_LENGTH)
    {
        // A known length lets the host send a plain body instead of a chunked one.
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    http_into_wasi_response(response)
}
