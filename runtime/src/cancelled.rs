//! A cancellation future that is cheap to poll again and again: [`Cancelled`].
//!
//! Polling a `tokio_util` cancellation future takes two locks of its token, every time (the
//! tree node's, to read whether it is cancelled, and its `Notify`'s, to check or refresh the
//! registered waker). A version's cut-off token is shared by all the version's requests, and
//! some futures that watch it are polled many times per request: a WASI 0.3 instance's expiry
//! on every turn of its event loop, a connection's overdue watch whenever it waits. So those
//! locks went back and forth between the cores on every request. [`Cancelled`] polls the
//! token's future only after that future woke it (through a waker of its own), and otherwise
//! only refreshes the waker of the task that polls it: no lock, no shared cache line.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Resolves once its token is cancelled (at once if it is already).
pub(crate) struct Cancelled {
    inner: Pin<Box<WaitForCancellationFutureOwned>>,
    relay: Arc<Relay>,
    /// `relay` as a waker: what the token's future is polled with.
    waker: Waker,
    done: bool,
}

/// The waker the token's future holds: it marks the future woken and wakes the task that
/// polled [`Cancelled`] last.
struct Relay {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Cancelled {
    /// Waits for `token`.
    pub(crate) fn new(token: CancellationToken) -> Self {
        let relay = Arc::new(Relay {
            // The first poll polls the token's future (which registers the relay).
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Self {
            inner: Box::pin(token.cancelled_owned()),
            waker: Waker::from(relay.clone()),
            relay,
            done: false,
        }
    }
}

impl Future for Cancelled {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(());
        }
        // Registered before the flag is read: a wake after this reaches the task.
        this.relay.task.register(cx.waker());
        if !this.relay.woken.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        // Cleared before the token's future is polled: a cancellation from here on is seen
        // by that poll (the token is marked cancelled before its waiters are woken), or wakes
        // the relay again.
        this.relay.woken.store(false, Ordering::Release);
        let mut relayed = Context::from_waker(&this.waker);
        if this.inner.as_mut().poll(&mut relayed).is_ready() {
            this.done = true;
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Polls `future` once, with a waker that does nothing.
    fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
        Pin::new(future).poll(&mut Context::from_waker(Waker::noop()))
    }

    #[tokio::test]
    async fn resolves_when_its_token_is_cancelled_however_often_it_was_polled() {
        let token = CancellationToken::new();
        let mut cancelled = Cancelled::new(token.clone());
        for _ in 0..3 {
            assert!(poll_once(&mut cancelled).is_pending());
        }
        let cancel = tokio::spawn({
            let token = token.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                token.cancel();
            }
        });
        // Polled by this task from here on: the cancellation must wake it, not the waker of
        // the polls above.
        tokio::time::timeout(Duration::from_secs(10), &mut cancelled)
            .await
            .expect("woken by the cancellation");
        cancel.await.unwrap();
        assert!(poll_once(&mut cancelled).is_ready());
    }

    #[tokio::test]
    async fn resolves_at_once_for_a_token_cancelled_before() {
        let token = CancellationToken::new();
        token.cancel();
        let mut cancelled = Cancelled::new(token);
        assert!(poll_once(&mut cancelled).is_ready());
    }
}
