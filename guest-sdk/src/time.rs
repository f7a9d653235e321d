//! Time for `async` (WASI 0.3) handlers.

use std::time::Duration;

/// Waits for `duration` without using the guest's CPU budget and without holding up the
/// instance: with WASI 0.3 the instance serves its other requests meanwhile, and other futures
/// of the same request (joined, or in a `FuturesUnordered`) run on. (The blocking
/// [`crate::sleep`] is for 0.2 handlers.) On the host, in unit tests, a thread wakes it after
/// `duration`, so concurrent sleeps overlap there too.
///
/// ```
/// handoff_sdk::block_on(handoff_sdk::time::sleep(std::time::Duration::from_millis(1)));
/// ```
pub async fn sleep(duration: Duration) {
    #[cfg(target_arch = "wasm32")]
    crate::wasi3::sleep(duration).await;
    #[cfg(not(target_arch = "wasm32"))]
    host::Sleep::new(duration).await;
}

#[cfg(not(target_arch = "wasm32"))]
mod host {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Waker};
    use std::time::{Duration, Instant};

    /// A sleep whose waker a thread of its own calls at the deadline.
    pub(super) struct Sleep {
        deadline: Instant,
        waker: Option<Arc<Mutex<Option<Waker>>>>,
    }

    impl Sleep {
        pub(super) fn new(duration: Duration) -> Self {
            Self {
                deadline: Instant::now() + duration,
                waker: None,
            }
        }
    }

    impl Future for Sleep {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let deadline = self.deadline;
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            match &self.waker {
                Some(waker) => *waker.lock().unwrap() = Some(cx.waker().clone()),
                None => {
                    let waker = Arc::new(Mutex::new(Some(cx.waker().clone())));
                    self.waker = Some(waker.clone());
                    std::thread::spawn(move || {
                        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                        if let Some(waker) = waker.lock().unwrap().take() {
                            waker.wake();
                        }
                    });
                }
            }
            Poll::Pending
        }
    }
}
