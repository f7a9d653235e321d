//! OpenTelemetry traces: a server span per data-plane request, a client span per outbound
//! call a guest makes, a span per change with its phases, exported over OTLP (HTTP/protobuf
//! or gRPC) with the OpenTelemetry project's crates.
//!
//! Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set
//! ([`Settings::from_env`]). Off, the server holds no [`Tracing`] and a request checks one
//! `Option` and builds nothing. On, finished spans go into a bounded queue
//! ([`export`]) that one task sends in batches; a full queue or a failed export drops spans and
//! counts them (`/metrics`), so a slow or unreachable collector never slows or fails a
//! request. A shutdown flushes the queue within the drain bound ([`Tracing::shutdown`]).

mod collector;
mod export;
mod settings;
mod span;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use opentelemetry::Context;
pub use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

pub use export::{Batching, Counts};
pub use settings::{Protocol, Settings};
pub use span::{Change, Client, Scope, Server};

/// The process's tracer: where spans start and what became of them.
pub struct Tracing {
    tracer: SdkTracer,
    // Kept for the tracer's lifetime (the tracer holds it weakly).
    _provider: SdkTracerProvider,
    counts: Arc<Counts>,
    flusher: export::Flusher,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing").finish_non_exhaustive()
    }
}

/// What became of finished spans so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    /// Spans the collector took.
    pub exported: u64,
    /// Spans dropped because the queue was full.
    pub dropped_queue_full: u64,
    /// Spans dropped because their export failed or timed out.
    pub dropped_export_failed: u64,
}

impl Tracing {
    /// Starts exporting to the collector `settings` names. Must run within the server's Tokio
    /// runtime (the sending task and the gRPC channel live there). Fails only on settings the
    /// exporter refuses; a collector that cannot be reached is not an error (its spans are
    /// dropped and counted).
    pub fn start(settings: &Settings) -> anyhow::Result<Arc<Self>> {
        // Later attributes win: `OTEL_RESOURCE_ATTRIBUTES` over handoff's version, the service
        // name over both.
        let resource = Resource::builder_empty()
            .with_detector(Box::new(
                opentelemetry_sdk::resource::TelemetryResourceDetector,
            ))
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_attributes(
                settings
                    .resource
                    .iter()
                    .map(|(k, v)| opentelemetry::KeyValue::new(k.clone(), v.clone())),
            )
            .with_service_name(settings.service_name.clone())
            .build();
        // The queue's task owns the exporter: it learns the resource here, not from the
        // provider.
        let mut exporter = build_exporter(settings)?;
        opentelemetry_sdk::trace::SpanExporter::set_resource(&mut exporter, &resource);
        let counts = Arc::new(Counts::default());
        let (queue, flusher) = export::Queue::start(exporter, settings.batching, counts.clone());
        let provider = SdkTracerProvider::builder()
            .with_span_processor(queue)
            .with_sampler(settings.sampler.clone())
            .with_resource(resource)
            .build();
        let scope = opentelemetry::InstrumentationScope::builder("handoff")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let tracer = provider.tracer_with_scope(scope);
        tracing::info!(
            endpoint = %settings.endpoint, protocol = settings.protocol.as_str(),
            service = %settings.service_name, "exporting traces"
        );
        Ok(Arc::new(Self {
            tracer,
            _provider: provider,
            counts,
            flusher,
        }))
    }

    /// What became of finished spans so far.
    pub fn figures(&self) -> Figures {
        Figures {
            exported: self.counts.exported.load(Ordering::Relaxed),
            dropped_queue_full: self.counts.dropped_queue_full.load(Ordering::Relaxed),
            dropped_export_failed: self.counts.dropped_export_failed.load(Ordering::Relaxed),
        }
    }

    /// Sends every finished span still queued, waiting at most `within` (a shutdown's bound);
    /// whether they all went out.
    pub async fn shutdown(&self, within: Duration) -> bool {
        let flushed = self.flusher.flush(within).await;
        if !flushed {
            tracing::warn!(
                within_ms = within.as_millis() as u64,
                "traces not flushed in time at shutdown; the rest are dropped"
            );
        }
        flushed
    }

    /// The tracer spans start from.
    pub fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }
}

fn build_exporter(settings: &Settings) -> anyhow::Result<opentelemetry_otlp::SpanExporter> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
    let timeout = settings.batching.export_timeout;
    let exporter = match settings.protocol {
        Protocol::HttpProtobuf => {
            let client = collector::Collector::new(
                &settings.endpoint,
                settings.certificate.as_deref(),
                timeout,
            )
            .map_err(|e| anyhow::anyhow!("OTLP endpoint `{}`: {e}", settings.endpoint))?;
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_http_client(client)
                .with_endpoint(settings.endpoint.clone())
                .with_headers(settings.headers.iter().cloned().collect())
                .with_timeout(timeout)
                .build()?
        }
        Protocol::Grpc => {
            let mut headers = http::HeaderMap::new();
            for (name, value) in &settings.headers {
                let name = http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| anyhow::anyhow!("OTLP header name `{name}` is not valid"))?;
                let value = http::HeaderValue::from_str(value)
                    .map_err(|_| anyhow::anyhow!("OTLP header `{name}` has an invalid value"))?;
                headers.insert(name, value);
            }
            let metadata =
                opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers);
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(settings.endpoint.clone())
                .with_metadata(metadata)
                .with_timeout(timeout);
            if settings.endpoint.starts_with("https://") {
                let mut tls = opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new();
                tls = match &settings.certificate {
                    Some(path) => {
                        let pem = std::fs::read(path).map_err(|e| {
                            anyhow::anyhow!("cannot read the OTLP CA file {}: {e}", path.display())
                        })?;
                        tls.ca_certificate(
                            opentelemetry_otlp::tonic_types::transport::Certificate::from_pem(pem),
                        )
                    }
                    None => tls.with_webpki_roots(),
                };
                builder = builder.with_tls_config(tls);
            }
            builder.build()?
        }
    };
    Ok(exporter)
}

/// Runs `work`, a change named `name` (`deploy`, `rollback`, `rollout step`…) with
/// `attributes`, as a span: a child of the span current where it runs (the caller's span an
/// admin request's `traceparent` named, see [`within`]), else the root of a trace of its own. Its phases ([`phase`]) and [`annotate`]
/// calls find it as the current context. An `Err` makes it an error span with the error's
/// sentence. With tracing off, runs `work` as it is.
pub async fn change<T, E, F>(
    tracing: Option<&Tracing>,
    name: &'static str,
    attributes: Vec<KeyValue>,
    work: F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: Future<Output = Result<T, E>>,
{
    change_since(tracing, name, None, attributes, work).await
}

/// [`change`], its span starting at `began` if given (a deploy began when its upload did).
pub async fn change_since<T, E, F>(
    tracing: Option<&Tracing>,
    name: &'static str,
    began: Option<std::time::SystemTime>,
    attributes: Vec<KeyValue>,
    work: F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: Future<Output = Result<T, E>>,
{
    use opentelemetry::context::FutureExt as _;
    use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _, Tracer as _};
    let Some(tracing) = tracing else {
        return work.await;
    };
    let parent = Context::current();
    let tracer = &tracing.tracer;
    let mut builder = tracer
        .span_builder(name)
        .with_kind(SpanKind::Internal)
        .with_attributes(attributes);
    if let Some(began) = began {
        builder = builder.with_start_time(began);
    }
    let span = builder.start_with_context(tracer, &parent);
    let cx = parent.with_span(span);
    let out = work.with_context(cx.clone()).await;
    let span = cx.span();
    if let Err(error) = &out {
        span.set_status(Status::error(error.to_string()));
    }
    span.end();
    out
}

/// Whether `cx` is within a change traced here: its span is one of ours, not the caller's
/// span an admin request's `traceparent` named ([`within`]), which only parents the change.
fn in_change(cx: &Context) -> bool {
    use opentelemetry::trace::TraceContextExt as _;
    cx.has_active_span() && !cx.span().span_context().is_remote()
}

/// Adds `attributes` to the current change's span, if one is traced.
pub fn annotate(attributes: impl FnOnce() -> Vec<KeyValue>) {
    use opentelemetry::trace::TraceContextExt as _;
    let cx = Context::current();
    if in_change(&cx) {
        cx.span().set_attributes(attributes());
    }
}

/// Makes the current change's span an error with `reason` (a change that ends without an
/// `Err` yet did not happen: a cluster node that could not apply a recorded change).
pub fn fail(reason: &str) {
    use opentelemetry::trace::{Status, TraceContextExt as _};
    let cx = Context::current();
    if in_change(&cx) {
        cx.span().set_status(Status::error(reason.to_owned()));
    }
}

/// The trace an admin request's `traceparent` (and `tracestate`) names: the change the request
/// causes is a span of that trace, a child of the caller's span ([`within`]). `None` without
/// a valid `traceparent`.
pub fn caller(headers: &http::HeaderMap) -> Option<Caller> {
    span::remote(headers).map(Caller)
}

/// The trace an admin request's `traceparent` names ([`caller`]), or the change that wrote a
/// route record ([`Caller::origin`]).
pub struct Caller(Context);

impl Caller {
    /// The change [`origin`] named: another node's change applied here is a span of that
    /// change's trace, a child of its span. `None` when `traceparent` is not a valid one.
    pub fn origin(traceparent: &str) -> Option<Self> {
        let carrier =
            std::collections::HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
        span::remote_of(&carrier).map(Self)
    }
}

/// The current change's span as a W3C `traceparent`, if a change is traced here (kept with
/// the route record it writes: the other nodes of a cluster apply that record within the same
/// trace, see [`Caller::origin`]).
pub fn origin() -> Option<String> {
    let cx = Context::current();
    if !in_change(&cx) {
        return None;
    }
    span::traceparent(&cx)
}

/// Runs `work` (an admin request's handling) so that the changes it starts ([`change`]) are
/// children of `caller`'s span.
pub async fn within<F: Future>(caller: Caller, work: F) -> F::Output {
    use opentelemetry::context::FutureExt as _;
    work.with_context(caller.0).await
}

/// Records phase `name` of the current change that already happened, from `began` to
/// `ended` (a deploy's upload, read before the change began), if a change is traced.
pub fn past_phase(
    tracing: Option<&Tracing>,
    name: &'static str,
    began: std::time::SystemTime,
    ended: std::time::SystemTime,
) {
    use opentelemetry::trace::{Span as _, SpanKind, Tracer as _};
    let Some(tracing) = tracing else {
        return;
    };
    let parent = Context::current();
    if !in_change(&parent) {
        return;
    }
    let tracer = &tracing.tracer;
    let mut span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Internal)
        .with_start_time(began)
        .start_with_context(tracer, &parent);
    span.end_with_timestamp(ended);
}

/// A phase of the current change that ends later, elsewhere (a retired version's drain): a
/// child span of the change, ended when this is dropped. `None` when no change is traced.
pub struct Later(Context);

impl Later {
    /// Starts phase `name` of the current change, if one is traced.
    pub fn start(
        tracing: Option<&Tracing>,
        name: &'static str,
        attributes: Vec<KeyValue>,
    ) -> Option<Self> {
        use opentelemetry::trace::{SpanKind, TraceContextExt as _, Tracer as _};
        let tracing = tracing?;
        let parent = Context::current();
        if !in_change(&parent) {
            return None;
        }
        let tracer = &tracing.tracer;
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        Some(Self(parent.with_span(span)))
    }

    /// Adds `attributes` to the phase's span.
    pub fn set(&self, attributes: Vec<KeyValue>) {
        use opentelemetry::trace::TraceContextExt as _;
        self.0.span().set_attributes(attributes);
    }
}

impl Drop for Later {
    fn drop(&mut self) {
        use opentelemetry::trace::TraceContextExt as _;
        self.0.span().end();
    }
}

/// Runs `phase` (named `name`) as a child span of the change whose context is current (see
/// [`change`]); runs it plainly when no change is traced.
pub async fn phase<F: Future>(
    tracing: Option<&Tracing>,
    name: &'static str,
    phase: F,
) -> F::Output {
    use opentelemetry::context::FutureExt as _;
    use opentelemetry::trace::{SpanKind, TraceContextExt as _, Tracer as _};
    let parent = Context::current();
    let Some(tracing) = tracing.filter(|_| in_change(&parent)) else {
        return phase.await;
    };
    let tracer = &tracing.tracer;
    let span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Internal)
        .start_with_context(tracer, &parent);
    let cx = parent.with_span(span);
    let out = phase.with_context(cx.clone()).await;
    cx.span().end();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every protocol and scheme builds its exporter (nothing is sent: no collector runs).
    #[tokio::test]
    async fn exporters_build_for_both_protocols_and_tls() {
        for (endpoint, protocol) in [
            ("http://127.0.0.1:4318/v1/traces", Protocol::HttpProtobuf),
            (
                "https://collector.example:4318/v1/traces",
                Protocol::HttpProtobuf,
            ),
            ("http://127.0.0.1:4317", Protocol::Grpc),
            ("https://collector.example:4317", Protocol::Grpc),
        ] {
            let mut settings = Settings::new(endpoint, protocol);
            settings.headers = vec![("api-key".into(), "secret".into())];
            let tracing = Tracing::start(&settings)
                .unwrap_or_else(|e| panic!("{endpoint} {protocol:?}: {e:#}"));
            assert_eq!(tracing.figures(), Figures::default());
        }
    }
}
