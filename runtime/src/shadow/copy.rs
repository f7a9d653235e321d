//! Running a copy of a request on a version, for comparing: the request's head and its buffered
//! body go to a fresh instance under the version's deadline, with outbound HTTP denied unless
//! the shadow allows it; the
//! response is read to its end (hashed, never kept) into a [`Summary`].

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;
use http::header::HeaderName;
use http_body_util::{BodyExt, Full};
use sha2::{Digest as _, Sha256};
use tokio::sync::oneshot;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

use crate::engine::{Pre, Wasi};
use crate::host::Host;
use crate::version::Version;

/// Body bytes kept from each side of a sample.
pub const START_BYTES: usize = 64;
/// What a response was, for comparing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Its status.
    pub status: u16,
    /// The compared headers' values (`None`: absent), in the shadow's order.
    pub headers: Vec<Option<String>>,
    /// Body size.
    pub size: u64,
    /// sha256 of the body.
    pub digest: [u8; 32],
    /// The body's first [`START_BYTES`].
    pub start: Vec<u8>,
    /// Whether the guest tried an outbound HTTP call that was denied (a copy's).
    pub outbound_denied: bool,
}

/// A request, buffered so it can be sent again.
#[derive(Debug, Clone)]
pub struct Copy {
    /// Its method.
    pub method: http::Method,
    /// Its URI.
    pub uri: http::Uri,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its whole body.
    pub body: Bytes,
    /// Whether it arrived over TLS.
    pub https: bool,
}

/// Summarizes a response head and body chunks as they pass: what [`Summary`] needs, without
/// keeping the body.
#[derive(Debug)]
pub struct Tap {
    status: u16,
    headers: Vec<Option<String>>,
    hasher: Sha256,
    size: u64,
    start: Vec<u8>,
}

impl Tap {
    /// A tap for a response with `status` and `headers`, comparing the headers `compared`.
    pub fn new(status: u16, headers: &HeaderMap, compared: &[HeaderName]) -> Self {
        Self {
            status,
            headers: compared
                .iter()
                .map(|name| {
                    headers
                        .get(name)
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                })
                .collect(),
            hasher: Sha256::new(),
            size: 0,
            start: Vec::new(),
        }
    }

    /// Counts `chunk` of the body.
    pub fn chunk(&mut self, chunk: &[u8]) {
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        let room = START_BYTES.saturating_sub(self.start.len());
        self.start
            .extend_from_slice(&chunk[..chunk.len().min(room)]);
    }

    /// The summary of what passed.
    pub fn finish(self) -> Summary {
        Summary {
            status: self.status,
            headers: self.headers,
            size: self.size,
            digest: self.hasher.finalize().into(),
            start: self.start,
            outbound_denied: false,
        }
    }
}

/// Runs `request` on `version` (through a route at `prefix`) and summarizes its response;
/// `None` if the guest failed to answer in full within its deadline. With `deny_outbound`,
/// every outbound HTTP call the guest makes fails (and the summary says it tried).
pub async fn run(
    engine: &crate::engine::Engine,
    version: &Arc<Version>,
    prefix: &Arc<str>,
    request: &Copy,
    compared: &[HeaderName],
    deny_outbound: bool,
) -> Option<Summary> {
    let deadline = Instant::now() + version.limits.request_timeout;
    let pre = match &version.pre {
        Pre::P2(pre) => pre.clone(),
        Pre::P3(pre) => {
            return run_p3(
                engine,
                version,
                pre,
                prefix,
                request,
                compared,
                deny_outbound,
            )
            .await;
        }
    };
    let mut store = Host::store(engine.wasmtime(), &version.guest, prefix, deadline);
    let tried = deny_outbound.then(|| store.data_mut().deny_outbound());
    store.data_mut().kv_scratch();
    let mut builder = http::Request::builder()
        .method(request.method.clone())
        .uri(request.uri.clone());
    if let Some(headers) = builder.headers_mut() {
        headers.clone_from(&request.headers);
    }
    let body = Full::new(request.body.clone())
        .map_err(|never: std::convert::Infallible| -> wasmtime_wasi_http::Error { match never {} });
    let head = builder.body(body).ok()?;
    let scheme = if request.https {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let incoming = store
        .data_mut()
        .http()
        .new_incoming_request(scheme, head)
        .ok()?;
    let (tx, rx) = oneshot::channel();
    let out = store.data_mut().http().new_response_outparam(tx).ok()?;
    let call = tokio::spawn(async move {
        let proxy = pre.instantiate_async(&mut store).await?;
        proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut store, incoming, out)
            .await?;
        // The store (and the body the guest wrote) lives until the guest returns.
        Ok::<_, wasmtime::Error>(store)
    });
    let abort = call.abort_handle();
    let summarize = async { tapped(rx.await.ok()?.ok()?, compared).await };
    let summary = tokio::time::timeout_at(deadline.into(), summarize)
        .await
        .ok()
        .flatten();
    abort.abort();
    let _ = call.await;
    summary.map(|summary| Summary {
        outbound_denied: tried.is_some_and(|t| t.load(std::sync::atomic::Ordering::Relaxed)),
        ..summary
    })
}

/// [`run`] for a WASI 0.3 version: a fresh instance of `pre` of its own, with the same rules.
async fn run_p3(
    engine: &crate::engine::Engine,
    version: &Arc<Version>,
    pre: &Arc<wasmtime_wasi_http::p3::bindings::ServicePre<Host>>,
    prefix: &Arc<str>,
    request: &Copy,
    compared: &[HeaderName],
    deny_outbound: bool,
) -> Option<Summary> {
    let deadline = Instant::now() + version.limits.request_timeout;
    let tried = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let service = crate::service::Service::for_copies(
        engine.wasmtime_for(Wasi::P3),
        pre.clone(),
        version.guest.clone(),
        version.limits.request_timeout,
        deny_outbound.then(|| tried.clone()),
    );
    let authority = request
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            request
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "localhost".into());
    let uri = http::Uri::builder()
        .scheme(if request.https { "https" } else { "http" })
        .authority(authority)
        .path_and_query(
            request
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned(),
        )
        .build()
        .ok()?;
    let mut builder = http::Request::builder()
        .method(request.method.clone())
        .uri(uri);
    if let Some(headers) = builder.headers_mut() {
        headers.clone_from(&request.headers);
    }
    let body = Full::new(request.body.clone())
        .map_err(|never: std::convert::Infallible| -> wasmtime_wasi_http::Error { match never {} })
        .boxed_unsync();
    let head = builder.body(body).ok()?;
    let call = crate::service::Call::new(prefix.clone(), deadline, 0);
    let summarize = async { tapped(service.handle(call, head).await.ok()?, compared).await };
    let summary = tokio::time::timeout_at(deadline.into(), summarize)
        .await
        .ok()
        .flatten();
    summary.map(|summary| Summary {
        outbound_denied: deny_outbound && tried.load(std::sync::atomic::Ordering::Relaxed),
        ..summary
    })
}

/// What a copy answered: `response` read to its end through a [`Tap`] (`None` if its body
/// failed).
async fn tapped<B>(response: http::Response<B>, compared: &[HeaderName]) -> Option<Summary>
where
    B: http_body::Body<Data = bytes::Bytes>,
{
    let mut tap = Tap::new(response.status().as_u16(), response.headers(), compared);
    let mut body = std::pin::pin!(response.into_body());
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.ok()?.data_ref() {
            tap.chunk(data);
        }
    }
    Some(tap.finish())
}
