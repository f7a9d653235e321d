//! The spans handoff makes: a request's server span ([`Server`]), what a guest's store keeps of
//! it for its log lines and outbound calls ([`Scope`]), an outbound call's client span
//! ([`Client`]), and a shadow copy's span ([`Change`]). A change with its phases is
//! [`super::change`].

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{Link, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracer;

/// What a guest's store keeps of its request's span: its log lines become the span's events
/// and its outbound calls the span's children.
#[derive(Clone)]
pub struct Scope {
    tracer: SdkTracer,
    cx: Context,
}

impl Scope {
    /// Adds a line the guest logged as an event of the request's span.
    pub fn log(&self, stream: &'static str, level: &'static str, message: &str) {
        let span = self.cx.span();
        if span.is_recording() {
            span.add_event(
                "guest log",
                vec![
                    KeyValue::new("log.iostream", stream),
                    KeyValue::new("log.level", level),
                    KeyValue::new("message", message.to_owned()),
                ],
            );
        }
    }

    /// The trace and span ids (hex) of the request's span, for the JSON log line.
    pub fn ids(&self) -> (String, String) {
        let span = self.cx.span();
        let context = span.span_context();
        (
            context.trace_id().to_string(),
            context.span_id().to_string(),
        )
    }
}

/// A request's server span: it begins when the request arrives and starts (in the SDK) once
/// the request is routed, with every attribute known by then given at once (its name and its
/// route, version and arm included, none set one by one under the span's lock); it ends when its
/// response body ends (or the answer is the host's).
pub struct Server {
    tracer: SdkTracer,
    state: State,
}

/// Where a request's span is.
enum State {
    /// Not started yet: what it will start with.
    Arrived(Arrived),
    /// Started: the context whose span it is.
    Started(Context),
    /// Ended.
    Ended,
}

/// A span not started yet: its start time, parent, name and attributes so far.
struct Arrived {
    began: SystemTime,
    parent: Context,
    name: Cow<'static, str>,
    attributes: Vec<KeyValue>,
}

/// The attributes a server span has at most: those of [`Server::start`], [`Server::routed`]
/// and [`Server::reused`] (its status is set later), so its list never grows.
const SERVER_ATTRIBUTES: usize = 14;

impl Server {
    /// The span of a request (continuing the trace its `traceparent` names), arrived over
    /// `https` or not from the client whose address is `peer` (as text, shared). It starts at [`Server::routed`] or at whichever call needs
    /// it first, with now as its start time.
    pub fn start(
        tracer: &SdkTracer,
        method: &Method,
        uri: &Uri,
        version: http::Version,
        headers: &HeaderMap,
        https: bool,
        peer: Option<&Arc<str>>,
    ) -> Self {
        let began = opentelemetry::time::now();
        // Without a `traceparent` the span roots a trace of its own; the propagator would only
        // look the header up again, and start from the thread's current context.
        let parent = match headers.contains_key(TRACEPARENT) {
            true => TraceContextPropagator::new()
                .extract_with_context(&Context::new(), &Headers(headers)),
            false => Context::new(),
        };
        let mut attributes = Vec::with_capacity(SERVER_ATTRIBUTES);
        attributes.push(KeyValue::new("http.request.method", method_name(method)));
        if method_name(method) == OTHER {
            attributes.push(KeyValue::new(
                "http.request.method_original",
                method.as_str().to_owned(),
            ));
        }
        attributes.push(KeyValue::new("url.path", uri.path().to_owned()));
        attributes.push(KeyValue::new(
            "url.scheme",
            if https { "https" } else { "http" },
        ));
        attributes.push(KeyValue::new(
            "network.protocol.version",
            protocol_version(version),
        ));
        let authority = uri.authority().map(|a| a.as_str()).or_else(|| {
            headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        if let Some(authority) = authority.and_then(|a| a.parse::<http::uri::Authority>().ok()) {
            attributes.push(KeyValue::new("server.address", authority.host().to_owned()));
            if let Some(port) = authority.port_u16() {
                attributes.push(KeyValue::new("server.port", i64::from(port)));
            }
        }
        if let Some(peer) = peer {
            attributes.push(KeyValue::new("client.address", peer.clone()));
        }
        if let Some(agent) = headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
        {
            attributes.push(KeyValue::new("user_agent.original", agent.to_owned()));
        }
        Self {
            tracer: tracer.clone(),
            state: State::Arrived(Arrived {
                began,
                parent,
                name: Cow::Borrowed(span_method(method)),
                attributes,
            }),
        }
    }

    /// The request was routed: to `route` at `prefix`, its `version` (the digest, `sha256:…`)
    /// on `arm` (`stable`, `candidate`, `pinned`). All three are shared, not copied.
    pub fn routed(
        &mut self,
        route: &Arc<str>,
        prefix: &Arc<str>,
        version: &Arc<str>,
        arm: &'static str,
    ) {
        let attributes = [
            KeyValue::new("http.route", prefix.clone()),
            KeyValue::new("handoff.route", route.clone()),
            KeyValue::new("handoff.version", version.clone()),
            KeyValue::new("handoff.arm", arm),
        ];
        match &mut self.state {
            State::Arrived(arrived) => {
                let method = arrived.name.as_ref();
                let mut name = String::with_capacity(method.len() + 1 + prefix.len());
                name.push_str(method);
                name.push(' ');
                name.push_str(prefix);
                arrived.name = Cow::Owned(name);
                arrived.attributes.extend(attributes);
            }
            State::Started(cx) => cx.span().set_attributes(attributes),
            State::Ended => {}
        }
    }

    /// Whether the request ran on an instance that had served before (instance reuse).
    pub fn reused(&mut self, reused: bool) {
        let attribute = KeyValue::new("handoff.instance.reused", reused);
        match &mut self.state {
            State::Arrived(arrived) => arrived.attributes.push(attribute),
            State::Started(cx) => cx.span().set_attribute(attribute),
            State::Ended => {}
        }
    }

    /// The span, started if it was not yet (`None` once it ended).
    fn started(&mut self) -> Option<&Context> {
        if let State::Arrived(_) = self.state {
            let State::Arrived(arrived) = std::mem::replace(&mut self.state, State::Ended) else {
                unreachable!("the state was just matched");
            };
            let span = self
                .tracer
                .span_builder(arrived.name)
                .with_kind(SpanKind::Server)
                .with_start_time(arrived.began)
                .with_attributes(arrived.attributes)
                .start_with_context(&self.tracer, &arrived.parent);
            self.state = State::Started(arrived.parent.with_span(span));
        }
        match &self.state {
            State::Started(cx) => Some(cx),
            _ => None,
        }
    }

    /// What the guest's store keeps of this span (which starts here if it had not).
    pub fn scope(&mut self) -> Scope {
        let tracer = self.tracer.clone();
        let cx = self.started().cloned().unwrap_or_default();
        Scope { tracer, cx }
    }

    /// The span of a copy of this request to its route's shadow (`version`, the digest): a
    /// trace of its own, linked to this span.
    pub fn shadow_copy(&mut self, route: &Arc<str>, version: &Arc<str>) -> Change {
        let original = self
            .started()
            .map(|cx| cx.span().span_context().clone())
            .unwrap_or(SpanContext::NONE);
        let span = self
            .tracer
            .span_builder(format!("shadow copy {route}"))
            .with_kind(SpanKind::Internal)
            .with_links(vec![Link::with_context(original)])
            .with_attributes([
                KeyValue::new("handoff.route", route.clone()),
                KeyValue::new("handoff.version", version.clone()),
                KeyValue::new("handoff.arm", "shadow"),
            ])
            .start_with_context(&self.tracer, &Context::new());
        Change {
            cx: Context::new().with_span(span),
        }
    }

    /// Records the response's status; a 5xx makes the span an error, with `reason` (else the
    /// status) as its description.
    pub fn status(&mut self, status: u16, reason: Option<&str>) {
        let Some(cx) = self.started() else {
            return;
        };
        let span = cx.span();
        let code = KeyValue::new("http.response.status_code", i64::from(status));
        if status >= 500 {
            let reason = reason.map_or_else(|| format!("HTTP {status}"), str::to_owned);
            span.set_attributes([code, KeyValue::new("error.type", status.to_string())]);
            span.set_status(Status::error(reason));
        } else {
            span.set_attribute(code);
        }
    }

    /// The response ended with an error after its head (the guest failed, was stopped or cut
    /// off mid-body): the span is an error with `reason`.
    pub fn fail(&mut self, reason: &str) {
        let Some(cx) = self.started() else {
            return;
        };
        let span = cx.span();
        span.set_attribute(KeyValue::new("error.type", "response body"));
        span.set_status(Status::error(reason.to_owned()));
    }

    /// Ends the span (the response is complete, or the client went away), starting it first
    /// if nothing did.
    pub fn end(&mut self) {
        if self.started().is_some()
            && let State::Started(cx) = std::mem::replace(&mut self.state, State::Ended)
        {
            cx.span().end();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.end();
    }
}

/// A client span for an outbound call a guest makes.
pub struct Client {
    cx: Context,
}

impl Client {
    /// Starts the client span of `request`, a child of the guest's request span in `scope`,
    /// and injects its `traceparent` (and `tracestate`) into the request's headers.
    pub fn start<B>(scope: &Scope, request: &mut http::Request<B>) -> Self {
        let tracer = &scope.tracer;
        let uri = request.uri();
        let mut attributes = Vec::with_capacity(5);
        attributes.push(KeyValue::new(
            "http.request.method",
            method_name(request.method()),
        ));
        if method_name(request.method()) == OTHER {
            attributes.push(KeyValue::new(
                "http.request.method_original",
                request.method().as_str().to_owned(),
            ));
        }
        // Without the query and any user info: they may hold secrets.
        let full = format!(
            "{}://{}{}",
            uri.scheme_str().unwrap_or("http"),
            uri.host().unwrap_or_default(),
            uri.port()
                .map(|p| format!(":{}", p.as_str()))
                .unwrap_or_default()
        ) + uri.path();
        attributes.push(KeyValue::new("url.full", full));
        if let Some(host) = uri.host() {
            attributes.push(KeyValue::new("server.address", host.to_owned()));
        }
        let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
            Some("https") => 443,
            _ => 80,
        });
        attributes.push(KeyValue::new("server.port", i64::from(port)));
        let span = tracer
            .span_builder(span_method(request.method()))
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(tracer, &scope.cx);
        let cx = scope.cx.with_span(span);
        TraceContextPropagator::new().inject_context(&cx, &mut HeadersMut(request.headers_mut()));
        Self { cx }
    }

    /// The call got a response with `status` (a 4xx or 5xx is an error for a client).
    pub fn answered(self, status: u16) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if status >= 400 {
            span.set_attribute(KeyValue::new("error.type", status.to_string()));
            span.set_status(Status::error(format!("HTTP {status}")));
        }
        span.end();
    }

    /// The call failed without a response (`what`: refused, denied, a connection error).
    pub fn failed(self, what: &str) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("error.type", "request"));
        span.set_status(Status::error(what.to_owned()));
        span.end();
    }
}

/// A span ended by hand, where its work ends: a shadow copy's (a change's spans are
/// [`super::change`]'s).
pub struct Change {
    cx: Context,
}

impl Change {
    /// Adds `attributes` to the span.
    pub fn set(&self, attributes: Vec<KeyValue>) {
        self.cx.span().set_attributes(attributes);
    }

    /// Ends the span: an error with `error`'s sentence if it failed.
    pub fn end(self, error: Option<&str>) {
        let span = self.cx.span();
        if let Some(error) = error {
            span.set_status(Status::error(error.to_owned()));
        }
        span.end();
    }
}

/// The W3C Trace Context header that names a request's caller span.
const TRACEPARENT: &str = "traceparent";

/// The semantic conventions' name for a method they do not know.
const OTHER: &str = "_OTHER";

/// A span's name starts with its method, or `HTTP` for one the conventions do not know.
fn span_method(method: &Method) -> &'static str {
    match method_name(method) {
        OTHER => "HTTP",
        known => known,
    }
}

fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => OTHER,
    }
}

fn protocol_version(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// The caller's span a request's `traceparent` (and `tracestate`) names, as a context, if the
/// header is valid.
pub(super) fn remote(headers: &HeaderMap) -> Option<Context> {
    remote_of(&Headers(headers))
}

/// The caller's span `carrier` names, if it names a valid one.
pub(super) fn remote_of(carrier: &dyn Extractor) -> Option<Context> {
    let cx = TraceContextPropagator::new().extract(carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// The span current in `cx` as a W3C `traceparent`.
pub(super) fn traceparent(cx: &Context) -> Option<String> {
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    carrier.remove("traceparent")
}

/// A header map as the propagator reads it.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// A header map as the propagator writes it.
struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}
