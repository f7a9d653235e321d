//! The only module that touches WASI (compiled for wasm32 only): it converts the `wasi:http`
//! request into a [`Request`], calls the handler, and sends the [`Response`], status and
//! headers first, then the body chunk by chunk. It never decides what a response says: error
//! rendering is [`Error::into_response`]'s, body production is [`Body`]'s.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method as WasiMethod, OutgoingBody, OutgoingResponse,
    ResponseOutparam, Scheme,
};
use wasip2::io::streams::{InputStream, StreamError};

use crate::body::SendError;
use crate::log::{self, Level};
use crate::{Body, Error, Request, Response, Result};

/// The most bytes one read of the request body asks for.
const READ_CHUNK: u64 = 64 << 10;

/// Blocks on a monotonic-clock pollable: the guest waits in the host, using no CPU time.
pub(crate) fn sleep(duration: Duration) {
    let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    wasip2::clocks::monotonic_clock::subscribe_duration(nanos).block();
}

/// Serves one request with `handler`; what [`export!`](crate::export) calls.
pub fn serve(
    incoming: IncomingRequest,
    out: ResponseOutparam,
    handler: fn(Request) -> Result<Response>,
) {
    let request = match convert(incoming) {
        Ok(request) => request,
        Err(error) => return send(error.into_response(), out, "request"),
    };
    let label = format!("{} {}", request.method(), request.uri().path());
    let response = handler(request).unwrap_or_else(|error| {
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
    send(response, out, &label);
}

/// The `wasi:http` request as an [`http::Request`] whose body is read lazily.
fn convert(incoming: IncomingRequest) -> Result<Request> {
    let method = match incoming.method() {
        WasiMethod::Get => Method::GET,
        WasiMethod::Head => Method::HEAD,
        WasiMethod::Post => Method::POST,
        WasiMethod::Put => Method::PUT,
        WasiMethod::Delete => Method::DELETE,
        WasiMethod::Connect => Method::CONNECT,
        WasiMethod::Options => Method::OPTIONS,
        WasiMethod::Trace => Method::TRACE,
        WasiMethod::Patch => Method::PATCH,
        WasiMethod::Other(other) => Method::from_bytes(other.as_bytes())
            .map_err(|_| Error::bad_request(format!("`{other}` is not a valid method")))?,
    };
    let path = incoming.path_with_query().unwrap_or_else(|| "/".to_owned());
    let absolute = match (incoming.scheme(), incoming.authority()) {
        (Some(scheme), Some(authority)) => {
            let scheme = match scheme {
                Scheme::Http => "http".to_owned(),
                Scheme::Https => "https".to_owned(),
                Scheme::Other(other) => other,
            };
            format!("{scheme}://{authority}{path}").parse().ok()
        }
        _ => None,
    };
    let uri = match absolute {
        Some(uri) => uri,
        None => path
            .parse()
            .map_err(|_| Error::bad_request("the request target is not a valid URI"))?,
    };

    let fields = incoming.headers();
    let entries = fields.entries();
    drop(fields);
    let mut headers = HeaderMap::with_capacity(entries.len());
    for (name, value) in entries {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            headers.append(name, value);
        }
    }

    let body = match incoming.consume() {
        Ok(body) => match body.stream() {
            Ok(stream) => Body::try_stream(IncomingChunks {
                stream: Some(stream),
                body: Some(body),
                _request: incoming,
            }),
            Err(()) => Body::empty(),
        },
        Err(()) => Body::empty(),
    };

    let mut request = http::Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Ok(request)
}

/// The request body as it arrives, one read at a time.
struct IncomingChunks {
    // Fields drop in order: the stream is a child of the body and must go first.
    stream: Option<InputStream>,
    body: Option<IncomingBody>,
    _request: IncomingRequest,
}

impl IncomingChunks {
    fn finish(&mut self) {
        self.stream = None;
        if let Some(body) = self.body.take() {
            drop(IncomingBody::finish(body));
        }
    }
}

impl Iterator for IncomingChunks {
    type Item = Result<Bytes>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.stream.as_ref()?.blocking_read(READ_CHUNK) {
                Ok(chunk) if chunk.is_empty() => continue,
                Ok(chunk) => return Some(Ok(chunk.into())),
                Err(StreamError::Closed) => {
                    self.finish();
                    return None;
                }
                Err(StreamError::LastOperationFailed(error)) => {
                    self.finish();
                    return Some(Err(Error::msg(format!(
                        "reading the request body failed: {}",
                        error.to_debug_string()
                    ))));
                }
            }
        }
    }
}

/// Sends `response`: status and headers, then the body. A body that fails part-way is
/// aborted (not finished), so the client sees a broken response rather than a short one.
fn send(response: Response, out: ResponseOutparam, label: &str) {
    let (parts, body) = response.into_parts();
    let fields = Fields::new();
    for (name, value) in &parts.headers {
        if let Err(error) = fields.append(name.as_str(), value.as_bytes()) {
            log::write(
                Level::Warn,
                format_args!("{label}: the host refused response header `{name}`: {error:?}"),
            );
        }
    }
    if let Some(len) = body.exact_len()
        && allows_body(parts.status)
        && !parts.headers.contains_key(header::CONTENT_LENGTH)
    {
        // A known length lets the host send a plain body instead of a chunked one.
        let _ = fields.append(header::CONTENT_LENGTH.as_str(), len.to_string().as_bytes());
    }

    let outgoing = OutgoingResponse::new(fields);
    // `http::StatusCode` is always in 100..=999; the host rejects nothing a client could parse.
    let _ = outgoing.set_status_code(parts.status.as_u16());
    let outgoing_body = outgoing
        .body()
        .expect("a new outgoing response yields its body once");
    ResponseOutparam::set(out, Ok(outgoing));

    let mut stream = outgoing_body
        .write()
        .expect("a new outgoing body yields its stream once");
    let result = body.write_to(&mut stream);
    drop(stream);
    match result {
        Ok(()) => {
            if let Err(error) = OutgoingBody::finish(outgoing_body, None) {
                log::write(
                    Level::Warn,
                    format_args!("{label}: finishing the response body failed: {error:?}"),
                );
            }
        }
        Err(SendError::Write(error)) => {
            log::write(
                Level::Debug,
                format_args!("{label}: the client went away mid-body: {error}"),
            );
        }
        Err(SendError::Produce(error)) => {
            log::write(
                Level::Error,
                format_args!(
                    "{label}: the response body failed after the status was sent: {error:#}"
                ),
            );
        }
    }
}

/// Whether a response with `status` may carry a body (and so a `content-length`).
pub(crate) fn allows_body(status: StatusCode) -> bool {
    !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}
