//! The way out for finished spans: a bounded queue in front of the OTLP exporter, drained by
//! one task of the server's runtime that sends batches. Ending a span never waits: a span
//! that finds the queue full is dropped and counted, and so is every span of a batch the
//! collector did not take (unreachable, refusing, or slower than the export timeout). Nothing
//! here can slow or fail a request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use tokio::sync::{mpsc, oneshot};

/// How the queue and its batches are bounded (`OTEL_BSP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Finished spans waiting to be sent; more are dropped (`OTEL_BSP_MAX_QUEUE_SIZE`).
    pub max_queue: usize,
    /// Spans sent in one export at most (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`).
    pub max_batch: usize,
    /// Longest a finished span waits for its batch to fill (`OTEL_BSP_SCHEDULE_DELAY`).
    pub delay: Duration,
    /// Longest one export may take before its spans count as dropped
    /// (`OTEL_BSP_EXPORT_TIMEOUT`).
    pub export_timeout: Duration,
}

impl Default for Batching {
    /// The OpenTelemetry specification's defaults, but a 1 s schedule delay (5 s there): a
    /// trace shows up in the backend about as fast as the request's log line.
    fn default() -> Self {
        Self {
            max_queue: 2048,
            max_batch: 512,
            delay: Duration::from_secs(1),
            export_timeout: Duration::from_secs(10),
        }
    }
}

/// What became of finished spans so far (for `/metrics`).
#[derive(Debug, Default)]
pub struct Counts {
    /// Spans the collector took.
    pub exported: AtomicU64,
    /// Spans dropped because the queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Spans dropped because their export failed or timed out.
    pub dropped_export_failed: AtomicU64,
}

/// What the queue carries.
enum Message {
    Span(Box<SpanData>),
    /// Send what is queued now, then answer.
    Flush(oneshot::Sender<()>),
}

/// The span processor the tracer provider calls at each span's end: it only queues.
#[derive(Debug)]
pub(super) struct Queue {
    sender: mpsc::Sender<Message>,
    counts: Arc<Counts>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Message")
    }
}

impl Queue {
    /// A queue bounded by `batching` whose spans `exporter` sends from a task of the current
    /// Tokio runtime. Also returns a handle to flush it.
    pub(super) fn start<E>(exporter: E, batching: Batching, counts: Arc<Counts>) -> (Self, Flusher)
    where
        E: SpanExporter + 'static,
    {
        let (sender, receiver) = mpsc::channel(batching.max_queue.max(1));
        tokio::spawn(send_batches(exporter, receiver, batching, counts.clone()));
        let flusher = Flusher(sender.clone());
        (Self { sender, counts }, flusher)
    }
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.sender.try_send(Message::Span(Box::new(span))).is_err() {
            self.counts
                .dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        // Flushing waits on the server's runtime: see `Flusher::flush`, called at shutdown.
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Asks the sending task to send what is queued.
#[derive(Debug, Clone)]
pub(super) struct Flusher(mpsc::Sender<Message>);

impl Flusher {
    /// Sends every span queued so far, waiting at most `within`; whether it finished.
    pub(super) async fn flush(&self, within: Duration) -> bool {
        let (done, finished) = oneshot::channel();
        let asked = async {
            self.0.send(Message::Flush(done)).await.ok()?;
            finished.await.ok()
        };
        matches!(tokio::time::timeout(within, asked).await, Ok(Some(())))
    }
}

/// The sending task: a batch goes out when it is full, when its oldest span has waited
/// `batching.delay`, or when a flush asks; one export at a time, each bounded by the export
/// timeout.
async fn send_batches<E: SpanExporter>(
    exporter: E,
    mut receiver: mpsc::Receiver<Message>,
    batching: Batching,
    counts: Arc<Counts>,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(batching.max_batch);
    // Whether the last export failed: the first failure and the recovery are logged once.
    let mut failing = false;
    loop {
        // The first span of a batch, or a flush.
        let Some(first) = receiver.recv().await else {
            return;
        };
        let mut flushed = Vec::new();
        match first {
            Message::Span(span) => batch.push(*span),
            Message::Flush(done) => flushed.push(done),
        }
        if flushed.is_empty() {
            let due = tokio::time::Instant::now() + batching.delay;
            while batch.len() < batching.max_batch {
                match tokio::time::timeout_at(due, receiver.recv()).await {
                    Ok(Some(Message::Span(span))) => batch.push(*span),
                    Ok(Some(Message::Flush(done))) => {
                        flushed.push(done);
                        break;
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
        // A flush sends everything queued before it.
        if !flushed.is_empty() {
            while let Ok(message) = receiver.try_recv() {
                match message {
                    Message::Span(span) => batch.push(*span),
                    Message::Flush(done) => flushed.push(done),
                }
            }
        }
        while !batch.is_empty() {
            let take = batch.len().min(batching.max_batch);
            let rest = batch.split_off(take);
            let sending = std::mem::replace(&mut batch, rest);
            let n = sending.len() as u64;
            let failure =
                match tokio::time::timeout(batching.export_timeout, exporter.export(sending)).await
                {
                    Ok(Ok(())) => None,
                    Ok(Err(error)) => Some(error.to_string()),
                    Err(_) => Some(format!(
                        "no answer within {:?} (OTEL_BSP_EXPORT_TIMEOUT)",
                        batching.export_timeout
                    )),
                };
            match failure {
                None => {
                    counts.exported.fetch_add(n, Ordering::Relaxed);
                    if std::mem::take(&mut failing) {
                        tracing::info!("trace export works again");
                    }
                }
                Some(error) => {
                    counts.dropped_export_failed.fetch_add(n, Ordering::Relaxed);
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(%error, spans = n, "trace export failed; spans are dropped (counted in handoff_trace_spans_dropped_total) until the collector answers");
                    } else {
                        tracing::debug!(%error, spans = n, "trace export failed");
                    }
                }
            }
            if flushed.is_empty() {
                break;
            }
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}
