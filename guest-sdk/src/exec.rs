//! Running a future to its end without an async runtime: [`block_on`] for unit tests of async
//! handlers on the host, and the fallback that lets a 0.2 guest send an async body whose
//! producer never truly waits.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

/// Wakes the thread that polls, and remembers that it did.
struct Flag {
    woken: AtomicBool,
    thread: Thread,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        self.thread.unpark();
    }
}

/// Polls `future` until it is ready. When it waits and nothing has woken it: with `park`,
/// parks the thread until a wake; without, gives up (`None`), since nothing else could ever
/// wake it (a guest has no other thread).
fn run<F: Future>(future: F, park: bool) -> Option<F::Output> {
    let flag = Arc::new(Flag {
        woken: AtomicBool::new(false),
        thread: std::thread::current(),
    });
    let waker = Waker::from(flag.clone());
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return Some(output);
        }
        while !flag.woken.swap(false, Ordering::SeqCst) {
            if !park {
                return None;
            }
            std::thread::park();
        }
    }
}

/// Runs `future` to its end on the current thread: how a unit test calls an `async` handler
/// on the host.
///
/// ```
/// use handoff_sdk::{Body, Request, Response, Result, response};
///
/// async fn handle(req: Request) -> Result<Response> {
///     let name = req.into_body().read_text().await?;
///     Ok(response::text(format!("Hello, {name}!\n")))
/// }
///
/// let req = http::Request::post("/hello").body(Body::from("Ada")).unwrap();
/// let response = handoff_sdk::block_on(handle(req)).unwrap();
/// assert_eq!(response.into_body().text().unwrap(), "Hello, Ada!\n");
/// ```
#[cfg(not(target_arch = "wasm32"))]
pub fn block_on<F: Future>(future: F) -> F::Output {
    run(future, true).expect("block_on parks until the future is woken")
}

/// Polls `future` to its end if it never waits for anything outside itself; `None` if it does.
/// (On the host, where a test's threads may wake it, it waits as [`block_on`] does.)
pub(crate) fn poll_to_end<F: Future>(future: F) -> Option<F::Output> {
    run(future, cfg!(not(target_arch = "wasm32")))
}
