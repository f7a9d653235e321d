//! The followers of guest log lines (`GET /v1/routes/{name}/logs`): [`Tail`] sends every line
//! logged within its version's budget to each [`Follower`].

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A line a guest wrote, as `GET /v1/routes/{name}/logs` streams it (one SSE `data:` each).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct LogLine {
    /// When, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The route.
    pub route: String,
    /// The version's short digest.
    pub version: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// `error`, `warn`, `info`, `debug` or `trace` (a line that starts with the word keeps it).
    pub level: String,
    /// The request the guest was serving (16 hex digits, as `x-request-id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// With tracing on: the trace of that request (32 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// With tracing on: that request's server span (16 hex digits), which has the line as an
    /// event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    /// The line, without its level word.
    pub message: String,
}

/// Lines a follower of guest logs may fall behind by before it is told it missed some.
pub const TAIL_BUFFER: usize = 1024;

/// The server's followers of guest log lines (`GET /v1/routes/{name}/logs`): every line a
/// version logs within its budget goes to them while there are any, whatever the log's own
/// level filter. Costs one atomic load per line while nobody follows.
pub struct Tail {
    followers: AtomicUsize,
    pub(super) sender: tokio::sync::broadcast::Sender<Arc<LogLine>>,
    closed: tokio_util::sync::CancellationToken,
}

impl Tail {
    /// A tail nobody follows yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            followers: AtomicUsize::new(0),
            sender: tokio::sync::broadcast::channel(TAIL_BUFFER).0,
            closed: tokio_util::sync::CancellationToken::new(),
        })
    }

    /// Whether anyone follows.
    pub(super) fn followed(&self) -> bool {
        self.followers.load(Ordering::Relaxed) > 0
    }

    /// A new follower: every line from now on (see [`Follower::next`]).
    pub fn follow(self: &Arc<Self>) -> Follower {
        self.followers.fetch_add(1, Ordering::Relaxed);
        Follower {
            receiver: self.sender.subscribe(),
            tail: self.clone(),
        }
    }

    /// Ends every follower's stream (the server shuts down).
    pub fn close(&self) {
        self.closed.cancel();
    }
}

/// What a follower of guest log lines gets next.
#[derive(Debug)]
pub enum Followed {
    /// A line.
    Line(Arc<LogLine>),
    /// It fell behind and missed this many lines.
    Missed(u64),
}

/// One follower of [`Tail`].
pub struct Follower {
    receiver: tokio::sync::broadcast::Receiver<Arc<LogLine>>,
    tail: Arc<Tail>,
}

impl Follower {
    /// The next line, or how many it missed; `None` once the server shuts down.
    pub async fn next(&mut self) -> Option<Followed> {
        use tokio::sync::broadcast::error::RecvError;
        tokio::select! {
            biased;
            _ = self.tail.closed.cancelled() => None,
            received = self.receiver.recv() => match received {
                Ok(line) => Some(Followed::Line(line)),
                Err(RecvError::Lagged(missed)) => Some(Followed::Missed(missed)),
                Err(RecvError::Closed) => None,
            },
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.tail.followers.fetch_sub(1, Ordering::Relaxed);
    }
}
