//! A small OpenTelemetry collector for tests: it takes OTLP/HTTP (`POST /v1/traces`,
//! protobuf) or OTLP/gRPC (the `TraceService` server the OpenTelemetry project generates) on
//! loopback, decodes each `ExportTraceServiceRequest` with the project's own definitions
//! (`opentelemetry-proto`), and keeps the spans for checks; the bench's receiver only counts
//! them, on the wire ([`count_spans`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use tokio::sync::watch;

/// `SpanKind` numbers of the protocol.
pub const SERVER: i32 = 2;
/// A client span.
pub const CLIENT: i32 = 3;
/// An internal span.
pub const INTERNAL: i32 = 1;
/// `Status.code` of an error.
pub const ERROR: i32 = 2;

/// One span as received, ids in hex.
#[derive(Debug, Clone)]
pub struct Span {
    /// The resource's `service.name`.
    pub service: String,
    /// The resource's attributes.
    pub resource: HashMap<String, String>,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// The span's name.
    pub name: String,
    /// [`SERVER`], [`CLIENT`], [`INTERNAL`]...
    pub kind: i32,
    /// Attribute values as text (numbers and booleans written out).
    pub attributes: HashMap<String, String>,
    /// Events: name and attributes.
    pub events: Vec<(String, HashMap<String, String>)>,
    /// Links: trace and span ids.
    pub links: Vec<(String, String)>,
    /// 0 unset, 1 ok, [`ERROR`].
    pub status_code: i32,
    /// The status's description.
    pub status_message: String,
    /// Start and end, nanoseconds since the Unix epoch.
    pub start_ns: u64,
    /// End.
    pub end_ns: u64,
}

impl Span {
    /// The value of attribute `key` ("" if it has none).
    pub fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

/// What a receiver keeps: every span (tests), or only their number (the bench, which sends
/// more than memory should hold), and the headers (gRPC metadata) of the last export.
struct Kept {
    keep: bool,
    spans: watch::Sender<Vec<Span>>,
    count: AtomicU64,
    headers: Mutex<http::HeaderMap>,
}

impl Kept {
    /// Keeps a decoded export (a counting receiver never decodes: see [`count_spans`]).
    fn take(&self, headers: http::HeaderMap, request: ExportTraceServiceRequest) {
        *self.headers.lock().unwrap_or_else(|e| e.into_inner()) = headers;
        let received = spans_of(request);
        self.count
            .fetch_add(received.len() as u64, Ordering::Relaxed);
        self.spans.send_modify(|all| all.extend(received));
    }
}

/// A running receiver.
pub struct Receiver {
    /// Where it listens; the traces endpoint is `http://{addr}/v1/traces` (OTLP/HTTP), or
    /// `http://{addr}` (gRPC).
    pub addr: SocketAddr,
    kept: Arc<Kept>,
    spans: watch::Receiver<Vec<Span>>,
}

impl Receiver {
    /// Starts an OTLP/HTTP receiver on a free loopback port, keeping every span.
    pub async fn start() -> Self {
        Self::start_http(true).await
    }

    /// Starts an OTLP/HTTP receiver that only counts the spans it takes ([`Self::count`]).
    pub async fn counting() -> Self {
        Self::start_http(false).await
    }

    async fn start_http(keep: bool) -> Self {
        let (listener, receiver) = Self::bind(keep).await;
        let kept = receiver.kept.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let kept = kept.clone();
                            async move {
                                let path_ok = req.uri().path() == "/v1/traces";
                                let (parts, body) = req.into_parts();
                                let body = body.collect().await.map(|b| b.to_bytes());
                                let body = body.ok().filter(|_| path_ok);
                                let taken = match (kept.keep, body) {
                                    (true, Some(body)) => ExportTraceServiceRequest::decode(body)
                                        .ok()
                                        .map(|request| kept.take(parts.headers, request)),
                                    (false, Some(body)) => count_spans(&body).map(|n| {
                                        kept.count.fetch_add(n, Ordering::Relaxed);
                                    }),
                                    (_, None) => None,
                                };
                                if taken.is_none() {
                                    let mut bad = http::Response::new(Full::new(Bytes::new()));
                                    *bad.status_mut() = http::StatusCode::BAD_REQUEST;
                                    return Ok::<_, Infallible>(bad);
                                }
                                let answer = ExportTraceServiceResponse::default().encode_to_vec();
                                let mut ok = http::Response::new(Full::new(Bytes::from(answer)));
                                ok.headers_mut().insert(
                                    http::header::CONTENT_TYPE,
                                    http::HeaderValue::from_static("application/x-protobuf"),
                                );
                                Ok(ok)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        receiver
    }

    /// Starts an OTLP/gRPC receiver on a free loopback port, keeping every span: the
    /// `TraceService` server of the OpenTelemetry project's generated code (tonic) over
    /// HTTP/2 with prior knowledge.
    pub async fn start_grpc() -> Self {
        let (listener, receiver) = Self::bind(true).await;
        let service = TraceServiceServer::new(Grpc(receiver.kept.clone()));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = hyper_util::service::TowerToHyperService::new(service.clone());
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        receiver
    }

    async fn bind(keep: bool) -> (tokio::net::TcpListener, Self) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let (sender, spans) = watch::channel(Vec::new());
        let kept = Arc::new(Kept {
            keep,
            spans: sender,
            count: AtomicU64::new(0),
            headers: Mutex::new(http::HeaderMap::new()),
        });
        (listener, Self { addr, kept, spans })
    }

    /// The traces endpoint of an OTLP/HTTP receiver (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`).
    pub fn endpoint(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    /// Every span received so far (none for a [counting](Self::counting) receiver).
    pub fn spans(&self) -> Vec<Span> {
        self.spans.borrow().clone()
    }

    /// How many spans were received so far.
    pub fn count(&self) -> u64 {
        self.kept.count.load(Ordering::Relaxed)
    }

    /// The headers (gRPC: the metadata) the last export came with.
    pub fn headers(&self) -> http::HeaderMap {
        self.kept
            .headers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits (at most `limit`) until `found` finds what it looks for among the spans
    /// received; panics with what came otherwise.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        limit: Duration,
        mut found: impl FnMut(&[Span]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + limit;
        let mut spans = self.spans.clone();
        loop {
            if let Some(found) = found(&spans.borrow_and_update()) {
                return found;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, spans.changed()).await.is_err() {
                let names: Vec<String> = self
                    .spans()
                    .iter()
                    .map(|s| format!("{} {:?}", s.name, s.attributes))
                    .collect();
                panic!("no {what} within {limit:?}; spans received: {names:#?}");
            }
        }
    }
}

/// The gRPC `TraceService`.
struct Grpc(Arc<Kept>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        self.0.take(headers, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A collector that accepts connections and never answers: exports to it time out.
pub async fn black_hole() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

/// The number of spans in an encoded `ExportTraceServiceRequest`, counted by walking the
/// protobuf wire format without decoding anything else (`None` if it is malformed): the
/// bench's receiver takes every export this way, so that what tracing costs the traced server
/// is not blurred by a collector decoding on the same cores.
fn count_spans(request: &[u8]) -> Option<u64> {
    // ExportTraceServiceRequest.resource_spans = 1, ResourceSpans.scope_spans = 2,
    // ScopeSpans.spans = 2.
    let mut n = 0;
    for resource_spans in fields(request, 1) {
        for scope_spans in fields(resource_spans?, 2) {
            for span in fields(scope_spans?, 2) {
                span?;
                n += 1;
            }
        }
    }
    Some(n)
}

/// The length-delimited fields numbered `number` of the protobuf message `message`, in order
/// (an `Err`-like `None` item where the message is malformed, then nothing more).
fn fields(message: &[u8], number: u64) -> impl Iterator<Item = Option<&[u8]>> {
    let mut rest = Some(message);
    std::iter::from_fn(move || {
        loop {
            let bytes = rest?;
            if bytes.is_empty() {
                return None;
            }
            let Some((key, after)) = varint(bytes) else {
                rest = None;
                return Some(None);
            };
            let skipped = match key & 7 {
                0 => varint(after).map(|(_, after)| (None, after)),
                1 => after.get(8..).map(|after| (None, after)),
                5 => after.get(4..).map(|after| (None, after)),
                2 => varint(after).and_then(|(len, after)| {
                    let len = usize::try_from(len).ok()?;
                    Some((Some(after.get(..len)?), after.get(len..)?))
                }),
                _ => None,
            };
            let Some((value, after)) = skipped else {
                rest = None;
                return Some(None);
            };
            rest = Some(after);
            if key >> 3 == number
                && let Some(value) = value
            {
                return Some(Some(value));
            }
        }
    })
}

/// A protobuf varint at the start of `bytes`, and what follows it.
fn varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

fn spans_of(request: ExportTraceServiceRequest) -> Vec<Span> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                let status = span.status.unwrap_or_default();
                out.push(Span {
                    service: service.clone(),
                    resource: resource.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    kind: span.kind,
                    attributes: attributes(&span.attributes),
                    events: span
                        .events
                        .iter()
                        .map(|e| (e.name.clone(), attributes(&e.attributes)))
                        .collect(),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                    status_code: status.code,
                    status_message: status.message,
                    start_ns: span.start_time_unix_nano,
                    end_ns: span.end_time_unix_nano,
                });
            }
        }
    }
    out
}

fn attributes(list: &[KeyValue]) -> HashMap<String, String> {
    list.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as ProtoSpan};

    /// A request of `shape[r][s]` spans in scope `s` of resource `r`, every span with a name
    /// and an attribute (so that other fields surround the counted ones).
    fn request(shape: &[&[usize]]) -> Vec<u8> {
        let span = |i: usize| ProtoSpan {
            name: format!("GET /{i}"),
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            kind: SERVER,
            start_time_unix_nano: 1_700_000_000_000_000_000,
            attributes: vec![KeyValue {
                key: "http.route".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::IntValue(i as i64)),
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: shape
                .iter()
                .map(|scopes| ResourceSpans {
                    scope_spans: scopes
                        .iter()
                        .map(|&n| ScopeSpans {
                            spans: (0..n).map(span).collect(),
                            schema_url: "https://opentelemetry.io/schemas/1.0".into(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
        }
        .encode_to_vec()
    }

    #[test]
    fn spans_are_counted_without_decoding_as_a_decoder_counts_them() {
        for shape in [&[][..], &[&[0][..]], &[&[3]], &[&[2, 0, 5], &[], &[1]]] {
            let encoded = request(shape);
            let decoded = ExportTraceServiceRequest::decode(encoded.as_slice()).unwrap();
            let by_decoder: usize = decoded
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len())
                .sum();
            assert_eq!(count_spans(&encoded), Some(by_decoder as u64), "{shape:?}");
        }
    }

    #[test]
    fn a_cut_or_garbled_request_is_not_counted() {
        let encoded = request(&[&[2, 3]]);
        assert_eq!(count_spans(&encoded[..encoded.len() - 3]), None);
        assert_eq!(count_spans(&[0x0a, 0xff]), None);
        assert_eq!(count_spans(&[0x0b]), None);
    }
}
