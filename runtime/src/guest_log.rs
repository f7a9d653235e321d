//! Guest stdout and stderr as log events, and the per-version budget that keeps a guest from
//! flooding the host's log.
//!
//! Each line a guest writes becomes a `tracing` event with target `guest`, its route, version
//! and stream; a line that starts with a level word (`ERROR `, `WARN `, ...) keeps that level.
//! Each version may log [`LINE_BURST`](budget::LINE_BURST) lines at once, then [`LINES_PER_SECOND`](budget::LINES_PER_SECOND) a second; lines
//! over that budget are counted, not written, and once a second a `warn` event says how many
//! lines of which route and version were suppressed. Warnings a guest causes on the outbound
//! path (a denied or refused request, a failed connection) have a budget of their own
//! ([`OUTBOUND_BURST`](budget::OUTBOUND_BURST), then [`OUTBOUND_PER_SECOND`](budget::OUTBOUND_PER_SECOND)).
//!
//! The budget lives with the version ([`GuestLogs`], built at deploy time) and costs a clock
//! read and one compare-and-swap per line; a request only clones an `Arc`. Nothing here ever
//! blocks: the writer behind `tracing` is the non-blocking one of [`crate::telemetry`].
//!
//! What one store's streams share ([`StoreLog`]): the request it serves, whose id every line
//! carries (`request_id`, as `x-request-id` writes it), and a Rust panic message the guest
//! printed on stderr (`thread '…' panicked at LOCATION:`, the message, the `RUST_BACKTRACE`
//! note). That message is held, not logged, so the failure report that follows (the trap)
//! says it in its one `warn` line; one never followed by a failure is logged at `warn` when
//! the store serves its next request or is dropped.

mod budget;
mod tail;

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tracing::Level;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

pub use budget::GuestLogs;
pub use tail::{Followed, Follower, LogLine, Tail};

/// The longest line a guest can buffer before it is emitted anyway.
pub const MAX_GUEST_LINE: usize = 16 << 10;

/// The longest panic message held for the failure report; the rest is cut.
const MAX_PANIC: usize = 4 << 10;
/// Lines after a panic header held at most; a guest that goes on writing was not panicking
/// (or is past it), and what was held is logged.
const MAX_PANIC_LINES: usize = 32;

/// What the output streams of one store share: its version's log state, the request it
/// serves, and a panic message it printed (held for the failure report).
pub struct StoreLog {
    logs: Arc<GuestLogs>,
    request: AtomicU64,
    panic: Mutex<Option<Panic>>,
    /// With tracing on: the span of the request served (its lines become its events). Read
    /// only once `traced` is set, so a server without tracing never takes the lock.
    trace: Mutex<Option<crate::trace::Scope>>,
    traced: std::sync::atomic::AtomicBool,
}

/// A Rust panic message printed by a guest.
#[derive(Debug, Default)]
struct Panic {
    /// The request the store served when the panic began.
    request: u64,
    location: String,
    message: String,
    lines: usize,
    /// The `note: run with RUST_BACKTRACE` line came: the message is whole.
    complete: bool,
}

impl Panic {
    fn text(&self) -> String {
        let message = self.message.trim_end();
        match (message.is_empty(), self.location.is_empty()) {
            (true, _) => format!("panicked at {}", self.location),
            (false, true) => message.to_owned(),
            (false, false) => format!("{message} (at {})", self.location),
        }
    }
}

impl StoreLog {
    /// The shared log state of a new store of the version whose logging is `logs`.
    pub fn new(logs: &Arc<GuestLogs>) -> Arc<Self> {
        Arc::new(Self {
            logs: logs.clone(),
            request: AtomicU64::new(0),
            panic: Mutex::new(None),
            trace: Mutex::new(None),
            traced: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// A guest output stream (`stdout` or `stderr`) of this store whose lines become events.
    pub fn stream(self: &Arc<Self>, stream: &'static str) -> GuestLog {
        GuestLog {
            store: self.clone(),
            stream,
        }
    }

    /// The span of the request the store now serves (tracing on; `None`: not traced).
    pub fn trace(&self, scope: Option<crate::trace::Scope>) {
        if scope.is_none() && !self.traced.load(Ordering::Relaxed) {
            return;
        }
        self.traced.store(true, Ordering::Relaxed);
        *self.trace.lock().unwrap_or_else(|e| e.into_inner()) = scope;
    }

    /// The span of the request served, if traced.
    fn scope(&self) -> Option<crate::trace::Scope> {
        if !self.traced.load(Ordering::Relaxed) {
            return None;
        }
        self.trace.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The store now serves request `id`: its lines carry that id. A panic message the last
    /// request left without a failure report is logged now.
    pub fn serve(&self, id: u64) {
        self.flush_panic();
        self.request.store(id, Ordering::Relaxed);
    }

    /// The store's guest now writes for request `id` (a shared WASI 0.3 instance switching
    /// between the requests it serves): its lines carry that id.
    pub fn attribute(&self, id: u64) {
        self.request.store(id, Ordering::Relaxed);
    }

    /// The panic message the guest printed (`message (at location)`), taken for its failure
    /// report.
    pub fn take_panic(&self) -> Option<String> {
        let panic = self
            .panic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        Some(panic.text())
    }

    /// The panic message the guest printed while it served request `id`, taken for that
    /// request's failure report; `None` if it printed none then (another request's panic is
    /// left for that one's report, or logged on its own when the store is dropped).
    pub fn take_panic_of(&self, id: u64) -> Option<String> {
        let mut held = self.panic.lock().unwrap_or_else(|e| e.into_inner());
        if held.as_ref()?.request != id {
            return None;
        }
        Some(held.take()?.text())
    }

    /// Logs a held panic message as a guest line at `warn`.
    fn flush_panic(&self) {
        if let Some(text) = self.take_panic() {
            self.line(Level::WARN, "stderr", &format!("panicked: {text}"));
        }
    }

    /// Holds `text` (a stderr line) if it is part of a panic message; whether it was.
    fn hold(&self, text: &str) -> bool {
        let mut panic = self.panic.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(location) = panic_header(text) {
            let previous = panic.replace(Panic {
                request: self.request.load(Ordering::Relaxed),
                location: location.to_owned(),
                ..Panic::default()
            });
            drop(panic);
            if let Some(previous) = previous {
                self.line(
                    Level::WARN,
                    "stderr",
                    &format!("panicked: {}", previous.text()),
                );
            }
            return true;
        }
        let Some(held) = panic.as_mut().filter(|p| !p.complete) else {
            return false;
        };
        if text.starts_with("note: run with `RUST_BACKTRACE") {
            held.complete = true;
            return true;
        }
        if held.lines >= MAX_PANIC_LINES {
            held.complete = true;
            return false;
        }
        held.lines += 1;
        if held.message.len() < MAX_PANIC {
            if !held.message.is_empty() {
                held.message.push('\n');
            }
            let room = MAX_PANIC - held.message.len();
            let cut = text.floor_char_boundary(room);
            held.message.push_str(&text[..cut]);
        }
        true
    }

    /// Logs one line at `level`, within the version's budget.
    fn line(&self, level: Level, stream: &'static str, message: &str) {
        let tail = self.logs.tail.get().filter(|tail| tail.followed());
        let logged = enabled(level);
        let scope = self.scope();
        // A line nobody would see costs nothing of the budget.
        if !(logged || tail.is_some() || scope.is_some()) || !self.logs.admit_line() {
            return;
        }
        let (route, version) = (&self.logs.route, &self.logs.version);
        let id = self.request.load(Ordering::Relaxed);
        let lower = match level {
            Level::ERROR => "error",
            Level::WARN => "warn",
            Level::DEBUG => "debug",
            Level::TRACE => "trace",
            _ => "info",
        };
        let ids = scope.as_ref().map(|scope| {
            scope.log(stream, lower, message);
            scope.ids()
        });
        if let Some(tail) = tail {
            let _ = tail.sender.send(Arc::new(LogLine {
                at_ms: crate::units::unix_ms(),
                route: route.to_string(),
                version: version.to_string(),
                stream: stream.to_owned(),
                level: lower.to_owned(),
                request_id: (id != 0).then(|| crate::problem::request_id(id)),
                trace_id: ids.as_ref().map(|(trace, _)| trace.clone()),
                span_id: ids.as_ref().map(|(_, span)| span.clone()),
                message: message.to_owned(),
            }));
        }
        if !logged {
            return;
        }
        macro_rules! emit {
            ($level:ident) => {
                if let Some((trace_id, span_id)) = &ids {
                    let request_id = crate::problem::RequestId(id);
                    tracing::$level!(target: "guest", %request_id, %route, %version, stream, trace_id, span_id, "{message}")
                } else if id == 0 {
                    tracing::$level!(target: "guest", %route, %version, stream, "{message}")
                } else {
                    let request_id = crate::problem::RequestId(id);
                    tracing::$level!(target: "guest", %request_id, %route, %version, stream, "{message}")
                }
            };
        }
        match level {
            Level::ERROR => emit!(error),
            Level::WARN => emit!(warn),
            Level::DEBUG => emit!(debug),
            Level::TRACE => emit!(trace),
            _ => emit!(info),
        }
    }
}

impl Drop for StoreLog {
    fn drop(&mut self) {
        self.flush_panic();
    }
}

/// The location in a Rust panic's first line, `thread 'NAME' panicked at LOCATION:` (newer
/// Rust writes the thread's id too: `thread 'NAME' (1) panicked at LOCATION:`).
fn panic_header(text: &str) -> Option<&str> {
    let rest = text.strip_prefix("thread '")?;
    let (thread, rest) = rest.split_once(" panicked at ")?;
    if !thread.contains('\'') {
        return None;
    }
    Some(rest.strip_suffix(':').unwrap_or(rest))
}

/// A guest's stdout or stderr.
pub struct GuestLog {
    store: Arc<StoreLog>,
    stream: &'static str,
}

impl GuestLog {
    fn lines(&self) -> Lines {
        Lines {
            store: self.store.clone(),
            stream: self.stream,
            line: Vec::new(),
        }
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.lines())
    }

    /// Writes are handled where the guest makes them: a line costs a budget check (and, within
    /// budget, an event into the non-blocking log buffer), so there is nothing to wait for. The
    /// default adapter would hand every write to a task of its own and make the guest wait for
    /// it.
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.lines())
    }
}

/// The line a guest is writing; each complete line becomes an event.
struct Lines {
    store: Arc<StoreLog>,
    stream: &'static str,
    line: Vec<u8>,
}

impl Lines {
    fn write(&mut self, buf: &[u8]) {
        for chunk in buf.split_inclusive(|b| *b == b'\n') {
            self.line.extend_from_slice(chunk);
            if chunk.ends_with(b"\n") || self.line.len() >= MAX_GUEST_LINE {
                self.emit();
            }
        }
    }

    fn emit(&mut self) {
        if !self.line.iter().all(u8::is_ascii_whitespace) {
            self.emit_line();
        }
        self.line.clear();
    }

    fn emit_line(&self) {
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end();
        if self.stream == "stderr" && self.store.hold(text) {
            return;
        }
        // Lines that start with a level word (as the SDK's log macros write them) keep it.
        let (level, message) = match text.split_once(' ') {
            Some(("ERROR", rest)) => (Level::ERROR, rest),
            Some(("WARN", rest)) => (Level::WARN, rest),
            Some(("DEBUG", rest)) => (Level::DEBUG, rest),
            Some(("TRACE", rest)) => (Level::TRACE, rest),
            Some(("INFO", rest)) => (Level::INFO, rest),
            _ => (Level::INFO, text),
        };
        self.store.line(level, self.stream, message);
    }
}

/// Whether guest events at `level` are logged at all.
fn enabled(level: Level) -> bool {
    match level {
        Level::ERROR => tracing::enabled!(target: "guest", Level::ERROR),
        Level::WARN => tracing::enabled!(target: "guest", Level::WARN),
        Level::DEBUG => tracing::enabled!(target: "guest", Level::DEBUG),
        Level::TRACE => tracing::enabled!(target: "guest", Level::TRACE),
        _ => tracing::enabled!(target: "guest", Level::INFO),
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        self.emit();
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Lines {
    /// Always ready: a write never waits.
    async fn ready(&mut self) {}
}

impl OutputStream for Lines {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        Lines::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

/// How many bytes a guest may hand over in one write.
const WRITE_PERMIT: usize = 64 << 10;

impl tokio::io::AsyncWrite for Lines {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().write(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().emit();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_message_is_held_for_the_failure_report() {
        let logs = GuestLogs::new("r".into(), "v".into());
        let store = StoreLog::new(&logs);
        store.serve(7);
        assert_eq!(
            panic_header("thread '<unnamed>' (1) panicked at src/lib.rs:19:27:"),
            Some("src/lib.rs:19:27")
        );
        for line in [
            "thread '<unnamed>' panicked at src/lib.rs:19:25:",
            "failing guest: trapping on purpose",
            "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace",
        ] {
            assert!(store.hold(line), "{line}");
        }
        assert!(!store.hold("a later line"), "the message was whole");
        assert_eq!(
            store.take_panic().as_deref(),
            Some("failing guest: trapping on purpose (at src/lib.rs:19:25)")
        );
        assert_eq!(store.take_panic(), None);
        assert!(!store.hold("an ordinary line"));
        // A header followed by endless output stops holding after a bound.
        assert!(store.hold("thread 'main' panicked at a.rs:1:1:"));
        let held = (0..100)
            .filter(|i| store.hold(&format!("line {i}")))
            .count();
        assert_eq!(held, MAX_PANIC_LINES);
    }
}
