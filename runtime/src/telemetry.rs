//! Log setup: `tracing` to stderr, filtered by `RUST_LOG` (default `info`). Guest output uses
//! target `guest`, so `RUST_LOG=info,guest=off` silences guests.
//!
//! Events are never written to stderr by the thread that logs them: they go into a bounded
//! buffer ([`BUFFER_BYTES`]) that one thread of its own writes out. A request's worker thread
//! therefore never waits for a slow stderr (a full pipe, a stalled terminal, a busy journald).
//! When the buffer is full, events are dropped and counted; the writer then logs how many
//! (`log lines dropped`), and `/metrics` shows the total ([`dropped_lines`]). Audit events may
//! use a reserve of the same size beyond the buffer, so a flood of other events does not cost
//! the audit trail. Call [`flush`] before the process exits.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Bytes of formatted events waiting for stderr before further events are dropped.
pub const BUFFER_BYTES: usize = 1 << 20;

/// The writer the global subscriber logs through, once [`init`] has run.
static STDERR: OnceLock<NonBlocking> = OnceLock::new();

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init() {
    init_with_default("info");
}

/// [`init`] with another filter than `info` when `RUST_LOG` is unset.
pub fn init_with_default(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    let writer = STDERR
        .get_or_init(|| NonBlocking::spawn(BUFFER_BYTES, Box::new(std::io::stderr())))
        .clone();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        // Colours for people at a terminal; plain text for files, journald and pipes.
        .with_ansi(ansi)
        .try_init();
}

/// Log events dropped so far because stderr could not keep up (0 before [`init`]).
pub fn dropped_lines() -> u64 {
    STDERR.get().map_or(0, NonBlocking::dropped)
}

/// Waits (up to `limit`) until every buffered event has been written to stderr.
pub fn flush(limit: Duration) {
    if let Some(writer) = STDERR.get() {
        writer.flush(limit);
    }
}

/// A `tracing` writer that never blocks: events go into a bounded buffer that a thread of its
/// own writes to the sink; what does not fit is dropped and counted.
#[derive(Clone)]
pub struct NonBlocking(Arc<Shared>);

struct Shared {
    capacity: usize,
    state: Mutex<State>,
    /// Signalled when events arrive.
    ready: Condvar,
    /// Signalled when the buffer has been written out.
    written: Condvar,
    dropped: AtomicU64,
}

#[derive(Default)]
struct State {
    pending: Vec<u8>,
    /// Events dropped since the writer last said so.
    unreported: u64,
    /// The writer thread holds bytes it has not finished writing.
    writing: bool,
}

impl NonBlocking {
    /// A writer into `sink` through a buffer of `capacity` bytes, with its writer thread,
    /// which logs a `log lines dropped` warning (through `tracing`) after writing out a buffer
    /// that could not take every event.
    pub fn spawn(capacity: usize, sink: Box<dyn Write + Send>) -> Self {
        Self::spawn_reporting(capacity, sink, Box::new(report_dropped))
    }

    /// [`Self::spawn`], calling `report(dropped, total)` instead of logging the warning.
    fn spawn_reporting(
        capacity: usize,
        mut sink: Box<dyn Write + Send>,
        report: Box<dyn Fn(u64, u64) + Send>,
    ) -> Self {
        let shared = Arc::new(Shared {
            capacity,
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            written: Condvar::new(),
            dropped: AtomicU64::new(0),
        });
        let writer = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("handoff-log".into())
            .spawn(move || writer.write_forever(&mut *sink, &*report));
        if let Err(error) = spawned {
            // Nothing would ever drain the buffer: every event would be dropped. Say so once.
            eprintln!("handoff: cannot start the log writer thread ({error}); logs are lost");
        }
        Self(shared)
    }

    /// Events dropped so far.
    pub fn dropped(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }

    /// Waits (up to `limit`) until the buffer has been written out.
    pub fn flush(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut state = self.0.lock();
        while !state.pending.is_empty() || state.writing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            state = self
                .0
                .written
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn push(&self, event: &[u8], reserve: bool) {
        let shared = &*self.0;
        let limit = if reserve {
            shared.capacity * 2
        } else {
            shared.capacity
        };
        let mut state = shared.lock();
        if state.pending.len() + event.len() > limit {
            state.unreported += 1;
            drop(state);
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let wake = state.pending.is_empty();
        state.pending.extend_from_slice(event);
        drop(state);
        if wake {
            shared.ready.notify_one();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write_forever(&self, sink: &mut dyn Write, report: &dyn Fn(u64, u64)) {
        let mut out = Vec::new();
        loop {
            let unreported = {
                let mut state = self.lock();
                state.writing = false;
                if state.pending.is_empty() {
                    self.written.notify_all();
                }
                while state.pending.is_empty() {
                    state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                state.writing = true;
                std::mem::swap(&mut out, &mut state.pending);
                std::mem::take(&mut state.unreported)
            };
            // A sink that fails (stderr closed) loses these bytes; there is nowhere to say so.
            let _ = sink.write_all(&out).and_then(|()| sink.flush());
            out.clear();
            if out.capacity() > self.capacity {
                out.shrink_to(self.capacity);
            }
            if unreported > 0 {
                report(unreported, self.dropped.load(Ordering::Relaxed));
            }
        }
    }
}

/// The target of the writer's own `log lines dropped` events (which may use the reserve).
const DROPPED_TARGET: &str = "handoff::telemetry";

/// Logs that `dropped` events (`total` so far) did not fit in the buffer.
fn report_dropped(dropped: u64, total: u64) {
    tracing::warn!(
        target: DROPPED_TARGET,
        dropped,
        total,
        "log lines dropped: stderr could not keep up"
    );
}

/// One event's writer: it collects the formatted event and hands it over whole on drop.
pub struct EventWriter {
    to: NonBlocking,
    reserve: bool,
    event: Vec<u8>,
}

impl Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.event.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if !self.event.is_empty() {
            self.to.push(&self.event, self.reserve);
        }
    }
}

impl<'a> MakeWriter<'a> for NonBlocking {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> EventWriter {
        EventWriter {
            to: self.clone(),
            reserve: false,
            event: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> EventWriter {
        EventWriter {
            to: self.clone(),
            reserve: matches!(meta.target(), "audit" | DROPPED_TARGET),
            event: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A sink that writes nothing until it is told to, then reports what it wrote.
    struct Gate {
        open: mpsc::Receiver<()>,
        opened: bool,
        wrote: mpsc::Sender<Vec<u8>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if !self.opened {
                let _ = self.open.recv();
                self.opened = true;
            }
            let _ = self.wrote.send(buf.to_vec());
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn event(writer: &NonBlocking, text: &str, reserve: bool) {
        let mut w = writer.make_writer();
        w.reserve = reserve;
        w.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn a_stuck_sink_never_blocks_the_logger_and_drops_are_counted() {
        let (open, gate) = mpsc::channel();
        let (wrote, written) = mpsc::channel();
        let (reported, reports) = mpsc::channel();
        let writer = NonBlocking::spawn_reporting(
            100,
            Box::new(Gate {
                open: gate,
                opened: false,
                wrote,
            }),
            Box::new(move |dropped, total| {
                let _ = reported.send((dropped, total));
            }),
        );
        // The writer thread takes the first event and blocks on the gate with it.
        event(&writer, "first\n", false);
        let started = Instant::now();
        while !writer.0.lock().writing {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the writer never started"
            );
            std::thread::yield_now();
        }
        let started = Instant::now();
        // Then 10 events of 20 bytes: 5 fit in the buffer, the rest are dropped at once.
        for i in 0..10 {
            event(&writer, &format!("event {i:>12}\n"), false);
        }
        // An audit event still fits, in the reserve.
        event(&writer, "audit\n", true);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "logging waited for the sink"
        );
        assert_eq!(writer.dropped(), 5);
        open.send(()).unwrap();
        writer.flush(Duration::from_secs(10));
        let text: String = written
            .try_iter()
            .map(|b| String::from_utf8(b).unwrap())
            .collect();
        assert!(text.starts_with("first\n"), "{text}");
        for i in 0..5 {
            assert!(text.contains(&format!("event {i:>12}\n")), "{text}");
        }
        assert!(!text.contains("event            5"), "{text}");
        assert!(text.ends_with("audit\n"), "{text}");
        // Once the buffer that lost them is written out, the loss is reported.
        let report = reports.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(report, (5, 5));
    }
}
