//! What a served connection keeps about itself: whether it is idle ([`Idle`], what the idle
//! timeout reads) and, for each response, a body ([`Tracked`]) that counts its request in
//! progress and ends when its client stops reading.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// When a data-plane connection last started or finished a request, and how many it has in
/// progress: what decides that it is idle. Bytes that do not complete a request head do not
/// count, so trickling bytes cannot keep a connection open. (A request in progress keeps it
/// open only until its deadline: a guest response its client does not read is then reset, see
/// `dispatch::overdue`.)
pub(super) struct Idle {
    opened: std::time::Instant,
    /// Milliseconds after `opened` of the last request start or end.
    last_change_ms: AtomicU64,
    in_progress: AtomicUsize,
}

impl Idle {
    pub(super) fn new() -> Self {
        Self {
            opened: std::time::Instant::now(),
            last_change_ms: AtomicU64::new(0),
            in_progress: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_change_ms.store(ms, Ordering::Relaxed);
    }

    /// Marks a request in progress until the returned guard (kept in its response body) drops.
    pub(super) fn busy(self: &Arc<Self>) -> Busy {
        self.in_progress.fetch_add(1, Ordering::Relaxed);
        self.touch();
        Busy(self.clone())
    }

    /// Resolves once the connection has had no request in progress for `limit`.
    pub(super) async fn expired(&self, limit: std::time::Duration) {
        loop {
            let now = self.opened.elapsed();
            let since = now.saturating_sub(std::time::Duration::from_millis(
                self.last_change_ms.load(Ordering::Relaxed),
            ));
            let wait = if self.in_progress.load(Ordering::Relaxed) > 0 {
                limit
            } else if since >= limit {
                return;
            } else {
                limit - since
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// A request in progress on a connection (see [`Idle`]).
pub(super) struct Busy(Arc<Idle>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_progress.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted as in progress until it is done or dropped,
/// and is ended if its client lets nothing through for the idle timeout while it has bytes to
/// send (`dispatch::overdue`: the task sending it is dropped).
pub(super) struct Tracked<B> {
    pub(super) body: B,
    pub(super) stall: Option<crate::dispatch::Stall>,
    pub(super) _busy: Busy,
}

impl<B: http_body::Body + Unpin> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        if let Some(stall) = &this.stall {
            match &polled {
                // The frame given is owed to the client until hyper asks for the next one, or
                // (the last) until hyper is done with the body: hyper may hold a frame until
                // the client's flow-control window lets it go.
                std::task::Poll::Ready(Some(Ok(_))) => stall.owed(),
                _ => stall.settled(),
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
