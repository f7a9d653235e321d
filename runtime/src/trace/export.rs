//! The way out for finished spans: a bounded queue in front of the OTLP exporter, drained by
//! one task of the server's runtime that sends batches. Ending a span never waits (a short
//! lock and a push; the task is woken only by a batch's first span and by a full batch): a span
//! that finds the queue full is dropped and counted, and so is every span of a batch the
//! collector did not take (unreachable, refusing, or slower than the export timeout). Nothing
//! here can slow or fail a request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use tokio::sync::{Notify, mpsc, oneshot};

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

/// The spans ended and not yet sent, shared by the span processor (which pushes) and the
/// sending task (which takes batches).
#[derive(Debug)]
struct Pending {
    spans: Mutex<Vec<SpanData>>,
    /// Wakes the sending task: the first span of a batch arrived, or a batch is full. Ending
    /// any other span wakes nothing, so a request pays a lock and a push, not a task switch.
    ready: Notify,
    batching: Batching,
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<SpanData>> {
        self.spans.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Up to one batch of the oldest spans (`all`: every span pending).
    fn take(&self, all: bool) -> Vec<SpanData> {
        let mut spans = self.lock();
        if all || spans.len() <= self.batching.max_batch {
            return std::mem::take(&mut *spans);
        }
        spans.drain(..self.batching.max_batch).collect()
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The span processor the tracer provider calls at each span's end: it only queues.
#[derive(Debug)]
pub(super) struct Queue {
    pending: Arc<Pending>,
    counts: Arc<Counts>,
}

impl Queue {
    /// A queue bounded by `batching` whose spans `exporter` sends from a task of the current
    /// Tokio runtime. Also returns a handle to flush it.
    pub(super) fn start<E>(exporter: E, batching: Batching, counts: Arc<Counts>) -> (Self, Flusher)
    where
        E: SpanExporter + 'static,
    {
        let batching = Batching {
            max_queue: batching.max_queue.max(1),
            max_batch: batching.max_batch.max(1),
            ..batching
        };
        let pending = Arc::new(Pending {
            spans: Mutex::new(Vec::new()),
            ready: Notify::new(),
            batching,
        });
        let (flushes, asked) = mpsc::channel(8);
        tokio::spawn(send_batches(
            exporter,
            pending.clone(),
            asked,
            counts.clone(),
        ));
        (Self { pending, counts }, Flusher(flushes))
    }
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        let batching = &self.pending.batching;
        let mut spans = self.pending.lock();
        if spans.len() >= batching.max_queue {
            drop(spans);
            self.counts
                .dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        spans.push(span);
        let len = spans.len();
        drop(spans);
        if len == 1 || len == batching.max_batch {
            self.pending.ready.notify_one();
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
pub(super) struct Flusher(mpsc::Sender<oneshot::Sender<()>>);

impl Flusher {
    /// Sends every span queued so far, waiting at most `within`; whether it finished.
    pub(super) async fn flush(&self, within: Duration) -> bool {
        let (done, finished) = oneshot::channel();
        let asked = async {
            self.0.send(done).await.ok()?;
            finished.await.ok()
        };
        matches!(tokio::time::timeout(within, asked).await, Ok(Some(())))
    }
}

/// The sending task: a batch goes out when it is full, when its oldest span has waited
/// `batching.delay`, or when a flush asks (then everything pending goes, in batches); one
/// export at a time, each bounded by the export timeout.
async fn send_batches<E: SpanExporter>(
    exporter: E,
    pending: Arc<Pending>,
    mut asked: mpsc::Receiver<oneshot::Sender<()>>,
    counts: Arc<Counts>,
) {
    let batching = pending.batching;
    // Whether the last export failed: the first failure and the recovery are logged once.
    let mut failing = false;
    loop {
        let mut flushed = Vec::new();
        // The first span of a batch, or a flush.
        if pending.len() == 0 {
            tokio::select! {
                () = pending.ready.notified() => {}
                done = asked.recv() => match done {
                    Some(done) => flushed.push(done),
                    None => return,
                },
            }
        }
        // The batch fills until its delay is up (a full batch or a flush goes at once).
        if flushed.is_empty() {
            let due = tokio::time::Instant::now() + batching.delay;
            while pending.len() < batching.max_batch {
                tokio::select! {
                    () = tokio::time::sleep_until(due) => break,
                    () = pending.ready.notified() => {}
                    done = asked.recv() => {
                        flushed.extend(done);
                        break;
                    }
                }
            }
        }
        // A flush sends everything pending when it asked.
        while let Ok(done) = asked.try_recv() {
            flushed.push(done);
        }
        let all = !flushed.is_empty();
        let mut sending = pending.take(all);
        while !sending.is_empty() {
            let rest = match sending.len() > batching.max_batch {
                true => sending.split_off(batching.max_batch),
                false => Vec::new(),
            };
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
            sending = rest;
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{
        SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
    };
    use std::time::SystemTime;

    /// An exporter that keeps the size of every batch it was given.
    #[derive(Debug, Clone, Default)]
    struct Batches(Arc<Mutex<Vec<usize>>>);

    impl SpanExporter for Batches {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().push(batch.len());
            Ok(())
        }
    }

    impl Batches {
        fn sizes(&self) -> Vec<usize> {
            self.0.lock().unwrap().clone()
        }
    }

    fn span(sampled: bool) -> SpanData {
        let flags = match sampled {
            true => TraceFlags::SAMPLED,
            false => TraceFlags::default(),
        };
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(1),
                SpanId::from(1),
                flags,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Server,
            name: "GET".into(),
            start_time: SystemTime::now(),
            end_time: SystemTime::now(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        }
    }

    fn batching(max_queue: usize, max_batch: usize, delay: Duration) -> Batching {
        Batching {
            max_queue,
            max_batch,
            delay,
            export_timeout: Duration::from_secs(10),
        }
    }

    /// Waits (bounded) until `batches` has seen `n` spans.
    async fn until_exported(batches: &Batches, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while batches.sizes().iter().sum::<usize>() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}",
                batches.sizes()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn full_batches_go_at_once_and_the_rest_after_the_delay() {
        let batches = Batches::default();
        let counts = Arc::new(Counts::default());
        // A delay no test waits for: only full batches can go before the flush.
        let (queue, flusher) = Queue::start(
            batches.clone(),
            batching(100, 4, Duration::from_secs(3600)),
            counts.clone(),
        );
        for _ in 0..10 {
            queue.on_end(span(true));
        }
        queue.on_end(span(false));
        until_exported(&batches, 8).await;
        assert_eq!(batches.sizes(), [4, 4]);
        // The two left wait for their delay, or a flush.
        assert!(flusher.flush(Duration::from_secs(10)).await);
        assert_eq!(batches.sizes(), [4, 4, 2]);
        assert_eq!(counts.exported.load(Ordering::Relaxed), 10);
    }

    #[tokio::test]
    async fn a_batch_that_never_fills_goes_after_its_delay() {
        let batches = Batches::default();
        let counts = Arc::new(Counts::default());
        let (queue, _flusher) = Queue::start(
            batches.clone(),
            batching(100, 512, Duration::from_millis(20)),
            counts,
        );
        queue.on_end(span(true));
        queue.on_end(span(true));
        until_exported(&batches, 2).await;
        assert_eq!(batches.sizes(), [2]);
        queue.on_end(span(true));
        until_exported(&batches, 3).await;
        assert_eq!(batches.sizes(), [2, 1]);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_and_a_flush_sends_everything_in_batches() {
        let batches = Batches::default();
        let counts = Arc::new(Counts::default());
        // A current-thread runtime: the sending task cannot run while this test pushes.
        let (queue, flusher) = Queue::start(
            batches.clone(),
            batching(6, 4, Duration::from_secs(3600)),
            counts.clone(),
        );
        for _ in 0..9 {
            queue.on_end(span(true));
        }
        assert_eq!(counts.dropped_queue_full.load(Ordering::Relaxed), 3);
        assert!(flusher.flush(Duration::from_secs(10)).await);
        assert_eq!(batches.sizes(), [4, 2]);
        assert_eq!(counts.exported.load(Ordering::Relaxed), 6);
    }
}
